"""Summarise a training suite's run log (``train.runs.jsonl``), also of a run stopped before it wrote its tables.

    python benchmarks/summarize_runs.py benchmarks/results/pilots-issue11/thick-base/train.runs.jsonl

``mednext-zoo bench --suite train`` appends every finished (row, task, seed) run to ``train.runs.jsonl`` and writes
``train.md`` only at the end. Pilot runs that were stopped early (to give the machine to the next one) keep their
finished runs in that log; this prints, per row and task, the seeds finished, the CPU seconds per step, and the mean
over those seeds of each class's Dice (segmentation) or the ROC AUC (classification) at a third, two thirds and the
end of the budget, with each seed's first evaluation step at the target (Dice / AUC 0.9).
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List


def _metric(point: Dict) -> Dict[str, float]:
    return dict(point['dice']) if 'dice' in point else {'auc': point['auc']}


def summarize(path: Path) -> str:
    """The Markdown table of the finished runs in ``path`` (a ``train.runs.jsonl``)."""
    runs: Dict[tuple, List[Dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if item['run'].get('status') == 'ok':
            runs[tuple(item['key'][:2])].append(item['run'])
    if not runs:
        return f'{path}: no finished run.\n'
    lines = [f'Finished runs in `{path}` (mean over the seeds listed; cells: metric at the step named).', '',
             '| row | task | seeds | CPU s / step | at 1/3 | at 2/3 | final | first step at 0.9, per seed |',
             '| --- | --- | --- | ---: | --- | --- | --- | --- |']
    for (label, task), rs in runs.items():
        steps = [p['step'] for p in rs[0]['curve']]
        cells = []
        for step in (steps[len(steps) // 3 - 1], steps[2 * len(steps) // 3 - 1], steps[-1]):
            points = [next(p for p in r['curve'] if p['step'] == step) for r in rs]
            names = list(_metric(points[0]))
            means = [sum(_metric(p)[n] for p in points) / len(points) for n in names]
            cells.append(f'@{step}: ' + ' / '.join('-' if math.isnan(m) else f'{m:.2f}' for m in means))
        reach = ', '.join(str(r['reach']['step']) if r.get('reach') else '-' for r in rs)
        seeds = ','.join(str(r['seed']) for r in rs)
        cpu = sum(r['cpu_per_step'] for r in rs) / len(rs)
        lines.append(f'| `{label}` | {task} | {seeds} | {cpu:.3f} | ' + ' | '.join(cells) + f' | {reach} |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('logs', nargs='+', type=Path, help='train.runs.jsonl files')
    a = p.parse_args(argv)
    for path in a.logs:
        if not path.is_file():
            p.error(f'{path}: no such file; pass the train.runs.jsonl of a --out folder')
        print(summarize(path))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
