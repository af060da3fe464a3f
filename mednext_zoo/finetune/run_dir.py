"""The run folder: check / create / prepare it, remove a start that failed before its first checkpoint, write its
JSON atomically, keep its per-epoch metrics log, read its configuration, and say what a resume changed.

Layout (the engine adds ``checkpoints/``, see :mod:`.checkpoints`; each task adds its reports)::

    RUN_DIR/run.json        identity of the run (checked on --resume), and what each resume changed
    RUN_DIR/config.json     the resolved settings of the last start (written by the task)
    RUN_DIR/metrics.jsonl   one JSON line per epoch (epochs counted from 1)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np

from .._atomic import atomic_path, atomic_write_bytes
from ..errors import UserInputError

__all__ = [
    'json_default', 'atomic_write_json', 'atomic_save', 'read_metrics_log', 'append_metrics_log', 'trim_metrics_log',
    'check_run_dir', 'create_run_dir', 'prepare_run_dir', 'holds_checkpoints', 'RunDirGuard', 'record_resume',
    'read_run_config', 'OPTION_NAMES', 'config_changes', 'atomic_write_bytes',
]


# ---------------------------------------------------------------- JSON and the metrics log
def json_default(o: Any) -> Any:
    """JSON for what ``json`` cannot write: numpy scalars / arrays and tuples as numbers / lists, anything else its
    ``str``."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (see :func:`json_default` for the types it converts)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=json_default) + '\n').encode())


def atomic_save(path: str, save_fn: Callable[[str], None]) -> None:
    """Call ``save_fn(tmp)`` on a temporary path beside ``path``, then move it into place atomically."""
    with atomic_path(path) as tmp:
        save_fn(str(tmp))


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


def append_metrics_log(run_dir: str, record: Dict[str, Any]) -> None:
    """Append one epoch's record to ``RUN_DIR/metrics.jsonl`` (flushed and synced: a crash loses no finished
    epoch)."""
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(record, default=json_default) + '\n')
        f.flush()
        os.fsync(f.fileno())


def trim_metrics_log(run_dir: str, epochs: int) -> None:
    """Drop the records of epochs after ``epochs`` (written after the checkpoint a run resumes from, and written
    again by the resumed run)."""
    log = os.path.join(run_dir, 'metrics.jsonl')
    if os.path.isfile(log):
        kept = [r for r in read_metrics_log(log) if r.get('epoch', 0) <= epochs]
        atomic_write_bytes(log, ''.join(json.dumps(r, default=json_default) + '\n' for r in kept).encode())


# ---------------------------------------------------------------- the folder
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


def record_resume(run_dir: str, entry: Dict[str, Any]) -> None:
    """Append ``entry`` (time, checkpoint, step, what changed) to the ``resumes`` list of ``RUN_DIR/run.json``."""
    path = os.path.join(run_dir, 'run.json')
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, ValueError):
        return
    run.setdefault('resumes', []).append(entry)
    atomic_write_json(path, run)


def read_run_config(run_dir: str, task: Optional[str] = None) -> Dict[str, Any]:
    """The ``config.json`` of a fine-tuning run; with ``task``, refuse a run of another task (the config's
    ``task`` field; classification runs have none)."""
    path = os.path.join(run_dir, 'config.json')
    if not os.path.isfile(path):
        raise UserInputError(f'{run_dir} is not a fine-tuning run folder (no config.json).')
    with open(path) as f:
        rc = json.load(f)
    if task is not None and rc.get('task') != task:
        raise UserInputError(f'{run_dir} is not a {task} run (task {rc.get("task")!r}).')
    return rc


# ---------------------------------------------------------------- what a resume changed
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

    norm = lambda v: json.loads(json.dumps(v, default=json_default))  # noqa: E731  (tuples as lists, as stored)
    for k, v in new.items():
        if k in skip or k.startswith('_') or k not in old or norm(v) == old[k]:
            continue
        out.append(f'{names.get(k, "--" + k.replace("_", "-"))} {fmt(old[k])} -> {fmt(norm(v))}')
    return out
