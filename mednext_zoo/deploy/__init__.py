"""Deployable inference: ONNX Runtime / OpenVINO artefacts (fp32, bf16, int8) with their preprocessing, the
backends the benchmark times, and the drift figures that compare them with eager fp32 PyTorch.

    from mednext_zoo.deploy import export_model
    report = export_model(model, 'deploy/mednext_base', fmt='openvino', int8=True, calibration='calib_images/')
    print(report.summary())

Layering: uses the models and the data layer (image readers) only; ``benchmark`` and ``cli`` use it.
onnx / onnxruntime (extra ``export``) and openvino / nncf (extra ``openvino``) are imported on first use.
"""
from .drift import DRIFT_FIELDS, drift
from .export import ARTEFACT_FORMATS, ExportReport, export_model, load_artefact
from .preprocessing import Preprocessing, load_calibration_images
from .runtimes import BACKENDS, DTYPES, BackendUnavailable, prepare_runner
from .samples import sample_images

__all__ = [
    'DRIFT_FIELDS', 'drift', 'ARTEFACT_FORMATS', 'ExportReport', 'export_model', 'load_artefact', 'Preprocessing',
    'load_calibration_images', 'BACKENDS', 'DTYPES', 'BackendUnavailable', 'prepare_runner', 'sample_images',
]
