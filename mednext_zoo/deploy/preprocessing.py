"""What a deployed model expects of its input, recorded beside the artefact (``preprocessing.json``): the training
recipe (:class:`~mednext_zoo.data.preprocessing.PreprocessingSpec`) and the artefact's inputs / outputs; and the
reader that turns a folder of raw files (calibration images) into model inputs with it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data.preprocessing import PreprocessingSpec, as_spec, classification_spec, preprocess
from ..errors import UserInputError
from ..models.medunext import MedUNeXt  # 'medunext' does not contain 'unet': recognised by type

__all__ = ['Preprocessing', 'load_calibration_images', 'task_of', 'spec_for_model', 'normalise_for_model']

_TASK_NAMES = {'classification': 'cls', 'segmentation': 'seg'}


def task_of(model: nn.Module) -> str:
    """``seg`` for a dense-prediction model (MedUNeXt, smp, any ``*UNet*``), else ``cls``."""
    name = type(model).__name__.lower()
    return 'seg' if (isinstance(model, MedUNeXt) or 'unet' in name or hasattr(model, 'segmentation_head')) else 'cls'


def _model_size(model: nn.Module) -> Tuple[int, Tuple[int, int]]:
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    in_chans = int(getattr(model, 'in_chans', None) or cfg.get('input_size', (3,))[0])
    size = getattr(model, 'img_size', None) or cfg.get('input_size', (in_chans, 224, 224))[1:]
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return in_chans, size


def spec_for_model(model: nn.Module, window: Union[None, str, Tuple[float, float]]) -> PreprocessingSpec:
    """The package's classification recipe for ``model`` read with ``window`` (a CT preset, ``"LEVEL,WIDTH"``,
    ``"file"``, or ``None`` / ``"minmax"`` for min-max): the whole image resized to the model's size (bilinear,
    antialiased), grey repeated to its channels, its ``pretrained_cfg`` mean / std. Refused for a segmentation
    model, whose recipe is more than a window."""
    if task_of(model) == 'seg':
        raise UserInputError('A segmentation model\'s recipe is more than a window (intensity mode, window, 2.5D '
                             'context, size): pass the preprocessing it was trained with (--preprocessing '
                             'RUN/export/segmentation.json, or export the run folder itself).')
    in_chans, size = _model_size(model)
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    return classification_spec(size, in_chans, cfg.get('mean', (0.5,)), cfg.get('std', (0.5,)), window)


def normalise_for_model(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` in [0, 1] -> ``(x - mean) / std`` with the model's ``pretrained_cfg`` (per channel; one
    averaged value when its length differs from C). For drift inputs, not a training recipe."""
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    c = images.shape[1]

    def per_channel(values: Sequence[float]) -> torch.Tensor:
        v = [float(x) for x in values]
        v = v if len(v) == c else [sum(v) / len(v)] * c
        return torch.tensor(v, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - per_channel(cfg.get('mean', (0.5,)))) / per_channel(cfg.get('std', (0.5,)))


