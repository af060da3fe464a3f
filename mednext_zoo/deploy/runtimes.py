"""One model under one inference backend and dtype, as a callable ``x (N, C, H, W) -> logits`` on the CPU.

===============  ================================  ==============================  ===============================
backend          fp32                              bf16                            int8
===============  ================================  ==============================  ===============================
``eager``        the model as it is                ``torch.autocast`` bf16         not offered (see ``_NO_INT8``)
``compile``      ``torch.compile`` (inductor)      compiled, under autocast bf16   not offered
``onnxruntime``  ONNX (plain graph), CPU provider  not offered: no bf16 Conv /    static QDQ quantisation,
                                                   MatMul CPU kernels              calibrated on images
``openvino``     IR, inference precision f32       inference precision bf16        NNCF post-training int8
                                                   (CPUs with AVX512-BF16 / AMX)
===============  ================================  ==============================  ===============================

A combination this machine or install cannot run raises ``BackendUnavailable`` with the reason (the benchmark
turns it into a skipped row). ``fp16`` (autocast) is accepted for eager / compile on CUDA.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional

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
) -> Runner:
    """Build ``model`` (eval, fp32) for ``backend`` x ``dtype``; ``example``: an input ``(N, C, H, W)`` on the
    model's device; ``calibration``: model inputs for int8 (required for int8). ONNX files go to ``workdir``
    (default: a temporary folder that lives as long as the runner)."""
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
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix='mednext-zoo-')
        workdir = tmp.name
    from ._onnx import export_onnx
    if backend == 'onnxruntime':
        from ._onnx import ort_runner, quantize_int8, require_onnxruntime
        require_onnxruntime()
        if dtype == 'bf16':
            raise BackendUnavailable("onnxruntime's CPU execution provider has no bf16 Conv / MatMul kernels")
        path = export_onnx(model, Path(workdir) / 'model.onnx', example)
        if dtype == 'int8':
            path = quantize_int8(path, Path(workdir) / 'model.int8.onnx', calibration)
        run = ort_runner(path, threads)
    else:
        from ._openvino import ov_runner, quantize_int8, read_onnx, require_openvino
        require_openvino()
        ov_model = read_onnx(export_onnx(model, Path(workdir) / 'model.onnx', example))
        if dtype == 'int8':
            ov_model = quantize_int8(ov_model, calibration)
        run = ov_runner(ov_model, 'bf16' if dtype == 'bf16' else 'f32', threads)
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
