"""A task-agnostic training engine: the loop, with AMP, DDP, EMA, gradient accumulation and clipping, early
stopping, exact resume and one line per epoch.

The task supplies the model, data loaders, loss and metrics through :class:`Task`; the engine knows nothing
about classification. Batches are ``(inputs, targets)`` pairs. The run folder and its checkpoints are
:mod:`.run_dir` and :mod:`.checkpoints`; the process group, seeding and device are :mod:`.distributed` (their
names are re-exported here for older imports).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..errors import UserInputError
from .batched import predict_batches
from .checkpoints import CheckpointStore, save_weights
from .distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    resolve_amp_dtype,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_distributed,
    unwrap,
)
from .run_dir import (
    OPTION_NAMES,
    RunDirGuard,
    append_metrics_log,
    atomic_write_bytes,
    atomic_write_json,
    check_run_dir,
    config_changes,
    create_run_dir,
    holds_checkpoints,
    prepare_run_dir,
    read_metrics_log,
    record_resume,
    trim_metrics_log,
)

__all__ = [
    'EngineConfig', 'Task', 'Engine', 'TrainingDivergedError', 'describe_weights', 'format_duration',
    'format_epoch_line', 'plain_schedule_warnings',
    # re-exported from .distributed, .run_dir and .checkpoints (their home since 0.2)
    'DistInfo', 'setup_distributed', 'cleanup_distributed', 'seed_everything', 'resolve_device', 'unwrap',
    'prepare_run_dir', 'check_run_dir', 'create_run_dir', 'RunDirGuard', 'holds_checkpoints', 'read_metrics_log',
    'atomic_write_bytes', 'atomic_write_json', 'config_changes', 'OPTION_NAMES',
]


# ---------------------------------------------------------------- the epoch line
def format_duration(seconds: float) -> str:
    """``'3 h 05 min'``, ``'12 min 30 s'`` or ``'8.2 s'``."""
    if seconds != seconds or seconds == float('inf'):
        return 'unknown'
    if seconds >= 3600:
        h, rem = divmod(int(round(seconds)), 3600)
        return f'{h} h {rem // 60:02d} min'
    if seconds >= 60:
        m, s = divmod(int(round(seconds)), 60)
        return f'{m} min {s:02d} s'
    return f'{seconds:.1f} s'


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return 'nan' if v != v else f'{v:.4f}' if abs(v) < 1000 else f'{v:.4g}'
    return str(v)


def format_epoch_line(record: Dict[str, Any], epochs: int, metrics: Sequence[str] = (), best: Optional[str] = None,
                      eta_s: Optional[float] = None) -> str:
    """One line per epoch, for the console and log files: epoch, train loss, the validation metrics named in
    ``metrics`` (keys of ``record`` without their ``val_`` prefix; ``best``, the monitored one, marked ``*`` when it
    improved), lr, seconds and ETA, e.g. ``[mednext-zoo] epoch 3/10  train loss 0.4123  val loss 0.3512*  val auc
    0.9310  lr 2.91e-03  12.4 s  ETA 1 min 27 s``.
    """
    parts = [f'[mednext-zoo] epoch {record["epoch"]}/{epochs}', f'train loss {_fmt_value(record["train_loss"])}']
    for k in metrics:
        if f'val_{k}' in record:
            parts.append(f'val {k} {_fmt_value(record[f"val_{k}"])}' + ('*' if k == best else ''))
    parts.append(f'lr {record["lr"]:.2e}')
    parts.append(f'{record.get("time_s", 0.0):.1f} s')
    if eta_s is not None:
        parts.append(f'ETA {format_duration(eta_s)}' if eta_s > 0 else 'done')
    return '  '.join(parts)


@contextlib.contextmanager
def plain_schedule_warnings(total_steps: int, warmup_steps: int):
    """Build a timm cosine / poly scheduler inside this context: timm's log line "Cosine annealing scheduler will
    have no effect on the learning rate since t_initial = t_mul = eta_mul = 1" is held back, and a run too short to
    decay gets a plain warning instead (its warm-up takes every step but the last)."""
    import logging
    import warnings

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return 'will have no effect' not in record.getMessage()

    loggers = [logging.getLogger(f'timm.scheduler.{m}') for m in ('cosine_lr', 'poly_lr')]
    drop = _Drop()
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)
    if total_steps - warmup_steps <= 1:
        what = (f'its {warmup_steps}-step warm-up takes every step but the last' if warmup_steps else
                'a schedule needs more than one step')
        warnings.warn(f'The run is {total_steps} optimiser step(s) long and {what}: the learning rate never decays '
                      f'(it rises to its peak, or stays there). Train more epochs, or shorten the warm-up, for a '
                      f'decaying schedule.', stacklevel=3)


# ---------------------------------------------------------------- task and config
class Task:
    """What the engine needs from a task. Subclass and override.

    ``log_metrics``: validation metrics shown in the one-line epoch summary after ``loss`` and the monitored one.
    """

    log_metrics: Tuple[str, ...] = ()

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss of one micro-batch (a scalar)."""
        raise NotImplementedError

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
        """Metrics of a whole split from the gathered model outputs (on every rank)."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, model: nn.Module) -> bool:
        """Hook, e.g. to freeze / unfreeze; return True if the set of trainable parameters changed."""
        return False

    def on_train_mode(self, model: nn.Module) -> None:
        """Hook called after ``model.train()`` each epoch (e.g. to keep frozen norm layers in eval mode)."""


@dataclass
class EngineConfig:
    """Loop settings. ``monitor`` is a key of the validation metrics (``loss`` is always there)."""
    epochs: int = 30
    accum_steps: int = 1
    amp: str = 'auto'  # auto (CUDA: bf16 if supported else fp16; CPU: off) | none | bf16 | fp16
    device: str = 'auto'
    seed: int = 0
    clip_grad: Optional[float] = None
    ema_decay: float = 0.0  # 0: no EMA; e.g. 0.999 keeps timm's ModelEmaV3 of the weights
    monitor: str = 'loss'
    monitor_mode: str = 'min'
    patience: int = 0  # early stopping after this many epochs without improvement; 0: never
    ckpt_every_steps: int = 0  # also checkpoint every N optimiser steps mid-epoch; 0: end of epoch only
    keep_checkpoints: int = 2  # at least 2: an unreadable newest checkpoint falls back to the one before
    progress: bool = True


class TrainingDivergedError(UserInputError):
    """The loss or the weights became NaN / inf; the last checkpoint written before is intact."""

    def __init__(self, message: str, step: int, lr: float):
        super().__init__(message)
        self.step, self.lr = step, lr


@dataclass
class _Progress:
    """Loop position, internal: ``epoch`` counts completed epochs (the 0-based index of the one in progress);
    everything written for people counts epochs from 1."""
    epoch: int = 0  # epochs completed
    batch: int = 0  # micro-batches of the epoch in progress already trained
    step: int = 0  # optimiser updates so far
    best: Optional[float] = None
    best_epoch: int = 0  # 1-based epoch of the best score; 0: none yet
    bad_epochs: int = 0
    loss_sum: float = 0.0  # training loss of the epoch in progress (sum over samples, this rank)
    loss_n: int = 0


_SETTING_NAMES = {'base_values': 'lr', 'lr_min': 'min lr', 'weight_decay': 'weight decay'}
# what timm's schedulers derive from the settings above and the run length (e.g. ``warmup_steps``, the lr added
# per warm-up step): never shown, a task names what the user changed instead (Engine.fit(changes=...))
_DERIVED = ('warmup_lr_init', 'warmup_t', 'warmup_steps', 't_initial', 'initial_lr', 'decay_t')


def _setting_changes(old: Dict[str, Any], new: Dict[str, Any], skip: Tuple[str, ...] = ()) -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k in skip or k in _DERIVED or old.get(k) == new.get(k):
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(set(map(str, a))) == 1 \
                and len(set(map(str, b))) == 1:
            a, b = a[0] if a else a, b[0] if b else b  # one value per parameter group: show it once
        out.append(f'{_SETTING_NAMES.get(k, k)} {a!r} -> {b!r}'.replace("'", ''))
    return out


def describe_weights(summary: Dict[str, Any]) -> str:
    """Which weights the final metrics come from, for people: e.g. ``the best checkpoint (epoch 7 of 10,
    monitored: val loss, min)``."""
    if not summary.get('validated'):
        return f'the weights of the last epoch ({summary["epochs_run"]}; no validation split to pick a best one)'
    stop = ', stopped early' if summary.get('stopped_early') else ''
    return (f'the best checkpoint (epoch {summary["best_epoch"]} of {summary["epochs_run"]}{stop}, '
            f'monitored: val {summary["monitor"]}, {summary["monitor_mode"]})')


class Engine:
    """Trains ``model`` on ``task`` with checkpoints in ``run_dir``.

    Args:
        model: The network (on CPU; the engine moves and, under DDP, wraps it).
        task: Loss and metrics.
        train_loader, val_loader: Loaders whose sampler has ``set_epoch(epoch, start)``
            (see :class:`mednext_zoo.data.EpochSampler`); the val sampler must not shuffle.
        optimizer: Built over ``model``'s parameters.
        scheduler: A timm scheduler stepped per optimiser update (``step_update(num_updates)``), or None.
        run_dir: Run folder (already prepared with :func:`prepare_run_dir`).
        cfg: Loop settings.
        dist_info: From :func:`setup_distributed`.
        callbacks: Called as ``cb(engine)`` after every optimiser step (logging, tests).

    On resume the optimiser's hyper-parameters and the schedule come from the current configuration (the run's
    own when nothing changed), so e.g. a lower ``--lr`` after a divergence takes effect; what changed is printed
    and recorded in ``run.json``.
    """

    def __init__(self, model: nn.Module, task: Task, train_loader: DataLoader, val_loader: Optional[DataLoader],
                 optimizer: torch.optim.Optimizer, scheduler: Any, run_dir: str, cfg: EngineConfig,
                 dist_info: Optional[DistInfo] = None, callbacks: Iterable[Callable[[Engine], None]] = ()):
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.amp_dtype = resolve_amp_dtype(cfg.amp, self.device)
        self.model = model.to(self.device)
        self.task = task
        self.train_loader, self.val_loader = train_loader, val_loader
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16 else None
        self.run_dir = run_dir
        self.ckpt_dir = os.path.join(run_dir, 'checkpoints')
        self.checkpoints = CheckpointStore(self.ckpt_dir, cfg.keep_checkpoints, self.dist)
        self.callbacks = list(callbacks)
        self.ema = self._build_ema(cfg.ema_decay)
        self.progress = _Progress()
        self.resume_changes: List[str] = []
        self._ddp: Optional[nn.Module] = None
        self._wrap()

    def _build_ema(self, decay: float) -> Optional[nn.Module]:
        """timm's ``ModelEmaV3`` of the weights when ``decay > 0`` (the EMA is what is evaluated and exported)."""
        if not decay or decay <= 0:
            return None
        from timm.utils import ModelEmaV3
        # timm's warm-up form: the average starts close to the model (decay 1 - (1 + step) ** -2/3, capped at
        # ema_decay) instead of carrying the random start for thousands of steps
        return ModelEmaV3(self.model, decay=decay, use_warmup=True)

    # ------------------------------------------------------------ model access
    def _wrap(self) -> None:
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self._ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self._ddp = self.model

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluated and exported: the EMA if enabled, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def autocast(self):
        """The autocast context of the run's AMP dtype on its device, or a no-op context when AMP is off."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _lr(self) -> float:
        return max(g['lr'] for g in self.optimizer.param_groups)

    # ------------------------------------------------------------ checkpoints
    def _check_finite_weights(self, when: str) -> None:
        """Raise :class:`TrainingDivergedError` if a weight is NaN / inf (checked before anything is saved)."""
        bad = [n for n, t in self.model.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
        if bad:
            p = self.progress
            more = f' and {len(bad) - 1} more' if len(bad) > 1 else ''
            self._diverged(f'the weights became non-finite ({bad[0]}{more}) after optimiser step {p.step}', when,
                           p.step)

    def _diverged(self, what: str, where: str, step: int) -> None:
        lr = self._lr()
        latest = self.checkpoints.read_latest()
        base = max(getattr(self.scheduler, 'base_values', None) or [lr])
        peak = f', schedule peak {base:.3g}' if base != lr else ''
        if latest is not None:
            keep = (f'The last good checkpoint (step {latest["step"]}, {latest["epochs_completed"]} epoch(s) '
                    f'completed) in {self.ckpt_dir} is intact: continue from it with a lower learning rate, e.g. '
                    f'--resume --lr {base / 10:.2g}')
        else:
            keep = f'No checkpoint was written yet: start again with a lower learning rate, e.g. --lr {base / 10:.2g}'
        amp = ' or without mixed precision (--amp none)' if self.amp_dtype is not None else ''
        raise TrainingDivergedError(
            f'Training diverged: {what} ({where}; learning rate {lr:.3g}{peak}). Nothing of this step was saved. '
            f'{keep}{amp}.', step, lr)

    def save_checkpoint(self) -> None:
        """Weights (safetensors) and the full training state (safetensors + JSON, no pickle), then an atomic
        pointer to them (rank 0). Non-finite weights are refused (:class:`TrainingDivergedError`)."""
        self._check_finite_weights(f'epoch {self.progress.epoch + 1}, before a checkpoint')
        if not self.dist.is_main:
            return
        p = self.progress
        state = {
            'progress': asdict(p),
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict() if self.scheduler is not None else None,
            'scaler': self.scaler.state_dict() if self.scaler is not None else None,
            'ema': self.ema.module.state_dict() if self.ema is not None else None,
            'rng': rng_state(),
        }
        self.checkpoints.write(self.model.state_dict(), state, p.step, p.epoch, p.batch)

    def has_checkpoint(self) -> bool:
        """Whether the run folder holds a checkpoint to resume from."""
        return bool(self.checkpoints.tags())

    def load_checkpoint(self, changes: Optional[Sequence[str]] = None) -> None:
        """Restore everything from the newest complete checkpoint (falling back past unreadable ones); the
        optimiser's hyper-parameters and the schedule of the current configuration apply from here on.

        Prints where training resumes (step, epoch, batch). ``changes``: what the user changed since the last start,
        in their terms (:func:`config_changes`), printed and recorded in ``run.json``; without it, the changed
        optimiser / schedule settings are named."""
        tag, weights, state = self.checkpoints.find()
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as e:
            raise UserInputError(f'--resume: checkpoint {tag} does not fit this model: {e}') from None
        internal = self._restore_optimizer(state)
        if self.scaler is not None and state['scaler'] is not None:
            self.scaler.load_state_dict(state['scaler'])
        if self.ema is not None and state['ema'] is not None:
            self.ema.module.load_state_dict(state['ema'])
        self.progress = _Progress(**state['progress'])
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.progress.step)  # this step's lr under the schedule
        set_rng_state(state['rng'])
        changes = list(changes) if changes is not None else internal
        self.resume_changes = changes
        if self.dist.is_main:
            print(self._resume_line(tag), flush=True)
            if changes:
                print(f'[mednext-zoo] resuming with changed settings: {"; ".join(changes)} (learning rate now '
                      f'{self._lr():.3g})', flush=True)
            record_resume(self.run_dir, {'time': time.strftime('%Y-%m-%dT%H:%M:%S'), 'from': tag,
                                         'step': self.progress.step, 'changed': changes})
            self.checkpoints.remove_temporary()
            trim_metrics_log(self.run_dir, self.progress.epoch)  # later lines will be written again

    def _restore_optimizer(self, state: Dict[str, Any]) -> List[str]:
        """Load the optimiser's and scheduler's state, keeping the current configuration's hyper-parameters and
        schedule; returns the settings that differ from the checkpoint's (timm's derived ones left out)."""
        fresh_groups = [{k: v for k, v in g.items() if k != 'params'} for g in self.optimizer.param_groups]
        fresh_sched = self.scheduler.state_dict() if self.scheduler is not None else None
        self.optimizer.load_state_dict(state['optimizer'])
        saved_groups = [{k: v for k, v in g.items() if k != 'params'} for g in self.optimizer.param_groups]
        internal: List[str] = []
        for g, fresh, saved in zip(self.optimizer.param_groups, fresh_groups, saved_groups):
            g.update(fresh)  # the current configuration's hyper-parameters (lr is set by the schedule below)
            for c in _setting_changes(saved, fresh, skip=('lr',) if self.scheduler is not None else ()):
                if c not in internal:
                    internal.append(c)
        if self.scheduler is not None and state['scheduler'] is not None:
            internal += [c for c in _setting_changes(state['scheduler'], fresh_sched) if c not in internal]
            self.scheduler.load_state_dict(fresh_sched)
        return internal

    def _resume_line(self, tag: str) -> str:
        """Where training resumes, for people: step, epoch (from 1) and batch."""
        p, epochs = self.progress, self.cfg.epochs
        head = f'[mednext-zoo] resuming at step {p.step} from checkpoint {tag}'
        if p.epoch >= epochs:
            return f'{head}: all {epochs} epochs are trained already (raise --epochs to train longer)'
        where = f'after batch {p.batch} of {len(self.train_loader)}' if p.batch else 'from its first batch'
        return f'{head}: epoch {p.epoch + 1} of {epochs}, {where}'

    def save_weights(self, path: str, model: Optional[nn.Module] = None) -> None:
        """Write the weights of ``model`` (default :attr:`eval_model`: the EMA if enabled) as safetensors, atomically;
        only the main process writes."""
        if self.dist.is_main:
            save_weights(path, (model or self.eval_model).state_dict())

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def infer(self, loader: DataLoader, model: Optional[nn.Module] = None, desc: str = 'eval'
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets of a whole (unshuffled) loader in dataset order, gathered over ranks."""
        model = model if model is not None else self.eval_model
        out, tgt = predict_batches(model, self._bar(loader, desc), self.device, self.autocast)
        if self.dist.enabled:
            parts: List[Any] = [None] * self.dist.world_size
            dist.all_gather_object(parts, (out, tgt))
            n = sum(len(p[1]) for p in parts)
            out = torch.empty((n, *parts[0][0].shape[1:]), dtype=parts[0][0].dtype)
            tgt = torch.empty((n, *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
            for r, (o, t) in enumerate(parts):  # rank r held indices r, r + W, r + 2W, ...
                out[r::self.dist.world_size] = o
                tgt[r::self.dist.world_size] = t
        return out, tgt

    def _bar(self, it, desc: str, total: Optional[int] = None, initial: int = 0):
        if not (self.cfg.progress and self.dist.is_main):
            return it
        from tqdm.auto import tqdm
        return tqdm(it, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True)

    # ------------------------------------------------------------ training
    def _improved(self, score: float) -> bool:
        best = self.progress.best
        if best is None or not math.isfinite(best):
            return math.isfinite(score)
        return score < best if self.cfg.monitor_mode == 'min' else score > best

    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (one tiny all-reduce under DDP, so all ranks stop together)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.dist.enabled:
            dist.all_reduce(bad)
        return not bool(bad.item())

    def fit(self, resume: bool = False, changes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Train until ``cfg.epochs`` (or early stopping); returns a summary with the best score and its
        (1-based) epoch. A NaN / inf loss stops the run with :class:`TrainingDivergedError`.

        Every epoch ends with one line on stdout (rank 0, also with ``progress`` off): see
        :func:`format_epoch_line`. ``changes``: on resume, what the user changed (see :meth:`load_checkpoint`)."""
        cfg = self.cfg
        if cfg.monitor_mode not in ('min', 'max'):
            raise UserInputError(f'monitor mode must be "min" or "max", got {cfg.monitor_mode!r}.')
        self.resume_changes = []
        if resume:
            self.load_checkpoint(changes)
        epoch_s: List[float] = []  # seconds per whole epoch in this session (a resumed partial one scaled up)
        p = self.progress
        stopped_early = False
        t_start = time.time()
        while p.epoch < cfg.epochs:
            t0, first_batch = time.time(), p.batch
            total = self._train_epoch()
            record: Dict[str, Any] = {'epoch': p.epoch + 1, 'step': p.step,
                                      'lr': self.optimizer.param_groups[-1]['lr'], 'train_loss': self._train_loss()}
            improved = self._validate(record) if self.val_loader is not None else False
            record['time_s'] = round(time.time() - t0, 3)
            epoch_s.append(record['time_s'] * total / max(1, total - first_batch))
            p.epoch += 1
            p.batch = 0
            p.loss_sum, p.loss_n = 0.0, 0
            stopped_early = bool(cfg.patience and p.bad_epochs >= cfg.patience)
            if self.dist.is_main:
                append_metrics_log(self.run_dir, record)
            self.save_checkpoint()
            self._print_epoch(record, improved, stopped_early, epoch_s)
            barrier(self.dist)
            if stopped_early:
                break
        if self.val_loader is None and self.dist.is_main:
            self.save_weights(os.path.join(self.ckpt_dir, 'best.safetensors'))
        barrier(self.dist)
        return {'epochs_run': p.epoch, 'epochs_planned': cfg.epochs, 'steps': p.step, 'best_score': p.best,
                'best_epoch': p.best_epoch if self.val_loader is not None else p.epoch,
                'validated': self.val_loader is not None, 'monitor': cfg.monitor, 'monitor_mode': cfg.monitor_mode,
                'stopped_early': stopped_early, 'train_time_s': time.time() - t_start,
                'resume_changes': list(self.resume_changes)}

    def _train_epoch(self) -> int:
        """Train the rest of the epoch in progress (from batch ``progress.batch``); returns its number of batches."""
        cfg, p = self.cfg, self.progress
        if self.task.on_epoch_start(p.epoch, self.model) and self.dist.enabled:
            self._wrap()
        self.train_loader.sampler.set_epoch(p.epoch, start=p.batch * self.train_loader.batch_size)
        total = p.batch + len(self.train_loader)
        self._ddp.train()
        self.task.on_train_mode(self.model)
        if self.ema is not None:
            self.ema.module.eval()
        bar = self._bar(self.train_loader, f'epoch {p.epoch + 1}/{cfg.epochs}', total=total, initial=p.batch)
        self.optimizer.zero_grad(set_to_none=True)
        for inputs, targets in bar:
            p.batch += 1
            update = p.batch % max(1, int(cfg.accum_steps)) == 0 or p.batch == total
            loss = self._backward(inputs, targets, update)
            if update:
                self._optimizer_step(loss, bar, total)
        self._check_finite_weights(f'end of epoch {p.epoch + 1}')
        return total

    def _backward(self, inputs: torch.Tensor, targets: Any, update: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch (gradients synchronised under DDP only on ``update``); returns
        the loss and adds it to the epoch's running training loss."""
        p, accum = self.progress, max(1, int(self.cfg.accum_steps))
        inputs = inputs.to(self.device, non_blocking=True)
        targets = torch.as_tensor(targets).to(self.device, non_blocking=True)
        sync = contextlib.nullcontext() if (update or not self.dist.enabled) else self._ddp.no_sync()
        with sync:
            with self.autocast():
                loss = self.task.loss(self._ddp, inputs, targets)
            if not self._loss_is_finite(loss):
                self._diverged(f'the loss became {float(loss.detach()):g} at optimiser step {p.step + 1}',
                               f'epoch {p.epoch + 1}, batch {p.batch}', p.step + 1)
            scaled = loss / accum
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        p.loss_sum += float(loss.detach()) * len(targets)
        p.loss_n += len(targets)
        return loss

    def _optimizer_step(self, loss: torch.Tensor, bar: Any, total: int) -> None:
        """Clip, step the optimiser (through the grad scaler under fp16), the schedule and the EMA; checkpoint
        mid-epoch every ``ckpt_every_steps``; call the callbacks."""
        cfg, p = self.cfg, self.progress
        if self.scaler is not None and cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        p.step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=p.step)
        if self.ema is not None:
            self.ema.update(self.model, step=p.step)
        if hasattr(bar, 'set_postfix'):
            bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{self.optimizer.param_groups[0]["lr"]:.2e}')
        if cfg.ckpt_every_steps and p.step % cfg.ckpt_every_steps == 0 and p.batch < total:
            self.save_checkpoint()
        for cb in self.callbacks:
            cb(self)

    def _train_loss(self) -> float:
        """The epoch's mean training loss per sample, over every rank."""
        p = self.progress
        if not self.dist.enabled:
            return p.loss_sum / max(1, p.loss_n)
        t = torch.tensor([p.loss_sum, float(p.loss_n)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0] / t[1].clamp(min=1))

    def _validate(self, record: Dict[str, Any]) -> bool:
        """Score the validation split into ``record`` (``val_<metric>``); keep the best weights. Returns whether the
        monitored metric improved."""
        cfg, p = self.cfg, self.progress
        out, tgt = self.infer(self.val_loader, desc='val')
        metrics = self.task.evaluate(out, tgt)
        record.update({f'val_{k}': v for k, v in metrics.items() if np.isscalar(v)})
        if cfg.monitor not in metrics:
            raise UserInputError(f'Unknown metric {cfg.monitor!r} to monitor; choose one of '
                                 f'{", ".join(k for k, v in metrics.items() if np.isscalar(v))}.')
        score = float(metrics[cfg.monitor])
        if not self._improved(score):
            p.bad_epochs += 1
            return False
        p.best, p.best_epoch, p.bad_epochs = score, p.epoch + 1, 0
        self.save_weights(os.path.join(self.ckpt_dir, 'best.safetensors'))
        return True

    def _print_epoch(self, record: Dict[str, Any], improved: bool, stop: bool, epoch_s: List[float]) -> None:
        """The epoch's line on stdout (rank 0): see :func:`format_epoch_line`."""
        cfg = self.cfg
        if not self.dist.is_main:
            return
        shown = dict.fromkeys(['loss', cfg.monitor, *self.task.log_metrics])
        eta = float(np.mean(epoch_s)) * (cfg.epochs - self.progress.epoch) if not stop else 0.0
        print(format_epoch_line(record, cfg.epochs, list(shown), cfg.monitor if improved else None, eta)
              + (f'  (early stop: no improvement in {cfg.patience} epochs)' if stop else ''), flush=True)
