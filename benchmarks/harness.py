"""Run ``mednext-zoo bench`` and file its results under benchmarks/results/<task>-<device>-<machine>/.

    python benchmarks/harness.py                          # the default CPU table
    python benchmarks/harness.py --device cuda --amp      # GPU: AMP, batch 256
    python benchmarks/harness.py --task seg

Any ``mednext-zoo bench`` option may be given; --out defaults to the folder named after the machine.
"""
import sys

from _common import RESULTS, slug

from mednext_zoo.cli import main
from mednext_zoo.machine import machine_info

if __name__ == '__main__':
    args = sys.argv[1:]
    if '--out' not in args:
        device = args[args.index('--device') + 1] if '--device' in args else 'cpu'
        task = args[args.index('--task') + 1] if '--task' in args else 'cls'
        info = machine_info(device)
        name = info.get('gpu') if device == 'cuda' and info.get('gpu') else \
            f"{info['cpu']}-{info['cpu_cores_usable']}core"
        args += ['--out', str(RESULTS / f'{task}-{device}-{slug(name)}')]
    sys.exit(main(['bench', *args]))
