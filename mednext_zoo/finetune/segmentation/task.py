"""Segmentation fine-tuning on the task-agnostic engine: ``fit`` / ``evaluate`` / ``predict``.

``fit(SegConfig(data='Task01/', out='runs/seg', model='medunext_base'))`` trains slice-wise on the volumes of
a dataset (any layout of :mod:`.data`) and leaves a run folder::

    RUN_DIR/config.json          resolved settings (label map, intensity, img size, splits)
    RUN_DIR/splits.csv           the split of every case (patient-grouped)
    RUN_DIR/metrics.jsonl        one line per epoch (train loss; val loss and pooled slice Dice)
    RUN_DIR/checkpoints/         resumable state (engine); best.safetensors
    RUN_DIR/eval-<split>/        per-volume 3D metrics in both modes: cases.csv, metrics.json, report.md,
                                 dice_box_<mode>.png, overlays/
    RUN_DIR/export/              save_pretrained folder (+ segmentation.json: how to preprocess)

``--protocol synapse|acdc`` fixes the label map, the case lists, the intensity recipe and the evaluation
split of the published protocol (see ``docs/segmentation.md``).
"""
from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..._atomic import atomic_write_bytes
from ...data.volumes import SegDataset, Volume, VolumeRecord, discover, iter_volumes, load_volume
from ...errors import UserInputError
from ...metrics.segmentation import MODES, class_dice, evaluate_case, mean_scored, summarize
from .._run import (
    build_engine,
    check_counts,
    check_model_name,
    check_run,
    create_model,
    eval_name,
    load_best,
    read_result,
    reload_best,
    run_guarded,
    scope_text,
    start_run,
)
from ..distributed import DistInfo, seed_everything
from ..engine import Task, describe_weights
from ..heldout import content_id, find_overlap, select_held_out, write_overlap_csv
from ..outputs import claim_output_dir, remove_stale, unique_inputs
from ..recipe import (
    TrainingRecipe,
    build_loss,
    build_optimizer,
    build_sampler,
    class_frequencies,
    recipe_from_config,
)
from ..run_dir import RunDirGuard, atomic_write_json, read_run_config
from .data import PatchDataset, SliceDataset, TileDataset, choose_spatial_mode, prepare_volume
from .inference import predict_volume, save_overlays, save_prediction
from .losses import DiceCELoss
from .preprocess import INTENSITY_MODES, SYNAPSE_WINDOW
from .protocols import (
    BTCV_TO_SYNAPSE,
    LabelMap,
    Protocol,
    check_label_names,
    check_label_values,
    get_label_map,
    get_protocol,
    grouped_kfold,
    protocol_split,
    remap_labels,
)
from .report import dice_boxplot, markdown_table, write_case_csv

__all__ = ['SegConfig', 'SliceDataset', 'SegmentationTask', 'fit', 'evaluate', 'predict', 'load_run_model',
           'evaluate_volumes', 'resolve_label_map', 'assign_case_splits', 'create_segmenter', 'load_case',
           'resolve_intensity', 'export_run', 'run_settings']

RUN_KIND = 'segmentation'
PRED_EXTS = ('.nii.gz', '.png', '.nrrd', '.mha')  # what save_prediction writes as <case>_pred<ext>


@dataclass
class SegConfig:
    """A segmentation fine-tuning run. Defaults follow the Synapse / ACDC recipe (docs/segmentation.md).

    The paper trains with Adam, batch 12, 100 epochs at 224x224; its learning rate did not survive in the text,
    so ``lr`` 3e-3 with a cosine decay is our default (measured: docs/medunext.md, "Trainability").
    """
    data: str
    out: str
    model: str = 'medunext_base'
    protocol: Optional[str] = None  # 'synapse' | 'acdc'
    labels: Optional[Any] = None  # a label-map name or the class names (background first)
    remap_labels: Optional[str] = None  # e.g. 'btcv-to-synapse': raw BTCV label values -> the Synapse map
    layout: str = 'auto'
    slice_axis: int = 2  # NIfTI array axis sliced (2: axial for most scans)
    img_size: int = 224  # the model size: slices are resized to it, or (patch mode) patches are this size
    patch_size: Optional[int] = None  # train on patches at native resolution, predict by sliding window
    resize: bool = False  # always resize whole slices to img_size (the rule's other default: see data.py)
    sw_overlap: float = 0.5  # sliding-window overlap in patch mode
    context: int = 1  # 2.5D: odd number of adjacent slices as channels
    intensity: str = 'auto'  # auto | ct | zscore | minmax | none
    window: Tuple[float, float] = SYNAPSE_WINDOW
    epochs: int = 100
    batch_size: int = 12
    # the training recipe (recipe.TrainingRecipe holds the defaults and documents each field)
    opt: str = TrainingRecipe.opt
    lr: float = TrainingRecipe.lr
    min_lr: float = TrainingRecipe.min_lr
    weight_decay: float = TrainingRecipe.weight_decay
    warmup_epochs: float = 0.0
    schedule: str = TrainingRecipe.schedule
    ce_weight: float = TrainingRecipe.ce_weight
    dice_weight: float = TrainingRecipe.dice_weight
    dice_mode: str = TrainingRecipe.dice_mode
    dice_background: bool = TrainingRecipe.dice_background
    class_weighting: str = TrainingRecipe.class_weighting
    oversample_fg: float = TrainingRecipe.oversample_fg
    deep_supervision: bool = TrainingRecipe.deep_supervision
    augment: bool = TrainingRecipe.augment
    val_frac: float = 0.2
    test_frac: float = 0.0
    val_max_slices: int = 256  # slices scored after each epoch (evenly spaced; all volumes are scored in 3D later)
    folds: int = 0  # >1: patient-grouped k-fold; validate on fold ``fold``
    fold: int = 0
    eval_split: str = 'auto'  # split scored in 3D at the end: auto (test if any, else val) | val | test | none
    tta: bool = False
    overlays: int = 2  # cases of the evaluation split with PNG overlays
    pretrained: Optional[str] = None
    drop_path: float = 0.0
    accum_steps: int = 1
    amp: str = 'auto'
    device: str = 'auto'
    seed: int = 0
    clip_grad: Optional[float] = TrainingRecipe.clip_grad
    ema_decay: float = 0.0
    patience: int = 0
    ckpt_every_steps: int = 0
    num_workers: int = 0
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    export: bool = True
    on_bad_file: str = 'error'  # 'skip': leave out cases whose files are unreadable, and count them
    strict_columns: bool = False  # a CSV's unknown columns are an error (else a warning)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as a plain dict (what ``config.json`` records)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- dataset resolution
