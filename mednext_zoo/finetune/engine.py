"""A task-agnostic training engine: loop, atomic checkpoints, exact resume, AMP, DDP, logging, progress bar.

The task supplies the model, data loaders, loss and metrics through :class:`Task`; the engine knows nothing
about classification. Batches are ``(inputs, targets)`` pairs.

Run directory layout written here::

    RUN_DIR/run.json                 identity of the run (checked on --resume)
    RUN_DIR/metrics.jsonl            one JSON line per epoch
    RUN_DIR/checkpoints/latest.json  pointer to the newest complete checkpoint (replaced atomically)
    RUN_DIR/checkpoints/step-N.safetensors / step-N.state.pt   weights / optimiser, scheduler, scaler, RNG state
    RUN_DIR/checkpoints/best.safetensors                      weights at the best monitored score
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .._atomic import atomic_path, atomic_write_bytes
from ..errors import UserInputError

__all__ = [
    'EngineConfig', 'Task', 'Engine', 'DistInfo', 'setup_distributed', 'cleanup_distributed', 'prepare_run_dir',
    'atomic_write_bytes', 'atomic_write_json', 'seed_everything', 'resolve_device', 'unwrap',
]


# ---------------------------------------------------------------- small utilities
def atomic_write_json(path: str, obj: Any) -> None:
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(device: str = 'auto', local_rank: int = 0) -> torch.device:
    if device in ('auto', '', None):
        return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise UserInputError(f'--device {device} asked for CUDA but no GPU is available; use --device cpu.')
    return dev


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
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
def prepare_run_dir(run_dir: str, identity: Dict[str, Any], resume: bool = False, overwrite: bool = False,
                    is_main: bool = True) -> bool:
    """Create ``run_dir`` or check it may be resumed. Returns True when an existing run is resumed.

    An existing non-empty folder is never overwritten unless ``overwrite``; ``resume`` requires that the folder
    was made for the same ``identity`` (e.g. the same model and classes).
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
        if is_main:
            if not os.path.isfile(run_json) and any(not n.startswith('.') for n in os.listdir(run_dir)):
                raise UserInputError(f'--overwrite refuses to delete {run_dir}: it is not a mednext-zoo run folder.')
            shutil.rmtree(run_dir)
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_json(run_json, {'identity': identity, 'created': time.strftime('%Y-%m-%dT%H:%M:%S')})
    return False


# ---------------------------------------------------------------- task and config
class Task:
    """What the engine needs from a task. Subclass and override."""

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
    keep_checkpoints: int = 1
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


