"""Write a training-suite result as train.json, train.csv, train.md and train.png (each atomically)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .._atomic import atomic_write_bytes, atomic_write_text

__all__ = ['write_training_results', 'training_markdown', 'plot_training_curves', 'CSV_FIELDS']

CSV_FIELDS = ['label', 'model', 'task', 'seed', 'status', 'step', 'train_wall_s', 'train_cpu_s', 'metric', 'value',
              'reason']


def _f(v: Optional[float], digits: int = 3) -> str:
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.{digits}f}'


def _pm(s: Optional[Dict[str, Any]], digits: int = 3) -> str:
    """``mean ± std [min-max]`` of a spread; the value alone for a single seed (no spread to show)."""
    if not s or s.get('mean') is None:
        return '-'
    if s.get('n', 0) == 1:
        return _f(s['mean'], digits)
    txt = f"{_f(s['mean'], digits)} ± {_f(s['std'], digits)}"
    return txt + (f" [{_f(s['min'], digits)}-{_f(s['max'], digits)}]" if s.get('n', 0) > 1 else '')


def _reach(summary: Dict[str, Any], key: str = 'steps_to_target', digits: int = 0) -> str:
    """Steps (or seconds) to the target: on the mean curve, and per seed as min-max (k of n seeds)."""
    n, k = summary.get('n_seeds', 0), summary.get('reached', 0)
    mc = summary.get('mean_curve_reach')
    unit = 'step' if key == 'steps_to_target' else 'seconds'
    head = _f(mc[unit], digits) if mc else 'not reached'
    s = summary.get(key) or {}
    if not k:
        return f'{head} (0/{n} seeds)'
    rng = _f(s['min'], digits) if s['min'] == s['max'] else f"{_f(s['min'], digits)}-{_f(s['max'], digits)}"
    return f'{head} (seeds: {rng}, {k}/{n})'


def _settings_lines(result: Dict[str, Any]) -> List[str]:
    meta = result['meta']
    s, m = meta['settings'], meta['machine']
    src = f"`--data {s['data']}`" if s.get('data') else 'phantoms ' + ', '.join(f'`{t}`' for t in result['tasks'])
    lines = [
        f"Machine: **{meta['machine_label']}**; device `{m['device']}`; torch {m['torch']}, timm {m['timm']}, "
        f"mednext-zoo {m['mednext_zoo']}.",
        f"Run: {meta['started_utc']}, wall {meta['wall_s']} s (training + evaluation). Every row: {s['steps']} "
        f"optimiser steps, batch {s['batch_size']}, {s['dtype']}, {s['threads']} torch threads, seeds "
        f"{s['seeds']}, held-out evaluation every {s['eval_every']} steps; data: {src} (generation seed "
        f"{s['data_seed']}); {s['workers']} parallel run{'s' if s['workers'] > 1 else ''} with {s['threads']} "
        f"torch thread{'s' if s['threads'] > 1 else ''} each"
        + (f"; {s['resumed_runs']} runs reused from an interrupted run's log" if s.get('resumed_runs') else '')
        + '.',
        f"Target: {s['target_metric']} >= {s['target']}. Seconds count training only (batch assembly, "
        f"augmentation, forward, backward, optimiser step), not evaluation; "
        + ('wall-clock seconds.' if s['clock'] == 'wall' else
           'process CPU seconds (on a shared machine they track what a quiet one would take at this thread count; '
           'the wall seconds are in train.json).'),
    ]
    if s.get('recipe'):
        lines.append(f"Recipe overrides for every row: `{s['recipe']}`.")
    if meta.get('note'):
        lines.append(f"Note: {meta['note']}")
    return lines


def training_markdown(result: Dict[str, Any]) -> str:
    """Tables per task: final metrics (mean ± std [min-max] over seeds), steps / seconds to the target, s/step,
    params; then skipped rows with their reasons."""
    meta = result['meta']
    seg = meta['task'] == 'seg'
    out = [f"# {meta['title']} ({'segmentation' if seg else 'classification'})", '', *_settings_lines(result), '']
    any_early = False
    for name, info in result['tasks'].items():
        classes = info['classes'][1:] if seg else ['accuracy', 'auc']
        out.append(f"## {name}" + (f": {info['description']}" if info.get('description') else ''))
        out.append('')
        if seg:
            frac = info.get('train_pixel_fraction', {})
            out.append(f"{info['train_cases']} training volumes ({info['train_images']} slices), {info['test_cases']} "
                       f"held-out volumes ({info['test_images']} slices), {info['image_size'][0]}x"
                       f"{info['image_size'][1]}; training pixel share: "
                       + ', '.join(f'{c} {100 * frac.get(c, 0):.2f} %' for c in classes)
                       + f"; smallest structure: **{info.get('smallest')}**. Dice: 3D per held-out volume, mean "
                         f"over the volumes that hold the class.")
        else:
            out.append(f"{info['train_images']} training images, {info['test_images']} held-out images, "
                       f"{info['image_size'][0]}x{info['image_size'][1]}; classes {info['classes']}.")
        out.append('')
        cols = [f'Dice {c}' for c in classes] + ['mean Dice'] if seg else ['accuracy', 'ROC AUC']
        tgt = f"Dice {info.get('smallest')} >= {meta['settings']['target']}" if seg else \
            f"AUC >= {meta['settings']['target']}"
        clock = meta['settings']['clock']
        early = _early_steps(result, name)
        any_early |= bool(early)
        focus = info.get('smallest') if seg else 'auc'
        early_cols = [f"{'Dice ' + focus if seg else 'AUC'} @ step {s}" for s in early]
        out.append('| row | params (M) | ' + ' | '.join(early_cols + cols) + f' | steps to {tgt} | {clock} seconds '
                   f'to {tgt} | wall s / step | CPU s / step |')
        out.append('| --- | ---: | ' + ' | '.join('---:' for _ in early_cols + cols) + ' | ---: | ---: | ---: | ---: |')
        for r in result['rows']:
            name_cell = f"`{r['label']}`" + (f" ({r['model']})" if r['model'] != r['label'] else '')
            if r['status'] != 'ok':
                out.append(f"| {name_cell} | {r['reason']} |" + ' |' * (len(early_cols + cols) + 4))
                continue
            sm = r['summary'].get(name) or {}
            if not sm:
                out.append(f"| {name_cell} | no result |" + ' |' * (len(early_cols + cols) + 4))
                continue
            fin = sm['final']
            vals = [_pm(fin.get(c)) for c in classes] + ([_pm(fin.get('mean_dice'))] if seg else [])
            at = {c['step']: c['metrics'].get(focus) for c in sm.get('curve', [])}
            vals = [_pm(at.get(s)) for s in early] + vals
            out.append(f"| {name_cell} | {_f(r.get('params_m'), 2)} | " + ' | '.join(vals)
                       + f" | {_reach(sm)} | {_reach(sm, 'seconds_to_target', 1)} | "
                       f"{_f(sm['wall_per_step']['mean'], 3)} | {_f(sm['cpu_per_step']['mean'], 3)} |")
        bad = [(r['label'], run['seed'], run.get('error')) for r in result['rows'] if r['status'] == 'ok'
               for run in r['runs'].get(name, []) if run['status'] != 'ok']
        for label, seed, err in bad:
            out.append(f'\n_{label}, seed {seed}: {err}_')
        out.append('')
    seeds = meta['settings']['seeds']
    several = (len(seeds) if isinstance(seeds, (list, tuple)) else int(seeds)) > 1
    out.append(('Cells: mean ± sample std [min-max] over seeds. ' if several else
                'Cells: the value of the single seed (no spread: run more --seeds for mean ± std). ')
               + ('"@ step N": the smallest structure (seg) or AUC (cls) at the evaluation step nearest a third and '
                  'two thirds of the budget, what a row learns per step; the other metric columns are at the last '
                  'step. ' if any_early else 'The metric columns are at the last step. ')
               + '"steps to": the first evaluation step where the '
               + ('mean curve over seeds reaches the target, then the per-seed range and how many seeds reached it.'
                  if several else 'curve reaches the target.'))
    return '\n'.join(out) + '\n'


def _early_steps(result: Dict[str, Any], task: str) -> List[int]:
    """The evaluation steps nearest a third and two thirds of the budget (distinct, before the last)."""
    steps = sorted({c['step'] for r in result['rows'] if r['status'] == 'ok'
                    for c in (r['summary'].get(task) or {}).get('curve', [])})
    if len(steps) < 3:
        return []
    total = steps[-1]
    picks = [min(steps[:-1], key=lambda s: abs(s - total * f)) for f in (1 / 3, 2 / 3)]
    return sorted(set(picks))


def _csv_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for r in result['rows']:
        base = {'label': r['label'], 'model': r['model']}
        if r['status'] != 'ok':
            rows.append({**base, 'status': r['status'], 'reason': r.get('reason', '')})
            continue
        for task, runs in r['runs'].items():
            for run in runs:
                for pt in run['curve']:
                    vals = {f'dice_{c}': v for c, v in pt.get('dice', {}).items()}
                    vals.update({k: pt[k] for k in ('mean_dice', 'accuracy', 'auc', 'loss') if k in pt})
                    for metric, v in vals.items():
                        rows.append({**base, 'task': task, 'seed': run['seed'], 'status': run['status'],
                                     'step': pt['step'], 'train_wall_s': pt['wall_s'], 'train_cpu_s': pt['cpu_s'],
                                     'metric': metric,
                                     'value': '' if v is None or (isinstance(v, float) and math.isnan(v))
                                     else round(float(v), 5), 'reason': run.get('error', '')})
    return rows


def plot_training_curves(result: Dict[str, Any], path: Union[str, Path]) -> Optional[Path]:
    """Target metric vs steps (top) and vs train seconds (bottom), one column per task: mean line over seeds and
    a min-max band. ``None`` without matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = list(result['tasks'])
    seg = result['meta']['task'] == 'seg'
    rows = [r for r in result['rows'] if r['status'] == 'ok']
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.2 * len(tasks), 8.2), squeeze=False)
    colours = plt.get_cmap('tab10')
    target = result['meta']['settings']['target']
    for j, name in enumerate(tasks):
        info = result['tasks'][name]
        what = f"Dice of {info.get('smallest')}" if seg else 'ROC AUC'
        for i, r in enumerate(rows):
            sm = r['summary'].get(name)
            if not sm:
                continue
            c = sm['curve']
            steps = [p['step'] for p in c]
            secs = [p['seconds']['mean'] for p in c]
            mean = [p['target']['mean'] if p['target']['mean'] is not None else float('nan') for p in c]
            lo = [p['target']['min'] if p['target']['min'] is not None else float('nan') for p in c]
            hi = [p['target']['max'] if p['target']['max'] is not None else float('nan') for p in c]
            for ax, x in ((axes[0, j], steps), (axes[1, j], secs)):
                ax.plot(x, mean, color=colours(i % 10), lw=1.8, label=r['label'])
                ax.fill_between(x, lo, hi, color=colours(i % 10), alpha=0.15, lw=0)
        clock = 'wall' if result['meta']['settings']['clock'] == 'wall' else 'CPU'
        for ax, xl in ((axes[0, j], 'optimiser steps'), (axes[1, j], f'train {clock} seconds (evaluation excluded)')):
            ax.axhline(target, color='grey', ls='--', lw=0.8)
            ax.set_xlabel(xl)
            ax.set_ylabel(what)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f'{name}: {what}', fontsize=11)
    s = result['meta']['settings']
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 6) or 1, fontsize=10, frameon=False)
    fig.suptitle(f"Held-out {'Dice of the smallest structure' if seg else 'ROC AUC'}: mean over seeds {s['seeds']} "
                 f"(line), min-max (band); batch {s['batch_size']}, {s['dtype']}, {s['workers']} parallel run(s) x "
                 f"{s['threads']} torch thread(s)\n{result['meta']['machine_label'].rsplit(',', 1)[0]}", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_training_results(result: Dict[str, Any], out_dir: Union[str, Path]) -> Dict[str, Path]:
    """``train.json`` (everything, including each seed's curve), ``train.csv`` (one line per seed, evaluation
    step and metric), ``train.md`` (the tables) and ``train.png`` (the curves) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {'json': out / 'train.json', 'csv': out / 'train.csv', 'md': out / 'train.md'}
    atomic_write_text(paths['json'], json.dumps(_clean(result), indent=1, allow_nan=False) + '\n')
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator='\n')
    w.writeheader()
    w.writerows(_csv_rows(result))
    atomic_write_text(paths['csv'], buf.getvalue())
    atomic_write_text(paths['md'], training_markdown(result))
    png = plot_training_curves(result, out / 'train.png')
    if png is not None:
        paths['png'] = png
    return paths


def _clean(o: Any) -> Any:
    """JSON-safe copy: NaN -> null (strict JSON), numpy scalars -> Python numbers."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, 'item') and not isinstance(o, (str, bytes)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
