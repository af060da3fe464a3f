"""``mednext-zoo finetune | evaluate | predict``: fine-tune a classifier or a segmentation model, score it, use it.

    mednext-zoo finetune --model mednext_base --data images/ --out runs/exp1 --epochs 50
    torchrun --nproc_per_node=2 -m mednext_zoo.cli finetune --model mednext_base --data images/ --out runs/exp1
    mednext-zoo evaluate --run runs/exp1 --data external_test/
    mednext-zoo predict --run runs/exp1 scan1.dcm folder/ --cam
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
from typing import List

from ..data.io import CT_WINDOWS
from . import _segmentation as _seg


def _scale(text: str):
    try:
        lo, hi = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "LOW,HIGH" such as "0.25,1", got {text!r}') from None
    if not 0 < lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f'crop scale must satisfy 0 < LOW <= HIGH <= 1, got {text!r}')
    return lo, hi


def _finetune(args: argparse.Namespace) -> int:
    if args.task == 'seg':
        return _seg.finetune(args)
    _seg.unmark(args)
    from ..finetune import ClassificationConfig, fit
    cfg = ClassificationConfig(
        model=args.model, data=args.data, out=args.out, epochs=args.epochs, img_size=args.img_size,
        batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, layer_decay=args.layer_decay, pretrained=args.pretrained,
        in_chans=args.in_chans, window=args.window, val_frac=args.val_frac, test_frac=args.test_frac,
        folds=args.folds, accum_steps=args.accum_steps, amp=args.amp, device=args.device, seed=args.seed,
        clip_grad=args.clip_grad, label_smoothing=args.label_smoothing, imbalance=args.imbalance,
        ema_decay=args.ema, linear_probe=args.linear_probe, freeze_epochs=args.freeze_epochs,
        drop_path=args.drop_path, monitor=args.monitor, patience=args.patience,
        temperature_scaling=args.temperature_scaling, positive_class=args.positive_class, crop_scale=args.crop_scale,
        hflip=args.hflip, num_workers=args.workers, on_bad_file=args.on_bad_file, labels=args.labels,
        n_bootstrap=args.bootstrap, strict_columns=args.strict_columns,
        ckpt_every_steps=args.ckpt_every, progress=not args.no_progress, resume=args.resume,
        overwrite=args.overwrite, export=not args.no_export)
    fit(cfg)
    return 0


def _interrupted(args: argparse.Namespace, argv: List[str]) -> str:
    """After Ctrl-C: the run's last checkpoint and the exact command that continues from it."""
    latest = None
    for d in [args.out] + sorted(glob.glob(os.path.join(args.out, 'fold-*'))):  # --folds: the newest fold
        path = os.path.join(d, 'checkpoints', 'latest.json')
        try:
            with open(path) as f:
                info = json.load(f)
            if latest is None or os.path.getmtime(path) >= latest[0]:
                latest = (os.path.getmtime(path), d, info)
        except (OSError, ValueError):
            continue
    if latest is None:
        return 'No checkpoint was written yet: run the same command again to start over.'
    _, run_dir, info = latest
    cmd = [a for a in argv if a != '--overwrite'] + ([] if '--resume' in argv else ['--resume'])
    where = (f'{info.get("epochs_completed", "?")} epoch(s) completed'
             + (f', {info["batches_into_next_epoch"]} batch(es) into the next' if info.get('batches_into_next_epoch')
                else ''))
    return (f'The last checkpoint is {os.path.join(run_dir, "checkpoints", info.get("weights", ""))} (step '
            f'{info.get("step", "?")}, {where}). Continue from it with:\n  {shlex.join(["mednext-zoo", *cmd])}')


def _evaluate(args: argparse.Namespace) -> int:
    if _seg.is_seg_run(args.run):
        return _seg.evaluate(args)
    from ..finetune import evaluate
    res = evaluate(args.run, args.data, split=args.split, out=args.out, batch_size=args.batch_size,
                   device=args.device, n_bootstrap=args.bootstrap, on_bad_file=args.on_bad_file,
                   progress=not args.no_progress, include_training_data=args.include_training_data,
                   strict_columns=args.strict_columns)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != 'roc'}, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    if _seg.is_seg_run(args.run):
        return _seg.predict(args)
    from ..finetune import predict
    rows = predict(args.run, args.inputs, out=args.out, cam=args.cam, cam_layer=args.cam_layer,
                   batch_size=args.batch_size, device=args.device, on_bad_file=args.on_bad_file,
                   overwrite=args.overwrite)
    for r in rows:
        where = r['path'] + (f'#{r["slice"]}' if r['slice'] != '' else '') + (f'#{r["item"]}' if r.get('item') else '')
        print(f'{where}\t{r["prediction"]}\t{r["confidence"]:.3f}' + (f'\t{r["cam"]}' if 'cam' in r else ''))
    return 0


