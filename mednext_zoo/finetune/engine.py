"""A task-agnostic training engine: loop, atomic checkpoints, exact resume, AMP, DDP, logging, progress bar.

The task supplies the model, data loaders, loss and metrics through :class:`Task`; the engine knows nothing
about classification. Batches are ``(inputs, targets)`` pairs.

Run directory layout written here::

    RUN_DIR/run.json                 identity of the run (checked on --resume), and what each resume changed
    RUN_DIR/metrics.jsonl            one JSON line per epoch (epochs counted from 1)
    RUN_DIR/checkpoints/latest.json  pointer to the newest complete checkpoint (replaced atomically)
    RUN_DIR/checkpoints/step-N.safetensors                     model weights after N optimiser steps
    RUN_DIR/checkpoints/step-N.state.safetensors + .state.json optimiser, scheduler, scaler, EMA, RNG and loop
                                                               state: tensors in safetensors, the rest JSON
    RUN_DIR/checkpoints/best.safetensors                       weights at the best monitored score

Nothing here is pickled, so resuming a run folder from elsewhere runs no code. The newest two checkpoints are
kept; an unreadable or truncated one is set aside (``*.unreadable``) and the previous one is used.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .._atomic import atomic_path, atomic_write_bytes
from ..errors import UserInputError
from .state import load_state, save_state

__all__ = [
    'EngineConfig', 'Task', 'Engine', 'DistInfo', 'setup_distributed', 'cleanup_distributed', 'prepare_run_dir',
    'check_run_dir', 'create_run_dir', 'RunDirGuard', 'holds_checkpoints', 'TrainingDivergedError',
    'describe_weights', 'read_metrics_log', 'atomic_write_bytes', 'atomic_write_json', 'seed_everything',
    'resolve_device', 'unwrap', 'format_duration', 'format_epoch_line', 'config_changes', 'plain_schedule_warnings',
]


# ---------------------------------------------------------------- small utilities
def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically; numpy scalars / arrays and tuples become numbers / lists, any other
    unknown type its ``str``."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + '\n').encode())


def _atomic_save(path: str, save_fn: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        save_fn(str(tmp))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def read_metrics_log(path: str) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line torn by a crash mid-write (unparseable JSON) is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    return records


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (numpy with ``seed % 2**32``)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


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


# settings whose command-line option is not ``--name-with-dashes`` (booleans print as on / off)
OPTION_NAMES = {'ema_decay': '--ema', 'num_workers': '--workers', 'n_bootstrap': '--bootstrap',
                'ckpt_every_steps': '--ckpt-every', 'augment': 'augmentation', 'export': 'export'}


def config_changes(run_dir: str, new: Dict[str, Any], option_names: Optional[Dict[str, str]] = None,
                   ignore: Iterable[str] = ('resume', 'overwrite', 'progress', 'out')) -> List[str]:
    """What the user changed since the last start of a run: ``--option OLD -> NEW`` for every setting of ``new``
    that differs from the run's ``config.json`` (nothing when the file is missing or unreadable).

    ``option_names`` maps a setting to its command-line option where they differ (default :data:`OPTION_NAMES`;
    others are shown as ``--name-with-dashes``).
    """
    try:
        with open(os.path.join(run_dir, 'config.json')) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    names, skip, out = OPTION_NAMES if option_names is None else option_names, set(ignore), []

    def fmt(x: Any) -> str:
        if isinstance(x, list):
            return ','.join(fmt(v) for v in x)
        if isinstance(x, bool):
            return 'on' if x else 'off'
        return 'none' if x is None else f'{x:g}' if isinstance(x, float) else str(x)

    norm = lambda v: json.loads(json.dumps(v, default=_json_default))  # noqa: E731  (tuples as lists, as stored)
    for k, v in new.items():
        if k in skip or k.startswith('_') or k not in old or norm(v) == old[k]:
            continue
        out.append(f'{names.get(k, "--" + k.replace("_", "-"))} {fmt(old[k])} -> {fmt(norm(v))}')
    return out


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


def resolve_device(device: str = 'auto', local_rank: int = 0) -> torch.device:
    """``'auto'``: ``cuda:{local_rank}`` when a GPU is available, else CPU; anything else as ``torch.device``. Raises
    UserInputError when CUDA is asked for and none is available."""
    if device in ('auto', '', None):
        return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserInputError(f'--device {device} asked for CUDA but no GPU is available; use --device cpu.')
    return dev


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper, or ``model`` itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    """This process's place in a ``torchrun`` launch (``rank`` 0 of ``world_size`` 1 when not distributed)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that writes files and logs)."""
        return self.rank == 0


