"""Synthetic phantom volumes: ellipsoid "organs" in a noisy body, with anisotropic spacing.

Used by the tests and the documentation's demo run; written in the nnU-Net layout like a real dataset.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ['make_phantom', 'write_phantom_dataset', 'PHANTOM_CLASSES']

PHANTOM_CLASSES = ('background', 'liver', 'kidney', 'spleen')
_HU = {1: 60.0, 2: 180.0, 3: 110.0}  # organ intensities (HU-like), body at 0, air -1000


def make_phantom(shape: Tuple[int, int, int] = (48, 48, 12), spacing: Tuple[float, float, float] = (1.5, 1.5, 4.0),
                 seed: int = 0, noise: float = 20.0, organs: Sequence[int] = (1, 2, 3)
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label, affine) of one phantom in NIfTI array order ``X, Y, Z`` (axial slices on the last axis).

    Organ sizes are set in millimetres, so the anisotropic spacing shows in the voxel shapes.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing='ij'), -1)
    ext = np.array(shape) * np.array(spacing)
    image = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.int16)
    body = (((grid[..., :2] - ext[:2] / 2) / (ext[:2] * 0.45)) ** 2).sum(-1) <= 1
    image[body] = 0.0
    centres = {1: (0.35, 0.4), 2: (0.65, 0.35), 3: (0.6, 0.68)}
    radii = {1: (0.2, 0.17, 0.4), 2: (0.11, 0.11, 0.35), 3: (0.14, 0.11, 0.35)}
    for k in organs:
        c = np.array([*centres[k], 0.5]) + rng.uniform(-0.04, 0.04, 3)
        r = np.array(radii[k]) * rng.uniform(0.85, 1.15, 3)
        m = (((grid - c * ext) / (r * ext)) ** 2).sum(-1) <= 1
        m &= label == 0
        label[m] = k
        image[m] = _HU[k]
    image += rng.normal(0.0, noise, shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    return image, label, affine


def write_phantom_dataset(root: str, n_cases: int = 8, shape: Tuple[int, int, int] = (48, 48, 12),
                          spacing: Tuple[float, float, float] = (1.5, 1.5, 4.0), seed: int = 0,
                          n_test: int = 0, missing_organ_every: Optional[int] = None) -> str:
    """Write ``n_cases`` phantoms to ``root/imagesTr`` / ``labelsTr`` (+ ``n_test`` to ``imagesTs`` / ``labelsTs``)
    with a ``dataset.json``. ``missing_organ_every=k`` leaves the kidney out of every k-th case."""
    import nibabel as nib

    for d in ('imagesTr', 'labelsTr') + (('imagesTs', 'labelsTs') if n_test else ()):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i in range(n_cases + n_test):
        organs = (1, 3) if missing_organ_every and i % missing_organ_every == missing_organ_every - 1 else (1, 2, 3)
        img, lab, aff = make_phantom(shape, spacing, seed=seed * 1000 + i, organs=organs)
        sub = ('imagesTr', 'labelsTr') if i < n_cases else ('imagesTs', 'labelsTs')
        cid = f'phantom_{i:03d}'
        nib.save(nib.Nifti1Image(img, aff), os.path.join(root, sub[0], f'{cid}_0000.nii.gz'))
        nib.save(nib.Nifti1Image(lab, aff), os.path.join(root, sub[1], f'{cid}.nii.gz'))
    meta = {'name': 'phantom', 'channel_names': {'0': 'CT'}, 'file_ending': '.nii.gz', 'numTraining': n_cases,
            'labels': {name: i for i, name in enumerate(PHANTOM_CLASSES)}}
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump(meta, f, indent=2)
    return root