def register(subparsers) -> None:
    windows = ', '.join(f'{k} ({lv:g}/{w:g})' for k, (lv, w) in CT_WINDOWS.items())
    p = subparsers.add_parser(
        'finetune', help='fine-tune a classifier (image folder / CSV) or, with --task seg, a segmentation model',
        description='Fine-tune any timm classifier (MedNeXt first) on a labelled image collection, or with '
                    '--task seg a MedUNeXt on labelled volumes / 2D masks (see docs/segmentation.md). Writes a '
                    'resumable run folder with metrics, plots and an export/ loadable by timm.')
    g = p.add_argument_group('model and data')
    g.add_argument('--model', required=True, help='timm model name, e.g. mednext_tiny, convnext_tiny, resnet18')
    g.add_argument('--data', required=True, help='ImageFolder root (class sub-folders, optionally under '
                   'train/ val/ test/), a CSV manifest (path,label[,patient_id][,split][,slice]), or a MedMNIST .npz '
                   '(a path, or a name such as pneumoniamnist_64 in $MEDMNIST_ROOT or ~/.medmnist; official splits)')
    g.add_argument('--out', required=True, help='run folder (RUN_DIR)')
    g.add_argument('--pretrained', default=None, help='weights: a pretrained TAG of the model, a weights file '
                   '(.safetensors / .pth), or an export/ folder')
    g.add_argument('--in-chans', type=int, default=3, choices=(1, 3),
                   help='1: grayscale model; 3: RGB (grayscale images replicated to 3 channels)')
    g.add_argument('--img-size', type=int, default=224, help='input size in pixels: images (slices) are resized to '
                   'IMG_SIZE x IMG_SIZE; --task seg: 2D images larger than it are instead patched at native '
                   'resolution (see --patch-size, --resize)')
    g.add_argument('--window', default=None, help=f'DICOM / NIfTI intensity window: a CT preset ({windows}) or '
                   '"LEVEL,WIDTH" in HU, or "file" (the DICOM\'s own window); default min-max scaling per image')
    g.add_argument('--val-frac', type=float, default=0.2, help='validation fraction when the data gives no val split')
    g.add_argument('--test-frac', type=float, default=0.0, help='test fraction held out if the data has no test split')
    g.add_argument('--folds', type=int, default=0, help='k-fold cross-validation with K folds (0: single run)')
    g.add_argument('--on-bad-file', choices=('error', 'skip'), default='error',
                   help='unreadable image or volume (damaged, truncated, missing): stop with an error, or skip it '
                        'and report the count')
    g.add_argument('--strict-columns', action='store_true',
                   help='a CSV column mednext-zoo does not use is an error (default: a warning; a near miss of a '
                        'known column, such as "patient id" or "spilt", is always an error)')
    g.add_argument('--workers', type=int, default=0, help='data loader worker processes')
    o = p.add_argument_group('optimisation (defaults: the paper recipe, AdamW + cosine)')
    o.add_argument('--epochs', type=int, default=30, help='training epochs')
    o.add_argument('--batch-size', type=int, default=32, help='per process')
    o.add_argument('--lr', type=float, default=None,
                   help='peak learning rate (after warm-up); default 5e-4 with --pretrained, 1e-3 from random weights')
    o.add_argument('--min-lr', type=float, default=1e-6, help='learning rate at the end of the cosine decay')
    o.add_argument('--weight-decay', type=float, default=0.05, help='AdamW weight decay (none on biases / norms)')
    o.add_argument('--warmup-epochs', type=float, default=2.0, help='linear warm-up length in epochs')
    o.add_argument('--layer-decay', type=float, default=None, help='layer-wise lr decay, e.g. 0.75')
    o.add_argument('--accum-steps', type=int, default=1, help='gradient accumulation steps')
    o.add_argument('--amp', choices=('auto', 'none', 'bf16', 'fp16'), default='auto',
                   help='mixed precision; auto: bf16/fp16 on CUDA, off on CPU')
    o.add_argument('--clip-grad', type=float, default=None,
                   help='clip the gradient norm to this value; default 1.0 from random weights, off with '
                        '--pretrained; 0 turns it off')
    o.add_argument('--label-smoothing', type=float, default=0.0, help='label smoothing of the cross-entropy')
    o.add_argument('--imbalance', choices=('none', 'weights', 'sampler'), default='none',
                   help='class-weighted loss or class-balanced sampling')
    o.add_argument('--ema', type=float, default=0.0, help='EMA decay of the weights (e.g. 0.999; 0: off)')
    o.add_argument('--linear-probe', action='store_true', help='train the classifier only')
    o.add_argument('--freeze-epochs', type=int, default=0, help='freeze the backbone for the first N epochs')
    o.add_argument('--drop-path', type=float, default=0.0, help='stochastic depth rate (timm drop_path_rate)')
    o.add_argument('--crop-scale', type=_scale, default=(0.25, 1.0), help='RandomResizedCrop scale range')
    o.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    o.add_argument('--seed', type=int, default=0, help='seed of the split, initialisation and augmentation')
    o.add_argument('--device', default='auto', help='auto (CUDA if available, else CPU), cpu, cuda or cuda:N')
    r = p.add_argument_group('evaluation and run')
    r.add_argument('--monitor', default='auto',
                   choices=('auto', 'loss', 'accuracy', 'precision', 'recall', 'f1', 'auc'),
                   help='validation metric for the best checkpoint and early stopping (auto: loss)')
    r.add_argument('--patience', type=int, default=0, help='early stopping patience in epochs (0: off)')
    r.add_argument('--positive-class', default=None, help='binary tasks: the positive class (default: the second)')
    r.add_argument('--temperature-scaling', action='store_true', help='fit a temperature on the validation set')
    r.add_argument('--bootstrap', type=int, default=1000, help='bootstrap resamples for the 95%% CIs')
    r.add_argument('--ckpt-every', type=int, default=0, help='also checkpoint every N optimiser steps')
    r.add_argument('--resume', action='store_true', help='continue the run in --out from its last checkpoint')
    r.add_argument('--overwrite', action='store_true', help='replace an existing run in --out')
    r.add_argument('--no-export', action='store_true', help='skip writing RUN_DIR/export')
    r.add_argument('--no-progress', action='store_true', help='no progress bars')
    _seg.add_finetune_args(p)
    p.set_defaults(func=_finetune, on_interrupt=_interrupted)

    e = subparsers.add_parser('evaluate', help='score a fine-tuned run on held-out labelled images or volumes',
                              description='Metrics with bootstrap 95% CIs, ECE, ROC and confusion matrix of a run '
                                          'on an image folder or CSV manifest (segmentation runs: 3D per-volume '
                                          'Dice / HD95 on labelled volumes). Images or cases the run trained or '
                                          'validated on (recognised by file content, see its splits.csv) are left '
                                          'out, and a run is never scored on its training data alone; '
                                          '--include-training-data scores them too and lists them in the report.')
    e.add_argument('--run', required=True, help='run folder written by `mednext-zoo finetune`')
    e.add_argument('--data', required=True, help='ImageFolder root, CSV manifest or MedMNIST .npz (its test split '
                   'unless --split says otherwise; segmentation: a dataset folder or CSV of volumes) that the run did '
                   'not train on')
    e.add_argument('--include-training-data', action='store_true',
                   help='also score images / cases from the run\'s train and val splits (optimistic figures; the '
                        'overlap is listed in metrics.json and training_overlap.csv)')
    e.add_argument('--split', default=None, choices=('train', 'val', 'test'), help='only this split of --data')
    e.add_argument('--out', default=None, help='output folder (default RUN_DIR/eval-<data>)')
    e.add_argument('--batch-size', type=int, default=32, help='images per forward pass')
    e.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    e.add_argument('--bootstrap', type=int, default=1000, help='bootstrap resamples for the 95%% CIs')
    e.add_argument('--on-bad-file', choices=('error', 'skip'), default='error',
                   help='unreadable image: stop with an error, or skip it and report the count')
    e.add_argument('--strict-columns', action='store_true',
                   help='a CSV column mednext-zoo does not use is an error (default: a warning)')
    e.add_argument('--json', action='store_true', help='also print the report as JSON')
    e.add_argument('--no-progress', action='store_true', help='no progress bars')
    _seg.add_evaluate_args(e)
    e.set_defaults(func=_evaluate)

    q = subparsers.add_parser('predict', help='classify images with a fine-tuned run (optionally Grad-CAM)',
                              description='Class probabilities for image files / folders; --cam saves Grad-CAM '
                                          'overlays.')
    q.add_argument('--run', required=True, help='run folder written by `mednext-zoo finetune`')
    q.add_argument('inputs', nargs='+', help='image files or folders; a MedMNIST FILE.npz (its test split), '
                   'FILE.npz#SPLIT or FILE.npz#SPLIT/INDEX')
    q.add_argument('--out', default=None, help='output folder (default RUN_DIR/predictions)')
    q.add_argument('--overwrite', action='store_true',
                   help='replace the predictions of an earlier call in --out (without it, such a folder is refused)')
    q.add_argument('--cam', action='store_true', help='save Grad-CAM overlays (default layer per model family)')
    q.add_argument('--cam-layer', default=None, help='module name for Grad-CAM, e.g. stages.3 or layer4')
    q.add_argument('--batch-size', type=int, default=16, help='images per forward pass')
    q.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    q.add_argument('--on-bad-file', choices=('error', 'skip'), default='error',
                   help='unreadable image: stop with an error, or skip it and report the count')
    _seg.add_predict_args(q)
    q.set_defaults(func=_predict)
