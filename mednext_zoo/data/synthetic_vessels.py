"""A fundus-like thin-structure segmentation set generated from a seed: branching vessel trees of 1-3 px.

Made for measuring native-resolution 2D segmentation (patch training + sliding-window prediction) against resizing
the whole image, where resizing loses what matters: vessels 1-3 px wide in a ``576 x 576`` RGB image. Each image
has a circular field of view (FOV) with a dark rim outside it, an optic disc, a darker macula, uneven illumination,
a smooth texture and noise; four vessel arcades leave the disc and branch recursively, their width falling from
about 3 px to 1 px, their contrast falling with their width (thin vessels are faint, as in real fundus photographs).

The mask is the set of pixels within half a width of a vessel's centre line; the FOV mask is the region fundus
benchmarks score inside (the ``rois/`` of :func:`write_vessel_dataset`). Image ``i`` of ``(seed, i)`` is the same on
any machine. Not a real retina; a test bench with the geometry that matters (see docs/segmentation.md).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .._atomic import atomic_write_bytes

__all__ = ['VesselImage', 'make_vessel_image', 'write_vessel_dataset']


@dataclass
class VesselImage:
    """One generated image: ``image`` ``H, W, 3`` uint8 RGB, ``mask`` ``H, W`` uint8 (1 = vessel), ``fov`` ``H, W``
    bool (inside the field of view)."""
    image: np.ndarray
    mask: np.ndarray
    fov: np.ndarray


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1] (bicubic-like upsampling of a coarse grid by separable interpolation)."""
    coarse = rng.uniform(-1, 1, (cells + 3, cells + 3))
    t = np.linspace(1, cells + 1, size)
    i0 = np.floor(t).astype(int)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None] + rows[:, i0 + 1] * f[None]


def _grow(rng: np.random.Generator, start: Tuple[float, float], angle: float, width: float, length: float,
          depth: int, segments: List[Tuple[float, float, float, float, float]], size: int, centre: float,
          radius: float) -> None:
    """Append the segments ``(y0, x0, y1, x1, width)`` of one branch and, recursively, of its children."""
    y, x = start
    step = 3.0
    n = int(length / step)
    turn = rng.normal(0, 0.02)
    for k in range(n):
        turn = 0.9 * turn + rng.normal(0, 0.025)
        angle += turn
        w = max(1.0, width * (1 - 0.35 * k / max(1, n)))
        ny, nx = y + step * math.sin(angle), x + step * math.cos(angle)
        if math.hypot(ny - centre, nx - centre) > radius - 2:
            return
        segments.append((y, x, ny, nx, w))
        y, x = ny, nx
        if depth > 0 and k > 3 and rng.random() < 0.07:
            side = rng.choice((-1.0, 1.0))
            child_w = max(1.0, w * rng.uniform(0.55, 0.8))
            _grow(rng, (y, x), angle + side * rng.uniform(0.45, 1.0), child_w, length * rng.uniform(0.35, 0.6),
                  depth - 1, segments, size, centre, radius)


def _rasterise(segments, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(mask, profile)``: the vessel mask (distance <= width / 2) and a soft darkening profile in [0, 1], weighted
    by each vessel's contrast (thin vessels fainter)."""
    dist_w = np.full((size, size), np.inf, dtype=np.float32)  # distance / half-width of the nearest vessel
    contrast = np.zeros((size, size), dtype=np.float32)
    for y0, x0, y1, x1, w in segments:
        pad = int(w) + 3
        ya, yb = int(max(0, min(y0, y1) - pad)), int(min(size, max(y0, y1) + pad + 1))
        xa, xb = int(max(0, min(x0, x1) - pad)), int(min(size, max(x0, x1) + pad + 1))
        if ya >= yb or xa >= xb:
            continue
        yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32) + 0.5
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        d = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)) / (w / 2)
        sub = dist_w[ya:yb, xa:xb]
        closer = d < sub
        sub[closer] = d[closer]
        contrast[ya:yb, xa:xb][closer] = 0.35 + 0.22 * (w - 1.0)
    mask = (dist_w <= 1.0).astype(np.uint8)
    profile = np.exp(-0.5 * (np.minimum(dist_w, 10.0) / 0.9) ** 2) * contrast
    return mask, profile


