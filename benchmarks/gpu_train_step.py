"""Training-step throughput and peak memory per model x precision x memory format x compile (GPU; runs on the
CPU too, for a smoke test). Part of ``benchmarks/gpu.sh``.

One step = forward, cross-entropy loss, backward, AdamW step (fp16 with a GradScaler), on random inputs of the
task's shape (cls: 3 x 224 x 224, 1000 classes; seg: 1 x 224 x 224, 9 classes). Per setting: ``--warmup`` untimed
steps (compilation happens there), then ``--rounds`` rounds of ``--steps`` timed steps, synchronised; the best
round is reported with the median and range. Peak memory: ``torch.cuda.max_memory_allocated`` over the timed steps
(weights, gradients, optimiser state and activations). Writes ``OUT/train_step.json / .csv / .md / .png``.

    python benchmarks/gpu_train_step.py --device cuda --task cls --models mednext_base,resnet50 --out out/train-cls
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from mednext_zoo._atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from mednext_zoo.benchmark import build_model, machine_info, machine_label, resolve_models  # noqa: E402

AMP = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
FIELDS = ['model', 'task', 'dtype', 'channels_last', 'compile', 'batch_size', 'img_size', 'steps_per_s_best',
          'img_per_s_best', 'img_per_s_median', 'img_per_s_min', 'img_per_s_max', 'peak_mem_mb', 'error']


def _names(text: str) -> List[str]:
    return [t.strip() for t in text.split(',') if t.strip()]


def _flags(text: str) -> List[bool]:
    return {'off': [False], 'on': [True], 'both': [False, True]}[text]


def measure(spec, dtype: str, channels_last: bool, compile_: bool, args, device: torch.device) -> Dict[str, Any]:
    row: Dict[str, Any] = dict(model=spec.name, task=spec.task, dtype=dtype, channels_last=channels_last,
                               compile=compile_, batch_size=args.batch_size, img_size=spec.img_size)
    try:
        torch.manual_seed(0)
        model = build_model(spec).to(device).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        step_model = torch.compile(model) if compile_ else model
        x = torch.randn(args.batch_size, *spec.input_size, device=device).to(memory_format=fmt)
        shape = (args.batch_size,) if spec.task == 'cls' else (args.batch_size, spec.img_size, spec.img_size)
        y = torch.randint(0, spec.num_classes, shape, device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type) if dtype == 'fp16' else None
        amp = AMP[dtype]

        def step() -> None:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = step_model(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
                loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()

        def sync() -> None:
            if device.type == 'cuda':
                torch.cuda.synchronize(device)

        for _ in range(args.warmup):
            step()
        sync()
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        per_round = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            per_round.append(args.batch_size * args.steps / (time.perf_counter() - t0))
        row.update(img_per_s_best=max(per_round), img_per_s_median=statistics.median(per_round),
                   img_per_s_min=min(per_round), img_per_s_max=max(per_round),
                   steps_per_s_best=max(per_round) / args.batch_size,
                   peak_mem_mb=torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None)
    except Exception as e:  # noqa: BLE001  (reported in the row: one setting's failure keeps the table)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        row['error'] = f'{type(e).__name__}: {first[:200]}'
    finally:
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return row


def _fmt(v: Any, digits: int = 1) -> str:
    return '-' if v is None else f'{v:.{digits}f}' if isinstance(v, float) else str(v)


def to_markdown(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    lines = [f"# Training-step throughput ({meta['task']}): {meta['machine_label']}", '',
             f"{meta['device']}; batch {meta['batch_size']}; {meta['rounds']} rounds x {meta['steps']} steps after "
             f"{meta['warmup']} warm-up steps; AdamW, cross-entropy; torch {meta['machine']['torch']}. Best round, "
             'with the median and range over rounds; peak memory = torch.cuda.max_memory_allocated.', '',
             '| model | dtype | channels-last | compile | img/s (best) | median (range) | peak mem MB |',
             '| --- | --- | --- | --- | ---: | --- | ---: |']
    for r in rows:
        if r.get('error'):
            lines.append(f"| `{r['model']}` | {r['dtype']} | {r['channels_last']} | {r['compile']} | error: "
                         f"{r['error'].replace('|', '/')} | | |")
            continue
        lines.append(f"| `{r['model']}` | {r['dtype']} | {r['channels_last']} | {r['compile']} | "
                     f"{_fmt(r['img_per_s_best'])} | {_fmt(r['img_per_s_median'])} ({_fmt(r['img_per_s_min'])}-"
                     f"{_fmt(r['img_per_s_max'])}) | {_fmt(r['peak_mem_mb'], 0)} |")
    return '\n'.join(lines) + '\n'


def plot(rows: List[Dict[str, Any]], path: str, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use('Agg', force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if not r.get('error')]
    settings = sorted({(r['dtype'], r['channels_last'], r['compile']) for r in ok}, key=str)
    models = list(dict.fromkeys(r['model'] for r in ok))
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    width = 0.8 / max(1, len(settings))
    for i, s in enumerate(settings):
        vals = [next((r['img_per_s_best'] for r in ok if r['model'] == m and (r['dtype'], r['channels_last'],
                                                                             r['compile']) == s), 0) for m in models]
        label = f"{s[0]}{', CL' if s[1] else ''}{', compile' if s[2] else ''}"
        ax.bar([j + i * width for j in range(len(models))], vals, width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models, rotation=20, fontsize=8)
    ax.set_ylabel('training images/s (best round), more is better')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--task', choices=('cls', 'seg'), default='cls')
    p.add_argument('--models', type=_names, required=True)
    p.add_argument('--dtype', type=_names, default=['fp32', 'bf16', 'fp16'])
    p.add_argument('--channels-last', choices=('off', 'on', 'both'), default='both')
    p.add_argument('--compile', choices=('off', 'on', 'both'), default='both')
    p.add_argument('--batch-size', type=int, default=None, help='default: 128 (cls) / 32 (seg)')
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    bad = [d for d in args.dtype if d not in AMP]
    if bad:
        p.error(f'unknown --dtype {", ".join(bad)}: choose from {", ".join(AMP)}')
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_train_step.py: --device cuda, but PyTorch sees no CUDA GPU here; use --device cpu for a smoke '
              'test.', file=sys.stderr)
        return 3
    args.batch_size = args.batch_size or (128 if args.task == 'cls' else 32)
    specs = resolve_models(args.models, task=args.task, img_size=args.img_size, reference='')
    rows = []
    for spec, dtype, cl, comp in itertools.product(specs, args.dtype, _flags(args.channels_last), _flags(args.compile)):
        print(f'{spec.name} {dtype} channels_last={cl} compile={comp} ...', file=sys.stderr, flush=True)
        rows.append(measure(spec, dtype, cl, comp, args, device))
    info = machine_info(str(device))
    meta = dict(task=args.task, device=str(device), machine=info, machine_label=machine_label(info),
                batch_size=args.batch_size, warmup=args.warmup, steps=args.steps, rounds=args.rounds,
                started_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, 'train_step.json'), json.dumps({'meta': meta, 'rows': rows}, indent=2,
                                                                            default=str))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows({k: r.get(k) for k in FIELDS} for r in rows)
    atomic_write_text(os.path.join(args.out, 'train_step.csv'), buf.getvalue())
    md = to_markdown(meta, rows)
    atomic_write_text(os.path.join(args.out, 'train_step.md'), md)
    plot(rows, os.path.join(args.out, 'train_step.png'), f"Training step, {args.task}: {meta['machine_label']}, "
                                                           f"batch {args.batch_size}")
    print(md)
    return 0 if any(not r.get('error') for r in rows) else 1


if __name__ == '__main__':
    raise SystemExit(main())
