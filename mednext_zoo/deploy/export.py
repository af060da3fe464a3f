"""``export_model``: a deployable ONNX / OpenVINO artefact (fp32 or int8) with ``preprocessing.json`` beside it,
checked against eager fp32 PyTorch (``parity.json``): on packaged sample images, and on raw files taken through
the written preprocessing into the artefact against the training-time loader into PyTorch.

Folder layout: ``model.onnx`` (ONNX) or ``model.xml`` + ``model.bin`` (OpenVINO IR), ``preprocessing.json``
(:class:`~mednext_zoo.deploy.Preprocessing`: the training recipe under ``preprocessing``, the input size, labels,
input / output names) and ``parity.json`` (the figures printed by the command). Every file is written atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .._atomic import atomic_path, atomic_write_text
from .._cpuload import busy, load_average, usable_cores
from ..data.preprocessing import PreprocessingSpec
from ..errors import UserInputError
from .artefact import GRAPH_FORM, open_artefact, write_artefact
from .drift import drift
from .preprocessing import Preprocessing, load_calibration_images, spec_for_model
from .samples import sample_images

__all__ = ['ARTEFACT_FORMATS', 'ExportReport', 'check_export_request', 'export_model', 'load_artefact']

ARTEFACT_FORMATS = ('onnx', 'openvino')
PREPROCESSING_FILE, PARITY_FILE = 'preprocessing.json', 'parity.json'
# int8 drift at which the summary warns: a different top-1 for 1 image in 20, or label maps that agree < 90%
WARN_TOP1, WARN_DICE = 0.95, 0.90


@dataclass
class ExportReport:
    """What ``export_model`` wrote and how the artefact compares with eager fp32 PyTorch."""

    out_dir: str
    format: str
    precision: str
    files: list
    parity: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """What was written, the preprocessing and its parity, the parity figures and the batch-1 times, as the
        command prints them."""
        p = self.parity
        lines = [f"Wrote {self.format} {self.precision} to {self.out_dir}: {', '.join(self.files)}"]
        if p.get('preprocessing_source'):
            lines.append(f"Preprocessing (from {p['preprocessing_source']}): {p['preprocessing_summary']}.")
        pp = p.get('preprocessing_parity') or {}
        if pp.get('files'):
            figures = [f"inputs max |Δ| {pp['max_abs_dinput']:.2g}"]
            if pp.get('max_abs_dlogit') is not None:
                figures.append(f"max |Δlogit| {pp['max_abs_dlogit']:.3g}")
            if pp.get('top1_agreement') is not None:
                figures.append(f"top-1 agreement {pp['top1_agreement']:.1%}")
            if pp.get('dice_vs_fp32') is not None:
                figures.append(f"label-map Dice {pp['dice_vs_fp32']:.4f}")
            names = ', '.join(r['file'] for r in pp['files'])
            lines.append(f"Preprocessing parity on {len(pp['files'])} raw files ({names}), through "
                         f"preprocessing.json into the {self.format} model vs the training-time loader into PyTorch "
                         f"(the loader configured from {pp['reference']}): " + ', '.join(figures) + '.')
            if not pp['agrees']:
                lines.append('Warning: preprocessing.json does NOT reproduce the inputs the model was trained on: '
                             'do not deploy this artefact; report it with parity.json.')
        figures = [f"max |Δlogit| {p['max_abs_dlogit']:.3g}"]
        if p.get('top1_agreement') is not None:
            figures.append(f"top-1 agreement {p['top1_agreement']:.1%}")
        if p.get('dice_vs_fp32') is not None:
            figures.append(f"label-map Dice {p['dice_vs_fp32']:.4f}")
        lines += [f"Parity against eager fp32 PyTorch on {p['images']} sample images ({p['inputs']}): "
                  + ', '.join(figures) + '.',
                  f"Speed here, batch 1 (best of {p['rounds']}): PyTorch fp32 {p['torch_ms']:.1f} ms, "
                  f"{self.format} {self.precision} {p['artefact_ms']:.1f} ms "
                  f"({p['torch_ms'] / p['artefact_ms']:.2f}x)."]
        if p.get('cpu_busy'):
            loads = ' / '.join(f'{v:.1f}' for v in p['load_avg_1min'] if v is not None)
            lines.append(f"Warning: other processes were competing for the CPU (1-min load average {loads} at start / "
                         f"end on {p['cpu_cores_usable']} cores): these times and their ratio are noisy. Measure "
                         f"with `mednext-zoo bench --backend onnxruntime,openvino` on an idle machine.")
        low = (p.get('top1_agreement') is not None and p['top1_agreement'] < WARN_TOP1) or \
            (p.get('dice_vs_fp32') is not None and p['dice_vs_fp32'] < WARN_DICE)
        if low:
            lines.append('Warning: the outputs drift noticeably from fp32: validate this artefact on labelled data '
                         'before deploying it' + (' (or calibrate on more / more typical images).'
                                                 if self.precision == 'int8' else '.'))
        return '\n'.join(lines)


def check_export_request(fmt: str, int8: bool, calibration: Optional[Union[str, os.PathLike]]) -> None:
    """Raise ``UserInputError`` for a request that cannot succeed, before any model is built."""
    if fmt not in ARTEFACT_FORMATS:
        raise UserInputError(f'unknown --format {fmt!r}: choose {", ".join(ARTEFACT_FORMATS)} (or hub for a Hub '
                             'folder).')
    if int8 and calibration is None:
        raise UserInputError('--int8 needs --calibration DIR: a folder of images like the ones the model will see '
                             '(post-training quantisation sets its int8 ranges from them).')
    if calibration is not None and not int8:
        raise UserInputError('--calibration is used by --int8 only: add --int8, or drop --calibration.')
    if calibration is not None and not Path(calibration).is_dir():
        raise UserInputError(f'--calibration {calibration}: no such folder. Give a folder of images like the ones '
                             'the model will see (PNG / JPEG / DICOM / NIfTI), e.g. 32-300 from the training set.')
    from ._onnx import require_onnxruntime
    require_onnxruntime()  # the ONNX file is the source of both formats
    if fmt == 'openvino':
        from ._openvino import require_openvino
        require_openvino()
        if int8:
            try:
                import nncf  # noqa: F401
            except ImportError:
                raise UserInputError("--format openvino --int8 needs NNCF (OpenVINO's quantiser): "
                                     "pip install 'mednext-zoo[openvino]'") from None


def export_model(
        model: nn.Module,
        out_dir: Union[str, os.PathLike],
        fmt: str = 'onnx',
        int8: bool = False,
        calibration: Optional[Union[str, os.PathLike]] = None,
        window: Optional[str] = None,
        label_names: Optional[Sequence[str]] = None,
        calibration_limit: int = 64,
        parity_images: int = 8,
        threads: Optional[int] = None,
        preprocessing: Union[PreprocessingSpec, Mapping[str, Any], str, os.PathLike, None] = None,
        record: Optional[Mapping[str, Any]] = None,
        samples: Sequence[Union[str, os.PathLike]] = (),
        preprocessing_source: Optional[str] = None,
) -> ExportReport:
    """Write ``model`` (eval, fp32) to ``out_dir`` as ``fmt`` (``onnx`` / ``openvino``), int8 if asked (then
    ``calibration`` is a folder of raw files read with the recipe), check parity and speed against eager fp32
    PyTorch, and return the report.

    The recipe the model was trained with is required: ``preprocessing`` (a
    :class:`~mednext_zoo.data.preprocessing.PreprocessingSpec`, its JSON form, or a file / folder holding one, e.g.
    a run's ``export/``), or for a classifier ``window`` (the package's classification recipe read with that CT
    window, ``"file"``, or ``"minmax"``; size, channels and mean / std from the model). ``record``: the run's
    training-loader settings, against which the raw-file parity is checked (``None``: the description itself);
    ``samples``: raw files checked besides the packaged ones."""
    check_export_request(fmt, int8, calibration)
    if preprocessing is not None and window is not None:
        raise UserInputError('Give the preprocessing once: preprocessing=... (the whole recipe) or window=... (a '
                             'classifier\'s window), not both.')
    if preprocessing is None and window is None:
        raise UserInputError('export needs the preprocessing the model was trained with, so that the artefact '
                             'is fed what it learned on: export the run folder (or its export/), pass '
                             'preprocessing=... / --preprocessing FILE (a run\'s export/config.json or '
                             'preprocessing.json holds it), or for a classifier window=... / --window (a CT preset, '
                             '"LEVEL,WIDTH", "file", or "minmax" for min-max scaling).')
    load_start = load_average()
    model = model.eval().float().cpu()
    spec = spec_for_model(model, window) if preprocessing is None else preprocessing
    pre = Preprocessing.for_model(model, spec, label_names)
    spec = pre.spec
    for f in samples:
        if not Path(f).is_file():
            raise UserInputError(f'--sample {f}: no such file. Give raw files like the deployment inputs.')
    calib = load_calibration_images(calibration, pre, limit=calibration_limit) if int8 else None
    c, h, w = pre.input_size
    inputs = pre.normalise(sample_images(parity_images, c, (h, w), seed=0))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f'{out} exists and is not a folder: name a folder for the artefact.')
    out.mkdir(parents=True, exist_ok=True)
    precision = 'int8' if int8 else 'fp32'
    with tempfile.TemporaryDirectory(prefix='mednext-zoo-export-') as tmp:
        files = write_artefact(model, tmp, fmt, int8, inputs, calib)  # the graph `bench --backend` times
        for name in sorted(files, key=lambda f: f.endswith('.xml')):  # the xml last: whoever finds it finds its bin
            with atomic_path(out / name) as dst:
                os.replace(Path(tmp) / name, dst)
    pre.extra = {'format': fmt, 'precision': precision, 'files': files, 'graph': GRAPH_FORM,
                 'calibration_images': None if calib is None else int(calib.shape[0])}
    atomic_write_text(out / PREPROCESSING_FILE, pre.to_json())
    run = load_artefact(out, threads=threads)
    with torch.inference_mode():
        reference = model(inputs)
    parity = drift(reference, run(inputs), pre.task)
    parity.update(images=int(inputs.shape[0]), inputs='packaged pydicom / scikit-image samples, seeded crops',
                  **_speed(lambda x: model(x), run, inputs[:1]))
    from .parity import preprocessing_parity
    parity['preprocessing_source'] = preprocessing_source or ('window ' + str(window) if window is not None
                                                             else 'the given description')
    parity['preprocessing_summary'] = spec.summary()
    parity['preprocessing_parity'] = preprocessing_parity(model, run, spec, record, samples)
    loads = [load_start, load_average()]
    cores = usable_cores()
    parity.update(load_avg_1min=loads, cpu_cores_usable=cores, cpu_busy=busy(loads, cores))
    atomic_write_text(out / PARITY_FILE, json.dumps(parity, indent=2) + '\n')
    return ExportReport(str(out), fmt, precision, files + [PREPROCESSING_FILE, PARITY_FILE], parity)


def _speed(torch_fn: Callable, run: Callable, x: torch.Tensor, rounds: int = 5) -> Dict[str, Any]:
    """Best-of-``rounds`` batch-1 times, interleaved, in ms (a first look; the benchmark is the measurement)."""
    best = {'torch_ms': float('inf'), 'artefact_ms': float('inf')}
    with torch.inference_mode():
        torch_fn(x), run(x)
        for _ in range(rounds):
            for key, fn in (('torch_ms', torch_fn), ('artefact_ms', run)):
                t0 = time.perf_counter()
                fn(x)
                best[key] = min(best[key], (time.perf_counter() - t0) * 1e3)
    return {**best, 'rounds': rounds}


def load_artefact(folder: Union[str, os.PathLike], threads: Optional[int] = None,
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A folder written by ``export_model`` as ``x (N, C, H, W) -> logits`` (the input already preprocessed as
    its ``preprocessing.json`` says: :func:`mednext_zoo.deploy.preprocess` does it)."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / PREPROCESSING_FILE).read_text())
    except FileNotFoundError:
        raise UserInputError(f'{folder} holds no {PREPROCESSING_FILE}: not a folder written by '
                             '`mednext-zoo export --format onnx|openvino`.') from None
    except json.JSONDecodeError as e:
        raise UserInputError(f'{folder / PREPROCESSING_FILE} is not valid JSON ({e}).') from None
    extra = (doc.get('extra') or {}) if isinstance(doc, dict) else {}
    fmt = extra.get('format')
    if fmt in ARTEFACT_FORMATS:
        return open_artefact(folder, fmt, 'fp32', threads, static_batch=extra.get('graph') == GRAPH_FORM)
    raise UserInputError(f'{folder / PREPROCESSING_FILE} names no known format ({fmt!r}).')