@dataclass
class Preprocessing:
    """``preprocessing.json``: the training recipe (``spec``, under key ``preprocessing``) and the artefact's I/O:
    ``input_size`` ``(C, H, W)`` of one model input, ``task`` (``cls`` / ``seg``), classes, input / output names."""

    spec: PreprocessingSpec
    task: str = 'cls'
    num_classes: Optional[int] = None
    label_names: Optional[List[str]] = None
    input_name: str = 'x'
    output_name: str = 'logits'
    layout: str = 'NCHW'
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one model input: the resize target, or the sliding-window patch."""
        return self.spec.input_size

    @property
    def mean(self) -> Tuple[float, ...]:
        """The per-channel normalisation mean of the recipe."""
        return self.spec.mean

    @property
    def std(self) -> Tuple[float, ...]:
        """The per-channel normalisation std of the recipe."""
        return self.spec.std

    @classmethod
    def for_model(cls, model: nn.Module, spec: Union[PreprocessingSpec, Mapping[str, Any], str, os.PathLike],
                  label_names: Optional[Sequence[str]] = None) -> Preprocessing:
        """The record for ``model`` exported with ``spec``; refused when they disagree (task, channels, size)."""
        spec = as_spec(spec)
        task = task_of(model)
        if _TASK_NAMES[spec.task] != task:
            raise UserInputError(f'The preprocessing describes {spec.task} but the model is a '
                                 f'{"segmentation" if task == "seg" else "classification"} network: pass the '
                                 f'description it was trained with.')
        in_chans, size = _model_size(model)
        if in_chans != spec.in_chans:
            raise UserInputError(f'The preprocessing gives {spec.in_chans} input channel(s) but the model takes '
                                 f'{in_chans}: pass the description it was trained with.')
        if spec.spatial['mode'] == 'resize' and tuple(spec.input_size[1:]) != size and \
                getattr(model, 'img_size', None) is not None:
            raise UserInputError(f'The preprocessing resizes to {spec.input_size[1]}x{spec.input_size[2]} but the '
                                 f'model was built for {size[0]}x{size[1]}: pass the description it was trained '
                                 f'with.')
        num_classes = getattr(model, 'num_classes', None)
        names = list(label_names) if label_names else None
        if names is not None and num_classes is not None and len(names) != num_classes:
            raise UserInputError(f'{len(names)} label names ({", ".join(names)}) for a model with {num_classes} '
                                 f'outputs: give one name per output, in output order.')
        return cls(spec=spec, task=task, num_classes=num_classes, label_names=names)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> ``(x - mean) / std`` (the last step of the recipe)."""
        mean = torch.tensor(self.spec.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def to_json(self) -> str:
        """The record as written to ``preprocessing.json``."""
        doc = {'preprocessing': self.spec.to_dict(), 'input_size': list(self.input_size), 'task': self.task,
               'num_classes': self.num_classes, 'label_names': self.label_names, 'input_name': self.input_name,
               'output_name': self.output_name, 'layout': self.layout, 'extra': self.extra}
        return json.dumps(doc, indent=2) + '\n'

    @classmethod
    def from_json(cls, text: str, source: str = 'preprocessing.json') -> Preprocessing:
        """Read a ``preprocessing.json`` text back."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserInputError(f'{source} is not valid JSON ({e}).') from None
        if not isinstance(data, dict) or not isinstance(data.get('preprocessing'), dict):
            raise UserInputError(f'{source} holds no preprocessing description: it was written by an older '
                                 f'mednext-zoo that recorded an incomplete recipe. Export the model again.')
        spec = PreprocessingSpec.from_dict(data['preprocessing'], f'{source} ("preprocessing")')
        keep = ('task', 'num_classes', 'label_names', 'input_name', 'output_name', 'layout', 'extra')
        return cls(spec=spec, **{k: data[k] for k in keep if k in data})


def load_calibration_images(folder: Union[str, os.PathLike], pre: Preprocessing, limit: int = 64,
                            seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` model inputs ``(N, C, H, W)`` from the raw files of ``folder`` (recursively; every format
    the model's reader takes), each read exactly as ``pre``'s recipe says (:func:`mednext_zoo.data.preprocessing.
    preprocess`; every slice of a volume is one input). A seeded choice when there are more; sliding-window
    recipes give seeded patch-sized crops."""
    from ..data.io import SUPPORTED_EXTS
    from ..data.volumes import IMAGE_EXTS, NIFTI_EXTS, SITK_EXTS

    root = Path(folder)
    if not root.is_dir():
        raise UserInputError(f'--calibration {folder}: no such folder. Give a folder of raw files like the ones the '
                             'model will see (PNG / JPEG / DICOM / NIfTI), e.g. 32-300 from the training set.')
    exts = SUPPORTED_EXTS if pre.spec.task == 'classification' else NIFTI_EXTS + SITK_EXTS + IMAGE_EXTS
    files = sorted(p for p in root.rglob('*') if p.is_file() and p.name.lower().endswith(exts))
    if not files:
        raise UserInputError(f'--calibration {folder} holds no file the model\'s reader takes '
                             f'({", ".join(exts)}): add calibration images.')
    rng = np.random.default_rng(seed)
    if len(files) > limit:
        files = [files[i] for i in sorted(rng.choice(len(files), limit, replace=False).tolist())]
    inputs = []
    for path in files:
        x = preprocess(path, pre.spec)
        if pre.spec.spatial['mode'] == 'sliding_window':
            x = np.stack([_crop(s, pre.input_size[1:], rng) for s in x])
        inputs.extend(x)
    if len(inputs) > limit:
        inputs = [inputs[i] for i in sorted(rng.choice(len(inputs), limit, replace=False).tolist())]
    return torch.from_numpy(np.stack(inputs))


def _crop(x: np.ndarray, size: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A seeded ``size`` crop of ``C, H, W`` (zero-padded where the image is smaller, as sliding windows are)."""
    c, h, w = x.shape
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        h, w = x.shape[1:]
    top, left = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
    return x[:, top:top + size[0], left:left + size[1]]