def make_vessel_image(index: int, seed: int = 0, size: int = 576) -> VesselImage:
    """Image ``index`` of the set drawn from ``seed``: a ``size x size`` fundus-like RGB image with its vessel mask
    and field of view."""
    rng = np.random.default_rng([seed, index, 20261207])
    centre = size / 2 - 0.5
    radius = size * rng.uniform(0.45, 0.48)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(yy - centre, xx - centre)
    fov = r <= radius
    left = rng.random() < 0.5  # which eye: the disc sits left or right of the centre
    disc = (centre + rng.normal(0, size * 0.02), centre + (-1 if left else 1) * size * rng.uniform(0.25, 0.3))
    macula = (centre + rng.normal(0, size * 0.02), centre - (-1 if left else 1) * size * rng.uniform(0.02, 0.06))
    segments: List[Tuple[float, float, float, float, float]] = []
    toward = 0.0 if left else math.pi  # the arcades run from the disc toward the macula side
    for base in (toward - 1.1, toward + 1.1, toward + math.pi - 0.6, toward + math.pi + 0.6):
        _grow(rng, disc, base + rng.normal(0, 0.15), rng.uniform(2.6, 3.2), size * rng.uniform(0.55, 0.8), 4,
              segments, size, centre, radius)
    mask, profile = _rasterise(segments, size)
    texture = _smooth_field(rng, size, 12) * 0.05 + _smooth_field(rng, size, 40) * 0.02
    illum = 0.85 + 0.2 * _smooth_field(rng, size, 3) - 0.35 * (r / radius) ** 4
    disc_d = np.hypot(yy - disc[0], xx - disc[1]) / (size * 0.06)
    mac_d = np.hypot(yy - macula[0], xx - macula[1]) / (size * 0.09)
    base = (0.55 + texture) * illum + 0.45 * np.exp(-disc_d ** 4) - 0.15 * np.exp(-mac_d ** 2)
    rgb = np.stack([base * 0.95 + 0.05, base * 0.55 - 0.05, base * 0.25], -1)  # orange-red fundus
    dark = np.array([0.45, 0.75, 0.6], dtype=np.float32)  # vessels show best in green
    rgb = rgb * (1 - profile[..., None] * dark)
    rgb += rng.normal(0, 0.025, rgb.shape)
    rgb[~fov] = 0.02 + rng.normal(0, 0.005, (int((~fov).sum()), 3))
    image = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return VesselImage(image, mask * fov.astype(np.uint8), fov)


def write_vessel_dataset(root: str, n_train: int = 16, n_val: int = 4, n_test: int = 8, seed: int = 0,
                         size: int = 576) -> str:
    """Write ``root/images/*.png``, ``masks/*.png`` (0 / 255), ``rois/*.png`` (the FOV) and ``root/dataset.csv``
    (``image, label, roi, split``) with ``n_train`` / ``n_val`` / ``n_test`` images; returns the CSV's path."""
    from PIL import Image
    rows = []
    for sub in ('images', 'masks', 'rois'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    splits = ['train'] * n_train + ['val'] * n_val + ['test'] * n_test
    for i, split in enumerate(splits):
        v = make_vessel_image(i, seed, size)
        name = f'vessels_{i:03d}.png'
        for sub, arr in (('images', v.image), ('masks', v.mask * 255), ('rois', v.fov.astype(np.uint8) * 255)):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format='PNG')
            atomic_write_bytes(os.path.join(root, sub, name), buf.getvalue())
        rows.append({'image': f'images/{name}', 'label': f'masks/{name}', 'roi': f'rois/{name}', 'split': split})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=['image', 'label', 'roi', 'split'], lineterminator='\n')
    w.writeheader()
    w.writerows(rows)
    path = os.path.join(root, 'dataset.csv')
    atomic_write_bytes(path, buf.getvalue().encode())
    return path
