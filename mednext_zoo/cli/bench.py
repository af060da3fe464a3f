"""``mednext-zoo bench``: params, FLOPs, latency, throughput and memory against the baselines."""
from __future__ import annotations

import argparse
import sys
import warnings

from ..benchmark import BenchConfig, run_benchmark, to_markdown, write_results
from ..errors import UserInputError

SUITES = ('paper_table', 'ablation')
# timm and fvcore still call the deprecated torch.jit.script / trace API; nothing a user can act on
warnings.filterwarnings('ignore', message='`torch.jit.(script|trace)` is deprecated', category=FutureWarning)


def _models(text: str) -> list:
    names = [n.strip() for n in text.split(',') if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError('give at least one model name, e.g. --models mednext_base,resnet50')
    return names


def _run(args: argparse.Namespace) -> int:
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
    )
    result = run_benchmark(cfg)
    written = write_results(result, args.out, plot=not args.no_plot)
    print(to_markdown(result))
    if not args.no_plot and 'png' not in written:
        print("results.png not written: matplotlib is not installed (pip install 'mednext-zoo[bench]').",
              file=sys.stderr)
    errors = [r for r in result.rows if r.get('error')]
    for r in errors:
        print(f"{r['name']}: {r['error']}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    if errors and len(errors) == len(result.rows):
        raise UserInputError('no model could be measured (see the errors above).')
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
    p.add_argument('--compile', action='store_true', help='torch.compile every model (warm-up compiles)')
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
                   help="run a counting suite instead: paper_table (Table 2 and the SDFFN claim) or ablation "
                        "(Table 7 variants); writes SUITE.md / SUITE.json into --out")
    p.set_defaults(func=_run)
