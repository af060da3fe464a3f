"""Where MedNeXt's CPU time goes: torch.profiler op tables (self time per op), grouped by op.

    python benchmarks/speed/profile_mednext.py --batch 16 --out benchmarks/speed/profile_b16.txt
    python benchmarks/speed/profile_mednext.py --batch 1 --threads 1 2 --paths fast --compare resnet18 \\
        --forwards 5 --out benchmarks/speed/profile_round2_b1.txt

Each table is the sum over ``--forwards`` profiled forwards (after two untimed ones), fp32, eval,
``torch.inference_mode``; its header gives the ops dispatched per forward (every ``aten::`` / ``mkldnn::`` call
the profiler records, nested ones included) and the self time per forward. ``--compare`` adds timm baselines.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import timm  # noqa: E402

import mednext_zoo.models  # noqa: E402,F401
from mednext_zoo._atomic import atomic_write_text  # noqa: E402
from mednext_zoo.models.mednext import set_reference_paths  # noqa: E402


def op_table(model: torch.nn.Module, x: torch.Tensor, rows: int, forwards: int = 1) -> str:
    """The profiler's op table for ``forwards`` forwards of ``model(x)``, with ops and self time per forward."""
    with torch.inference_mode():
        model(x)
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(forwards):
                model(x)
    events = prof.key_averages()
    ops = sum(e.count for e in events) / forwards
    self_us = sum(e.self_cpu_time_total for e in events) / forwards
    head = f'{ops:.0f} ops dispatched per forward, self CPU time {self_us / 1e3:.2f} ms per forward ' \
           f'(sum over {forwards} forward(s) below)\n\n'
    return head + events.table(sort_by='self_cpu_time_total', row_limit=rows)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='mednext_base')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--threads', type=int, nargs='+', default=[2])
    p.add_argument('--paths', nargs='+', default=['fast', 'reference'], choices=['fast', 'reference'])
    p.add_argument('--compare', nargs='*', default=[], help='timm baselines profiled the same way (e.g. resnet18)')
    p.add_argument('--forwards', type=int, default=1, help='profiled forwards per table')
    p.add_argument('--rows', type=int, default=20)
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    x = torch.randn(args.batch, 3, 224, 224)
    parts = []
    if args.out:
        cmd = ' '.join(['python', os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
        parts.append(f'# `{cmd}`\n\ntorch {torch.__version__}, timm {timm.__version__}, {os.cpu_count()} cores; '
                     f'load average at the start {os.getloadavg()[0]:.1f}')
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs = [(args.model, p_, p_ == 'reference') for p_ in args.paths] + [(m, '', False) for m in args.compare]
        for name, label, reference in runs:
            torch.manual_seed(0)
            model = timm.create_model(name, num_classes=2).eval()
            if reference:
                set_reference_paths(model)
            title = f'{name} {label} path' if label else name
            parts.append(f'## {title}, batch {args.batch}, {threads} thread(s)\n\n'
                         + op_table(model, x, args.rows, args.forwards))
    if args.out:
        parts.append(f'load average at the end {os.getloadavg()[0]:.1f}')
    text = '\n\n'.join(parts) + '\n'
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
