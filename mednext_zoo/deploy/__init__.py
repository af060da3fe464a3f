"""Deployable inference: ONNX Runtime / OpenVINO artefacts (fp32, bf16, int8) with the preprocessing the model
was trained with, the backends the benchmark times, and the drift figures that compare them with eager fp32 PyTorch.

    from mednext_zoo.deploy import export_model, load_artefact, preprocess
    report = export_model(model, 'deploy/mednext_base', fmt='openvino', preprocessing='runs/c2/export')
    print(report.summary())
    logits = load_artefact('deploy/mednext_base')(torch.from_numpy(preprocess('scan.dcm', 'deploy/mednext_base')))

Layering: uses the models and the data layer (image readers) only; ``benchmark`` and ``cli`` use it.
onnx / onnxruntime (extra ``export``) and openvino / nncf (extra ``openvino``) are imported on first use.
"""
from ..data.preprocessing import PreprocessingSpec, classification_spec, preprocess, segmentation_spec
from .drift import DRIFT_FIELDS, drift
from .export import ARTEFACT_FORMATS, ExportReport, export_model, load_artefact
from .preprocessing import Preprocessing, load_calibration_images
from .runtimes import BACKENDS, DTYPES, BackendUnavailable, prepare_runner
from .samples import sample_images

__all__ = [
    'DRIFT_FIELDS', 'drift', 'ARTEFACT_FORMATS', 'ExportReport', 'export_model', 'load_artefact', 'Preprocessing',
    'PreprocessingSpec', 'classification_spec', 'segmentation_spec', 'preprocess', 'load_calibration_images',
    'BACKENDS', 'DTYPES', 'BackendUnavailable', 'prepare_runner', 'sample_images',
]