LABEL_REMAPS: Dict[str, Dict[int, int]] = {'btcv-to-synapse': BTCV_TO_SYNAPSE}


def _check_remap(name: Optional[str]) -> Optional[Dict[int, int]]:
    if not name:
        return None
    if name not in LABEL_REMAPS:
        raise UserInputError(f'Unknown label remapping {name!r}; choose one of {", ".join(LABEL_REMAPS)}.')
    return LABEL_REMAPS[name]


def load_case(record: VolumeRecord, label_map: Optional[LabelMap], slice_axis: int = 2, remap: Optional[str] = None
              ) -> Volume:
    """``load_volume`` with an optional label remapping applied before the label-map check."""
    mapping = _check_remap(remap)
    if mapping is None:
        return load_volume(record, label_map, slice_axis)
    vol = load_volume(record, None, slice_axis)
    if vol.label is not None:
        vol.label = remap_labels(vol.label, mapping).astype(np.int16)
        if label_map is not None:
            check_label_values(vol.label, label_map, vol.label_path or vol.image_path)
    return vol


def _scan_max_label(ds: SegDataset, slice_axis: int, remap: Optional[str] = None) -> int:
    top = 0
    for r in ds.records:
        if r.label:
            vol = load_case(r, None, slice_axis, remap)
            top = max(top, int(vol.label.max()))
    return top


def resolve_label_map(ds: SegDataset, protocol: Optional[Protocol], labels: Any, slice_axis: int = 2,
                      remap: Optional[str] = None) -> LabelMap:
    """The protocol's map, else ``labels``, else dataset.json's names, else ``class_1..K`` from the data.

    When the dataset declares class names (dataset.json) they must agree with the chosen map.
    """
    if protocol is not None:
        lm = protocol.label_map
        if labels is not None and get_label_map(labels) != lm:
            raise UserInputError(f'--labels {labels!r} contradicts --protocol {protocol.name} '
                                 f'(which uses the {lm.name!r} map); drop one of them.')
    elif labels is not None:
        lm = get_label_map(labels)
    elif ds.label_names:
        names = ds.label_names
        if isinstance(names, dict):
            items = {}
            for k, v in names.items():
                items.update({int(k): str(v)} if str(k).isdigit() else {int(v): str(k)})
            names = [items.get(i, f'class_{i}') for i in range(max(items) + 1)]
        lm = LabelMap.from_names(names, name=os.path.basename(os.path.normpath(ds.root)))
    else:
        top = _scan_max_label(ds, slice_axis, remap)
        if (ds.layout == 'folders' or all(r.fmt == 'image2d' for r in ds.records)) and top <= 1:
            lm = LabelMap('binary', ('background', 'foreground'))
        else:
            lm = LabelMap.from_names(['background'] + [f'class_{i}' for i in range(1, max(top, 1) + 1)], 'inferred')
    if ds.label_names and ds.meta_source and not remap:  # remapped labels no longer follow dataset.json
        check_label_names(ds.label_names, lm, ds.meta_source)
    return lm


def resolve_intensity(cfg_intensity: str, ds: SegDataset, protocol: Optional[Protocol]) -> str:
    """The intensity mode of a run: ``cfg_intensity`` unless ``'auto'``; then none for TransUNet files and 2D images,
    the protocol's, ct for CT and z-score for everything else."""
    if cfg_intensity != 'auto':
        if cfg_intensity not in INTENSITY_MODES:
            raise UserInputError(f'--intensity must be auto or one of {", ".join(INTENSITY_MODES)}; '
                                 f'got {cfg_intensity!r}.')
        return cfg_intensity
    if ds.layout in ('synapse', 'folders') or (ds.records and all(r.fmt == 'image2d' for r in ds.records)):
        return 'none'  # TransUNet files are already windowed; 2D images are scaled to [0, 1] when read
    if protocol is not None:
        return protocol.intensity
    mod = (ds.modality or '').lower()
    return 'ct' if mod == 'ct' else 'zscore'


