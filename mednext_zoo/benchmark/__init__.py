"""Benchmark harness: params, FLOPs, activations, latency, throughput and memory, with ratios to
``mednext_base`` measured in the same run; and the training-efficiency suite (quality against optimisation steps
and train seconds, over seeds). ``mednext-zoo bench`` is their command line.

    from mednext_zoo.benchmark import run_benchmark, write_results
    result = run_benchmark(models=['mednext_tiny', 'resnet18'], quick=True)
    write_results(result, 'bench_out')

    from mednext_zoo.benchmark import run_training_suite
    run_training_suite(task='seg', rows=['medunext_tiny', 'unet_resnet34'], seeds=3, out_dir='bench_train')

Layering. The speed / counting modules (``counting``, ``machine``, ``specs``, ``runner``, ``report``,
``suites``) use only the models and the data layer. The training suite (``training``, ``training_report``) sits
above fine-tuning: it uses ``data.synthetic``, ``finetune.segmentation.recipe`` (loss, optimiser, scheduler,
sampler) and the models, so the order for it is models -> data -> finetune -> benchmark.training -> cli. Nothing
below imports ``benchmark``; the training suite is loaded only on first use (``run_training_suite``).
"""
from ..machine import machine_info, machine_label
from .counting import Counts, count_model, count_params
from .report import CONVENTIONS, load_results, plot_results, to_markdown, write_results
from .runner import ROW_FIELDS, BenchConfig, BenchResult, run_benchmark
from .specs import NAMED_SPECS, ModelSpec, build_model, default_model_names, resolve_models

_TRAINING = ('run_training_suite', 'TrainRow', 'TrainSuiteConfig')


def __getattr__(name):  # the training suite imports fine-tuning code: load it on first use only
    if name in _TRAINING:
        from . import training
        return getattr(training, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    *_TRAINING,
    'Counts', 'count_model', 'count_params', 'machine_info', 'machine_label', 'CONVENTIONS', 'load_results',
    'plot_results',
    'to_markdown', 'write_results', 'ROW_FIELDS', 'BenchConfig', 'BenchResult', 'run_benchmark', 'NAMED_SPECS',
    'ModelSpec', 'build_model', 'default_model_names', 'resolve_models',
]
