"""Parameter, FLOP and activation counts (fvcore), one trace per model.

FLOPs follow fvcore and timm's published tables: one fused multiply-add counts as one FLOP, at
batch 1 and the model's input resolution. Activations are fvcore's ``ActivationCountAnalysis``
convention: output elements of convolutions and matrix products.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from numbers import Number
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore scripts a loss at import; torch >= 2.10 warns that jit.script is deprecated
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fvcore.nn.activation_count import _DEFAULT_SUPPORTED_OPS as _ACT_OPS
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS as _FLOP_OPS
    from fvcore.nn.jit_analysis import JitModelAnalysis

__all__ = ['Counts', 'count_params', 'count_model']


@dataclass
class Counts:
    """What one fvcore trace gives for a model at batch 1."""

    params: int
    flops: int  # multiply-adds
    activations: int
    skipped_ops: Dict[str, int] = field(default_factory=dict)  # aten op -> calls fvcore did not count


def count_params(model: nn.Module) -> int:
    """Every parameter element (trainable or not); buffers are not counted."""
    return sum(p.numel() for p in model.parameters())


def _both(op: str) -> Callable:
    flop_handle = _FLOP_OPS[op]
    act_handle = _ACT_OPS.get(op)

    def handle(inputs, outputs) -> Counter:
        def value(h):
            v = h(inputs, outputs)
            return v if isinstance(v, Number) else sum(v.values())

        out = Counter({'flops': value(flop_handle)})
        if act_handle is not None:
            out['activations'] = value(act_handle)
        return out

    return handle


def count_model(model: nn.Module, input_size: Tuple[int, int, int]) -> Counts:
    """Params, FLOPs, activations and skipped op types of ``model`` for one ``(C, H, W)`` input.

    The model is traced once on a real zero tensor of shape ``(1, C, H, W)`` on the CPU in
    float32 (the model is temporarily moved there and put in eval mode).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval().to('cpu', torch.float32)
    try:
        x = torch.zeros(1, *input_size)
        analysis = JitModelAnalysis(model, (x,))
        analysis.set_op_handle(**{op: _both(op) for op in _FLOP_OPS})
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings('none')
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # fvcore traces with the deprecated torch.jit API
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            by_op = analysis.by_operator()
            skipped = dict(sorted(analysis.unsupported_ops().items()))
    finally:
        model.to(device, dtype).train(was_training)
    return Counts(
        params=count_params(model),
        flops=int(by_op.get('flops', 0)),
        activations=int(by_op.get('activations', 0)),
        skipped_ops=skipped,
    )
