"""Fine-tuning: a task-agnostic training engine with two sibling tasks on top, ``classification`` and
``segmentation``.

    from mednext_zoo.finetune import FinetuneConfig, fit, evaluate, predict
    result = fit(FinetuneConfig(model='mednext_tiny', data='images/', out='runs/exp1', epochs=20))
    evaluate('runs/exp1', 'external_test/')
    predict('runs/exp1', ['scan.dcm'], cam=True)

Segmentation: :mod:`mednext_zoo.finetune.segmentation` (``SegConfig``, ``fit``, ``evaluate``, ``predict``).
"""
from .classification import (
    ClassificationTask,
    FinetuneConfig,
    create_classifier,
    cross_validate,
    evaluate,
    fit,
    format_report,
    load_run_model,
    predict,
)
from .engine import Engine, EngineConfig, Task, prepare_run_dir

__all__ = [
    'ClassificationTask', 'FinetuneConfig', 'create_classifier', 'cross_validate', 'evaluate', 'fit',
    'format_report', 'load_run_model', 'predict', 'Engine', 'EngineConfig', 'Task', 'prepare_run_dir',
]
