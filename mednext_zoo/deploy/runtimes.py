"""One model under one inference backend and dtype, as a callable ``x (N, C, H, W) -> logits`` on the CPU.

===============  ================================  ==============================  ===============================
backend          fp32                              bf16                            int8
===============  ================================  ==============================  ===============================
``eager``        the model as it is                ``torch.autocast`` bf16         not offered (see ``_NO_INT8``)
``compile``      ``torch.compile`` (inductor)      compiled, under autocast bf16   not offered
``onnxruntime``  ONNX (export form), CPU provider   not offered: no bf16 Conv /    static QDQ quantisation,
                                                   MatMul CPU kernels              calibrated on images
``openvino``     IR, inference precision f32       inference precision bf16        NNCF post-training int8
                                                   (CPUs with AVX512-BF16 / AMX)
===============  ================================  ==============================  ===============================

A combination this machine or install cannot run raises ``BackendUnavailable`` with the reason (the benchmark
turns it into a skipped row). ``fp16`` (autocast) is accepted for eager / compile on CUDA.
"""
from __future__ import annotations

import tempfile
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from ._errors import BackendUnavailable

__all__ = ['BACKENDS', 'DTYPES', 'prepare_runner', 'BackendUnavailable']

BACKENDS = ('eager', 'compile', 'onnxruntime', 'openvino')
DTYPES = ('fp32', 'bf16', 'fp16', 'int8')
_NO_INT8 = ('PyTorch has no maintained int8 CPU path for these models (torch.ao.quantization is deprecated): '
            'use onnxruntime or openvino for int8')
Runner = Callable[[torch.Tensor], torch.Tensor]


def prepare_runner(
        model: nn.Module,
        backend: str,
        dtype: str,
        example: torch.Tensor,
        calibration: Optional[torch.Tensor] = None,
        threads: Optional[int] = None,
        workdir: Optional[str] = None,
        form: Optional[Dict[str, Any]] = None,
) -> Runner:
    """Build ``model`` (eval, fp32) for ``backend`` x ``dtype``; ``example``: an input ``(N, C, H, W)`` on the
    model's device; ``calibration``: model inputs for int8 (required for int8). ONNX Runtime / OpenVINO get the
    files ``export_model`` writes (``deploy.artefact``), in ``workdir`` (default: a temporary folder that lives as
    long as the runner); ``form``: export-form levers (``{'layout': 'reference'}``: the plain traced graph, run
    with a dynamic batch)."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f'unknown backend {backend!r}: choose one of {", ".join(BACKENDS)}')
    if dtype not in DTYPES:
        raise BackendUnavailable(f'unknown dtype {dtype!r}: choose one of {", ".join(DTYPES)}')
    model = model.eval()
    device = example.device
    if backend in ('eager', 'compile'):
        return _torch_runner(model, backend, dtype, device)
    if device.type != 'cpu':
        raise BackendUnavailable(f'{backend} is measured on the CPU here (device {device.type} asked for)')
    if dtype == 'fp16':
        raise BackendUnavailable(f'{backend} fp16 is not measured: fp16 is a GPU precision; this harness runs '
                                 f'{backend} on the CPU')
    if dtype == 'int8' and calibration is None:
        raise BackendUnavailable('int8 needs calibration images')
    if backend == 'onnxruntime':
        from ._onnx import require_onnxruntime
        require_onnxruntime()
        if dtype == 'bf16':
            raise BackendUnavailable("onnxruntime's CPU execution provider has no bf16 Conv / MatMul kernels")
    else:
        from ._openvino import cpu_supports_bf16, require_openvino
        require_openvino()
        if dtype == 'bf16' and not cpu_supports_bf16():
            raise BackendUnavailable('this CPU has no bf16 support OpenVINO uses (AVX512-BF16 / AMX): it would run '
                                     'f32')
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix='mednext-zoo-')
        workdir = tmp.name
    # the files `mednext-zoo export --format` writes, run the way `load_artefact` runs them
    from .artefact import open_artefact, write_artefact
    fmt = 'onnx' if backend == 'onnxruntime' else 'openvino'
    reference = (form or {}).get('layout') == 'reference'
    write_artefact(model, workdir, fmt, dtype == 'int8', example, calibration, form=form)
    run = open_artefact(workdir, fmt, 'bf16' if dtype == 'bf16' else 'fp32', threads, static_batch=not reference)
    if tmp is not None:
        run.__dict__['_workdir'] = tmp  # the folder lives as long as the runner
    return run


def _torch_runner(model: nn.Module, backend: str, dtype: str, device: torch.device) -> Runner:
    if dtype == 'int8':
        raise BackendUnavailable(_NO_INT8)
    if dtype == 'fp16' and device.type != 'cuda':
        raise BackendUnavailable('fp16 autocast is a GPU precision: on the CPU use bf16')
    if dtype == 'bf16' and device.type == 'cpu' and not _cpu_bf16():
        raise BackendUnavailable('this CPU has no native bf16 (AVX512-BF16 / AMX): autocast bf16 would be emulated')
    if backend == 'compile':
        model = torch.compile(model, dynamic=False)  # one static graph per input shape (batch 1, batch N, drift)
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(dtype)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return model(x)
    return run


def _cpu_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: measure it
