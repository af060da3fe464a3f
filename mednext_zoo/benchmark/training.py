"""Training-efficiency suite: quality against optimisation steps and train-time seconds, over seeds.

Every row (a model, its constructor kwargs and recipe overrides) is trained with the SAME loop, step budget,
batch size and data, for each seed, and scored on held-out cases every ``eval_every`` steps::

    from mednext_zoo.benchmark.training import TrainRow, run_training_suite
    result = run_training_suite(task='seg', rows=['medunext_tiny', 'unet_resnet34',
                                TrainRow('tiny+os', 'medunext_tiny', recipe={'oversample_fg': 0.33})],
                                phantoms=['small'], seeds=3, steps=300, out_dir='bench_train')

Segmentation rows train on the synthetic phantoms of :mod:`mednext_zoo.data.synthetic` (or ``data=DIR``, any
dataset ``finetune --task seg`` reads, with the same preprocessing) with the loss, optimiser, scheduler and slice
sampler built from :class:`mednext_zoo.finetune.recipe.TrainingRecipe`: the recipe users get from
``finetune --task seg``. Classification rows train on :data:`mednext_zoo.data.synthetic.CLS_TASKS` (or an
ImageFolder / CSV dataset) with the classification fine-tune defaults (AdamW, its lr / weight decay / warm-up
share, cosine; plain cross-entropy, no augmentation).

Why a short step loop of its own rather than the fine-tune engine: the suite needs an evaluation curve every N
optimiser steps (the engine evaluates per epoch) and a clock that counts training only (forward, backward,
optimiser step, batch assembly and augmentation), not evaluation, checkpointing or logging. Everything the
loop trains with comes from the recipe module.

Metrics. Segmentation: per-class Dice computed in 3D per held-out volume (at the training resolution; the
``exclude_absent`` rule of :mod:`mednext_zoo.metrics.segmentation`), averaged
over the held-out volumes that hold the class; volumes without it count in ``absent_fp`` (the share of them where
the model predicted the class anyway). The *smallest structure* is the foreground class with the fewest training
voxels; "steps to Dice 0.9" is the first evaluation step at which its Dice reaches 0.9, per seed and on the mean
curve. Classification: accuracy and ROC AUC (positive class: the second) on the held-out images; the target is
AUC 0.9. Spread over seeds: mean, sample standard deviation (n - 1) and min-max.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import synthetic as syn
from ..errors import UserInputError
from ..finetune.batched import predict_batches
from ..finetune.recipe import (
    TrainingRecipe,
    build_loss,
    build_optimizer,
    build_sampler,
    class_frequencies,
    slice_class_presence,
)
from ..finetune.segmentation.preprocess import augment_pair
from ..machine import machine_info, machine_label
from ..metrics.segmentation import dice_from_counts, mean_scored

__all__ = ['TrainRow', 'TrainSuiteConfig', 'TaskData', 'run_training_suite', 'default_rows', 'spread', 'parse_value',
           'SEG_DEFAULT_ROWS', 'CLS_DEFAULT_ROWS', 'DEFAULT_PHANTOMS', 'DEFAULT_CLS_TASKS', 'NAMED_BASELINES',
           'per_volume_dice', 'first_reach', 'classification_recipe']

SEG_DEFAULT_ROWS = ('medunext_tiny', 'medunext_tiny_hr', 'medunext_base', 'medunext_base_hr', 'unet_resnet18',
                    'unet_resnet34', 'monai_basicunet')
# Swin-v2 at 64 x 64: timm's "cr" variant takes any img_size; window 8 (16 x 16 and 8 x 8 tokens in the first
# two stages, clamped to 4 and 2 in the last two) instead of the 2 x 2 windows it picks by itself at 64
CLS_DEFAULT_ROWS = ('mednext_tiny', 'mednext_base', 'resnet18', 'convnext_atto',
                    'swinv2_cr_tiny_w8=swinv2_cr_tiny_ns_224 window_size=8')
DEFAULT_PHANTOMS = ('small', 'lookalike', 'thick')
DEFAULT_CLS_TASKS = ('lesion',)
TARGET = 0.9

_SMP_HINT = "segmentation_models_pytorch not installed (pip install 'mednext-zoo[seg-baselines]')"
_MONAI_HINT = "MONAI not installed (pip install 'mednext-zoo[monai]')"


@dataclass(frozen=True)
class _Baseline:
    task: str
    description: str
    build: Callable[[int, int, Dict[str, Any]], nn.Module]  # (num_classes, in_chans, kwargs) -> model
    missing: Callable[[], Optional[str]]  # the reason it cannot be built here, or None


def _missing(module: str, hint: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        import importlib
        try:
            importlib.import_module(module)
        except ImportError:
            return hint
        return None
    return check


def _smp_unet(encoder: str):
    def build(k: int, c: int, kw: Dict[str, Any]) -> nn.Module:
        import segmentation_models_pytorch as smp
        return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=c, classes=k, **kw)
    return build


def _monai_basicunet(k: int, c: int, kw: Dict[str, Any]) -> nn.Module:
    from monai.networks.nets import BasicUNet
    return BasicUNet(spatial_dims=2, in_channels=c, out_channels=k, **kw)


def _monai_unet(k: int, c: int, kw: Dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet
    kw = {'channels': (16, 32, 64, 128, 256), 'strides': (2, 2, 2, 2), 'num_res_units': 2, **kw}
    return UNet(spatial_dims=2, in_channels=c, out_channels=k, **kw)


NAMED_BASELINES: Dict[str, _Baseline] = {
    'unet_resnet18': _Baseline('seg', 'smp Unet, ResNet-18 encoder, random init', _smp_unet('resnet18'),
                               _missing('segmentation_models_pytorch', _SMP_HINT)),
    'unet_resnet34': _Baseline('seg', 'smp Unet, ResNet-34 encoder, random init', _smp_unet('resnet34'),
                               _missing('segmentation_models_pytorch', _SMP_HINT)),
    'monai_basicunet': _Baseline('seg', 'MONAI BasicUNet (2D, features 32-32-64-128-256-32)', _monai_basicunet,
                                 _missing('monai', _MONAI_HINT)),
    'monai_unet': _Baseline('seg', 'MONAI UNet (2D, 16-256 channels, 2 residual units)', _monai_unet,
                            _missing('monai', _MONAI_HINT)),
}


@dataclass(frozen=True)
class TrainRow:
    """One row of the suite: ``model`` (a timm name or one of :data:`NAMED_BASELINES`), constructor kwargs
    (e.g. ``{'skip_fusion': 'concat'}``) and recipe overrides (:class:`TrainingRecipe` fields for segmentation,
    e.g. ``{'oversample_fg': 0.33}``; the same optimiser fields for classification)."""
    label: str
    model: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    recipe: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, item: Union[str, TrainRow]) -> TrainRow:
        """``item`` itself if it is a TrainRow, else :meth:`parse` of its text."""
        return item if isinstance(item, TrainRow) else cls.parse(str(item))

    @classmethod
    def parse(cls, spec: str) -> TrainRow:
        """``'[LABEL=]MODEL [key=value ...] [recipe.key=value ...]'``, e.g.
        ``'tiny-concat=medunext_tiny skip_fusion=concat recipe.oversample_fg=0.33'``; values are numbers,
        ``true`` / ``false`` / ``none``, comma-separated tuples (``conv_dims=8,8,16``) or text."""
        words = spec.split()
        if not words:
            raise UserInputError('An empty row; give at least a model name.')
        label, sep, model = words[0].partition('=')
        model = model if sep else label
        kwargs, recipe = {}, {}
        for w in words[1:]:
            key, sep, raw = w.partition('=')
            if not sep or not key:
                raise UserInputError(f'Row {spec!r}: {w!r} is not key=value.')
            if key.startswith('recipe.'):
                recipe[key[len('recipe.'):]] = parse_value(raw)
            else:
                kwargs[key] = parse_value(raw)
        return cls(label, model, kwargs, recipe)


def parse_value(raw: str) -> Any:
    """Text from a command line -> int, float, bool, None, a tuple (comma-separated) or the text itself."""
    raw = raw.strip()
    if ',' in raw:
        return tuple(parse_value(v) for v in raw.split(',') if v.strip())
    low = raw.lower()
    if low in ('true', 'false'):
        return low == 'true'
    if low == 'none':
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def default_rows(task: str) -> List[TrainRow]:
    """The default rows of ``task`` (``'seg'``: :data:`SEG_DEFAULT_ROWS`, else :data:`CLS_DEFAULT_ROWS`)."""
    return [TrainRow.of(n) for n in (SEG_DEFAULT_ROWS if task == 'seg' else CLS_DEFAULT_ROWS)]


def classification_recipe(**overrides: Any) -> TrainingRecipe:
    """The classification fine-tune defaults from random weights as a recipe (only the optimiser fields are used):
    ``ClassificationConfig().recipe()`` -- AdamW, ``SCRATCH_LR``, gradient norm clipped to ``SCRATCH_CLIP_GRAD``, its
    weight decay, min lr and warm-up share (warm-up epochs / epochs), cosine; images drawn uniformly (the segmentation
    recipe's foreground oversampling is off, as in ``finetune --task cls``)."""
    from ..finetune.classification.task import ClassificationConfig
    base = ClassificationConfig(model='', data='', out='').recipe().replace(oversample_fg=0.0, augment=False)
    return base.replace(**overrides)


@dataclass
class TrainSuiteConfig:
    """Settings shared by every row. ``phantoms``: segmentation phantoms or classification tasks of
    :mod:`mednext_zoo.data.synthetic` (ignored with ``data``). ``seeds``: a count (seeds 0..n-1) or the seeds.
    ``threads``: torch CPU threads pinned for the run (default: torch's current number)."""
    task: str = 'seg'
    rows: Optional[Sequence[Union[str, TrainRow]]] = None
    phantoms: Optional[Sequence[str]] = None
    seeds: Union[int, Sequence[int]] = 3
    steps: int = 300
    batch_size: int = 16
    eval_every: int = 25
    data: Optional[str] = None
    img_size: int = 64  # user datasets are resized to this (phantoms are 64 x 64), or patched (2D images larger)
    patch_size: Optional[int] = None  # user seg data: random patches at native resolution (finetune's rule)
    resize: bool = False  # user seg data: always resize to img_size
    recipe: Mapping[str, Any] = field(default_factory=dict)  # overrides applied to every row (before the row's)
    target: float = TARGET
    device: str = 'cpu'
    threads: Optional[int] = None
    workers: int = 0  # parallel runs (processes); 0: one per usable CPU core on CPU, 1 on CUDA
    clock: str = 'wall'  # the 'seconds' of tables and plots: wall (perf_counter) or cpu (process CPU time)
    data_seed: int = 0  # the phantoms' generation seed: the data are the same for every training seed
    progress: bool = True
    resume: bool = False  # reuse the finished runs logged in out_dir/train.runs.jsonl that match this setting
    note: str = ''

    def seed_list(self) -> List[int]:
        """The training seeds: ``0 .. seeds - 1`` for a count, else the seeds given."""
        return list(range(int(self.seeds))) if isinstance(self.seeds, int) else [int(s) for s in self.seeds]

    def check(self) -> TrainSuiteConfig:
        """Validate the settings and return ``self``; raises UserInputError for an unknown task or clock, counts below
        1, no seeds, negative ``workers`` or ``batch_size`` below 2."""
        if self.task not in ('seg', 'cls'):
            raise UserInputError(f'--task must be seg or cls, got {self.task!r}.')
        for name in ('steps', 'batch_size', 'eval_every', 'img_size'):
            if int(getattr(self, name)) < 1:
                raise UserInputError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(self, name)}.')
        if not self.seed_list():
            raise UserInputError('--seeds: give at least one seed.')
        if self.clock not in ('wall', 'cpu'):
            raise UserInputError(f'--clock must be wall or cpu, got {self.clock!r}.')
        if self.workers < 0:
            raise UserInputError(f'--workers must be >= 0, got {self.workers}.')
        if self.batch_size < 2:
            raise UserInputError('--batch-size must be at least 2 (BatchNorm cannot train on one image).')
        return self


