"""The training recipe of both tasks: one dataclass and the builders that turn it into training objects.

The optimiser and schedule fields (and :func:`build_optimizer`, the one optimiser builder) serve both tasks:
``finetune --task cls`` builds its AdamW + cosine from ``ClassificationConfig.recipe()``, ``finetune --task seg``
from ``SegConfig`` (:func:`recipe_from_config`). The loss and sampler fields are segmentation's. The
training-efficiency benchmark (:mod:`mednext_zoo.benchmark.training`) builds its loss, optimiser, scheduler and slice
sampler here too, so it measures exactly the recipe users get::

    recipe = TrainingRecipe(oversample_fg=0.33, dice_mode='image')
    loss = build_loss(recipe, num_classes=4, class_freq=class_frequencies(labels, 4))
    optimizer, scheduler = build_optimizer(model, recipe, total_steps=300)   # scheduler.step_update(step)
    sampler = build_sampler(recipe, slice_class_presence(labels, 4), seed=0) # yields (index, epoch)

The defaults are segmentation's: the TransUNet recipe with the learning rate and slice sampling the
training-efficiency suite chose (issue 11, docs/medunext.md "Trainability"): Adam, lr 3e-3 with a cosine decay to
1e-6, weight decay 1e-4, no warm-up, 0.5 CE + 0.5 soft Dice summed over the batch with the background included, no
class weights, a third of the slices drawn to hold a foreground class (nnU-Net's foreground oversampling), rot90 /
flip / small-rotation augmentation.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

from ..data.images import EpochSampler
from ..errors import UserInputError
from .segmentation.losses import DICE_MODES, DeepSupervisionLoss, DiceCELoss

__all__ = ['TrainingRecipe', 'SCHEDULES', 'CLASS_WEIGHTINGS', 'build_loss', 'build_optimizer', 'build_sampler',
           'ForegroundSampler', 'class_weights', 'class_frequencies', 'slice_class_presence', 'recipe_from_config',
           'recipe_summary']

SCHEDULES = ('cosine', 'constant', 'poly')
CLASS_WEIGHTINGS = ('none', 'inverse', 'sqrt_inverse')


@dataclass
class TrainingRecipe:
    """How a network is trained (everything but the data, the model and the step budget). The defaults are
    segmentation's; ``ClassificationConfig.recipe()`` gives classification's.

    Attributes:
        opt: timm optimiser name (``adam``, ``adamw``, ``sgd`` (Nesterov, momentum 0.9), ...).
        lr, min_lr: peak and final learning rate.
        weight_decay: decoupled for ``adamw``, L2 for ``adam`` / ``sgd`` (timm's convention).
        layer_decay: layer-wise lr decay over ``model.group_matcher`` (timm's ``param_groups_layer_decay``): the lr
            of group i is ``lr * layer_decay ** (num_groups - 1 - i)``; ``None``: one lr.
        warmup_steps, warmup_frac: linear warm-up from ``lr * 1e-3``; the larger of ``warmup_steps`` and
            ``warmup_frac * total_steps`` optimiser steps, before the schedule.
        schedule: ``cosine`` (to ``min_lr``), ``poly`` (``(1 - t / T) ** poly_power``, nnU-Net: 0.9) or
            ``constant``.
        ce_weight, dice_weight: loss = ``ce_weight * CE + dice_weight * soft Dice``.
        dice_mode: ``batch`` (sums over the whole batch, TransUNet) or ``image`` (per-image Dice, averaged).
        dice_background: include the background class in the Dice average.
        class_weighting: CE class weights from the training labels: ``none``, ``inverse`` (1 / frequency: every
            class weighs the same in the CE) or ``sqrt_inverse`` (1 / sqrt(frequency)).
        oversample_fg: probability that a drawn training slice is forced to hold a foreground class (chosen
            uniformly among the classes, so rare ones are drawn as often as common ones; nnU-Net's
            ``oversample_foreground_percent``, 0.33 there). 0: uniform shuffling, as ``data.EpochSampler``.
        deep_supervision: when the model returns a list of logits ``[full, 1/2, 1/4, ...]`` in training, score
            them all (weights 1, 1/2, 1/4, ... normalised); ``False``: the full-resolution output only.
        augment: TransUNet's rot90 / flip or small rotation of each training slice.
        clip_grad: clip the gradient norm to this value (``None``: no clipping).
    """
    opt: str = 'adam'
    lr: float = 3e-3  # was 1e-3 before 0.2: small structures trained several times slower (issue 11)
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    warmup_frac: float = 0.0
    schedule: str = 'cosine'
    poly_power: float = 0.9
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    dice_mode: str = 'batch'
    dice_background: bool = True
    class_weighting: str = 'none'
    oversample_fg: float = 0.33  # was 0 before 0.2: nodules in 1-2 thick slices trained slower (issue 11)
    deep_supervision: bool = True
    augment: bool = True
    clip_grad: Optional[float] = None
    layer_decay: Optional[float] = None

    def __post_init__(self):
        self.check()

    def check(self) -> TrainingRecipe:
        """Raise :class:`UserInputError` on a value no builder can use; returns ``self``."""
        def bad(opt: str, msg: str):
            raise UserInputError(f'--{opt.replace("_", "-")}: {msg}')
        if self.schedule not in SCHEDULES:
            bad('schedule', f'choose one of {", ".join(SCHEDULES)}, got {self.schedule!r}.')
        if self.dice_mode not in DICE_MODES:
            bad('dice_mode', f'choose one of {", ".join(DICE_MODES)}, got {self.dice_mode!r}.')
        if self.class_weighting not in CLASS_WEIGHTINGS:
            bad('class_weighting', f'choose one of {", ".join(CLASS_WEIGHTINGS)}, got {self.class_weighting!r}.')
        if not 0.0 <= self.oversample_fg <= 1.0:
            bad('oversample_fg', f'a probability in [0, 1], got {self.oversample_fg}.')
        if self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight <= 0:
            bad('ce_weight', f'CE and Dice weights must be >= 0 and not both 0 (got {self.ce_weight}, '
                             f'{self.dice_weight}).')
        if not self.lr >= 0 or self.min_lr < 0:  # lr 0 is allowed: a run that only evaluates (the classifier's rule)
            bad('lr', f'lr and min_lr must be >= 0 (got {self.lr}, {self.min_lr}).')
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_frac < 1.0:
            bad('warmup_steps', f'warm-up steps >= 0 and fraction in [0, 1) (got {self.warmup_steps}, '
                                f'{self.warmup_frac}).')
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserInputError(f'--layer-decay must be in (0, 1], got {self.layer_decay}.')
        if self.clip_grad is not None and not self.clip_grad > 0:
            bad('clip_grad', f'must be > 0 (or None), got {self.clip_grad}.')
        return self

    def replace(self, **overrides: Any) -> TrainingRecipe:
        """A copy with some fields changed; unknown names raise :class:`UserInputError`."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserInputError(f'Unknown recipe field(s) {unknown}; the fields are {sorted(names)}.')
        # a command line's 'none' arrives as None; the text-valued fields spell it 'none'
        text_fields = {f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), str)}
        overrides = {k: ('none' if v is None and k in text_fields else v) for k, v in overrides.items()}
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The recipe as a plain dict (what ``config.json`` and the benchmark records store)."""
        return dataclasses.asdict(self)

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps for a run of ``total_steps`` optimiser steps (always fewer than ``total_steps``)."""
        w = max(int(self.warmup_steps), int(round(self.warmup_frac * total_steps)))
        return max(0, min(w, total_steps - 1))


