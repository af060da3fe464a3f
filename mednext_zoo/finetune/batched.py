"""One batched-inference loop: a model's outputs over a sequence of batches, in order, on the CPU.

The engine's validation and final scoring, the classification ``evaluate`` and the training-efficiency suite's
held-out scoring all run it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable, Optional, Tuple

import torch
from torch import nn

__all__ = ['predict_batches']


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[Any], device: torch.device,
                    autocast: Optional[Callable[[], ContextManager]] = None
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(outputs, targets)`` of ``model`` over ``batches`` of ``(inputs, targets)`` pairs, or of bare inputs
    (then ``targets`` is None), concatenated in order on the CPU as float32.

    The model runs in eval mode (its mode is restored afterwards) inside ``autocast()`` when given; a model that
    returns a list (deep supervision) contributes its first, full-resolution output. Targets may be tensors or lists
    of tensors (stacked). An empty ``batches`` gives ``torch.empty(0)`` outputs and int64 targets.
    """
    was_training = model.training
    model.eval()
    outs, tgts, paired = [], [], None
    for batch in batches:
        paired = isinstance(batch, (list, tuple))
        inputs, targets = batch if paired else (batch, None)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model(inputs.to(device, non_blocking=True))
        outs.append((out[0] if isinstance(out, (list, tuple)) else out).float().cpu())
        if paired:
            tgts.append(torch.stack(list(targets)) if isinstance(targets, (list, tuple)) else
                        torch.as_tensor(targets).cpu())
    model.train(was_training)
    out = torch.cat(outs) if outs else torch.empty(0)
    if paired is False:
        return out, None
    return out, torch.cat(tgts) if tgts else torch.empty(0, dtype=torch.long)
