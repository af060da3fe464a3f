"""Fine-tuning: a task-agnostic training engine and image classification on top of it.

    from mednext_zoo.finetune import FinetuneConfig, fit, evaluate, predict
    result = fit(FinetuneConfig(model='mednext_tiny', data='images/', out='runs/exp1', epochs=20))
    evaluate('runs/exp1', 'external_test/')
    predict('runs/exp1', ['scan.dcm'], cam=True)
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
