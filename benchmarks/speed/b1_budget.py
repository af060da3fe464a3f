"""Batch-1 time budget: where one forward's wall time goes, oneDNN's own kernel time against everything else.

    python benchmarks/speed/b1_budget.py --threads 2 --out benchmarks/speed/b1_budget.md

For each model (default ``mednext_base`` and ``resnet18``), fp32, eval, ``torch.inference_mode``, 224x224:

1. **Wall time** per forward: best of ``--rounds`` interleaved rounds (no profiler, no verbose logging).
2. **oneDNN's kernel time** per forward, split into GEMMs, dense convs, depth-wise convs and reorders: the
   execution time oneDNN itself reports for every primitive (``ONEDNN_VERBOSE=1``, in a child process so that the
   logging touches nothing else).
3. **Every op's self time** per forward from ``torch.profiler`` (a second pass). For the oneDNN-backed ops the
   difference to (2) is their set-up around the kernel (argument checks, memory descriptors, primitive cache
   look-up, output allocation); the other ATen ops (LayerNorm, softmax, ``bmm``, max-pool, ...) are listed by name.
4. **The rest**: wall time minus every profiled op's self time, i.e. Python and the dispatcher between ops. The
   profiler adds a little to every op, so this part is a lower bound.

Kernel times under contention mean nothing: run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import timm  # noqa: E402

import mednext_zoo.models  # noqa: E402,F401  (registers the models)
from mednext_zoo._atomic import atomic_write_text  # noqa: E402

START, END = '@@budget-start@@', '@@budget-end@@'
_GROUPS = re.compile(r'(?:^|_)g(\d+)mb\d+_ic(\d+)oc(\d+)')


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=2).eval()


def onednn_kind(line: str) -> Optional[str]:
    """The budget line of one ``onednn_verbose`` exec record: 'GEMMs', 'dense convs', 'depth-wise convs',
    'reorders' or 'other oneDNN'; None for a line that is not an exec record."""
    fields = line.split(',')  # onednn_verbose,v1,primitive,exec,cpu,<kind>,...,<problem>,<ms>
    if len(fields) < 6 or not fields[0].startswith('onednn_verbose') or fields[3] != 'exec':
        return None
    kind = fields[5]
    if kind in ('inner_product', 'matmul'):
        return 'GEMMs'
    if kind == 'convolution':
        g = _GROUPS.search(fields[-2])
        return 'depth-wise convs' if g and g.group(1) == g.group(2) == g.group(3) else 'dense convs'
    return 'reorders' if kind == 'reorder' else 'other oneDNN'


def child(name: str, threads: int, forwards: int) -> None:
    """Run under ONEDNN_VERBOSE=1: warm up, then ``forwards`` forwards between two marker lines."""
    torch.set_num_threads(threads)
    model, x = _build(name), torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        print(START, flush=True)
        for _ in range(forwards):
            model(x)
        print(END, flush=True)


def onednn_times(name: str, threads: int, forwards: int) -> Dict[str, Dict[str, float]]:
    """Per forward: oneDNN's reported execution time (ms) and call count per budget line."""
    env = {**os.environ, 'ONEDNN_VERBOSE': '1'}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', name, '--threads', str(threads),
                          '--forwards', str(forwards)], env=env, capture_output=True, text=True, check=True).stdout
    body = out.split(START, 1)[1].split(END, 1)[0]
    res: Dict[str, Dict[str, float]] = defaultdict(lambda: {'ms': 0.0, 'calls': 0.0})
    for line in body.splitlines():
        kind = onednn_kind(line)
        if kind:
            res[kind]['ms'] += float(line.rsplit(',', 1)[1]) / forwards
            res[kind]['calls'] += 1 / forwards
    return dict(res)


def profiled_ops(model: torch.nn.Module, x: torch.Tensor, forwards: int) -> Dict[str, Dict[str, float]]:
    """Per forward: self time (ms) and calls of every op, from torch.profiler."""
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(forwards):
                model(x)
    return {e.key: {'ms': e.self_cpu_time_total / 1e3 / forwards, 'calls': e.count / forwards}
            for e in prof.key_averages()}


def wall_times(models: Dict[str, torch.nn.Module], x: torch.Tensor, rounds: int, reps: int) -> Dict[str, float]:
    """Best per-forward wall time (ms) of each model over interleaved rounds (rotating start)."""
    best = {k: float('inf') for k in models}
    names = list(models)
    with torch.inference_mode():
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                models[name](x)
                t0 = time.perf_counter()
                for _ in range(reps):
                    models[name](x)
                best[name] = min(best[name], (time.perf_counter() - t0) / reps * 1e3)
    return best


