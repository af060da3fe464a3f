"""``mednext-zoo bench``: params, FLOPs, latency, throughput and memory against the baselines."""
from __future__ import annotations

import argparse
import sys
import warnings

from ..benchmark import BenchConfig, run_benchmark, to_markdown, write_results
from ..errors import UserInputError

SUITES = ('paper_table', 'ablation', 'train')
# timm and fvcore still call the deprecated torch.jit.script / trace API; nothing a user can act on
warnings.filterwarnings('ignore', message='`torch.jit.(script|trace)` is deprecated', category=FutureWarning)


def _models(text: str) -> list:
    names = [n.strip() for n in text.split(',') if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError('give at least one model name, e.g. --models mednext_base,resnet50')
    return names


def _names(text: str) -> list:
    return [n.strip() for n in text.split(',') if n.strip()]


def _recipe(text: str) -> dict:
    """``key=value,key=value`` -> recipe overrides (every recipe field is a scalar)."""
    from ..benchmark.training import parse_value
    out = {}
    for item in _names(text):
        key, sep, raw = item.partition('=')
        if not sep:
            raise argparse.ArgumentTypeError(f'--recipe expects key=value pairs, e.g. oversample_fg=0.33; got {item!r}')
        out[key.strip()] = parse_value(raw)
    return out


def _run_training(args: argparse.Namespace) -> int:
    from ..benchmark.training import TrainSuiteConfig, run_training_suite
    from ..benchmark.training_report import training_markdown
    out = args.out if args.out != 'bench_results' else 'bench_train'
    cfg = TrainSuiteConfig(
        task=args.task, rows=(args.models or []) + (args.row or []) or None, phantoms=args.phantoms,
        seeds=args.seeds, steps=args.steps,
        batch_size=args.batch_size or 16, eval_every=args.eval_every, data=args.data, img_size=args.img_size or 64,
        patch_size=args.patch_size, resize=args.resize,
        recipe=args.recipe or {}, device=args.device, threads=args.threads, workers=args.workers, clock=args.clock,
        progress=not args.no_progress, resume=args.resume, note=args.note)
    result = run_training_suite(cfg, out_dir=out)
    print(training_markdown(result))
    print(f'wrote {out}/train.json, train.csv, train.md, train.png', file=sys.stderr)
    if result['rows'] and all(r['status'] != 'ok' for r in result['rows']):
        raise UserInputError('no row could be trained (see the reasons above).')
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.suite == 'train':
        return _run_training(args)
    if args.suite:
        from ..benchmark import suites
        result = suites.run_suite(args.suite, out_dir=args.out, progress=not args.no_progress)
        print(result)
        return 0
    cfg = BenchConfig(
        models=args.models, task=args.task, img_size=args.img_size, batch_size=args.batch_size, device=args.device,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile, quick=args.quick, rounds=args.rounds,
        latency_iters=args.latency_iters, warmup=args.warmup, threads=args.threads, num_classes=args.num_classes,
        reference=args.reference, measure_memory=not args.no_memory, progress=not args.no_progress, note=args.note,
        backends=args.backend, dtypes=args.dtype,
    )
    if args.backend and args.compile:
        raise UserInputError('--compile is the same as --backend compile: give one of them.')
    if args.dtype and args.amp:
        raise UserInputError('--amp is the same as --dtype bf16 (CPU) / fp16 (CUDA): give one of them.')
    result = run_benchmark(cfg)
    written = write_results(result, args.out, plot=not args.no_plot)
    print(to_markdown(result))
    if not args.no_plot and 'png' not in written:
        print("results.png not written: matplotlib is not installed (pip install 'mednext-zoo[bench]').",
              file=sys.stderr)
    for r in result.rows:
        if r.get('skipped'):
            print(f"{r['name']} skipped: {r['skipped']}", file=sys.stderr)
    errors = [r for r in result.rows if r.get('error')]
    for r in errors:
        print(f"{r['name']} [{r['backend']} {r['dtype']}]: {r['error']}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    if all(r.get('error') or r.get('skipped') for r in result.rows):
        raise UserInputError('no model could be measured (see the errors and skipped reasons above).')
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        'bench',
        help='benchmark params, FLOPs, latency, throughput and memory against ResNet / ConvNeXt / Swin-v2',
        description='Measure params, GFLOPs (fvcore), activations, batch-1 latency, batch-N throughput and peak '
                    'memory per model, with ratios to mednext_base (medunext_base for --task seg) measured in the '
                    'same run. With no arguments: the MedNeXt family against the baselines on the CPU.',
    )
    p.add_argument('--models', type=_models, default=None,
                   help='comma-separated timm names, NAME@SIZE, or named settings (default: family + baselines)')
    p.add_argument('--task', choices=('cls', 'seg'), default='cls',
                   help='cls: MedNeXt vs ResNet/ConvNeXt/Swin-v2; seg: MedUNeXt vs smp U-Nets (default cls)')
    p.add_argument('--img-size', type=int, default=None, help="input size for every model (default: each model's own)")
    p.add_argument('--batch-size', type=int, default=None, help='throughput batch (default 8 on CPU, 256 on CUDA)')
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu', help='device to measure on')
    p.add_argument('--amp', action='store_true', help='autocast (float16 on CUDA, bfloat16 on CPU)')
    p.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    p.add_argument('--compile', action='store_true', help='torch.compile every model (= --backend compile)')
    p.add_argument('--backend', type=_names, default=None, metavar='LIST',
                   help='comma-separated inference backends: eager, compile, onnxruntime, openvino (default eager); '
                        'every model gets one row per backend x dtype, with drift against eager fp32')
    p.add_argument('--dtype', type=_names, default=None, metavar='LIST',
                   help='comma-separated precisions: fp32, bf16, fp16 (CUDA), int8 (onnxruntime / openvino, '
                        'calibrated on sample images); default fp32. A combination that cannot run here is a '
                        'skipped row with its reason')
    p.add_argument('--out', default='bench_results', help='output folder (default ./bench_results)')
    p.add_argument('--quick', action='store_true', help='fewer rounds and a smaller batch: a fast, rougher run')
    p.add_argument('--rounds', type=int, default=None, help='interleaved timing rounds (default 5, quick 2)')
    p.add_argument('--latency-iters', type=int, default=None, help='batch-1 runs per model per round (default 3)')
    p.add_argument('--warmup', type=int, default=None, help='batch-1 warm-up runs per model (default 2)')
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument('--num-classes', type=int, default=None, help='head size (default 1000 for cls, 9 for seg)')
    p.add_argument('--reference', default=None, help='model the x-ratios divide by (default mednext_base)')
    p.add_argument('--note', default='', help='free text recorded with the result (e.g. what else ran)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory pass')
    p.add_argument('--no-plot', action='store_true', help='skip results.png')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--suite', choices=SUITES, default=None,
                   help="run a suite instead: paper_table (Table 2 and the SDFFN claim) or ablation (Table 7 "
                        "variants), writing SUITE.md / SUITE.json into --out; or train: the training-efficiency "
                        "suite (quality vs steps and seconds over seeds; train.json / .csv / .md / .png)")
    t = p.add_argument_group('--suite train (see docs/benchmarks.md, "Training efficiency")')
    t.add_argument('--row', action='append', default=None, metavar='SPEC',
                   help='a row beside --models (repeatable): "[LABEL=]MODEL [key=value ...] [recipe.key=value ...]", '
                        'e.g. "tiny-os=medunext_tiny recipe.oversample_fg=0.33"')
    t.add_argument('--phantoms', type=_names, default=None,
                   help='synthetic tasks (seg: small,lookalike,thick; cls: lesion); default: all of the task')
    t.add_argument('--seeds', type=int, default=3, help='training seeds 0..N-1 per row (default 3)')
    t.add_argument('--steps', type=int, default=300, help='optimiser steps per run (default 300)')
    t.add_argument('--eval-every', type=int, default=25, help='held-out evaluation every N steps (default 25)')
    t.add_argument('--data', default=None,
                   help='your own data instead of the phantoms: a segmentation dataset (as finetune --task seg reads; '
                        '2D images larger than --img-size are trained on patches at native resolution and scored by '
                        'a sliding window, as finetune does), or for --task cls an ImageFolder / CSV / MedMNIST .npz '
                        '(its official test split held out)')
    t.add_argument('--patch-size', type=int, default=None,
                   help='--data (seg): train on PATCH x PATCH patches at native resolution (finetune --patch-size)')
    t.add_argument('--resize', action='store_true',
                   help='--data (seg): resize every image to --img-size instead (finetune --resize)')
    t.add_argument('--workers', type=int, default=0,
                   help='runs in parallel processes (default 0: one per usable CPU core, 1 on CUDA); with more than '
                        'one, each gets --threads torch threads (default 1)')
    t.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                   help='seconds shown in the tables and plots: wall clock, or process CPU time (steadier on a '
                        'shared machine); both are recorded')
    t.add_argument('--resume', action='store_true',
                   help='reuse the finished runs logged in --out (train.runs.jsonl) that match these settings')
    t.add_argument('--recipe', type=_recipe, default=None,
                   help='recipe overrides for every row, e.g. oversample_fg=0.33,dice_mode=image')
    p.set_defaults(func=_run)
