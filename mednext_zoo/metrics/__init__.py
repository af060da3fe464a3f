"""Metrics, one floor above the facts and below everything that trains or deploys a model.

* :mod:`.segmentation` -- Dice (one function, its empty-mask rule named) and HD95, per case and per class, in the
  ``legacy`` and ``strict`` modes; used by the segmentation task's validation and 3D evaluation, the
  training-efficiency suite and the deploy drift figures.
"""
from .segmentation import MODES, binary_metrics, dice, evaluate_case, hd95, summarize

__all__ = ['MODES', 'binary_metrics', 'dice', 'evaluate_case', 'hd95', 'summarize']
