"""What both fine-tuning tasks share around the engine: checks, model creation with one pretrained-weights resolver,
the engine configuration, the run-folder lifecycle, the best-weight reload and the run's records.

Each task's ``_fit`` keeps only what differs (data, model head, loss and metrics, reports); the order of a start is
always: check the settings -> check the run folder (rank 0, nothing written) -> build the model, data and
optimiser -> :func:`start_run` (create the folder, write ``config.json`` and ``splits.csv``) -> ``engine.fit`` ->
:func:`reload_best` -> report.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..errors import UserInputError
from .distributed import DistInfo, cleanup_distributed, on_main, resolve_device, setup_distributed
from .engine import Engine, EngineConfig, Task
from .run_dir import RunDirGuard, atomic_write_json, check_run_dir, config_changes, create_run_dir, read_run_config

COUNT_SETTINGS = ('epochs', 'batch_size', 'img_size', 'accum_steps')  # each at least 1


# ---------------------------------------------------------------- checks
def check_counts(cfg: Any, names: Sequence[str] = COUNT_SETTINGS) -> None:
    """UserInputError naming the option when one of the settings ``names`` of ``cfg`` is below 1."""
    for name in names:
        if int(getattr(cfg, name)) < 1:
            raise UserInputError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(cfg, name)}.')


def check_model_name(name: str, prefer: str = '') -> str:
    """Return ``name`` if timm knows it (after ``import mednext_zoo``); else a clear error with close matches (those
    matching the pattern ``prefer``, e.g. ``'*unext*'``, offered first)."""
    import timm

    from .. import models  # noqa: F401  (registers mednext_* / medunext_*)
    base = name.split('.', 1)[0]
    if base.startswith(('local-dir:', 'hf-hub:', 'hf_hub:')) or timm.is_model(base):
        return name
    pool = (timm.list_models(prefer) if prefer else []) + timm.list_models()
    close = difflib.get_close_matches(base, list(dict.fromkeys(pool)), n=5, cutoff=0.6)
    hint = f' Did you mean {", ".join(close)}?' if close else ' See `mednext-zoo models` or timm.list_models().'
    raise UserInputError(f'Unknown model {name!r}.{hint}')


# ---------------------------------------------------------------- models
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')  # what a --pretrained folder may hold, in this order


def resolve_pretrained(model: str, pretrained: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """``(timm name, create_model kwargs)`` for ``--pretrained``: nothing (random weights), a tag of the model, a
    weights file, or a folder holding ``model.safetensors`` or ``pytorch_model.bin`` (e.g. a run's ``export/``)."""
    if not pretrained:
        return model, {'pretrained': False}
    p = os.path.expanduser(pretrained)
    if os.path.isdir(p):
        for fname in WEIGHT_FILES:
            if os.path.isfile(os.path.join(p, fname)):
                return model, {'pretrained': True, 'pretrained_cfg_overlay': {'file': os.path.join(p, fname)}}
        raise UserInputError(f'--pretrained folder {p} holds no model.safetensors.')
    if os.path.isfile(p):
        return model, {'pretrained': True, 'pretrained_cfg_overlay': {'file': p}}
    if os.sep in pretrained or pretrained.endswith(('.safetensors', '.pth', '.pt', '.bin')):
        raise UserInputError(f'--pretrained file {pretrained} does not exist.')
    return f'{model.split(".", 1)[0]}.{pretrained}', {'pretrained': True}  # a pretrained tag


def create_model(model: str, pretrained: Optional[str], create: Callable[[str, Dict[str, Any]], nn.Module],
                 drop_path: float = 0.0, **kwargs: Any) -> nn.Module:
    """``create(timm_name, kwargs)`` with the weights of :func:`resolve_pretrained`, ``drop_path_rate`` when
    ``drop_path`` and ``kwargs``; a checkpoint that fails to load becomes a UserInputError naming it."""
    name, kw = resolve_pretrained(model, pretrained)
    kw.update(kwargs)
    if drop_path:
        kw['drop_path_rate'] = drop_path
    try:
        return create(name, kw)
    except UserInputError:
        raise  # already says what was wrong and what to do (e.g. the tag's status and the offline ways)
    except (RuntimeError, OSError, ValueError) as e:
        if kw.get('pretrained'):
            raise UserInputError(f'Cannot load pretrained weights {pretrained!r} for {model}: {e}') from e
        raise


# ---------------------------------------------------------------- the run
def run_guarded(cfg: Any, body: Callable[[DistInfo, RunDirGuard], Dict[str, Any]]) -> Dict[str, Any]:
    """``body(dist_info, guard)`` inside the process group (if launched by torchrun) and a :class:`RunDirGuard` on
    ``cfg.out``: a start that fails before its first checkpoint removes the folder it created."""
    info = setup_distributed(cfg.device)
    try:
        with RunDirGuard(cfg.out, info.is_main) as guard:
            return body(info, guard)
    finally:
        if info.enabled:
            cleanup_distributed()


def check_run(cfg: Any, info: DistInfo, identity: Dict[str, Any]) -> bool:
    """Check the run folder on rank 0 without writing anything (see ``run_dir.check_run_dir``); True when
    resuming."""
    return bool(on_main(info, check_run_dir, cfg.out, identity, cfg.resume, cfg.overwrite))


def engine_config(cfg: Any, monitor: str, monitor_mode: str) -> EngineConfig:
    """The loop settings of a task configuration (the fields both tasks name alike)."""
    return EngineConfig(epochs=cfg.epochs, accum_steps=cfg.accum_steps, amp=cfg.amp, device=cfg.device,
                        seed=cfg.seed, clip_grad=cfg.clip_grad, ema_decay=cfg.ema_decay, monitor=monitor,
                        monitor_mode=monitor_mode, patience=cfg.patience, ckpt_every_steps=cfg.ckpt_every_steps,
                        progress=cfg.progress)


def build_engine(cfg: Any, info: DistInfo, model: nn.Module, task: Task, loaders: Tuple[Any, Any],
                 optim: Tuple[Any, Any], monitor: str, monitor_mode: str) -> Engine:
    """The :class:`Engine` of a run: loaders ``(train, val)``, ``optim`` ``(optimizer, scheduler)``; test hooks
    may set ``cfg._callbacks``."""
    return Engine(model, task, *loaders, *optim, cfg.out, engine_config(cfg, monitor, monitor_mode), info,
                  callbacks=getattr(cfg, '_callbacks', ()))


def start_run(cfg: Any, info: DistInfo, guard: RunDirGuard, resumed: bool, identity: Dict[str, Any],
              config: Dict[str, Any], write_splits: Callable[[str], None], settings: Dict[str, Any]
              ) -> Optional[List[str]]:
    """Set-up succeeded: on rank 0, create the run folder (new runs), write ``config.json`` and, unless a resumed
    run has one, ``splits.csv`` (``write_splits(path)``). Returns, on resume, what the user changed since the last
    start (``settings``, the new configuration in ``config.json``'s terms, against the config it replaces)."""
    changes = config_changes(cfg.out, settings) if resumed else None
    if not info.is_main:
        return changes
    if not resumed:
        create_run_dir(cfg.out, identity, cfg.overwrite)
        guard.created()
    atomic_write_json(os.path.join(cfg.out, 'config.json'), config)
    splits = os.path.join(cfg.out, 'splits.csv')
    if not resumed or not os.path.isfile(splits):
        write_splits(splits)
    return changes


def reload_best(engine: Engine) -> nn.Module:
    """The engine's evaluated model (the EMA if enabled) with the run's best weights (``best.safetensors``)."""
    from safetensors.torch import load_file
    final = engine.eval_model
    final.load_state_dict(load_file(os.path.join(engine.ckpt_dir, 'best.safetensors')))
    return final


# ---------------------------------------------------------------- a finished run
def load_best(run_dir: str, device: str, create: Callable[[Dict[str, Any]], nn.Module], task: Optional[str] = None
              ) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, config)`` of a run: ``create(config)`` with the best weights, on ``device``, in eval mode. ``task``:
    refuse a run of another task."""
    from safetensors.torch import load_file
    rc = read_run_config(run_dir, task)
    best = os.path.join(run_dir, 'checkpoints', 'best.safetensors')
    if not os.path.isfile(best):
        raise UserInputError(f'{run_dir} has no trained weights yet ({best} is missing); finish or resume the run.')
    model = create(rc)
    model.load_state_dict(load_file(best))
    return model.to(resolve_device(device)).eval(), rc


def read_result(run_dir: str) -> Dict[str, Any]:
    """The final report of a finished run (``metrics.json``); UserInputError when the run has not finished."""
    path = os.path.join(run_dir, 'metrics.json')
    if not os.path.isfile(path):
        raise UserInputError(f'{run_dir} has no metrics.json: the run has not finished; finish or resume it first.')
    with open(path) as f:
        return json.load(f)


def eval_name(data: str, split: Optional[str]) -> str:
    """The name of an evaluation (``eval-<name>`` folders): the data's file or folder name, with ``-<split>``."""
    name = os.path.basename(os.path.normpath(data)).replace('.csv', '').replace('.npz', '')
    return name + (f'-{split}' if split else '')


def scope_text(overlap: Dict[str, Any], include_training_data: bool, items: str) -> str:
    """What an evaluation scored, for its title: ``held-out <items>`` or how many training items it includes."""
    if not overlap['in_training_data'] or not include_training_data:
        return f'held-out {items}'
    return f'includes {overlap["in_training_data"]} training / validation {items}'