@dataclass
class _Progress:
    epoch: int = 0  # epoch in progress
    batch: int = 0  # micro-batches of this epoch already trained
    step: int = 0  # optimiser updates so far
    best: Optional[float] = None
    best_epoch: int = -1
    bad_epochs: int = 0
    loss_sum: float = 0.0  # training loss of the epoch in progress (sum over samples, this rank)
    loss_n: int = 0


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
            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.progress = _Progress()
        self._ddp: Optional[nn.Module] = None
        self._wrap()
        if self.dist.is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)

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
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------ checkpoints
    def _latest_path(self) -> str:
        return os.path.join(self.ckpt_dir, 'latest.json')

    def save_checkpoint(self) -> None:
        """Weights (safetensors) and full training state, then an atomic pointer to them (rank 0)."""
        if not self.dist.is_main:
            return
        from safetensors.torch import save_file
        p = self.progress
        tag = f'step-{p.step:08d}-e{p.epoch}-b{p.batch}'
        weights = os.path.join(self.ckpt_dir, f'{tag}.safetensors')
        state_file = os.path.join(self.ckpt_dir, f'{tag}.state.pt')
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
        _atomic_save(state_file, lambda t: torch.save(state, t))
        prev = self._read_latest()
        atomic_write_json(self._latest_path(), {'weights': os.path.basename(weights),
                                                'state': os.path.basename(state_file),
                                                'epoch': p.epoch, 'batch': p.batch, 'step': p.step})
        self._prune(keep={os.path.basename(weights), os.path.basename(state_file)}, prev=prev)

    def _read_latest(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self._latest_path()) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None

    def _prune(self, keep: set, prev: Optional[Dict[str, Any]]) -> None:
        tags = sorted({n.rsplit('.', 2)[0] if n.endswith('.state.pt') else n.rsplit('.', 1)[0]
                       for n in os.listdir(self.ckpt_dir) if n.startswith('step-')})
        for t in tags[:-max(1, self.cfg.keep_checkpoints)]:
            for ext in ('.safetensors', '.state.pt'):
                if t + ext not in keep:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.ckpt_dir, t + ext))

    def has_checkpoint(self) -> bool:
        return self._read_latest() is not None

    def load_checkpoint(self) -> None:
        """Restore everything from the newest complete checkpoint."""
        from safetensors.torch import load_file
        latest = self._read_latest()
        if latest is None:
            raise UserInputError(f'--resume: no checkpoint in {self.ckpt_dir}; the run stopped before its first '
                                 f'checkpoint. Start it again with --overwrite.')
        weights = load_file(os.path.join(self.ckpt_dir, latest['weights']))
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as e:
            raise UserInputError(f'--resume: checkpoint {latest["weights"]} does not fit this model: '
                                 f'{str(e).splitlines()[0]}') from None
        state = torch.load(os.path.join(self.ckpt_dir, latest['state']), map_location='cpu', weights_only=False)
        self.optimizer.load_state_dict(state['optimizer'])
        if self.scheduler is not None and state['scheduler'] is not None:
            self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler is not None and state['scaler'] is not None:
            self.scaler.load_state_dict(state['scaler'])
        if self.ema is not None and state['ema'] is not None:
            self.ema.module.load_state_dict(state['ema'])
        self.progress = _Progress(**state['progress'])
        _set_rng_state(state['rng'])
        if self.dist.is_main:  # temporary files of a write that was killed half-way
            for n in os.listdir(self.ckpt_dir):
                if n.startswith('.tmp-'):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.ckpt_dir, n))
        # drop log lines written after this checkpoint (they will be written again)
        log = os.path.join(self.run_dir, 'metrics.jsonl')
        if self.dist.is_main and os.path.isfile(log):
            with open(log) as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln).get('epoch', 0) < self.progress.epoch]
            atomic_write_bytes(log, ''.join(lines).encode())

    def save_weights(self, path: str, model: Optional[nn.Module] = None) -> None:
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

    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train until ``cfg.epochs`` (or early stopping); returns a summary with the best score and epoch."""
        cfg = self.cfg
        if cfg.monitor_mode not in ('min', 'max'):
            raise UserInputError(f'monitor mode must be "min" or "max", got {cfg.monitor_mode!r}.')
        if resume:
            self.load_checkpoint()
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
            t0 = time.time()
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
                    if not torch.isfinite(loss):
                        raise UserInputError(f'Loss became {loss.item()} at epoch {p.epoch + 1}, step {p.step}; '
                                             f'lower --lr or disable --amp.')
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
            train_loss = p.loss_sum / max(1, p.loss_n)
            if self.dist.enabled:
                t = torch.tensor([p.loss_sum, float(p.loss_n)], dtype=torch.float64)
                dist.all_reduce(t)
                train_loss = float(t[0] / t[1].clamp(min=1))
            record: Dict[str, Any] = {'epoch': p.epoch, 'step': p.step, 'lr': self.optimizer.param_groups[-1]['lr'],
                                      'train_loss': train_loss}
            if self.val_loader is not None:
                out, tgt = self.infer(self.val_loader, desc='val')
                metrics = self.task.evaluate(out, tgt)
                record.update({f'val_{k}': v for k, v in metrics.items() if np.isscalar(v)})
                score = float(metrics.get(cfg.monitor, float('nan')))
                if cfg.monitor not in metrics:
                    raise UserInputError(f'Unknown metric {cfg.monitor!r} to monitor; choose one of '
                                         f'{", ".join(k for k, v in metrics.items() if np.isscalar(v))}.')
                if self._improved(score):
                    p.best, p.best_epoch, p.bad_epochs = score, p.epoch, 0
                    self.save_weights(os.path.join(self.ckpt_dir, 'best.safetensors'))
                else:
                    p.bad_epochs += 1
            record['time_s'] = round(time.time() - t0, 3)
            p.epoch += 1
            p.batch = 0
            p.loss_sum, p.loss_n = 0.0, 0
            stop = bool(cfg.patience and p.bad_epochs >= cfg.patience)
            self._log(record)
            self.save_checkpoint()
            _barrier(self.dist)
            if stop:
                stopped_early = True
                break
        if self.val_loader is None and self.dist.is_main:
            self.save_weights(os.path.join(self.ckpt_dir, 'best.safetensors'))
        _barrier(self.dist)
        return {'epochs_run': p.epoch, 'steps': p.step, 'best_score': p.best, 'best_epoch': p.best_epoch,
                'monitor': cfg.monitor, 'stopped_early': stopped_early, 'train_time_s': time.time() - t_start}
