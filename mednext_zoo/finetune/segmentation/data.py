"""Training and validation data of the segmentation task: prepared volumes, whole-slice and patch datasets.

Two spatial recipes (``spatial_mode``):

* ``resize`` -- every slice is resized to the model size ``S x S`` (bilinear; labels nearest), the TransUNet
  protocol. Thin structures of large images can vanish in the resize.
* ``patch`` -- slices stay at native resolution; training draws random ``P x P`` patches (a share
  ``oversample_fg`` of them centred on a pixel of a foreground class chosen uniformly among those present, as
  nnU-Net does), validation scores a fixed grid of tiles, and prediction slides a window over the whole slice
  (:func:`.inference.predict_volume`). Memory per step depends on ``P``, not on the image size.

:func:`choose_spatial_mode` states the default rule: 2D images with a side larger than the model size are patched,
volumes are resized unless a patch size is given, ``resize=True`` always resizes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data.volumes import Volume
from ...errors import UserInputError
from .preprocess import augment_pair, check_volume_size, normalize_intensity, resize_labels, resize_slices

__all__ = ['Prepared', 'prepare_volume', 'SliceDataset', 'PatchDataset', 'TileDataset', 'crop_patch',
           'choose_spatial_mode', 'SPATIAL_MODES']

SPATIAL_MODES = ('resize', 'patch')


@dataclass
class Prepared:
    """One case ready for training: ``image`` ``D, C, H, W`` float32, ``label`` ``D, H, W`` int64 (at the model size
    when resized, native otherwise)."""
    image: torch.Tensor
    label: torch.Tensor


def prepare_volume(vol: Volume, img_size: int, intensity: str, window, spatial_mode: str = 'resize') -> Prepared:
    """Normalise the intensities of ``vol`` and, in ``resize`` mode, resize its slices to ``img_size``."""
    check_volume_size(vol.image.shape[1:3], vol.image_path, model_size=img_size)
    img = normalize_intensity(vol.image, intensity, window)
    img = np.moveaxis(img, -1, 1) if img.ndim == 4 else img[:, None]  # D, C, H, W
    if spatial_mode == 'patch':
        return Prepared(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(vol.label)).long())
    return Prepared(resize_slices(img, (img_size, img_size)).contiguous(),
                    resize_labels(vol.label, (img_size, img_size)))


def choose_spatial_mode(shapes: Sequence[Tuple[int, int]], img_size: int, is_2d: bool,
                        patch_size: Optional[int] = None, resize: bool = False) -> Tuple[str, int]:
    """``(mode, model size)`` by the default rule: ``resize=True`` resizes; a ``patch_size`` patches at that size;
    2D images with a side larger than ``img_size`` are patched at ``img_size``; everything else is resized."""
    if patch_size is not None and resize:
        raise UserInputError('--patch-size trains on patches at native resolution and --resize resizes whole '
                             'images; give one of them.')
    if resize:
        return 'resize', img_size
    if patch_size is not None:
        if patch_size < 32 or patch_size % 32:
            raise UserInputError(f'--patch-size must be a positive multiple of 32 (the models\' total stride), got '
                                 f'{patch_size}.')
        return 'patch', patch_size
    if is_2d and any(max(s) > img_size for s in shapes):
        return 'patch', img_size
    return 'resize', img_size


def _context_index(z: int, d: int, context: int) -> List[int]:
    r = context // 2
    return [min(max(z + o, 0), d - 1) for o in range(-r, r + 1)]


def _slice_input(p: Prepared, z: int, context: int) -> torch.Tensor:
    if context > 1:
        return p.image[_context_index(z, p.image.shape[0], context), 0]
    return p.image[z]


def crop_patch(image: torch.Tensor, label: torch.Tensor, size: int, rng: random.Random, fg_p: float = 0.0,
               num_classes: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """A random ``size x size`` patch of ``image`` ``C, H, W`` / ``label`` ``H, W`` (zero-padded when smaller).

    With probability ``fg_p`` the patch holds a pixel of a foreground class drawn uniformly among the classes
    present (at a random position in the patch); otherwise its position is uniform.
    """
    c, h, w = image.shape
    if h < size or w < size:  # pad bottom / right to the patch size (background label)
        ph, pw = max(0, size - h), max(0, size - w)
        image = F.pad(image, (0, pw, 0, ph))
        label = F.pad(label, (0, pw, 0, ph))
        h, w = image.shape[-2:]
    y0 = x0 = None
    if fg_p > 0 and rng.random() < fg_p:
        present = [k for k in torch.unique(label).tolist() if 0 < k < num_classes]
        if present:
            k = present[rng.randrange(len(present))]
            ys, xs = torch.nonzero(label == k, as_tuple=True)
            j = rng.randrange(len(ys))
            cy, cx = int(ys[j]), int(xs[j])
            y0 = min(max(cy - rng.randrange(size), 0), h - size)
            x0 = min(max(cx - rng.randrange(size), 0), w - size)
    if y0 is None:
        y0, x0 = rng.randint(0, h - size), rng.randint(0, w - size)
    return image[:, y0:y0 + size, x0:x0 + size], label[y0:y0 + size, x0:x0 + size]


class SliceDataset(Dataset):
    """Training / validation slices of prepared (resized) volumes: item ``(i, epoch)`` -> ``(C*k, S, S)`` image and
    ``(S, S)`` label; augmentation (TransUNet's rot90 + flip / small rotation) is seeded by (seed, epoch, i)."""

    def __init__(self, volumes: Sequence[Prepared], context: int = 1, augment: bool = False, seed: int = 0,
                 max_slices: int = 0):
        self.volumes = list(volumes)
        self.context, self.augment, self.seed = context, augment, seed
        self.index = [(v, z) for v, p in enumerate(self.volumes) for z in range(p.image.shape[0])]
        if max_slices and len(self.index) > max_slices:  # evenly spaced subset (validation during training)
            keep = np.linspace(0, len(self.index) - 1, max_slices).round().astype(int)
            self.index = [self.index[i] for i in np.unique(keep)]

    def __len__(self) -> int:
        return len(self.index)

    def class_presence(self, num_classes: int) -> torch.Tensor:
        """``len(self), K`` bool: the classes the slice of each item holds (for the foreground sampler)."""
        from ..recipe import slice_class_presence
        per_volume = [slice_class_presence(p.label, num_classes) for p in self.volumes]
        return torch.stack([per_volume[v][z] for v, z in self.index]) if self.index else \
            torch.zeros(0, num_classes, dtype=torch.bool)

    def __getitem__(self, item):
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        v, z = self.index[i]
        p = self.volumes[v]
        x, y = _slice_input(p, z, self.context), p.label[z]
        if self.augment:
            rng = random.Random((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
            x, y = augment_pair(x, y, rng)
        return x.contiguous(), y.contiguous()


class PatchDataset(SliceDataset):
    """Random ``patch x patch`` crops of native-resolution slices: item ``(i, epoch)`` is a slice (as drawn by the
    slice sampler) cropped at a position seeded by ``(seed, epoch, i)``, foreground-centred with probability
    ``fg_p`` (see :func:`crop_patch`), then augmented like :class:`SliceDataset`.

    Each slice appears ``ceil(H * W / patch**2)`` times per epoch, so an epoch draws as many patch pixels as the
    slices hold (an epoch means the same amount of image as when resizing)."""

    def __init__(self, volumes: Sequence[Prepared], patch: int, num_classes: int, context: int = 1,
                 augment: bool = False, seed: int = 0, fg_p: float = 0.0):
        super().__init__(volumes, context, augment, seed)
        self.patch, self.num_classes, self.fg_p = int(patch), int(num_classes), float(fg_p)
        self.index = [(v, z) for v, z in self.index
                      for _ in range(max(1, -(-int(np.prod(self.volumes[v].image.shape[-2:])) // self.patch ** 2)))]

    def __getitem__(self, item):
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        v, z = self.index[i]
        p = self.volumes[v]
        rng = random.Random((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
        x, y = crop_patch(_slice_input(p, z, self.context), p.label[z], self.patch, rng, self.fg_p, self.num_classes)
        if self.augment:
            x, y = augment_pair(x, y, rng)
        return x.contiguous(), y.contiguous()


class TileDataset(Dataset):
    """Validation during training in patch mode: every slice cut into a fixed grid of ``patch x patch`` tiles
    (zero-padded at the borders), evenly thinned to ``max_tiles``. Tiles are cut on access (no copy)."""

    def __init__(self, volumes: Sequence[Prepared], patch: int, context: int = 1, max_tiles: int = 0):
        self.volumes, self.patch, self.context = list(volumes), int(patch), context
        self.index = []
        for v, p in enumerate(self.volumes):
            h, w = p.image.shape[-2:]
            for z in range(p.image.shape[0]):
                for y0 in range(0, max(h - 1, 0) // self.patch * self.patch + 1, self.patch):
                    for x0 in range(0, max(w - 1, 0) // self.patch * self.patch + 1, self.patch):
                        self.index.append((v, z, y0, x0))
        if max_tiles and len(self.index) > max_tiles:
            keep = np.linspace(0, len(self.index) - 1, max_tiles).round().astype(int)
            self.index = [self.index[i] for i in np.unique(keep)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        v, z, y0, x0 = self.index[i]
        p, s = self.volumes[v], self.patch
        x = _slice_input(p, z, self.context)[:, y0:y0 + s, x0:x0 + s]
        y = p.label[z, y0:y0 + s, x0:x0 + s]
        ph, pw = s - x.shape[-2], s - x.shape[-1]
        if ph or pw:
            x, y = F.pad(x, (0, pw, 0, ph)), F.pad(y, (0, pw, 0, ph))
        return x.contiguous(), y.contiguous()
