"""Dice and HD95: one Dice with named empty-mask rules, and per-class, per-case metrics of 3D label volumes in two
named modes.

Dice is ``2|P n G| / (|P| + |G|)`` everywhere (:func:`dice_from_counts`); what differs between uses is only what a
structure absent from one or both masks scores, and that rule has a name (:data:`EMPTY_RULES`):

* ``medpy`` -- both empty: 1.0 (medpy's ``dc``; :func:`dice`'s default);
* ``exclude`` -- both empty: NaN, the structure is not scored (strict mode; the segmentation task's per-epoch
  validation; the deploy drift figures);
* ``exclude_absent`` -- ground truth empty: NaN whatever the prediction, the structure is scored only where it is
  present (the training-efficiency suite, which counts predictions of an absent structure as ``absent_fp``);
* ``legacy`` -- TransUNet / Swin-Unet: prediction empty 0, prediction without ground truth 1 (legacy mode).

The two modes of 3D per-case metrics (:func:`binary_metrics`, :func:`evaluate_case`):

``legacy`` -- the TransUNet / Swin-Unet convention that published Synapse / ACDC tables use:
    * HD95 in voxel units (the spacing is ignored), computed as medpy's ``hd95``;
    * prediction and ground truth non-empty: Dice and HD95 computed normally;
    * prediction non-empty, ground truth empty: Dice 1, HD95 0;
    * prediction empty (ground truth empty or not): Dice 0, HD95 0 -- so a missed organ *lowers* mean HD95;
    * mean = mean over classes of the mean over cases.
``strict`` -- what a clinician would want:
    * HD95 in millimetres from the voxel spacing (anisotropic spacing honoured);
    * a missed (prediction empty) or hallucinated (ground truth empty) structure: Dice 0 and HD95 = the
      worst-case distance, the diagonal of the volume in mm;
    * both empty: excluded (NaN, not counted in any mean);
    * mean = mean over classes of the mean over the cases where the class is scored.

HD95 follows medpy exactly: surfaces are the voxels removed by one binary erosion (face connectivity),
distances come from an exact Euclidean distance transform (``scipy.ndimage.distance_transform_edt``), and the
95th percentile is taken over both directed surface-distance sets pooled.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserInputError

__all__ = [
    'MODES', 'MODE_NOTES', 'EMPTY_RULES', 'dice_from_counts', 'dice', 'class_dice', 'mean_scored', 'surface_distances',
    'hd95', 'volume_diagonal', 'binary_metrics', 'CaseMetrics', 'evaluate_case', 'summarize',
]

MODES = ('legacy', 'strict')
MODE_NOTES = {
    'legacy': 'legacy (TransUNet/Swin-Unet): HD95 in voxels, empty prediction -> DSC 0 / HD95 0, '
              'empty ground truth with a prediction -> DSC 1 / HD95 0; mean over cases then classes',
    'strict': 'strict: HD95 in mm from the spacing, missed or hallucinated structure -> DSC 0 / HD95 = volume '
              'diagonal (mm), both empty excluded; mean over scored cases then classes',
}


EMPTY_RULES = {
    'medpy': 'both masks empty -> 1.0 (medpy.metric.dc)',
    'exclude': 'both masks empty -> NaN (not scored)',
    'exclude_absent': 'ground truth empty -> NaN (not scored), whatever the prediction',
    'legacy': 'prediction empty -> 0.0; prediction without ground truth -> 1.0 (TransUNet / Swin-Unet)',
}
"""What a structure absent from one or both masks scores, by rule name (see the module docstring)."""


def dice_from_counts(overlap: int, n_pred: int, n_gt: int, empty: str = 'medpy') -> float:
    """Dice ``2 * overlap / (n_pred + n_gt)`` from voxel counts, with the empty-mask rule ``empty``
    (a key of :data:`EMPTY_RULES`)."""
    if empty not in EMPTY_RULES:
        raise UserInputError(f'Unknown empty-mask rule {empty!r}; choose one of {", ".join(EMPTY_RULES)}.')
    if empty == 'legacy' and not (n_pred and n_gt):
        return 1.0 if n_pred else 0.0
    if empty == 'exclude_absent' and not n_gt:
        return float('nan')
    denom = n_pred + n_gt
    if not denom:
        return 1.0 if empty == 'medpy' else float('nan')
    return 2.0 * overlap / denom


def _mask(x):
    """A bool mask of ``x`` (numpy array or torch tensor; non-zero is foreground)."""
    return (x if hasattr(x, 'shape') else np.asarray(x)) != 0


def dice(a, b, empty: str = 'medpy') -> float:
    """Dice of two binary masks of the same shape (numpy arrays or torch tensors): ``2|A n B| / (|A| + |B|)``, with
    the empty-mask rule ``empty`` (default ``medpy``: 1.0 when both are empty, as medpy's ``dc``)."""
    a, b = _mask(a), _mask(b)
    return dice_from_counts(int((a & b).sum()), int(a.sum()), int(b.sum()), empty)


def class_dice(pred, gt, classes: Iterable[int], empty: str = 'exclude') -> List[float]:
    """Dice of each label value in ``classes`` between two label maps of the same shape (numpy arrays or torch
    tensors, any number of dimensions: ``N, H, W`` slices pool over all of them)."""
    return [dice(pred == k, gt == k, empty) for k in classes]


def mean_scored(values: Iterable[float], default: float = float('nan')) -> float:
    """Mean of the scored (non-NaN) values; ``default`` when none is scored."""
    scored = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(scored)) if scored else default


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (distances are unchanged)."""
    union = a | b
    idx = [np.flatnonzero(np.any(union, axis=tuple(j for j in range(union.ndim) if j != i)))
           for i in range(union.ndim)]
    sl = tuple(slice(max(int(ix[0]) - 1, 0), int(ix[-1]) + 2) for ix in idx)
    return a[sl], b[sl]


def _border(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage  # the finetune extra; imported here so the CLI parser builds without it
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Distances from each surface voxel of ``a`` to the nearest surface voxel of ``b`` (both non-empty)."""
    a, b = a.astype(bool), b.astype(bool)
    if not a.any() or not b.any():
        raise ValueError('surface_distances needs two non-empty masks')
    a, b = _crop_to_union(a, b)
    sampling = None if spacing is None else np.asarray(spacing, dtype=np.float64)
    from scipy import ndimage
    dt = ndimage.distance_transform_edt(~_border(b), sampling=sampling)
    return dt[_border(a)]


