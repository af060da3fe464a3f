"""Fine-tuning: a task-agnostic training engine with two sibling tasks on top, ``classification`` and
``segmentation``.

    from mednext_zoo.finetune import ClassificationConfig, fit, evaluate, predict
    result = fit(ClassificationConfig(model='mednext_tiny', data='images/', out='runs/exp1', epochs=20))
    evaluate('runs/exp1', 'external_test/')
    predict('runs/exp1', ['scan.dcm'], cam=True)

Segmentation: :mod:`mednext_zoo.finetune.segmentation` (``SegConfig``, ``fit``, ``evaluate``, ``predict``).

Modules: ``engine`` (the loop), ``distributed`` (process group, seeding, device), ``run_dir`` (the run folder),
``checkpoints``, ``batched`` (batched inference), ``recipe`` (optimiser, schedule, segmentation loss and sampler),
``state`` (training state without pickle), ``heldout``, ``outputs``. ``FinetuneConfig``, the name of
``ClassificationConfig`` before 0.2, still works (with a DeprecationWarning) until 0.3.
"""
from typing import Any

from . import classification as _classification
from .classification import (
    ClassificationConfig,
    ClassificationTask,
    create_classifier,
    cross_validate,
    evaluate,
    fit,
    format_report,
    load_run_model,
    predict,
)
from .engine import Engine, EngineConfig, Task
from .recipe import TrainingRecipe, build_optimizer
from .run_dir import prepare_run_dir


def __getattr__(name: str) -> Any:
    return getattr(_classification, name)  # FinetuneConfig: with its deprecation warning


__all__ = [
    'ClassificationConfig', 'ClassificationTask', 'create_classifier', 'cross_validate', 'evaluate', 'fit',
    'format_report', 'load_run_model', 'predict', 'Engine', 'EngineConfig', 'Task', 'TrainingRecipe',
    'build_optimizer', 'prepare_run_dir',
]
