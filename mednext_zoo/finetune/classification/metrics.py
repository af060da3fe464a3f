"""Classification metrics with bootstrap confidence intervals, calibration and temperature scaling.

The maths comes from scikit-learn (precision / recall / F1 / accuracy / ROC AUC / confusion matrix) and
torchmetrics (expected calibration error). Every report names its averaging and, for two classes, the
positive class.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ['classification_report', 'fit_temperature', 'expected_calibration_error', 'point_metrics',
           'undefined_metrics', 'multilabel_point_metrics', 'multilabel_report']

METRICS = ('accuracy', 'precision', 'recall', 'f1', 'auc')


def _auc(y: np.ndarray, probs: np.ndarray, num_classes: int) -> Dict[str, float]:
    """One-vs-rest ROC AUC per class (NaN for a class absent or alone in ``y``)."""
    from sklearn.metrics import roc_auc_score
    out = {}
    for c in range(num_classes):
        pos = y == c
        if pos.all() or not pos.any():
            out[c] = float('nan')
        else:
            out[c] = float(roc_auc_score(pos.astype(int), probs[:, c]))
    return out


def point_metrics(y: np.ndarray, probs: np.ndarray, num_classes: int, positive: Optional[int] = None
                  ) -> Dict[str, Any]:
    """Per-class and macro (or, with ``positive``, binary) precision / recall / F1 / AUC and accuracy."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    pred = probs.argmax(1)
    labels = list(range(num_classes))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        p, r, f, support = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
        auc = _auc(y, probs, num_classes)
    per_class = {c: {'precision': float(p[c]), 'recall': float(r[c]), 'f1': float(f[c]), 'auc': auc[c],
                     'support': int(support[c])} for c in labels}
    out = {'accuracy': float(accuracy_score(y, pred)), 'per_class': per_class}
    if positive is not None:
        for k in ('precision', 'recall', 'f1', 'auc'):
            out[k] = per_class[positive][k]
    else:
        for k in ('precision', 'recall', 'f1'):
            out[k] = float(np.mean([per_class[c][k] for c in labels]))
        aucs = [auc[c] for c in labels if np.isfinite(auc[c])]
        out['auc'] = float(np.mean(aucs)) if aucs else float('nan')
    return out


def undefined_metrics(y: np.ndarray, pred: np.ndarray, classes: Sequence[str], positive: Optional[int]
                      ) -> Dict[str, str]:
    """The headline metrics that a data set of a single class (an all-positive external set, say) cannot define,
    each with the reason; ``{}`` when ``y`` holds two classes or more."""
    present = np.unique(y)
    if len(present) != 1:
        return {}
    only = classes[int(present[0])]
    out = {'auc': f'ROC AUC needs positive and negative images; the data holds only {only!r}'}
    if positive is None:
        for k in ('precision', 'recall', 'f1'):
            out[k] = f'a macro average needs every class; the data holds only {only!r} (its row is in per_class)'
    elif int(present[0]) != positive:
        pos = classes[positive]
        out['recall'] = f'sensitivity needs {pos!r} images; the data holds only {only!r} (accuracy is the specificity)'
        out['f1'] = f'F1 needs the recall, undefined without {pos!r} images'
        if not (pred == positive).any():
            out['precision'] = f'no image was called {pos!r}'
    elif not (pred == positive).any():
        out['precision'] = f'no image was called {only!r}'
    return out


