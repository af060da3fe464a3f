"""Run plots (matplotlib, Agg backend): training curves, ROC curves, confusion matrix."""
from __future__ import annotations

from typing import Any, Dict, List

__all__ = ['plot_curves', 'plot_roc', 'plot_confusion']


def _plt():
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    from ..run_dir import atomic_save
    atomic_save(path, lambda t: fig.savefig(t, dpi=120, bbox_inches='tight', format='png'))


def plot_curves(jsonl_path: str, out_path: str) -> None:
    """Train / val loss and the validation metrics per epoch."""
    plt = _plt()
    from ..run_dir import read_metrics_log
    rows: List[Dict[str, Any]] = read_metrics_log(jsonl_path)
    if not rows:
        return
    ep = [r['epoch'] for r in rows]  # counted from 1 in metrics.jsonl
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r['train_loss'] for r in rows], label='train loss')
    if 'val_loss' in rows[0]:
        a.plot(ep, [r['val_loss'] for r in rows], label='val loss')
    a.set_xlabel('epoch')
    a.set_ylabel('loss')
    a.legend()
    for k in ('val_accuracy', 'val_f1', 'val_auc'):
        if k in rows[0]:
            b.plot(ep, [r[k] for r in rows], label=k[4:])
    b.set_xlabel('epoch')
    b.set_ylim(0, 1.02)
    b.set_title('validation')
    b.legend()
    _save(fig, out_path)
    plt.close(fig)


def plot_roc(report: Dict[str, Any], out_path: str, title: str = '') -> None:
    """One-vs-rest ROC curves with their AUC, from a :func:`classification_report`, as a PNG at ``out_path``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for cls, r in report.get('roc', {}).items():
        auc = report['per_class'][cls]['auc']
        ax.plot(r['fpr'], r['tpr'], label=f'{cls} (AUC {auc:.3f})')
    ax.plot([0, 1], [0, 1], 'k--', lw=0.8)
    ax.set_xlabel('false positive rate')
    ax.set_ylabel('true positive rate')
    ax.set_title(title or 'ROC (one-vs-rest)')
    if report.get('roc'):
        ax.legend(loc='lower right')
    else:  # a single class in the data: no curve exists
        ax.text(0.5, 0.5, 'undefined: the data holds one class', ha='center', va='center')
    _save(fig, out_path)
    plt.close(fig)


def plot_confusion(report: Dict[str, Any], out_path: str, title: str = '') -> None:
    """Confusion matrix (rows true, columns predicted) of a :func:`classification_report` as a PNG at ``out_path``."""
    import numpy as np
    plt = _plt()
    cm = np.asarray(report['confusion_matrix'])
    classes = report['classes']
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.2 * len(classes) + 2.5))
    ax.imshow(cm, cmap='Blues')
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha='right')
    ax.set_yticks(range(len(classes)), classes)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha='center', va='center',
                    color='white' if cm[i, j] > cm.max() / 2 else 'black')
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(title or 'confusion matrix')
    _save(fig, out_path)
    plt.close(fig)

