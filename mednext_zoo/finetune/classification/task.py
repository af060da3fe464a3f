"""Image classification fine-tuning on top of the task-agnostic :mod:`~mednext_zoo.finetune.engine`.

``fit(ClassificationConfig(...))`` trains any timm classifier (MedNeXt first) on an ImageFolder tree or a CSV
manifest and leaves a run folder::

    RUN_DIR/config.json       resolved configuration        RUN_DIR/splits.csv     the split of every image
    RUN_DIR/metrics.jsonl     one line per epoch            RUN_DIR/metrics.json   final report (val / test)
    RUN_DIR/plots/*.png       curves, ROC, confusion        RUN_DIR/checkpoints/   resumable state
    RUN_DIR/export/           config.json + model.safetensors: timm.create_model("local-dir:RUN_DIR/export")
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ...data import (
    DataSource,
    EpochSampler,
    ImageClassificationDataset,
    Sample,
    assign_splits,
    build_transforms,
    discover,
    hold_out_test,
    kfold_assignments,
    parse_window,
)
from ...data.images import OneClassError, load_sample
from ...data.io import SUPPORTED_EXTS, image_kind, nifti_num_slices
from ...data.medmnist import array_item_id, is_array_source
from ...errors import UserInputError
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
from ..batched import predict_batches
from ..distributed import DistInfo, resolve_device, seed_everything
from ..engine import Task, describe_weights
from ..heldout import content_id, find_overlap, select_held_out, write_overlap_csv
from ..outputs import claim_output_dir, remove_stale, unique_inputs
from ..recipe import TrainingRecipe, build_optimizer
from ..run_dir import RunDirGuard, atomic_write_bytes, atomic_write_json, create_run_dir
from .metrics import classification_report, fit_temperature, multilabel_point_metrics, multilabel_report, point_metrics

__all__ = ['ClassificationConfig', 'ClassificationTask', 'fit', 'evaluate', 'predict', 'cross_validate',
           'load_run_model', 'check_model_name', 'create_classifier', 'export_run', 'run_norm_stats']


FINETUNE_LR = 5e-4  # from pretrained weights (the paper's recipe)
SCRATCH_LR = 1e-3  # from random weights; 3e-3 before 0.2 was unstable on real X-rays (docs/real-data.md, issue 21)
SCRATCH_CLIP_GRAD = 1.0  # from random weights: lr 4e-3 diverged on some seeds without it


@dataclass
class ClassificationConfig:
    """Everything a fine-tuning run needs; defaults follow the paper's recipe (AdamW, wd 0.05, cosine).

    ``lr`` / ``clip_grad`` left at ``None`` depend on the start: with ``pretrained`` weights lr
    :data:`FINETUNE_LR` and no clipping; from random weights lr :data:`SCRATCH_LR` and the gradient norm clipped
    to :data:`SCRATCH_CLIP_GRAD` (``clip_grad=0`` turns clipping off).
    """
    model: str
    data: str
    out: str
    epochs: int = 30
    img_size: int = 224
    batch_size: int = 32
    lr: Optional[float] = None  # None: FINETUNE_LR with pretrained weights, SCRATCH_LR from random weights
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    layer_decay: Optional[float] = None  # e.g. 0.75: lr of group i = lr * decay ** (num_groups - 1 - i)
    pretrained: Optional[str] = None  # TAG of the model, a weights file, or an export folder
    in_chans: int = 3  # 1: grayscale models; 3: grayscale replicated to RGB (ImageNet weights)
    window: Optional[str] = None  # DICOM / NIfTI: CT preset or "LEVEL,WIDTH"; None: min-max
    val_frac: float = 0.2
    test_frac: float = 0.0
    folds: int = 0
    accum_steps: int = 1
    amp: str = 'auto'
    device: str = 'auto'
    seed: int = 0
    clip_grad: Optional[float] = None  # None: SCRATCH_CLIP_GRAD from random weights, off with pretrained weights
    label_smoothing: float = 0.0
    imbalance: str = 'none'  # none | weights (class-weighted loss) | sampler (class-balanced sampling)
    ema_decay: float = 0.0
    linear_probe: bool = False  # train only the classifier
    freeze_epochs: int = 0  # backbone frozen for the first N epochs, then unfrozen
    drop_path: float = 0.0
    monitor: str = 'auto'  # auto: val loss (min); or loss / accuracy / f1 / precision / recall / auc
    patience: int = 0
    temperature_scaling: bool = False
    positive_class: Optional[str] = None
    crop_scale: Tuple[float, float] = (0.25, 1.0)
    hflip: float = 0.5
    num_workers: int = 0
    on_bad_file: str = 'error'
    strict_columns: bool = False  # a CSV manifest's unknown columns are an error (else a warning)
    labels: Optional[str] = None  # MedMNIST .npz: class names "a,b,c" (or "multi-label:a,b,c") over the built-in table
    n_bootstrap: int = 1000
    ckpt_every_steps: int = 0
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    export: bool = True

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = FINETUNE_LR if self.pretrained else SCRATCH_LR
        if self.clip_grad is None and not self.pretrained:
            self.clip_grad = SCRATCH_CLIP_GRAD

    def to_dict(self) -> Dict[str, Any]:
        """The settings as a plain dict (what ``config.json`` records)."""
        return dataclasses.asdict(self)

    def recipe(self, updates_per_epoch: Optional[int] = None) -> TrainingRecipe:
        """The optimiser recipe of the run (:func:`mednext_zoo.finetune.recipe.build_optimizer` builds it): AdamW
        (weight decay ``weight_decay``, none on 1-D parameters) with optional layer-wise lr decay, a cosine decay to
        ``min_lr`` after a linear warm-up of ``warmup_epochs`` -- in optimiser steps with ``updates_per_epoch``,
        else as a share of ``epochs``."""
        warmup = dict(warmup_steps=int(round(self.warmup_epochs * updates_per_epoch))) if updates_per_epoch else \
            dict(warmup_frac=self.warmup_epochs / self.epochs)
        return TrainingRecipe(opt='adamw', lr=self.lr, min_lr=self.min_lr, weight_decay=self.weight_decay,
                              schedule='cosine', layer_decay=self.layer_decay, clip_grad=self.clip_grad or None,
                              **warmup)


_RENAMED = {'FinetuneConfig': 'ClassificationConfig'}  # the names before 0.2, kept until 0.3


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        import warnings
        warnings.warn(f'{name} is renamed {_RENAMED[name]} (it configures classification runs); {name} will be '
                      f'removed in 0.3.', DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# ---------------------------------------------------------------- model
def create_classifier(model: str, num_classes: int, in_chans: int, img_size: int, pretrained: Optional[str] = None,
                      drop_path: float = 0.0) -> nn.Module:
    """``timm.create_model`` for a new task; ``img_size`` is passed to models that take it (MedNeXt, ViTs)."""
    import timm
    check_model_name(model)

    def create(name: str, kw: Dict[str, Any]) -> nn.Module:
        try:
            return timm.create_model(name, img_size=img_size, **kw)
        except TypeError as e:
            if 'img_size' not in str(e):
                raise
            return timm.create_model(name, **kw)
    return create_model(model, pretrained, create, drop_path, num_classes=num_classes, in_chans=in_chans)


def _norm_stats(model: nn.Module, in_chans: int) -> Tuple[List[float], List[float]]:
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    mean = list(cfg.get('mean', (0.485, 0.456, 0.406)))
    std = list(cfg.get('std', (0.229, 0.224, 0.225)))
    if len(mean) != in_chans:
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return mean, std


# ---------------------------------------------------------------- task
class ClassificationTask(Task):
    """Cross-entropy (optionally class-weighted, label-smoothed), or with ``multi_label`` one binary cross-entropy per
    label (``pos_weight`` from ``class_weights``); freezing; accuracy / P / R / F1 / AUC."""

    log_metrics = ('accuracy', 'auc')  # shown in the per-epoch line beside val loss and the monitored metric

    def __init__(self, classes: Sequence[str], class_weights: Optional[torch.Tensor] = None,
                 label_smoothing: float = 0.0, positive: Optional[int] = None, linear_probe: bool = False,
                 freeze_epochs: int = 0, multi_label: bool = False):
        self.classes = list(classes)
        self.multi_label = multi_label
        self.criterion = (nn.BCEWithLogitsLoss(pos_weight=class_weights) if multi_label else
                          nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing))
        self.positive = positive
        self.linear_probe = linear_probe
        self.freeze_epochs = freeze_epochs
        self._frozen: Optional[bool] = None

    def loss(self, model, inputs, targets):
        """Cross-entropy of ``model(inputs)`` (logits ``B, K``) against labels ``B``; raises UserInputError when the
        model does not return ``B, K`` logits (e.g. a segmentation model)."""
        logits = model(inputs)
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise UserInputError(
                f'The model returns shape {tuple(logits.shape)}, not (batch, {len(self.classes)} classes): it is not '
                f'an image classifier (MedUNeXt is a segmentation model; use a MedNeXt or another timm classifier).')
        crit = self.criterion
        if self.multi_label:
            if crit.pos_weight is not None and crit.pos_weight.device != logits.device:
                crit.to(logits.device)
            return crit(logits.float(), targets.float())
        if crit.weight is not None and crit.weight.device != logits.device:
            crit.to(logits.device)
        return crit(logits.float(), targets)

    def evaluate(self, outputs, targets):
        """Split metrics from logits ``N, K`` and labels ``N``: accuracy, precision / recall / F1 / AUC (macro, or of
        the positive class) and the unweighted cross-entropy ``loss``; multi-label: targets ``N, L``, the MedMNIST
        mean-over-labels accuracy / AUC and the binary cross-entropy."""
        if self.multi_label:
            out = multilabel_point_metrics(targets.numpy(), torch.sigmoid(outputs.float()).numpy())
            out = {k: v for k, v in out.items() if k != 'per_class'}
            out['loss'] = float(nn.functional.binary_cross_entropy_with_logits(outputs.float(), targets.float()))
            return out
        out = point_metrics(targets.numpy(), torch.softmax(outputs.float(), 1).numpy(), len(self.classes),
                            self.positive)
        out = {k: v for k, v in out.items() if k != 'per_class'}
        out['loss'] = float(nn.functional.cross_entropy(outputs.float(), targets.long()))
        return out

    def on_epoch_start(self, epoch, model):
        """Freeze everything but the classifier while linear-probing or during the first ``freeze_epochs``, unfreeze
        after; returns True when that changed the trainable parameters."""
        frozen = self.linear_probe or epoch < self.freeze_epochs
        if frozen == self._frozen:
            return False
        head = {id(p) for p in model.get_classifier().parameters()}
        for p in model.parameters():
            p.requires_grad_(not frozen or id(p) in head)
        changed = self._frozen is not None or frozen
        self._frozen = frozen
        return changed

    def on_train_mode(self, model):
        """While the backbone is frozen, keep its BatchNorm layers in eval mode (their running statistics fixed)."""
        if self._frozen:  # a frozen backbone keeps its BatchNorm statistics too
            head = {id(m) for m in model.get_classifier().modules()}
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head:
                    m.eval()


# ---------------------------------------------------------------- helpers
def _check_in_chans(source: DataSource, in_chans: int) -> None:
    if in_chans not in (1, 3):
        raise UserInputError(f'--in-chans must be 1 (grayscale) or 3 (RGB / grayscale replicated), got {in_chans}.')
    if in_chans == 1 and source.channels == 3:
        from ...data.io import probe_image
        colour = source.origin if source.meta.get('format') == 'medmnist' else next(
            (s.path for s in source.samples if probe_image(s.path) == 3), source.origin)
        raise UserInputError(f'--in-chans 1 contradicts the data: {colour} is a colour image. Use --in-chans 3, '
                             f'or convert the images to grayscale.')


def sample_id(sample: Sample, cache: Optional[Dict[str, str]] = None) -> str:
    """The content identity ``splits.csv`` records for an image: the SHA-256 of its file, or for one image of a
    MedMNIST file its official position (the same at every image size; see ``data.medmnist.array_item_id``)."""
    if sample.item is not None:
        return array_item_id(sample.path, sample.item)
    return content_id([sample.path], cache)


def _write_splits(path: str, samples: Sequence[Sample]) -> None:
    """``splits.csv``: every image's split and content identity (``evaluate`` recognises it by content)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(['path', 'label', 'patient_id', 'split', 'slice', 'item', 'sha256'])
    cache: Dict[str, str] = {}
    for s in samples:
        w.writerow([s.path, s.label, s.patient_id or '', s.split, '' if s.slice_index is None else s.slice_index,
                    s.item or '', sample_id(s, cache)])
    atomic_write_bytes(path, buf.getvalue().encode())