def assign_case_splits(ds: SegDataset, protocol: Optional[Protocol], val_frac: float = 0.2, test_frac: float = 0.0,
                       folds: int = 0, fold: int = 0, seed: int = 0) -> Dict[str, List[VolumeRecord]]:
    """Split the cases: the protocol's lists, else the dataset's own splits, else patient-grouped at random
    (or fold ``fold`` of a patient-grouped k-fold). Raises if a patient would end up in two splits."""
    recs = [r for r in ds.records if r.label]
    if not recs:
        raise UserInputError(f'{ds.root}: no labelled cases to train on.')
    by_id = {r.case_id: r for r in recs}
    if len(by_id) != len(recs):
        raise UserInputError(f'{ds.root}: case ids are not unique; give each case its own name.')
    if protocol is not None:
        split = protocol_split(protocol, [r.case_id for r in recs], source=ds.root)
        if ds.layout == 'synapse':  # the TransUNet release keeps its own train / test folders: they must agree
            wrong = [r.case_id for r in recs if r.split and r.case_id not in split.get(r.split, [])]
            if wrong:
                raise UserInputError(f'{ds.root}: cases {wrong[:5]} sit in the wrong folder for the synapse protocol.')
        out = {s: [by_id[c] for c in ids] for s, ids in split.items()}
    elif folds and folds > 1:
        if not 0 <= fold < folds:
            raise UserInputError(f'--fold must be in 0..{folds - 1}, got {fold}.')
        tr, va = grouped_kfold([r.case_id for r in recs], folds, [r.patient for r in recs], seed)[fold]
        out = {'train': [by_id[c] for c in tr], 'val': [by_id[c] for c in va]}
    elif any(r.split for r in recs):
        out = {}
        for r in recs:
            out.setdefault(r.split or 'train', []).append(r)
        if 'val' not in out and val_frac > 0 and out.get('train'):
            part = _random_split(out['train'], val_frac, 0.0, seed)
            out['train'], out['val'] = part['train'], part['val']
    else:
        out = _random_split(recs, val_frac, test_frac, seed)
    out = {k: v for k, v in out.items() if v}
    if not out.get('train'):
        raise UserInputError(f'{ds.root}: no training cases after splitting ({", ".join(out)}).')
    owner: Dict[str, str] = {}
    for s, rs in out.items():
        for r in rs:
            if owner.setdefault(r.patient, s) != s:
                raise UserInputError(f'{ds.root}: patient {r.patient} is in both {owner[r.patient]} and {s}; '
                                     f'give all of a patient\'s volumes the same split.')
    return out


def _random_split(recs: Sequence[VolumeRecord], val_frac: float, test_frac: float, seed: int
                  ) -> Dict[str, List[VolumeRecord]]:
    patients = sorted({r.patient for r in recs})
    rng = random.Random(seed)
    rng.shuffle(patients)
    n = len(patients)
    n_test = int(round(test_frac * n)) if test_frac > 0 else 0
    n_val = max(1, int(round(val_frac * n))) if val_frac > 0 and n - n_test > 1 else 0
    test_p, val_p = set(patients[:n_test]), set(patients[n_test:n_test + n_val])
    out: Dict[str, List[VolumeRecord]] = {'train': [], 'val': [], 'test': []}
    for r in recs:
        out['test' if r.patient in test_p else 'val' if r.patient in val_p else 'train'].append(r)
    return out


# ---------------------------------------------------------------- task
class SegmentationTask(Task):
    """The recipe's loss (default 0.5 CE + 0.5 soft Dice, see :mod:`.recipe`); validation: loss and per-class
    Dice pooled over all validation slices
    (at model resolution -- the 3D per-volume metrics are computed after training)."""

    log_metrics = ('dice',)  # shown in the per-epoch line beside val loss

    def __init__(self, label_map: LabelMap, ce_weight: float = 0.5, dice_weight: float = 0.5,
                 loss_fn: Optional[nn.Module] = None):
        self.label_map = label_map
        self.loss_fn = loss_fn if loss_fn is not None else DiceCELoss(label_map.num_classes, ce_weight, dice_weight)

    def loss(self, model, inputs, targets):
        """The recipe's loss of ``model(inputs)`` (logits ``B, K, H, W``, or a deep-supervision list) against
        ``targets`` ``B, H, W``."""
        return self.loss_fn(model(inputs), targets)

    def evaluate(self, outputs, targets):
        """Split metrics from logits ``N, K, H, W`` and labels ``N, H, W``: ``loss``, 2D Dice per foreground class
        pooled over all slices (``dice_<class>``, NaN when absent from both) and their mean ``dice``."""
        loss = float(self.loss_fn(outputs, targets)) if outputs.numel() else float('nan')
        dices = class_dice(outputs.argmax(1), targets, range(1, self.label_map.num_classes), empty='exclude')
        out: Dict[str, float] = {'loss': loss}
        out.update({f'dice_{c.replace(" ", "_")}': d for c, d in zip(self.label_map.classes[1:], dices)})
        out['dice'] = mean_scored(dices, default=0.0)
        return out


# ---------------------------------------------------------------- model
def create_segmenter(model: str, num_classes: int, in_chans: int, img_size: int, pretrained: Optional[str] = None,
                     drop_path: float = 0.0) -> nn.Module:
    """``timm.create_model`` for a segmentation network (MedUNeXt) with the run's classes and channels."""
    import timm
    check_model_name(model, prefer='*unext*')

    def create(name: str, kw: Dict[str, Any]) -> nn.Module:
        try:
            return timm.create_model(name, **kw)
        except TypeError as e:
            raise UserInputError(f'{model} is not a segmentation model of this package (it does not take img_size '
                                 f'/ returns no per-pixel logits): {e}') from None
    net = create_model(model, pretrained, create, drop_path, num_classes=num_classes, in_chans=in_chans,
                       img_size=img_size)
    with torch.no_grad():
        was = net.training
        net.eval()
        out = net(torch.zeros(1, in_chans, img_size, img_size))
        net.train(was)
    if out.dim() != 4 or tuple(out.shape[-2:]) != (img_size, img_size):
        raise UserInputError(f'{model} returns {tuple(out.shape)} for a {img_size}x{img_size} image, not per-pixel '
                             f'logits; choose a segmentation model such as medunext_base.')
    return net


