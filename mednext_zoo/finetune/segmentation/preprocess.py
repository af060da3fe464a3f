"""Intensity normalisation, slice resizing (and back), 2.5D stacking and training augmentation.

Volumes here are in the canonical slices-first order ``D, H, W`` (see :mod:`.data`).
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import UserInputError

__all__ = [
    'SYNAPSE_WINDOW', 'INTENSITY_MODES', 'ct_window', 'zscore', 'minmax', 'normalize_intensity', 'resize_slices',
    'resize_labels', 'stack_25d', 'check_volume_size', 'random_rot_flip', 'random_rotate', 'augment_pair',
]

SYNAPSE_WINDOW: Tuple[float, float] = (-125.0, 275.0)
INTENSITY_MODES = ('ct', 'zscore', 'minmax', 'none')


def ct_window(volume: np.ndarray, window: Tuple[float, float] = SYNAPSE_WINDOW, per_volume: bool = True
              ) -> np.ndarray:
    """Clip HU to ``window`` and scale to [0, 1].

    ``per_volume`` (the TransUNet recipe) scales the clipped volume by its own min / max; otherwise by the
    window bounds. They agree whenever the volume spans the whole window (almost every abdominal CT).
    """
    lo, hi = window
    if not hi > lo:
        raise UserInputError(f'CT window {window}: the upper bound must exceed the lower bound.')
    v = np.clip(volume.astype(np.float32), lo, hi)
    if per_volume:
        vmin, vmax = float(v.min()), float(v.max())
        return (v - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(v)
    return (v - lo) / (hi - lo)


def zscore(volume: np.ndarray) -> np.ndarray:
    """MRI per-volume normalisation: zero mean, unit standard deviation over the whole volume."""
    v = volume.astype(np.float32)
    std = float(v.std())
    return (v - float(v.mean())) / std if std > 0 else v - float(v.mean())


def minmax(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max scaling to [0, 1]."""
    v = volume.astype(np.float32)
    vmin, vmax = float(v.min()), float(v.max())
    return (v - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(v)


def normalize_intensity(volume: np.ndarray, mode: str, window: Tuple[float, float] = SYNAPSE_WINDOW) -> np.ndarray:
    """Apply one of :data:`INTENSITY_MODES` ('ct' window, 'zscore' / 'minmax' per volume, 'none')."""
    if mode == 'ct':
        return ct_window(volume, window)
    if mode == 'zscore':
        return zscore(volume)
    if mode == 'minmax':
        return minmax(volume)
    if mode == 'none':
        return volume.astype(np.float32)
    raise UserInputError(f'Unknown intensity mode {mode!r}; choose one of {", ".join(INTENSITY_MODES)}.')


def resize_slices(stack: np.ndarray | torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of images ``N, H, W`` or ``N, C, H, W`` to ``size`` -> float tensor of the same rank."""
    t = torch.as_tensor(np.ascontiguousarray(stack) if isinstance(stack, np.ndarray) else stack).float()
    squeeze = t.dim() == 3
    if squeeze:
        t = t[:, None]
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode='bilinear', align_corners=False)
    return t[:, 0] if squeeze else t


def resize_labels(labels: np.ndarray | torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of label maps ``N, H, W`` to ``size`` (values are kept exactly)."""
    t = torch.as_tensor(np.ascontiguousarray(labels) if isinstance(labels, np.ndarray) else labels)
    if tuple(t.shape[-2:]) == tuple(size):
        return t.long()
    out = F.interpolate(t[:, None].float(), size=tuple(size), mode='nearest-exact')
    return out[:, 0].round().long()


def stack_25d(stack: torch.Tensor, k: int = 1) -> torch.Tensor:
    """2.5D input: ``D, H, W`` -> ``D, k, H, W``, channel j of slice z is slice z - k//2 + j (edges repeated)."""
    if k < 1 or k % 2 == 0:
        raise UserInputError(f'2.5D context must be an odd number of slices (1, 3, 5, ...); got {k}.')
    d = stack.shape[0]
    offsets = torch.arange(k) - k // 2
    idx = (torch.arange(d)[:, None] + offsets[None]).clamp(0, d - 1)
    return stack[idx]


def check_volume_size(shape: Sequence[int], path: str, min_side: int = 16, model_size: Optional[int] = None) -> None:
    """Raise when a slice is smaller than ``min_side`` on a side (too small to resize to the model)."""
    h, w = shape[-2:]
    if h < min_side or w < min_side:
        what = f' (the model works at {model_size}x{model_size})' if model_size else ''
        raise UserInputError(f'{path}: slices of {h}x{w} voxels are too small for the model{what}; each in-plane '
                             f'side needs at least {min_side} voxels. Check that the slice axis is right.')


def random_rot_flip(image: torch.Tensor, label: torch.Tensor, rng: random.Random) -> Tuple[torch.Tensor, torch.Tensor]:
    """TransUNet's augmentation: rot90 by a random multiple, then a flip along a random in-plane axis.

    ``image`` is ``C, H, W`` and ``label`` ``H, W`` (square slices).
    """
    k = rng.randint(0, 3)
    image, label = torch.rot90(image, k, dims=(-2, -1)), torch.rot90(label, k, dims=(-2, -1))
    axis = rng.choice((-2, -1))
    return torch.flip(image, dims=(axis,)), torch.flip(label, dims=(axis,))


def random_rotate(image: torch.Tensor, label: torch.Tensor, rng: random.Random, max_deg: float = 20.0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotation by an angle in [-max_deg, max_deg): bilinear for the image, nearest for the label."""
    angle = math.radians(rng.uniform(-max_deg, max_deg))
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, (1, 1, *image.shape[-2:]), align_corners=False)
    img = F.grid_sample(image[None].float(), grid, mode='bilinear', padding_mode='border', align_corners=False)[0]
    lab = F.grid_sample(label[None, None].float(), grid, mode='nearest', padding_mode='zeros', align_corners=False)
    return img, lab[0, 0].round().long()


def augment_pair(image: torch.Tensor, label: torch.Tensor, rng: random.Random) -> Tuple[torch.Tensor, torch.Tensor]:
    """TransUNet's ``RandomGenerator``: p=0.5 rot90 + flip, else p=0.5 a rotation in [-20, 20) degrees."""
    if rng.random() > 0.5:
        return random_rot_flip(image, label, rng)
    if rng.random() > 0.5:
        return random_rotate(image, label, rng)
    return image, label
