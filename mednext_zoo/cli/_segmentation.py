"""Segmentation options and handlers for ``mednext-zoo finetune --task seg | evaluate | predict``.

:mod:`mednext_zoo.cli.finetune` owns the three subcommands; it calls ``add_*_args`` on its parsers and hands
a segmentation run to the handlers here (a run folder's ``config.json`` says ``"task": "segmentation"``).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict

from ..finetune.recipe import CLASS_WEIGHTINGS, DICE_MODES, SCHEDULES, TrainingRecipe

# the paper's segmentation recipe (Adam, batch 12, 100 epochs; lr and weight decay from recipe.TrainingRecipe); used
# for the options shared with classification where the user gave no value
SEG_DEFAULTS: Dict[str, Any] = {'epochs': 100, 'batch_size': 12, 'lr': TrainingRecipe.lr,
                                'weight_decay': TrainingRecipe.weight_decay, 'warmup_epochs': 0.0}


class _DefaultInt(int):
    """An option value that came from the parser's default (``--task seg`` then uses its own default)."""


class _DefaultFloat(float):
    """An option value that came from the parser's default (``--task seg`` then uses its own default)."""


def _mark_default(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return _DefaultInt(value) if isinstance(value, int) else _DefaultFloat(value)


def is_default(value) -> bool:
    return isinstance(value, (_DefaultInt, _DefaultFloat))


def unmark(args: argparse.Namespace) -> argparse.Namespace:
    """Plain ints / floats again for the classification path."""
    for name in SEG_DEFAULTS:
        v = getattr(args, name, None)
        if is_default(v):
            setattr(args, name, int(v) if isinstance(v, int) else float(v))
    return args


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    """``--task`` and the segmentation options of ``finetune``."""
    for action in p._actions:  # defaults of shared options are marked so --task seg can use the seg recipe
        if action.dest in SEG_DEFAULTS:
            action.default = _mark_default(action.default)
            action.help = (action.help or '') + f' (--task seg: {SEG_DEFAULTS[action.dest]:g})'
    p.add_argument('--task', choices=('cls', 'seg'), default='cls',
                   help='cls: image classification; seg: segmentation of volumes / 2D images (MedUNeXt)')
    s = p.add_argument_group('segmentation (--task seg; see docs/segmentation.md)')
    s.add_argument('--protocol', choices=('synapse', 'acdc'), default=None,
                   help="a published protocol: its label map, case lists, intensity recipe and test split")
    s.add_argument('--labels', default=None,
                   help="--task seg: label map synapse | btcv | acdc, or comma-separated class names (background "
                        "first); default: dataset.json or class_1..K. Classification of a MedMNIST .npz: the class "
                        "names in index order (\"multi-label:a,b,...\" for a multi-label file); default: the "
                        "built-in table of the MedMNIST subsets")
    s.add_argument('--remap-labels', default=None, choices=('btcv-to-synapse',),
                   help='map label values first: btcv-to-synapse turns raw BTCV labels into the synapse map')
    s.add_argument('--layout', default='auto', choices=('auto', 'nnunet', 'synapse', 'acdc', 'folders', 'csv'),
                   help='dataset layout of --data (auto: detected from the files)')
    s.add_argument('--intensity', default='auto', choices=('auto', 'ct', 'zscore', 'minmax', 'none'),
                   help='auto: CT window for CT, z-score for MRI, none for TransUNet files and 2D images')
    s.add_argument('--ct-window', default='-125,275', help='HU window for --intensity ct, "LOW,HIGH"')
    s.add_argument('--context', type=int, default=1, help='2.5D: odd number of adjacent slices as channels')
    s.add_argument('--patch-size', type=int, default=None,
                   help='train on random PATCH x PATCH patches at native resolution (a multiple of 32; the model '
                        'size) and predict by a sliding window over the whole image. Default rule: 2D images with a '
                        'side larger than --img-size are patched at --img-size; volumes and smaller images are '
                        'resized to --img-size')
    s.add_argument('--resize', action='store_true',
                   help='resize every image / slice to --img-size instead (the old behaviour; thin structures '
                        'of large images can vanish)')
    s.add_argument('--sw-overlap', type=float, default=0.5,
                   help='overlap of the sliding window in patch mode (Gaussian-weighted blending)')
    s.add_argument('--slice-axis', type=int, default=2, choices=(0, 1, 2), help='NIfTI array axis to slice')
    r = TrainingRecipe()
    s.add_argument('--opt', default=r.opt, help='optimiser for --task seg (timm name: adam, adamw, sgd, ...)')
    s.add_argument('--schedule', default=r.schedule, choices=SCHEDULES,
                   help='learning-rate schedule after the warm-up: cosine (to --min-lr), poly (power 0.9), constant')
    s.add_argument('--ce-weight', type=float, default=r.ce_weight, help='weight of the cross-entropy in the loss')
    s.add_argument('--dice-weight', type=float, default=r.dice_weight, help='weight of the soft Dice in the loss')
    s.add_argument('--dice-mode', default=r.dice_mode, choices=DICE_MODES,
                   help='batch: Dice sums over the whole batch (TransUNet); image: per-image Dice, averaged (nnU-Net)')
    s.add_argument('--dice-background', action=argparse.BooleanOptionalAction, default=r.dice_background,
                   help='include the background class in the Dice average')
    s.add_argument('--class-weighting', default=r.class_weighting, choices=CLASS_WEIGHTINGS,
                   help='cross-entropy class weights from the training labels: none, inverse (1 / frequency) or '
                        'sqrt_inverse')
    s.add_argument('--oversample-fg', type=float, default=r.oversample_fg,
                   help='probability that a training slice is drawn to hold a foreground class (chosen uniformly, '
                        'so rare ones come as often as common ones; nnU-Net uses 0.33; 0: uniform)')
    s.add_argument('--deep-supervision', action=argparse.BooleanOptionalAction, default=r.deep_supervision,
                   help='when the model returns multi-scale logits in training, score them all (weights 1, 1/2, '
                        '1/4, ...)')
    s.add_argument('--fold', type=int, default=0, help='with --folds K: the patient-grouped fold used for validation')
    s.add_argument('--no-augment', action='store_true', help='no rot90 / flip / rotation augmentation')
    s.add_argument('--eval-split', default='auto', choices=('auto', 'val', 'test', 'none'),
                   help='split scored per volume in 3D after training (auto: test if any, else val)')
    s.add_argument('--tta', action='store_true', help='flip test-time augmentation in the final evaluation')
    s.add_argument('--overlays', type=int, default=2, help='cases with PNG overlays in the evaluation')


def _window(text: str):
    try:
        lo, hi = (float(v) for v in text.split(','))
    except ValueError:
        from ..errors import UserInputError
        raise UserInputError(f'--ct-window expects "LOW,HIGH" in HU such as "-125,275", got {text!r}.') from None
    return lo, hi


def finetune(args: argparse.Namespace) -> int:
    from ..finetune.segmentation import SegConfig, fit
    def pick(name: str) -> Any:  # the seg recipe's value where the user gave none (None: the start decides, cls)
        value = getattr(args, name)
        return SEG_DEFAULTS[name] if value is None or is_default(value) else value
    labels = args.labels
    if labels and ',' in labels:
        labels = [s.strip() for s in labels.split(',')]
    cfg = SegConfig(
        data=args.data, out=args.out, model=args.model, protocol=args.protocol, labels=labels,
        remap_labels=args.remap_labels, layout=args.layout,
        slice_axis=args.slice_axis, img_size=args.img_size, context=args.context, intensity=args.intensity,
        patch_size=args.patch_size, resize=args.resize, sw_overlap=args.sw_overlap,
        window=_window(args.ct_window), epochs=int(pick('epochs')), batch_size=int(pick('batch_size')),
        opt=args.opt, lr=float(pick('lr')), min_lr=args.min_lr, weight_decay=float(pick('weight_decay')),
        warmup_epochs=float(pick('warmup_epochs')), schedule=args.schedule, ce_weight=args.ce_weight,
        dice_weight=args.dice_weight, dice_mode=args.dice_mode, dice_background=args.dice_background,
        class_weighting=args.class_weighting, oversample_fg=args.oversample_fg,
        deep_supervision=args.deep_supervision, augment=not args.no_augment, val_frac=args.val_frac,
        test_frac=args.test_frac, folds=args.folds, fold=args.fold, eval_split=args.eval_split, tta=args.tta,
        overlays=args.overlays, pretrained=args.pretrained, drop_path=args.drop_path, accum_steps=args.accum_steps,
        amp=args.amp, device=args.device, seed=args.seed, clip_grad=args.clip_grad, ema_decay=args.ema,
        patience=args.patience, ckpt_every_steps=args.ckpt_every, num_workers=args.workers,
        progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite, export=not args.no_export,
        on_bad_file=args.on_bad_file, strict_columns=args.strict_columns)
    fit(cfg)
    return 0


def is_seg_run(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, 'config.json')) as f:
            return json.load(f).get('task') == 'segmentation'
    except (OSError, ValueError):
        return False


