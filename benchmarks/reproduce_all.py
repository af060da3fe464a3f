"""Produce all five pretrained-tag folders on a GPU machine, or time the tags' training steps.

Run (a maintainer with the five downloads and a GPU):

    python benchmarks/reproduce_all.py run --data-root ~/downloads --out runs/reproduce --seeds 3
    python benchmarks/reproduce_all.py run --data mednext_base.sarscov2_ct=~/x --out r --tags mednext_base.sarscov2_ct

trains every tag in turn with ``mednext_zoo.reproduce.reproduce`` (resuming tags already started in ``--out``)
and prints, per tag, the wall time and the peak GPU memory (allocated and reserved by PyTorch) and peak host
memory; ``OUT/reproduce_all.json`` / ``.md`` keep the table. Each tag's Hub folder is ``OUT/<tag>/export``.
Default data folders under ``--data-root``: see ``DEFAULT_DIRS``.

Steps (no data needed):

    python benchmarks/reproduce_all.py steps --rounds 3 --out benchmarks/results/reproduce_steps.md

times the training step (forward, loss, backward, optimiser) of each tag's network at its protocol batch and
input size, in interleaved rounds, and projects a full run from the published dataset sizes (``FULL_RUN``);
it also gives a FLOPs-based GPU extrapolation, labelled as such.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from mednext_zoo.reproduce import PROTOCOLS, build_config, reproduce  # noqa: E402
from mednext_zoo.reproduce.timing import format_duration, measure_step_time  # noqa: E402

DEFAULT_DIRS = {  # folder names under --data-root (what the Kaggle / TransUNet / ACDC downloads unpack to)
    'mednext_base.sarscov2_ct': 'sarscov2-ctscan-dataset',
    'mednext_base.monkeypox_msld': 'monkeypox-skin-lesion-dataset',
    'mednext_base.covid_ct_large': 'large-covid19-ct-slice-dataset',
    'medunext_base.synapse': 'Synapse',
    'medunext_base.acdc': 'ACDC',
}

# Training images / slices per seed of a full run under each protocol (70 % of the release for the
# classification tags; TransUNet's 2,211 Synapse slices; ACDC's 70 training patients, about 1,300 slices in the
# TransUNet-lineage list), and the evaluation images per epoch (validation split).
FULL_RUN = {
    'mednext_base.sarscov2_ct': dict(train=round(0.7 * 2482), val=round(0.1 * 2482),
                                     source='2,482 slices x 0.7 / 0.1'),
    'mednext_base.monkeypox_msld': dict(train=round(0.7 * 3192), val=round(0.1 * 3192),
                                        source='3,192 augmented images x 0.7 / 0.1'),
    'mednext_base.covid_ct_large': dict(train=round(0.7 * 14486), val=round(0.1 * 14486),
                                        source='14,486 slices x 0.7 / 0.1'),
    'medunext_base.synapse': dict(train=2211, val=0, source='TransUNet train.txt: 2,211 slices, no validation'),
    'medunext_base.acdc': dict(train=1300, val=190,
                               source='~1,300 slices of 70 patients (lists_ACDC/train.txt), ~190 of 10 for validation'),
}
GPU_TFLOPS = (50.0, 150.0)  # assumed sustained bf16 training throughput of one H100 / H200-class GPU (see steps)


def _peak_host_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def run(args: argparse.Namespace) -> int:
    data = {t: os.path.join(args.data_root, d) for t, d in DEFAULT_DIRS.items()} if args.data_root else {}
    for spec in args.data or ():
        tag, _, path = spec.partition('=')
        data[tag] = path
    tags = args.tags or list(PROTOCOLS)
    missing = [t for t in tags if t not in data]
    if missing:
        raise SystemExit(f'no data folder for {missing}: give --data-root or --data TAG=DIR')
    rows: List[Dict] = []
    for tag in tags:
        out = os.path.join(args.out, tag)
        resume = os.path.isfile(os.path.join(out, 'reproduce.json'))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        print(f'=== {tag} <- {data[tag]} ({"resuming" if resume else "new"})', flush=True)
        summary = reproduce(tag, data[tag], out, seeds=args.seeds, resume=resume, dry_run=args.dry_run,
                            epochs=args.epochs, num_workers=args.workers, progress=not args.no_progress,
                            allow_partial=args.allow_partial)
        row = dict(tag=tag, wall_s=round(time.time() - t0, 1), host_peak_gb=round(_peak_host_gb(), 2),
                   estimate=summary.get('estimate'))
        if torch.cuda.is_available():
            row.update(gpu=torch.cuda.get_device_name(),
                       gpu_peak_allocated_gb=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
                       gpu_peak_reserved_gb=round(torch.cuda.max_memory_reserved() / 2 ** 30, 2))
        if not args.dry_run:
            row['export'] = os.path.join(out, 'export')
        rows.append(row)
        print(f'--- {tag}: {format_duration(row["wall_s"])}, GPU peak {row.get("gpu_peak_allocated_gb", "-")} GiB '
              f'allocated / {row.get("gpu_peak_reserved_gb", "-")} GiB reserved, host peak {row["host_peak_gb"]} GiB',
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'reproduce_all.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    lines = ['| tag | wall time | GPU peak allocated (GiB) | GPU peak reserved (GiB) | host peak (GiB) |',
             '|---|---|---|---|---|']
    lines += [f'| {r["tag"]} | {format_duration(r["wall_s"])} | {r.get("gpu_peak_allocated_gb", "-")} | '
              f'{r.get("gpu_peak_reserved_gb", "-")} | {r["host_peak_gb"]} |' for r in rows]
    with open(os.path.join(args.out, 'reproduce_all.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


def steps(args: argparse.Namespace) -> int:
    from mednext_zoo.finetune.distributed import resolve_amp_dtype, resolve_device
    from mednext_zoo.hub import count_params_flops
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = resolve_amp_dtype(args.amp, device)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    cfgs = {t: build_config(p, 0, '.', '.') for t, p in PROTOCOLS.items()}
    times: Dict[str, List[float]] = {t: [] for t in PROTOCOLS}
    cpu: Dict[str, List[float]] = {t: [] for t in PROTOCOLS}
    for r in range(args.rounds):  # interleaved: load from other processes hits every tag alike
        for tag, p in PROTOCOLS.items():
            st = measure_step_time(tag, p.task, cfgs[tag].batch_size, p.img_size, device, amp, args.steps)
            times[tag].append(st.wall_s)
            cpu[tag].append(st.cpu_s)
            print(f'round {r + 1}: {tag} {st.wall_s:.2f} s/step wall, {st.cpu_s:.2f} CPU s/step', flush=True)
    import timm
    rows = []
    for tag, p in PROTOCOLS.items():
        cfg, full = cfgs[tag], FULL_RUN[tag]
        sec = statistics.median(times[tag])
        cpu_sec = statistics.median(cpu[tag])
        n_steps = (full['train'] // cfg.batch_size + full['val'] / cfg.batch_size / 3) * cfg.epochs
        model = timm.create_model(tag)
        _, gmacs, _ = count_params_flops(model, (p.in_chans, p.img_size, p.img_size))
        train_tflop = 3 * 2 * gmacs * 1e-3 * cfg.batch_size * n_steps  # fwd + 2x bwd, 2 FLOPs per multiply-add
        rows.append(dict(tag=tag, batch=cfg.batch_size, input=f'{p.in_chans}x{p.img_size}x{p.img_size}',
                         epochs=cfg.epochs, sec_per_step=round(sec, 3), cpu_sec_per_step=round(cpu_sec, 3),
                         sec_per_step_all=[round(t, 3) for t in times[tag]],
                         steps_per_seed=round(n_steps), full_run_this_device_s=round(sec * n_steps),
                         gmacs_per_image=round(gmacs, 3), train_pflop_per_seed=round(train_tflop / 1e3, 1),
                         gpu_estimate_s=[round(train_tflop / t) for t in GPU_TFLOPS], data=full['source']))
    dtype = str(amp).replace('torch.', '') if amp else 'float32'
    dev = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {args.threads} threads'
    head = (f'Training step (forward + loss + backward + optimiser) at each tag\'s protocol batch and input, {dtype}, '
            f'{dev}; median of {args.rounds} interleaved rounds of {args.steps} timed steps (after one warm-up step); '
            f'load average at start {load:.1f}. {args.note}\n')
    lines = [head, '| tag | batch | input | s/step wall (median) | CPU s/step (all threads) | steps/seed (full run) | '
                   'full run per seed at the wall time | GFLOPs/img (fvcore MACs) | GPU estimate per seed '
                   '(50-150 TFLOP/s) |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lo, hi = r['gpu_estimate_s'][1], r['gpu_estimate_s'][0]
        lines.append(f'| {r["tag"]} | {r["batch"]} | {r["input"]} | {r["sec_per_step"]:.2f} | '
                     f'{r["cpu_sec_per_step"]:.2f} | {r["steps_per_seed"]} | '
                     f'{format_duration(r["full_run_this_device_s"])} | {r["gmacs_per_image"]:.2f} | '
                     f'{format_duration(lo)} - {format_duration(hi)} |')
    lines.append('\nGPU column: an extrapolation, not a measurement: training FLOPs = 3 x 2 x fvcore multiply-adds '
                 'per image x images, divided by an assumed sustained 50-150 TFLOP/s (5-15 % of the ~800-1000 '
                 'TFLOP/s dense bf16 peak of an H100 / H200; depthwise convolutions and small batches keep such '
                 'networks far from peak). Data loading, evaluation and checkpoints are not included.')
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + '.json', 'w') as f:
            json.dump({'machine': dev, 'dtype': dtype, 'load_average': load, 'rounds': args.rounds,
                       'steps': args.steps, 'gpu_tflops_assumed': GPU_TFLOPS, 'rows': rows}, f, indent=2)
    return 0


def decode(args: argparse.Namespace) -> int:
    """Milliseconds per training sample of the CPU data pipeline: a 512x512 PNG slice read and augmented at 224
    (classification), a 224x224 slice augmented (segmentation, volumes are held in memory)."""
    import random
    import tempfile

    import numpy as np
    from PIL import Image

    from mednext_zoo.data import ImageClassificationDataset, Sample, build_transforms
    from mednext_zoo.finetune.segmentation.preprocess import augment_pair
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            y, x = np.mgrid[:512, :512]
            img = (127 + 100 * np.sin((x + 7 * i) / 40.0) * np.cos(y / 55.0) + rng.normal(0, 8, (512, 512)))
            p = os.path.join(tmp, f'{i}.png')
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert('RGB').save(p)
            paths.append(p)
        ds = ImageClassificationDataset([Sample(p, 'a') for p in paths], {'a': 0},
                                        build_transforms(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True))
        t = time.perf_counter()
        for r in range(args.repeats):
            for i in range(len(ds)):
                ds[(i, r)]
        cls_ms = (time.perf_counter() - t) / (args.repeats * len(ds)) * 1e3
    x, yl = torch.rand(1, 224, 224), torch.randint(0, 9, (224, 224))
    rnd = random.Random(0)
    t = time.perf_counter()
    n = args.repeats * args.images
    for _ in range(n):
        augment_pair(x, yl, rnd)
    seg_ms = (time.perf_counter() - t) / n * 1e3
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'data pipeline, 1 thread, load average {load:.1f}: classification {cls_ms:.1f} ms/image (512x512 RGB PNG '
          f'read + random resized crop + flip + normalise to 224); segmentation {seg_ms:.2f} ms/slice (TransUNet '
          f'augmentation of a 224x224 slice)')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('run', help='reproduce the tags (time and memory per tag)')
    r.add_argument('--data-root', help='folder holding the five downloads (names in DEFAULT_DIRS)')
    r.add_argument('--data', action='append', metavar='TAG=DIR', help='data folder of one tag (repeatable)')
    r.add_argument('--out', required=True)
    r.add_argument('--tags', nargs='*', choices=list(PROTOCOLS))
    r.add_argument('--seeds', type=int, default=1)
    r.add_argument('--epochs', type=int, help='override (recorded in the cards as a deviation)')
    r.add_argument('--workers', type=int, default=8)
    r.add_argument('--dry-run', action='store_true')
    r.add_argument('--allow-partial', action='store_true')
    r.add_argument('--no-progress', action='store_true')
    r.set_defaults(func=run)
    s = sub.add_parser('steps', help='time each tag\'s training step; project full runs')
    s.add_argument('--device', default='auto')
    s.add_argument('--amp', default='auto')
    s.add_argument('--threads', type=int, default=2)
    s.add_argument('--rounds', type=int, default=3)
    s.add_argument('--steps', type=int, default=2)
    s.add_argument('--note', default='')
    s.add_argument('--out', help='markdown table (a .json with the same stem is written beside it)')
    s.set_defaults(func=steps)
    d = sub.add_parser('decode', help='time the CPU data pipeline per training sample')
    d.add_argument('--images', type=int, default=16)
    d.add_argument('--repeats', type=int, default=3)
    d.set_defaults(func=decode)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