def _check_multi_label_options(cfg: ClassificationConfig) -> None:
    if cfg.imbalance == 'sampler':
        raise UserInputError('--imbalance sampler draws images by class; a multi-label set has no single class per '
                             'image. Use --imbalance weights (a positive weight per label) or none.')
    if cfg.temperature_scaling:
        raise UserInputError('--temperature-scaling calibrates a softmax; a multi-label model has one sigmoid per '
                             'label. Leave it off.')
    if cfg.positive_class is not None:
        raise UserInputError('--positive-class applies to two-class tasks; this is a multi-label set.')
    if cfg.label_smoothing:
        raise UserInputError('--label-smoothing applies to the softmax cross-entropy; a multi-label set is trained '
                             'with one binary cross-entropy per label. Leave it at 0.')


def _split_by(source: DataSource) -> str:
    if source.meta.get('official_splits'):
        return f'the official {source.meta.get("subset") or "file"} splits (MedMNIST)'
    return 'patient' if any(s.patient_id for s in source.samples) else 'image (no patient ids)'


def _loader(ds, batch_size: int, sampler: EpochSampler, num_workers: int, seed: int, drop_last: bool = False):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def _positive_index(classes: Sequence[str], positive_class: Optional[str]) -> Optional[int]:
    if len(classes) != 2:
        if positive_class is not None:
            raise UserInputError(f'--positive-class applies to two classes; this task has {len(classes)}.')
        return None
    pc = positive_class if positive_class is not None else classes[1]
    if pc not in classes:
        raise UserInputError(f'--positive-class {pc!r} is not one of the classes {list(classes)}.')
    return list(classes).index(pc)