# ---------------------------------------------------------------- 3D evaluation
def evaluate_volumes(model: nn.Module, records: Sequence[VolumeRecord], label_map: LabelMap, settings: Dict[str, Any],
                     out_dir: Optional[str] = None, tta: bool = False, overlays: int = 0,
                     device: Optional[torch.device] = None, amp_dtype: Optional[torch.dtype] = None,
                     title: str = 'evaluation', progress: bool = False,
                     training_overlap: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Predict each labelled volume slice by slice, score it in 3D in every mode, write the reports.

    ``settings``: ``img_size``, ``intensity``, ``window``, ``context``, ``slice_axis`` (a run's config).
    ``training_overlap``: what :func:`..heldout.select_held_out` reported, written into the reports.
    """
    if not records:
        raise UserInputError('No labelled volumes to evaluate.')
    device = device or next(model.parameters()).device
    cases: Dict[str, List[Any]] = {m: [] for m in MODES}
    it = records
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(records, desc=f'{title} (3D)', leave=False)
    spacing_known = True
    for i, r in enumerate(it):
        vol = load_case(r, label_map, settings.get('slice_axis', 2), settings.get('remap_labels'))
        if vol.label is None:
            raise UserInputError(f'{r.image}: no label file to evaluate against.')
        pred = predict_volume(model, vol, settings['img_size'], settings['intensity'], tuple(settings['window']),
                              settings['context'], tta=tta, device=device, amp_dtype=amp_dtype,
                              patch_size=settings.get('patch_size'), overlap=settings.get('sw_overlap', 0.5))
        res = evaluate_case(pred, vol.label, label_map.classes, r.case_id, vol.spacing, MODES, vol.spacing_known,
                            roi=vol.roi)
        spacing_known &= vol.spacing_known
        for m in MODES:
            cases[m].append(res[m])
        if out_dir and i < overlays:
            save_overlays(vol, pred, os.path.join(out_dir, 'overlays'), num_classes=label_map.num_classes,
                          gt=vol.label)
    summaries = {m: summarize(cases[m]) for m in MODES}
    result = {'title': title, 'n_cases': len(records), 'tta': tta, 'label_map': label_map.name,
              'classes': list(label_map.classes), 'spacing_known': spacing_known, 'summaries': summaries,
              'cases': {m: [dataclasses.asdict(c) for c in cases[m]] for m in MODES}}
    if training_overlap is not None:
        result['training_overlap'] = training_overlap
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        write_case_csv([c for m in MODES for c in cases[m]], os.path.join(out_dir, 'cases.csv'))
        md = '\n'.join(markdown_table(summaries[m], title) for m in MODES)
        if training_overlap is not None:
            training_overlap['file'] = write_overlap_csv(os.path.join(out_dir, 'training_overlap.csv'),
                                                         training_overlap)
            md += '\n' + _overlap_markdown(training_overlap)
        if not spacing_known:
            md += '\n_The files carry no voxel spacing (TransUNet .npz / .npy.h5): strict HD95 is in voxels too._\n'
        atomic_write_bytes(os.path.join(out_dir, 'report.md'), md.encode())
        atomic_write_bytes(os.path.join(out_dir, 'metrics.json'),
                     (json.dumps(result, indent=2, default=_json_default) + '\n').encode())
        for m in MODES:
            dice_boxplot(cases[m], os.path.join(out_dir, f'dice_box_{m}.png'), f'{title}: per-case Dice')
        result['out_dir'] = out_dir
    return result


def _overlap_markdown(rep: Dict[str, Any]) -> str:
    """The training-data overlap paragraph of ``report.md``."""
    if not rep['in_training_data']:
        return (f'Training-data overlap: none of the {rep["items"]} cases is in the run\'s train / val split '
                f'(matched by {rep["matched_by"]}).\n')
    listed = ', '.join(f'{o["item"]} ({o["run_split"]})' for o in rep['overlapping'])
    what = ('**scored anyway (--include-training-data): these figures are optimistic**'
            if rep['scored'].startswith('all') else 'left out; only the held-out cases are scored')
    return (f'Training-data overlap: {rep["in_training_data"]} of {rep["items"]} cases are in the run\'s training '
            f'data (matched by {rep["matched_by"]}), {what}: {listed}.\n')


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


# ---------------------------------------------------------------- fit
def _export(model: nn.Module, export_dir: str, label_map: LabelMap, settings: Dict[str, Any],
            headline: Dict[str, Any], note: str, dataset: Optional[Dict[str, Any]] = None) -> str:
    """``export_dir`` written with ``mednext_zoo.hub.save_pretrained`` (timm's ``save_for_hf`` without it), plus
    ``segmentation.json``: the preprocessing a user needs to apply the model to new volumes."""
    n = int(settings.get('in_chans', 1))
    # the network sees the intensities of segmentation.json directly: no further (x - mean) / std
    model.pretrained_cfg = {**getattr(model, 'pretrained_cfg', {}), 'label_names': list(label_map.classes),
                            'mean': (0.0,) * n, 'std': (1.0,) * n}
    from ...data.preprocessing import segmentation_spec
    try:
        from ...hub import save_pretrained
    except ImportError:
        save_pretrained = None
    if save_pretrained is not None:
        params = inspect.signature(save_pretrained).parameters
        kw = {'metrics': headline, 'metrics_note': note, 'label_names': list(label_map.classes), 'flops': False,
              'dataset': dataset, 'preprocessing': segmentation_spec(settings)}
        save_pretrained(model, export_dir, **{k: v for k, v in kw.items() if k in params and v is not None})
    else:
        from timm.models import save_for_hf
        save_for_hf(model, export_dir, model_config={'label_names': list(label_map.classes)}, safe_serialization=True)
    atomic_write_bytes(os.path.join(export_dir, 'segmentation.json'),
                 (json.dumps({**settings, 'label_map': label_map.name, 'classes': list(label_map.classes)},
                             indent=2) + '\n').encode())
    return export_dir


def _card_inputs(cfg: Dict[str, Any], result: Dict[str, Any], modality: Optional[str], split_sizes: Dict[str, int],
                 protocol: Optional[Protocol]) -> Tuple[Dict[str, Any], str, Dict[str, Any]]:
    """(headline metrics, their note, the dataset facts) of the model card, from the run's settings
    (``config.json``) and report (``metrics.json``)."""
    headline, note = {}, 'no 3D evaluation'
    eval_split = result.get('eval_split')
    if 'summaries' in result:
        s = result['summaries']
        headline = {'dice_legacy': s['legacy']['mean_dice'], 'hd95_legacy_voxels': s['legacy']['mean_hd95'],
                    'dice_strict': s['strict']['mean_dice'],
                    f'hd95_strict_{s["strict"]["hd95_unit"]}': s['strict']['mean_hd95']}
        note = (f'3D per-volume metrics on the {eval_split} split ({result["sizes"][eval_split]} volumes'
                f'{", protocol " + protocol.name if protocol else ""}) with {result["scored_with"]}; legacy and '
                f'strict modes as in docs/segmentation.md')
    from ...metrics.segmentation import MODE_NOTES
    intensity = cfg['intensity']
    mode, overlap = ('patch' if cfg.get('patch_size') else 'resize'), float(cfg.get('sw_overlap', 0.5))
    dataset = {'name': os.path.basename(os.path.normpath(cfg['data'])), 'task': 'segmentation',
               'modality': modality or '', 'label_names': list(result['classes']),
               'split': ', '.join(f'{k} {n} volumes' for k, n in split_sizes.items())
               + (f' ({protocol.reference})' if protocol else ' (patient-grouped)'),
               'protocol': f'slice-wise 2D training, {_describe_spatial(mode, cfg["img_size"], overlap)}, '
                           f'intensity {intensity}, {cfg["epochs"]} epochs, loss {cfg["ce_weight"]} CE + '
                           f'{cfg["dice_weight"]} soft Dice',
               'preprocessing': _describe_intensity(intensity, cfg['window'], cfg['img_size'], cfg['context'],
                                                    cfg.get('patch_size'), overlap),
               'metric_conventions': '; '.join(MODE_NOTES[m] for m in MODES)}
    return headline, note, dataset


def export_run(run_dir: str, out_dir: str) -> str:
    """Write a finished segmentation run's Hub folder again, to ``out_dir``: what ``fit`` writes to
    ``RUN_DIR/export`` (best weights, class names, ``segmentation.json``, the preprocessing description and the
    card's metrics), all read from the run's records, none from defaults."""
    model, rc = load_run_model(run_dir)
    result = read_result(run_dir)
    settings = run_settings(run_dir, rc)
    protocol = get_protocol(rc['protocol']) if rc.get('protocol') else None
    try:  # the modality the card names comes from the dataset's metadata (dataset.json), when it is still there
        modality = discover(rc['data'], rc.get('layout', 'auto')).modality
    except (UserInputError, OSError):
        modality = None
    headline, note, dataset = _card_inputs(rc, result, modality, rc.get('split_sizes') or {}, protocol)
    return _export(model.cpu(), out_dir, LabelMap(rc['label_map'], tuple(rc['classes'])), settings, headline, note,
                   dataset)


def run_settings(run_dir: str, rc: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The preprocessing settings a run trained with: its ``export/segmentation.json`` when there is one (written
    from the very settings of training), else the same keys of its ``config.json``."""
    seg_json = os.path.join(run_dir, 'export', 'segmentation.json')
    if os.path.isfile(seg_json):
        with open(seg_json) as f:
            found = json.load(f)
        return {k: v for k, v in found.items() if k not in ('label_map', 'classes')}
    rc = rc if rc is not None else read_run_config(run_dir, RUN_KIND)
    keys = ('task', 'img_size', 'intensity', 'window', 'context', 'slice_axis', 'in_chans', 'remap_labels',
            'patch_size', 'sw_overlap', 'sw_mode')
    return {k: rc[k] for k in keys if k in rc}


def _describe_spatial(mode: str, size: int, overlap: float) -> str:
    if mode == 'patch':
        return (f'native resolution: random {size}x{size} patches in training, a {size}x{size} sliding window '
                f'(overlap {overlap:g}, Gaussian) in prediction')
    return f'slices resized to {size}x{size}'


def _describe_intensity(intensity: str, window, img_size: int, context: int, patch_size: Optional[int] = None,
                        overlap: float = 0.5) -> str:
    what = {'ct': f'HU clipped to [{window[0]:g}, {window[1]:g}] and scaled to [0, 1] per volume',
            'zscore': 'zero mean, unit variance per volume', 'minmax': 'scaled to [0, 1] per volume',
            'none': 'as stored (TransUNet files are pre-windowed; 2D images read as [0, 1])'}[intensity]
    ctx = f'; {context} adjacent slices as channels (2.5D)' if context > 1 else ''
    where = (_describe_spatial('patch', patch_size, overlap) if patch_size else
             f'slices resized to {img_size}x{img_size} (bilinear)')
    return f'{what}; {where}{ctx}; see segmentation.json'


def _image_files(r: VolumeRecord) -> Sequence[str]:
    """The files holding a case's image (its slice files for TransUNet training cases): its identity.

    The label is left out on purpose: the same scan with another label file is still a scan the run trained on.
    """
    return r.slices or (r.image,)


def _write_splits(path: str, splits: Dict[str, List[VolumeRecord]]) -> None:
    """``splits.csv``: every case's split and the sha256 of its image (``evaluate`` recognises it by content)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(['case_id', 'patient_id', 'split', 'image', 'label', 'sha256'])
    cache: Dict[str, str] = {}
    for s, rs in splits.items():
        for r in rs:
            w.writerow([r.case_id, r.patient, s, r.image, r.label or '', content_id(_image_files(r), cache)])
    atomic_write_bytes(path, buf.getvalue().encode())


def fit(cfg: SegConfig) -> Dict[str, Any]:
    """Train, evaluate in 3D (both metric modes) and export; returns the final report on rank 0, ``{}`` elsewhere.

    The run folder is written only once the data, model and optimiser are set up; a start that fails before its
    first checkpoint removes the folder it created (``run_dir.RunDirGuard``)."""
    return run_guarded(cfg, lambda info, guard: _fit(cfg, info, guard))


def _fit(cfg: SegConfig, info: DistInfo, guard: RunDirGuard) -> Dict[str, Any]:
    t_start = time.time()
    check_counts(cfg)
    recipe = recipe_from_config(cfg)  # loss / sampler settings, checked before any data is read
    d = _SegData(cfg, info)
    K = d.label_map.num_classes
    identity = {'task': RUN_KIND, 'model': cfg.model, 'classes': list(d.label_map.classes),
                'in_chans': d.settings['in_chans'], 'img_size': d.size}
    resumed = check_run(cfg, info, identity)  # checked now, written once the model, data and optimiser are set up
    seed_everything(cfg.seed)
    model = create_segmenter(cfg.model, K, d.settings['in_chans'], d.size, cfg.pretrained, cfg.drop_path)
    train_ds, train_loader, val_loader = d.loaders(recipe)
    updates = max(1, math.ceil(len(train_loader) / cfg.accum_steps))
    optim = build_optimizer(model, recipe_from_config(cfg, updates), cfg.epochs * updates)
    task = SegmentationTask(d.label_map, loss_fn=build_loss(
        recipe, K, class_frequencies([p.label for p in d.prepared['train']], K)))
    monitor, mode = ('dice', 'max') if val_loader is not None else ('loss', 'min')
    engine = build_engine(cfg, info, model, task, (train_loader, val_loader), optim, monitor, mode)
    config = {**cfg.to_dict(), **d.settings, 'label_map': d.label_map.name, 'classes': list(d.label_map.classes),
              'protocol': d.protocol.name if d.protocol else None, 'layout': d.ds.layout,
              'split_sizes': {s: len(v) for s, v in d.splits.items()}, 'world_size': info.world_size,
              'skipped_files': d.skipped}  # [file, reason] pairs, as classification runs record them
    changes = start_run(cfg, info, guard, resumed, identity, config, lambda path: _write_splits(path, d.splits),
                        {**cfg.to_dict(), **d.settings})
    if info.is_main:
        flat = all(r.fmt == 'image2d' for r in d.splits['train'])  # 2D images: no volumes, no slices
        print(f'[mednext-zoo] {cfg.model} segmentation: {K} classes {list(d.label_map.classes)}; {d.ds.layout} '
              f'data, intensity {d.intensity}; train {len(d.splits["train"])} '
              + ('images' if flat else f'volumes ({len(train_ds)} slices)')
              + f', val {len(d.splits.get("val", []))}, test {len(d.splits.get("test", []))}; '
              f'{_describe_spatial(d.mode, d.size, cfg.sw_overlap)}; '
              f'{cfg.epochs} epochs on {engine.device}{"; resuming" if resumed else ""}', flush=True)
    summary = engine.fit(resume=resumed, changes=changes)
    if not info.is_main:
        return {}
    final = reload_best(engine).eval()
    result = _report(cfg, d, final, summary, f'val {monitor} ({mode})', engine)
    result['wall_time_s'] = round(time.time() - t_start, 1)
    atomic_write_json(os.path.join(cfg.out, 'metrics.json'), result)
    if cfg.export:
        headline, note, dataset = _card_inputs({**cfg.to_dict(), **d.settings}, result, d.ds.modality,
                                               {k: len(v) for k, v in d.splits.items()}, d.protocol)
        _export(final.cpu(), os.path.join(cfg.out, 'export'), d.label_map, d.settings, headline, note, dataset)
    print(f'[mednext-zoo] run folder {cfg.out} ({result["wall_time_s"]} s)', flush=True)
    return result


class _SegData:
    """A run's cases: discovered, split, loaded up front (bad files fail, or are skipped, before any training) and
    prepared at the model size (resized, or native resolution for patches); the preprocessing ``settings``."""

    def __init__(self, cfg: SegConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.protocol = get_protocol(cfg.protocol) if cfg.protocol else None
        self.ds = ds = discover(cfg.data, cfg.layout, cfg.on_bad_file, cfg.strict_columns)
        _check_remap(cfg.remap_labels)
        self.label_map = resolve_label_map(ds, self.protocol, cfg.labels, cfg.slice_axis, cfg.remap_labels)
        self.intensity = resolve_intensity(cfg.intensity, ds, self.protocol)
        splits = assign_case_splits(ds, self.protocol, cfg.val_frac, cfg.test_frac, cfg.folds, cfg.fold, cfg.seed)
        self.skipped = skipped = list(ds.skipped)
        load = lambda r: load_case(r, self.label_map, cfg.slice_axis, cfg.remap_labels)  # noqa: E731
        loaded = {s: list(iter_volumes(splits.get(s, []), load, cfg.on_bad_file, skipped)) for s in ('train', 'val')}
        self.mode, self.size = choose_spatial_mode([v.image.shape[1:3] for v in loaded['train'] + loaded['val']],
                                                   cfg.img_size, all(v.native_ndim == 2 for v in loaded['train']),
                                                   cfg.patch_size, cfg.resize)
        if not 0 <= cfg.sw_overlap < 1:
            raise UserInputError(f'--sw-overlap must be in [0, 1), got {cfg.sw_overlap}.')
        self.prepared = {s: [prepare_volume(v, self.size, self.intensity, cfg.window, self.mode) for v in vols]
                         for s, vols in loaded.items()}
        del loaded
        if len(skipped) > len(ds.skipped):  # cases that failed to load leave the split lists too
            failed = {path for path, _ in skipped[len(ds.skipped):]}
            splits = {k: [r for r in v if r.image not in failed] for k, v in splits.items()}
        self.splits = splits
        n_index, n_load = len(ds.skipped), len(skipped) - len(ds.skipped)  # the indexing warning counted the first
        why = (f'{len(skipped)} case(s) skipped' + (f': {n_index} when the dataset was indexed, {n_load} when loaded'
                                                    if n_index and n_load else ''))
        if not self.prepared['train']:
            raise UserInputError(f'{cfg.data}: no readable training volumes ({why}).')
        if skipped and info.is_main:
            print(f'[mednext-zoo] {why}, unreadable or missing files (listed in config.json); first: '
                  f'{skipped[0][1]}', flush=True)
        channels = self.prepared['train'][0].image.shape[1]
        if channels == 3 and cfg.context != 1:
            raise UserInputError('2.5D --context needs grayscale volumes; the data holds colour images.')
        self.settings = {'task': RUN_KIND, 'img_size': self.size, 'intensity': self.intensity,
                         'window': list(cfg.window), 'context': cfg.context, 'slice_axis': cfg.slice_axis,
                         'in_chans': channels * cfg.context, 'remap_labels': cfg.remap_labels,
                         'patch_size': self.size if self.mode == 'patch' else None, 'sw_overlap': cfg.sw_overlap,
                         'sw_mode': 'gaussian'}

    def loaders(self, recipe: TrainingRecipe) -> Tuple[Any, DataLoader, Optional[DataLoader]]:
        """``(train dataset, train loader, val loader or None)``: patches (foreground-oversampled by the recipe)
        or whole slices for training; tiles or slices, evenly spaced, for validation."""
        from ...data import EpochSampler
        cfg, info, K, prepared = self.cfg, self.info, self.label_map.num_classes, self.prepared
        if self.mode == 'patch':
            train_ds = PatchDataset(prepared['train'], self.size, K, cfg.context, cfg.augment, cfg.seed,
                                    recipe.oversample_fg)
        else:
            train_ds = SliceDataset(prepared['train'], cfg.context, cfg.augment, cfg.seed)
        mk_loader = lambda d, sampler, drop: DataLoader(  # noqa: E731
            d, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=drop,
            generator=torch.Generator().manual_seed(cfg.seed), pin_memory=torch.cuda.is_available())
        drop_last = len(train_ds) >= cfg.batch_size * info.world_size  # BatchNorm cannot train on a batch of one
        train_loader = mk_loader(train_ds, build_sampler(recipe, train_ds.class_presence(K), cfg.seed, info.rank,
                                                         info.world_size), drop_last)
        if not prepared['val']:
            return train_ds, train_loader, None
        val_ds = (TileDataset(prepared['val'], self.size, cfg.context, cfg.val_max_slices) if self.mode == 'patch'
                  else SliceDataset(prepared['val'], cfg.context, False, cfg.seed, cfg.val_max_slices))
        val_sampler = EpochSampler(len(val_ds), shuffle=False, rank=info.rank, world_size=info.world_size)
        return train_ds, train_loader, mk_loader(val_ds, val_sampler, False)


def _report(cfg: SegConfig, d: _SegData, final: nn.Module, summary: Dict[str, Any], monitor: str,
            engine: Any) -> Dict[str, Any]:
    """The run's report: its settings and training summary, and the 3D evaluation of ``cfg.eval_split`` in both
    metric modes (written to ``RUN_DIR/eval-<split>``)."""
    eval_split = cfg.eval_split
    if eval_split == 'auto':
        eval_split = 'test' if d.splits.get('test') else 'val' if d.splits.get('val') else 'none'
    result: Dict[str, Any] = {
        'task': RUN_KIND, 'model': cfg.model, 'data': os.path.abspath(cfg.data), 'layout': d.ds.layout,
        'protocol': d.protocol.name if d.protocol else None, 'classes': list(d.label_map.classes),
        'label_map': d.label_map.name, 'intensity': d.intensity, 'img_size': d.size, 'context': cfg.context,
        'spatial': d.mode, 'patch_size': d.settings['patch_size'],
        'sizes': {s: len(v) for s, v in d.splits.items()}, 'epochs_run': summary['epochs_run'],
        'scored_with': describe_weights(summary),
        'best_epoch': summary['best_epoch'], 'monitor': monitor,
        'train_time_s': round(summary['train_time_s'], 1), 'eval_split': eval_split,
    }
    result['skipped_files'] = len(d.skipped)  # --on-bad-file skip: the cases left out (listed in config.json)
    if eval_split != 'none':
        if not d.splits.get(eval_split):
            raise UserInputError(f'--eval-split {eval_split}: the run has no {eval_split} cases.')
        ev = evaluate_volumes(final, d.splits[eval_split], d.label_map, d.settings,
                              os.path.join(cfg.out, f'eval-{eval_split}'), cfg.tta, cfg.overlays, engine.device,
                              engine.amp_dtype, title=f'{cfg.model} on {eval_split}', progress=cfg.progress)
        result['summaries'] = ev['summaries']
        print('\n'.join(markdown_table(ev['summaries'][m], f'[mednext-zoo] {eval_split}, {result["scored_with"]}')
                        for m in MODES), flush=True)
    return result


# ---------------------------------------------------------------- evaluate / predict
def load_run_model(run_dir: str, device: str = 'cpu') -> Tuple[nn.Module, Dict[str, Any]]:
    """The best weights of a segmentation run and its resolved config."""
    return load_best(run_dir, device, lambda rc: create_segmenter(rc['model'], len(rc['classes']), rc['in_chans'],
                                                                  rc['img_size']), task=RUN_KIND)


def evaluate(run_dir: str, data: Optional[str] = None, split: Optional[str] = None, out: Optional[str] = None,
             tta: bool = False, overlays: int = 2, device: str = 'cpu', protocol: Optional[str] = None,
             progress: bool = True, include_training_data: bool = False, strict_columns: bool = False
             ) -> Dict[str, Any]:
    """3D metrics (both modes) of a run on labelled volumes: ``data`` (default: the run's own data) restricted
    to ``split`` (the protocol's ``test`` list with a protocol; all labelled cases otherwise).

    Cases the run trained or validated on (recognised by the content of their image files) are left out and the
    console says so; with none held out it refuses. ``include_training_data`` scores them too, and the report
    (``metrics.json`` -> ``training_overlap``, ``report.md``, ``training_overlap.csv``) lists them."""
    model, rc = load_run_model(run_dir, device)
    label_map = LabelMap(rc['label_map'], tuple(rc['classes']))
    data = data or rc['data']
    ds = discover(data, 'auto', strict_columns=strict_columns)
    proto_name = protocol or rc.get('protocol')
    recs = [r for r in ds.records if r.label]
    if proto_name:
        proto = get_protocol(proto_name)
        if proto.label_map.classes != label_map.classes:
            raise UserInputError(f'--protocol {proto.name}: the run was trained on {list(label_map.classes)}.')
        split = split or 'test'
        by = protocol_split(proto, [r.case_id for r in recs], data, require_all=False)
        wanted = set(by.get(split, []))
        recs = [r for r in recs if r.case_id in wanted]
    elif split:
        recs = [r for r in recs if r.split == split]
    if not recs:
        raise UserInputError(f'{data}: no labelled volumes{f" in split {split!r}" if split else ""} to evaluate.')
    if ds.label_names and ds.meta_source and not rc.get('remap_labels'):
        check_label_names(ds.label_names, label_map, ds.meta_source)
    overlap = find_overlap(run_dir, recs, item_files=_image_files, row_files=lambda row: [row.get('image', '')],
                           legacy_files=lambda r: [r.image])
    recs, overlap_report = select_held_out(overlap, include_training_data, data, 'cases', lambda r: r.case_id)
    name = eval_name(data, split)
    out = out or os.path.join(run_dir, f'eval-{name}')
    res = evaluate_volumes(model, recs, label_map, rc, out, tta, overlays, title=f'{rc["model"]} on {name}',
                           progress=progress, training_overlap=overlap_report)
    scope = scope_text(overlap_report, include_training_data, 'cases')
    print('\n'.join(markdown_table(res['summaries'][m], f'[mednext-zoo] {name}, {scope}') for m in MODES))
    print(f'[mednext-zoo] written to {out}')
    return res


def _expand_volumes(inputs: Sequence[str]) -> List[VolumeRecord]:
    """One record per input file (folders walked), named by :func:`case_id_of`; two inputs that would write the
    same prediction file are refused."""
    from ...data.volumes import IMAGE_EXTS, NIFTI_EXTS, SITK_EXTS, record_of
    recs = []
    for item in inputs:
        if os.path.isdir(item):
            exts = NIFTI_EXTS + SITK_EXTS + IMAGE_EXTS + ('.h5',)
            files = sorted(os.path.join(r, f) for r, _, fs in os.walk(item) for f in fs
                           if f.lower().endswith(exts) and not f.startswith('.'))
            if not files:
                raise UserInputError(f'No volumes (NIfTI, .npy.h5) or images in folder {item}.')
        elif os.path.isfile(item):
            files = [item]
        else:
            raise UserInputError(f'Input {item} does not exist.')
        recs.extend(record_of(f) for f in files)
    unique = unique_inputs(recs, key=lambda r: os.path.realpath(r.image))  # a file given twice: once
    if len(unique) < len(recs):
        print(f'[mednext-zoo] {len(recs) - len(unique)} input file(s) given more than once (e.g. directly and '
              f'through their folder) are predicted once', file=sys.stderr)
    recs = unique
    seen: Dict[str, str] = {}
    for r in recs:
        other = seen.setdefault(r.case_id, r.image)
        if other != r.image:
            raise UserInputError(f'{other} and {r.image} would both be written as {r.case_id}_pred.*: predict '
                                 f'them into separate --out folders, or rename one.')
    return recs


def predict(run_dir: str, inputs: Sequence[str], out: Optional[str] = None, tta: bool = False, overlays: int = 3,
            device: str = 'cpu', overwrite: bool = False) -> List[Dict[str, Any]]:
    """Segment volumes (files or folders, each file once): ``out/<case>_pred.nii.gz`` in each source's geometry
    (palette PNG masks for 2D images: class indices as pixel values, shown in colour) and ``out/overlays/*.png`` of
    the ``overlays`` slices with the most foreground; says where on stderr.

    ``<case>`` is the file name without extension and without the nnU-Net channel suffix ``_0000``
    (``liver_7_0000.nii.gz`` -> ``liver_7_pred.nii.gz``). A folder holding an earlier call's predictions is refused
    unless ``overwrite``, which replaces them (earlier files not written again are removed at the end)."""
    out = out or os.path.join(run_dir, 'predictions')
    earlier = claim_output_dir(out, [f'*_pred{e}' for e in PRED_EXTS] + ['overlays/*.png'], overwrite)
    model, rc = load_run_model(run_dir, device)
    rows = []
    for r in _expand_volumes(inputs):
        vol = load_volume(r, None, rc.get('slice_axis', 2))
        pred = predict_volume(model, vol, rc['img_size'], rc['intensity'], tuple(rc['window']), rc['context'],
                              tta=tta, patch_size=rc.get('patch_size'), overlap=rc.get('sw_overlap', 0.5))
        path = save_prediction(pred, vol, out)
        ov = save_overlays(vol, pred, os.path.join(out, 'overlays'), num_classes=len(rc['classes']),
                           max_slices=overlays) if overlays else []
        counts = np.bincount(pred.ravel().astype(np.int64), minlength=len(rc['classes']))
        rows.append({'input': r.image, 'prediction': path, 'overlays': ov,
                     **{f'voxels_{c}': int(n) for c, n in zip(rc['classes'][1:], counts[1:])}})
    remove_stale(earlier, [p for row in rows for p in [row['prediction'], *row['overlays']]])
    print(f'[mednext-zoo] wrote {len(rows)} prediction(s) to {out} (label maps: pixel / voxel values are class '
          f'indices, {", ".join(f"{i} {c}" for i, c in enumerate(rc["classes"]))}'
          + (f'; overlays in {os.path.join(out, "overlays")}' if overlays else '') + ')', file=sys.stderr)
    return rows
