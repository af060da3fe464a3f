"""ONNX export (PyTorch's TorchScript-based exporter, dynamic batch; MedNeXt / MedUNeXt in their export form, see
``mednext_zoo.models._export_form``) and ONNX Runtime sessions, fp32 and int8 (onnxruntime's static post-training
quantisation, QDQ, calibrated on real images)."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from ._errors import BackendUnavailable

OPSET = 17
INPUT, OUTPUT = 'x', 'logits'


def require_onnxruntime():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime / onnx not installed ({e.name}): pip install 'mednext-zoo[export]'") \
            from None
    return onnxruntime


def export_onnx(model: nn.Module, path: os.PathLike, example: torch.Tensor,
                form: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` (eval, fp32, CPU) as ONNX with a dynamic batch axis; returns ``path``.

    MED blocks are written in their export form (NCHW 1x1 convs, constant axial MatMuls, folded norms: what ONNX
    Runtime and OpenVINO fuse); ``form`` overrides its levers (``{'layout': 'reference'}``: the plain traced graph).
    """
    require_onnxruntime()
    from ..models import export_form
    path = Path(path)
    model = model.eval()  # before the export form derives its folds (BatchNorm running statistics)
    with export_form(model, **(form or {})), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the exporter's deprecation / tracer notices: nothing a user can act on
        torch.onnx.export(model, (example[:1].float().cpu(),), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: 'batch'}, OUTPUT: {0: 'batch'}},
                          opset_version=OPSET, dynamo=False)
    return path


def ort_runner(path: os.PathLike, threads: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX Runtime CPU session as ``x (N, C, H, W) -> logits`` (torch tensors in and out)."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {INPUT: x.detach().float().cpu().numpy()})[0])
    return run


def quantize_int8(fp32_path: os.PathLike, out_path: os.PathLike, calibration: torch.Tensor) -> Path:
    """Static int8 quantisation (QDQ; per-channel int8 weights, uint8 activations; MinMax calibration over
    ``calibration`` ``(N, C, H, W)``, one image at a time) of an fp32 ONNX file. Only the ops that carry the
    arithmetic are quantised (Conv, MatMul, Gemm); normalisation, softmax and elementwise ops stay fp32."""
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{INPUT: x[None].numpy()} for x in calibration.float().cpu()])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / 'prepared.onnx'
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=['Conv', 'MatMul', 'Gemm'])
    return Path(out_path)
