"""MedNeXt: a lightweight transformer-style CNN for 2D medical image classification.

Xue et al., "MedNeXt for accurate medical image classification and segmentation: a lightweight
transformer-style convolutional neural network", PLoS One 21(1): e0340108, 2026.

Not the 3D MedNeXt of Roy et al. (MICCAI 2023, MIC-DKFZ / MONAI): this is a 2D backbone
built of MED blocks, each a pre-norm residual stack of

* LAFFN (linear-attention FFN): ``A = softmax_C(X W1) * softmax_N(X W2)``, ``out = A W3``;
* SEM (spatial encoding module): factored large-kernel depth-wise convs and axial MLPs
  aggregate into an attention map that gates a value branch;
* SDFFN (smooth depth-wise FFN): ``W2 GELU(DW3x3(X W1))`` with no 4x expansion.

The layout follows timm's ``convnext.py``: blocks, stage, model, ``checkpoint_filter_fn``,
``_cfg``, ``default_cfgs`` and the registered entry points. Blocks work on channels-last
tensors (``B, H, W, C``); stages take and return ``B, C, H, W`` like every timm feature map.
Eager fp32 CPU inference runs on fused oneDNN kernels kept in ``_fused.py``; each module here holds its
plain forward and one call into it. ``set_reference_paths`` switches a model to the plain reference paths.

The axial mixing matrices (``H x H`` and ``W x W``) fix the input resolution: build the model
with ``img_size=...`` or call ``set_input_size``; weights loaded at another size have those
matrices resampled by ``checkpoint_filter_fn``.
"""

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ConvNormAct,
    DropPath,
    LayerNorm2d,
    NormMlpClassifierHead,
    calculate_drop_path_rates,
    get_device_dtype,
    register_notrace_function,
    register_notrace_module,
    to_2tuple,
    trunc_normal_,
)
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq, named_apply

from ..errors import UserInputError
from . import _export_form, _fused
from ._fused import fused_inference_ok  # noqa: F401  (public since round 2: docs/reference/models.md)
from ._pretrained import build_model_with_pretrained, pretrained_cfg_kwargs

__all__ = ['MedNeXt', 'MedBlock', 'MedStage', 'LAFFN', 'SEM', 'SDFFN', 'ConvFFN', 'DwConvMixer', 'set_reference_paths']

SizeLike = Union[int, Tuple[int, int]]


def feature_sizes(img_size: SizeLike, num_halvings: int) -> List[Tuple[int, int]]:
    """Spatial sizes after each of ``num_halvings`` stride-2 layers (3x3, padding 1: ceil(s / 2))."""
    h, w = to_2tuple(img_size)
    sizes = []
    for _ in range(num_halvings):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def resample_axial_weight(weight: torch.Tensor, new_len: int) -> torch.Tensor:
    """Resample an ``L x L`` axial mixing matrix to ``new_len x new_len``.

    The matrix is interpolated as an image (bilinear) and scaled by ``L / new_len`` so that a
    row still sums the same total weight over the longer or shorter axis.
    """
    old_len = weight.shape[-1]
    if old_len == new_len:
        return weight
    w = F.interpolate(weight[None, None].float(), size=(new_len, new_len), mode='bilinear', align_corners=False)
    return (w[0, 0] * (old_len / new_len)).to(weight.dtype)


def resample_axial_bias(bias: torch.Tensor, new_len: int) -> torch.Tensor:
    """Resample an axial mixing bias (``L``) to ``new_len`` by linear interpolation."""
    if bias.shape[-1] == new_len:
        return bias
    b = F.interpolate(bias[None, None].float(), size=new_len, mode='linear', align_corners=False)
    return b[0, 0].to(bias.dtype)


def check_rank_and_channels(x: torch.Tensor, in_chans: int, model_name: str) -> None:
    """Raise a clear error unless ``x`` is a 4-D ``B, in_chans, H, W`` tensor (a 2D model's input)."""
    if x.dim() != 4:
        raise UserInputError(
            f'{model_name} is a 2D model and expects a 4-D tensor (B, C, H, W); got a {x.dim()}-D tensor of shape '
            f'{list(x.shape)}. For a volume (B, C, D, H, W), feed its slices as a batch '
            f'(or k adjacent slices as channels with in_chans=k).'
        )
    if x.shape[1] != in_chans:
        raise UserInputError(
            f'{model_name} built for {in_chans} input channel(s) got {x.shape[1]}. '
            f'Create it with in_chans={x.shape[1]} (pretrained first-conv weights are adapted).'
        )


