"""Where MedNeXt's CPU time goes: torch.profiler op table, fast vs reference path, grouped by op.

    python benchmarks/speed/profile_mednext.py --batch 16 --out benchmarks/speed/profile_b16.txt
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
from mednext_zoo.models.mednext import set_reference_paths  # noqa: E402


def op_table(model: torch.nn.Module, x: torch.Tensor, rows: int) -> str:
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='mednext_base')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rows', type=int, default=20)
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 224, 224)
    parts = []
    for label, reference in (('fast path', False), ('reference path', True)):
        model = timm.create_model(args.model, num_classes=2).eval()
        if reference:
            set_reference_paths(model)
        parts.append(f'## {args.model} {label}, batch {args.batch}, {args.threads} threads\n\n'
                     + op_table(model, x, args.rows))
    text = '\n\n'.join(parts) + '\n'
    print(text)
    if args.out:
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
