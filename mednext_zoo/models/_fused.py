"""Fused fp32 CPU inference of the MED blocks on oneDNN kernels: the same maths as the model files, fewer passes.

MedNeXt's blocks are chains of small GEMMs and depth-wise convs whose outputs each make one more pass over memory
for a bias, a GELU or a residual add. In eager fp32 inference (autograd off, CPU, no autocast, no tracing or
``torch.compile``: :func:`fused_inference_ok`) the model modules hand their forward to the functions here, which

* run every GEMM on oneDNN's ``_linear_pointwise`` with its bias, GELU or residual add applied as it writes (the
  kernels ``torch.compile``'s CPU backend emits), on weights prepacked once into oneDNN's blocked layout;
* fold each eval-mode BatchNorm into its conv (``conv_bn``), the ReLU as a oneDNN post-op;
* fold SEM's ``Wg2 Wf`` and every bias after its depth-wise convs into cached weights and one position bias;
* run a stage's blocks, and the stem, on slices of the batch small enough to stay in the caches.

Derived weights (folds, packs) are cached on the module they come from (:func:`derived`) until a source tensor is
replaced or updated in place. The model files keep their plain forwards (what training, autocast, scripting,
tracing, ONNX export and fvcore use) and a one-line dispatch to :func:`laffn`, :func:`sem`, :func:`sdffn`,
:func:`med_block`, :func:`blocks_chunked` and :func:`stem`. ``torch.ops.mkldnn`` is private API: a torch release
that changes it breaks this module only, and the ``onednn`` lever (or a build without oneDNN) turns it off.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, DropPath

__all__ = ['KERNELS', 'fused_inference_ok', 'use_fused', 'conv_bn', 'laffn', 'sem', 'sdffn', 'med_block',
           'blocks_chunked', 'stem']

# oneDNN's fused inference kernels (the ops torch.compile's CPU backend emits): a GEMM with its bias, a GELU
# and / or a residual add applied as it writes its output, instead of one more pass over memory each. fp32 GEMMs
# of MedNeXt's shapes also run faster in oneDNN than in MKL (e.g. (50176 x 64) @ (64 x 64): 1.3-1.8x on Zen 4).
# No autograd formula: used only where autograd is off (see ``fused_inference_ok``). The switches below exist for
# ``benchmarks/speed/round2.py`` (each lever's share); they are not a public API.
KERNELS = {'onednn': True, 'residual': True, 'gelu': True, 'chunk': True, 'packed': True, 'stem_chunk': True}
# Fused inference runs a stage's blocks on slices of the batch whose activations (one ``B, H, W, C`` tensor)
# stay under this size, so a block's ~20 passes over them hit the caches instead of memory (MED blocks mix
# tokens within an image only: slicing the batch changes nothing).
CHUNK_BYTES = 4 * 2 ** 20
# The stem (three 3x3 convs at half resolution, then a max-pool) runs on slices of the batch whose widest
# activation (``B, 64, H/2, W/2`` for mednext_base) stays under this size: its four passes then stay in the last-level
# cache (224 x 224, batch 16, one thread: 1.5x faster stem on a 32 MiB L3).
STEM_CHUNK_BYTES = 16 * 2 ** 20


def _onednn_op(name: str) -> Optional[Any]:
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):  # a build without oneDNN (mkldnn)
        return None


ONEDNN_LINEAR = _onednn_op('_linear_pointwise')
ONEDNN_CONV = _onednn_op('_convolution_pointwise')
# Weights prepacked once into oneDNN's blocked layout (what torch.compile's CPU backend does with constant weights):
# the kernels then skip a reorder of every weight on every call, which matters most at batch 1 (e.g. 1.6x for the
# 3x3 conv into stage 4, 1.1x for stage 4's 512 x 512 GEMMs).
ONEDNN_PACK_LINEAR = _onednn_op('_reorder_linear_weight')
ONEDNN_PACK_CONV = _onednn_op('_reorder_convolution_weight')


# ----------------------------------------------------------------------------------------------- when it applies
def fused_inference_ok(x: torch.Tensor) -> bool:
    """True where MedNeXt's fused fp32 inference kernels apply to ``x``.

    That is: an fp32 CPU tensor, autograd off (``torch.no_grad`` / ``inference_mode``), no autocast, eager
    execution (not jit scripting / tracing, not ``torch.compile``, which fuses on its own), and a PyTorch built
    with oneDNN with ``torch.backends.mkldnn.enabled``. Everywhere else the modules take their autograd paths.
    """
    return (
        KERNELS['onednn'] and ONEDNN_LINEAR is not None
        and isinstance(x, torch.Tensor) and x.device.type == 'cpu' and x.dtype == torch.float32
        and not torch.is_grad_enabled() and not torch.is_autocast_enabled('cpu')
        and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    )


def cacheable(param: Optional[torch.Tensor]) -> bool:
    """False for an inference tensor (a parameter made under ``torch.inference_mode``): it has no version counter, so
    weights derived from it could not follow in-place updates; such modules take their unfused paths."""
    return param is None or not param.is_inference()


def use_fused(x: torch.Tensor, param: Optional[torch.Tensor]) -> bool:
    """The model files' dispatch: fused inference applies to ``x`` and the module owning ``param`` can cache."""
    return fused_inference_ok(x) and cacheable(param)