def _export(model: nn.Module, export_dir: str, metrics: Dict[str, Any], dataset: Dict[str, Any],
            classes: Sequence[str], mean: Sequence[float], std: Sequence[float], in_chans: int, img_size: int,
            multi_label: bool = False, *, window: Optional[str], temperature: float = 1.0) -> str:
    """Write ``export_dir`` (config.json, model.safetensors, model card) with :func:`mednext_zoo.hub.save_pretrained`.

    The exported config carries the class names and the normalisation / input size used in training, and the
    evaluation resize of ``build_transforms`` (the whole image, bilinear, to img_size x img_size: no centre crop),
    which timm's ``create_transform`` and transformers' image processor rebuild from it; and, under
    ``preprocessing``, the whole input recipe (``window`` included: the reader's CT window, ``"file"`` or ``None``
    for min-max) that ``mednext-zoo export --format onnx|openvino`` and ``mednext_zoo.deploy.preprocess`` follow.
    """
    from ...data.preprocessing import classification_spec
    spec = classification_spec(img_size, in_chans, mean, std, window, temperature,
                               activation='sigmoid' if multi_label else 'softmax')
    model.pretrained_cfg = {**getattr(model, 'pretrained_cfg', {}), 'label_names': list(classes),
                            'mean': tuple(mean), 'std': tuple(std), 'input_size': (in_chans, img_size, img_size),
                            'num_classes': len(classes), 'crop_pct': 1.0, 'crop_mode': 'squash',
                            'interpolation': 'bilinear', **({'multi_label': True} if multi_label else {})}
    from ...hub import save_pretrained
    card_metrics = {k: {'value': v, 'ci': tuple(metrics['ci95'][k])} if metrics['ci95'].get(k) else v
                    for k, v in metrics.items() if k in ('accuracy', 'precision', 'recall', 'f1', 'auc')}
    avg = {'binary': f"binary metrics of the positive class '{metrics['positive_class']}'",
           'multi-label': 'multi-label (one sigmoid per label): accuracy and AUC are means over labels (MedMNIST), '
                          'precision / recall / F1 macro means at threshold 0.5'}.get(
        metrics['averaging'], 'macro averages over classes, AUC one-vs-rest')
    sizes = dataset['sizes']
    card_dataset = {
        'name': dataset['name'],
        'task': 'classification',
        'size': f'{sum(sizes.values())} images ({sizes["train"]} train / {sizes["val"]} val / '
                f'{sizes["test"]} test)',
        'label_names': list(classes),
        'split': f'Split by {dataset["split_by"]}, stratified by class (the split of every image is in the '
                 f'run folder\'s splits.csv).',
        'protocol': dataset.get('training'),
        'preprocessing': dataset.get('preprocessing'),
        'metric_conventions': f'{avg}; 95% CIs by percentile bootstrap over images.',
    }
    if metrics['positive_class']:
        card_dataset['positive_class'] = metrics['positive_class']
    save_pretrained(
        model, export_dir, dataset=card_dataset, metrics=card_metrics, label_names=list(classes), preprocessing=spec,
        metrics_note=f'Measured by mednext-zoo finetune on the {dataset["split"]} split '
                     f'(n={sizes[dataset["split"]]}) with {dataset["scored_with"]}; expected calibration error '
                     f'{metrics["ece"]:.3f}.',
    )
    return export_dir


def _card_dataset(cfg: Dict[str, Any], result: Dict[str, Any], mean: Sequence[float], std: Sequence[float]
                  ) -> Dict[str, Any]:
    """The training facts the model card prints, from the run's settings (``config.json``) and report
    (``metrics.json``)."""
    return {'name': os.path.basename(os.path.normpath(cfg['data'])), 'classes': list(result['classes']),
            'split': result['headline_split'], 'sizes': result['sizes'], 'split_by': result['split_by'],
            'scored_with': result['scored_with'],
            'training': f'mednext-zoo finetune: {cfg["epochs"]} epochs, AdamW lr {cfg["lr"]:g} wd '
                        f'{cfg["weight_decay"]:g}, cosine, batch {cfg["batch_size"]}, img {cfg["img_size"]}, '
                        f'in_chans {cfg["in_chans"]}, seed {cfg["seed"]}',
            'preprocessing': f'window {cfg["window"] or "min-max per image"}, resized to {cfg["img_size"]}, '
                             f'normalised with mean {list(mean)} / std {list(std)}'}


