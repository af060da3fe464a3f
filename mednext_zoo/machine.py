"""What a result was measured on: machine, library versions, threads.

The bottom floor of the package (it imports only ``mednext_zoo.version``): the benchmark harness, the
training-efficiency suite and the reproduction records all describe the machine with it.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any, Dict

import torch

__all__ = ['machine_info', 'machine_label', 'package_version']


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        import psutil
        return round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:
        pass
    try:
        return round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (e.g. ``'onnxruntime'``), or None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str = 'cpu') -> Dict[str, Any]:
    """Machine, library versions and thread settings (recorded with every result)."""
    from .version import __version__
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: Dict[str, Any] = {
        'device': device,
        'cpu': _cpu_model(),
        'cpu_logical_cores': os.cpu_count(),
        'cpu_cores_usable': usable,
        'ram_gb': _ram_gb(),
        'os': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'timm': package_version('timm'),
        'fvcore': package_version('fvcore'),
        'mednext_zoo': __version__,
        'segmentation_models_pytorch': package_version('segmentation-models-pytorch'),
        'torch_num_threads': torch.get_num_threads(),
        'torch_num_interop_threads': torch.get_num_interop_threads(),
        'mkldnn': torch.backends.mkldnn.is_available(),
    }
    if device.startswith('cuda') and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
            gpu_capability=f'{props.major}.{props.minor}',
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def machine_label(info: Dict[str, Any]) -> str:
    """One line naming the machine, e.g. ``NVIDIA H100 80GB HBM3`` or ``Intel Xeon ..., 2 cores, 2 threads``."""
    if info.get('gpu'):
        return f"{info['gpu']} (CUDA {info.get('cuda')}), host CPU {info['cpu']}"
    return f"{info['cpu']}, {info['cpu_cores_usable']} usable cores, {info['torch_num_threads']} torch threads"
