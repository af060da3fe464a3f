"""Batch-1 microbenchmarks behind the prepacked-weights lever (``docs/speed.md``, round 2, batch 1).

One thread, thread CPU time, best of 5 repeats, every kernel on the same input again and again (hot caches):

1. MedNeXt's GEMM in each stage at batch 1 (``H W x C`` by ``C x C``: 12.85 M MACs in every stage) on oneDNN with a
   plain weight, oneDNN with the weight prepacked, and MKL (``F.linear``);
2. the stride-2 3x3 convs into stages 2-4, plain vs prepacked weight;
3. the fixed cost of one call at a tiny size (compute negligible): oneDNN GEMM / depth-wise conv vs MKL / ATen;
4. whole forwards at 32x32 (``mednext_tiny``, ``resnet18``): the fixed per-forward cost (Python, dispatch,
   kernel set-up) that does not shrink with more threads.

    python benchmarks/speed/microbench_b1.py --out benchmarks/speed/microbench_b1.md
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import timm  # noqa: E402

import mednext_zoo.models  # noqa: E402,F401
from mednext_zoo._atomic import atomic_write_text  # noqa: E402

LINEAR = torch.ops.mkldnn._linear_pointwise
CONV = torch.ops.mkldnn._convolution_pointwise
PACK_LINEAR = torch.ops.mkldnn._reorder_linear_weight
PACK_CONV = torch.ops.mkldnn._reorder_convolution_weight


def best_us(fn: Callable[[], object], reps: int, repeats: int = 5) -> float:
    """Best mean over ``repeats`` runs of ``reps`` calls, microseconds of this thread's CPU time."""
    fn()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.thread_time() - t0) / reps)
    return best * 1e6


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load0 = os.getloadavg()[0]
    lines = ['# Batch-1 microbenchmarks (`benchmarks/speed/microbench_b1.py`)', '']
    with torch.inference_mode():
        lines += ['| stage GEMM (batch 1) | oneDNN, plain weight (us) | oneDNN, prepacked (us) | MKL `F.linear` (us) |',
                  '| --- | ---: | ---: | ---: |']
        for hw, c in ((56, 64), (28, 128), (14, 256), (7, 512)):
            x, w, b = torch.randn(1, hw, hw, c), torch.randn(c, c) * 0.1, torch.randn(c)
            pw = PACK_LINEAR(w)
            row = [best_us(partial(LINEAR, x, w, b, 'none', [], ''), 20),
                   best_us(partial(LINEAR, x, pw, b, 'none', [], ''), 20), best_us(partial(F.linear, x, w, b), 20)]
            lines.append(f'| {hw}x{hw}x{c} by {c}x{c} | ' + ' | '.join(f'{v:.0f}' for v in row) + ' |')
        lines += ['', '| 3x3 stride-2 conv (batch 1, channels-last) | oneDNN, plain weight (us) | oneDNN, prepacked '
                  '(us) |', '| --- | ---: | ---: |']
        for ci, co, hw in ((64, 128, 56), (128, 256, 28), (256, 512, 14)):
            x = torch.randn(1, ci, hw, hw).contiguous(memory_format=torch.channels_last)
            w = torch.randn(co, ci, 3, 3).contiguous(memory_format=torch.channels_last) * 0.1
            b = torch.randn(co)
            pw = PACK_CONV(w, [1, 1], [2, 2], [1, 1], 1)
            row = [best_us(partial(CONV, x, w, b, [1, 1], [2, 2], [1, 1], 1, 'none', [], ''), 10),
                   best_us(partial(CONV, x, pw, b, [1, 1], [2, 2], [1, 1], 1, 'none', [], ''), 10)]
            lines.append(f'| {ci} -> {co} at {hw}x{hw} | ' + ' | '.join(f'{v:.0f}' for v in row) + ' |')
        c = 32
        x, w, b = torch.randn(1, 4, 4, c), torch.randn(c, c), torch.randn(c)
        pw = PACK_LINEAR(w)
        xc = x.permute(0, 3, 1, 2)
        wd = torch.randn(c, 1, 1, 7).contiguous(memory_format=torch.channels_last)
        pwd = PACK_CONV(wd, [0, 3], [1, 1], [1, 1], c)
        calls = {
            'oneDNN GEMM, prepacked': lambda: LINEAR(x, pw, b, 'none', [], ''),
            'oneDNN GEMM + residual post-op, prepacked': lambda: LINEAR.binary(x, x, pw, b, 'add'),
            'MKL GEMM (`F.linear`)': lambda: F.linear(x, w, b),
            'oneDNN depth-wise 1x7 conv, prepacked': lambda: CONV(xc, pwd, b, [0, 3], [1, 1], [1, 1], c, 'none', [],
                                                                 ''),
            'ATen depth-wise 1x7 conv (`F.conv2d`)': lambda: F.conv2d(xc, wd, b, 1, (0, 3), 1, c),
            'LayerNorm': lambda: F.layer_norm(x, (c,), b, b),
            'softmax': lambda: x.softmax(-1),
        }
        lines += ['', '| one call at a tiny size (1x4x4x32): fixed cost | us |', '| --- | ---: |']
        lines += [f'| {k} | {best_us(f, 200):.1f} |' for k, f in calls.items()]
        lines += ['', '| whole forward at 32x32, batch 1 (compute negligible): fixed cost per forward | ms |',
                  '| --- | ---: |']
        for name, kw in (('mednext_tiny', {'img_size': 32}), ('mednext_base', {'img_size': 32}), ('resnet18', {})):
            with torch.inference_mode(False):  # parameters made under inference_mode take MedNeXt's unfused paths
                model = timm.create_model(name, num_classes=2, **kw).eval()
            x = torch.randn(1, 3, 32, 32)
            lines.append(f'| {name} | {best_us(partial(model, x), 20) / 1e3:.2f} |')
    head = (f'1 thread, thread CPU time, best of 5; torch {torch.__version__}; load average {load0:.1f} at the start, '
            f'{os.getloadavg()[0]:.1f} at the end (2 cores, shared).')
    text = '\n'.join(lines[:2] + [head, ''] + lines[2:]) + '\n'
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