def block_fusable(block: nn.Module, x: torch.Tensor) -> bool:
    """A ``MedBlock`` runs fused: ``use_fused`` and no per-sample stochastic depth (training mode with DropPath)."""
    return (fused_inference_ok(x) and cacheable(next(block.parameters(), None))
            and (not block.training or not isinstance(block.drop_path, DropPath)))


# ---------------------------------------------------------------------------------------- the derived-weight cache
def derived(module: nn.Module, name: str, sources: Tuple[Optional[torch.Tensor], ...], build: Callable[[], Any],
            ) -> Any:
    """``build()`` (weights derived from ``module``'s parameters: folds, slices, prepacked layouts), cached on
    ``module`` for fused inference until a tensor in ``sources`` changes: replaced, or updated in place (its version
    counter moves). Inference tensors have no version counter: with one among ``sources`` nothing is cached and
    ``build()`` runs on every call (the modules check ``cacheable`` first and take their unfused paths)."""
    if any(t is not None and t.is_inference() for t in sources):
        return build()
    key = tuple(None if t is None else (id(t), t.data_ptr(), t._version, t.dtype, t.shape) for t in sources)
    cache = module.__dict__.get('_derived_weights')
    if cache is None:
        cache = module.__dict__['_derived_weights'] = DerivedCache()
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, build())
    return hit[1]


class DerivedCache(dict):
    """``derived``'s cache on a module: dropped by ``copy.deepcopy`` and pickling (it is rebuilt on the next fused
    forward; prepacked oneDNN weights are opaque tensors that can be neither copied nor pickled)."""

    def __deepcopy__(self, memo: Dict[int, Any]) -> 'DerivedCache':
        return DerivedCache()

    def __reduce__(self) -> Tuple[Any, ...]:
        return DerivedCache, ()


# ------------------------------------------------------------------------------------------------ oneDNN kernels
def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (``C_out, C_in``) in oneDNN's blocked GEMM layout (an opaque tensor only ``linear`` reads)."""
    weight = weight.contiguous()  # a strided weight (a column slice) sends oneDNN to a reference kernel
    return weight if ONEDNN_PACK_LINEAR is None else ONEDNN_PACK_LINEAR(weight)


