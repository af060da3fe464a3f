"""OpenVINO: ONNX -> OpenVINO IR (fp32 weights kept), CPU compilation at fp32 or bf16 inference precision, and
int8 through NNCF's post-training quantisation (calibrated on real images)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from ._errors import BackendUnavailable


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("openvino not installed: pip install 'mednext-zoo[openvino]'") from None
    return openvino


def read_onnx(onnx_path: os.PathLike):
    ov = require_openvino()
    return ov.convert_model(str(onnx_path))


def save_ir(model, xml_path: os.PathLike) -> Path:
    """Write ``model.xml`` + ``model.bin`` (weights as they are: no fp16 compression)."""
    ov = require_openvino()
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return Path(xml_path)


def cpu_supports_bf16() -> bool:
    ov = require_openvino()
    return 'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')


def ov_runner(model, precision: str = 'f32', threads: Optional[int] = None, static_batch: bool = False,
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A compiled CPU model as ``x (N, C, H, W) -> logits``. ``precision``: ``f32`` or ``bf16`` (OpenVINO's
    inference precision hint; OpenVINO would otherwise pick bf16 by itself on CPUs that have it).
    ``static_batch``: compile one static-shape model per input shape (the last ``_SHAPES`` kept): OpenVINO's CPU
    plugin runs a static graph faster than one with a dynamic batch; each new batch size costs one compilation."""
    ov = require_openvino()
    core = ov.Core()
    if isinstance(model, (str, os.PathLike)):
        model = core.read_model(str(model))
    if precision == 'bf16' and not cpu_supports_bf16():
        raise BackendUnavailable('this CPU has no bf16 support OpenVINO uses (AVX512-BF16 / AMX): it would run f32')
    config = {'INFERENCE_PRECISION_HINT': precision, 'PERFORMANCE_HINT': 'LATENCY',
              'INFERENCE_NUM_THREADS': threads or torch.get_num_threads()}
    compiled: Dict[tuple, Any] = {}

    def request(shape: tuple):
        key = shape if static_batch else ()
        req = compiled.pop(key, None)
        if req is None:
            m = model
            if static_batch:
                m = model.clone()
                m.reshape({m.input(0): ov.PartialShape(list(shape))})
            req = core.compile_model(m, 'CPU', config).create_infer_request()
            while len(compiled) >= _SHAPES:
                compiled.pop(next(iter(compiled)))
        compiled[key] = req  # most recently used last
        return req

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().numpy()
        out = request(tuple(arr.shape)).infer({0: arr})
        return torch.from_numpy(next(iter(out.values())).copy())
    return run


_SHAPES = 4


def quantize_int8(model, calibration: torch.Tensor, transformer: bool = False):
    """NNCF post-training int8 quantisation of an OpenVINO model, calibrated on ``calibration`` ``(N, C, H, W)``
    (one image per step). NNCF's default (CNN) scheme: every conv, the MED blocks' 1x1 convs included, int8 with
    per-channel weights. ``transformer``: NNCF's transformer scheme (softmax / normalisation inputs kept in float),
    what the plain traced graph of MedNeXt (Linear layers) was quantised with before the export form."""
    try:
        import nncf
    except ImportError:
        raise BackendUnavailable("nncf not installed (OpenVINO's int8 quantiser): pip install 'mednext-zoo[openvino]'"
                                 ) from None
    items = [x[None].numpy() for x in calibration.float().cpu()]
    kwargs = {'model_type': nncf.ModelType.TRANSFORMER} if transformer else {}
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **kwargs)