def export_run(run_dir: str, out_dir: str) -> str:
    """Write a finished run's Hub folder again, to ``out_dir``: what ``fit`` writes to ``RUN_DIR/export`` -- the
    best weights, class names, evaluation resize, preprocessing (window included) and the card's metrics, all
    read from the run's records (``config.json``, ``metrics.json``), none from defaults."""
    model, rc = load_run_model(run_dir)
    result = read_result(run_dir)
    mean, std = run_norm_stats(run_dir, model, rc['in_chans'])
    return _export(model.cpu(), out_dir, metrics=_headline(result[result['headline_split']]),
                   dataset=_card_dataset(rc, result, mean, std), classes=rc['classes'], mean=mean, std=std,
                   in_chans=rc['in_chans'], img_size=rc['img_size'], multi_label=bool(rc.get('multi_label')),
                   window=rc['window'], temperature=float(result.get('temperature', 1.0)))


def run_norm_stats(run_dir: str, model: nn.Module, in_chans: int) -> Tuple[List[float], List[float]]:
    """The mean / std the run trained with: its export's record when there is one, else the model's."""
    try:
        with open(os.path.join(run_dir, 'export', 'config.json')) as f:
            pcfg = json.load(f)['pretrained_cfg']
        mean, std = [float(v) for v in pcfg['mean']], [float(v) for v in pcfg['std']]
        if len(mean) == len(std) == in_chans:
            return mean, std
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _norm_stats(model, in_chans)


def _headline(report: Dict[str, Any]) -> Dict[str, Any]:
    keys = ('accuracy', 'precision', 'recall', 'f1', 'auc')
    return {'averaging': report['averaging'], 'positive_class': report['positive_class'],
            **{k: report[k] for k in keys}, 'ci95': {k: report['ci95'][k] for k in keys}, 'ece': report['ece']}


def format_report(report: Dict[str, Any], title: str = '') -> str:
    """A few lines: every metric with its 95% CI, the averaging and positive class, ECE."""
    avg = {'binary': f"binary, positive class {report['positive_class']!r}",
           'multi-label': 'multi-label: means over labels, threshold 0.5'}.get(
        report['averaging'], 'macro average over classes (AUC one-vs-rest)')
    lines = [f'{title} (n={report["n"]}; {avg})' if title else f'n={report["n"]}; {avg}']
    for k in ('accuracy', 'precision', 'recall', 'f1', 'auc'):
        if k in report.get('undefined', {}):
            lines.append(f'  {k:9s} undefined: {report["undefined"][k]}')
            continue
        ci = report['ci95'][k]
        ci_s = f' [95% CI {ci[0]:.3f}-{ci[1]:.3f}]' if ci else ''
        lines.append(f'  {k:9s} {report[k]:.3f}{ci_s}')
    lines.append(f'  ECE       {report["ece"]:.3f} (temperature {report["temperature"]:.3f})')
    return '\n'.join(lines)


# ---------------------------------------------------------------- fit
def fit(cfg: ClassificationConfig, source: Optional[DataSource] = None) -> Dict[str, Any]:
    """Train, evaluate and export one run (or ``cfg.folds`` runs, see :func:`cross_validate`).

    Returns the final metrics (``metrics.json``'s content) on rank 0, ``{}`` elsewhere.
    """
    if cfg.folds:
        return cross_validate(cfg)
    return run_guarded(cfg, lambda info, guard: _fit(cfg, info, source, guard))


def _fit(cfg: ClassificationConfig, info: DistInfo, source: Optional[DataSource], guard: RunDirGuard) -> Dict[str, Any]:
    t_start = time.time()
    source, positive, monitor, mode = _check_settings(cfg, source)
    classes, multi = source.classes, source.multi_label
    identity = {'model': cfg.model, 'classes': classes, 'in_chans': cfg.in_chans, 'img_size': cfg.img_size}
    resumed = check_run(cfg, info, identity)  # checked now, written once the model, data and optimiser are set up
    seed_everything(cfg.seed)
    model = create_classifier(cfg.model, len(classes), cfg.in_chans, cfg.img_size, cfg.pretrained, cfg.drop_path)
    mean, std = _norm_stats(model, cfg.in_chans)
    data = _Data(cfg, source, mean, std, info)
    updates = max(1, math.ceil(len(data.train_loader) / cfg.accum_steps))
    optim = build_optimizer(model, cfg.recipe(updates), cfg.epochs * updates)
    task = ClassificationTask(classes, data.class_weights, cfg.label_smoothing, positive, cfg.linear_probe,
                              cfg.freeze_epochs, multi_label=multi)
    engine = build_engine(cfg, info, model, task, (data.train_loader, data.val_loader), optim, monitor, mode)
    pos_name = classes[positive] if positive is not None else None
    config = {**cfg.to_dict(), 'classes': classes, 'monitor': monitor, 'monitor_mode': mode,
              'positive_class': pos_name, 'multi_label': multi, 'data_source': source.meta,
              'world_size': info.world_size, 'skipped_files': source.skipped}
    changes = start_run(cfg, info, guard, resumed, identity, config, lambda path: _write_splits(path, source.samples),
                        {**cfg.to_dict(), 'monitor': monitor, 'positive_class': pos_name})
    if info.is_main:
        skipped = f'; skipped {len(source.skipped)} unreadable file(s) (see config.json)' if source.skipped else ''
        print(f'[mednext-zoo] {cfg.model}: {len(classes)} classes {classes}; train {len(data.train)}, val '
              f'{len(data.val)}, test {len(data.test)} images; {cfg.epochs} epochs on {engine.device}'
              f'{f" x{info.world_size} ranks" if info.enabled else ""}{"; resuming" if resumed else ""}{skipped}',
              flush=True)
    summary = engine.fit(resume=resumed, changes=changes)
    final = reload_best(engine)
    val_out = engine.infer(data.val_loader, final, desc='final val')
    test_out = engine.infer(data.loader(data.test, False), final, desc='test') if data.test else None
    if not info.is_main:
        return {}
    result = _report(cfg, source, data, summary, val_out, test_out, pos_name, f'val {monitor} ({mode})', t_start)
    if cfg.export:
        _export(final.cpu(), os.path.join(cfg.out, 'export'), metrics=_headline(result[result['headline_split']]),
                dataset=_card_dataset(cfg.to_dict(), result, mean, std), classes=classes, mean=mean, std=std,
                in_chans=cfg.in_chans, img_size=cfg.img_size, multi_label=multi, window=cfg.window,
                temperature=result['temperature'])
    print(format_report(result[result['headline_split']],
                        f'[mednext-zoo] {result["headline_split"]} metrics of {result["scored_with"]}'), flush=True)
    print(f'[mednext-zoo] run folder {cfg.out} ({result["wall_time_s"]} s)', flush=True)
    return result