def hd95(a: np.ndarray, b: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th percentile of the pooled symmetric surface distances (medpy's ``hd95``); units of ``spacing``."""
    d = np.hstack((surface_distances(a, b, spacing), surface_distances(b, a, spacing)))
    return float(np.percentile(d, 95))


def volume_diagonal(shape: Sequence[int], spacing: Optional[Sequence[float]] = None) -> float:
    """Length of the volume's diagonal (mm with ``spacing``, else voxels): strict mode's worst-case distance."""
    sp = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=np.float64)
    return float(math.sqrt(float(np.sum((np.asarray(shape) * sp) ** 2))))


def binary_metrics(pred: np.ndarray, gt: np.ndarray, mode: str = 'legacy',
                   spacing: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """(Dice, HD95) of one structure in one case under ``mode`` (see the module docstring for the rules)."""
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise UserInputError(f'prediction shape {pred.shape} differs from ground truth shape {gt.shape}.')
    p, g = bool(pred.any()), bool(gt.any())
    if mode == 'legacy':
        return dice(pred, gt, 'legacy'), hd95(pred, gt) if p and g else 0.0
    if mode == 'strict':
        if spacing is not None and len(spacing) != pred.ndim:
            raise UserInputError(f'spacing {tuple(spacing)} does not match a {pred.ndim}-D volume.')
        if p and g:
            h = hd95(pred, gt, spacing)
        else:  # both empty: not scored; one empty: the worst-case distance
            h = volume_diagonal(pred.shape, spacing) if p or g else float('nan')
        return dice(pred, gt, 'exclude'), h
    raise UserInputError(f'Unknown metric mode {mode!r}; choose one of {", ".join(MODES)}.')


@dataclass
class CaseMetrics:
    """Dice / HD95 per class (foreground only) of one case, in one mode."""
    case_id: str
    mode: str
    classes: Tuple[str, ...]
    dice: Tuple[float, ...]
    hd95: Tuple[float, ...]
    hd95_unit: str

    def rows(self) -> List[Dict[str, object]]:
        """One dict per class: ``case``, ``mode``, ``class``, ``dice``, ``hd95``, ``hd95_unit`` (NaN: excluded)."""
        return [{'case': self.case_id, 'mode': self.mode, 'class': c, 'dice': d, 'hd95': h, 'hd95_unit': self.hd95_unit}
                for c, d, h in zip(self.classes, self.dice, self.hd95)]


def evaluate_case(pred: np.ndarray, gt: np.ndarray, classes: Sequence[str], case_id: str = 'case',
                  spacing: Optional[Sequence[float]] = None, modes: Iterable[str] = MODES,
                  spacing_known: bool = True, roi: Optional[np.ndarray] = None) -> Dict[str, CaseMetrics]:
    """Metrics of every foreground class (label value i for ``classes[i]``, i >= 1) in each mode.

    ``spacing_known=False`` (e.g. TransUNet's .npy.h5 files, which carry no spacing) makes strict HD95 voxels.
    ``roi`` (bool, the shape of ``gt``): only pixels inside it count (prediction and label are background
    outside), the way fundus benchmarks score inside the field of view.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise UserInputError(f'{case_id}: prediction shape {pred.shape} differs from label shape {gt.shape}.')
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != gt.shape:
            raise UserInputError(f'{case_id}: region-of-interest shape {roi.shape} differs from label shape '
                                 f'{gt.shape}.')
        pred, gt = np.where(roi, pred, 0), np.where(roi, gt, 0)
    out = {}
    for mode in modes:
        ds, hs = [], []
        for i in range(1, len(classes)):
            d, h = binary_metrics(pred == i, gt == i, mode, spacing if (mode == 'strict' and spacing_known) else None)
            ds.append(d)
            hs.append(h)
        unit = 'mm' if mode == 'strict' and spacing_known else 'voxels'
        out[mode] = CaseMetrics(case_id, mode, tuple(classes[1:]), tuple(ds), tuple(hs), unit)
    return out


def summarize(cases: Sequence[CaseMetrics]) -> Dict[str, object]:
    """Per-class mean / std / n over cases, and the protocol mean (mean over classes of the per-class means).

    ``mean_dice_std`` / ``mean_hd95_std`` are the standard deviations over cases of each case's class mean.
    """
    if not cases:
        raise UserInputError('No cases to summarise.')
    mode, classes, unit = cases[0].mode, cases[0].classes, cases[0].hd95_unit
    d = np.array([c.dice for c in cases], dtype=np.float64)
    h = np.array([c.hd95 for c in cases], dtype=np.float64)

    def stats(x):
        n = np.sum(~np.isnan(x), axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            mean = np.nanmean(x, axis=0)
            std = np.nanstd(x, axis=0)
        return mean, std, n

    dm, dsd, dn = stats(d)
    hm, hsd, _ = stats(h)
    per_class = [{'class': c, 'dice_mean': float(dm[i]), 'dice_std': float(dsd[i]), 'hd95_mean': float(hm[i]),
                  'hd95_std': float(hsd[i]), 'n': int(dn[i])} for i, c in enumerate(classes)]
    with warnings.catch_warnings():  # all-NaN rows (a case with every class excluded) are fine here
        warnings.simplefilter('ignore', RuntimeWarning)
        case_d, case_h = np.nanmean(d, axis=1), np.nanmean(h, axis=1)
        mean_d, mean_h = float(np.nanmean(dm)), float(np.nanmean(hm))
        std_d, std_h = float(np.nanstd(case_d)), float(np.nanstd(case_h))
    return {'mode': mode, 'note': MODE_NOTES[mode], 'hd95_unit': unit, 'n_cases': len(cases),
            'per_class': per_class, 'mean_dice': mean_d, 'mean_hd95': mean_h, 'mean_dice_std': std_d,
            'mean_hd95_std': std_h}
