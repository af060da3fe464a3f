"""Reports of a segmentation evaluation: per-case CSV, per-class Markdown table, box plot of per-case Dice."""
from __future__ import annotations

import csv
import io
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..._atomic import atomic_write_bytes
from ...metrics.segmentation import MODE_NOTES, CaseMetrics

__all__ = ['write_case_csv', 'markdown_table', 'format_summaries', 'dice_boxplot']


def _fmt(x: float, digits: int) -> str:
    return 'n/a' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.{digits}f}'


def write_case_csv(cases: Sequence[CaseMetrics], path: str) -> str:
    """One row per case, mode and class: case, mode, class, dice, hd95, hd95_unit (NaN: excluded)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=['case', 'mode', 'class', 'dice', 'hd95', 'hd95_unit'], lineterminator='\n')
    w.writeheader()
    for c in cases:
        for row in c.rows():
            w.writerow({**row, 'dice': f'{row["dice"]:.6f}', 'hd95': f'{row["hd95"]:.6f}'})
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def markdown_table(summary: Dict[str, object], title: Optional[str] = None) -> str:
    """Per-class mean +- std (over cases) of Dice and HD95, the protocol mean, and the mode that produced them."""
    unit = summary['hd95_unit']
    lines = [f'**{title or "Segmentation metrics"}** -- mode `{summary["mode"]}` ({summary["n_cases"]} cases)', '',
             f'| class | DSC (%) | HD95 ({unit}) | cases scored |', '|---|---|---|---|']
    for r in summary['per_class']:
        lines.append(f'| {r["class"]} | {_fmt(100 * r["dice_mean"], 2)} +- {_fmt(100 * r["dice_std"], 2)} | '
                     f'{_fmt(r["hd95_mean"], 2)} +- {_fmt(r["hd95_std"], 2)} | {r["n"]} |')
    lines.append(f'| **mean** | **{_fmt(100 * summary["mean_dice"], 2)}** +- {_fmt(100 * summary["mean_dice_std"], 2)}'
                 f' | **{_fmt(summary["mean_hd95"], 2)}** +- {_fmt(summary["mean_hd95_std"], 2)} | |')
    lines += ['', f'_{MODE_NOTES[summary["mode"]]}; +- is the standard deviation over cases._']
    return '\n'.join(lines) + '\n'


def format_summaries(summaries: Sequence[Dict[str, object]], title: Optional[str] = None) -> str:
    """The :func:`markdown_table` of each metric summary (one per mode), joined."""
    return '\n'.join(markdown_table(s, title) for s in summaries)


def dice_boxplot(cases: Sequence[CaseMetrics], path: str, title: str = 'per-case Dice') -> str:
    """Box plot (one box per class) of per-case Dice, NaN (excluded) cases left out; PNG written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    classes = list(cases[0].classes)
    d = np.array([c.dice for c in cases], dtype=np.float64)
    data: List[np.ndarray] = [d[:, i][~np.isnan(d[:, i])] for i in range(len(classes))]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(classes) + 2.0), 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(classes) + 1), classes, rotation=30, ha='right')
    ax.set_ylabel(f'Dice ({cases[0].mode})')
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f'{title} ({len(cases)} cases)', fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