# ---------------------------------------------------------------- label statistics
LabelSource = Union[torch.Tensor, Iterable[torch.Tensor]]


def _label_stacks(labels: LabelSource) -> Iterable[torch.Tensor]:
    return [labels] if isinstance(labels, torch.Tensor) else labels


def slice_class_presence(labels: LabelSource, num_classes: int) -> torch.Tensor:
    """``N, K`` bool: which classes each slice holds. ``labels``: a label stack ``N, H, W`` or a sequence of
    stacks (one per volume, concatenated in order)."""
    rows = []
    for stack in _label_stacks(labels):
        flat = torch.as_tensor(stack).reshape(len(stack), -1).long()
        hot = torch.zeros(len(stack), num_classes, dtype=torch.bool)
        hot.scatter_(1, flat.clamp(0, num_classes - 1), True)
        rows.append(hot)
    return torch.cat(rows) if rows else torch.zeros(0, num_classes, dtype=torch.bool)


def class_frequencies(labels: LabelSource, num_classes: int) -> torch.Tensor:
    """``K`` float64: the pixel fraction of each class over all slices."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for stack in _label_stacks(labels):
        counts += torch.bincount(torch.as_tensor(stack).flatten().long(), minlength=num_classes)[:num_classes]
    return counts / counts.sum().clamp(min=1)


def class_weights(weighting: str, class_freq: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """CE weights ``K`` (mean 1) for a :data:`CLASS_WEIGHTINGS` mode; ``None`` for ``'none'``. Classes missing
    from the training labels get the weight of the rarest present class."""
    if weighting == 'none':
        return None
    if class_freq is None:
        raise UserInputError(f'class weighting {weighting!r} needs the class frequencies of the training labels.')
    f = torch.as_tensor(class_freq, dtype=torch.float64)
    present = f > 0
    if not present.any():
        raise UserInputError('class weighting: the training labels hold no pixels.')
    f = torch.where(present, f, f[present].min())
    w = 1.0 / f if weighting == 'inverse' else 1.0 / f.sqrt()
    return (w / w.mean()).float()


# ---------------------------------------------------------------- builders
def build_loss(recipe: TrainingRecipe, num_classes: int, class_freq: Optional[torch.Tensor] = None) -> nn.Module:
    """The training loss: Dice + CE (:class:`.losses.DiceCELoss`) inside deep supervision (a plain tensor of
    logits is scored as is). ``class_freq`` (``K``, see :func:`class_frequencies`) is needed for class weights."""
    base = DiceCELoss(num_classes, recipe.ce_weight, recipe.dice_weight, recipe.dice_mode, recipe.dice_background,
                      class_weights(recipe.class_weighting, class_freq))
    return DeepSupervisionLoss(base, recipe.deep_supervision)


def build_optimizer(model: nn.Module, recipe: TrainingRecipe, total_steps: int) -> Tuple[torch.optim.Optimizer, Any]:
    """timm's ``create_optimizer_v2`` and a timm scheduler stepped per optimiser update
    (``scheduler.step_update(num_updates=step)``), already at step 0."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler, PolyLRScheduler, StepLRScheduler
    try:
        optimizer = create_optimizer_v2(model, recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                        layer_decay=recipe.layer_decay)
    except (ValueError, AssertionError) as e:
        raise UserInputError(f'--opt {recipe.opt!r}: {e}') from None
    total = max(1, int(total_steps))
    warmup = recipe.warmup_for(total)
    common = dict(warmup_t=warmup, warmup_lr_init=recipe.lr * 1e-3 if warmup else recipe.lr, warmup_prefix=True,
                  t_in_epochs=False)
    from .engine import plain_schedule_warnings
    if recipe.schedule == 'cosine':
        with plain_schedule_warnings(total, warmup):  # a run shorter than its warm-up never decays: say so
            scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=recipe.min_lr, **common)
    elif recipe.schedule == 'poly':
        with plain_schedule_warnings(total, warmup):
            scheduler = PolyLRScheduler(optimizer, t_initial=max(1, total - warmup), power=recipe.poly_power,
                                        lr_min=recipe.min_lr, **common)
    else:  # constant after the warm-up
        scheduler = StepLRScheduler(optimizer, decay_t=math.inf, decay_rate=1.0, **common)
    scheduler.step_update(num_updates=0)
    return optimizer, scheduler