def budget(name: str, wall: float, kernels: Dict[str, Dict[str, float]], ops: Dict[str, Dict[str, float]],
           top: int) -> Dict:
    """One model's budget lines (ms per forward)."""
    onednn_ops = {k: v for k, v in ops.items() if 'mkldnn' in k}
    other_ops = {k: v for k, v in ops.items() if 'mkldnn' not in k}
    kernel_ms = sum(v['ms'] for v in kernels.values())
    onednn_self = sum(v['ms'] for v in onednn_ops.values())
    profiled = sum(v['ms'] for v in ops.values())
    ranked = sorted(other_ops.items(), key=lambda kv: -kv[1]['ms'])
    return {
        'model': name, 'wall_ms': wall, 'kernels': kernels, 'kernel_ms': kernel_ms,
        'onednn_setup_ms': onednn_self - kernel_ms, 'onednn_calls': sum(v['calls'] for v in onednn_ops.values()),
        'other_ops': [{'op': k, **v} for k, v in ranked[:top]],
        'other_ops_rest_ms': sum(v['ms'] for _, v in ranked[top:]),
        'other_ops_ms': sum(v['ms'] for v in other_ops.values()),
        'other_ops_calls': sum(v['calls'] for v in other_ops.values()),
        'python_dispatch_ms': wall - profiled,
    }


def table(results: List[Dict]) -> List[str]:
    """Markdown: one column per model, ms per forward (share of wall time)."""
    def cell(ms: float, wall: float, calls: Optional[float] = None) -> str:
        c = f', {calls:.0f} calls' if calls is not None else ''
        return f'{ms:.2f} ({100 * ms / wall:.0f} %{c})'

    lines = ['| ms per forward (share of wall) | ' + ' | '.join(f'`{r["model"]}`' for r in results) + ' |',
             '| --- |' + ' ---: |' * len(results)]
    lines.append('| **wall time** (best round, no profiler) | '
                 + ' | '.join(f'**{r["wall_ms"]:.2f}**' for r in results) + ' |')
    kinds = ['GEMMs', 'dense convs', 'depth-wise convs', 'reorders', 'other oneDNN']
    for kind in kinds:
        if any(kind in r['kernels'] for r in results):
            vals = [r['kernels'].get(kind, {'ms': 0.0, 'calls': 0}) for r in results]
            lines.append(f'| oneDNN kernels: {kind} | '
                         + ' | '.join(cell(v['ms'], r['wall_ms'], v['calls']) for v, r in zip(vals, results)) + ' |')
    lines.append('| oneDNN ops\' set-up around the kernels (profiler self time - kernel time) | '
                 + ' | '.join(cell(r['onednn_setup_ms'], r['wall_ms'], r['onednn_calls']) for r in results) + ' |')
    lines.append('| other ATen ops (profiler self time) | '
                 + ' | '.join(cell(r['other_ops_ms'], r['wall_ms'], r['other_ops_calls']) for r in results) + ' |')
    lines.append('| rest: Python and dispatch between ops (wall - profiled self times; lower bound) | '
                 + ' | '.join(cell(r['python_dispatch_ms'], r['wall_ms']) for r in results) + ' |')
    lines += ['', 'Largest other ATen ops (self time per forward, ms, calls):', '']
    for r in results:
        ops = ', '.join(f'{o["op"].split("::")[-1]} {o["ms"]:.2f} ({o["calls"]:.0f})' for o in r['other_ops'])
        lines.append(f'- `{r["model"]}`: {ops}; the rest {r["other_ops_rest_ms"]:.2f}')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=['mednext_base', 'resnet18'])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=15, help='interleaved wall-clock rounds')
    p.add_argument('--reps', type=int, default=10, help='forwards per round')
    p.add_argument('--forwards', type=int, default=10, help='forwards logged / profiled per model')
    p.add_argument('--top', type=int, default=6, help='other ATen ops listed by name')
    p.add_argument('--out', default=None, help='markdown file (a .json beside it)')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.threads, args.forwards)
        return 0
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    x = torch.randn(1, 3, 224, 224)
    models = {name: _build(name) for name in args.models}
    walls = wall_times(models, x, args.rounds, args.reps)
    results = [budget(name, walls[name], onednn_times(name, args.threads, args.forwards),
                      profiled_ops(models[name], x, args.forwards), args.top) for name in args.models]
    cmd = ' '.join(['python', os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    head = (f'# Batch-1 time budget (`{cmd}`)\n\nfp32, eval, inference_mode, batch 1, 224x224, {args.threads} torch '
            f'thread(s); torch {torch.__version__}, timm {timm.__version__}, {os.cpu_count()} cores; wall time: best '
            f'of {args.rounds} interleaved rounds of {args.reps} forwards; kernels and profiler: {args.forwards} '
            f'forwards each. Load average at the start {load0:.1f}, at the end {os.getloadavg()[0]:.1f}.')
    text = '\n'.join([head, ''] + table(results)) + '\n'
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        atomic_write_text(os.path.splitext(args.out)[0] + '.json', json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
