"""Image classification fine-tuning on the task-agnostic engine: ``fit`` / ``evaluate`` / ``predict``.

    from mednext_zoo.finetune.classification import FinetuneConfig, fit, evaluate, predict
    fit(FinetuneConfig(model='mednext_tiny', data='images/', out='runs/exp1', epochs=20))

``task`` trains and reports, ``metrics`` scores (with bootstrap CIs and calibration), ``plots`` draws the curves,
ROC and confusion matrix, ``cam`` makes Grad-CAM overlays.
"""
from .task import (
    ClassificationTask,
    FinetuneConfig,
    build_optimizer,
    create_classifier,
    cross_validate,
    evaluate,
    fit,
    format_report,
    load_run_model,
    predict,
)

__all__ = [
    'ClassificationTask', 'FinetuneConfig', 'build_optimizer', 'create_classifier', 'cross_validate', 'evaluate',
    'fit', 'format_report', 'load_run_model', 'predict',
]