class ForegroundSampler(EpochSampler):
    """:class:`mednext_zoo.data.EpochSampler` with nnU-Net-style foreground oversampling for 2D slices.

    Each draw of the epoch's shuffle is, with probability ``p``, replaced by a slice that holds a foreground
    class: the class is drawn uniformly among the foreground classes present in the data, then a slice uniformly
    among those holding it. Yields ``(index, epoch)``; the order is a function of ``(seed, epoch, rank)`` only,
    so a resumed run (``set_epoch(epoch, start)``) sees the same slices. ``presence``: ``N, K`` bool
    (:func:`slice_class_presence`).
    """

    def __init__(self, presence: torch.Tensor, p: float, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        super().__init__(len(presence), seed, True, rank, world_size, drop_last=drop_last)
        self.p = float(p)
        self.by_class = [torch.nonzero(presence[:, k]).flatten() for k in range(1, presence.shape[1])]
        self.by_class = [m for m in self.by_class if len(m)]

    def _indices(self):
        idx = torch.as_tensor(super()._indices(), dtype=torch.long)
        if not self.by_class or self.p <= 0 or not len(idx):
            return idx.tolist()
        g = torch.Generator().manual_seed(((self.seed * 100_003 + self.epoch) * 1_009 + self.rank) * 7 + 1)
        n = len(idx)
        forced = torch.rand(n, generator=g) < self.p
        cls = torch.randint(len(self.by_class), (n,), generator=g)
        u = torch.rand(n, generator=g)
        for i in torch.nonzero(forced).flatten().tolist():
            members = self.by_class[int(cls[i])]
            idx[i] = members[min(int(u[i] * len(members)), len(members) - 1)]
        return idx.tolist()


def build_sampler(recipe: TrainingRecipe, presence: torch.Tensor, seed: int = 0, rank: int = 0, world_size: int = 1,
                  drop_last: bool = False) -> EpochSampler:
    """The training slice sampler: a plain seeded shuffle (:class:`~mednext_zoo.data.EpochSampler`) or, with
    ``recipe.oversample_fg > 0``, a :class:`ForegroundSampler`. ``presence``: ``N, K`` bool."""
    if recipe.oversample_fg > 0:
        return ForegroundSampler(presence, recipe.oversample_fg, seed, rank, world_size, drop_last)
    return EpochSampler(len(presence), seed, True, rank, world_size, drop_last=drop_last)


def recipe_summary(recipe: TrainingRecipe) -> str:
    """One line for logs and reports, naming only what differs from the defaults."""
    changed = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)
               if getattr(recipe, f.name) != f.default}
    return 'default recipe' + (f' + {changed}' if changed else '')


def recipe_from_config(cfg: Any, updates_per_epoch: Optional[int] = None) -> TrainingRecipe:
    """The recipe of a run config (e.g. ``SegConfig``): every attribute named like a recipe field, and
    ``warmup_epochs * updates_per_epoch`` warm-up steps when both are known."""
    kw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainingRecipe) if hasattr(cfg, f.name)}
    if updates_per_epoch and getattr(cfg, 'warmup_epochs', 0):
        kw['warmup_steps'] = max(int(kw.get('warmup_steps', 0)), int(round(cfg.warmup_epochs * updates_per_epoch)))
    return TrainingRecipe(**kw)


_RENAMED = {'SegRecipe': 'TrainingRecipe'}  # the names before 0.2, kept until 0.3


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        import warnings
        warnings.warn(f'{name} is renamed {_RENAMED[name]} (it serves both tasks); {name} will be removed in 0.3.',
                      DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
