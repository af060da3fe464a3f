"""Accuracy drift of a backend / dtype against eager fp32 PyTorch on the same inputs.

Classification: max |Δlogit| and top-1 agreement (the fraction of images whose arg-max class is the same).
Segmentation: max |Δlogit| and the Dice between the two label maps (arg-max over classes), per class over the
classes present in either map, averaged (1.0 where both maps hold a single identical class everywhere).
"""
from __future__ import annotations

from typing import Dict

import torch

from ..metrics.segmentation import class_dice, mean_scored

__all__ = ['drift', 'DRIFT_FIELDS', 'label_map_dice']

DRIFT_FIELDS = ['max_abs_dlogit', 'top1_agreement', 'dice_vs_fp32']


def label_map_dice(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over the classes present in ``a`` or ``b`` (label maps of the same shape; the ``exclude`` empty-mask
    rule of :mod:`mednext_zoo.metrics.segmentation`); 1.0 when none is (both maps one identical class)."""
    return mean_scored(class_dice(a, b, range(num_classes), empty='exclude'), default=1.0)


def drift(reference: torch.Tensor, output: torch.Tensor, task: str) -> Dict[str, float]:
    """``reference`` / ``output``: logits ``(N, K)`` (cls) or ``(N, K, H, W)`` (seg) of the same inputs."""
    ref, out = reference.detach().float().cpu(), output.detach().float().cpu()
    if ref.shape != out.shape:
        raise ValueError(f'output shape {tuple(out.shape)} differs from the reference {tuple(ref.shape)}')
    res = {'max_abs_dlogit': float((ref - out).abs().max()), 'top1_agreement': None, 'dice_vs_fp32': None}
    if task == 'seg':
        res['dice_vs_fp32'] = label_map_dice(ref.argmax(1), out.argmax(1), ref.shape[1])
    else:
        res['top1_agreement'] = float((ref.argmax(-1) == out.argmax(-1)).float().mean())
    return res