def _check_settings(cfg: ClassificationConfig, source: Optional[DataSource]
                    ) -> Tuple[DataSource, Optional[int], str, str]:
    """The checks before anything is built: ``(source, positive class index, monitor, monitor mode)``; the data are
    discovered and split here unless ``source`` is given."""
    check_model_name(cfg.model)
    check_counts(cfg)
    if cfg.imbalance not in ('none', 'weights', 'sampler'):
        raise UserInputError(f'--imbalance must be none, weights or sampler, got {cfg.imbalance!r}.')
    parse_window(cfg.window)
    if source is None:
        source = discover(cfg.data, cfg.on_bad_file, cfg.labels, strict_columns=cfg.strict_columns)
        source = assign_splits(source, cfg.val_frac, cfg.test_frac, cfg.seed)
    _check_in_chans(source, cfg.in_chans)
    if source.multi_label:
        _check_multi_label_options(cfg)
    positive = None if source.multi_label else _positive_index(source.classes, cfg.positive_class)
    monitor = 'loss' if cfg.monitor == 'auto' else cfg.monitor
    if monitor not in ('loss', 'accuracy', 'precision', 'recall', 'f1', 'auc'):
        raise UserInputError(f'--monitor must be loss, accuracy, precision, recall, f1 or auc, got {monitor!r}.')
    return source, positive, monitor, 'min' if monitor == 'loss' else 'max'


class _Data:
    """The splits of a run as datasets and loaders, the training counts per class (label) and the loss weights of
    ``--imbalance weights``."""

    def __init__(self, cfg: ClassificationConfig, source: DataSource, mean: Sequence[float], std: Sequence[float],
                 info: DistInfo):
        self.cfg, self.source, self.mean, self.std, self.info = cfg, source, mean, std, info
        self.train, self.val, self.test = source.subset('train'), source.subset('val'), source.subset('test')
        classes, multi = source.classes, source.multi_label
        train_ds = self.dataset(self.train, True)
        if multi:
            counts = torch.stack(train_ds.targets).sum(0).double().numpy()
            if (counts == 0).any() and info.is_main:
                print(f'[mednext-zoo] note: label(s) {[classes[i] for i in np.flatnonzero(counts == 0)]} have no '
                      f'positive training image; the model cannot learn them.', flush=True)
        else:
            counts = np.bincount(train_ds.targets, minlength=len(classes)).astype(float)
            if (counts == 0).any():
                missing = [classes[i] for i in np.flatnonzero(counts == 0)]
                raise UserInputError(f'Class(es) {missing} have no training images after splitting; add images.')
        weights = [1.0 / counts[t] for t in train_ds.targets] if cfg.imbalance == 'sampler' else None
        sampler = EpochSampler(len(train_ds), cfg.seed, True, info.rank, info.world_size, weights)
        # full batches only (BatchNorm layers cannot train on a batch of one); the sampler reshuffles every epoch
        drop_last = len(train_ds) >= cfg.batch_size * info.world_size
        self.train_loader = _loader(train_ds, cfg.batch_size, sampler, cfg.num_workers, cfg.seed, drop_last)
        self.val_loader = self.loader(self.val, False)
        self.class_weights = None
        if cfg.imbalance == 'weights' and multi:  # BCE pos_weight: negatives / positives of each label
            self.class_weights = torch.tensor((len(train_ds) - counts) / np.maximum(counts, 1), dtype=torch.float32)
        elif cfg.imbalance == 'weights':
            self.class_weights = torch.tensor(counts.sum() / (len(classes) * counts), dtype=torch.float32)

    def dataset(self, samples: Sequence[Sample], train: bool) -> ImageClassificationDataset:
        """The images of ``samples`` with the training (augmenting) or evaluation transforms."""
        cfg = self.cfg
        return ImageClassificationDataset(
            samples, self.source.class_to_idx,
            build_transforms(cfg.img_size, self.mean, self.std, train, cfg.crop_scale, cfg.hflip), cfg.in_chans,
            cfg.window, cfg.seed, multi_label=self.source.multi_label)

    def loader(self, samples: Sequence[Sample], train: bool) -> DataLoader:
        """An unshuffled loader of ``samples`` split over the ranks (validation and test)."""
        ds, info = self.dataset(samples, train), self.info
        return _loader(ds, self.cfg.batch_size, EpochSampler(len(ds), shuffle=False, rank=info.rank,
                                                             world_size=info.world_size),
                       self.cfg.num_workers, self.cfg.seed)