@register_notrace_function
def check_input_2d(x: torch.Tensor, in_chans: int, img_size: Tuple[int, int], model_name: str) -> None:
    """Raise a clear error unless ``x`` is ``B, in_chans, *img_size``."""
    check_rank_and_channels(x, in_chans, model_name)
    if x.shape[2] != img_size[0] or x.shape[3] != img_size[1]:
        raise UserInputError(
            f'{model_name} built for {img_size[0]}x{img_size[1]} inputs got {x.shape[2]}x{x.shape[3]}. '
            f'Resize the input, or create the model with img_size=({x.shape[2]}, {x.shape[3]}) '
            f'or call model.set_input_size(img_size=...).'
        )


@register_notrace_module  # shape-dependent scaling: a leaf for FX feature extraction
class LAFFN(nn.Module):
    """Linear Attention FFN: ``A = softmax_C(X W1) * softmax_N(X W2)``, ``out = A W3 + b3``.

    ``x``: ``B, H, W, C`` -> ``B, H, W, C``. The product ``A`` is about ``1 / (N C)``, subnormal
    in fp16, so it is formed in fp32 and multiplied by ``N`` before the fp16/bf16 matmul; the
    result is divided by ``N`` in fp32 afterwards. Same maths, no underflow under autocast.
    """

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc_channel = nn.Linear(dim, dim, **dd)  # W1, softmax over channels
        self.fc_token = nn.Linear(dim, dim, **dd)  # W2, softmax over tokens
        self.proj = nn.Linear(dim, dim, **dd)  # W3
        self.reference_path = False  # see set_reference_paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, H, W, C`` -> ``B, H, W, C`` (:meth:`forward_reference` in reference mode and under jit tracing)."""
        if self.reference_path or torch.jit.is_tracing():  # tracers (legacy ONNX export, fvcore) get the plain graph
            return self.forward_reference(x)
        if not torch.jit.is_scripting():  # eager fp32 inference: oneDNN kernels (_fused.py)
            if _fused.use_fused(x, self.proj.weight):
                return _fused.laffn(self, x)
        B, H, W, C = x.shape
        n = H * W
        attn_c = self.fc_channel(x).softmax(dim=-1, dtype=torch.float32)
        if torch.is_grad_enabled():  # keep the bias in the graph (DDP expects every parameter to get a grad)
            logits_n = self.fc_token(x)
        else:  # softmax over tokens ignores a per-channel shift: W2's bias cancels exactly, skip its pass
            logits_n = torch.matmul(x, self.fc_token.weight.t())
        attn_n = logits_n.view(B, n, C).softmax(dim=1, dtype=torch.float32)
        # One pass for ``N * softmax_C * softmax_N`` (fp32, ~1/C: representable in fp16), one GEMM (in
        # fp16/bf16 under autocast), then one pass for ``b3 + out / N`` in fp32, as the reference does.
        attn = torch.addcmul(attn_c.new_zeros(()), attn_c.view(B, n, C), attn_n, value=float(n))
        weight = self.proj.weight
        out = torch.mm(attn.view(B * n, C).to(weight.dtype), weight.t())
        out = out.float()  # addcmul, not add(alpha=1/n): inductor (torch 2.14) miscompiles that after a mm
        out = torch.addcmul(self.proj.bias.float(), out, out.new_full((), 1.0 / n))
        return out.view(B, H, W, C).to(x.dtype)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain reference path (same maths and weights as ``forward``), kept for equivalence tests."""
        B, H, W, C = x.shape
        n = H * W
        attn_c = self.fc_channel(x).softmax(dim=-1, dtype=torch.float32)
        attn_n = self.fc_token(x).reshape(B, n, C).softmax(dim=1, dtype=torch.float32).reshape(B, H, W, C)
        attn = attn_c * attn_n * float(n)
        out = F.linear(attn.to(self.proj.weight.dtype), self.proj.weight)
        out = out.float() / float(n) + self.proj.bias.float()
        return out.to(x.dtype)


@register_notrace_module  # input-size check: a leaf for FX feature extraction
class SEM(nn.Module):
    """Spatial Encoding Module: multi-scale attention map gating a value branch.

    ``u = GELU(X Wa)``; three paths ``DW_kx1(DW_1xk(u))`` for k = 7, 11 and an axial MLP
    ``Wf [MixH(u); MixW(u)]``; ``attn = Wagg [Z0; Z1; Z2]``; ``out = (attn * X Wv) Wo``.
    ``x``: ``B, H, W, C`` with ``(H, W) == feat_size`` -> ``B, H, W, C``.
    """

    def __init__(
            self,
            dim: int,
            feat_size: Tuple[int, int],
            kernel_sizes: Tuple[int, int] = (7, 11),
            act_layer: Callable = nn.GELU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.feat_size = tuple(feat_size)
        k0, k1 = kernel_sizes
        self.fc_in = nn.Linear(dim, dim, **dd)  # Wa
        self.act = act_layer()
        self.dw0_h = nn.Conv2d(dim, dim, (1, k0), padding=(0, k0 // 2), groups=dim, **dd)
        self.dw0_v = nn.Conv2d(dim, dim, (k0, 1), padding=(k0 // 2, 0), groups=dim, **dd)
        self.dw1_h = nn.Conv2d(dim, dim, (1, k1), padding=(0, k1 // 2), groups=dim, **dd)
        self.dw1_v = nn.Conv2d(dim, dim, (k1, 1), padding=(k1 // 2, 0), groups=dim, **dd)
        self.mix_h = nn.Linear(self.feat_size[0], self.feat_size[0], **dd)  # along H, shared by channels
        self.mix_w = nn.Linear(self.feat_size[1], self.feat_size[1], **dd)  # along W, shared by channels
        self.fc_mix = nn.Linear(2 * dim, dim, **dd)  # Wf
        self.fc_agg = nn.Linear(3 * dim, dim, **dd)  # Wagg
        self.fc_value = nn.Linear(dim, dim, **dd)  # Wv
        self.proj = nn.Linear(dim, dim, **dd)  # Wo
        self.reference_path = False  # see set_reference_paths

    def set_feat_size(self, feat_size: Tuple[int, int]) -> None:
        """Resize the axial mixing matrices for a new feature size (weights resampled)."""
        feat_size = tuple(feat_size)
        if feat_size == self.feat_size:
            return
        for name, new_len in (('mix_h', feat_size[0]), ('mix_w', feat_size[1])):
            old = getattr(self, name)
            new = nn.Linear(new_len, new_len, device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(resample_axial_weight(old.weight, new_len))
                new.bias.copy_(resample_axial_bias(old.bias, new_len))
            new.requires_grad_(old.weight.requires_grad)
            setattr(self, name, new)
        self.feat_size = feat_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, H, W, C`` -> ``B, H, W, C``; raises UserInputError unless ``(H, W) == feat_size``."""
        if self.reference_path or torch.jit.is_tracing():  # tracers (legacy ONNX export, fvcore) get the plain graph
            return self.forward_reference(x)
        if not torch.jit.is_scripting():  # eager fp32 inference: oneDNN kernels (_fused.py)
            if _fused.use_fused(x, self.proj.weight):
                return _fused.sem(self, x)
        B, H, W, C = x.shape
        self._check_size(H, W)
        # Wa and Wv read the same input: one GEMM for both.
        uv = F.linear(
            x,
            torch.cat([self.fc_in.weight, self.fc_value.weight]),
            torch.cat([self.fc_in.bias, self.fc_value.bias]),
        )
        u = self.act(uv[..., :C]).reshape(B, H, W, C)  # strided slice in, contiguous out
        v = uv[..., C:]
        u_2d = u.permute(0, 3, 1, 2)  # channels-last view: the depth-wise convs run in NHWC
        z0 = self.dw0_v(self.dw0_h(u_2d)).permute(0, 2, 3, 1).reshape(-1, C)
        z1 = self.dw1_v(self.dw1_h(u_2d)).permute(0, 2, 3, 1).reshape(-1, C)
        # Axial mixes as GEMMs on contiguous views of u, no transposes: along H, (H x H) @ (H x W*C)
        # per image; along W, (W x W) @ (W x C) per row. Their biases are folded into ``bias`` below.
        mix_h = torch.bmm(self.mix_h.weight.expand(B, H, H), u.view(B, H, W * C)).view(-1, C)
        mix_w = torch.bmm(self.mix_w.weight.expand(B * H, W, W), u.view(B * H, W, C)).view(-1, C)
        # Wf [Mh; Mw] and Wagg [Z0; Z1; Z2] as sums of per-path projections (no concatenation),
        # accumulated in place (no bias copies); weights cast to the activations' dtype for autocast.
        dt = mix_h.dtype
        wg = self.fc_agg.weight.to(dt)
        attn = torch.mm(z0.to(dt), wg[:, :C].t()).addmm_(z1.to(dt), wg[:, C:2 * C].t())
        if B * H * W > 2 * C:  # Wg2 Wf (2 C^3 MACs) is cheaper than the (B H W, C) x (C, C) GEMM it saves
            wf = (self.fc_agg.weight[:, 2 * C:] @ self.fc_mix.weight).to(dt)
            attn.addmm_(mix_h, wf[:, :C].t()).addmm_(mix_w, wf[:, C:].t())
        else:
            wf = self.fc_mix.weight.to(dt)
            z2 = torch.mm(mix_h, wf[:, :C].t()).addmm_(mix_w, wf[:, C:].t())
            attn.addmm_(z2, wg[:, 2 * C:].t())
        attn = attn.view(B, H * W, C).add_(self._agg_bias(C).to(dt))
        return self.proj(attn.view(B, H, W, C) * v)

    def _check_size(self, H: int, W: int) -> None:
        if H != self.feat_size[0] or W != self.feat_size[1]:
            raise UserInputError(
                f'MedNeXt SEM built for a {self.feat_size[0]}x{self.feat_size[1]} feature map got {H}x{W}: '
                f'the axial mixing matrices fix the resolution. Build the model with img_size=... '
                f'or call model.set_input_size(img_size=...) for the input size you use.'
            )

    def _agg_bias(self, C: int) -> torch.Tensor:
        """Every bias after the depth-wise convs, pushed through Wf and Wagg: ``(H * W, C)``.

        ``bagg + Wg2 (bf + bh[h] Wf_h 1 + bw[w] Wf_w 1)`` -- the mixing biases are constant over
        channels, so each reaches the output as a rank-1 (position x channel) term.
        """
        wf = self.fc_mix.weight
        wg2 = self.fc_agg.weight[:, 2 * C:]
        rows = torch.stack([self.fc_mix.bias, wf[:, :C].sum(1), wf[:, C:].sum(1)])  # 3, C
        c0, ch, cw = (rows @ wg2.t()).unbind(0)  # 3 x (C,)
        bias = (c0 + self.fc_agg.bias) + self.mix_h.bias[:, None, None] * ch + self.mix_w.bias[None, :, None] * cw
        return bias.reshape(-1, C)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain reference path (same maths and weights as ``forward``), kept for equivalence tests."""
        B, H, W, C = x.shape
        self._check_size(H, W)
        u = self.act(self.fc_in(x))
        u_2d = u.permute(0, 3, 1, 2)
        z0 = self.dw0_v(self.dw0_h(u_2d)).permute(0, 2, 3, 1)
        z1 = self.dw1_v(self.dw1_h(u_2d)).permute(0, 2, 3, 1)
        mix_h = self.mix_h(u.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # B, W, C, H -> B, H, W, C
        mix_w = self.mix_w(u.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)  # B, H, C, W -> B, H, W, C
        z2 = self.fc_mix(torch.cat([mix_h, mix_w], dim=-1))
        attn = self.fc_agg(torch.cat([z0, z1, z2], dim=-1))
        return self.proj(attn * self.fc_value(x))


class DwConvMixer(nn.Module):
    """Plain token mixer for ablations (SEM off): 7x7 depth-wise conv then a linear layer.

    ``x``: ``B, H, W, C`` -> ``B, H, W, C``.
    """

    def __init__(self, dim: int, feat_size: Tuple[int, int] = (0, 0), kernel_size: int = 7, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, H, W, C`` -> ``B, H, W, C``."""
        return self.proj(self.conv_dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class SDFFN(nn.Module):
    """Smooth DwConv FFN: ``W2 GELU(DW3x3(X W1))``, hidden width = C. ``B, H, W, C`` -> same."""

    def __init__(self, dim: int, act_layer: Callable = nn.GELU, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(dim, dim, **dd)
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.act = act_layer()
        self.fc2 = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, H, W, C`` -> ``B, H, W, C``."""
        if not torch.jit.is_scripting():  # eager fp32 inference: oneDNN kernels (_fused.py)
            if _fused.use_fused(x, self.fc2.weight):
                return _fused.sdffn(self, x)
        x = self.fc1(x)
        x = self.conv_dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.act(x))

class ConvFFN(nn.Module):
    """Plain ratio-r FFN for ablations (SDFFN off): ``W2 GELU(X W1)``. ``B, H, W, C`` -> same."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, act_layer: Callable = nn.GELU, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden, **dd)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, H, W, C`` -> ``B, H, W, C``."""
        return self.fc2(self.act(self.fc1(x)))


TOKEN_MIXERS: Dict[str, Callable[..., nn.Module]] = {'sem': SEM, 'dwconv': DwConvMixer}
FFNS: Dict[str, Callable[..., nn.Module]] = {'sdffn': SDFFN, 'mlp': ConvFFN}


class MedBlock(nn.Module):
    """MED block: ``X1 = X + LAFFN(LN X)``, ``X2 = X1 + SEM(LN X1)``, ``Y = X2 + SDFFN(LN X2)``.

    ``x``: ``B, H, W, C`` -> same. ``laffn``, ``token_mixer`` and ``ffn`` switch the three
    sub-blocks for the paper's ablations (defaults are the paper's model).
    """

    def __init__(
            self,
            dim: int,
            feat_size: Tuple[int, int],
            drop_path: float = 0.,
            laffn: bool = True,
            token_mixer: str = 'sem',
            ffn: str = 'sdffn',
            norm_layer: Callable = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if token_mixer not in TOKEN_MIXERS:
            raise UserInputError(f'Unknown token_mixer {token_mixer!r}; choose one of {sorted(TOKEN_MIXERS)}.')
        if ffn not in FFNS:
            raise UserInputError(f'Unknown ffn {ffn!r}; choose one of {sorted(FFNS)}.')
        if laffn:
            self.norm1 = norm_layer(dim, **dd)
            self.laffn = LAFFN(dim, **dd)
        else:
            self.norm1 = nn.Identity()
            self.laffn = None
        self.norm2 = norm_layer(dim, **dd)
        self.token_mixer = TOKEN_MIXERS[token_mixer](dim, feat_size=feat_size, **dd)
        self.norm3 = norm_layer(dim, **dd)
        self.ffn = FFNS[ffn](dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.reference_path = False  # see set_reference_paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, H, W, C`` -> ``B, H, W, C``."""
        if not torch.jit.is_scripting():  # eager fp32 inference: oneDNN kernels (_fused.py)
            if not self.reference_path and _fused.block_fusable(self, x):
                return _fused.med_block(self, x)
        if self.laffn is not None:
            x = x + self.drop_path(self.laffn(self.norm1(x)))
        x = x + self.drop_path(self.token_mixer(self.norm2(x)))
        x = x + self.drop_path(self.ffn(self.norm3(x)))
        return x


_fused.RESIDUAL_FORMS.update({LAFFN: _fused.laffn, SEM: _fused.sem, SDFFN: _fused.sdffn})
_export_form.register_types(MedBlock=MedBlock, LAFFN=LAFFN, SEM=SEM, SDFFN=SDFFN)


class MedStage(nn.Module):
    """Optional 3x3 stride-2 conv + BN downsampling, then MED blocks. ``B, C, H, W`` -> ``B, C', H', W'``."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            feat_size: Tuple[int, int],
            depth: int = 2,
            downsample: bool = True,
            drop_path_rates: Optional[List[float]] = None,
            block_kwargs: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        if downsample:
            self.downsample = ConvNormAct(in_chs, out_chs, 3, stride=2, padding=1, bias=False, apply_act=False, **dd)
        else:
            assert in_chs == out_chs, 'a stage without downsampling keeps its width'
            self.downsample = nn.Identity()
        drop_path_rates = drop_path_rates or [0.] * depth
        self.blocks = nn.Sequential(*[
            MedBlock(out_chs, feat_size, drop_path=drop_path_rates[i], **(block_kwargs or {}), **dd)
            for i in range(depth)
        ])
        self.reference_path = False  # see set_reference_paths

    def set_feat_size(self, feat_size: Tuple[int, int]) -> None:
        """Resize every SEM's axial mixing matrices to ``feat_size`` (h, w) (weights resampled)."""
        for block in self.blocks:
            if hasattr(block.token_mixer, 'set_feat_size'):
                block.token_mixer.set_feat_size(feat_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, C, H, W`` -> ``B, C', H', W'`` (a channels-last view); SEM blocks raise UserInputError if ``H', W'`` is
        not the stage's feature size."""
        # Channels-last end to end: a channels-last NCHW input is a free view as (B, H, W, C), and the
        # (B, C, H, W) output is a channels-last view, so the next stage's conv runs in NHWC too.
        if self.reference_path:
            return self.forward_reference(x)
        if torch.jit.is_scripting():
            return self.blocks(self.downsample(x).permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """Under jit tracing the reference path, or inside ``export_form`` the export form (``_export_form.py``);
        otherwise BatchNorm folded into the downsampling conv and, in fused inference, the blocks on batch slices."""
        if torch.jit.is_tracing():  # jit tracers (legacy ONNX export, fvcore FLOP counts) get the plain graph
            if _export_form.export_form_active():
                return _export_form.stage_forward(self, x)
            return self.forward_reference(x)
        x = _fused.conv_bn(self.downsample, x).permute(0, 2, 3, 1).contiguous()
        if self.grad_checkpointing:
            x = checkpoint_seq(self.blocks, x)
        elif _fused.fused_inference_ok(x):
            x = _fused.blocks_chunked(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain reference path, kept for equivalence tests."""
        x = self.downsample(x).permute(0, 2, 3, 1)
        x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


def _stem(in_chans: int, stem_chs: Tuple[int, int, int], device=None, dtype=None) -> nn.Sequential:
    """Three conv-BN-ReLU blocks (first stride 2) then a stride-2 max-pool: ``B, in, H, W`` -> ``B, C, H/4, W/4``."""
    dd = {'device': device, 'dtype': dtype}
    c0, c1, c2 = stem_chs
    return nn.Sequential(
        ConvNormAct(in_chans, c0, 3, stride=2, padding=1, bias=False, **dd),
        ConvNormAct(c0, c1, 3, stride=1, padding=1, bias=False, **dd),
        ConvNormAct(c1, c2, 3, stride=1, padding=1, bias=False, **dd),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


class MedNeXt(nn.Module):
    """MedNeXt classification backbone (Xue et al., PLoS One 2026).

    ``B, in_chans, H, W`` -> logits ``B, num_classes``, with ``(H, W) == img_size``.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            img_size: SizeLike = 224,
            depths: Tuple[int, ...] = (2, 2, 2, 2),
            dims: Tuple[int, ...] = (64, 128, 256, 512),
            stem_chs: Tuple[int, int] = (16, 32),
            laffn: bool = True,
            token_mixer: str = 'sem',
            ffn: str = 'sdffn',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            block_init: str = 'trunc_normal',
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Input channels (1 for a CT / MRI slice, 3 for RGB or 2.5D slices).
            num_classes: Classifier outputs; 0 removes the classifier.
            global_pool: Global pooling type ('' keeps the feature map).
            img_size: Input size (int or (H, W)); fixes the axial mixing matrices.
            depths: MED blocks per stage.
            dims: Width of each stage.
            stem_chs: Widths of the first two stem convs (the third is ``dims[0]``).
            laffn, token_mixer, ffn: Sub-block switches for ablations.
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, linearly increasing over blocks.
            block_init: How the linear and depth-wise conv layers start (the paper does not say):
                'trunc_normal' (std 0.02, timm's ConvNeXt), 'xavier' or 'torch' (PyTorch's defaults).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if len(depths) != len(dims):
            raise UserInputError(f'depths {depths} and dims {dims} must have the same length.')
        if block_init not in BLOCK_INITS:
            raise UserInputError(f'MedNeXt block_init={block_init!r}: choose one of {", ".join(BLOCK_INITS)}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.img_size = to_2tuple(img_size)
        num_stages = len(dims)

        self.stem = _stem(in_chans, (stem_chs[0], stem_chs[1], dims[0]), **dd)
        sizes = feature_sizes(self.img_size, num_stages + 1)[1:]  # stem /4, then /2 per stage
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        block_kwargs = dict(laffn=laffn, token_mixer=token_mixer, ffn=ffn)
        stages = []
        self.feature_info = []
        prev_chs = dims[0]
        for i in range(num_stages):
            stages.append(MedStage(
                prev_chs,
                dims[i],
                feat_size=sizes[i],
                depth=depths[i],
                downsample=i > 0,
                drop_path_rates=dp_rates[i],
                block_kwargs=block_kwargs,
                **dd,
            ))
            prev_chs = dims[i]
            self.feature_info.append(dict(num_chs=prev_chs, reduction=2 ** (i + 2), module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev_chs
        self.head = NormMlpClassifierHead(
            self.num_features,
            num_classes,
            pool_type=global_pool,
            drop_rate=drop_rate,
            norm_layer=LayerNorm2d,
            **dd,
        )
        self.head_hidden_size = self.head.num_features
        self.reference_path = False  # see set_reference_paths
        named_apply(partial(_init_weights, block_init=block_init), self)
        conv_weights_channels_last(self)  # the layout their gradients come in (DDP buckets)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        """Parameter-name patterns of the stem and each stage (or each block), for timm's layer-wise lr decay."""
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Empty: timm's optimizer factory already exempts the 1-D parameters (biases, norms)."""
        # 1-D parameters (biases, norms) are excluded by timm's optimizer factory already.
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every stage's blocks in the backward pass instead of storing activations (saves memory)."""
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm API)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        """A new head for ``num_classes`` (0: no linear layer, pooled features out); ``global_pool`` as in timm."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, reset_other=reset_other, in_features=self.num_features, **dd)
        self.head_hidden_size = self.head.num_features

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[SizeLike] = None, **kwargs) -> None:
        """Rebuild for a new input size; axial mixing matrices are resampled, nothing else changes."""
        if img_size is None:
            return
        self.img_size = to_2tuple(img_size)
        sizes = feature_sizes(self.img_size, len(self.stages) + 1)[1:]
        for stage, size in zip(self.stages, sizes):
            stage.set_feat_size(size)
        self._sync_pretrained_cfg()

    @torch.jit.ignore
    def _sync_pretrained_cfg(self) -> None:
        """Make ``pretrained_cfg`` (used by timm's data config) describe this model's input."""
        cfg = getattr(self, 'pretrained_cfg', None)
        if cfg:
            pool = feature_sizes(self.img_size, len(self.stages) + 1)[-1]
            cfg = {**cfg, 'input_size': (self.in_chans, *self.img_size), 'pool_size': pool}
            self.pretrained_cfg = self.default_cfg = cfg

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem in channels-last (NHWC convs and max-pool: ~1.5x faster), BatchNorm folded in eval."""
        if torch.jit.is_scripting():
            return self.stem(x.contiguous(memory_format=torch.channels_last))
        if torch.jit.is_tracing():  # jit tracers (legacy ONNX export, fvcore FLOP counts) get the plain graph
            return self.stem(x)
        return self._stem_folded(x.contiguous(memory_format=torch.channels_last))

    @torch.jit.unused
    def _stem_folded(self, x: torch.Tensor) -> torch.Tensor:
        """Eager: each BatchNorm folded into its conv; in fused inference on slices of the batch (``_fused.stem``)."""
        return _fused.stem(self.stem, x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the selected stages (``B, C_i, H/2^(i+2), W/2^(i+2)``) and optionally the final map."""
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        check_input_2d(x, self.in_chans, self.img_size, 'MedNeXt')
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self._stem(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) not needed for the requested intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '', reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B, in_chans, H, W`` -> ``B, num_features, H/32, W/32``."""
        if self.reference_path:
            return self.forward_features_reference(x)
        check_input_2d(x, self.in_chans, self.img_size, 'MedNeXt')
        return self.stages(self._stem(x))

    def forward_features_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain reference path (NCHW stem), kept for equivalence tests; see ``set_reference_paths``."""
        check_input_2d(x, self.in_chans, self.img_size, 'MedNeXt')
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features ``B, num_features, h, w`` -> logits ``B, num_classes``; with ``pre_logits`` the pooled, normed
        features before the final linear layer."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``B, in_chans, H, W`` (``(H, W) == img_size``) -> logits ``B, num_classes``; raises UserInputError for
        another rank, channel count or size."""
        return self.forward_head(self.forward_features(x))


def set_reference_paths(model: nn.Module, enable: bool = True) -> nn.Module:
    """Run ``model`` (any module holding MedNeXt / MedUNeXt blocks) on the plain reference paths, or back.

    Sets the ``reference_path`` flag of every module that has one (LAFFN, SEM, MedBlock, MedStage, MedNeXt,
    MedUNeXt's UpBlock): LAFFN, SEM, MedStage and UpBlock then run ``forward_reference``, MedNeXt
    ``forward_features_reference`` (NCHW stem, BatchNorm unfolded), and MedBlock adds each sub-block's residual on its
    own. ``enable=False`` restores the optimised paths. Same weights, same ``state_dict``: for equivalence tests and
    before/after benchmarks. Returns ``model``.
    """
    for module in model.modules():
        if hasattr(module, 'reference_path'):
            module.reference_path = enable
    return model


def conv_weights_channels_last(module: nn.Module) -> nn.Module:
    """Give every depth-wise ``(C, 1, kh, kw)`` and 1x1 ``(K, C, 1, 1)`` conv weight of ``module`` channels-last
    strides; returns ``module``.

    MedNeXt / MedUNeXt run these convs on channels-last activations, so their weight gradients come out with
    channels-last strides (CPU and cuDNN alike). For such a weight both layouts are the same bytes and differ only
    in the strides of size-1 dimensions: autograd accepts either, but DDP's gradient buckets take the parameter's
    strides and compare them exactly ("Grad strides do not match bucket view strides" on every rank). The view
    set here changes stride metadata only: no copy, and every kernel reads the same memory as before.
    """
    for m in module.modules():
        if not isinstance(m, nn.Conv2d) or m.weight.dim() != 4:
            continue
        w = m.weight.data
        k, c, h, wd = w.shape
        if (c == 1 or (h == 1 and wd == 1)) and w.is_contiguous():
            m.weight.data = w.as_strided(w.shape, (c * h * wd, 1, wd * c, c))
    return module


BLOCK_INITS = ('trunc_normal', 'xavier', 'torch')


def _init_weights(module: nn.Module, name: Optional[str] = None, block_init: str = 'trunc_normal') -> None:
    """Initialise the linear and depth-wise conv layers (``block_init``, see :data:`BLOCK_INITS`).

    'trunc_normal': truncated normal, std 0.02, zero bias (timm's ConvNeXt / ViT); 'xavier': Xavier-uniform
    linear layers, zero bias, PyTorch's default depth-wise convs; 'torch': PyTorch's defaults (nothing changed).
    """
    is_linear = isinstance(module, nn.Linear)
    if not is_linear and not (isinstance(module, nn.Conv2d) and module.groups > 1):
        return
    if block_init == 'trunc_normal':
        trunc_normal_(module.weight, std=.02)
    elif block_init == 'xavier' and is_linear:
        nn.init.xavier_uniform_(module.weight)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Unwrap training checkpoints and resample axial mixing matrices to the model's input size."""
    for key in ('state_dict', 'model', 'state_dict_ema'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    state_dict = {k[7:] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if ('.mix_h.' in k or '.mix_w.' in k) and k in target and v.shape != target[k].shape:
            new_len = target[k].shape[-1]
            v = resample_axial_weight(v, new_len) if v.ndim == 2 else resample_axial_bias(v, new_len)
        out[k] = v
    return out


def _create_mednext(variant: str, pretrained: bool = False, **kwargs) -> MedNeXt:
    # timm's build_model_with_cfg, but pretrained=True never ends in random weights (see _pretrained.py)
    model = build_model_with_pretrained(
        MedNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )
    if isinstance(model, MedNeXt):
        model._sync_pretrained_cfg()
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'fixed_input_size': True,
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc',
        'license': 'apache-2.0',
        'paper_ids': 'Xue et al., PLoS One 2026',
        **kwargs,
    }


# mednext_base tags: the paper's classification datasets, Hub ids '<HF_HUB_ORG>/mednext_base.<tag>'.
# The first tag is the default of `timm.create_model('mednext_base', pretrained=True)`. Dataset
# facts and publication status live in _pretrained.py (DATASETS, PRETRAINED_TAGS).
default_cfgs = generate_default_cfgs({
    'mednext_base.sarscov2_ct': _cfg(**pretrained_cfg_kwargs('mednext_base.sarscov2_ct')),
    'mednext_base.monkeypox_msld': _cfg(**pretrained_cfg_kwargs('mednext_base.monkeypox_msld')),
    'mednext_base.covid_ct_large': _cfg(**pretrained_cfg_kwargs('mednext_base.covid_ct_large')),
    'mednext_tiny': _cfg(),
    'mednext_small': _cfg(),
    'mednext_large': _cfg(),
})

MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    'mednext_tiny': dict(depths=(2, 2, 2, 2), dims=(32, 64, 128, 256)),
    'mednext_small': dict(depths=(2, 2, 2, 2), dims=(48, 96, 192, 384)),
    'mednext_base': dict(depths=(2, 2, 2, 2), dims=(64, 128, 256, 512)),
    'mednext_large': dict(depths=(2, 2, 6, 2), dims=(80, 160, 320, 640)),
}


@register_model
def mednext_tiny(pretrained: bool = False, **kwargs) -> MedNeXt:
    """MedNeXt-T: dims 32-64-128-256, depths 2-2-2-2."""
    return _create_mednext('mednext_tiny', pretrained=pretrained, **dict(MODEL_ARGS['mednext_tiny'], **kwargs))


@register_model
def mednext_small(pretrained: bool = False, **kwargs) -> MedNeXt:
    """MedNeXt-S: dims 48-96-192-384, depths 2-2-2-2."""
    return _create_mednext('mednext_small', pretrained=pretrained, **dict(MODEL_ARGS['mednext_small'], **kwargs))


@register_model
def mednext_base(pretrained: bool = False, **kwargs) -> MedNeXt:
    """MedNeXt-B, the paper's model: dims 64-128-256-512, depths 2-2-2-2, stem 16-32-64."""
    return _create_mednext('mednext_base', pretrained=pretrained, **dict(MODEL_ARGS['mednext_base'], **kwargs))


@register_model
def mednext_large(pretrained: bool = False, **kwargs) -> MedNeXt:
    """MedNeXt-L: dims 80-160-320-640, depths 2-2-6-2."""
    return _create_mednext('mednext_large', pretrained=pretrained, **dict(MODEL_ARGS['mednext_large'], **kwargs))
