"""The default ``finetune --task seg`` recipe on the built-in phantoms: does it find every structure in the step
budget docs/segmentation.md quotes? (issue 11)

    python benchmarks/finetune_phantoms.py [--model medunext_tiny_hr] [--epochs small=8,lookalike=8,thick=8]

Writes each phantom as an nnU-Net folder (``write_phantom_dataset``), runs ``mednext-zoo finetune --task seg`` with
the default recipe at ``--img-size 64`` (the phantoms' size), and copies each run's 3D report on its held-out
cases (``imagesTs``, never trained on) to ``benchmarks/results/finetune-phantoms/<phantom>.md`` with a header
naming the command, the steps and the wall time.
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS


def seg_finetune_args(model: str, data: Path, run: Path, epochs: int | str) -> list:
    """``mednext-zoo finetune`` arguments of the default seg recipe on a phantom folder ``data`` (64 x 64 slices)."""
    return ['finetune', '--task', 'seg', '--model', model, '--data', str(data), '--out', str(run),
            '--img-size', '64', '--epochs', str(epochs), '--no-progress']


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='medunext_tiny_hr', help='segmentation model (default medunext_tiny_hr)')
    p.add_argument('--epochs', default='small=8,lookalike=8,thick=8',
                   help='PHANTOM=EPOCHS pairs, comma-separated (default small=8,lookalike=8,thick=8)')
    p.add_argument('--out', type=Path, default=RESULTS / 'finetune-phantoms', help='where the reports go')
    a = p.parse_args(argv)
    import json

    from mednext_zoo.cli import main as cli
    from mednext_zoo.data.synthetic import write_phantom_dataset
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pair in a.epochs.split(','):
            name, epochs = pair.split('=')
            data, run = Path(tmp) / name, Path(tmp) / f'run-{name}'
            write_phantom_dataset(str(data), phantom=name)
            args = seg_finetune_args(a.model, data, run, epochs)
            t0 = time.perf_counter()
            rc = cli(args)
            wall = time.perf_counter() - t0
            if rc:
                return rc
            last = json.loads((run / 'metrics.jsonl').read_text().splitlines()[-1])
            head = (f'# `{a.model}` on the `{name}` phantom, default recipe\n\n'
                    f'`mednext-zoo {" ".join(args[:7])} DATA --out RUN {" ".join(args[9:])}`: {last["step"]} '
                    f'optimiser steps ({epochs} epochs, batch 12), {wall:.0f} s wall for the whole command on '
                    f'this machine. Scored on the held-out `imagesTs` cases.\n\n')
            (a.out / f'{name}.md').write_text(head + (run / 'eval-test' / 'report.md').read_text())
            print(f'wrote {a.out / f"{name}.md"}')
            shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
