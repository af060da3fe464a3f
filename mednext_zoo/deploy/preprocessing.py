"""What a deployed model expects of its input, recorded beside the artefact (``preprocessing.json``), and the
reader that turns an image folder (calibration images) into model inputs with it."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserInputError
from ..models.medunext import MedUNeXt  # 'medunext' does not contain 'unet': recognised by type

__all__ = ['Preprocessing', 'load_calibration_images', 'task_of']


def task_of(model: nn.Module) -> str:
    """``seg`` for a dense-prediction model (MedUNeXt, smp, any ``*UNet*``), else ``cls``."""
    name = type(model).__name__.lower()
    return 'seg' if (isinstance(model, MedUNeXt) or 'unet' in name or hasattr(model, 'segmentation_head')) else 'cls'


@dataclass
class Preprocessing:
    """Input recipe: read as float in [0, 1] (DICOM / NIfTI through ``window``, else min-max; 8-bit images / 255),
    resize to ``input_size[1:]`` (``interpolation``), then ``(x - mean) / std`` per channel; NCHW float32."""

    input_size: Tuple[int, int, int]  # C, H, W
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    interpolation: str = 'bilinear'
    window: Optional[str] = None  # CT preset or "LEVEL,WIDTH" (HU) for DICOM / NIfTI input; None: min-max
    task: str = 'cls'
    num_classes: Optional[int] = None
    label_names: Optional[List[str]] = None
    input_name: str = 'x'
    output_name: str = 'logits'
    layout: str = 'NCHW'
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, window: Optional[str] = None,
                   label_names: Optional[Sequence[str]] = None,
                   input_size: Optional[Tuple[int, int, int]] = None) -> Preprocessing:
        """From a timm model's ``pretrained_cfg`` (mean / std / interpolation) and its ``in_chans`` / ``img_size``
        (or ``input_size`` ``(C, H, W)`` for a model that does not carry them, e.g. an smp U-Net)."""
        cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
        in_chans = int(input_size[0] if input_size else getattr(model, 'in_chans', None)
                       or cfg.get('input_size', (3,))[0])
        size = (input_size[1:] if input_size else None) or getattr(model, 'img_size', None) \
            or cfg.get('input_size', (in_chans, 224, 224))[1:]
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean = _per_channel(cfg.get('mean', (0.5,)), in_chans)
        std = _per_channel(cfg.get('std', (0.5,)), in_chans)
        if window is not None:
            from ..data.io import parse_window
            parse_window(window)  # a clear error for a bad window now, not at deployment
        names = list(label_names) if label_names else (cfg.get('label_names') or None)
        return cls(input_size=(in_chans, *size), mean=mean, std=std,
                   interpolation=str(cfg.get('interpolation') or 'bilinear'), window=window, task=task_of(model),
                   num_classes=getattr(model, 'num_classes', None), label_names=names)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> model input."""
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def to_json(self) -> str:
        """The record as written to ``preprocessing.json``."""
        return json.dumps(asdict(self), indent=2) + '\n'

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """Read a ``preprocessing.json`` text back."""
        data = json.loads(text)
        data['input_size'] = tuple(data['input_size'])
        data['mean'], data['std'] = tuple(data['mean']), tuple(data['std'])
        return cls(**data)


def _per_channel(values: Sequence[float], chans: int) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    return tuple([sum(values) / len(values)] * chans)


def load_calibration_images(folder: Union[str, os.PathLike], pre: Preprocessing, limit: int = 64,
                            seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` images of ``folder`` (recursively; every format ``mednext_zoo.data`` reads) as model
    inputs ``(N, C, H, W)``: read, resized, normalised as ``pre`` says. A seeded choice when there are more."""
    from ..data.io import SUPPORTED_EXTS, load_image
    from .samples import to_channels

    root = Path(folder)
    if not root.is_dir():
        raise UserInputError(f'--calibration {folder}: no such folder. Give a folder of images like the ones the '
                             'model will see (PNG / JPEG / DICOM / NIfTI), e.g. 32-300 from the training set.')
    files = sorted(p for p in root.rglob('*') if p.is_file() and p.name.lower().endswith(SUPPORTED_EXTS))
    if not files:
        raise UserInputError(f'--calibration {folder} holds no image the readers know '
                             f'({", ".join(SUPPORTED_EXTS)}): add calibration images.')
    if len(files) > limit:
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit]
        files = [files[i] for i in sorted(order.tolist())]
    c, h, w = pre.input_size
    out = []
    for path in files:
        arr = load_image(path, window=pre.window)
        img = torch.from_numpy(arr).float()
        img = img[None] if img.dim() == 2 else img.permute(2, 0, 1)
        mode = pre.interpolation if pre.interpolation in ('bilinear', 'bicubic', 'nearest') else 'bilinear'
        img = F.interpolate(img[None], size=(h, w), mode=mode, **({} if mode == 'nearest' else
                                                                 {'antialias': True, 'align_corners': False}))[0]
        out.append(to_channels(img.clamp(0, 1), c))
    return pre.normalise(torch.stack(out))