def multilabel_point_metrics(y: np.ndarray, probs: np.ndarray) -> Dict[str, Any]:
    """Multi-label metrics as the MedMNIST evaluator computes them, from 0/1 targets ``N, L`` and sigmoid ``N, L``.

    ``accuracy``: the mean over labels of each label's accuracy at threshold 0.5; ``auc``: the mean over labels of
    each label's ROC AUC (labels with one value only in ``y`` are left out of the mean; their AUC is NaN);
    ``precision`` / ``recall`` / ``f1``: macro means over labels at 0.5.
    """
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score
    y = np.asarray(y).astype(int)
    pred = (probs >= 0.5).astype(int)
    per_class = {}
    for j in range(y.shape[1]):
        col = y[:, j]
        auc = float(roc_auc_score(col, probs[:, j])) if 0 < col.sum() < len(col) else float('nan')
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            p, r, f, _ = precision_recall_fscore_support(col, pred[:, j], average='binary', zero_division=0)
        per_class[j] = {'precision': float(p), 'recall': float(r), 'f1': float(f), 'auc': auc,
                        'accuracy': float((pred[:, j] == col).mean()), 'support': int(col.sum())}
    aucs = [v['auc'] for v in per_class.values() if np.isfinite(v['auc'])]
    out: Dict[str, Any] = {'accuracy': float(np.mean([v['accuracy'] for v in per_class.values()])),
                           'auc': float(np.mean(aucs)) if aucs else float('nan'), 'per_class': per_class}
    for k in ('precision', 'recall', 'f1'):
        out[k] = float(np.mean([v[k] for v in per_class.values()]))
    return out