def _report(cfg: ClassificationConfig, source: DataSource, data: _Data, summary: Dict[str, Any],
            val_out: Tuple[torch.Tensor, torch.Tensor], test_out: Optional[Tuple[torch.Tensor, torch.Tensor]],
            positive_class: Optional[str], monitor: str, t_start: float) -> Dict[str, Any]:
    """Score the best weights on val (and test), with temperature scaling if asked; write ``metrics.json`` and the
    plots; return the report."""
    classes = source.classes
    temperature = fit_temperature(*val_out) if cfg.temperature_scaling else 1.0
    if source.multi_label:
        reports = {'val': multilabel_report(*val_out, classes, cfg.n_bootstrap, cfg.seed)}
        if test_out is not None:
            reports['test'] = multilabel_report(*test_out, classes, cfg.n_bootstrap, cfg.seed)
    else:
        kw = dict(classes=classes, positive_class=positive_class, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        reports = {'val': classification_report(*val_out, temperature=temperature, **kw)}
        if cfg.temperature_scaling:
            reports['val_uncalibrated'] = classification_report(*val_out, **{**kw, 'n_bootstrap': 0})
        if test_out is not None:
            reports['test'] = classification_report(*test_out, temperature=temperature, **kw)
    main_split = 'test' if 'test' in reports else 'val'
    result = {
        'model': cfg.model,
        'data': os.path.abspath(cfg.data),
        'classes': classes,
        'averaging': reports[main_split]['averaging'],
        'positive_class': reports[main_split]['positive_class'],
        'split_by': _split_by(source),
        'sizes': {'train': len(data.train), 'val': len(data.val), 'test': len(data.test)},
        'headline_split': main_split,
        'temperature': temperature,
        'scored_with': describe_weights(summary),
        'best_epoch': summary['best_epoch'],
        'epochs_run': summary['epochs_run'],
        'stopped_early': summary['stopped_early'],
        'monitor': monitor,
        'wall_time_s': round(time.time() - t_start, 1),
        'train_time_s': round(summary['train_time_s'], 1),
        'skipped_files': len(source.skipped),
        **reports,
    }
    atomic_write_json(os.path.join(cfg.out, 'metrics.json'), result)
    from .plots import plot_confusion, plot_curves, plot_roc
    plots = os.path.join(cfg.out, 'plots')
    os.makedirs(plots, exist_ok=True)
    plot_curves(os.path.join(cfg.out, 'metrics.jsonl'), os.path.join(plots, 'curves.png'))
    for split, rep in reports.items():
        if split.endswith('uncalibrated'):
            continue
        plot_roc(rep, os.path.join(plots, f'roc_{split}.png'), f'ROC ({split})')
        if 'confusion_matrix' in rep:
            plot_confusion(rep, os.path.join(plots, f'confusion_{split}.png'), f'confusion matrix ({split})')
    return result


def cross_validate(cfg: ClassificationConfig) -> Dict[str, Any]:
    """``cfg.folds``-fold cross-validation (stratified, patient-grouped): one run per fold under
    ``RUN_DIR/fold-K`` and ``RUN_DIR/cv_summary.json`` with the mean and std of each validation metric."""
    return run_guarded(cfg, lambda info, guard: _cross_validate(cfg, int(cfg.folds), info, guard))


def _cross_validate(cfg: ClassificationConfig, k: int, info: DistInfo, guard: RunDirGuard) -> Dict[str, Any]:
    source = hold_out_test(discover(cfg.data, cfg.on_bad_file, cfg.labels, strict_columns=cfg.strict_columns),
                           cfg.test_frac, cfg.seed)
    folds = kfold_assignments(source, k, cfg.seed)
    identity = {'model': cfg.model, 'folds': k, 'classes': source.classes}
    resumed = check_run(cfg, info, identity)
    if info.is_main and not resumed:
        create_run_dir(cfg.out, identity, cfg.overwrite)
        guard.created()
    results = []
    for i, fold_src in enumerate(folds):
        fold_dir = os.path.join(cfg.out, f'fold-{i}')
        resume = cfg.resume and os.path.isfile(os.path.join(fold_dir, 'run.json'))
        if cfg.resume and os.path.isfile(os.path.join(fold_dir, 'metrics.json')):
            with open(os.path.join(fold_dir, 'metrics.json')) as f:
                results.append(json.load(f))
            continue
        fcfg = dataclasses.replace(cfg, out=fold_dir, folds=0, resume=resume, overwrite=False)
        with RunDirGuard(fold_dir, info.is_main) as fold_guard:
            results.append(_fit(fcfg, info, fold_src, fold_guard))
    if not info.is_main:
        return {}
    keys = ('accuracy', 'precision', 'recall', 'f1', 'auc', 'ece')
    summary: Dict[str, Any] = {
        'model': cfg.model, 'folds': k, 'classes': source.classes, 'averaging': results[0]['val']['averaging'],
        'positive_class': results[0]['val']['positive_class'],
        'split': 'validation fold of each run; each run also picked its best checkpoint (and temperature) on that '
                 'fold, so these are optimistic. The held-out test split, when there is one, is under "test".',
        'per_fold': [], 'mean': {}, 'std': {}}
    for r in results:
        summary['per_fold'].append({m: r['val'][m] for m in keys})
    for m in keys:
        vals = np.array([f[m] for f in summary['per_fold']], dtype=float)
        summary['mean'][m] = float(np.nanmean(vals))
        summary['std'][m] = float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0
    if all('test' in r for r in results):  # the same held-out test images, scored by every fold's model
        tests = np.array([[r['test'][m] for m in keys] for r in results], dtype=float)
        summary['test'] = {'n': results[0]['test']['n'],
                           'mean': {m: float(np.nanmean(tests[:, j])) for j, m in enumerate(keys)},
                           'std': {m: float(np.nanstd(tests[:, j], ddof=1)) if len(tests) > 1 else 0.0
                                   for j, m in enumerate(keys)}}
    atomic_write_json(os.path.join(cfg.out, 'cv_summary.json'), summary)
    print(f'[mednext-zoo] {k}-fold cross-validation ({summary["averaging"]}'
          f'{", positive " + repr(summary["positive_class"]) if summary["positive_class"] else ""}), '
          f'validation folds (each also picked its run\'s best checkpoint: optimistic)'
          f'{" | held-out test" if "test" in summary else ""}:')
    for m in keys:
        line = f'  {m:9s} {summary["mean"][m]:.3f} +- {summary["std"][m]:.3f}'
        if 'test' in summary:
            line += f'   | {summary["test"]["mean"][m]:.3f} +- {summary["test"]["std"][m]:.3f}'
        print(line)
    return summary


# ---------------------------------------------------------------- evaluate / predict
def load_run_model(run_dir: str, device: str = 'cpu') -> Tuple[nn.Module, Dict[str, Any]]:
    """The best weights of a run and its resolved config."""
    return load_best(run_dir, device, lambda rc: create_classifier(rc['model'], len(rc['classes']), rc['in_chans'],
                                                                   rc['img_size']))


def _temperature(run_dir: str) -> float:
    try:
        with open(os.path.join(run_dir, 'metrics.json')) as f:
            return float(json.load(f).get('temperature', 1.0))
    except (OSError, ValueError):
        return 1.0


def evaluate(run_dir: str, data: str, split: Optional[str] = None, out: Optional[str] = None, batch_size: int = 32,
             device: str = 'cpu', n_bootstrap: int = 1000, on_bad_file: str = 'error', progress: bool = True,
             include_training_data: bool = False, strict_columns: bool = False) -> Dict[str, Any]:
    """Metrics (with bootstrap CIs, plots) of a finished run on a labelled folder or manifest.

    ``split`` restricts to one split of ``data`` (``test``, ...); results go to ``out``
    (default ``RUN_DIR/eval-<data name>``). Data of one class is scored too: the metrics it cannot define
    (AUC, ...) are reported as undefined, with the reason.

    Images the run trained or validated on (recognised by content, see :mod:`..heldout`) are left out and the
    console says so; with none held out it refuses. ``include_training_data`` scores them too, and the report
    (``metrics.json`` -> ``training_overlap``, ``training_overlap.csv``) lists them.
    """
    model, rc = load_run_model(run_dir, device)
    classes = rc['classes']
    multi = bool(rc.get('multi_label'))
    try:
        source = discover(data, on_bad_file, rc.get('labels') if is_array_source(data) else None,
                          strict_columns=strict_columns)
    except OneClassError as e:  # one class is fine to score (e.g. sensitivity on an all-positive set)
        source = e.source
    if source.multi_label != multi:
        raise UserInputError(f'{data} is a {source.task} set but the run trained a '
                             f'{"multi-label" if multi else "single-label"} classifier.')
    unknown = sorted(set(source.classes) - set(classes))
    if unknown or (multi and list(source.classes) != list(classes)):
        raise UserInputError(f'{data} has class(es) {unknown or source.classes} the model was not trained on (it '
                             f'knows {classes}).')
    if split is None and source.meta.get('official_splits'):
        split = 'test'
        print(f'[mednext-zoo] {data}: scoring its official test split (--split train / val chooses another).',
              flush=True)
    samples = source.samples if split is None else source.subset(split)
    if not samples:
        raise UserInputError(f'No images of split {split!r} in {data}.')
    _check_same_subset(rc, source, split, include_training_data)
    overlap = find_overlap(run_dir, samples, item_files=lambda s: [s.path], row_files=lambda r: [r.get('path', '')],
                           item_extra=lambda s: '' if s.slice_index is None else str(s.slice_index),
                           row_extra=lambda r: (r.get('slice') or '').strip(), item_id=sample_id)
    samples, overlap_report = select_held_out(overlap, include_training_data, data, 'images', lambda s: s.name)
    _check_in_chans(source, rc['in_chans'])
    mean, std = _norm_stats(model, rc['in_chans'])
    ds = ImageClassificationDataset(samples, {c: i for i, c in enumerate(classes)},
                                    build_transforms(rc['img_size'], mean, std, False), rc['in_chans'], rc['window'],
                                    multi_label=multi)
    loader = DataLoader(ds, batch_size=batch_size)
    from tqdm.auto import tqdm
    logits, y = predict_batches(model, tqdm(loader, desc='eval', leave=False, disable=not progress),
                                resolve_device(device))
    if multi:
        report = multilabel_report(logits, y, classes, n_bootstrap=n_bootstrap, seed=rc.get('seed', 0))
    else:
        report = classification_report(logits, y, classes, rc.get('positive_class'), _temperature(run_dir),
                                       n_bootstrap=n_bootstrap, seed=rc.get('seed', 0))
    name = eval_name(data, split)
    out = out or os.path.join(run_dir, f'eval-{name}')
    os.makedirs(out, exist_ok=True)
    overlap_report['file'] = write_overlap_csv(os.path.join(out, 'training_overlap.csv'), overlap_report)
    result = {'run': os.path.abspath(run_dir), 'data': os.path.abspath(data), 'split': split, **report,
              'training_overlap': overlap_report}
    atomic_write_json(os.path.join(out, 'metrics.json'), result)
    from .plots import plot_confusion, plot_roc
    plot_roc(report, os.path.join(out, 'roc.png'))
    if 'confusion_matrix' in report:
        plot_confusion(report, os.path.join(out, 'confusion.png'))
    print(format_report(report, f'[mednext-zoo] {name}, {scope_text(overlap_report, include_training_data, "images")}'))
    print(f'[mednext-zoo] written to {out}')
    return result


def _check_same_subset(rc: Dict[str, Any], source: DataSource, split: Optional[str], include: bool) -> None:
    """The train / val images of the MedMNIST subset a run trained on, at another image size, are its training
    images resized: content hashes cannot see that, the official splits can."""
    trained = rc.get('data_source') or {}
    subset = source.meta.get('subset')
    if not subset or subset != trained.get('subset') or source.meta.get('size') == trained.get('size'):
        return
    if split in ('test',):
        return
    what = f'the {split} split' if split else 'all splits'
    msg = (f'{source.origin} is {subset} at {source.meta.get("size")} px; the run trained on {subset} at '
           f'{trained.get("size")} px, so {what} of it holds the images the run trained or validated on, resized')
    if not include:
        raise UserInputError(f'{msg}. Score its test split (the default), or pass --include-training-data to score '
                             f'them anyway (optimistic figures).')
    print(f'[mednext-zoo] WARNING: {msg}; --include-training-data: these figures are optimistic.', flush=True)


def _array_inputs(item: str) -> List[Tuple[str, Optional[int], Optional[str]]]:
    """``FILE.npz`` (its test split), ``FILE.npz#SPLIT`` or ``FILE.npz#SPLIT/INDEX`` -> one entry per image."""
    from ...data.medmnist import read_medmnist
    path, _, which = item.partition('#')
    if not os.path.isfile(path):
        raise UserInputError(f'Input {path} does not exist.')
    which = which or 'test'
    if '/' in which:
        return [(path, None, which)]
    if which not in ('train', 'val', 'test'):
        raise UserInputError(f'Input {item}: after "#" give a split (train, val, test) or SPLIT/INDEX such as test/17.')
    return [(s.path, None, s.item) for s in read_medmnist(path).subset(which)]


def _expand_inputs(inputs: Sequence[str]) -> List[Tuple[str, Optional[int], Optional[str]]]:
    """``(path, slice_index, array item)`` of every image the inputs name (folders walked, NIfTI volumes sliced,
    MedMNIST files expanded to their images)."""
    files: List[Tuple[str, Optional[int], Optional[str]]] = []
    for item in inputs:
        if item.lower().partition('#')[0].endswith('.npz'):
            files.extend(_array_inputs(item))
            continue
        if os.path.isdir(item):
            found = [os.path.join(r, f) for r, _, fs in sorted(os.walk(item)) for f in sorted(fs)
                     if image_kind(f) is not None]
            if not found:
                raise UserInputError(f'No images ({", ".join(SUPPORTED_EXTS)}) in folder {item}.')
            paths = found
        elif os.path.isfile(item):
            if image_kind(item) is None:
                raise UserInputError(f'Unsupported file type {item}; supported: {", ".join(SUPPORTED_EXTS)}.')
            paths = [item]
        else:
            raise UserInputError(f'Input {item} does not exist.')
        for p in paths:
            if image_kind(p) == 'nifti' and nifti_num_slices(p) > 1:
                files.extend((p, k, None) for k in range(nifti_num_slices(p)))
            else:
                files.append((p, None, None))
    unique = unique_inputs(files, key=lambda f: (os.path.realpath(f[0]), f[1], f[2]))
    if len(unique) < len(files):
        print(f'[mednext-zoo] {len(files) - len(unique)} image(s) named more than once (e.g. a file given directly '
              f'and through its folder) are predicted once', file=sys.stderr)
    return unique


def predict(run_dir: str, inputs: Sequence[str], out: Optional[str] = None, cam: bool = False,
            cam_layer: Optional[str] = None, batch_size: int = 16, device: str = 'cpu', on_bad_file: str = 'error',
            overwrite: bool = False) -> List[Dict[str, Any]]:
    """Class probabilities for images (files or folders, each file once); ``cam`` also saves Grad-CAM overlays.

    Writes ``out/predictions.csv`` (default ``RUN_DIR/predictions``) and, with ``cam``, ``out/cam/*.png``, and says
    where on stderr. A folder holding an earlier call's outputs is refused unless ``overwrite``, which replaces them
    (earlier files this call does not write again are removed once the new ones are written).
    """
    from PIL import Image

    from .cam import GradCAM, overlay
    earlier = claim_output_dir(out or os.path.join(run_dir, 'predictions'), ('predictions.csv', 'cam/*.png'),
                               overwrite)
    model, rc = load_run_model(run_dir, device)
    classes = rc['classes']
    temperature = _temperature(run_dir)
    mean, std = _norm_stats(model, rc['in_chans'])
    tf = build_transforms(rc['img_size'], mean, std, False)
    out = out or os.path.join(run_dir, 'predictions')
    os.makedirs(out, exist_ok=True)
    if cam:
        os.makedirs(os.path.join(out, 'cam'), exist_ok=True)
    gc = GradCAM(model, cam_layer) if cam else None
    rows: List[Dict[str, Any]] = []
    files = _expand_inputs(inputs)
    skipped = 0
    ds = ImageClassificationDataset([], {c: i for i, c in enumerate(classes)}, None, rc['in_chans'], rc['window'])
    for start in range(0, len(files), batch_size):
        chunk, xs, raws = [], [], []
        for path, sl, item in files[start:start + batch_size]:
            try:
                ds.samples = [Sample(path, classes[0], slice_index=sl, item=item)]
                x = ds.load(0)
                raw = load_sample(ds.samples[0], rc['window'])
            except UserInputError:
                if on_bad_file == 'skip':
                    skipped += 1
                    continue
                raise
            chunk.append((path, sl, item))
            xs.append(tf(x))
            raws.append(raw)
        if not xs:
            continue
        batch = torch.stack(xs).to(next(model.parameters()).device)
        if gc is not None:
            cams, logits = gc(batch)
        else:
            with torch.no_grad():
                logits = model(batch)
        if rc.get('multi_label'):  # one sigmoid per label; the prediction lists the labels at or above 0.5
            probs = torch.sigmoid(logits.float().cpu()).numpy()
        else:
            probs = torch.softmax(logits.float().cpu() / temperature, 1).numpy()
        for j, (path, sl, item) in enumerate(chunk):
            k = int(probs[j].argmax())
            pred = ('|'.join(c for i, c in enumerate(classes) if probs[j, i] >= 0.5) if rc.get('multi_label')
                    else classes[k])
            row = {'path': path, 'slice': '' if sl is None else sl, 'item': item or '', 'prediction': pred,
                   'confidence': float(probs[j, k]), **{f'p_{c}': float(probs[j, i]) for i, c in enumerate(classes)}}
            if gc is not None:
                stem = os.path.basename(path).split('.')[0] + ('' if sl is None else f'_s{sl}') + \
                    ('' if item is None else '_' + item.replace('/', '-'))
                cam_path = os.path.join(out, 'cam', f'{start + j:05d}_{stem}_{classes[k]}.png')
                png = io.BytesIO()
                Image.fromarray(overlay(raws[j], cams[j].cpu().numpy(), min_size=256)).save(png, format='PNG')
                atomic_write_bytes(cam_path, png.getvalue())
                row['cam'] = cam_path
            rows.append(row)
    if gc is not None:
        gc.close()
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(os.path.join(out, 'predictions.csv'), buf.getvalue().encode())
    remove_stale(earlier, [os.path.join(out, 'predictions.csv')] * bool(rows) + [r['cam'] for r in rows if 'cam' in r])
    if skipped:
        print(f'[mednext-zoo] skipped {skipped} unreadable file(s)')
    print(f'[mednext-zoo] wrote {len(rows)} prediction(s) to {os.path.join(out, "predictions.csv")}'
          + (f', Grad-CAM overlays to {os.path.join(out, "cam")}' if gc is not None else '') if rows else
          '[mednext-zoo] no predictions written: every input was skipped', file=sys.stderr)
    return rows
