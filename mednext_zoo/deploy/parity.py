"""Preprocessing parity: raw files through the written description into the exported model, against the same
files through the training-time loader into PyTorch.

The reference side is the code that trained the model -- :class:`~mednext_zoo.data.ImageClassificationDataset`
with :func:`~mednext_zoo.data.build_transforms` (classification) or ``volume_inputs`` of
:mod:`mednext_zoo.finetune.segmentation.inference` (segmentation) -- configured from the run's own record (its
``config.json`` / ``segmentation.json``) when there is one, so a description that disagrees with how the model
was trained shows up as an input and output difference. Without a record (a bare checkpoint exported with an
explicit recipe) the loader is configured from the description itself, and the report says so.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.preprocessing import PreprocessingSpec, preprocess
from ..errors import UserInputError
from .drift import drift

__all__ = ['training_record', 'training_inputs', 'raw_samples', 'preprocessing_parity', 'INPUT_TOLERANCE']

INPUT_TOLERANCE = 1e-4  # max |Δinput| relative to the input range above which the description is reported wrong
Runner = Callable[[torch.Tensor], torch.Tensor]


def training_record(spec: PreprocessingSpec) -> Dict[str, Any]:
    """The training-loader settings a description stands for (used when no run record exists)."""
    if spec.task == 'classification':
        return {'task': 'classification', 'window': spec.reader_window(), 'img_size': int(spec.input_size[1]),
                'in_chans': spec.in_chans, 'mean': list(spec.mean), 'std': list(spec.std)}
    return {'task': 'segmentation', **spec.segmentation_settings(), 'mean': list(spec.mean), 'std': list(spec.std)}


def training_inputs(path: os.PathLike, record: Mapping[str, Any], slice_index: Optional[int] = None
                    ) -> torch.Tensor:
    """``(N, C, H, W)`` model inputs of ``path`` built by the training-time loader from ``record`` (a run's
    settings: classification ``window`` / ``img_size`` / ``in_chans`` / ``mean`` / ``std``; segmentation
    ``intensity`` / ``window`` / ``img_size`` / ``context`` / ``slice_axis`` / ``patch_size``)."""
    path = os.fspath(path)
    if record['task'] == 'classification':
        from ..data import ImageClassificationDataset, Sample, build_transforms
        from ..data.io import image_kind, nifti_num_slices
        if slice_index is None and image_kind(path) == 'nifti' and nifti_num_slices(path) > 1:
            slices: List[Optional[int]] = list(range(nifti_num_slices(path)))
        else:
            slices = [slice_index]
        ds = ImageClassificationDataset([Sample(path, '_', slice_index=k) for k in slices], {'_': 0},
                                        build_transforms(int(record['img_size']), record['mean'], record['std'], False),
                                        int(record['in_chans']), record.get('window'))
        return torch.stack([ds[i][0] for i in range(len(ds))])
    from ..data.volumes import load_volume, record_of
    from ..finetune.segmentation.inference import volume_inputs
    vol = load_volume(record_of(path), None, int(record.get('slice_axis', 2)))
    window = tuple(record.get('window') or (-125.0, 275.0))
    size = None if record.get('patch_size') else int(record['img_size'])  # patch runs: native resolution
    x = volume_inputs(vol, size, record['intensity'], window, int(record.get('context', 1)))
    c = x.shape[1]
    mean = torch.tensor(_per_channel(record.get('mean', (0.0,)), c)).view(1, -1, 1, 1)
    std = torch.tensor(_per_channel(record.get('std', (1.0,)), c)).view(1, -1, 1, 1)
    x = (x.float() - mean) / std
    return x if slice_index is None else x[slice_index:slice_index + 1]


def _per_channel(values: Sequence[float], c: int) -> List[float]:
    v = [float(x) for x in values]
    return v if len(v) == c else [sum(v) / len(v)] * c


def raw_samples(spec: PreprocessingSpec, folder: os.PathLike) -> List[Path]:
    """Raw files that ship inside installed packages, as the model's reader takes them: pydicom's
    ``CT_small.dcm`` (classification), nibabel's ``anatomical.nii`` (a 3D MR volume), and PNGs written to
    ``folder`` (8-bit grey; colour where the model takes 3 channels)."""
    from PIL import Image

    folder = Path(folder)
    out: List[Path] = []
    grey_ok = spec.in_chans in (1, 3) if spec.task == 'classification' else spec.in_chans == spec.context
    colour_ok = spec.in_chans == 3 and spec.context == 1
    ct = None
    try:
        from pydicom.data import get_testdata_file
        ct = get_testdata_file('CT_small.dcm')
    except ImportError:
        pass
    if ct and spec.task == 'classification':
        out.append(Path(ct))
    try:
        import nibabel.testing
        nii = Path(nibabel.testing.data_path) / 'anatomical.nii'
        if nii.is_file() and grey_ok:
            out.append(nii)
    except ImportError:
        pass
    from .samples import source_images
    pool = source_images()
    grey = next((a for a in pool if a.ndim == 2), None)
    colour = next((a for a in pool if a.ndim == 3), None)
    if grey is None and colour is not None:
        grey = colour.mean(-1)
    if colour is None and grey is not None:
        colour = np.stack([grey, grey[::-1], grey[:, ::-1]], -1)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr, ok in (('grey.png', grey, grey_ok), ('colour.png', colour, colour_ok)):
        if arr is not None and ok:
            Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(folder / name)
            out.append(folder / name)
    return out


def _slices(n: int, most: int) -> List[int]:
    return sorted(set(np.linspace(0, n - 1, min(n, most)).round().astype(int).tolist()))


def _forward(fn: Runner, x: torch.Tensor, spec: PreprocessingSpec, batch: int = 8) -> torch.Tensor:
    with torch.inference_mode():
        if spec.spatial['mode'] == 'sliding_window':
            from monai.inferers import sliding_window_inference
            s = spec.spatial
            return sliding_window_inference(x, tuple(int(v) for v in s['patch']), batch, fn,
                                            overlap=float(s.get('overlap', 0.5)), mode=s.get('blend', 'gaussian'))
        return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def preprocessing_parity(model: torch.nn.Module, run: Runner, spec: PreprocessingSpec,
                         record: Optional[Mapping[str, Any]] = None, files: Sequence[os.PathLike] = (),
                         max_slices: int = 4) -> Dict[str, Any]:
    """Each raw file (the packaged ones, then ``files``) through ``spec`` (numpy) into ``run`` (the exported
    artefact) against the training-time loader configured from ``record`` (``None``: from ``spec``) into
    ``model`` (eager fp32): per file and overall max |Δinput| (relative to the input's range), max |Δlogit|, and
    top-1 agreement (classification) or label-map Dice (segmentation). Volumes are compared on up to
    ``max_slices`` evenly spaced slices."""
    task = 'cls' if spec.task == 'classification' else 'seg'
    reference = ('the run\'s records' if record is not None
                 else 'the description itself, as no training record was given')
    record = dict(record) if record is not None else training_record(spec)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='mednext-zoo-parity-') as tmp:
        candidates = raw_samples(spec, tmp) + [Path(f) for f in files]
        for path in candidates:
            try:
                x_desc = torch.from_numpy(_read_for_parity(path, spec))
                x_ref = training_inputs(path, record, _middle_slice(path, spec))
            except UserInputError as e:
                if Path(path) in [Path(f) for f in files]:
                    raise UserInputError(f'--sample {path}: {e}') from None
                continue
            if x_desc.shape != x_ref.shape:
                rows.append({'file': Path(path).name, 'shape_description': list(x_desc.shape),
                             'shape_training': list(x_ref.shape), 'max_abs_dinput': float('inf'),
                             'max_abs_dlogit': None, 'top1_agreement': None, 'dice_vs_fp32': None})
                continue
            keep = _slices(x_desc.shape[0], max_slices)
            x_desc, x_ref = x_desc[keep], x_ref[keep]
            scale = max(1.0, float(x_ref.abs().max()))
            out = drift(_forward(model, x_ref, spec), _forward(run, x_desc, spec), task)
            rows.append({'file': Path(path).name, 'inputs': int(x_desc.shape[0]),
                         'max_abs_dinput': float((x_desc - x_ref).abs().max()) / scale, **out})
    if not rows:
        return {'files': [], 'reference': reference, 'agrees': None}
    dinput = max(r['max_abs_dinput'] for r in rows)
    res: Dict[str, Any] = {
        'files': rows, 'reference': reference, 'max_abs_dinput': dinput,
        'max_abs_dlogit': max((r['max_abs_dlogit'] for r in rows if r['max_abs_dlogit'] is not None), default=None),
        'top1_agreement': _mean([r['top1_agreement'] for r in rows], [r.get('inputs', 0) for r in rows]),
        'dice_vs_fp32': _mean([r['dice_vs_fp32'] for r in rows], [1] * len(rows)),
        'agrees': dinput <= INPUT_TOLERANCE}
    return res


def _mean(values: Sequence[Optional[float]], weights: Sequence[int]) -> Optional[float]:
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None and w]
    return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs)) if pairs else None


def _middle_slice(path: os.PathLike, spec: PreprocessingSpec) -> Optional[int]:
    """Classification of a NIfTI volume: its middle slice only (the reader's default), to keep the check short."""
    from ..data.io import image_kind, nifti_num_slices
    if spec.task == 'classification' and image_kind(path) == 'nifti':
        return nifti_num_slices(path) // 2
    return None


def _read_for_parity(path: os.PathLike, spec: PreprocessingSpec) -> np.ndarray:
    return preprocess(path, spec, slice_index=_middle_slice(path, spec))
