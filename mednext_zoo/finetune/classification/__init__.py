"""Image classification fine-tuning on the task-agnostic engine: ``fit`` / ``evaluate`` / ``predict``.

    from mednext_zoo.finetune.classification import ClassificationConfig, fit, evaluate, predict
    fit(ClassificationConfig(model='mednext_tiny', data='images/', out='runs/exp1', epochs=20))

``task`` trains and reports, ``metrics`` scores (with bootstrap CIs and calibration), ``plots`` draws the curves,
ROC and confusion matrix, ``cam`` makes Grad-CAM overlays. ``FinetuneConfig``, the name of ``ClassificationConfig``
before 0.2, still works (with a DeprecationWarning) until 0.3.
"""
from typing import Any

from ..recipe import build_optimizer
from . import task as _task
from .task import (
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


def __getattr__(name: str) -> Any:
    return getattr(_task, name)  # FinetuneConfig: with its deprecation warning


__all__ = [
    'ClassificationConfig', 'ClassificationTask', 'build_optimizer', 'create_classifier', 'cross_validate',
    'evaluate', 'fit', 'format_report', 'load_run_model', 'predict',
]