def pack_conv_weight(weight: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A conv weight (``weight`` for ``conv``'s geometry) in oneDNN's blocked layout, for ``ONEDNN_CONV`` only."""
    if ONEDNN_PACK_CONV is None:
        return weight
    return ONEDNN_PACK_CONV(weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


def gemm_weight(linear: nn.Linear) -> torch.Tensor:
    """``linear.weight`` for ``linear``: prepacked (cached on ``linear``) unless the ``packed`` lever is off."""
    if not KERNELS['packed']:
        return linear.weight
    return derived(linear, 'packed', (linear.weight,), lambda: pack_linear_weight(linear.weight))


def linear(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        gelu: bool = False,
        add: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``x @ weight.T + bias`` then GELU (exact) or ``+ add``, one oneDNN kernel: ``..., C_in`` -> ``..., C_out``.

    For fused inference only (``fused_inference_ok``). ``weight`` dense or prepacked (``pack_linear_weight``); ``add``
    has the output's shape or broadcasts to it.
    """
    if not weight.is_mkldnn:  # a prepacked weight (``pack_linear_weight``) is in oneDNN's layout already
        weight = weight.contiguous()  # strided (a column slice): oneDNN would take a reference kernel, ~500x slower
    if add is not None:
        if not KERNELS['residual']:
            return ONEDNN_LINEAR(x, weight, bias, 'none', [], '') + add
        return ONEDNN_LINEAR.binary(x, add, weight, bias, 'add')
    if gelu:
        if not KERNELS['gelu']:
            return F.gelu(ONEDNN_LINEAR(x, weight, bias, 'none', [], ''))
        return ONEDNN_LINEAR(x, weight, bias, 'gelu', [], 'none')
    return ONEDNN_LINEAR(x, weight, bias, 'none', [], '')


def conv(module: nn.Conv2d, x: torch.Tensor, post_op: str = 'none') -> torch.Tensor:
    """``module(x)`` (then an exact GELU with ``post_op='gelu'``) for fused inference, ``x`` channels-last: one oneDNN
    kernel on the prepacked weight; the module's own forward where that kernel does not apply."""
    if (ONEDNN_CONV is None or not KERNELS['packed'] or module.padding_mode != 'zeros'
            or isinstance(module.padding, str) or (post_op == 'gelu' and not KERNELS['gelu'])):
        x = module(x)
        return F.gelu(x) if post_op == 'gelu' else x
    weight = derived(module, 'packed', (module.weight,), lambda: pack_conv_weight(module.weight, module))
    return ONEDNN_CONV(x, weight, module.bias, list(module.padding), list(module.stride), list(module.dilation),
                       module.groups, post_op, [], 'none' if post_op == 'gelu' else '')


def is_exact_gelu(act: nn.Module) -> bool:
    return type(act) is nn.GELU and act.approximate == 'none'


# ------------------------------------------------------------------------------------------ conv + BatchNorm folds
def _foldable_conv_bn(module: nn.Module) -> bool:
    """True for a timm ``ConvNormAct`` whose BatchNorm (eval, running stats) can fold into its conv."""
    c, bn = getattr(module, 'conv', None), getattr(module, 'bn', None)
    return (
        type(c) is nn.Conv2d and isinstance(bn, BatchNormAct2d) and not bn.training
        and bn.running_mean is not None and bn.running_var is not None and bn.weight is not None
        and bn.bias is not None and c.padding_mode == 'zeros'
    )


def conv_bn(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a timm ``ConvNormAct`` (any other module: its forward), with an eval-mode BatchNorm folded
    into the conv (one conv + bias, no BN pass): fused (cached, oneDNN, ReLU as a post-op) in fused inference,
    otherwise ``W' = W * g / sqrt(var + eps)``, ``b' = beta + (b - mean) * g / sqrt(var + eps)`` recomputed per call
    (weights are tiny), so it never goes stale."""
    if not _foldable_conv_bn(module):
        return module(x)
    if fused_inference_ok(x) and cacheable(module.conv.weight):
        return conv_bn_fused(module, x)
    c, bn = module.conv, module.bn
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.running_mean if c.bias is None else bn.running_mean - c.bias
    x = F.conv2d(x, c.weight * scale.reshape(-1, 1, 1, 1), bn.bias - shift * scale, c.stride, c.padding, c.dilation,
                 c.groups)
    x = bn.act(bn.drop(x))
    aa = getattr(module, 'aa', None)
    if aa is not None:
        x = aa(x)
    return x


def conv_bn_fused(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fp32 inference: the folded conv (weights cached, channels-last) with its ReLU as a oneDNN post-op."""
    c, bn = module.conv, module.bn

    def fold() -> Tuple[torch.Tensor, torch.Tensor]:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.running_mean if c.bias is None else bn.running_mean - c.bias
        # channels-last weights: oneDNN then skips a reorder of the weights on every call (2x at batch 1)
        weight = torch.empty_like(c.weight, memory_format=torch.channels_last)
        torch.mul(c.weight, scale.reshape(-1, 1, 1, 1), out=weight)
        return weight, bn.bias - shift * scale

    sources = (c.weight, c.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    act, aa = bn.act, getattr(module, 'aa', None)
    post_op = {nn.ReLU: 'relu', nn.Identity: 'none'}.get(type(act))
    if (ONEDNN_CONV is not None and post_op is not None and isinstance(bn.drop, nn.Identity) and aa is None
            and not isinstance(c.padding, str)):
        if KERNELS['packed']:
            def fold_packed() -> Tuple[torch.Tensor, torch.Tensor]:
                weight, bias = fold()
                return pack_conv_weight(weight, c), bias
            weight, bias = derived(module, 'conv_bn_packed', sources, fold_packed)
        else:
            weight, bias = derived(module, 'conv_bn', sources, fold)
        return ONEDNN_CONV(x, weight, bias, list(c.padding), list(c.stride), list(c.dilation), c.groups, post_op, [],
                           '')
    weight, bias = derived(module, 'conv_bn', sources, fold)
    x = bn.act(bn.drop(F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)))
    return x if aa is None else aa(x)


# -------------------------------------------------------------------------------------------------- the MED blocks
def laffn(m: nn.Module, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``LAFFN`` in fused fp32 inference: ``shortcut + LAFFN(x)`` (``shortcut`` optional), ``B, H, W, C``.

    In fp32 the product ``softmax_C * softmax_N`` (~1/(N C)) is an ordinary number, so the ``N`` scaling
    that keeps fp16 safe is left out, and ``b3`` and the residual are added by the last GEMM as it writes.
    """
    B, H, W, C = x.shape
    attn = linear(x, gemm_weight(m.fc_channel), m.fc_channel.bias).softmax(dim=-1)
    logits_n = linear(x, gemm_weight(m.fc_token))  # W2's bias cancels in the softmax over tokens
    attn.mul_(logits_n.view(B, H * W, C).softmax(dim=1).view(B, H, W, C))
    return linear(attn, gemm_weight(m.proj), m.proj.bias, add=shortcut)


def sem(m: nn.Module, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``SEM`` in fused fp32 inference: ``shortcut + SEM(x)`` (``shortcut`` optional), ``B, H, W, C``.

    The same sums as ``SEM.forward``, with GELU applied by the ``Wa`` GEMM, the position bias added by the first
    ``Wagg`` GEMM, each further projection accumulated by its GEMM, and the residual added by ``Wo``'s.
    """
    B, H, W, C = x.shape
    m._check_size(H, W)
    if is_exact_gelu(m.act):
        u = linear(x, gemm_weight(m.fc_in), m.fc_in.bias, gelu=True)
    else:
        u = m.act(linear(x, gemm_weight(m.fc_in), m.fc_in.bias))
    v = linear(x, gemm_weight(m.fc_value), m.fc_value.bias)
    u_2d = u.permute(0, 3, 1, 2)  # channels-last view: the depth-wise convs run in NHWC
    z0 = conv(m.dw0_v, conv(m.dw0_h, u_2d)).permute(0, 2, 3, 1).reshape(B, H * W, C)
    z1 = conv(m.dw1_v, conv(m.dw1_h, u_2d)).permute(0, 2, 3, 1).reshape(B, H * W, C)
    mix_h = torch.bmm(m.mix_h.weight.expand(B, H, H), u.view(B, H, W * C)).view(B, H * W, C)
    mix_w = torch.bmm(m.mix_w.weight.expand(B * H, W, W), u.view(B * H, W, C)).view(B, H * W, C)
    if KERNELS['packed']:
        wg0, wg1, wh, ww, bias = derived(m, 'agg_packed', sem_agg_sources(m), lambda: sem_agg_weights(m, C, pack=True))
    else:
        wg0, wg1, wh, ww, bias = derived(m, 'agg', sem_agg_sources(m), lambda: sem_agg_weights(m, C))
    attn = linear(z0, wg0, add=bias.expand(B, H * W, C))
    attn = linear(z1, wg1, add=attn)
    attn = linear(mix_w, ww, add=linear(mix_h, wh, add=attn))
    return linear(attn.mul_(v.view(B, H * W, C)).view(B, H, W, C), gemm_weight(m.proj), m.proj.bias, add=shortcut)


def sem_agg_sources(m: nn.Module) -> Tuple[torch.Tensor, ...]:
    """The tensors ``sem_agg_weights`` derives from (its cache key)."""
    return m.fc_agg.weight, m.fc_agg.bias, m.fc_mix.weight, m.fc_mix.bias, m.mix_h.bias, m.mix_w.bias


def sem_agg_weights(m: nn.Module, C: int, pack: bool = False) -> Tuple[torch.Tensor, ...]:
    """``Wagg``'s per-path blocks for ``z0``, ``z1``, with ``Wg2 Wf`` folded (cached: 2 C^3 MACs once) for the
    two axial mixes (prepacked for oneDNN with ``pack``), and the position bias ``(H W, C)``."""
    wg = m.fc_agg.weight
    wf = wg[:, 2 * C:] @ m.fc_mix.weight
    blocks = (wg[:, :C], wg[:, C:2 * C], wf[:, :C], wf[:, C:])
    blocks = tuple(pack_linear_weight(w) if pack else w.contiguous() for w in blocks)
    return blocks + (m._agg_bias(C),)


def sdffn(m: nn.Module, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``SDFFN`` in fused fp32 inference: ``shortcut + SDFFN(x)``, ``B, H, W, C``; GELU applied by the depth-wise
    conv."""
    x = linear(x, gemm_weight(m.fc1), m.fc1.bias).permute(0, 3, 1, 2)  # channels-last B, C, H, W view
    dw = m.conv_dw
    if ONEDNN_CONV is not None and KERNELS['gelu'] and is_exact_gelu(m.act) \
            and dw.padding_mode == 'zeros' and not isinstance(dw.padding, str):
        if KERNELS['packed']:
            x = conv(dw, x, 'gelu')
        else:
            x = ONEDNN_CONV(x, dw.weight, dw.bias, list(dw.padding), list(dw.stride), list(dw.dilation), dw.groups,
                            'gelu', [], 'none')
    else:
        x = m.act(dw(x))
    return linear(x.permute(0, 2, 3, 1), gemm_weight(m.fc2), m.fc2.bias, add=shortcut)


# The sub-blocks with a fused form that adds the residual in its last GEMM, registered by the model file (it owns the
# types and imports this module, never the reverse): ``{LAFFN: laffn, SEM: sem, SDFFN: sdffn}``.
RESIDUAL_FORMS: Dict[type, Callable[..., torch.Tensor]] = {}


def residual(module: nn.Module, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``shortcut + module(x)``: fused into the module's last GEMM where it has a fused form and is not switched to
    its reference path."""
    fused = RESIDUAL_FORMS.get(type(module))
    if fused is None or getattr(module, 'reference_path', False):
        return shortcut + module(x)
    return fused(module, x, shortcut)


def med_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``MedBlock`` in fused fp32 inference, ``B, H, W, C``: each sub-block adds its residual in its last GEMM (no
    separate add pass)."""
    if block.laffn is not None:
        x = residual(block.laffn, block.norm1(x), x)
    x = residual(block.token_mixer, block.norm2(x), x)
    return residual(block.ffn, block.norm3(x), x)


def blocks_chunked(blocks: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A stage's ``blocks`` (``B, H, W, C``) on near-equal slices of the batch, each under ``CHUNK_BYTES`` of
    activations."""
    per_image = x[0].numel() * x.element_size()
    chunks = -(-x.shape[0] * per_image // CHUNK_BYTES) if KERNELS['chunk'] else 1
    if chunks <= 1 or x.shape[0] == 1:
        return blocks(x)
    return torch.cat([blocks(c) for c in x.tensor_split(min(chunks, x.shape[0]))])


def stem(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """MedNeXt's stem (conv-BN-ReLU x 3, max-pool; ``x`` channels-last ``B, C, H, W``), each BatchNorm folded into its
    conv; in fused inference on slices of the batch whose widest activation stays under ``STEM_CHUNK_BYTES``."""
    if fused_inference_ok(x) and KERNELS['stem_chunk'] and x.shape[0] > 1:
        widest = max(layer.conv.out_channels for layer in layers if hasattr(layer, 'conv'))
        h, w = (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2
        chunks = min(x.shape[0], -(-x.shape[0] * widest * h * w * x.element_size() // STEM_CHUNK_BYTES))
        if chunks > 1:  # conv-BN-ReLU and max-pool work per image: slicing the batch changes nothing
            return torch.cat([stem_layers(layers, c) for c in x.tensor_split(chunks)])
    return stem_layers(layers, x)


def stem_layers(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The stem's layers in order, each conv-BN folded (``conv_bn``)."""
    for layer in layers:
        x = conv_bn(layer, x)
    return x
