"""A fixed, seeded set of real-looking medical images for drift / parity checks and default calibration.

Sources that ship inside installed packages (no download): pydicom's ``CT_small.dcm`` and ``MR_small.dcm``
(windowed to [0, 1] by min-max), scikit-image's ``immunohistochemistry()``, ``retina()`` and
``microaneurysms()``. Each sample is a seeded random crop (a quarter to all of the image's area), optionally
flipped, resized to the model's input. Smooth seeded noise stands in only where neither package is installed.
"""
from __future__ import annotations

import functools
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['sample_images', 'source_images', 'to_channels']


@functools.lru_cache(maxsize=1)
def source_images() -> Tuple[np.ndarray, ...]:
    """The packaged images as float32 ``(H, W)`` or ``(H, W, 3)`` arrays in [0, 1] (may be empty)."""
    out: List[np.ndarray] = []
    try:
        from pydicom.data import get_testdata_file

        from ..data.io import load_image
        for name in ('CT_small.dcm', 'MR_small.dcm'):
            path = get_testdata_file(name)
            if path:
                out.append(load_image(path))
    except ImportError:
        pass
    try:
        from skimage import data as skd
        for name in ('immunohistochemistry', 'retina', 'microaneurysms'):
            try:
                img = np.asarray(getattr(skd, name)(), dtype=np.float32)
            except Exception:  # noqa: BLE001  (an image this scikit-image version does not ship)
                continue
            out.append(img / 255.0 if img.max() > 1 else img)
    except ImportError:
        pass
    return tuple(out)


def to_channels(img: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``C, H, W`` (C 1 or 3) -> ``in_chans, H, W``: grey is repeated, colour averaged for one channel."""
    if img.shape[0] == in_chans:
        return img
    grey = img.mean(0, keepdim=True)
    return grey.expand(in_chans, -1, -1).clone()


def sample_images(n: int, in_chans: int, size: Tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``n`` images ``(n, in_chans, H, W)`` in [0, 1] (not yet normalised), the same for the same arguments."""
    g = torch.Generator().manual_seed(seed)
    pool = source_images()
    out = []
    for i in range(n):
        if pool:
            arr = pool[i % len(pool)]
            img = torch.from_numpy(arr).float()
            img = img[None] if img.dim() == 2 else img.permute(2, 0, 1)
            h, w = img.shape[-2:]
            scale = 0.25 + 0.75 * torch.rand((), generator=g).item()
            ch, cw = max(8, int(h * scale ** 0.5)), max(8, int(w * scale ** 0.5))
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            img = img[:, top:top + ch, left:left + cw]
            if torch.rand((), generator=g).item() < 0.5:
                img = img.flip(-1)
        else:
            img = F.avg_pool2d(torch.rand(3, size[0] + 8, size[1] + 8, generator=g)[None], 9, 1)[0]
        img = F.interpolate(img[None], size=tuple(size), mode='bilinear', antialias=True, align_corners=False)[0]
        out.append(to_channels(img.clamp(0, 1), in_chans))
    return torch.stack(out)
