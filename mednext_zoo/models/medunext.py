"""MedUNeXt: the U-shaped 2D segmentation network of MedNeXt (Xue et al., PLoS One 2026).

Not the 3D MedNeXt of Roy et al. (MICCAI 2023). The layout follows UNeXt (three conv levels,
then token-mixing levels), with the MED block of :mod:`mednext_zoo.models.mednext`:

* encoder: a stride-2 max-pool on the input, three conv levels (each two 3x3 conv-BN-ReLU),
  then MED stages; every level after the first starts with a 3x3 stride-2 conv + BN (the
  paper's "down-sample at the end of each block"). The last MED stage is the bottleneck;
* decoder: mirrors the encoder (without the bottleneck); each level upsamples by a 2x2
  stride-2 transposed conv + BN, adds the encoder feature of the same scale (additive skip)
  and runs the same kind of block as the encoder level (MED blocks or two convs);
* a last transposed conv undoes the max-pool, and a 1x1 conv gives the logits.

Widths and depths of ``medunext_base`` (conv 16-32-128, MED 480 x 3 at 1/16 and 768 x 2 at
1/32, decoder mirrored) are our reading of the paper, chosen to match its 39.85 M parameters;
see ``docs/medunext.md``.

Input sides must be multiples of the total stride (32) and equal to ``img_size`` (the axial
mixing matrices of the MED blocks fix the resolution). :func:`pad_to_valid_size` and
:func:`crop_to_size` pad an image and crop the prediction back.
"""
import math
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (
    ConvNormAct,
    GroupNormAct,
    calculate_drop_path_rates,
    get_device_dtype,
    get_norm_act_layer,
    register_notrace_function,
    to_2tuple,
)
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq, named_apply

from ..errors import UserInputError
from . import _export_form
from ._pretrained import build_model_with_pretrained, pretrained_cfg_kwargs
from .mednext import BLOCK_INITS, MedStage, SizeLike, _init_weights, check_rank_and_channels, conv_weights_channels_last
from .mednext import checkpoint_filter_fn as _mednext_checkpoint_filter_fn

__all__ = [
    'MedUNeXt', 'ConvStage', 'UpBlock', 'DecoderLevel', 'pad_to_valid_size', 'crop_to_size', 'nearest_valid_sizes',
    'SYNAPSE_LABELS', 'ACDC_LABELS',
]

SYNAPSE_LABELS = (
    'background', 'aorta', 'gallbladder', 'left kidney', 'right kidney', 'liver', 'pancreas', 'spleen', 'stomach',
)
ACDC_LABELS = ('background', 'right ventricle', 'myocardium', 'left ventricle')