def add_evaluate_args(e: argparse.ArgumentParser) -> None:
    g = e.add_argument_group('segmentation runs')
    g.add_argument('--protocol', choices=('synapse', 'acdc'), default=None,
                   help="score the protocol's test cases of --data (default: the run's protocol)")
    g.add_argument('--tta', action='store_true', help='flip test-time augmentation')
    g.add_argument('--overlays', type=int, default=2, help='cases with PNG overlays')


def evaluate(args: argparse.Namespace) -> int:
    from ..finetune.segmentation import evaluate as seg_evaluate
    res = seg_evaluate(args.run, args.data, split=args.split, out=args.out, tta=args.tta, overlays=args.overlays,
                       device=args.device, protocol=args.protocol, progress=not args.no_progress,
                       include_training_data=args.include_training_data, strict_columns=args.strict_columns)
    if args.json:
        print(json.dumps(res['summaries'], indent=2, default=str))
    return 0


def add_predict_args(q: argparse.ArgumentParser) -> None:
    g = q.add_argument_group('segmentation runs')
    g.add_argument('--tta', action='store_true', help='flip test-time augmentation')
    g.add_argument('--overlays', type=int, default=3, help='PNG overlays per volume (slices with most foreground)')


def predict(args: argparse.Namespace) -> int:
    from ..finetune.segmentation import predict as seg_predict
    for r in seg_predict(args.run, args.inputs, out=args.out, tta=args.tta, overlays=args.overlays,
                         device=args.device, overwrite=args.overwrite):
        print(f'{r["input"]}\t{r["prediction"]}')
    return 0
