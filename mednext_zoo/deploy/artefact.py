"""One code path for deployable graphs: what ``mednext-zoo export --format onnx|openvino`` writes is what
``mednext-zoo bench --backend onnxruntime|openvino`` times.

``write_artefact`` writes the model files (``model.onnx``, or ``model.xml`` + ``model.bin``; fp32 or int8) into a
folder; ``open_artefact`` runs such a folder as ``x (N, C, H, W) -> logits``. ``export_model`` calls the first
(then moves the files atomically beside ``preprocessing.json``) and ``load_artefact`` the second;
``prepare_runner`` calls both on a temporary folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ._errors import BackendUnavailable

__all__ = ['GRAPH_FORM', 'write_artefact', 'open_artefact']

Runner = Callable[[torch.Tensor], torch.Tensor]
# Recorded in preprocessing.json (``extra.graph``): graphs written in this form compile with a static batch in
# OpenVINO (one compiled model per batch size). Older artefacts (the plain traced graph) stay dynamic: OpenVINO
# 2026.4 crashes compiling a MedNeXt reference graph reshaped to a static batch.
GRAPH_FORM = 'export-form-1'


def write_artefact(
        model: nn.Module,
        folder: os.PathLike,
        fmt: str,
        int8: bool,
        example: torch.Tensor,
        calibration: Optional[torch.Tensor] = None,
        form: Optional[Dict[str, Any]] = None,
) -> List[str]:
    """Write ``model`` (eval, fp32, CPU) to ``folder`` as ``fmt`` (``onnx`` / ``openvino``), int8 when asked
    (``calibration``: model inputs ``N, C, H, W``); returns the file names written. Not atomic: write into a
    temporary folder and move. ``form``: export-form levers (see ``mednext_zoo.models._export_form``)."""
    from ._onnx import export_onnx
    folder = Path(folder)
    if int8 and calibration is None:
        raise BackendUnavailable('int8 needs calibration images')
    fp32 = folder / ('model.onnx' if fmt == 'onnx' and not int8 else 'model.fp32.onnx')
    export_onnx(model, fp32, example, form=form)
    if fmt == 'onnx':
        if int8:
            from ._onnx import quantize_int8
            quantize_int8(fp32, folder / 'model.onnx', calibration)
            fp32.unlink()
        return ['model.onnx']
    from ._openvino import quantize_int8, read_onnx, save_ir
    ov_model = read_onnx(fp32)
    if int8:  # the plain traced graph (the "before" of the benchmark) with the scheme it was quantised with then
        ov_model = quantize_int8(ov_model, calibration, transformer=(form or {}).get('layout') == 'reference')
    save_ir(ov_model, folder / 'model.xml')
    fp32.unlink()
    return ['model.xml', 'model.bin']


def open_artefact(folder: os.PathLike, fmt: str, precision: str = 'fp32', threads: Optional[int] = None,
                  static_batch: bool = True) -> Runner:
    """The model files in ``folder`` (``write_artefact``) as ``x (N, C, H, W) -> logits`` on the CPU.

    ``precision``: ``fp32``, or ``bf16`` (OpenVINO's inference precision; int8 artefacts carry their own).
    ``static_batch``: OpenVINO compiles one static-shape model per input shape (faster than a dynamic batch).
    """
    folder = Path(folder)
    if fmt == 'onnx':
        if precision == 'bf16':
            raise BackendUnavailable("onnxruntime's CPU execution provider has no bf16 Conv / MatMul kernels")
        from ._onnx import ort_runner
        return ort_runner(folder / 'model.onnx', threads)
    if fmt == 'openvino':
        from ._openvino import ov_runner
        return ov_runner(folder / 'model.xml', 'bf16' if precision == 'bf16' else 'f32', threads,
                         static_batch=static_batch)
    raise BackendUnavailable(f'unknown artefact format {fmt!r}')
