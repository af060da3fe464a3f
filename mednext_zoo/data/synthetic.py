"""Synthetic CT-like tasks generated on the fly from a seed: segmentation phantoms and a classification task.

Shipped as code, not data: the same ``(name, seed)`` always gives the same cases, on any machine. Used by the
tests, the documentation's demo runs and the training-efficiency benchmark (``mednext_zoo.benchmark.training``).

**Segmentation phantoms** (:data:`SEG_PHANTOMS`): CT-like volumes in Hounsfield-like units -- air at -1000, a body
outline (skin, a subcutaneous fat ring at -100, soft tissue at +40 with a smooth texture), structures at their own
intensities, partial-volume averaging across the thick slices and white noise -- with anisotropic spacing, held in
NIfTI array order ``X, Y, Z`` (axial slices on the last axis) and trained slice by slice in 2D. Every phantom has a
fixed split of whole cases: case ``i`` is drawn from ``(seed, name, i)``; the first ``n_train`` indices are the
training cases, the next ``n_test`` the held-out ones, so the two can never share a case.

=============  ======================  ==========  =====================================================
phantom        spacing (mm), shape     class       voxel fraction, mean (min-max) over the cases that
                                                   hold it (seed 0, all cases)
=============  ======================  ==========  =====================================================
``small``      0.8 x 0.8 x 2.5,        liver       9.4 % (8.4-10.5)
               64 x 64 x 24;           vessel      0.27 % (0.23-0.31): a thin bright tube
               16 train / 8 test       lesion      0.27 % (0.21-0.33): hypodense, inside the liver;
                                                   absent from every 4th case (18 of 24 hold it)
``lookalike``  0.8 x 0.8 x 2.5,        round       0.87 % (0.75-0.98): both at the same HU, told apart
               64 x 64 x 24;           elongated   0.92 % (0.85-1.03): by shape and, loosely, by side
               16 train / 8 test                   (swapped in about 1 case of 4)
``thick``      0.8 x 0.8 x 5.0,        organ       6.9 % (6.9-7.1)
               64 x 64 x 12;           vessel      0.29 % (0.27-0.30): oblique, moves ~4 mm in-plane
               24 train / 12 test                  per slice
                                       nodule      0.17 % (0.10-0.23): seen in 1-2 slices only
=============  ======================  ==========  =====================================================

``tests/test_synthetic.py::test_documented_fractions`` checks these means (within 10 %).

**Classification tasks** (:data:`CLS_TASKS`): ``lesion`` -- a 64 x 64 CT-like slice (body, organ, texture,
noise); label 1 when a small low-contrast lesion (radius 2-3.5 mm, +-45 HU) sits in the organ, 0 otherwise
(balanced, 50 %).

Intensities reach the networks the way ``finetune --task seg`` sends CT: HU clipped to the Synapse window
(-125, 275) and min-max scaled to [0, 1] per volume (:func:`normalize_ct`); a test checks it matches finetune's own
preprocessing.

The original tiny phantom (:func:`make_phantom`, :data:`PHANTOM_CLASSES`) stays for the unit tests.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .._atomic import atomic_write_bytes
from ..errors import UserInputError
from .io import _minmax

__all__ = [
    'make_phantom', 'write_phantom_dataset', 'PHANTOM_CLASSES', 'CT_TRAIN_WINDOW', 'normalize_ct',
    'SegPhantom', 'PhantomCase', 'SliceSet', 'SEG_PHANTOMS', 'make_seg_phantom', 'phantom_cases', 'phantom_slices',
    'cases_to_slices',
    'ClsTask', 'ClsSet', 'CLS_TASKS', 'make_cls_task', 'SPLITS',
]

PHANTOM_CLASSES = ('background', 'liver', 'kidney', 'spleen')
_HU = {1: 60.0, 2: 180.0, 3: 110.0}  # organ intensities (HU-like), body at 0, air -1000

# the HU window finetune --task seg applies to CT (its SYNAPSE_WINDOW), then min-max per volume
CT_TRAIN_WINDOW: Tuple[float, float] = (-125.0, 275.0)
SPLITS = ('train', 'test')
AIR, FAT, SOFT = -1000.0, -100.0, 40.0


def normalize_ct(volume: np.ndarray, window: Tuple[float, float] = CT_TRAIN_WINDOW) -> np.ndarray:
    """HU clipped to ``window`` and min-max scaled to [0, 1] over the whole array (finetune's CT recipe)."""
    return _minmax(np.clip(volume, *window))


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


# ---------------------------------------------------------------- geometry helpers (millimetres)
class _Grid:
    """Voxel-centre coordinates in mm, centred on the volume; ``z`` is supersampled ``sub`` times per slice
    (odd ``sub``: the middle sample is the slice centre, where the label is read)."""

    def __init__(self, shape: Tuple[int, ...], spacing: Tuple[float, ...], sub: int = 1):
        axes = [(np.arange(n) + 0.5 - n / 2) * s for n, s in zip(shape[:2], spacing[:2])]
        if len(shape) == 3:
            nz, sz = shape[2], spacing[2]
            fine = (np.arange(nz * sub) + 0.5) / sub * sz - nz * sz / 2
            axes.append(fine)
        self.x, self.y, *zz = np.meshgrid(*axes, indexing='ij', sparse=True)
        self.z = zz[0] if zz else np.zeros((1, 1), np.float64)
        self.shape = tuple(len(a) for a in axes)


def _ellipsoid(g: _Grid, centre: Sequence[float], radii: Sequence[float], angle: float = 0.0) -> np.ndarray:
    """Inside of an ellipsoid (2D: ellipse) rotated by ``angle`` radians in the axial plane."""
    dx, dy = g.x - centre[0], g.y - centre[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    q = (u / radii[0]) ** 2 + (v / radii[1]) ** 2
    if len(radii) > 2:
        q = q + ((g.z - centre[2]) / radii[2]) ** 2
    return q <= 1.0


def _tube(g: _Grid, start: Sequence[float], slope: Sequence[float], radius: float, z_range: Tuple[float, float]
          ) -> np.ndarray:
    """A tube of ``radius`` whose axial centre moves from ``start`` (x, y at z=0) by ``slope`` mm per mm of z."""
    cx, cy = start[0] + slope[0] * g.z, start[1] + slope[1] * g.z
    inside = (g.x - cx) ** 2 + (g.y - cy) ** 2 <= radius ** 2
    return inside & (g.z >= z_range[0]) & (g.z <= z_range[1])


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, ...], cells: int = 8) -> np.ndarray:
    """Unit-variance-ish low-frequency texture: coarse Gaussian noise upsampled (bi/trilinear) to ``shape``."""
    coarse = torch.from_numpy(rng.standard_normal([max(2, -(-n * cells // 64)) for n in shape]).astype(np.float32))
    mode = 'trilinear' if len(shape) == 3 else 'bilinear'
    up = F.interpolate(coarse[None, None], size=shape, mode=mode, align_corners=False)[0, 0].numpy()
    return up / max(float(up.std()), 1e-6)


def _body(g: _Grid, rng: np.random.Generator, extent: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """(HU image, body mask): air outside an elliptical body with a fat ring and textured soft tissue."""
    ax, ay = extent[0] * rng.uniform(0.44, 0.48), extent[1] * rng.uniform(0.38, 0.44)
    outer = _ellipsoid(g, (0.0, 0.0), (ax, ay))
    inner = _ellipsoid(g, (0.0, 0.0), (ax - 3.0, ay - 3.0))
    shape = np.broadcast_shapes(outer.shape, g.z.shape)
    img = np.full(shape, AIR, np.float32)
    img[np.broadcast_to(outer, shape)] = FAT
    img[np.broadcast_to(inner, shape)] = SOFT
    img += np.where(np.broadcast_to(inner, shape), 8.0 * _smooth_noise(rng, shape), 0.0).astype(np.float32)
    return img, np.broadcast_to(inner, shape)


Structure = Tuple[int, np.ndarray, float]  # (class index, mask on the fine grid, HU)


@dataclass(frozen=True)
class SegPhantom:
    """A registered segmentation phantom: its geometry, classes and the fixed train / held-out split sizes."""
    name: str
    description: str
    classes: Tuple[str, ...]  # background first
    shape: Tuple[int, int, int]  # X, Y, Z voxels
    spacing: Tuple[float, float, float]  # mm
    n_train: int
    n_test: int
    structures: Callable[[_Grid, np.random.Generator, int], List[Structure]]  # (grid, rng, case index)
    sub: int = 3  # z supersampling for partial-volume averaging across the slice thickness
    noise: float = 18.0  # white noise, HU (std)

    @property
    def n_cases(self) -> int:
        """Train plus held-out cases."""
        return self.n_train + self.n_test


@dataclass
class PhantomCase:
    """One generated volume. ``image`` ``X, Y, Z`` float32 (HU-like), ``label`` ``X, Y, Z`` int16."""
    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: Tuple[float, float, float]
    affine: np.ndarray  # 4 x 4, voxel -> mm (NIfTI)


def _small(g: _Grid, rng: np.random.Generator, index: int) -> List[Structure]:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    liver_c = (-4.0 + j(2), -2.0 + j(2), j(3))
    out = [(1, _ellipsoid(g, liver_c, (13.0 * rng.uniform(0.93, 1.07), 11.0 * rng.uniform(0.93, 1.07), 26.0),
                          angle=j(0.3)), 95.0 + j(5))]
    z0 = j(4)
    out.append((2, _tube(g, (9.0 + j(1.5), 7.0 + j(1.5)), (j(0.08), j(0.08)), 2.0 * rng.uniform(0.93, 1.07),
                         (z0 - 17.0, z0 + 17.0)), 190.0 + j(10)))
    if index % 4 != 3:  # the lesion is absent from every 4th case
        r = 3.5 * rng.uniform(0.92, 1.08)
        c = (liver_c[0] + j(3), liver_c[1] + j(3), liver_c[2] + j(6))
        out.append((3, _ellipsoid(g, c, (r, r, 2.3 * r)), 25.0 + j(5)))
    return out


def _lookalike(g: _Grid, rng: np.random.Generator, index: int) -> List[Structure]:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    hu = 130.0 + j(10)  # one intensity for both structures
    side = -1.0 if rng.random() < 0.25 else 1.0  # 'round' usually on the left, sometimes swapped
    round_c = (-8.0 * side + j(3), j(5), j(3))
    long_c = (8.0 * side + j(3), j(5), j(3))
    r = 5.0 * rng.uniform(0.93, 1.07)
    return [(1, _ellipsoid(g, round_c, (r, r, 13.0)), hu + j(3)),
            (2, _ellipsoid(g, long_c, (9.0 * rng.uniform(0.93, 1.07), 3.0 * rng.uniform(0.93, 1.07), 13.0),
                           angle=np.pi / 2 + j(0.6)), hu + j(3))]


def _thick(g: _Grid, rng: np.random.Generator, index: int) -> List[Structure]:
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    out = [(1, _ellipsoid(g, (-5.0 + j(2), j(2), j(4)), (12.0, 10.0, 22.0), angle=j(0.4)), 100.0 + j(5))]
    sx, sy = rng.choice([-1.0, 1.0], 2)  # the oblique vessel crosses ~4 mm in-plane per 5 mm slice
    out.append((2, _tube(g, (8.0 + j(2), j(3)), (0.55 * sx, 0.55 * sy), 2.2, (-14.0, 14.0)), 180.0 + j(10)))
    r = 4.0 * rng.uniform(0.93, 1.07)  # a nodule seen in 1-2 thick slices
    out.append((3, _ellipsoid(g, (10.0 + j(3), -10.0 + j(3), j(10)), (r, r, r)), 150.0 + j(8)))
    return out


SEG_PHANTOMS: Dict[str, SegPhantom] = {p.name: p for p in (
    SegPhantom('small', 'one large organ and two small structures (< 0.5 % of the voxels each), one of them absent '
               'from every 4th case', ('background', 'liver', 'vessel', 'lesion'), (64, 64, 24), (0.8, 0.8, 2.5),
               16, 8, _small),
    SegPhantom('lookalike', 'two structures of the same intensity, told apart only by shape and position',
               ('background', 'round', 'elongated'), (64, 64, 24), (0.8, 0.8, 2.5), 16, 8, _lookalike),
    SegPhantom('thick', 'thick 5 mm slices: an oblique vessel that moves between slices and a nodule seen in 1-2 '
               'slices, with partial-volume blur', ('background', 'organ', 'vessel', 'nodule'), (64, 64, 12),
               (0.8, 0.8, 5.0), 24, 12, _thick, sub=5),
)}


def _get(registry: Dict, name: str, what: str):
    if name not in registry:
        raise UserInputError(f'Unknown {what} {name!r}; choose one of {", ".join(registry)}.')
    return registry[name]


def _case_rng(seed: int, name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(index)])


def _render_case(p: SegPhantom, seed: int, index: int) -> PhantomCase:
    rng = _case_rng(seed, p.name, index)
    g = _Grid(p.shape, p.spacing, p.sub)
    extent = (p.shape[0] * p.spacing[0], p.shape[1] * p.spacing[1])
    img, body = _body(g, rng, extent)
    label = np.zeros(img.shape, np.int16)
    for k, mask, hu in p.structures(g, rng, index):
        m = np.broadcast_to(mask, img.shape) & body
        img[m] = hu + 5.0 * _smooth_noise(rng, img.shape)[m]
        label[m] = k
    nx, ny, nz = p.shape
    image = img.reshape(nx, ny, nz, p.sub).mean(-1)  # partial-volume averaging over the slice thickness
    label = label.reshape(nx, ny, nz, p.sub)[..., p.sub // 2]  # the label at the slice centre
    image = (image + rng.normal(0.0, p.noise, image.shape)).astype(np.float32)
    affine = np.diag([*p.spacing, 1.0])
    affine[:3, 3] = -np.array(p.shape) * np.array(p.spacing) / 2
    return PhantomCase(f'{p.name}_{index:03d}', image, np.ascontiguousarray(label), tuple(p.spacing), affine)


def make_seg_phantom(name: str, n_cases: Optional[int] = None, seed: int = 0, start: int = 0) -> List[PhantomCase]:
    """Cases ``start .. start + n_cases - 1`` of phantom ``name`` (default: all ``n_train + n_test``).

    Case ``i`` depends only on ``(seed, name, i)``; indices below ``n_train`` are the training split.
    """
    p = _get(SEG_PHANTOMS, name, 'phantom')
    n = p.n_cases - start if n_cases is None else n_cases
    return [_render_case(p, seed, i) for i in range(start, start + n)]


def phantom_cases(name: str, split: str, seed: int = 0) -> List[PhantomCase]:
    """The fixed ``'train'`` (first ``n_train`` indices) or ``'test'`` (next ``n_test``) cases of a phantom."""
    p = _get(SEG_PHANTOMS, name, 'phantom')
    if split not in SPLITS:
        raise UserInputError(f'split must be one of {SPLITS}, got {split!r}.')
    return make_seg_phantom(name, p.n_train, seed) if split == 'train' else make_seg_phantom(name, p.n_test, seed,
                                                                                           p.n_train)


@dataclass
class SliceSet:
    """Axial 2D slices of several volumes. ``x`` ``N, 1, H, W`` float32 in [0, 1]; ``y`` ``N, H, W`` int64;
    ``case`` ``N`` int64: the index (in ``case_ids``) of the volume each slice comes from (3D scoring)."""
    x: torch.Tensor
    y: torch.Tensor
    case: torch.Tensor
    case_ids: List[str]
    classes: Tuple[str, ...]
    spacing: Tuple[float, float, float]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def class_freq(self) -> torch.Tensor:
        """Pixel fraction of each class over all slices, ``K``."""
        return torch.bincount(self.y.flatten(), minlength=len(self.classes)).double() / self.y.numel()


def cases_to_slices(cases: Sequence[PhantomCase], classes: Tuple[str, ...]) -> SliceSet:
    """Slice each case along Z (``slice[z] = image[:, :, z]``, so ``H, W = X, Y``) after :func:`normalize_ct`."""
    xs, ys, idx = [], [], []
    for i, c in enumerate(cases):
        xs.append(np.moveaxis(normalize_ct(c.image), -1, 0))
        ys.append(np.moveaxis(c.label, -1, 0))
        idx += [i] * c.image.shape[-1]
    return SliceSet(torch.from_numpy(np.concatenate(xs))[:, None].contiguous(),
                    torch.from_numpy(np.concatenate(ys).astype(np.int64)), torch.tensor(idx, dtype=torch.int64),
                    [c.case_id for c in cases], tuple(classes), tuple(cases[0].spacing))


def phantom_slices(name: str, split: str, seed: int = 0) -> SliceSet:
    """The axial slices of a phantom's ``'train'`` or ``'test'`` cases, normalised like finetune's CT recipe."""
    return cases_to_slices(phantom_cases(name, split, seed), SEG_PHANTOMS[name].classes)


def write_phantom_dataset(root: str, n_cases: Optional[int] = None, shape: Tuple[int, int, int] = (48, 48, 12),
                          spacing: Tuple[float, float, float] = (1.5, 1.5, 4.0), seed: int = 0,
                          n_test: Optional[int] = None, missing_organ_every: Optional[int] = None,
                          phantom: Optional[str] = None) -> str:
    """Write a phantom dataset in the nnU-Net layout (``imagesTr`` / ``labelsTr``, ``imagesTs`` / ``labelsTs``,
    ``dataset.json``) that ``mednext-zoo finetune --task seg --data ROOT`` reads.

    ``phantom='small'`` (any of :data:`SEG_PHANTOMS`): its fixed train cases to ``*Tr`` and held-out cases to
    ``*Ts`` (``n_cases`` / ``n_test`` default to the phantom's split sizes; ``shape`` / ``spacing`` are the
    phantom's). Without ``phantom``: ``n_cases`` (default 8) + ``n_test`` (default 0) of the unit-test phantom
    (:func:`make_phantom`); ``missing_organ_every=k`` leaves the kidney out of every k-th case.
    """
    import nibabel as nib

    if phantom is not None:
        p = _get(SEG_PHANTOMS, phantom, 'phantom')
        n_cases = p.n_train if n_cases is None else min(n_cases, p.n_train)
        n_test = p.n_test if n_test is None else min(n_test, p.n_test)
        cases = [(c, 'Tr') for c in make_seg_phantom(phantom, n_cases, seed)]
        cases += [(c, 'Ts') for c in make_seg_phantom(phantom, n_test, seed, p.n_train)]
        classes, name = p.classes, f'phantom-{phantom}'
    else:
        n_cases = 8 if n_cases is None else n_cases
        n_test = 0 if n_test is None else n_test
        cases = []
        for i in range(n_cases + n_test):
            every = missing_organ_every
            organs = (1, 3) if every and i % every == every - 1 else (1, 2, 3)
            img, lab, aff = make_phantom(shape, spacing, seed=seed * 1000 + i, organs=organs)
            case = PhantomCase(f'phantom_{i:03d}', img, lab, tuple(spacing), aff)
            cases.append((case, 'Tr' if i < n_cases else 'Ts'))
        classes, name = PHANTOM_CLASSES, 'phantom'
    for d in ('imagesTr', 'labelsTr') + (('imagesTs', 'labelsTs') if n_test else ()):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for c, sub in cases:
        nib.save(nib.Nifti1Image(c.image, c.affine), os.path.join(root, f'images{sub}', f'{c.case_id}_0000.nii.gz'))
        nib.save(nib.Nifti1Image(c.label, c.affine), os.path.join(root, f'labels{sub}', f'{c.case_id}.nii.gz'))
    meta = {'name': name, 'channel_names': {'0': 'CT'}, 'file_ending': '.nii.gz', 'numTraining': n_cases,
            'labels': {c: i for i, c in enumerate(classes)}}
    atomic_write_bytes(os.path.join(root, 'dataset.json'), (json.dumps(meta, indent=2) + '\n').encode())
    return root


# ---------------------------------------------------------------- classification
@dataclass(frozen=True)
class ClsTask:
    """A registered classification task: ``size`` x ``size`` CT-like slices, fixed train / held-out sizes."""
    name: str
    description: str
    classes: Tuple[str, ...]
    size: int
    n_train: int
    n_test: int
    render: Callable[[np.random.Generator, int], Tuple[np.ndarray, int]]  # (rng, index) -> (HU image H x W, label)
    noise: float = 20.0


@dataclass
class ClsSet:
    """``x`` ``N, 1, H, W`` float32 in [0, 1] (HU window, min-max per image); ``y`` ``N`` int64."""
    x: torch.Tensor
    y: torch.Tensor
    classes: Tuple[str, ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _lesion_image(rng: np.random.Generator, index: int, size: int = 64) -> Tuple[np.ndarray, int]:
    g = _Grid((size, size), (0.8, 0.8))
    img, body = _body(g, rng, (size * 0.8, size * 0.8))
    organ_c, organ_r = (rng.uniform(-5, 5), rng.uniform(-4, 4)), (rng.uniform(11, 14), rng.uniform(9, 12))
    organ = _ellipsoid(g, organ_c, organ_r, angle=rng.uniform(-0.5, 0.5)) & body
    img[organ] = 60.0 + 6.0 * _smooth_noise(rng, img.shape, cells=16)[organ]
    label = int(index % 2)  # balanced: odd indices hold a lesion
    if label:
        r = rng.uniform(2.0, 3.5)
        a, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.55)
        c = (organ_c[0] + rad * organ_r[0] * np.cos(a), organ_c[1] + rad * organ_r[1] * np.sin(a))
        lesion = _ellipsoid(g, c, (r, r * rng.uniform(0.8, 1.2))) & organ
        img[lesion] += rng.choice([-45.0, 45.0])
    return img, label


CLS_TASKS: Dict[str, ClsTask] = {t.name: t for t in (
    ClsTask('lesion', 'is there a small low-contrast lesion (radius 2-3.5 mm, +-45 HU) in the organ?',
            ('no_lesion', 'lesion'), 64, 512, 256, _lesion_image),
)}


def make_cls_task(name: str, split: str, seed: int = 0, n: Optional[int] = None) -> ClsSet:
    """The fixed ``'train'`` (indices ``0 .. n_train - 1``) or ``'test'`` (the next ``n_test``) images of a
    classification task; ``n`` keeps the first ``n`` of the split (tests)."""
    t = _get(CLS_TASKS, name, 'classification task')
    if split not in SPLITS:
        raise UserInputError(f'split must be one of {SPLITS}, got {split!r}.')
    start, count = (0, t.n_train) if split == 'train' else (t.n_train, t.n_test)
    count = count if n is None else min(n, count)
    xs, ys = [], []
    for i in range(start, start + count):
        rng = _case_rng(seed, t.name, i)
        img, lab = t.render(rng, i)
        img = img + rng.normal(0.0, t.noise, img.shape)
        xs.append(normalize_ct(img.astype(np.float32)))
        ys.append(lab)
    return ClsSet(torch.from_numpy(np.stack(xs))[:, None].contiguous(), torch.tensor(ys, dtype=torch.int64),
                  t.classes)