_GROUP_USERS = 0  # setup_distributed calls not yet matched by cleanup_distributed


def setup_distributed(device: str = 'auto') -> DistInfo:
    """Join the process group started by ``torchrun`` (gloo on CPU, NCCL on CUDA); a no-op otherwise.

    Calls nest: the group lives until every ``setup_distributed`` has had its ``cleanup_distributed``, so that a
    caller running several fits in one launch (``mednext-zoo reproduce --seeds 3``) keeps one group throughout
    (torchrun's store does not support creating the default group a second time).
    """
    global _GROUP_USERS
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ.get('RANK', '0')), int(os.environ.get('LOCAL_RANK', '0'))
    _GROUP_USERS += 1
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ('auto', '', None) or str(device).startswith('cuda')
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return DistInfo(rank, world, local_rank)


def cleanup_distributed() -> None:
    """Undo one :func:`setup_distributed`; the process group is destroyed when the last caller has cleaned up."""
    global _GROUP_USERS
    _GROUP_USERS = max(0, _GROUP_USERS - 1)
    if _GROUP_USERS == 0 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _broadcast_obj(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- run directory
def check_run_dir(run_dir: str, identity: Dict[str, Any], resume: bool = False, overwrite: bool = False) -> bool:
    """Check that ``run_dir`` may be started, replaced or resumed, without touching it. Returns True when an
    existing run is resumed.

    An existing non-empty folder is never overwritten unless ``overwrite`` (and then only a run folder);
    ``resume`` requires that the folder was made for the same ``identity`` (e.g. the same model and classes).
    """
    run_json = os.path.join(run_dir, 'run.json')
    exists = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
    if resume and overwrite:
        raise UserInputError('Give either --resume or --overwrite, not both.')
    if resume:
        if not os.path.isfile(run_json):
            if not exists:
                raise UserInputError(f'--resume: {run_dir} holds no run to resume; drop --resume to start one.')
            raise UserInputError(f'--resume: {run_dir} is not a mednext-zoo run folder (no run.json).')
        with open(run_json) as f:
            old = json.load(f).get('identity', {})
        diffs = [f'{k}: run has {old.get(k)!r}, now {v!r}' for k, v in identity.items() if old.get(k) != v]
        if diffs:
            raise UserInputError(f'--resume: {run_dir} was made for a different setup ({"; ".join(diffs)}). '
                                 f'Use a new --out folder, or --overwrite to replace it.')
        return True
    if exists:
        if not overwrite:
            raise UserInputError(f'{run_dir} already exists and is not empty; pass --resume to continue that run, '
                                 f'--overwrite to replace it, or choose another --out.')
        if not os.path.isfile(run_json) and any(not n.startswith('.') for n in os.listdir(run_dir)):
            raise UserInputError(f'--overwrite refuses to delete {run_dir}: it is not a mednext-zoo run folder.')
    return False


def create_run_dir(run_dir: str, identity: Dict[str, Any], overwrite: bool = False) -> None:
    """Start a new run in ``run_dir`` (rank 0, once set-up has succeeded): an earlier run there is removed when
    ``overwrite`` (already checked by :func:`check_run_dir`), then ``run.json`` is written."""
    if overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(os.path.join(run_dir, 'run.json'),
                      {'identity': identity, 'created': time.strftime('%Y-%m-%dT%H:%M:%S')})


def prepare_run_dir(run_dir: str, identity: Dict[str, Any], resume: bool = False, overwrite: bool = False,
                    is_main: bool = True) -> bool:
    """:func:`check_run_dir`, then (new runs, rank 0) :func:`create_run_dir`. Returns True when resuming.

    Tasks call the two separately, with the model and data built in between, so a start whose set-up fails
    writes nothing (see :class:`RunDirGuard`)."""
    resumed = check_run_dir(run_dir, identity, resume, overwrite)
    if not resumed and is_main:
        create_run_dir(run_dir, identity, overwrite)
    return resumed


def holds_checkpoints(run_dir: str) -> bool:
    """True if ``run_dir`` (or a fold folder inside it) holds a training checkpoint or best weights."""
    for _, _, files in os.walk(run_dir):
        if any(f.startswith('step-') or f == 'best.safetensors' for f in files):
            return True
    return False


class RunDirGuard:
    """Context manager around one start of a run: if it fails (any exception, Ctrl-C included) after creating
    the run folder but before writing a checkpoint, the folder is removed, so the same command can be run again
    without ``--overwrite``. A folder this start did not create (``--resume``), or one holding checkpoints, is
    never removed.

    Call :meth:`created` right after :func:`create_run_dir`.
    """

    def __init__(self, run_dir: str, is_main: bool = True):
        self.run_dir, self.is_main, self._created = run_dir, is_main, False

    def created(self) -> None:
        """Record that this start created the run folder (so a failure before the first checkpoint removes it)."""
        self._created = True

    def __enter__(self) -> RunDirGuard:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self._created and self.is_main and os.path.isdir(self.run_dir) \
                and not holds_checkpoints(self.run_dir):
            shutil.rmtree(self.run_dir, ignore_errors=True)
            print(f'[mednext-zoo] removed {self.run_dir}: the run stopped before its first checkpoint',
                  file=sys.stderr, flush=True)
        return False


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


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    amp = (amp or 'none').lower()
    if amp == 'auto':
        if device.type != 'cuda':
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp in ('none', 'off', 'fp32', 'false'):
        return None
    if amp == 'bf16':
        return torch.bfloat16
    if amp == 'fp16':
        if device.type != 'cuda':
            raise UserInputError('--amp fp16 needs a CUDA device; on CPU use --amp bf16.')
        return torch.float16
    raise UserInputError(f'Unknown --amp {amp!r}; use auto, none, bf16 or fp16.')


def _rng_state() -> Dict[str, Any]:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


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
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        self.model = model.to(self.device)
        self.task = task
        self.train_loader, self.val_loader = train_loader, val_loader
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16 else None
        self.run_dir = run_dir
        self.ckpt_dir = os.path.join(run_dir, 'checkpoints')
        self.callbacks = list(callbacks)
        self.ema = None
        if cfg.ema_decay and cfg.ema_decay > 0:
            from timm.utils import ModelEmaV3
            # timm's warm-up form: the average starts close to the model (decay 1 - (1 + step) ** -2/3, capped at
            # ema_decay) instead of carrying the random start for thousands of steps
            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay, use_warmup=True)
        self.progress = _Progress()
        self._ddp: Optional[nn.Module] = None
        self._wrap()

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
    def _latest_path(self) -> str:
        return os.path.join(self.ckpt_dir, 'latest.json')

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
        latest = self._read_latest()
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
        from safetensors.torch import save_file
        p = self.progress
        tag = f'step-{p.step:08d}'
        weights = os.path.join(self.ckpt_dir, f'{tag}.safetensors')
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        _atomic_save(weights, lambda t: save_file(sd, t))
        state = {
            'progress': asdict(p),
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict() if self.scheduler is not None else None,
            'scaler': self.scaler.state_dict() if self.scaler is not None else None,
            'ema': self.ema.module.state_dict() if self.ema is not None else None,
            'rng': _rng_state(),
        }
        save_state(os.path.join(self.ckpt_dir, f'{tag}.state.safetensors'),
                   os.path.join(self.ckpt_dir, f'{tag}.state.json'), state,
                   extra={'weights': os.path.basename(weights), 'weights_bytes': os.path.getsize(weights)})
        atomic_write_json(self._latest_path(), {'tag': tag, 'weights': os.path.basename(weights),
                                                'state': f'{tag}.state.json', 'step': p.step,
                                                'epochs_completed': p.epoch, 'batches_into_next_epoch': p.batch})
        self._prune(keep=tag)

    def _read_latest(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self._latest_path()) as f:
                latest = json.load(f)
            return latest if isinstance(latest, dict) and 'tag' in latest else None
        except (OSError, ValueError):
            return None

    def _tags(self) -> List[str]:
        """Checkpoint tags on disk, newest first (names are zero-padded step counts)."""
        if not os.path.isdir(self.ckpt_dir):
            return []
        return sorted({n.split('.', 1)[0] for n in os.listdir(self.ckpt_dir)
                       if n.startswith('step-') and not n.endswith('.unreadable')}, reverse=True)

    def _prune(self, keep: str) -> None:
        for t in self._tags()[max(2, self.cfg.keep_checkpoints):]:
            if t == keep:
                continue
            for ext in ('.safetensors', '.state.safetensors', '.state.json', '.state.pt'):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.ckpt_dir, t + ext))

    def has_checkpoint(self) -> bool:
        """Whether the run folder holds a checkpoint to resume from."""
        return bool(self._tags())

    def _read_checkpoint(self, tag: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """Weights and training state of ``tag``; ValueError / OSError if a file is missing, truncated or damaged."""
        from safetensors.torch import load_file
        state, doc = load_state(os.path.join(self.ckpt_dir, f'{tag}.state.safetensors'),
                                os.path.join(self.ckpt_dir, f'{tag}.state.json'))
        wpath = os.path.join(self.ckpt_dir, doc['weights'])
        if os.path.getsize(wpath) != doc.get('weights_bytes'):
            raise ValueError(f'{doc["weights"]} has {os.path.getsize(wpath)} bytes, the state says '
                             f'{doc.get("weights_bytes")} (truncated or replaced)')
        try:
            weights = load_file(wpath)
        except Exception as e:  # noqa: BLE001 -- safetensors' own error type for a damaged file
            raise ValueError(f'{doc["weights"]}: {e}') from e
        return weights, state

    def _find_checkpoint(self) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, Any]]:
        """The newest checkpoint that reads completely; unreadable newer ones are reported and set aside."""
        latest = self._read_latest()
        order = self._tags()
        if latest is not None and latest['tag'] in order:  # normally the newest; kept first if not
            order.remove(latest['tag'])
            order.insert(0, latest['tag'])
        failures: List[Tuple[str, str]] = []
        for tag in order:
            if not os.path.isfile(os.path.join(self.ckpt_dir, f'{tag}.state.json')) and not os.path.isfile(
                    os.path.join(self.ckpt_dir, f'{tag}.state.safetensors')):
                continue  # an old-format (pickle) or half-pruned tag: not a candidate
            try:
                weights, state = self._read_checkpoint(tag)
            except (OSError, ValueError, KeyError, TypeError) as e:
                failures.append((tag, str(e)))
                continue
            if failures and self.dist.is_main:
                print(f'[mednext-zoo] --resume: checkpoint {", ".join(t for t, _ in failures)} is unreadable '
                      f'({"; ".join(r for _, r in failures)}); falling back to {tag} '
                      f'(step {state["progress"]["step"]}). The unreadable files are kept as *.unreadable.',
                      file=sys.stderr, flush=True)
            self._set_aside([t for t, _ in failures])
            return tag, weights, state
        if any(n.endswith('.state.pt') for n in (os.listdir(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else [])):
            raise UserInputError(
                f'--resume: {self.ckpt_dir} holds checkpoints in the old pickle format (step-*.state.pt), which '
                f'--resume no longer loads: unpickling a file can run code. Start the run again with --overwrite, '
                f'or keep its best weights (checkpoints/best.safetensors, no pickle) and pass them as --pretrained.')
        if failures:
            raise UserInputError(f'--resume: no readable checkpoint in {self.ckpt_dir} '
                                 f'({"; ".join(f"{t}: {r}" for t, r in failures)}). Start again with --overwrite.')
        raise UserInputError(f'--resume: no checkpoint in {self.ckpt_dir}; the run stopped before its first '
                             f'checkpoint. Start it again with --overwrite.')

    def _set_aside(self, tags: List[str]) -> None:
        _barrier(self.dist)  # every rank has read its candidates before rank 0 renames any
        if not self.dist.is_main:
            return
        for tag in tags:
            for ext in ('.safetensors', '.state.safetensors', '.state.json'):
                path = os.path.join(self.ckpt_dir, tag + ext)
                if os.path.exists(path):
                    os.replace(path, path + '.unreadable')

    def load_checkpoint(self, changes: Optional[Sequence[str]] = None) -> None:
        """Restore everything from the newest complete checkpoint (falling back past unreadable ones); the
        optimiser's hyper-parameters and the schedule of the current configuration apply from here on.

        Prints where training resumes (step, epoch, batch). ``changes``: what the user changed since the last start,
        in their terms (:func:`config_changes`), printed and recorded in ``run.json``; without it, the changed
        optimiser / schedule settings are named."""
        tag, weights, state = self._find_checkpoint()
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as e:
            raise UserInputError(f'--resume: checkpoint {tag} does not fit this model: {e}') from None
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
        if self.scaler is not None and state['scaler'] is not None:
            self.scaler.load_state_dict(state['scaler'])
        if self.ema is not None and state['ema'] is not None:
            self.ema.module.load_state_dict(state['ema'])
        self.progress = _Progress(**state['progress'])
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.progress.step)  # this step's lr under the schedule
        _set_rng_state(state['rng'])
        changes = list(changes) if changes is not None else internal
        self.resume_changes = changes
        if self.dist.is_main:
            print(self._resume_line(tag), flush=True)
            if changes:
                print(f'[mednext-zoo] resuming with changed settings: {"; ".join(changes)} (learning rate now '
                      f'{self._lr():.3g})', flush=True)
            self._record_resume(tag, changes)
            for n in os.listdir(self.ckpt_dir):  # temporary files of a write that was killed half-way
                if n.startswith('.') and '.tmp-' in n:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.ckpt_dir, n))
            # drop log lines written after this checkpoint (they will be written again)
            log = os.path.join(self.run_dir, 'metrics.jsonl')
            if os.path.isfile(log):
                kept = [r for r in read_metrics_log(log) if r.get('epoch', 0) <= self.progress.epoch]
                atomic_write_bytes(log, ''.join(json.dumps(r, default=_json_default) + '\n' for r in kept).encode())

    def _resume_line(self, tag: str) -> str:
        """Where training resumes, for people: step, epoch (from 1) and batch."""
        p, epochs = self.progress, self.cfg.epochs
        head = f'[mednext-zoo] resuming at step {p.step} from checkpoint {tag}'
        if p.epoch >= epochs:
            return f'{head}: all {epochs} epochs are trained already (raise --epochs to train longer)'
        where = f'after batch {p.batch} of {len(self.train_loader)}' if p.batch else 'from its first batch'
        return f'{head}: epoch {p.epoch + 1} of {epochs}, {where}'

    def _record_resume(self, tag: str, changes: List[str]) -> None:
        path = os.path.join(self.run_dir, 'run.json')
        try:
            with open(path) as f:
                run = json.load(f)
        except (OSError, ValueError):
            return
        run.setdefault('resumes', []).append({'time': time.strftime('%Y-%m-%dT%H:%M:%S'), 'from': tag,
                                              'step': self.progress.step, 'changed': changes})
        atomic_write_json(path, run)

    def save_weights(self, path: str, model: Optional[nn.Module] = None) -> None:
        """Write the weights of ``model`` (default :attr:`eval_model`: the EMA if enabled) as safetensors, atomically;
        only the main process writes."""
        if not self.dist.is_main:
            return
        from safetensors.torch import save_file
        sd = {k: v.detach().cpu().contiguous() for k, v in (model or self.eval_model).state_dict().items()}
        _atomic_save(path, lambda t: save_file(sd, t))

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def infer(self, loader: DataLoader, model: Optional[nn.Module] = None, desc: str = 'eval'
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets of a whole (unshuffled) loader in dataset order, gathered over ranks."""
        model = model if model is not None else self.eval_model
        was_training = model.training
        model.eval()
        outs, tgts = [], []
        for inputs, targets in self._bar(loader, desc):
            with self.autocast():
                out = model(inputs.to(self.device, non_blocking=True))
            outs.append(out.float().cpu())
            tgts.append(torch.as_tensor(targets).cpu())
        model.train(was_training)
        out = torch.cat(outs) if outs else torch.empty(0)
        tgt = torch.cat(tgts) if tgts else torch.empty(0, dtype=torch.long)
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

    def _log(self, record: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(os.path.join(self.run_dir, 'metrics.jsonl'), 'a') as f:
            f.write(json.dumps(record, default=_json_default) + '\n')
            f.flush()
            os.fsync(f.fileno())

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
        self.resume_changes: List[str] = []
        if resume:
            self.load_checkpoint(changes)
        epoch_s: List[float] = []  # seconds per whole epoch in this session (a resumed partial one scaled up)
        p = self.progress
        accum = max(1, int(cfg.accum_steps))
        sampler = self.train_loader.sampler
        bs = self.train_loader.batch_size
        stopped_early = False
        t_start = time.time()
        while p.epoch < cfg.epochs:
            if self.task.on_epoch_start(p.epoch, self.model) and self.dist.enabled:
                self._wrap()
            sampler.set_epoch(p.epoch, start=p.batch * bs)
            total = p.batch + len(self.train_loader)
            self._ddp.train()
            self.task.on_train_mode(self.model)
            if self.ema is not None:
                self.ema.module.eval()
            t0, first_batch = time.time(), p.batch
            bar = self._bar(self.train_loader, f'epoch {p.epoch + 1}/{cfg.epochs}', total=total, initial=p.batch)
            self.optimizer.zero_grad(set_to_none=True)
            for inputs, targets in bar:
                inputs = inputs.to(self.device, non_blocking=True)
                targets = torch.as_tensor(targets).to(self.device, non_blocking=True)
                p.batch += 1
                update = p.batch % accum == 0 or p.batch == total
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
                if not update:
                    continue
                if self.scaler is not None:
                    if cfg.clip_grad:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    if cfg.clip_grad:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
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
            self._check_finite_weights(f'end of epoch {p.epoch + 1}')
            train_loss = p.loss_sum / max(1, p.loss_n)
            if self.dist.enabled:
                t = torch.tensor([p.loss_sum, float(p.loss_n)], dtype=torch.float64)
                dist.all_reduce(t)
                train_loss = float(t[0] / t[1].clamp(min=1))
            record: Dict[str, Any] = {'epoch': p.epoch + 1, 'step': p.step,
                                      'lr': self.optimizer.param_groups[-1]['lr'], 'train_loss': train_loss}
            improved = False
            if self.val_loader is not None:
                out, tgt = self.infer(self.val_loader, desc='val')
                metrics = self.task.evaluate(out, tgt)
                record.update({f'val_{k}': v for k, v in metrics.items() if np.isscalar(v)})
                score = float(metrics.get(cfg.monitor, float('nan')))
                if cfg.monitor not in metrics:
                    raise UserInputError(f'Unknown metric {cfg.monitor!r} to monitor; choose one of '
                                         f'{", ".join(k for k, v in metrics.items() if np.isscalar(v))}.')
                improved = self._improved(score)
                if improved:
                    p.best, p.best_epoch, p.bad_epochs = score, p.epoch + 1, 0
                    self.save_weights(os.path.join(self.ckpt_dir, 'best.safetensors'))
                else:
                    p.bad_epochs += 1
            record['time_s'] = round(time.time() - t0, 3)
            epoch_s.append(record['time_s'] * total / max(1, total - first_batch))
            p.epoch += 1
            p.batch = 0
            p.loss_sum, p.loss_n = 0.0, 0
            stop = bool(cfg.patience and p.bad_epochs >= cfg.patience)
            self._log(record)
            self.save_checkpoint()
            if self.dist.is_main:
                shown = dict.fromkeys(['loss', cfg.monitor, *self.task.log_metrics])
                eta = float(np.mean(epoch_s)) * (cfg.epochs - p.epoch) if not stop else 0.0
                print(format_epoch_line(record, cfg.epochs, list(shown), cfg.monitor if improved else None, eta)
                      + (f'  (early stop: no improvement in {cfg.patience} epochs)' if stop else ''), flush=True)
            _barrier(self.dist)
            if stop:
                stopped_early = True
                break
        if self.val_loader is None and self.dist.is_main:
            self.save_weights(os.path.join(self.ckpt_dir, 'best.safetensors'))
        _barrier(self.dist)
        return {'epochs_run': p.epoch, 'epochs_planned': cfg.epochs, 'steps': p.step, 'best_score': p.best,
                'best_epoch': p.best_epoch if self.val_loader is not None else p.epoch,
                'validated': self.val_loader is not None, 'monitor': cfg.monitor, 'monitor_mode': cfg.monitor_mode,
                'stopped_early': stopped_early, 'train_time_s': time.time() - t_start,
                'resume_changes': list(self.resume_changes)}
