"""The export form of the MED blocks: the same maths, expressed for the graph optimisers of deploy runtimes.

The reference path (what fvcore and the legacy tracer see by default) works on channels-last tokens
(``B, H, W, C``): ``Linear`` layers between ``permute``s, the axial mixes as ``Linear`` over permuted tensors,
concatenations before ``Wf`` / ``Wagg``. Traced to ONNX this gives ~1050 nodes for ``mednext_base`` (82
``Transpose``, 16 ``Concat``, ``Shape`` / ``Gather`` chains for every reshape), and neither ONNX Runtime nor
OpenVINO fuses most of it. Inside :func:`export_form` a traced stage runs this module's form instead:

* the whole stage stays ``B, C, H, W``: every projection is a 1x1 ``Conv`` (ORT's NCHWc kernels, OpenVINO's
  brgemm convs take them with bias, activation and residual add fused), the depth-wise convs need no transpose;
* the axial mixes are one ``MatMul`` per axis with a constant weight, ``Mh @ u`` along H and ``u @ Mw^T`` along W
  (on ``B, C, H, W`` both are plain batched matrix products: no transpose);
* SEM's ``Wagg [Z0; Z1; Wf [Mh; Mw]]`` is summed per path with ``Wg2 Wf`` folded into constant weights, all
  biases after the depth-wise convs folded into one constant ``(C, H, W)`` position bias; LAFFN's ``W2`` bias,
  which a softmax over tokens cancels, is dropped;
* LayerNorm over channels, softmax over channels and over tokens are written so no ``Transpose`` / ``Reshape``
  with a runtime-computed shape is needed (every shape is a constant but the batch);
* the BatchNorm after a transposed conv (MedUNeXt's upsampling) is folded into its weights.

Equal within fp32 rounding to the reference path (``tests/test_speed_paths.py``: every registered model); the
``state_dict`` is not touched: the derived constants live on the modules only inside the context manager.
The switches in ``FORM`` exist for ``benchmarks/speed/round3_export.py`` (each change's share); not a public API.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['export_form', 'export_form_active', 'FORM']

# Levers of the export form (for the benchmark; the defaults are what `export` writes).
FORM: Dict[str, object] = {
    'layout': 'nchw',          # 'nchw': the stage stays B, C, H, W; 'reference': the plain traced graph
    'layernorm': 'reduce',     # 'reduce': ReduceMean over channels; 'l2': variance as ReduceL2 of the centred input
                               # (no squared tensor written); 'transpose': Transpose + LayerNormalization
    'fold_ln': True,           # LayerNorm's affine folded into the 1x1 convs that read it
    'softmax_c': 'reduce',     # 'op': Softmax(axis=1); 'reduce': ReduceMax / Exp / ReduceSum / Div over channels
    'softmax_n': 'reshape',    # 'reshape': Softmax(axis=-1) on B, C, H*W (constant shape); 'reduce': over (2, 3)
    'agg': 'sum',              # 'sum': four 1x1 convs accumulated; 'concat': one conv over the concatenation
    'merge': False,            # same-input convs (LAFFN W1 | W2, SEM Wa | Wv) as one conv, then Split
    'proj': 'conv',            # 'conv': 1x1 Conv; 'matmul': W @ x on B, C, H*W (MatMul + Add, no conv layout)
    'fold_up_bn': True,        # BatchNorm after MedUNeXt's transposed convs folded into their weights
}

_ACTIVE = [False]
_CONSTS = '_export_form_consts'
# The model classes this module knows, registered by the model files (they import this module, never the reverse).
_TYPES: Dict[str, type] = {}


def register_types(**types: type) -> None:
    """Called by the model files: ``MedBlock``, ``LAFFN``, ``SEM``, ``SDFFN`` (mednext.py) and ``UpBlock``
    (medunext.py), so that :func:`export_form` recognises their modules."""
    _TYPES.update(types)


def _is(m: nn.Module, name: str) -> bool:
    t = _TYPES.get(name)
    return t is not None and isinstance(m, t)


def export_form_active() -> bool:
    """True inside :func:`export_form` (the hooks in the model files check it under jit tracing only)."""
    return _ACTIVE[0] and FORM['layout'] != 'reference'


@contextlib.contextmanager
def export_form(model: nn.Module, **levers: object) -> Iterator[nn.Module]:
    """Inside the block, jit tracing ``model`` (``torch.onnx.export(..., dynamo=False)``) records the export form
    of its MED stages (and of MedUNeXt's upsampling) instead of the reference path. ``levers`` override ``FORM``.

    The derived constants (folded weights, position biases) are computed once on entry from the current weights
    and dropped on exit; parameters and ``state_dict`` are unchanged. Eager calls inside the block are unaffected.
    """
    unknown = set(levers) - set(FORM)
    if unknown:
        raise ValueError(f'unknown export-form levers {sorted(unknown)}')
    saved, was = dict(FORM), _ACTIVE[0]
    FORM.update(levers)
    touched = []
    try:
        with torch.no_grad():
            for m in model.modules():
                consts = _derive(m)
                if consts is not None:
                    m.__dict__[_CONSTS] = consts
                    touched.append(m)
        _ACTIVE[0] = True
        yield model
    finally:
        _ACTIVE[0] = was
        FORM.clear()
        FORM.update(saved)
        for m in touched:
            m.__dict__.pop(_CONSTS, None)


Consts = Dict[str, Any]


def _derive(m: nn.Module) -> Optional[Consts]:
    """Constants of ``m``'s export form (``None`` for a module without one)."""
    if _is(m, 'MedBlock'):
        return _block_consts(m)
    if _is(m, 'UpBlock') and FORM['fold_up_bn']:
        return _up_consts(m)
    return None


def _up_consts(up: nn.Module) -> Optional[Consts]:
    """``UpBlock``'s conv with its eval-mode BatchNorm folded in: transposed (``W[:, k] * s_k``) or 1x1 before the
    bilinear interpolation (a convex combination per output pixel commutes with a per-channel affine map)."""
    bn, conv = up.bn, up.conv
    foldable = (isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None
                and bn.running_var is not None and isinstance(getattr(bn, 'drop', nn.Identity()), nn.Identity)
                and up.mode in ('transposed', 'bilinear') and conv.bias is None)
    if not foldable:
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    shape = (1, -1, 1, 1) if up.mode == 'transposed' else (-1, 1, 1, 1)  # ConvTranspose2d weight: (in, out, k, k)
    return {'w': (conv.weight * scale.reshape(shape)).detach().contiguous().clone(), 'b': shift.detach().clone()}


def up_forward(up: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``UpBlock`` in export form: ``B, C, H, W`` -> ``B, C', 2H, 2W``, its BatchNorm folded into the conv."""
    c = up.__dict__.get(_CONSTS)
    if c is None:
        return up.forward_reference(x)
    conv = up.conv
    if up.mode == 'transposed':
        x = F.conv_transpose2d(x, c['w'], c['b'], conv.stride, conv.padding, conv.output_padding, conv.groups,
                               conv.dilation)
    else:
        x = F.interpolate(F.conv2d(x, c['w'], c['b']), scale_factor=2., mode='bilinear', align_corners=False)
    return up.bn.act(x)


def _w(weight: torch.Tensor) -> torch.Tensor:
    """A ``(K, C)`` weight as a 1x1 conv weight ``(K, C, 1, 1)``: a detached, contiguous copy (a graph constant)."""
    return weight.detach().reshape(*weight.shape, 1, 1).clone()


def _ln_fold(norm: nn.Module, linear: nn.Linear, fold: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``linear`` after ``norm`` (a LayerNorm): ``W diag(g)``, ``b + W beta`` when folding; else as they are."""
    w, b = linear.weight, linear.bias
    if fold and isinstance(norm, nn.LayerNorm) and norm.weight is not None:
        nb = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
        w, b = w * norm.weight, (w @ nb if b is None else b + w @ nb)
    return w, b


def _block_consts(block: nn.Module) -> Consts:
    """Per sub-block constants of a ``MedBlock`` (LayerNorm affine folded into the convs that read it)."""
    out: Consts = {}
    fold = bool(FORM['fold_ln'])
    for key, norm, sub in (('laffn', block.norm1, block.laffn), ('mixer', block.norm2, block.token_mixer),
                           ('ffn', block.norm3, block.ffn)):
        if sub is None or not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
            continue
        c: Consts = {'eps': float(norm.eps), 'shape': tuple(norm.normalized_shape)}
        if not fold and norm.weight is not None:
            c['g'] = norm.weight.detach().reshape(-1, 1, 1).clone()
            c['b'] = (norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)).detach(
            ).reshape(-1, 1, 1).clone()
        if _is(sub, 'LAFFN'):
            w1, b1 = _ln_fold(norm, sub.fc_channel, fold)
            w2, _ = _ln_fold(norm, sub.fc_token, fold)  # any bias of W2 cancels in the softmax over tokens
            c.update(w1=_w(w1), b1=b1.detach().clone(), w2=_w(w2), w3=_w(sub.proj.weight), b3=sub.proj.bias,
                     w12=_w(torch.cat([w1, w2])), b12=torch.cat([b1, torch.zeros_like(b1)]).detach().clone())
        elif _is(sub, 'SEM'):
            wa, ba = _ln_fold(norm, sub.fc_in, fold)
            wv, bv = _ln_fold(norm, sub.fc_value, fold)
            c.update(wa=_w(wa), ba=ba.detach().clone(), wv=_w(wv), bv=bv.detach().clone(),
                     wav=_w(torch.cat([wa, wv])), bav=torch.cat([ba, bv]).detach().clone(), **_sem_consts(sub))
        elif _is(sub, 'SDFFN'):
            w1, b1 = _ln_fold(norm, sub.fc1, fold)
            c.update(w1=_w(w1), b1=b1.detach().clone(), w2=_w(sub.fc2.weight), b2=sub.fc2.bias)
        else:
            continue
        out[key] = c
    return out


def _sem_consts(sem: nn.Module) -> Consts:
    """SEM's aggregation: ``Wagg``'s blocks for z0 / z1, ``Wg2 Wf`` folded for the two axial mixes, the position
    bias (every bias after the depth-wise convs, ``C, H, W``) split into its per-channel part (a conv bias) and,
    when not zero, the part that varies with the position (the axial mixes' biases)."""
    C = sem.fc_in.weight.shape[0]
    H, W = sem.feat_size
    wg = sem.fc_agg.weight
    wf = wg[:, 2 * C:] @ sem.fc_mix.weight  # Wg2 Wf: (C, 2C)
    bias = sem._agg_bias(C).reshape(H, W, C).permute(2, 0, 1)  # C, H, W
    per_channel = bias.mean((1, 2))
    pos = bias - per_channel[:, None, None]
    return {
        'wg0': _w(wg[:, :C]), 'wg1': _w(wg[:, C:2 * C]), 'wh': _w(wf[:, :C]), 'ww': _w(wf[:, C:]),
        'w_agg': _w(torch.cat([wg[:, :2 * C], wf], 1)), 'b_agg': per_channel.detach().clone(),
        'pos_bias': None if not bool(pos.abs().max() > 0) else pos.detach().contiguous().clone(),
        'mix_h': sem.mix_h.weight.detach().clone(), 'mix_w_t': sem.mix_w.weight.detach().t().contiguous(),
        'wo': _w(sem.proj.weight), 'bo': sem.proj.bias,
    }


# ----------------------------------------------------------------------------------------------- the form
def stage_forward(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``MedStage`` in export form: ``B, C, H, W`` -> ``B, C', H', W'`` (contiguous NCHW throughout)."""
    x = stage.downsample(x)
    hw = _feat_size(stage)
    for block in stage.blocks:
        x = block_forward(block, x, hw)
    return x


def _feat_size(stage: nn.Module) -> Optional[Tuple[int, int]]:
    """The stage's feature size as Python ints (under tracing ``x.shape`` would record Shape / Gather nodes); None
    for a stage without SEM (an ablation), whose softmax over tokens then reduces over both axes."""
    for block in stage.blocks:
        size = getattr(block.token_mixer, 'feat_size', None)
        if size is not None:
            return tuple(size)
    return None


def block_forward(block: nn.Module, x: torch.Tensor, hw: Optional[Tuple[int, int]]) -> torch.Tensor:
    """``MedBlock`` on ``B, C, H, W``: ``x + LAFFN(LN x)``, ``+ SEM(LN .)``, ``+ SDFFN(LN .)``."""
    consts = block.__dict__[_CONSTS]
    for key, norm, sub in (('laffn', block.norm1, block.laffn), ('mixer', block.norm2, block.token_mixer),
                           ('ffn', block.norm3, block.ffn)):
        if sub is None:
            continue
        c = consts.get(key)
        if c is None:  # an ablation's sub-block (no export form): its own forward on channels-last tokens
            y = sub(norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        else:
            y = _normalise(c, x)
            y = (laffn_forward if key == 'laffn' else sem_forward if key == 'mixer' else sdffn_forward)(sub, c, y, hw)
        x = x + y
    return x


def _normalise(c: Consts, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of ``B, C, H, W`` (its affine applied only when not folded into the convs)."""
    if FORM['layernorm'] == 'transpose':
        y = F.layer_norm(x.permute(0, 2, 3, 1), c['shape'], None, None, c['eps']).permute(0, 3, 1, 2)
    elif FORM['layernorm'] == 'l2':
        d = x - x.mean(1, keepdim=True)
        n = torch.linalg.vector_norm(d, 2, dim=1, keepdim=True)  # ReduceL2: one read of d, no d * d tensor
        y = d / torch.sqrt(n * n * (1.0 / c['shape'][0]) + c['eps'])
    else:
        d = x - x.mean(1, keepdim=True)
        y = d / torch.sqrt((d * d).mean(1, keepdim=True) + c['eps'])
    return y * c['g'] + c['b'] if 'g' in c else y


def _p(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], hw: Optional[Tuple[int, int]]) -> torch.Tensor:
    """A 1x1 projection of ``B, C, H, W``: a ``Conv``, or with ``proj='matmul'`` ``W @ x`` on ``B, C, H*W``."""
    if FORM['proj'] != 'matmul' or hw is None:
        return F.conv2d(x, w, b)
    k, c = w.shape[:2]
    y = torch.matmul(w.reshape(k, c), x.reshape(-1, c, hw[0] * hw[1]))
    if b is not None:
        y = y + b.reshape(k, 1)
    return y.reshape(-1, k, *hw)


def _softmax_c(x: torch.Tensor) -> torch.Tensor:
    if FORM['softmax_c'] == 'reduce':
        e = torch.exp(x - x.amax(1, keepdim=True))
        return e / e.sum(1, keepdim=True)
    return x.softmax(1)


def _softmax_hw(x: torch.Tensor, C: int, hw: Optional[Tuple[int, int]]) -> torch.Tensor:
    if FORM['softmax_n'] == 'reduce' or hw is None:
        e = torch.exp(x - x.amax((2, 3), keepdim=True))
        return e / e.sum((2, 3), keepdim=True)
    return x.reshape(-1, C, hw[0] * hw[1]).softmax(-1).reshape(-1, C, *hw)


def laffn_forward(m: nn.Module, c: Consts, x: torch.Tensor, hw: Optional[Tuple[int, int]]) -> torch.Tensor:
    """``W3 (softmax_C(W1 x + b1) * softmax_N(W2 x)) + b3`` on ``B, C, H, W`` (``b2`` cancels in softmax_N)."""
    C = c['w3'].shape[0]
    if FORM['merge']:
        lc, ln = _p(x, c['w12'], c['b12'], hw).split([C, C], 1)
    else:
        lc, ln = _p(x, c['w1'], c['b1'], hw), _p(x, c['w2'], None, hw)
    return _p(_softmax_c(lc) * _softmax_hw(ln, C, hw), c['w3'], c['b3'], hw)


def sem_forward(m: nn.Module, c: Consts, x: torch.Tensor, hw: Optional[Tuple[int, int]]) -> torch.Tensor:
    """SEM on ``B, C, H, W``: ``Wo ((sum of Wagg's per-path projections + position bias) * (Wv x + bv)) + bo``."""
    if FORM['merge']:
        C = c['wo'].shape[0]
        u, v = _p(x, c['wav'], c['bav'], hw).split([C, C], 1)
    else:
        u, v = _p(x, c['wa'], c['ba'], hw), _p(x, c['wv'], c['bv'], hw)
    u = m.act(u)
    z0 = m.dw0_v(m.dw0_h(u))
    z1 = m.dw1_v(m.dw1_h(u))
    mix_h = torch.matmul(c['mix_h'], u)  # (H, H) @ (B, C, H, W): along H
    mix_w = torch.matmul(u, c['mix_w_t'])  # (B, C, H, W) @ (W, W): along W
    b_agg = c['b_agg']
    if FORM['agg'] == 'concat':
        attn = _p(torch.cat([z0, z1, mix_h, mix_w], 1), c['w_agg'], b_agg, hw)
    else:
        attn = _p(z0, c['wg0'], b_agg, hw)
        attn = attn + _p(z1, c['wg1'], None, hw)
        attn = attn + _p(mix_h, c['wh'], None, hw)
        attn = attn + _p(mix_w, c['ww'], None, hw)
    if c['pos_bias'] is not None:
        attn = attn + c['pos_bias']
    return _p(attn * v, c['wo'], c['bo'], hw)


def sdffn_forward(m: nn.Module, c: Consts, x: torch.Tensor, hw: Optional[Tuple[int, int]]) -> torch.Tensor:
    """SDFFN on ``B, C, H, W``: ``W2 act(DW3x3(W1 x)) + b2``."""
    x = _p(x, c['w1'], c['b1'], hw)
    return _p(m.act(m.conv_dw(x)), c['w2'], c['b2'], hw)
