"""What ``mednext-zoo export`` exports, with everything it recorded: a fine-tuning run folder, the ``export/`` Hub
folder of a run (or any Hub folder), each with its weights, labels and the preprocessing the model was trained
with -- read from the run's records, never from defaults."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

from ..data.preprocessing import PreprocessingSpec, classification_spec, read_spec, segmentation_spec
from ..errors import UserInputError

__all__ = ['ExportSource', 'find_run', 'open_source']


@dataclass
class ExportSource:
    """A model to export and what its origin recorded about it."""

    model: nn.Module
    kind: str  # 'run' (a fine-tuning run folder) | 'hub' (a Hub folder, e.g. RUN/export)
    task: str  # 'classification' | 'segmentation'
    spec: Optional[PreprocessingSpec]  # None: nothing recorded (a Hub folder written without one)
    spec_from: Optional[str]  # where the description was read from, for the printed report
    label_names: Optional[List[str]]
    record: Optional[Dict[str, Any]]  # the run's training-loader settings (the parity reference)
    run_dir: Optional[str] = None  # the run the model comes from, if any


def _json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f'{path} cannot be read as JSON ({e}).') from None
    if not isinstance(data, dict):
        raise UserInputError(f'{path} holds no JSON object.')
    return data


def find_run(path: os.PathLike) -> Optional[Tuple[str, str]]:
    """``(run_dir, task)`` when ``path`` is a fine-tuning run folder (``config.json`` with its model and classes),
    else None. A cross-validation folder is refused: its folds are the runs."""
    p = Path(path)
    if (p / 'cv_summary.json').is_file() or any(p.glob('fold-*/config.json')):
        raise UserInputError(f'{p} is a cross-validation folder: export one of its runs ({p}/fold-K).')
    cfg = p / 'config.json'
    if not cfg.is_file():
        return None
    data = _json(cfg)
    if 'architecture' in data or 'model' not in data or 'classes' not in data:
        return None
    return str(p), ('segmentation' if data.get('task') == 'segmentation' else 'classification')


def _run_record(run_dir: str, task: str, model: Optional[nn.Module] = None
                ) -> Tuple[Dict[str, Any], PreprocessingSpec, Dict[str, Any]]:
    """(the run's config, the description of its recipe, the training-loader settings it recorded)."""
    rc = _json(Path(run_dir) / 'config.json')
    if task == 'segmentation':
        from ..finetune.segmentation.task import run_settings
        settings = run_settings(run_dir, rc)
        return rc, segmentation_spec(settings), {'task': task, **settings}
    from ..finetune.classification.task import create_classifier, run_norm_stats
    if model is None:
        model = create_classifier(rc['model'], len(rc['classes']), rc['in_chans'], rc['img_size'])
    mean, std = run_norm_stats(run_dir, model, rc['in_chans'])
    temperature = 1.0
    metrics = Path(run_dir) / 'metrics.json'
    if metrics.is_file():
        temperature = float(_json(metrics).get('temperature', 1.0))
    spec = classification_spec(rc['img_size'], rc['in_chans'], mean, std, rc.get('window'), temperature)
    record = {'task': task, 'window': rc.get('window'), 'img_size': rc['img_size'], 'in_chans': rc['in_chans'],
              'mean': mean, 'std': std}
    return rc, spec, record


def open_source(path: os.PathLike) -> ExportSource:
    """The model of a run folder (its best weights) or of a Hub folder (its weights), with its labels, the
    description of its preprocessing and, for a run or a run's ``export/``, the run's training settings."""
    p = Path(path)
    run = find_run(p)
    if run is not None:
        run_dir, task = run
        if task == 'segmentation':
            from ..finetune.segmentation.task import load_run_model
        else:
            from ..finetune.classification.task import load_run_model
        model, rc = load_run_model(run_dir)
        rc, spec, record = _run_record(run_dir, task, model)
        return ExportSource(model.cpu().eval(), 'run', task, spec, f'the run\'s records in {run_dir}',
                            list(rc['classes']), record, run_dir)
    if not (p / 'config.json').is_file():
        raise UserInputError(f'{p} is a folder without config.json: give a fine-tuning run folder, its export/ '
                             f'folder, a Hub folder written by `mednext-zoo export`, or an architecture name with '
                             f'--checkpoint FILE.')
    config = _json(p / 'config.json')
    if 'architecture' not in config:
        raise UserInputError(f'{p / "config.json"} is neither a run\'s nor a Hub folder\'s config: give a run folder, '
                             f'its export/ or a folder written by `mednext-zoo export`.')
    import timm

    from .. import models  # noqa: F401  (registers the architectures)
    from .preprocessing import task_of
    model = timm.create_model(f'local-dir:{p.resolve()}', pretrained=True).eval()
    task = 'segmentation' if task_of(model) == 'seg' else 'classification'
    spec = read_spec(p)
    spec_from = f'{p}/config.json' if spec is not None and 'preprocessing' in config else \
        (f'{p}/segmentation.json' if spec is not None else None)
    parent = find_run(p.parent) if p.name == 'export' else None
    record, run_dir = None, None
    if parent is not None and parent[1] == task:
        run_dir = parent[0]
        _, run_spec, record = _run_record(run_dir, task, model)
        if spec is None:  # an export written before the description was recorded: the run's records have it
            spec, spec_from = run_spec, f'the run\'s records in {run_dir}'
    labels = config.get('label_names') or (config.get('pretrained_cfg') or {}).get('label_names')
    return ExportSource(model, 'hub', task, spec, spec_from, list(labels) if labels else None, record, run_dir)