# ---------------------------------------------------------------- data
@dataclass
class TaskData:
    """Train and held-out data of one task. Segmentation: ``x`` ``N, C, H, W`` float32, ``y`` ``N, H, W``
    int64, ``case`` ``N`` (volume index, for 3D scoring). Classification: ``y`` ``N`` int64, ``case`` unused."""
    name: str
    kind: str  # 'seg' | 'cls'
    classes: List[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_case: Optional[torch.Tensor] = None
    train_case_ids: List[str] = field(default_factory=list)
    test_case_ids: List[str] = field(default_factory=list)
    description: str = ''
    patch: Optional[int] = None  # seg at native resolution: training patches / sliding window of this size
    train_patches: Any = None  # patch mode: a PatchDataset over the native training slices
    test_vols: Optional[List[Any]] = None  # patch mode: the prepared native test volumes (Prepared)
    test_rois: Optional[List[Any]] = None  # each test volume's region of interest (or None), user seg data
    test_native: Optional[List[Any]] = None  # resized user seg data: each test volume's native labels D, H, W

    @property
    def num_classes(self) -> int:
        """Number of classes (background included for segmentation)."""
        return len(self.classes)

    @property
    def smallest(self) -> Optional[int]:
        """The foreground class with the fewest training pixels (segmentation)."""
        if self.kind != 'seg':
            return None
        freq = class_frequencies(self.train_y, self.num_classes)
        fg = [k for k in range(1, self.num_classes) if freq[k] > 0]
        return min(fg, key=lambda k: float(freq[k])) if fg else None

    @property
    def in_chans(self) -> int:
        """Input channels of the networks."""
        return int(self.train_patches.volumes[0].image.shape[1] if self.patch else self.train_x.shape[1])

    @property
    def model_size(self) -> int:
        """The side of the networks' inputs (the patch size in patch mode)."""
        return int(self.patch or self.train_x.shape[-1])

    def summary(self) -> Dict[str, Any]:
        """JSON-ready description: name, kind, classes, case and image counts, image size; the training pixel fraction
        per class and the smallest class (segmentation) or the training images per class (classification)."""
        if self.patch:
            n_train, n_test = len(self.train_patches), sum(v.image.shape[0] for v in self.test_vols)
            size = sorted({tuple(v.image.shape[-2:]) for v in self.train_patches.volumes + self.test_vols})
            size = [list(sz) for sz in size]
        else:
            n_train, n_test, size = int(self.train_x.shape[0]), int(self.test_x.shape[0]), list(self.train_x.shape[-2:])
        out: Dict[str, Any] = {'name': self.name, 'kind': self.kind, 'classes': list(self.classes),
                               'description': self.description, 'train_cases': len(self.train_case_ids),
                               'test_cases': len(self.test_case_ids), 'train_images': n_train,
                               'test_images': n_test, 'image_size': size,
                               'spatial': f'patches {self.patch}x{self.patch}, sliding window' if self.patch
                               else 'resized'}
        if self.kind == 'seg':
            freq = class_frequencies(self.train_y, self.num_classes)
            out['train_pixel_fraction'] = {c: round(float(f), 6) for c, f in zip(self.classes, freq)}
            out['smallest'] = self.classes[self.smallest] if self.smallest is not None else None
        else:
            out['train_class_counts'] = {c: int((self.train_y == k).sum()) for k, c in enumerate(self.classes)}
        return out


def _phantom_data(name: str, seed: int) -> TaskData:
    p = syn.SEG_PHANTOMS[name]
    tr, te = syn.phantom_slices(name, 'train', seed), syn.phantom_slices(name, 'test', seed)
    assert not set(tr.case_ids) & set(te.case_ids)
    return TaskData(name, 'seg', list(p.classes), tr.x, tr.y, te.x, te.y, te.case, tr.case_ids, te.case_ids,
                    p.description)


def _cls_task_data(name: str, seed: int) -> TaskData:
    t = syn.CLS_TASKS[name]
    tr, te = syn.make_cls_task(name, 'train', seed), syn.make_cls_task(name, 'test', seed)
    ids = lambda a, b: [f'{name}_{i:04d}' for i in range(a, b)]  # noqa: E731
    return TaskData(name, 'cls', list(t.classes), tr.x, tr.y, te.x, te.y, None, ids(0, len(tr)),
                    ids(len(tr), len(tr) + len(te)), t.description)


def _user_seg_data(path: str, img_size: int, patch_size: Optional[int] = None, resize: bool = False) -> TaskData:
    """A dataset ``finetune --task seg`` reads, prepared the same way (intensity, and resized or patched at native
    resolution by finetune's rule, :func:`~mednext_zoo.finetune.segmentation.data.choose_spatial_mode`); held out:
    its test split (e.g. imagesTs with labels), else 20 % of the patients (seed 0)."""
    import os

    from ..data.volumes import discover
    from ..finetune.segmentation import data as segdata
    from ..finetune.segmentation.preprocess import SYNAPSE_WINDOW
    from ..finetune.segmentation.task import assign_case_splits, load_case, resolve_intensity, resolve_label_map
    ds = discover(path, 'auto')
    label_map = resolve_label_map(ds, None, None)
    intensity = resolve_intensity('auto', ds, None)
    labelled = [r for r in ds.records if r.label]
    if any(r.split == 'test' for r in labelled):
        test = [r for r in labelled if r.split == 'test']
        train = [r for r in labelled if r.split != 'test']
    else:
        if len({r.patient for r in labelled}) < 2:
            raise UserInputError(f'{path}: the suite needs at least 2 labelled patients (one held out).')
        splits = assign_case_splits(ds, None, val_frac=0.0, test_frac=0.2, seed=0)
        train, test = splits.get('train', []), splits.get('test', [])
    if not train or not test:
        raise UserInputError(f'{path}: no held-out cases (give it a test split or more cases).')
    train_v = [load_case(r, label_map, 2) for r in train]
    test_v = [load_case(r, label_map, 2) for r in test]
    mode, size = segdata.choose_spatial_mode([v.image.shape[1:3] for v in train_v + test_v], img_size,
                                             all(v.native_ndim == 2 for v in train_v), patch_size, resize)
    prep = lambda vols: [segdata.prepare_volume(v, size, intensity, SYNAPSE_WINDOW, mode) for v in vols]  # noqa: E731
    name = os.path.basename(os.path.normpath(path))
    desc = f'user dataset {path} ({ds.layout}, intensity {intensity}, {mode} {size})'
    ids = [r.case_id for r in train], [r.case_id for r in test]
    if mode == 'patch':
        tr, te = prep(train_v), prep(test_v)
        labels = [p.label for p in tr]
        empty = torch.zeros(0)
        return TaskData(name, 'seg', list(label_map.classes), empty, labels, empty, empty, None, *ids, desc,
                        patch=size, train_patches=segdata.PatchDataset(tr, size, label_map.num_classes),
                        test_vols=te, test_rois=[v.roi for v in test_v])

    def stack(vols):
        x = torch.cat([v.image for v in vols])
        y = torch.cat([v.label for v in vols]).long()
        case = torch.cat([torch.full((len(v.label),), i, dtype=torch.long) for i, v in enumerate(vols)])
        return x, y, case
    trx, try_, _ = stack(prep(train_v))
    tex, tey, tec = stack(prep(test_v))
    return TaskData(name, 'seg', list(label_map.classes), trx, try_, tex, tey, tec, *ids, desc,
                    test_rois=[v.roi for v in test_v], test_native=[torch.from_numpy(v.label).long() for v in test_v])


def _user_cls_data(path: str, img_size: int) -> TaskData:
    """An ImageFolder tree or CSV manifest (as ``finetune``), grayscale, resized to ``img_size``; held out: its
    test split, else 20 % (stratified, patient-grouped, seed 0)."""
    import os

    from ..data.images import ImageClassificationDataset, build_transforms, discover, hold_out_test
    src = hold_out_test(discover(path), 0.2, seed=0)  # a MedMNIST file keeps its official test split
    if src.multi_label:
        raise UserInputError(f'{path}: the training suite scores single-label classification (ROC AUC); this is a '
                             f'multi-label set. Use mednext-zoo finetune for it.')
    tf = build_transforms(img_size, (0.0,), (1.0,), train=False)

    def load(samples):
        if not samples:
            raise UserInputError(f'{path}: no images for one of the splits (train / held-out test).')
        ds = ImageClassificationDataset(samples, src.class_to_idx, tf, in_chans=1)
        items = [ds[i] for i in range(len(ds))]
        return torch.stack([x for x, _ in items]).float(), torch.tensor([y for _, y in items], dtype=torch.long)
    train = [s for s in src.samples if s.split != 'test']
    test = [s for s in src.samples if s.split == 'test']
    trx, try_ = load(train)
    tex, tey = load(test)
    return TaskData(os.path.basename(os.path.normpath(path)), 'cls', list(src.classes), trx, try_, tex, tey, None,
                    [s.name for s in train], [s.name for s in test], f'user dataset {path}')


def load_task_data(cfg: TrainSuiteConfig) -> List[TaskData]:
    """The tasks the suite trains on: the user's ``cfg.data`` (one task, resized to ``cfg.img_size``), else each of
    ``cfg.phantoms`` (default :data:`DEFAULT_PHANTOMS` / :data:`DEFAULT_CLS_TASKS`) generated from ``cfg.data_seed``;
    raises UserInputError for an unknown phantom or task name."""
    if cfg.data:
        if cfg.task == 'seg':
            return [_user_seg_data(cfg.data, cfg.img_size, cfg.patch_size, cfg.resize)]
        return [_user_cls_data(cfg.data, cfg.img_size)]
    registry = syn.SEG_PHANTOMS if cfg.task == 'seg' else syn.CLS_TASKS
    names = list(cfg.phantoms or (DEFAULT_PHANTOMS if cfg.task == 'seg' else DEFAULT_CLS_TASKS))
    unknown = [n for n in names if n not in registry]
    if unknown:
        what = 'phantom' if cfg.task == 'seg' else 'classification task'
        raise UserInputError(f'Unknown {what}(s) {unknown}; choose from {", ".join(registry)}.')
    load = _phantom_data if cfg.task == 'seg' else _cls_task_data
    return [load(n, cfg.data_seed) for n in names]


# ---------------------------------------------------------------- models
def _check_row(row: TrainRow, task: str) -> Optional[str]:
    """Raise for a name that is no model at all; return the reason a known baseline cannot run here."""
    import timm

    from .. import models  # noqa: F401  (registers mednext_* / medunext_*)
    if row.model in NAMED_BASELINES:
        b = NAMED_BASELINES[row.model]
        if b.task != task:
            raise UserInputError(f'{row.model} is a {b.task} baseline; this is a {task} run.')
        return b.missing()
    if not timm.is_model(row.model):
        import difflib
        pool = sorted(set(timm.list_models()) | set(NAMED_BASELINES))
        close = difflib.get_close_matches(row.model, pool, n=3, cutoff=0.6)
        raise UserInputError(f'Unknown model {row.model!r} in row {row.label!r}.'
                             + (f' Did you mean {", ".join(close)}?' if close else '')
                             + f' Named baselines: {", ".join(NAMED_BASELINES)}.')
    return None


def build_row_model(row: TrainRow, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """The row's network with random weights (nothing downloaded), in training mode."""
    import timm
    kw = dict(row.model_kwargs)
    if row.model in NAMED_BASELINES:
        return NAMED_BASELINES[row.model].build(num_classes, in_chans, kw).train()
    base = dict(num_classes=num_classes, in_chans=in_chans, pretrained=False, **kw)
    try:
        return timm.create_model(row.model, img_size=img_size, **base).train()
    except TypeError as e:
        if 'img_size' not in str(e):
            raise UserInputError(f'{row.label}: {row.model} does not take {kw}: {e}') from None
    return timm.create_model(row.model, **base).train()  # size-agnostic (ResNet, ConvNeXt)


def _params_m(model: nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


# ---------------------------------------------------------------- metrics
def per_volume_dice(pred: torch.Tensor, target: torch.Tensor, case: torch.Tensor, num_classes: int
                    ) -> Dict[int, Dict[str, float]]:
    """Per class ``k >= 1``: ``dice`` (3D Dice per volume, mean over the volumes holding ``k``; NaN if none) and
    ``absent_fp`` (share of the volumes without ``k`` where ``k`` was predicted; NaN if every volume holds it).
    ``pred`` / ``target`` ``N, H, W`` slices, ``case`` ``N`` volume indices."""
    n_case = int(case.max()) + 1 if len(case) else 0
    counts = np.zeros((3, n_case, num_classes), dtype=np.int64)  # overlap, predicted, true voxels per volume
    for k in range(1, num_classes):
        p, g = (pred == k).flatten(1), (target == k).flatten(1)
        for j, m in enumerate((p & g, p, g)):
            counts[j, :, k] = torch.zeros(n_case, dtype=torch.long).index_add_(0, case, m.sum(1)).numpy()
    return _volume_scores(*counts, num_classes)


def _volume_scores(overlap: np.ndarray, n_pred: np.ndarray, n_gt: np.ndarray, num_classes: int
                   ) -> Dict[int, Dict[str, float]]:
    """:func:`per_volume_dice`'s figures from per-volume voxel counts ``V, K``: Dice with the ``exclude_absent``
    rule (:mod:`mednext_zoo.metrics.segmentation`), averaged over the volumes holding the class, and ``absent_fp``."""
    out = {}
    for k in range(1, num_classes):
        dices = [dice_from_counts(int(i), int(p), int(g), 'exclude_absent')
                 for i, p, g in zip(overlap[:, k], n_pred[:, k], n_gt[:, k])]
        absent = n_gt[:, k] == 0
        fp = float(np.mean(n_pred[absent, k] > 0)) if absent.any() else float('nan')
        out[k] = {'dice': mean_scored(dices), 'absent_fp': fp}
    return out


def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, chunk: int = 64) -> torch.Tensor:
    return predict_batches(model, (x[i:i + chunk] for i in range(0, len(x), chunk)), device)[0]


def _native_dice(model: nn.Module, data: TaskData, device: torch.device) -> Dict[int, Dict[str, float]]:
    """:func:`per_volume_dice` at native resolution (inside the ROIs), as finetune scores: sliding-window predictions
    over the native test volumes (patch mode), or the resized slices' predictions resized back (nearest)."""
    from ..finetune.segmentation.inference import sliding_window_probs
    from ..finetune.segmentation.preprocess import resize_labels
    model.eval()
    n = len(data.test_vols) if data.patch else len(data.test_native)
    counts = np.zeros((3, n, data.num_classes), dtype=np.int64)
    if not data.patch:
        lowres = _predict(model, data.test_x, device).argmax(1)
    for i, roi in enumerate(data.test_rois):
        if data.patch:
            vol = data.test_vols[i]
            pred = sliding_window_probs(model, vol.image, data.patch, 0.5, 16, device=device).argmax(1).numpy()
            gt = vol.label.numpy()
        else:
            gt = data.test_native[i].numpy()
            pred = resize_labels(lowres[data.test_case == i], gt.shape[-2:]).numpy()
        if roi is not None:
            pred, gt = np.where(roi, pred, 0), np.where(roi, gt, 0)
        for k in range(1, data.num_classes):
            p, g = pred == k, gt == k
            counts[:, i, k] = (p & g).sum(), p.sum(), g.sum()
    model.train()
    return _volume_scores(*counts, data.num_classes)


def _evaluate(model: nn.Module, data: TaskData, device: torch.device) -> Dict[str, Any]:
    if data.kind == 'seg':
        if data.patch or data.test_native is not None:
            res = _native_dice(model, data, device)
        else:
            res = per_volume_dice(_predict(model, data.test_x, device).argmax(1), data.test_y, data.test_case,
                                  data.num_classes)
        dice = {data.classes[k]: v['dice'] for k, v in res.items()}
        return {'dice': dice, 'absent_fp': {data.classes[k]: v['absent_fp'] for k, v in res.items()},
                'mean_dice': mean_scored(dice.values()),
                'target': dice[data.classes[data.smallest]] if data.smallest is not None else float('nan')}
    from ..finetune.classification.metrics import point_metrics
    probs = _predict(model, data.test_x, device).softmax(1).numpy()
    m = point_metrics(data.test_y.numpy(), probs, data.num_classes, positive=1 if data.num_classes == 2 else None)
    return {'accuracy': m['accuracy'], 'auc': m['auc'], 'target': m['auc']}


def first_reach(curve: Sequence[Dict[str, Any]], target: float, key: str = 'target') -> Optional[Dict[str, float]]:
    """The first curve point whose ``key`` reaches ``target``: ``{'step', 'seconds'}``, or ``None``."""
    for pt in curve:
        v = pt.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and v >= target:
            return {'step': pt['step'], 'seconds': pt['seconds']}
    return None


def spread(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean, sample std (n - 1; 0 for one value), min, max and n of the finite values (``None`` if none)."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
    return {'mean': float(np.mean(v)), 'std': float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            'min': float(np.min(v)), 'max': float(np.max(v)), 'n': len(v)}


# ---------------------------------------------------------------- the loop
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train_one(row: TrainRow, data: TaskData, seed: int, cfg: TrainSuiteConfig, recipe: TrainingRecipe,
              device: torch.device) -> Dict[str, Any]:
    """Train ``row`` on ``data`` for ``cfg.steps`` steps from ``seed``; the curve of held-out metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    k = data.num_classes
    model = build_row_model(row, k, data.in_chans, data.model_size).to(device)
    if data.kind == 'seg':
        loss_fn = build_loss(recipe, k, class_frequencies(data.train_y, k))
        presence = (data.train_patches.class_presence(k) if data.patch else slice_class_presence(data.train_y, k))
    else:
        loss_fn = nn.CrossEntropyLoss()
        presence = F.one_hot(data.train_y, k).bool()  # oversampling draws images holding class >= 1
    loss_fn = loss_fn.to(device)
    optimizer, scheduler = build_optimizer(model, recipe, cfg.steps)
    sampler = build_sampler(recipe, presence, seed)
    stream = _batches(sampler, cfg.batch_size)
    curve: List[Dict[str, Any]] = []
    wall, cpu, status, error = 0.0, 0.0, 'ok', None
    for step in range(1, cfg.steps + 1):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        idx, epoch = next(stream)
        if data.patch:  # random patches of the native slices (foreground-centred as in finetune), augmented
            ds = data.train_patches
            ds.seed, ds.fg_p, ds.augment = seed, recipe.oversample_fg, recipe.augment
            x, y = (torch.stack(t) for t in zip(*(ds[(i, epoch)] for i in idx.tolist())))
        else:
            x, y = data.train_x[idx], data.train_y[idx]
            if recipe.augment and data.kind == 'seg':
                x, y = _augment(x, y, idx, epoch, seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            status, error = 'diverged', f'loss {loss.item()} at step {step}'
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
        optimizer.step()
        scheduler.step_update(num_updates=step)
        _sync(device)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append({'step': step, 'seconds': round(wall if cfg.clock == 'wall' else cpu, 3),
                          'wall_s': round(wall, 3), 'cpu_s': round(cpu, 3), 'loss': round(float(loss.detach()), 5),
                          **_evaluate(model, data, device)})
    done = max(1, curve[-1]['step'] if curve else 1)
    run = {'seed': seed, 'status': status, 'params_m': _params_m(model), 'curve': curve,
           'train_wall_s': round(wall, 2), 'train_cpu_s': round(cpu, 2),
           'sec_per_step': round((wall if cfg.clock == 'wall' else cpu) / done, 4),
           'wall_per_step': round(wall / done, 4), 'cpu_per_step': round(cpu / done, 4),
           'final': curve[-1] if curve else None, 'reach': first_reach(curve, cfg.target)}
    if error:
        run['error'] = error
    return run


def _batches(sampler, batch_size: int):
    """Endless ``(indices, epoch)`` batches from an epoch sampler (incomplete epoch tails roll over)."""
    epoch, buf = 0, []
    while True:
        sampler.set_epoch(epoch)
        for i, e in sampler:
            buf.append(i)
            if len(buf) == batch_size:
                yield torch.tensor(buf), e
                buf = []
        epoch += 1


def _augment(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int, seed: int):
    """finetune's slice augmentation (``augment_pair``), seeded per (seed, epoch, slice) as ``SliceDataset``."""
    xs, ys = [], []
    for xi, yi, i in zip(x, y, idx.tolist()):
        a, b = augment_pair(xi, yi, random.Random((seed * 1_000_003 + epoch) * 10_000_019 + i))
        xs.append(a.contiguous())
        ys.append(b.contiguous())
    return torch.stack(xs), torch.stack(ys)


# ---------------------------------------------------------------- aggregation
def summarize_runs(runs: List[Dict[str, Any]], data: TaskData, target: float) -> Dict[str, Any]:
    """Mean / std / min-max over seeds: the curve point by point, the final metrics and the steps to target."""
    ok = [r for r in runs if r['curve']]
    if not ok:
        return {}
    steps = [pt['step'] for pt in ok[0]['curve']]
    keys = list(data.classes[1:]) if data.kind == 'seg' else ['accuracy', 'auc']

    def metric(pt, key):
        return pt['dice'].get(key) if data.kind == 'seg' else pt.get(key)
    curve = []
    for i, s in enumerate(steps):
        pts = [r['curve'][i] for r in ok if len(r['curve']) > i]
        curve.append({'step': s, 'seconds': spread([p['seconds'] for p in pts]),
                      'target': spread([p['target'] for p in pts]),
                      'metrics': {k: spread([metric(p, k) for p in pts]) for k in keys}})
    finals = [r['final'] for r in ok]
    reach = [r['reach'] for r in runs]
    mean_curve = [{'step': c['step'], 'seconds': c['seconds']['mean'], 'target': c['target']['mean']}
                  for c in curve]
    out = {'n_seeds': len(runs), 'n_ok': len([r for r in runs if r['status'] == 'ok']), 'curve': curve,
           'final': {k: spread([metric(f, k) for f in finals]) for k in keys},
           'sec_per_step': spread([r['sec_per_step'] for r in ok]),
           'wall_per_step': spread([r['wall_per_step'] for r in ok]),
           'cpu_per_step': spread([r['cpu_per_step'] for r in ok]),
           'steps_to_target': spread([r['step'] if r else None for r in reach]),
           'seconds_to_target': spread([r['seconds'] if r else None for r in reach]),
           'reached': sum(1 for r in reach if r), 'mean_curve_reach': first_reach(mean_curve, target)}
    if data.kind == 'seg':
        out['final']['mean_dice'] = spread([f['mean_dice'] for f in finals])
        out['absent_fp'] = {k: spread([f['absent_fp'].get(k) for f in finals]) for k in keys}
    return out


# ---------------------------------------------------------------- running the jobs
RUNS_LOG = 'train.runs.jsonl'  # in out_dir: one finished run per line (for resume=True)


def _fingerprint(row: TrainRow, task: str, seed: int, cfg: TrainSuiteConfig, recipe: TrainingRecipe) -> str:
    """What decides a run's curve: a resumed suite reuses a logged run only when all of it matches."""
    import hashlib
    import json
    what = {'model': row.model, 'kwargs': dict(row.model_kwargs), 'recipe': recipe.to_dict(), 'task': task,
            'seed': seed, 'steps': cfg.steps, 'batch_size': cfg.batch_size, 'eval_every': cfg.eval_every,
            'data': cfg.data, 'img_size': cfg.img_size if cfg.data else None, 'data_seed': cfg.data_seed,
            'patch_size': cfg.patch_size, 'resize': cfg.resize,
            'target': cfg.target, 'clock': cfg.clock, 'device': cfg.device, 'kind': cfg.task}
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _read_runs_log(path: str, prints: Dict[tuple, str]) -> Dict[tuple, Dict[str, Any]]:
    import json
    import os
    out: Dict[tuple, Dict[str, Any]] = {}
    if not os.path.exists(path):
        return out
    wanted = {fp: key for key, fp in prints.items()}
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                item = json.loads(line)
            except ValueError:  # a line cut short by an interruption
                continue
            key = wanted.get(item.get('fingerprint'))
            if key is not None:
                out[key] = item['run']
    return out

def _usable_cores() -> int:
    import os
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_WORKER: Dict[str, Any] = {}


def _init_worker(tasks: Dict[str, TaskData], threads: int) -> None:
    import warnings
    warnings.filterwarnings('ignore', message='`torch.jit.(script|trace)` is deprecated', category=FutureWarning)
    torch.set_num_threads(threads)
    _WORKER['tasks'] = tasks


def _job(row: TrainRow, task: str, seed: int, cfg: TrainSuiteConfig, recipe: TrainingRecipe) -> Dict[str, Any]:
    """One (row, task, seed) run; an unexpected error comes back as ``{'exception': reason}``."""
    try:
        return train_one(row, _WORKER['tasks'][task], seed, cfg, recipe, torch.device(cfg.device))
    except UserInputError:
        raise
    except Exception as e:
        return {'seed': seed, 'exception': f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'}


def _run_jobs(jobs: List[tuple], rows: Dict[str, TrainRow], tasks: Dict[str, TaskData], cfg: TrainSuiteConfig,
              recipes: Dict[str, TrainingRecipe], workers: int, threads: int,
              on_done: Optional[Callable[[tuple, Dict[str, Any]], None]] = None) -> Dict[tuple, Dict[str, Any]]:
    """Every job, in this process (``workers == 1``) or in a pool of spawned processes with ``threads`` torch
    threads each. Results are keyed ``(row label, task, seed)``; the order of execution does not matter.
    ``on_done(key, run)`` is called as each job finishes."""
    bar = None
    if cfg.progress and jobs:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc=f'training suite ({workers} worker{"s" if workers > 1 else ""})',
                   leave=False)
    out: Dict[tuple, Dict[str, Any]] = {}
    if workers == 1:
        before = torch.get_num_threads()
        try:
            _init_worker(tasks, threads)
            for key in jobs:
                if bar is not None:
                    bar.set_postfix_str(' / '.join(map(str, key)))
                out[key] = _job(rows[key[0]], key[1], key[2], cfg, recipes[key[0]])
                if on_done is not None:
                    on_done(key, out[key])
                if bar is not None:
                    bar.update(1)
        finally:
            torch.set_num_threads(before)
            _WORKER.clear()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(workers, mp_context=mp.get_context('spawn'), initializer=_init_worker,
                                 initargs=(tasks, threads)) as pool:
            futures = {pool.submit(_job, rows[key[0]], key[1], key[2], cfg, recipes[key[0]]): key for key in jobs}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                if on_done is not None:
                    on_done(futures[f], out[futures[f]])
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return out


# ---------------------------------------------------------------- API
def run_training_suite(config: Optional[TrainSuiteConfig] = None, out_dir: Optional[str] = None,
                       **overrides: Any) -> Dict[str, Any]:
    """Run the suite (``config`` and / or :class:`TrainSuiteConfig` fields as keywords); write ``train.json``,
    ``train.csv``, ``train.md`` and ``train.png`` into ``out_dir`` when given. Returns the result dict."""
    cfg = dataclasses.replace(config or TrainSuiteConfig(), **overrides).check()
    rows = [TrainRow.of(r) for r in (cfg.rows or default_rows(cfg.task))]
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise UserInputError(f'Row labels must be unique, got {labels}.')
    base = TrainingRecipe() if cfg.task == 'seg' else classification_recipe()
    recipes = {r.label: base.replace(**{**cfg.recipe, **r.recipe}) for r in rows}  # bad fields fail up front
    skipped = {r.label: _check_row(r, cfg.task) for r in rows}
    tasks = load_task_data(cfg)
    seeds = cfg.seed_list()
    jobs = [(r.label, d.name, seed) for r in rows if not skipped[r.label] for d in tasks for seed in seeds]
    workers = cfg.workers or (1 if cfg.device.startswith('cuda') else _usable_cores())
    workers = max(1, min(workers, len(jobs)))
    threads = int(cfg.threads or (1 if workers > 1 else torch.get_num_threads()))
    t_start = time.time()
    started = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    by_row = {r.label: r for r in rows}
    prints = {key: _fingerprint(by_row[key[0]], key[1], key[2], cfg, recipes[key[0]]) for key in jobs}
    results: Dict[tuple, Dict[str, Any]] = {}
    on_done = None
    if out_dir:
        import json
        import os
        os.makedirs(out_dir, exist_ok=True)
        log_path = os.path.join(out_dir, RUNS_LOG)
        if cfg.resume:
            results = _read_runs_log(log_path, prints)
        elif os.path.exists(log_path):
            os.remove(log_path)

        def on_done(key, run):  # one line per finished run: an interrupted suite resumes from here
            if 'exception' not in run:
                with open(log_path, 'a', encoding='utf-8') as f:
                    f.write(json.dumps({'fingerprint': prints[key], 'key': list(key), 'run': run},
                                       allow_nan=True) + '\n')
    todo = [key for key in jobs if key not in results]
    results.update(_run_jobs(todo, by_row, {d.name: d for d in tasks}, cfg, recipes, workers, threads, on_done))
    out_rows: List[Dict[str, Any]] = []
    for row in rows:
        rec: Dict[str, Any] = {'label': row.label, 'model': row.model, 'model_kwargs': dict(row.model_kwargs),
                               'recipe': dict(row.recipe), 'recipe_full': recipes[row.label].to_dict(),
                               'description': NAMED_BASELINES[row.model].description
                               if row.model in NAMED_BASELINES else '',
                               'status': 'ok', 'runs': {}, 'summary': {}}
        out_rows.append(rec)
        if skipped[row.label]:
            rec.update(status='skipped', reason=f'skipped: {skipped[row.label]}')
            continue
        failed = [results[(row.label, d.name, s)]['exception'] for d in tasks for s in seeds
                  if 'exception' in results[(row.label, d.name, s)]]
        if failed:  # a broken row (e.g. a shape error in a variant) is reported, the others still run
            rec.update(status='error', reason=failed[0])
            continue
        for d in tasks:
            runs = [results[(row.label, d.name, s)] for s in seeds]
            rec.setdefault('params_m', runs[0]['params_m'])
            for r in runs:
                r.pop('params_m', None)
            rec['runs'][d.name] = runs
            rec['summary'][d.name] = summarize_runs(runs, d, cfg.target)
    info = machine_info(cfg.device)
    info['torch_num_threads'] = threads
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ('rows', 'progress', 'resume')}
    settings.update(seeds=seeds, dtype='float32', threads=threads, workers=workers, resumed_runs=len(jobs) - len(todo),
                    target_metric='Dice of the smallest structure' if cfg.task == 'seg' else 'ROC AUC')
    result = {
        'meta': {'title': 'Training efficiency', 'task': cfg.task, 'settings': settings, 'machine': info,
                 'machine_label': machine_label(info), 'started_utc': started,
                 'wall_s': round(time.time() - t_start, 1),
                 'base_recipe': base.to_dict(), 'note': cfg.note},
        'tasks': {d.name: d.summary() for d in tasks},
        'rows': out_rows,
    }
    if out_dir:
        from .training_report import write_training_results
        write_training_results(result, out_dir)
    return result


_RENAMED = {'cls_recipe': 'classification_recipe'}  # the names before 0.2, kept until 0.3


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        import warnings
        warnings.warn(f'{name} is renamed {_RENAMED[name]}; {name} will be removed in 0.3.', DeprecationWarning,
                      stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
