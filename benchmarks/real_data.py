"""Real data, side by side: the classification recipe of ``mednext-zoo finetune`` on a MedMNIST file, several
models x several seeds, with per-step curves (issue 21).

    python benchmarks/real_data.py --data ../shared/data/pneumoniamnist.npz --epochs 10 --img-size 64 --jobs 2

(default rows: mednext_tiny, mednext_small, mednext_base, resnet18, resnet50, convnext_atto; seeds 0, 1, 2;
``--set KEY=VALUE`` overrides a ClassificationConfig field for every row, e.g. ``--set crop_scale=0.5,1.0``.)

Every run is ``finetune`` with the CLI's defaults (``ClassificationConfig``'s, which the CLI passes unchanged) plus the
``--set`` overrides, identical for every row: from random weights, AdamW lr 1e-3, gradient clipping 1.0, cosine
with 2 warm-up epochs, batch 32, RandomResizedCrop + flips, the best checkpoint by validation loss, scored once on
the file's official test split. Each run is its own process with one torch thread (``--jobs`` at a time) and logs
every ``--log-every`` optimiser steps: the running train loss, the lr and the process CPU seconds
(``steps.jsonl`` beside the run's ``metrics.jsonl``). ``results.md`` / ``results.json`` hold test ACC / AUC as
mean +- std over seeds, CPU seconds per epoch, the published MedMNIST v2 rows (``--published``), and
``curves.png`` the validation AUC / loss per epoch and the train loss per step (mean over seeds, band = min..max).
A finished run (its ``metrics.json`` exists) is reused, so an interrupted sweep resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from _common import ROOT

# MedMNIST v2 paper (Yang et al. 2023), PneumoniaMNIST test split, trained 100 epochs; from ../shared/data/README.md
PUBLISHED = {
    'pneumoniamnist': [('ResNet-18 (28)', 0.854, 0.944), ('ResNet-18 (224)', 0.864, 0.956),
                       ('ResNet-50 (28)', 0.854, 0.948), ('ResNet-50 (224)', 0.884, 0.962),
                       ('auto-sklearn', 0.855, 0.942), ('AutoKeras', 0.878, 0.947),
                       ('Google AutoML Vision', 0.946, 0.991)],
}


def _value(text: str) -> Any:
    if ',' in text:
        return tuple(_value(t) for t in text.split(','))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {'true': True, 'false': False, 'none': None}.get(text.lower(), text)


def parse_sets(items: List[str]) -> Dict[str, Any]:
    """``['crop_scale=0.5,1.0', 'ema_decay=0.999']`` -> ClassificationConfig overrides."""
    out = {}
    for item in items:
        key, _, value = item.partition('=')
        out[key.strip()] = _value(value.strip())
    return out


# ---------------------------------------------------------------- one run (a worker process)
class StepLog:
    """Engine callback: every ``every`` optimiser steps, the running train loss of the epoch, lr, CPU and wall s."""

    def __init__(self, path: Path, every: int):
        self.path, self.every, self.rows = path, every, []
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def __call__(self, engine) -> None:
        p = engine.progress
        if p.step % self.every:
            return
        self.rows.append({'step': p.step, 'epoch': p.epoch + p.batch / max(1, len(engine.train_loader)),
                          'train_loss': p.loss_sum / max(1, p.loss_n), 'lr': engine.optimizer.param_groups[-1]['lr'],
                          'cpu_s': time.process_time() - self.c0, 'wall_s': time.perf_counter() - self.t0})
        if len(self.rows) % 20 == 0:
            self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix('.tmp')
        tmp.write_text(''.join(json.dumps(r) + '\n' for r in self.rows))
        os.replace(tmp, self.path)


def run_one(model: str, data: str, out: Path, seed: int, epochs: int, img_size: int, sets: Dict[str, Any],
            every: int, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    from mednext_zoo.finetune import ClassificationConfig, fit
    cfg = ClassificationConfig(model=model, data=data, out=str(out), epochs=epochs, img_size=img_size, seed=seed,
                               progress=False, n_bootstrap=200, overwrite=True, export=False, **sets)
    log = StepLog(out.parent / f'{out.name}.steps.jsonl', every)
    cfg._callbacks = [log]
    c0 = time.process_time()
    fit(cfg)
    log.flush()
    (out / 'cpu.json').write_text(json.dumps({'cpu_s_total': time.process_time() - c0, 'threads': threads}))


# ---------------------------------------------------------------- the sweep
def _run_dir(out: Path, model: str, seed: int) -> Path:
    return out / 'runs' / f'{model}-seed{seed}'


def sweep(a) -> None:
    sets = parse_sets(a.set)
    jobs = [(m, s) for s in a.seeds for m in a.rows]
    pending = [(m, s) for m, s in jobs if not (_run_dir(a.out, m, s) / 'metrics.json').is_file()]
    procs: List[tuple] = []
    env = {**os.environ, 'OMP_NUM_THREADS': str(a.threads), 'MKL_NUM_THREADS': str(a.threads)}
    print(f'{len(jobs)} runs, {len(pending)} to do, {a.jobs} at a time', flush=True)
    while pending or procs:
        while pending and len(procs) < a.jobs:
            m, s = pending.pop(0)
            d = _run_dir(a.out, m, s)
            d.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, '--worker', '--rows', m, '--seeds', str(s), '--data', a.data,
                   '--out', str(a.out), '--epochs', str(a.epochs), '--img-size', str(a.img_size),
                   '--log-every', str(a.log_every), '--threads', str(a.threads)]
            cmd += [arg for x in a.set for arg in ('--set', x)]
            log = open(d.parent / f'{d.name}.log', 'w')
            procs.append((m, s, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                          time.time()))
            print(f'start {m} seed {s}', flush=True)
        time.sleep(5)
        for item in list(procs):
            m, s, proc, log, t0 = item
            if proc.poll() is None:
                continue
            procs.remove(item)
            log.close()
            status = 'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode}, see the .log)'
            print(f'{status}: {m} seed {s} in {time.time() - t0:.0f} s', flush=True)
    report(a.out, a.rows, a.seeds, a.data, a.epochs, a.img_size, sets)


# ---------------------------------------------------------------- the report
def _mean_std(xs: List[float]) -> str:
    import numpy as np
    xs = [x for x in xs if x is not None]
    if not xs:
        return '-'
    if len(xs) == 1:
        return f'{xs[0]:.3f} (1 seed)'
    return f'{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}'


def collect(out: Path, rows: List[str], seeds: List[int]) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    for m in rows:
        runs = []
        for s in seeds:
            d = _run_dir(out, m, s)
            if not (d / 'metrics.json').is_file():
                continue
            met = json.loads((d / 'metrics.json').read_text())
            epochs = [json.loads(x) for x in (d / 'metrics.jsonl').read_text().splitlines() if x.strip()]
            steps_path = d.parent / f'{d.name}.steps.jsonl'
            steps = [json.loads(x) for x in steps_path.read_text().splitlines()] if steps_path.is_file() else []
            cpu = json.loads((d / 'cpu.json').read_text()) if (d / 'cpu.json').is_file() else {}
            train_cpu = steps[-1]['cpu_s'] if steps else None
            runs.append({'seed': s, 'test_accuracy': met['test']['accuracy'], 'test_auc': met['test']['auc'],
                         'val_accuracy': met['val']['accuracy'], 'val_auc': met['val']['auc'],
                         'best_epoch': met['best_epoch'], 'epochs': met['epochs_run'],
                         'cpu_s_per_epoch': train_cpu / met['epochs_run'] if train_cpu else None,
                         'wall_s_per_epoch': sum(e['time_s'] for e in epochs) / len(epochs),
                         'cpu_s_total': cpu.get('cpu_s_total'), 'curve': epochs, 'steps': steps})
        res[m] = runs
    return res


def report(out: Path, rows: List[str], seeds: List[int], data: str, epochs: int, img_size: int,
           sets: Dict[str, Any]) -> None:
    import numpy as np
    res = collect(out, rows, seeds)
    from mednext_zoo.data.medmnist import subset_of
    subset = subset_of(data)
    recipe = ', '.join(f'{k}={v}' for k, v in sets.items()) or 'CLI defaults'
    lines = [f'# Real data: `{Path(data).name}`, {epochs} epochs at {img_size} px, {recipe}', '',
             f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one torch thread per run '
             f'(several runs at a time), fp32, batch 32, CPU. Test = the official test split, scored once with the '
             f'checkpoint of lowest validation loss. mean ± std over seeds {",".join(map(str, seeds))}.', '',
             '| model | test ACC | test AUC | val AUC | best epoch | CPU s / epoch | params (M) | seeds |',
             '| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |']
    import timm

    import mednext_zoo  # noqa: F401
    for m, runs in res.items():
        if not runs:
            continue
        params = sum(p.numel() for p in timm.create_model(m, num_classes=2).parameters()) / 1e6
        lines.append(f'| `{m}` | {_mean_std([r["test_accuracy"] for r in runs])} | '
                     f'{_mean_std([r["test_auc"] for r in runs])} | {_mean_std([r["val_auc"] for r in runs])} | '
                     f'{", ".join(str(r["best_epoch"]) for r in runs)} | '
                     f'{np.mean([r["cpu_s_per_epoch"] or np.nan for r in runs]):.0f} | {params:.2f} | {len(runs)} |')
    if subset in PUBLISHED:
        lines += ['', 'Published (MedMNIST v2 paper, 100 epochs, official test split; one figure each):', '',
                  '| model | test ACC | test AUC |', '| --- | ---: | ---: |']
        lines += [f'| {n} | {acc:.3f} | {auc:.3f} |' for n, acc, auc in PUBLISHED[subset]]
    (out / 'results.md').write_text('\n'.join(lines) + '\n')
    slim = {m: [{k: v for k, v in r.items() if k not in ('curve', 'steps')} for r in runs] for m, runs in res.items()}
    (out / 'results.json').write_text(json.dumps({'data': str(data), 'epochs': epochs, 'img_size': img_size,
                                                  'recipe': {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in sets.items()},
                                                  'runs': slim}, indent=1) + '\n')
    _plot(res, out / 'curves.png')
    print((out / 'results.md').read_text())


def _plot(res: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for m, runs in res.items():
        if not runs:
            continue
        n = min(len(r['curve']) for r in runs)
        ep = np.arange(1, n + 1)
        for ax, key in ((axes[0], 'val_auc'), (axes[1], 'val_loss')):
            v = np.array([[e.get(key, np.nan) for e in r['curve'][:n]] for r in runs])
            line, = ax.plot(ep, v.mean(0), label=m)
            ax.fill_between(ep, v.min(0), v.max(0), alpha=0.15, color=line.get_color())
        if all(r['steps'] for r in runs):
            k = min(len(r['steps']) for r in runs)
            st = np.array([s['step'] for s in runs[0]['steps'][:k]])
            v = np.array([[s['train_loss'] for s in r['steps'][:k]] for r in runs])
            line, = axes[2].plot(st, v.mean(0), label=m)
            axes[2].fill_between(st, v.min(0), v.max(0), alpha=0.15, color=line.get_color())
    axes[0].set(xlabel='epoch', ylabel='validation ROC AUC', title='validation AUC (mean, band min..max)')
    axes[1].set(xlabel='epoch', ylabel='validation loss', title='validation loss')
    axes[2].set(xlabel='optimiser step', ylabel='running train loss of the epoch', title='train loss per step')
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=str(ROOT.parent / 'shared' / 'data' / 'pneumoniamnist.npz'))
    p.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'real-data')
    p.add_argument('--rows', default='mednext_tiny,mednext_small,mednext_base,resnet18,resnet50,convnext_atto')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--set', action='append', default=[], help='ClassificationConfig override KEY=VALUE (repeatable)')
    p.add_argument('--jobs', type=int, default=2, help='runs at a time')
    p.add_argument('--threads', type=int, default=1, help='torch threads per run')
    p.add_argument('--log-every', type=int, default=10, help='optimiser steps between train-loss records')
    p.add_argument('--report-only', action='store_true', help='only rebuild results.md / .json / curves.png')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.rows = [r for r in a.rows.split(',') if r]
    a.seeds = [int(s) for s in str(a.seeds).split(',') if s]
    if a.worker:
        run_one(a.rows[0], a.data, _run_dir(a.out, a.rows[0], a.seeds[0]), a.seeds[0], a.epochs, a.img_size,
                parse_sets(a.set), a.log_every, a.threads)
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report_only:
        report(a.out, a.rows, a.seeds, a.data, a.epochs, a.img_size, parse_sets(a.set))
    else:
        sweep(a)
    return 0


if __name__ == '__main__':
    sys.exit(main())
