"""Benchmark harness: params, FLOPs, activations, latency, throughput and memory, with ratios to
``mednext_base`` measured in the same run. ``mednext-zoo bench`` is its command line.

    from mednext_zoo.benchmark import run_benchmark, write_results
    result = run_benchmark(models=['mednext_tiny', 'resnet18'], quick=True)
    write_results(result, 'bench_out')
"""
from .counting import Counts, count_model, count_params
from .machine import machine_info, machine_label
from .report import CONVENTIONS, load_results, plot_results, to_markdown, write_results
from .runner import ROW_FIELDS, BenchConfig, BenchResult, run_benchmark
from .specs import NAMED_SPECS, ModelSpec, build_model, default_model_names, resolve_models

__all__ = [
    'Counts', 'count_model', 'count_params', 'machine_info', 'machine_label', 'CONVENTIONS', 'load_results',
    'plot_results',
    'to_markdown', 'write_results', 'ROW_FIELDS', 'BenchConfig', 'BenchResult', 'run_benchmark', 'NAMED_SPECS',
    'ModelSpec', 'build_model', 'default_model_names', 'resolve_models',
]
