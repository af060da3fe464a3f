"""int8 drift on a TRAINED MedUNeXt (issue 15): what ONNX Runtime's and OpenVINO's own post-training int8 do to
a segmentation net that has learnt something, scored in 3D on held-out volumes.

    python benchmarks/int8_trained.py --threads 1                  # train (about 4 min on 1 thread), then score
    python benchmarks/int8_trained.py --run RUN --threads 1        # score an existing fine-tune run folder

1. Trains ``medunext_tiny_hr`` on the ``small`` phantom with the package's default recipe (the command of
   ``benchmarks/finetune_phantoms.py``: ``mednext-zoo finetune --task seg ... --img-size 64 --epochs 8``), unless
   ``--run`` names a finished run.
2. Copies the run's TRAINING volumes (its ``splits.csv`` train cases) as stored (raw HU) to a calibration folder,
   and exports ``RUN/export`` with ``mednext-zoo export --format onnx|openvino [--int8 --calibration DIR]``: the
   export reads them through the preprocessing the run recorded (CT window, scaled per volume), so the quantiser
   calibrates on the very inputs the net sees.
3. Runs eager fp32 PyTorch, fp32 / int8 ONNX Runtime and fp32 / int8 OpenVINO on every slice of the held-out
   ``imagesTs`` volumes (the inputs of ``predict_volume``: ``volume_inputs``, the run's intensity recipe; arg-max;
   nearest resize back to the native slice) and reports per class: 3D Dice against the ground truth (the
   package's ``strict`` mode, mean over cases), the agreement of each label map with fp32 PyTorch's (Dice pooled
   over all held-out voxels), and max |delta logit| against fp32 PyTorch.

Writes ``--out``/README.md and ``--out``/int8_trained.json (atomically). No timings: the figure is drift.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence

import numpy as np
import torch
from _common import RESULTS

REFERENCE = 'PyTorch fp32'
# (runtime label, export format, int8?) in report order; the reference is the eager model itself
ARTEFACTS = (('ORT fp32', 'onnx', False), ('ORT int8', 'onnx', True),
             ('OpenVINO fp32', 'openvino', False), ('OpenVINO int8', 'openvino', True))


def write_calibration_cases(records, folder: Path) -> int:
    """The image file of each of ``records`` copied into ``folder`` as stored (the export reads them through the
    run's recorded preprocessing, as training did); returns the number of slices they hold."""
    import shutil

    from mednext_zoo.data.volumes import load_volume

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for r in records:
        shutil.copyfile(r.image, folder / Path(r.image).name)
        n += load_volume(r, None).image.shape[0]
    return n


def _logits(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([run(x[i:i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])


def evaluate_runtimes(runners: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], volumes: Sequence,
                      classes: Sequence[str], settings: Mapping, reference: str = REFERENCE,
                      batch_size: int = 16) -> Dict:
    """Score each runner (``x (N, C, S, S) -> logits (N, K, S, S)``) on labelled ``volumes`` (``Volume``).

    Returns per runtime: ``dice`` (strict 3D Dice per foreground class, mean over the cases where the class is
    scored, and ``mean``), ``agreement`` (Dice of its label map against ``reference``'s per class, pooled over
    all voxels of all volumes; 1.0 where neither map has the class), ``voxels_changed`` (fraction of voxels
    whose label differs from ``reference``'s) and ``max_abs_dlogit`` (against ``reference``, per class channel
    and ``all``) at model resolution; ``reference_logit_range``: [min, max] of the reference logits."""
    from mednext_zoo.finetune.segmentation.inference import volume_inputs
    from mednext_zoo.finetune.segmentation.metrics import dice, evaluate_case, summarize
    from mednext_zoo.finetune.segmentation.preprocess import resize_labels

    if reference not in runners:
        raise ValueError(f'the reference runtime {reference!r} is not among {list(runners)}')
    fg = list(classes[1:])
    cases: Dict[str, List] = {name: [] for name in runners}
    maps: Dict[str, List[np.ndarray]] = {name: [] for name in runners}
    dlogit = {name: torch.zeros(len(classes)) for name in runners}
    lo, hi = float('inf'), float('-inf')
    for vol in volumes:
        x = volume_inputs(vol, settings['img_size'], settings['intensity'], tuple(settings['window']),
                          settings['context'])
        ref = _logits(runners[reference], x, batch_size)
        lo, hi = min(lo, float(ref.min())), max(hi, float(ref.max()))
        for name, run in runners.items():
            out = ref if name == reference else _logits(run, x, batch_size)
            if out.shape != ref.shape:
                raise ValueError(f'{name}: logits {tuple(out.shape)}, reference {tuple(ref.shape)}')
            dlogit[name] = torch.maximum(dlogit[name], (out - ref).abs().amax(dim=(0, 2, 3)))
            # predict_volume's rule: arg-max (of the softmax, the same class), nearest resize to the native slice
            pred = resize_labels(out.argmax(1), vol.image.shape[1:3]).numpy().astype(np.int16)
            maps[name].append(pred)
            cases[name].append(evaluate_case(pred, vol.label, classes, vol.case_id, vol.spacing, ('strict',),
                                             vol.spacing_known)['strict'])
    ref_map = np.concatenate([m.ravel() for m in maps[reference]])
    result = {}
    for name in runners:
        s = summarize(cases[name])
        per_class = {c['class']: c['dice_mean'] for c in s['per_class']}
        this = np.concatenate([m.ravel() for m in maps[name]])
        agree = {c: dice(this == i, ref_map == i) for i, c in enumerate(classes) if i}
        agree['mean'] = float(np.mean([agree[c] for c in fg]))
        result[name] = {
            'dice': {**per_class, 'mean': s['mean_dice']},
            'dice_n_cases': {c['class']: c['n'] for c in s['per_class']},
            'dice_per_case': {c: [None if m.dice[i] != m.dice[i] else m.dice[i] for m in cases[name]]
                              for i, c in enumerate(fg)},
            'agreement': agree,
            'voxels_changed': float(np.mean(this != ref_map)),
            'max_abs_dlogit': {**{c: float(dlogit[name][i]) for i, c in enumerate(classes)},
                               'all': float(dlogit[name].max())},
        }
    for c in fg:  # the mean over the cases every runtime scores: a class missed by one runtime and absent from
        # both maps of another (strict: excluded) otherwise puts different case sets behind one column
        both = [k for k in range(len(volumes)) if all(result[n]['dice_per_case'][c][k] is not None for n in runners)]
        for n in runners:
            vals = [result[n]['dice_per_case'][c][k] for k in both]
            result[n].setdefault('dice_common_cases', {})[c] = float(np.mean(vals)) if vals else None
            result[n].setdefault('n_common_cases', {})[c] = len(both)
    return {'reference': reference, 'classes': fg, 'n_cases': len(volumes),
            'case_ids': [v.case_id for v in volumes], 'reference_logit_range': [lo, hi], 'runtimes': result}


def render_markdown(res: Mapping, header: str) -> str:
    """The README tables of an ``evaluate_runtimes`` result (plus the run / export facts in ``res``)."""
    fg, rts = res['classes'], res['runtimes']
    names = list(rts)
    cols = '| runtime | ' + ' | '.join(fg) + ' | mean |'
    rule = '|---|' + '---|' * (len(fg) + 1)

    def pct(v):
        return 'n/a' if v is None or v != v else f'{100 * v:.2f}'

    lines = [header, '',
             f'### 3D Dice against the ground truth (%), strict mode, mean over {res["n_cases"]} held-out cases', '',
             cols, rule]
    def scored(n, c):  # the case count where a class was not scored in every case (both maps empty)
        k = rts[n]['dice_n_cases'][c]
        return pct(rts[n]['dice'][c]) + ('' if k == res['n_cases'] else f' ({k} cases)')

    lines += [f'| {n} | ' + ' | '.join(scored(n, c) for c in fg) + f' | {pct(rts[n]["dice"]["mean"])} |'
              for n in names]
    common = rts[names[0]]['n_common_cases']
    if any(common[c] != rts[n]['dice_n_cases'][c] for n in names for c in fg):
        lines += ['', 'The same, over the cases that every runtime scores ('
                  + ', '.join(f'{c}: {common[c]}' for c in fg) + '):', '', cols, rule]
        lines += [f'| {n} | ' + ' | '.join(pct(rts[n]['dice_common_cases'][c]) for c in fg)
                  + f' | {pct(np.mean([rts[n]["dice_common_cases"][c] for c in fg]))} |' for n in names]
    lines += ['', f'### Label-map agreement with {res["reference"]} (Dice of the two label maps per class, %, '
                  'pooled over every held-out voxel)', '', cols + ' voxels changed |', rule + '---|']
    lines += [f'| {n} | ' + ' | '.join(pct(rts[n]['agreement'][c]) for c in fg)
              + f' | {pct(rts[n]["agreement"]["mean"])} | {100 * rts[n]["voxels_changed"]:.3f}% |'
              for n in names if n != res['reference']]
    channels = [c for c in rts[names[0]]['max_abs_dlogit'] if c != 'all']
    lo, hi = res['reference_logit_range']
    lines += ['', f'### max |delta logit| against {res["reference"]} per output channel (model resolution, every '
                  'held-out slice)', '', '| runtime | ' + ' | '.join(channels) + ' | all |',
              '|---|' + '---|' * (len(channels) + 1)]
    lines += [f'| {n} | ' + ' | '.join(f'{rts[n]["max_abs_dlogit"][c]:.3g}' for c in channels)
              + f' | {rts[n]["max_abs_dlogit"]["all"]:.3g} |' for n in names if n != res['reference']]
    lines += ['', f'For scale: {res["reference"]} logits on these slices span [{lo:.3g}, {hi:.3g}].']
    moved = [f'{c} in {cid}: {pct(ref_d)} -> {pct(d)} ({n})'
             for n in names if n != res['reference'] for c in fg
             for cid, ref_d, d in zip(res['case_ids'], rts[res['reference']]['dice_per_case'][c],
                                      rts[n]['dice_per_case'][c])
             if (ref_d is None) != (d is None) or (d is not None and abs(d - ref_d) > 0.01)]
    lines += ['', 'Cases whose strict Dice moved by more than 1 point from the reference: '
              + ('; '.join(moved) if moved else 'none') + '.' + (' (n/a: the class is in neither the ground truth '
                 'nor that map, so strict mode leaves the case out.)' if any('n/a' in m for m in moved) else '')]
    if res.get('exports'):
        lines += ['', '### What `mednext-zoo export` printed: parity on its packaged sample images', '',
                  'The command checks each artefact against eager fp32 PyTorch on 8 packaged pydicom / scikit-image '
                  'crops (not phantom-like images):', '', '| artefact | max abs delta logit | label-map Dice |',
                  '|---|---|---|']
        for n, e in res['exports'].items():
            par = e['parity_on_sample_images']
            dice_s = 'n/a' if par.get('dice_vs_fp32') is None else f'{par["dice_vs_fp32"]:.4f}'
            lines.append(f'| {n} | {par["max_abs_dlogit"]:.3g} | {dice_s} |')
    return '\n'.join(lines) + '\n'


def _train(model: str, epochs: int, work: Path) -> Path:
    from finetune_phantoms import seg_finetune_args

    from mednext_zoo.cli import main as cli
    from mednext_zoo.data.synthetic import write_phantom_dataset

    data, run = work / 'small', work / 'run-small'
    write_phantom_dataset(str(data), phantom='small')
    if cli(seg_finetune_args(model, data, run, epochs)):
        raise SystemExit(f'fine-tuning failed; see the output above ({run})')
    return run


def _splits(run: Path) -> Dict[str, str]:
    with open(run / 'splits.csv', newline='') as f:
        return {row['case_id']: row['split'] for row in csv.DictReader(f)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', type=Path, help='a finished `finetune --task seg` run folder: skip training')
    p.add_argument('--data', type=Path, help="held-out volumes' dataset (default: the run's own data)")
    p.add_argument('--model', default='medunext_tiny_hr', help='model to train (default medunext_tiny_hr)')
    p.add_argument('--epochs', type=int, default=8, help='training epochs (default 8, the default recipe)')
    p.add_argument('--calibration-limit', type=int, default=64,
                   help='at most this many calibration slices (a seeded choice; the export default 64)')
    p.add_argument('--batch-size', type=int, default=16, help='slices per forward (default 16, as predict_volume)')
    p.add_argument('--threads', type=int, default=None, help='torch / ORT / OpenVINO threads (default: torch\'s)')
    p.add_argument('--work', type=Path, help='keep the phantom, run, calibration slices and artefacts here '
                                             '(default: a temporary folder, removed at the end)')
    p.add_argument('--out', type=Path, default=RESULTS / 'int8-trained', help='where README.md and the json go')
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from mednext_zoo._atomic import atomic_write_text
    from mednext_zoo.cli import main as cli
    from mednext_zoo.data.volumes import discover, load_volume
    from mednext_zoo.deploy import load_artefact
    from mednext_zoo.finetune.segmentation.task import load_run_model
    from mednext_zoo.machine import machine_info, machine_label, package_version

    with tempfile.TemporaryDirectory(prefix='int8-trained-') as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run = a.run or _train(a.model, a.epochs, work)
        train_wall = None if a.run else time.perf_counter() - t0
        model, rc = load_run_model(str(run))
        splits = _splits(run)
        data = a.data or Path(rc['data'])
        records = discover(str(data), 'auto').records
        train = [r for r in records if splits.get(r.case_id) == 'train']
        test = [r for r in records if r.split == 'test' and r.label and splits.get(r.case_id, 'test') == 'test']
        if not train or not test:
            raise SystemExit(f'{data}: need the run\'s train cases and labelled held-out imagesTs cases '
                             f'(found {len(train)} train, {len(test)} held-out)')
        calib = work / 'calibration'
        n_calib = write_calibration_cases(train, calib)
        runners = {REFERENCE: lambda x: model(x)}
        exports = {}
        for name, fmt, int8 in ARTEFACTS:
            folder = work / 'artefacts' / name.lower().replace(' ', '-')
            args = ['export', str(run / 'export'), str(folder), '--format', fmt]
            if int8:
                args += ['--int8', '--calibration', str(calib), '--calibration-limit', str(a.calibration_limit)]
            print(f'[int8-trained] mednext-zoo {" ".join(args)}', flush=True)
            if cli(args):
                raise SystemExit(f'export failed: mednext-zoo {" ".join(args)}')
            pre = json.loads((folder / 'preprocessing.json').read_text())
            shown = ['RUN/export', 'ARTEFACT'] + [('CALIBRATION' if x == str(calib) else x) for x in args[3:]]
            exports[name] = {'command': 'mednext-zoo export ' + ' '.join(shown),
                             'calibration_images': pre['extra'].get('calibration_images'),
                             'parity_on_sample_images': json.loads((folder / 'parity.json').read_text())}
            runners[name] = load_artefact(folder, threads=a.threads)
        volumes = [load_volume(r, None, rc.get('slice_axis', 2)) for r in test]
        res = evaluate_runtimes(runners, volumes, rc['classes'], rc, batch_size=a.batch_size)
        last = json.loads((run / 'metrics.jsonl').read_text().splitlines()[-1])
        res.update(
            model=rc['model'], data=str(data) if a.run or a.data else 'the small phantom, written by this script',
            run=str(run) if a.run else 'trained by this script',
            training={'epochs': rc['epochs'], 'steps': last.get('step'), 'batch_size': rc['batch_size'],
                      'img_size': rc['img_size'], 'intensity': rc['intensity'], 'window': rc['window'],
                      'wall_s': train_wall},
            calibration={'slices_written': n_calib, 'train_cases': [r.case_id for r in train],
                         'limit': a.calibration_limit, 'read_with': 'the run\'s recorded preprocessing'},
            exports=exports, batch_size=a.batch_size, input_dtype='fp32', threads=torch.get_num_threads(),
            machine=machine_info('cpu'),
            versions={k: package_version(k) for k in ('onnx', 'onnxruntime', 'openvino', 'nncf')},
            load_average=os.getloadavg(), command='python benchmarks/int8_trained.py ' + ' '.join(
                argv if argv is not None else sys.argv[1:]))
    a.out.mkdir(parents=True, exist_ok=True)
    header = (f'## `{res["model"]}` trained on the `small` phantom: int8 vs fp32 on {res["n_cases"]} held-out '
              f'volumes\n\nCommand: `{res["command"]}`. Training: {rc["epochs"]} epochs, '
              f'{res["training"]["steps"]} optimiser steps, batch {rc["batch_size"]}, {rc["img_size"]} x '
              f'{rc["img_size"]}. Calibration: {exports["ORT int8"]["calibration_images"]} of the {n_calib} '
              f'training slices (the train volumes as stored, read through the run\'s recorded preprocessing). '
              f'Artefacts: `{exports["OpenVINO int8"]["command"]}` '
              f'(and `--format onnx`, and both without `--int8 ...` for fp32). Inference: batch {a.batch_size}, '
              'fp32 inputs (int8 inside the quantised graphs), '
              f'{res["threads"]} thread(s) on {machine_label(res["machine"])}; torch {torch.__version__}, '
              + ', '.join(f'{k} {v}' for k, v in res['versions'].items()) + '. The machine was shared with '
              f'other jobs (load average {res["load_average"][0]:.1f} at the end): no timings here.')
    md = render_markdown(res, header)
    atomic_write_text(a.out / 'int8_trained.json', json.dumps(res, indent=2) + '\n')
    atomic_write_text(a.out / 'README.md', md)
    print(md)
    print(f'wrote {a.out / "README.md"} and {a.out / "int8_trained.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
