"""Side-by-side CPU speed of MedNeXt (optimised and reference paths) against timm / smp baselines.

Every model is timed in the same process, in interleaved rounds (each round: every model in turn, one
untimed call then one timed call), so that load from other processes hits all of them alike; the table
reports medians and the ratios the speed targets are stated in (median of the per-round ratios).
``torch.set_num_threads(2)``, fp32, eval, ``torch.inference_mode``.

    python benchmarks/speed/bench_speed.py --rounds 15 --out benchmarks/speed/results.md

Models that cannot be built here (e.g. ``medunext_base`` before it lands, or smp not installed) are
listed as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

import timm  # noqa: E402

import mednext_zoo.models  # noqa: E402,F401  (registers the models)
from mednext_zoo.models.mednext import set_reference_paths  # noqa: E402

Builder = Callable[[], Tuple[torch.nn.Module, int, int]]  # model, in_chans, img_size


def _timm(name: str, img_size: int = 224, in_chans: int = 3, reference: bool = False, **kw) -> Builder:
    def build():
        extra = dict(img_size=img_size) if 'mednext' in name or 'medunext' in name or 'swin' in name else {}
        model = timm.create_model(name, in_chans=in_chans, **extra, **kw)
        if reference:
            set_reference_paths(model)
        return model, in_chans, img_size
    return build


def _smp_unet(classes: int = 9) -> Builder:
    def build():
        import segmentation_models_pytorch as smp
        model = smp.Unet('resnet34', encoder_weights=None, in_channels=1, classes=classes)
        return model, 1, 224
    return build


CLS_MODELS: Dict[str, Builder] = {
    'mednext_base (reference path)': _timm('mednext_base', num_classes=2, reference=True),
    'mednext_base': _timm('mednext_base', num_classes=2),
    'convnext_tiny': _timm('convnext_tiny'),
    'resnet50': _timm('resnet50'),
    'resnet18': _timm('resnet18'),
    'swinv2_tiny_window8_256': _timm('swinv2_tiny_window8_256', img_size=256),
}
SEG_MODELS: Dict[str, Builder] = {
    'medunext_base (reference path)': _timm('medunext_base', in_chans=1, num_classes=9, reference=True),
    'medunext_base': _timm('medunext_base', in_chans=1, num_classes=9),
    'smp Unet(resnet34)': _smp_unet(),
}
TARGETS = [  # (candidate, baseline, kind, op, bound)
    ('mednext_base', 'convnext_tiny', 'throughput', '>=', 1.8),
    ('mednext_base', 'resnet50', 'throughput', '>=', 1.5),
    ('mednext_base', 'resnet18', 'throughput', '>=', 0.8),
    ('mednext_base', 'swinv2_tiny_window8_256', 'throughput', '>=', 3.0),
    ('mednext_base', 'convnext_tiny', 'latency', '<=', 0.6),
    ('medunext_base', 'smp Unet(resnet34)', 'throughput', '>=', 1.0),
]


def _time_rounds(
        models: Dict[str, Tuple[torch.nn.Module, torch.Tensor]], rounds: int, warmup: int,
) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model, x in models.values():
                model(x)
        for _ in range(rounds):
            for name, (model, x) in models.items():
                model(x)  # untimed: the timed call sees this model's steady state, not the previous model's
                t0 = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t0)
    return times


def run(names: Dict[str, Builder], batch: int, rounds: int, warmup: int) -> Dict[str, Optional[dict]]:
    built: Dict[str, Tuple[torch.nn.Module, torch.Tensor]] = {}
    out: Dict[str, Optional[dict]] = {}
    for name, build in names.items():
        try:
            model, in_chans, size = build()
        except Exception as e:  # noqa: BLE001 - report and go on: a baseline may be missing here
            print(f'skip {name}: {type(e).__name__}: {e}', file=sys.stderr)
            out[name] = None
            continue
        built[name] = (model.eval(), torch.randn(batch, in_chans, size, size))
    times = _time_rounds(built, rounds, warmup)
    for name, t in times.items():
        med = statistics.median(t)
        out[name] = dict(median_s=med, min_s=min(t), img_per_s=batch / med, times_s=t)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rounds', type=int, default=11)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--skip-seg', action='store_true')
    p.add_argument('--only', nargs='*', default=None, help='model names to keep (default: all)')
    p.add_argument('--note', default='', help='free text recorded with the table (e.g. what else ran)')
    p.add_argument('--out', default=None, help='write a markdown table here (and .json beside it)')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    groups = [('cls', CLS_MODELS)] + ([] if args.skip_seg else [('seg', SEG_MODELS)])
    results: Dict[str, Dict[str, Dict[str, Optional[dict]]]] = {}
    for gname, models in groups:
        if args.only:
            models = {k: v for k, v in models.items() if k in args.only}
        results[gname] = {
            'throughput': run(models, args.batch, args.rounds, args.warmup),
            'latency': run(models, 1, args.rounds * 3, args.warmup),
        }

    lines = [
        f'Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, timm {timm.__version__}, '
        f'{args.threads} threads, fp32, eval + inference_mode; {args.rounds} interleaved rounds at batch '
        f'{args.batch} (throughput) and {args.rounds * 3} at batch 1 (latency); medians. '
        f'Load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. {args.note}',
        '',
        f'| model | input | batch-{args.batch} img/s | batch-1 latency ms |',
        '| --- | --- | --- | --- |',
    ]
    for gname, res in results.items():
        for name in res['throughput']:
            th, lat = res['throughput'][name], res['latency'].get(name)
            size = 256 if 'swin' in name else 224
            inp = f'{"1" if gname == "seg" else "3"}x{size}x{size}'
            if th is None:
                lines.append(f'| {name} | {inp} | skipped | skipped |')
                continue
            lat_s = f'{lat["median_s"] * 1e3:.1f}' if lat else 'n/a'
            lines.append(f'| {name} | {inp} | {th["img_per_s"]:.2f} | {lat_s} |')
    lines += ['', 'Ratios: median over rounds of the per-round ratio (both models timed in the same round).',
              '', '| target | measured | met |', '| --- | --- | --- |']
    merged = {k: v for g in results.values() for k, v in g['throughput'].items()}
    merged_lat = {k: v for g in results.values() for k, v in g['latency'].items()}
    for cand, base, kind, op, bound in TARGETS:
        src = merged if kind == 'throughput' else merged_lat
        for variant in (cand, f'{cand} (reference path)'):
            a, b = src.get(variant), src.get(base)
            if not a or not b:
                lines.append(f'| {variant} {kind} vs {base} {op} {bound}x | not measured | - |')
                continue
            # per-round ratios (both timed in the same round), then their median: steadier under load
            pairs = zip(a['times_s'], b['times_s'], strict=True)
            ratio = statistics.median((tb / ta) if kind == 'throughput' else (ta / tb) for ta, tb in pairs)
            met = ratio >= bound if op == '>=' else ratio <= bound
            lines.append(f'| {variant} {kind} vs {base} {op} {bound}x | {ratio:.3f}x | {"yes" if met else "no"} |')
    lines += ['', '| after / before (fast path vs reference path) | ratio |', '| --- | --- |']
    for cand in ('mednext_base', 'medunext_base'):
        for kind, src in (('throughput', merged), ('latency', merged_lat)):
            a, b = src.get(cand), src.get(f'{cand} (reference path)')
            if a and b:
                pairs = zip(a['times_s'], b['times_s'], strict=True)
                ratio = statistics.median((tb / ta) if kind == 'throughput' else (ta / tb) for ta, tb in pairs)
                lines.append(f'| {cand} {kind} | {ratio:.3f}x |')
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        json_path = os.path.splitext(args.out)[0] + '.json'
        for path, payload in ((args.out, text), (json_path, json.dumps(results, indent=1))):
            tmp = path + '.tmp'
            with open(tmp, 'w') as f:
                f.write(payload)
            os.replace(tmp, path)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