def nearest_valid_sizes(size: int, stride: int = 32) -> Tuple[int, int]:
    """The multiples of ``stride`` just below and above ``size`` (the lower one is at least ``stride``)."""
    lower = max(stride, (size // stride) * stride)
    upper = -(-size // stride) * stride
    return lower, max(upper, stride)


def _check_multiple(size: Tuple[int, int], stride: int, what: str) -> None:
    bad = [(name, s) for name, s in zip(('height', 'width'), size, strict=True) if s % stride != 0 or s <= 0]
    if not bad:
        return
    hints = ', '.join(f'{name} {s} -> {" or ".join(str(v) for v in dict.fromkeys(nearest_valid_sizes(s, stride)))}'
                      for name, s in bad)
    if what == 'img_size':
        todo = 'Build the model with one of those sizes and pad or resize your images to it.'
    else:
        todo = (f'Resize the image, or pad it with mednext_zoo.models.medunext.pad_to_valid_size(x, {stride}) and '
                f'crop the prediction back with crop_to_size(...), or call model.forward_padded(x).')
    raise UserInputError(
        f'MedUNeXt {what} {size[0]}x{size[1]}: every side must be a positive multiple of the network\'s total '
        f'stride {stride} (nearest valid sizes: {hints}). {todo}'
    )


@register_notrace_function  # a leaf for FX tracing (timm's feature extraction)
def check_input_medunext(x: torch.Tensor, in_chans: int, img_size: Tuple[int, int], stride: int) -> None:
    """Raise :class:`UserInputError` unless ``x`` is ``B, in_chans, *img_size`` with sides multiples of ``stride``."""
    check_rank_and_channels(x, in_chans, 'MedUNeXt')
    h, w = int(x.shape[2]), int(x.shape[3])
    _check_multiple((h, w), stride, 'input')
    if h != img_size[0] or w != img_size[1]:
        raise UserInputError(
            f'MedUNeXt built for {img_size[0]}x{img_size[1]} inputs got {h}x{w}. Resize the input, '
            f'or create the model with img_size=({h}, {w}) / call model.set_input_size(img_size=({h}, {w})).'
        )


def pad_to_valid_size(
        x: torch.Tensor,
        stride: int = 32,
        size: Optional[SizeLike] = None,
        mode: str = 'constant',
        value: float = 0.,
) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Pad ``x`` (``B, C, H, W``) symmetrically to a valid MedUNeXt input size.

    Args:
        x: Image batch ``B, C, H, W``.
        stride: Sides are padded up to the next multiple of this (the network's total stride, 32).
        size: Pad to exactly this ``(H, W)`` instead (e.g. ``model.img_size``); must be at least
            the image size.
        mode: ``F.pad`` mode ('constant', 'reflect', 'replicate').
        value: Fill value for 'constant' (use the background intensity of the normalised image).

    Returns:
        The padded batch and the padding ``(left, right, top, bottom)`` to give :func:`crop_to_size`.

    Note: the LAFFN softmax over all tokens couples every position, so padding changes every output
    a little; whole-image inference at the size the model was trained for is best.
    """
    if x.dim() != 4:
        raise UserInputError(f'pad_to_valid_size expects a 4-D tensor (B, C, H, W); got shape {tuple(x.shape)}.')
    h, w = x.shape[-2:]
    if size is None:
        th, tw = -(-h // stride) * stride, -(-w // stride) * stride
    else:
        th, tw = to_2tuple(size)
        if th < h or tw < w:
            raise UserInputError(
                f'pad_to_valid_size cannot pad a {h}x{w} image to the smaller size {th}x{tw}; resize it instead.'
            )
    top, left = (th - h) // 2, (tw - w) // 2
    padding = (left, tw - w - left, top, th - h - top)
    if mode == 'reflect' and (max(padding[:2]) >= w or max(padding[2:]) >= h):
        raise UserInputError(
            f"pad_to_valid_size: 'reflect' padding of a {h}x{w} image to {th}x{tw} needs more padding than the "
            f"image has pixels; use mode='replicate' or 'constant'."
        )
    if mode == 'constant':
        return F.pad(x, padding, mode=mode, value=value), padding
    return F.pad(x, padding, mode=mode), padding


def crop_to_size(y: torch.Tensor, padding: Tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_valid_size` on a prediction ``B, K, H', W'`` -> ``B, K, H, W``."""
    left, right, top, bottom = padding
    h, w = y.shape[-2:]
    return y[..., top:h - bottom, left:w - right]


def _mirror_rates(rates: List[float], depth: int) -> List[float]:
    """Drop-path rates of a decoder level: the encoder level's, deep to shallow, repeated as needed."""
    rev = list(reversed(rates))
    return [rev[min(i, len(rev) - 1)] for i in range(depth)]


def _group_norm_act(num_channels: int, **kwargs) -> GroupNormAct:
    """GroupNorm (+ act) with 8 groups, or fewer when ``num_channels`` is not a multiple of 8."""
    return GroupNormAct(num_channels, num_groups=math.gcd(8, num_channels), **kwargs)


def _instance_norm_act(num_channels: int, **kwargs) -> GroupNormAct:
    """Instance norm (+ act): one group per channel, affine."""
    return GroupNormAct(num_channels, num_groups=num_channels, **kwargs)


NORM_LAYERS: Dict[str, Union[str, Callable]] = {
    'batchnorm': 'batchnorm',
    'groupnorm': _group_norm_act,
    'instancenorm': _instance_norm_act,
}
UPSAMPLERS = ('transposed', 'bilinear', 'bilinear_conv3')
SKIP_FUSIONS = ('add', 'concat')
INPUT_DOWNSAMPLERS = ('maxpool', 'conv')
INITS = ('timm', 'kaiming')
FULL_RES = ('none', 'refine', 'input', 'skip')


class ConvStage(nn.Module):
    """Conv level: optional 3x3 stride-2 conv + norm, then two 3x3 conv-norm-ReLU.

    ``B, C, H, W`` -> ``B, C', H', W'`` (``H' = H / 2`` with ``downsample``).
    """

    def __init__(self, in_chs: int, out_chs: int, downsample: bool = True,
                 norm_layer: Union[str, Callable] = 'batchnorm', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        if downsample:
            self.downsample = ConvNormAct(in_chs, out_chs, 3, stride=2, padding=1, bias=False, apply_act=False,
                                          norm_layer=norm_layer, **dd)
            in_chs = out_chs
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            ConvNormAct(in_chs, out_chs, 3, padding=1, bias=False, norm_layer=norm_layer, **dd),
            ConvNormAct(out_chs, out_chs, 3, padding=1, bias=False, norm_layer=norm_layer, **dd),
        )

    def set_feat_size(self, feat_size: Tuple[int, int]) -> None:
        """Conv levels work at any size (kept for a uniform stage interface)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, C, H, W`` -> ``B, C', H', W'``."""
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class UpBlock(nn.Module):
    """2x upsampling + norm (+ ReLU): ``B, C, H, W`` -> ``B, C', 2H, 2W``.

    ``mode='transposed'`` (the paper's): a 2x2 stride-2 transposed conv (each output pixel is a linear map of one
    input pixel, with one of four kernels by position). ``mode='bilinear'``: a 1x1 conv at the input resolution,
    then bilinear interpolation (a quarter of the transposed conv's weights and FLOPs; the output is smooth).
    ``mode='bilinear_conv3'``: bilinear interpolation, then a 3x3 conv at the output resolution (9x the
    transposed conv's FLOPs).
    """

    def __init__(self, in_chs: int, out_chs: int, apply_act: bool = False, mode: str = 'transposed',
                 norm_layer: Union[str, Callable] = 'batchnorm', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.mode = mode
        if mode == 'bilinear':
            self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False, **dd)
        elif mode == 'bilinear_conv3':
            self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False, **dd)
        else:
            self.conv = nn.ConvTranspose2d(in_chs, out_chs, 2, stride=2, bias=False, **dd)
        self.bn = get_norm_act_layer(norm_layer, nn.ReLU)(out_chs, apply_act=apply_act, **dd)  # norm (+ ReLU)
        self.reference_path = False  # see mednext.set_reference_paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, C, H, W`` -> ``B, C', 2H, 2W``."""
        if torch.jit.is_tracing() and not self.reference_path:
            return self._forward_traced(x)
        return self.forward_reference(x)

    @torch.jit.unused
    def _forward_traced(self, x: torch.Tensor) -> torch.Tensor:
        """Under jit tracing: the plain graph, or inside ``export_form`` the BatchNorm folded (``_export_form.py``)."""
        if _export_form.export_form_active():
            return _export_form.up_forward(self, x)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain path: ``B, C, H, W`` -> ``B, C', 2H, 2W``."""
        if self.mode == 'bilinear':
            x = F.interpolate(self.conv(x), scale_factor=2., mode='bilinear', align_corners=False)
        elif self.mode == 'bilinear_conv3':
            x = self.conv(F.interpolate(x, scale_factor=2., mode='bilinear', align_corners=False))
        else:
            x = self.conv(x)
        return self.bn(x)


_export_form.register_types(UpBlock=UpBlock)


class DecoderLevel(nn.Module):
    """One decoder level: ``x`` ``B, C_deep, h, w`` and ``skip`` ``B, C, 2h, 2w`` -> ``B, C, 2h, 2w``.

    ``stage(up(x) + skip)`` (additive skip, UNeXt-style), or with ``concat=True``
    ``stage(fuse([up(x), skip]))``, where ``fuse`` is a 1x1 conv-norm-ReLU ``2C -> C`` (or the identity when
    the stage itself takes the ``2C`` channels, as a conv level does).
    """

    def __init__(self, up: nn.Module, stage: nn.Module, concat: bool = False, fuse: Optional[nn.Module] = None):
        super().__init__()
        self.up = up
        self.concat = concat
        self.fuse = fuse if fuse is not None else nn.Identity()
        self.stage = stage

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` ``B, C_deep, h, w`` and ``skip`` ``B, C, 2h, 2w`` -> ``B, C, 2h, 2w``."""
        x = self.up(x)
        if self.concat:
            return self.stage(self.fuse(torch.cat([x, skip], dim=1)))
        return self.stage(x + skip)


class MedUNeXt(nn.Module):
    """MedUNeXt segmentation network (Xue et al., PLoS One 2026).

    ``B, in_chans, H, W`` -> logits ``B, num_classes, H, W``, with ``(H, W) == img_size`` and both
    sides multiples of :attr:`stride` (32 for the registered models).

    Encoder levels (``forward_encoder`` / ``forward_intermediates``), for the default 3 conv and
    2 MED levels: ``conv_dims[i]`` channels at ``1/2, 1/4, 1/8`` and ``med_dims[j]`` at
    ``1/16, 1/32`` of the input size.
    """

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = 9,
            img_size: SizeLike = 224,
            conv_dims: Sequence[int] = (16, 32, 128),
            med_dims: Sequence[int] = (480, 768),
            med_depths: Sequence[int] = (3, 2),
            decoder_med_depths: Optional[Sequence[int]] = None,
            laffn: bool = True,
            token_mixer: str = 'sem',
            ffn: str = 'sdffn',
            skip_fusion: str = 'add',
            upsample: str = 'transposed',
            input_downsample: str = 'maxpool',
            full_res: str = 'none',
            norm: str = 'batchnorm',
            deep_supervision: bool = False,
            init: str = 'kaiming',
            block_init: str = 'trunc_normal',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Input channels: 1 for a CT / MRI slice, k for k adjacent slices (2.5D input).
            num_classes: Output classes (including background).
            img_size: Input size (int or (H, W)), sides multiples of the total stride; fixes the
                axial mixing matrices (change later with ``set_input_size``).
            conv_dims: Widths of the conv levels (after the max-pool, at 1/2, 1/4, ...).
            med_dims: Widths of the MED levels; the last one is the bottleneck.
            med_depths: MED blocks per encoder MED level.
            decoder_med_depths: MED blocks per decoder MED level, shallow to deep
                (default: mirror the encoder, ``med_depths[:-1]``).
            laffn, token_mixer, ffn: MED sub-block switches for ablations (see ``MedBlock``).
            skip_fusion: 'add' (UNeXt-style additive skips) or 'concat' (concatenate, then a conv fuses).
            upsample: 'transposed' (2x2 stride-2 transposed conv, the paper's) or 'bilinear' (+ 3x3 conv).
            input_downsample: 'maxpool' (the paper's max-pool on the input) or 'conv' (a learned 3x3 stride-2
                conv-norm-ReLU to ``conv_dims[0]`` channels).
            full_res: What happens at full resolution after the last upsampling: 'none' (the 1x1 head reads
                the upsampled map, our reading of the paper), 'refine' (two 3x3 conv-norm-ReLU first),
                'input' (the input image is concatenated as a skip, then two 3x3 conv-norm-ReLU), 'skip' (a
                full-resolution encoder level, two 3x3 conv-norm-ReLU on the input, fused like the other skips,
                then two 3x3 conv-norm-ReLU).
            norm: Normalisation of the conv levels and upsampling blocks: 'batchnorm' (the paper's),
                'groupnorm' or 'instancenorm'.
            deep_supervision: In training mode, :meth:`forward_deep` also returns logits of the decoder
                levels at 1/2 and 1/4 resolution (1x1 heads); ``forward`` is unchanged.
            init: 'kaiming' (default since 0.2: He-normal, fan-out, for every dense and transposed conv; Xavier
                for the 1x1 heads) or 'timm' (PyTorch's defaults for the dense convs). The MED blocks' linear
                and depth-wise layers follow ``block_init`` either way.
            block_init: How the MED blocks' linear and depth-wise conv layers start (see ``MedNeXt``):
                'trunc_normal' (std 0.02), 'xavier' or 'torch'.
            drop_rate: Dropout before the 1x1 head.
            drop_path_rate: Stochastic depth over the encoder MED blocks (decoder mirrors it).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        conv_dims, med_dims, med_depths = tuple(conv_dims), tuple(med_dims), tuple(med_depths)
        if not conv_dims or not med_dims:
            raise UserInputError('MedUNeXt needs at least one conv level and one MED level.')
        if len(med_depths) != len(med_dims):
            raise UserInputError(f'med_depths {med_depths} and med_dims {med_dims} must have the same length.')
        decoder_med_depths = tuple(med_depths[:-1] if decoder_med_depths is None else decoder_med_depths)
        if len(decoder_med_depths) != len(med_dims) - 1:
            raise UserInputError(
                f'decoder_med_depths {decoder_med_depths} needs one entry per non-bottleneck MED level '
                f'({len(med_dims) - 1}).'
            )
        for arg, value, allowed in (('skip_fusion', skip_fusion, SKIP_FUSIONS), ('upsample', upsample, UPSAMPLERS),
                                    ('input_downsample', input_downsample, INPUT_DOWNSAMPLERS),
                                    ('norm', norm, tuple(NORM_LAYERS)), ('init', init, INITS),
                                    ('block_init', block_init, BLOCK_INITS),
                                    ('full_res', full_res, FULL_RES)):
            if value not in allowed:
                raise UserInputError(f'MedUNeXt {arg}={value!r}: choose one of {", ".join(allowed)}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.deep_supervision = deep_supervision
        dims = conv_dims + med_dims
        self.num_levels = len(dims)
        self.num_conv_levels = len(conv_dims)
        self.stride = 2 ** self.num_levels  # input downsample, then one stride-2 conv per level after the first
        self.img_size = to_2tuple(img_size)
        _check_multiple(self.img_size, self.stride, 'img_size')
        sizes = self._level_sizes(self.img_size)
        block_kwargs = dict(laffn=laffn, token_mixer=token_mixer, ffn=ffn)
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(med_depths), stagewise=True)  # per level, per block
        norm_layer = NORM_LAYERS[norm]
        concat = skip_fusion == 'concat'

        # encoder
        if input_downsample == 'maxpool':
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
            prev_chs = in_chans
        else:
            self.pool = ConvNormAct(in_chans, dims[0], 3, stride=2, padding=1, bias=False, norm_layer=norm_layer, **dd)
            prev_chs = dims[0]
        # the full-resolution skip: an encoder level on the input ('skip'), the input itself ('input'), or none
        self.full_res: Optional[nn.Module] = None
        if full_res == 'skip':
            self.full_res = ConvStage(in_chans, dims[0], downsample=False, norm_layer=norm_layer, **dd)
        elif full_res == 'input':
            self.full_res = nn.Identity()
        stages = []
        self.feature_info = []
        for i, dim in enumerate(dims):
            if i < self.num_conv_levels:
                stages.append(ConvStage(prev_chs, dim, downsample=i > 0, norm_layer=norm_layer, **dd))
            else:
                j = i - self.num_conv_levels
                stages.append(MedStage(
                    prev_chs,
                    dim,
                    feat_size=sizes[i],
                    depth=med_depths[j],
                    downsample=True,
                    drop_path_rates=dp_rates[j],
                    block_kwargs=block_kwargs,
                    **dd,
                ))
            prev_chs = dim
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 1), module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

        # decoder, deep to shallow: upsample level i+1 -> i, fuse skip i, run level i's block
        decoder = []
        for i in range(self.num_levels - 2, -1, -1):
            up = UpBlock(dims[i + 1], dims[i], mode=upsample, norm_layer=norm_layer, **dd)
            fuse = None
            if i < self.num_conv_levels:
                stage = ConvStage(dims[i] * (2 if concat else 1), dims[i], downsample=False, norm_layer=norm_layer,
                                  **dd)
            else:
                j = i - self.num_conv_levels
                stage = MedStage(
                    dims[i],
                    dims[i],
                    feat_size=sizes[i],
                    depth=decoder_med_depths[j],
                    downsample=False,
                    drop_path_rates=_mirror_rates(dp_rates[j], decoder_med_depths[j]),
                    block_kwargs=block_kwargs,
                    **dd,
                )
                if concat:
                    fuse = ConvNormAct(2 * dims[i], dims[i], 1, bias=False, norm_layer=norm_layer, **dd)
            decoder.append(DecoderLevel(up, stage, concat=concat, fuse=fuse))
        self.decoder = nn.ModuleList(decoder)  # deep to shallow
        if full_res in ('input', 'skip'):  # the last upsampling is a decoder level with a full-resolution skip
            skip_chs = in_chans if full_res == 'input' else dims[0]
            cat = concat or full_res == 'input'
            self.final_up = DecoderLevel(
                UpBlock(dims[0], dims[0], mode=upsample, norm_layer=norm_layer, **dd),
                ConvStage(dims[0] + skip_chs if cat else dims[0], dims[0], downsample=False, norm_layer=norm_layer,
                          **dd),
                concat=cat,
            )
        elif full_res == 'refine':
            self.final_up = nn.Sequential(
                UpBlock(dims[0], dims[0], apply_act=True, mode=upsample, norm_layer=norm_layer, **dd),
                ConvStage(dims[0], dims[0], downsample=False, norm_layer=norm_layer, **dd),
            )
        else:  # undoes the input downsampling
            self.final_up = UpBlock(dims[0], dims[0], apply_act=True, mode=upsample, norm_layer=norm_layer, **dd)
        self.num_features = self.head_hidden_size = dims[0]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Conv2d(dims[0], num_classes, 1, **dd)
        # deep supervision: 1x1 heads on the last two decoder levels (1/2 and 1/4 resolution)
        self.aux_heads = nn.ModuleList([
            nn.Conv2d(dims[i], num_classes, 1, **dd) for i in range(min(2, self.num_levels - 1))
        ]) if deep_supervision else None
        named_apply(partial(_init_weights, block_init=block_init), self)
        if init == 'kaiming':
            named_apply(_init_kaiming, self)
        conv_weights_channels_last(self)  # the layout their gradients come in (DDP buckets)

    def _level_sizes(self, img_size: Tuple[int, int]) -> List[Tuple[int, int]]:
        h, w = img_size
        return [(h // 2 ** (i + 1), w // 2 ** (i + 1)) for i in range(self.num_levels)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups in depth order: encoder levels, then decoder levels, then the output layers."""
        return dict(
            stem=r'^pool|^full_res',
            blocks=r'^stages\.(\d+)',
            decoder=r'^decoder\.(\d+)',
            head=r'^final_up|^head|^aux_heads',
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Empty: timm's optimizer factory already exempts the 1-D parameters (biases, norms)."""
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the blocks of every encoder and decoder stage in the backward pass (saves memory)."""
        stages = list(self.stages) + [level.stage for level in self.decoder]
        stages += [m for m in self.modules() if isinstance(m, ConvStage) and m not in stages]
        for s in stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The 1x1 segmentation head (timm API)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New 1x1 head for ``num_classes`` (``global_pool`` is accepted for timm compatibility, unused)."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        self.head = conv_weights_channels_last(nn.Conv2d(self.num_features, num_classes, 1, **dd))

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[SizeLike] = None, **kwargs) -> None:
        """Rebuild for a new input size (sides multiples of ``stride``); axial mixing matrices are resampled."""
        if img_size is None:
            return
        img_size = to_2tuple(img_size)
        _check_multiple(img_size, self.stride, 'img_size')
        self.img_size = img_size
        sizes = self._level_sizes(img_size)
        for i, stage in enumerate(self.stages):
            stage.set_feat_size(sizes[i])
        for k, level in enumerate(self.decoder):
            level.stage.set_feat_size(sizes[self.num_levels - 2 - k])
        cfg = getattr(self, 'pretrained_cfg', None)
        if cfg:
            self.pretrained_cfg = {**cfg, 'input_size': (self.in_chans, *img_size)}

    def forward_encoder(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder features, shallow to deep: level ``i`` is ``B, dims[i], H / 2^(i+1), W / 2^(i+1)``.

        For ``medunext_base``: 16 ch @ 1/2, 32 @ 1/4, 128 @ 1/8, 480 @ 1/16, 768 @ 1/32 (bottleneck).
        Use them for deep supervision or a custom decoder (``forward_decoder`` takes this list).
        """
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            check_input_medunext(x, self.in_chans, self.img_size, self.stride)
        x = self.pool(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_full_res(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The full-resolution skip of a ``full_res='skip'`` (``B, dims[0], H, W``) or ``'input'`` model, else None."""
        if self.full_res is not None:
            return self.full_res(x)
        return None

    def forward_decoder(self, features: List[torch.Tensor], full_res: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder features (as from ``forward_encoder``) -> decoder map ``B, dims[0], H, W`` (before the head).

        ``full_res``: the full-resolution skip (``forward_full_res``) of a ``full_res='skip'|'input'`` model.
        After ``prune_intermediate_layers`` (no decoder) it returns the last encoder level.
        """
        return self._decode(features, full_res)[-1]

    def _decode(self, features: List[torch.Tensor], full_res: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """Every decoder level's output, deep to shallow, the full-resolution map last."""
        x = features[-1]
        outs: List[torch.Tensor] = []
        for k, level in enumerate(self.decoder):
            x = level(x, features[self.num_levels - 2 - k])
            outs.append(x)
        if self.full_res is not None:
            if full_res is None:
                raise UserInputError('This MedUNeXt has a full-resolution skip: pass forward_full_res(x) to '
                                     'forward_decoder, or call forward_features(x).')
            outs.append(self.final_up(x, full_res))
        else:
            outs.append(self.final_up(x))
        return outs

    @torch.jit.ignore
    def forward_deep(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Logits for deep supervision: ``[B, K, H, W]`` then ``B, K, H/2, W/2`` and ``B, K, H/4, W/4`` from the
        last two decoder levels (needs ``deep_supervision=True``; the loss downsamples the target to each)."""
        if self.aux_heads is None:
            raise UserInputError('forward_deep needs a model built with deep_supervision=True.')
        outs = self._decode(self.forward_encoder(x), self.forward_full_res(x))
        logits = [self.forward_head(outs[-1])]
        for i, head in enumerate(self.aux_heads):  # aux_heads[i] reads the decoder level at 1 / 2^(i+1)
            logits.append(head(self.head_drop(outs[-2 - i])))
        return logits

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm-style access to the encoder levels (see ``forward_encoder``).

        Returns the selected levels, and unless ``intermediates_only`` also the ``forward_features``
        map (decoder output before the head), as timm's ``(final, intermediates)``.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if intermediates_only and stop_early and not torch.jit.is_scripting():
            if not torch.jit.is_tracing():
                check_input_medunext(x, self.in_chans, self.img_size, self.stride)
            x = self.pool(x)
            intermediates = []
            for feat_idx, stage in enumerate(self.stages[:max_index + 1]):
                x = stage(x)
                if feat_idx in take_indices:
                    intermediates.append(x)
            return intermediates
        features = self.forward_encoder(x)
        intermediates = [features[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        return self.forward_decoder(features, self.forward_full_res(x)), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Keep the encoder levels needed for ``indices``.

        The decoder needs every level, so it goes with the head unless the last level is kept and
        ``prune_head=False``. A pruned model's ``forward_features`` / ``forward`` return the last kept
        encoder level.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if max_index == len(self.stages) - 1 and not prune_head:
            return take_indices
        self.stages = self.stages[:max_index + 1]
        self.decoder = nn.ModuleList()
        self.final_up = nn.Identity()
        self.full_res = None
        self.aux_heads = None
        self.num_classes = 0
        self.head = nn.Identity()
        self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B, in_chans, H, W`` -> decoder map ``B, dims[0], H, W`` (the features the 1x1 head classifies)."""
        return self.forward_decoder(self.forward_encoder(x), self.forward_full_res(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Decoder map ``B, dims[0], H, W`` -> logits ``B, num_classes, H, W``."""
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B, in_chans, H, W`` -> logits ``B, num_classes, H, W``.

        A ``deep_supervision=True`` model in training mode returns :meth:`forward_deep`'s list instead (the
        nnU-Net convention; the segmentation losses of :mod:`mednext_zoo.finetune` accept both).
        """
        if not torch.jit.is_scripting():
            if self.aux_heads is not None and self.training:
                return self.forward_deep(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_padded(self, x: torch.Tensor, mode: str = 'constant', value: float = 0.) -> torch.Tensor:
        """Pad ``x`` (sides at most ``img_size``) to ``img_size``, run the model, crop the logits back."""
        h, w = x.shape[-2:]
        if h > self.img_size[0] or w > self.img_size[1]:
            raise UserInputError(
                f'forward_padded: a {h}x{w} input is larger than the model\'s {self.img_size[0]}x{self.img_size[1]}; '
                f'resize it or call model.set_input_size(img_size=...) with a multiple of {self.stride}.'
            )
        xp, padding = pad_to_valid_size(x, self.stride, size=self.img_size, mode=mode, value=value)
        return crop_to_size(self(xp), padding)


def _init_kaiming(module: nn.Module, name: str = '') -> None:
    """He-normal (fan-out, ReLU) for every dense and transposed conv, Xavier for the 1x1 output heads."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.groups == 1:
        if name == 'head' or name.startswith('aux_heads'):
            nn.init.xavier_uniform_(module.weight)
        else:
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Unwrap training checkpoints and resample the axial mixing matrices to the model's input size."""
    return _mednext_checkpoint_filter_fn(state_dict, model)


def _create_medunext(variant: str, pretrained: bool = False, **kwargs) -> MedUNeXt:
    # timm's build_model_with_cfg, but pretrained=True never ends in random weights (see _pretrained.py)
    return build_model_with_pretrained(
        MedUNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 9, 'input_size': (1, 224, 224), 'fixed_input_size': True,
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': (0.5,), 'std': (0.5,),
        'first_conv': 'stages.0.blocks.0.conv', 'classifier': 'head',
        'label_names': SYNAPSE_LABELS,
        'license': 'apache-2.0',
        'paper_ids': 'Xue et al., PLoS One 2026',
        **kwargs,
    }


# the convs that read the input of a full_res='skip' model (both adapted to a new in_chans on load)
HR_FIRST_CONVS = ('stages.0.blocks.0.conv', 'full_res.blocks.0.conv')
# the `_hr` variants: what the paper leaves open chosen for training speed on small structures (measured in
# docs/medunext.md), on top of the paper's widths and depths
HR_ARGS: Dict[str, Any] = dict(full_res='skip', upsample='bilinear')

# medunext_base tags: the paper's segmentation datasets, Hub ids '<HF_HUB_ORG>/medunext_base.<tag>'.
# The first tag is the default of `timm.create_model('medunext_base', pretrained=True)`. Dataset
# facts and publication status live in _pretrained.py (DATASETS, PRETRAINED_TAGS).
default_cfgs = generate_default_cfgs({
    'medunext_base.synapse': _cfg(**pretrained_cfg_kwargs('medunext_base.synapse')),
    'medunext_base.acdc': _cfg(**pretrained_cfg_kwargs('medunext_base.acdc')),
    'medunext_tiny': _cfg(),
    'medunext_small': _cfg(),
    'medunext_large': _cfg(),
    # ours, not the paper's: a full-resolution skip and bilinear upsampling (see docs/medunext.md, trainability)
    'medunext_tiny_hr': _cfg(first_conv=HR_FIRST_CONVS),
    'medunext_small_hr': _cfg(first_conv=HR_FIRST_CONVS),
    'medunext_base_hr': _cfg(first_conv=HR_FIRST_CONVS),
    'medunext_large_hr': _cfg(first_conv=HR_FIRST_CONVS),
})

MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    'medunext_tiny': dict(conv_dims=(16, 32, 64), med_dims=(192, 288), med_depths=(2, 2)),
    'medunext_small': dict(conv_dims=(16, 32, 96), med_dims=(320, 512), med_depths=(2, 2)),
    'medunext_base': dict(conv_dims=(16, 32, 128), med_dims=(480, 768), med_depths=(3, 2)),
    'medunext_large': dict(conv_dims=(32, 64, 160), med_dims=(640, 960), med_depths=(3, 2)),
}
MODEL_ARGS.update({f'{name}_hr': dict(args, **HR_ARGS) for name, args in list(MODEL_ARGS.items())})


@register_model
def medunext_tiny(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-T: conv 16-32-64, MED 192 x 2 (1/16), 288 x 2 (1/32 bottleneck); 5.3 M params."""
    return _create_medunext('medunext_tiny', pretrained=pretrained, **dict(MODEL_ARGS['medunext_tiny'], **kwargs))


@register_model
def medunext_small(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-S: conv 16-32-96, MED 320 x 2 (1/16), 512 x 2 (1/32 bottleneck); 15.3 M params."""
    return _create_medunext('medunext_small', pretrained=pretrained, **dict(MODEL_ARGS['medunext_small'], **kwargs))


@register_model
def medunext_base(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-B, the paper's model: conv 16-32-128, MED 480 x 3 (1/16), 768 x 2 (1/32 bottleneck); 39.9 M."""
    return _create_medunext('medunext_base', pretrained=pretrained, **dict(MODEL_ARGS['medunext_base'], **kwargs))


@register_model
def medunext_large(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-L: conv 32-64-160, MED 640 x 3 (1/16), 960 x 2 (1/32 bottleneck); 66.9 M params."""
    return _create_medunext('medunext_large', pretrained=pretrained, **dict(MODEL_ARGS['medunext_large'], **kwargs))


@register_model
def medunext_tiny_hr(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-T-HR (ours): MedUNeXt-T plus a full-resolution skip and bilinear upsampling; 5.1 M params."""
    return _create_medunext('medunext_tiny_hr', pretrained=pretrained, **dict(MODEL_ARGS['medunext_tiny_hr'], **kwargs))


@register_model
def medunext_small_hr(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-S-HR (ours): MedUNeXt-S plus a full-resolution skip and bilinear upsampling."""
    return _create_medunext('medunext_small_hr', pretrained=pretrained,
                            **dict(MODEL_ARGS['medunext_small_hr'], **kwargs))


@register_model
def medunext_base_hr(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-B-HR (ours): MedUNeXt-B plus a full-resolution skip and bilinear upsampling; 38.6 M params."""
    return _create_medunext('medunext_base_hr', pretrained=pretrained, **dict(MODEL_ARGS['medunext_base_hr'], **kwargs))


@register_model
def medunext_large_hr(pretrained: bool = False, **kwargs) -> MedUNeXt:
    """MedUNeXt-L-HR (ours): MedUNeXt-L plus a full-resolution skip and bilinear upsampling."""
    return _create_medunext('medunext_large_hr', pretrained=pretrained,
                            **dict(MODEL_ARGS['medunext_large_hr'], **kwargs))