def multilabel_report(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], n_bootstrap: int = 1000,
                      seed: int = 0, ci: float = 0.95) -> Dict[str, Any]:
    """:func:`classification_report` for multi-label outputs: logits ``N, L`` (one sigmoid per label), 0/1 targets
    ``N, L``; per-label metrics, their means (MedMNIST's ACC / AUC), bootstrap CIs, mean per-label ECE."""
    from sklearn.metrics import roc_curve
    from torchmetrics.functional.classification import binary_calibration_error
    probs = torch.sigmoid(torch.as_tensor(logits).float()).numpy()
    y = torch.as_tensor(targets).numpy().astype(int)
    base = multilabel_point_metrics(y, probs)
    rng = np.random.default_rng(seed)
    boots: Dict[str, List[float]] = {k: [] for k in METRICS}
    n = len(y)
    for _ in range(n_bootstrap if n > 1 else 0):
        idx = rng.integers(0, n, n)
        m = multilabel_point_metrics(y[idx], probs[idx])
        for k in METRICS:
            boots[k].append(m[k])
    alpha = (1 - ci) / 2
    ci_out = {}
    for k in METRICS:
        vals = np.asarray(boots[k], dtype=float)
        vals = vals[np.isfinite(vals)]
        ci_out[k] = [float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha))] if len(vals) else None
    roc = {}
    for j, c in enumerate(classes):
        if 0 < y[:, j].sum() < n:
            fpr, tpr, _ = roc_curve(y[:, j], probs[:, j])
            roc[c] = {'fpr': fpr.tolist(), 'tpr': tpr.tolist()}
    ece = [float(binary_calibration_error(torch.as_tensor(np.ascontiguousarray(probs[:, j])),
                                          torch.as_tensor(np.ascontiguousarray(y[:, j])), n_bins=15))
           for j in range(y.shape[1])]
    undefined = [classes[j] for j, v in base['per_class'].items() if not np.isfinite(v['auc'])]
    return {
        'n': int(n),
        'classes': list(classes),
        'averaging': 'multi-label',
        'positive_class': None,
        'note': ('multi-label: accuracy is the mean over labels of the accuracy at threshold 0.5 and auc the mean over '
                 'labels of the ROC AUC (the MedMNIST evaluator); precision/recall/f1 are macro means at 0.5'
                 + (f'; AUC undefined (one value only) for {", ".join(undefined)}, left out of the mean'
                    if undefined else '')),
        **{k: base[k] for k in METRICS},
        'ci95': ci_out,
        'ci_method': f'percentile bootstrap over images, {n_bootstrap} resamples, seed {seed}',
        'per_class': {classes[j]: v for j, v in base['per_class'].items()},
        'ece': float(np.mean(ece)),
        'temperature': 1.0,
        'roc': roc,
    }


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width bins (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_calibration_error
    return float(multiclass_calibration_error(torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(y),
                                              num_classes=probs.shape[1], n_bins=n_bins, norm='l1'))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """Temperature ``T`` minimising the NLL of ``logits / T`` (Guo et al. 2017), fitted with L-BFGS."""
    logits = logits.detach().float()
    targets = torch.as_tensor(targets).long()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if np.isfinite(t) and t > 0 else 1.0


def classification_report(
        logits: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[str],
        positive_class: Optional[str] = None,
        temperature: float = 1.0,
        n_bootstrap: int = 1000,
        seed: int = 0,
        ci: float = 0.95,
) -> Dict[str, Any]:
    """Full report: headline metrics with bootstrap CIs, per-class metrics, confusion matrix, ECE.

    Data of a single class leaves some headline metrics undefined (always AUC): they are ``None`` and
    ``undefined`` names each with the reason (:func:`undefined_metrics`).

    Args:
        logits: ``(N, num_classes)`` raw model outputs.
        targets: ``(N,)`` class indices.
        classes: Class names, index order.
        positive_class: For two classes, the class whose precision / recall / F1 / AUC are the headline
            (default: the second class). Ignored for more classes, where headline metrics are macro averages.
        temperature: Divides the logits before the softmax (1: none).
        n_bootstrap: Resamples (with replacement, over images) for the percentile confidence intervals.
    """
    from sklearn.metrics import confusion_matrix, roc_curve
    num_classes = len(classes)
    logits = torch.as_tensor(logits).float()
    y = torch.as_tensor(targets).long().numpy()
    probs = torch.softmax(logits / temperature, dim=1).numpy()
    positive = None
    if num_classes == 2:
        pc = positive_class if positive_class is not None else classes[1]
        if pc not in classes:
            from ...errors import UserInputError
            raise UserInputError(f'--positive-class {pc!r} is not one of the classes {list(classes)}.')
        positive = list(classes).index(pc)
    base = point_metrics(y, probs, num_classes, positive)
    rng = np.random.default_rng(seed)
    boots: Dict[str, List[float]] = {k: [] for k in METRICS}
    n = len(y)
    for _ in range(n_bootstrap if n > 1 else 0):
        idx = rng.integers(0, n, n)
        m = point_metrics(y[idx], probs[idx], num_classes, positive)
        for k in METRICS:
            boots[k].append(m[k])
    alpha = (1 - ci) / 2
    ci_out = {}
    for k in METRICS:
        vals = np.asarray(boots[k], dtype=float)
        vals = vals[np.isfinite(vals)]
        ci_out[k] = [float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha))] if len(vals) else None
    undefined = undefined_metrics(y, probs.argmax(1), classes, positive)
    for k in undefined:  # one class in the data: these are not 0, they do not exist
        base[k], ci_out[k] = None, None
    cm = confusion_matrix(y, probs.argmax(1), labels=list(range(num_classes)))
    roc = {}
    for c in range(num_classes):
        pos = y == c
        if pos.any() and not pos.all():
            fpr, tpr, _ = roc_curve(pos.astype(int), probs[:, c])
            roc[classes[c]] = {'fpr': fpr.tolist(), 'tpr': tpr.tolist()}
    return {
        'n': int(n),
        'classes': list(classes),
        'averaging': 'binary' if positive is not None else 'macro',
        'positive_class': classes[positive] if positive is not None else None,
        'note': (f'precision/recall/f1/auc are for the positive class {classes[positive]!r}'
                 if positive is not None else
                 'precision/recall/f1/auc are unweighted means over classes (macro); auc is one-vs-rest'),
        **{k: base[k] for k in METRICS},
        'ci95': ci_out,
        **({'undefined': undefined} if undefined else {}),
        'ci_method': f'percentile bootstrap over images, {n_bootstrap} resamples, seed {seed}',
        'per_class': {classes[c]: v for c, v in base['per_class'].items()},
        'confusion_matrix': cm.tolist(),
        'confusion_matrix_axes': 'rows: true class, columns: predicted class (order of "classes")',
        'ece': expected_calibration_error(probs, y),
        'temperature': float(temperature),
        'roc': roc,
    }
