"""Peak memory of a patch-trained segmentation run against the image size (issue 21).

    python benchmarks/patch_memory.py [--sizes 576,1152] [--images 8] [--patch 128] [--out benchmarks/results/...]

For each image side in ``--sizes`` it writes a vessel set (``write_vessel_dataset``, the same number of images) and
runs ``mednext-zoo finetune --task seg --model medunext_tiny_hr --patch-size P`` for one epoch in a fresh process,
recording that process's peak resident memory (``ru_maxrss``) and the bytes of the images it loaded (float32
after normalisation, as the run holds them). The claim under test: the peak grows with the image size by about
the loaded images (plus the full-size output of the sliding-window prediction), not by the training itself, whose
tensors are patch-sized. The results land in ``RESULTS/patch-memory/results.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, ROOT

_CHILD = r'''
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from mednext_zoo.finetune.segmentation import SegConfig, fit
data, out, patch = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
res = fit(SegConfig(data=data, out=out, model='medunext_tiny_hr', patch_size=patch, epochs=1, batch_size=4,
                    progress=False, export=False, overlays=0))
print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'wall_s': time.perf_counter() - t, 'spatial': res['spatial'],
                  'dice': res['summaries']['strict']['mean_dice']}))
'''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', default='576,1152')
    p.add_argument('--images', type=int, default=8, help='images per set (train; plus 2 val and 2 test)')
    p.add_argument('--patch', type=int, default=128)
    p.add_argument('--out', type=Path, default=RESULTS / 'patch-memory')
    a = p.parse_args(argv)
    from mednext_zoo.data.synthetic_vessels import write_vessel_dataset
    rows = []
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in a.sizes.split(',')):
            csv = write_vessel_dataset(os.path.join(tmp, f'v{size}'), n_train=a.images, n_val=2, n_test=2, size=size)
            run = subprocess.run([sys.executable, '-c', _CHILD, csv, os.path.join(tmp, f'run{size}'), str(a.patch)],
                                 capture_output=True, text=True, env=env)
            if run.returncode:
                print(run.stdout, run.stderr, file=sys.stderr)
                return run.returncode
            res = json.loads(run.stdout.strip().splitlines()[-1])
            n = a.images + 4
            res.update(size=size, images=n, image_mb=n * size * size * 3 * 4 / 2 ** 20)
            rows.append(res)
            print(res, flush=True)
    base = rows[0]
    lines = [f'# Peak memory of patch training against the image size (`medunext_tiny_hr`, {a.patch} x {a.patch} '
             f'patches, batch 4, one epoch + sliding-window evaluation, fp32, one thread)', '',
             '| image side | images | their bytes as float32 (MB) | peak RSS (MB) | peak RSS above the smallest set '
             '(MB) | growth of the image bytes (MB) |', '| ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        lines.append(f'| {r["size"]} | {r["images"]} | {r["image_mb"]:.0f} | {r["peak_rss_mb"]:.0f} | '
                     f'{r["peak_rss_mb"] - base["peak_rss_mb"]:.0f} | {r["image_mb"] - base["image_mb"]:.0f} |')
    lines += ['', 'The run keeps every image in memory as float32 (loaded once, normalised) and the raw decoded copy '
              'while preparing it; training tensors are patch-sized. Command: `python benchmarks/patch_memory.py '
              f'--sizes {a.sizes} --images {a.images} --patch {a.patch}`.']
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / 'results.md').write_text('\n'.join(lines) + '\n')
    (a.out / 'results.json').write_text(json.dumps(rows, indent=1) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
