"""Segmentation datasets: find volumes and label maps in the common layouts, load them with their geometry.

Layouts (``discover`` picks one, or name it with ``layout=``):

* ``nnunet``  -- nnU-Net / Medical Segmentation Decathlon: ``imagesTr/CASE[_0000].nii.gz``,
  ``labelsTr/CASE.nii.gz``, optional ``imagesTs/``, ``labelsTs/`` and ``dataset.json`` (class names, modality);
* ``synapse`` -- TransUNet's preprocessed Synapse: ``train_npz/caseNNNN_sliceNNN.npz`` (keys ``image``,
  ``label``; one axial slice each, already windowed) and ``test_vol_h5/caseNNNN.npy.h5`` (``image``, ``label``,
  ``D, H, W``); these files carry no spacing or affine;
* ``acdc``    -- the ACDC release: ``patientNNN/patientNNN_frameNN.nii.gz`` with ``..._gt.nii.gz`` (ED / ES
  frames; ``Info.cfg`` names which is which; the ``_4d`` cine files are skipped);
* ``folders`` -- 2D images with masks: ``images/NAME.png`` and ``masks/NAME[_suffix].png`` (or ``labels/``),
  optionally ``rois/NAME[_suffix].png``: a region of interest (e.g. a fundus field of view) that metrics keep to;
* ``csv``     -- a CSV with columns ``image``, ``label`` and optionally ``case_id``, ``patient_id``, ``split``,
  ``roi`` (paths relative to the CSV's folder).

A loaded :class:`Volume` is held slices-first (``D, H, W``; ``D, H, W, 3`` for colour 2D images) with the
spacing in that order; :meth:`Volume.to_native` puts an array back in the file's own axis order, so a prediction
is written with the source affine.
"""
from __future__ import annotations

import glob
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserInputError
from ._untrusted import SKIP_HINT, check_declared_size, check_finite, read_csv_rows, reading
from .columns import check_columns, did_you_mean
from .io import _nib_load, load_image
from .labels import LabelMap, check_label_values, patient_id, read_dataset_json

__all__ = ['VolumeRecord', 'Volume', 'SegDataset', 'discover', 'load_volume', 'probe_volume', 'iter_volumes',
           'case_id_of', 'file_format', 'record_of', 'read_info_cfg', 'NIFTI_EXTS', 'SITK_EXTS', 'IMAGE_EXTS',
           'ON_BAD_FILE']

NIFTI_EXTS = ('.nii.gz', '.nii')
SITK_EXTS = ('.nrrd', '.nhdr', '.mha', '.mhd')  # read with SimpleITK
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
LAYOUTS = ('auto', 'nnunet', 'synapse', 'acdc', 'folders', 'csv')
ON_BAD_FILE = ('error', 'skip')
_SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'val': 'val', 'valid': 'val', 'validation': 'val',
                  'test': 'test', 'testing': 'test'}


@dataclass
class VolumeRecord:
    """Where one case's image and label live (nothing loaded yet)."""
    case_id: str
    image: str
    label: Optional[str]
    fmt: str  # 'nifti' | 'h5' | 'npz' (single slice) | 'npz_slices' | 'image2d'
    patient: str = ''
    split: Optional[str] = None
    slices: Tuple[str, ...] = ()  # fmt 'npz_slices': one .npz per slice, in order
    phase: Optional[str] = None  # ACDC: 'ED' / 'ES'
    roi: Optional[str] = None  # 2D images: a mask of the region that metrics count (nonzero = inside)

    def __post_init__(self):
        if not self.patient:
            self.patient = patient_id(self.case_id)


@dataclass
class Volume:
    """One case, slices-first: ``image`` ``D, H, W`` (float32), ``label`` ``D, H, W`` (int16) or None."""
    case_id: str
    image: np.ndarray
    label: Optional[np.ndarray]
    affine: np.ndarray
    spacing: Tuple[float, float, float]  # in the D, H, W order of ``image``
    slice_axis: int = 2  # the axis of the file's array that became D
    spacing_known: bool = True
    image_path: str = ''
    label_path: Optional[str] = None
    patient: str = ''
    header: object = None  # the NIfTI header of the image, if any
    native_ndim: int = 3
    sitk_ref: object = None  # the SimpleITK image (geometry) of NRRD / MetaImage sources
    roi: Optional[np.ndarray] = None  # ``D, H, W`` bool: the region metrics count (None: everywhere)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """``(D, H, W)`` in voxels."""
        return tuple(self.image.shape[:3])

    def to_native(self, arr: np.ndarray) -> np.ndarray:
        """A ``D, H, W`` array in the source file's axis order."""
        if self.native_ndim == 2:
            return arr[0]
        return np.moveaxis(arr, 0, self.slice_axis)

    def native_spacing(self) -> Tuple[float, ...]:
        """The voxel spacing in the source file's axis order (``spacing`` is in the slices-first ``D, H, W`` order); mm
        as the header records it, ones when it records none (``spacing_known`` False)."""
        sp = list(self.spacing[1:])
        sp.insert(self.slice_axis, self.spacing[0])
        return tuple(sp)


@dataclass
class SegDataset:
    """The cases of a dataset and what its metadata says (class names, modality)."""
    root: str
    layout: str
    records: List[VolumeRecord]
    label_names: Optional[object] = None  # dataset.json 'labels' (as written)
    modality: Optional[str] = None
    meta_source: Optional[str] = None
    info: Dict[str, object] = field(default_factory=dict)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason) left out by on_bad_file='skip'

    def split(self, name: str) -> List[VolumeRecord]:
        """The records assigned to split ``name`` (``'train'``, ``'val'``, ``'test'``), in order."""
        return [r for r in self.records if r.split == name]

    @property
    def case_ids(self) -> List[str]:
        """The case ids of every record, in order."""
        return [r.case_id for r in self.records]


def _strip_ext(name: str) -> str:
    for ext in NIFTI_EXTS + SITK_EXTS + ('.npy.h5', '.h5', '.npz') + IMAGE_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def case_id_of(path: str) -> str:
    """The case name of an image file: the file name without its extension and without the nnU-Net channel
    suffix ``_0000`` (``case_0000.nii.gz`` -> ``case``; ``scan.npy.h5`` -> ``scan``)."""
    stem = _strip_ext(os.path.basename(path)).replace('.npy', '')
    return stem[:-5] if re.search(r'.+_0000$', stem) else stem


def file_format(path: str) -> str:
    """The reader of ``path`` by its extension: ``nifti``, ``sitk``, ``h5``, ``npz`` or ``image2d``; UserInputError for
    any other file type."""
    low = path.lower()
    if low.endswith(NIFTI_EXTS):
        return 'nifti'
    if low.endswith(SITK_EXTS):
        return 'sitk'
    if low.endswith(('.h5', '.hdf5')):
        return 'h5'
    if low.endswith('.npz'):
        return 'npz'
    if low.endswith(IMAGE_EXTS):
        return 'image2d'
    raise UserInputError(f'{path}: unsupported file type; use NIfTI (.nii/.nii.gz), NRRD / MetaImage (.nrrd, '
                         f'.mha, .mhd), TransUNet .npz / .npy.h5, '
                         f'or a 2D image ({", ".join(IMAGE_EXTS)}).')


_fmt_of = file_format  # the name before 0.2


def record_of(path: str) -> VolumeRecord:
    """An unlabelled :class:`VolumeRecord` of one file, named by :func:`case_id_of` (prediction inputs)."""
    return VolumeRecord(case_id_of(path), path, None, file_format(path))


# ---------------------------------------------------------------- discovery
class _Problems:
    """Per-case problems found while indexing: raised at once (``error``) or collected (``skip``)."""

    def __init__(self, on_bad_file: str):
        if on_bad_file not in ON_BAD_FILE:
            raise UserInputError(f'--on-bad-file must be "error" or "skip", got {on_bad_file!r}.')
        self.skip = on_bad_file == 'skip'
        self.items: List[Tuple[str, str]] = []

    def report(self, path: str, message: str) -> None:
        if not self.skip:
            raise UserInputError(message)
        self.items.append((path, message))


def _nifti_files(folder: str) -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, '*')) if p.lower().endswith(NIFTI_EXTS + SITK_EXTS)
                  and not os.path.basename(p).startswith('._') and not p.lower().endswith('.raw'))


def _discover_nnunet(root: str, problems: _Problems) -> SegDataset:
    meta_path = os.path.join(root, 'dataset.json')
    meta = read_dataset_json(meta_path) if os.path.isfile(meta_path) else {}
    records: List[VolumeRecord] = []
    for img_dir, lab_dir, split in (('imagesTr', 'labelsTr', None), ('imagesTs', 'labelsTs', 'test')):
        img_dir, lab_dir = os.path.join(root, img_dir), os.path.join(root, lab_dir)
        if not os.path.isdir(img_dir):
            continue
        need_labels = split is None or os.path.isdir(lab_dir)
        for p in _nifti_files(img_dir):
            stem = _strip_ext(os.path.basename(p))
            m = re.match(r'^(.*)_(\d{4})$', stem)
            if m:
                if m.group(2) != '0000':  # a property of the dataset, not a bad file: never skipped
                    raise UserInputError(f'{p}: multi-channel nnU-Net cases (channel {m.group(2)}) are not supported;'
                                         f' keep one channel (_0000) per case.')
                stem = m.group(1)
            label = None
            if need_labels:
                cands = [os.path.join(lab_dir, stem + e) for e in NIFTI_EXTS + SITK_EXTS]
                label = next((c for c in cands if os.path.isfile(c)), None)
                if label is None:
                    problems.report(p, f'{p}: missing label file {cands[0]} (every image in '
                                       f'{os.path.basename(img_dir)}/ needs one in {os.path.basename(lab_dir)}/).')
                    continue
            records.append(VolumeRecord(stem, p, label, file_format(p), split=split))
    modality = meta.get('modality') or meta.get('channel_names')
    if isinstance(modality, dict):
        modality = next(iter(modality.values()), None)
    if isinstance(modality, (list, dict)):
        modality = None
    return SegDataset(root, 'nnunet', records, label_names=meta.get('labels'),
                      modality=str(modality) if modality else None,
                      meta_source=meta_path if meta else None)


def _discover_synapse(root: str, problems: _Problems) -> SegDataset:
    records: List[VolumeRecord] = []
    by_case: Dict[str, List[Tuple[int, str]]] = {}
    for p in sorted(glob.glob(os.path.join(root, 'train_npz', '*.npz'))):
        m = re.match(r'^(.*?)_slice(\d+)\.npz$', os.path.basename(p))
        if not m:
            problems.report(p, f'{p}: expected TransUNet slice files named caseNNNN_sliceNNN.npz.')
            continue
        by_case.setdefault(m.group(1), []).append((int(m.group(2)), p))
    for case, items in sorted(by_case.items()):
        items.sort()
        records.append(VolumeRecord(case, items[0][1], items[0][1], 'npz_slices', split='train',
                                    slices=tuple(p for _, p in items)))
    for p in sorted(glob.glob(os.path.join(root, 'test_vol_h5', '*.h5'))):
        records.append(VolumeRecord(_strip_ext(os.path.basename(p)).replace('.npy', ''), p, p, 'h5', split='test'))
    return SegDataset(root, 'synapse', records, modality='CT',
                      info={'spacing': 'not stored in TransUNet files (HD95 in voxels in both modes)'})


def read_info_cfg(path: str) -> Dict[str, int]:
    """The ED / ES frame numbers of an ACDC ``Info.cfg`` (``{'ED': 1, 'ES': 12}``); ``{}`` when unreadable."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(':')
                if k.strip() in ('ED', 'ES'):
                    out[k.strip()] = int(v.strip())
    except (OSError, ValueError):
        pass
    return out


def _discover_acdc(root: str, problems: _Problems) -> SegDataset:
    records: List[VolumeRecord] = []
    files = sorted(glob.glob(os.path.join(root, '**', 'patient*_frame*.nii*'), recursive=True))
    for p in files:
        name = os.path.basename(p)
        if '_gt' in name:
            continue
        stem = _strip_ext(name)
        folder = os.path.dirname(p)
        label = next((c for c in (os.path.join(folder, stem + '_gt' + e) for e in NIFTI_EXTS) if os.path.isfile(c)),
                     None)
        if label is None:
            problems.report(p, f'{p}: missing label file {os.path.join(folder, stem + "_gt.nii.gz")}.')
            continue
        frame = int(re.search(r'frame(\d+)', stem).group(1))
        info = read_info_cfg(os.path.join(folder, 'Info.cfg'))
        phase = next((k for k, v in info.items() if v == frame), None)
        records.append(VolumeRecord(stem, p, label, 'nifti', patient=stem.split('_')[0], phase=phase))
    return SegDataset(root, 'acdc', records, modality='MRI')


def _discover_folders(root: str, problems: _Problems) -> SegDataset:
    img_dir = os.path.join(root, 'images')
    lab_dir = next((os.path.join(root, d) for d in ('masks', 'labels') if os.path.isdir(os.path.join(root, d))), None)
    if lab_dir is None:
        raise UserInputError(f'{root}: a 2D folder dataset needs images/ and masks/ (or labels/) sub-folders.')
    masks = {}
    for p in sorted(glob.glob(os.path.join(lab_dir, '*'))):
        if p.lower().endswith(IMAGE_EXTS):
            masks[_strip_ext(os.path.basename(p))] = p
    rois = {}
    for p in sorted(glob.glob(os.path.join(root, 'rois', '*'))):
        if p.lower().endswith(IMAGE_EXTS):
            rois[_strip_ext(os.path.basename(p))] = p
    records = []
    for p in sorted(glob.glob(os.path.join(img_dir, '*'))):
        if not p.lower().endswith(IMAGE_EXTS):
            continue
        stem = _strip_ext(os.path.basename(p))
        label = masks.get(stem) or next((v for k, v in masks.items() if k.startswith(stem + '_')), None)
        if label is None:
            problems.report(p, f'{p}: missing label file (no {stem}.png or {stem}_*.png in {lab_dir}).')
            continue
        roi = rois.get(stem) or next((v for k, v in rois.items() if k.startswith(stem + '_')), None)
        if rois and roi is None:
            problems.report(p, f'{p}: rois/ holds no region of interest for it (no {stem}.png or {stem}_*.png); give '
                               f'every image one, or remove rois/.')
            continue
        records.append(VolumeRecord(stem, p, label, 'image2d', patient=stem, roi=roi))
    return SegDataset(root, 'folders', records)


def _discover_csv(path: str, problems: _Problems, strict_columns: bool = False) -> SegDataset:
    base = os.path.dirname(os.path.abspath(path))
    cols, rows = read_csv_rows(path)
    check_columns(cols, ('image',), ('label', 'case_id', 'patient_id', 'split', 'roi'), path, strict_columns,
                  aliases={'patient': 'patient_id'})
    if 'image' not in cols:
        raise UserInputError(f'{path}: the CSV needs an "image" column (and "label"; optional case_id, '
                             f'patient_id, split); found columns {cols}.')
    records = []
    for i, r in rows:
        if not r.get('image'):
            raise UserInputError(f'{path} line {i}: empty image path.')
        img = os.path.join(base, r['image'])
        split = (r.get('split') or '').lower() or None
        if split is not None and split not in _SPLIT_ALIASES:
            raise UserInputError(f'{path} line {i}: unknown split {r["split"]!r}; use train, val or test '
                                 f'(or leave it empty).')
        if not os.path.isfile(img):
            problems.report(img, f'{path} line {i}: image file {img} does not exist.')
            continue
        lab = os.path.join(base, r['label']) if r.get('label') else None
        if lab is not None and not os.path.isfile(lab):
            problems.report(img, f'{path} line {i}: missing label file {lab}.')
            continue
        cid = r.get('case_id') or _strip_ext(os.path.basename(img))
        roi = os.path.join(base, r['roi']) if r.get('roi') else None
        if roi is not None and not os.path.isfile(roi):
            problems.report(img, f'{path} line {i}: missing region-of-interest file {roi}.')
            continue
        records.append(VolumeRecord(cid, img, lab, file_format(img),
                                    patient=r.get('patient_id') or r.get('patient') or '',
                                    split=_SPLIT_ALIASES[split] if split else None, roi=roi))
    return SegDataset(path, 'csv', records)


def discover(source: str, layout: str = 'auto', on_bad_file: str = 'error', strict_columns: bool = False
             ) -> SegDataset:
    """Index the cases of a dataset folder or CSV (see the module docstring for the layouts; a CSV's columns are
    checked by :func:`mednext_zoo.data.columns.check_columns`, ``strict_columns`` refusing unknown ones).

    Every case is checked at header level (:func:`probe_volume`: files exist and open, declared sizes fit the
    files, image and label agree) so that a bad file stops the run before any training. With
    ``on_bad_file='skip'`` such cases -- and cases whose label file is missing -- are left out and listed in
    ``SegDataset.skipped`` instead.
    """
    problems = _Problems(on_bad_file)
    if layout not in LAYOUTS:
        raise UserInputError(f'Unknown layout {layout!r}; choose one of {", ".join(LAYOUTS)}.')
    if not os.path.exists(source):
        raise UserInputError(f'{source}: no such file or folder.{did_you_mean(source)}')
    if os.path.isfile(source):
        if layout not in ('auto', 'csv') or not source.lower().endswith('.csv'):
            raise UserInputError(f'{source}: give a dataset folder or a .csv of image / label pairs.')
        ds = _discover_csv(source, problems, strict_columns)
    else:
        if layout == 'auto':
            has = lambda d: os.path.isdir(os.path.join(source, d))  # noqa: E731
            if has('imagesTr') or has('imagesTs'):
                layout = 'nnunet'
            elif has('train_npz') or has('test_vol_h5'):
                layout = 'synapse'
            elif glob.glob(os.path.join(source, '**', 'patient*_frame*.nii*'), recursive=True):
                layout = 'acdc'
            elif has('images'):
                layout = 'folders'
            else:
                raise UserInputError(
                    f'{source}: cannot tell the dataset layout; expected imagesTr/ + labelsTr/ (nnU-Net), '
                    f'train_npz/ or test_vol_h5/ (TransUNet Synapse), patientNNN/ (ACDC), images/ + masks/ '
                    f'(2D), or a CSV file.')
        ds = {'nnunet': _discover_nnunet, 'synapse': _discover_synapse, 'acdc': _discover_acdc,
              'folders': _discover_folders, 'csv': _discover_csv}[layout](source, problems)
    good = []
    for r in ds.records:
        try:
            probe_volume(r)
            good.append(r)
        except UserInputError as e:
            problems.report(r.image, str(e))
    ds.records = good
    ds.skipped = problems.items
    if ds.skipped:
        warnings.warn(f'Skipped {len(ds.skipped)} case(s) of {source} with unreadable or missing files while '
                      f'indexing it (first: {ds.skipped[0][0]}).', stacklevel=2)
    if not ds.records:
        raise UserInputError(f'{source}: the dataset is empty (no {"readable " if ds.skipped else ""}cases found '
                             f'in the {ds.layout} layout).')
    return ds


# ---------------------------------------------------------------- loading
def _int_label(arr: np.ndarray, path: str) -> np.ndarray:
    """A label map as int16, refusing values that cannot be class indices (NaN, fractions, negatives, huge)."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in 'biuf':
        raise UserInputError(f'{path}: label values of type {arr.dtype} where integers are expected. {SKIP_HINT}')
    if arr.dtype.kind == 'f':
        if arr.size and not np.isfinite(arr).all():
            raise UserInputError(f'{path}: the label map holds NaN or infinite values; is this an image rather than '
                                 f'a label map? {SKIP_HINT}')
        r = np.round(arr)
        if not np.allclose(arr, r, atol=1e-3):
            raise UserInputError(f'{path}: label values must be integers (found non-integer values such as '
                                 f'{arr[np.abs(arr - r) > 1e-3].flat[0]:g}); is this an image rather than a label map?')
        arr = r
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > np.iinfo(np.int16).max:
            raise UserInputError(f'{path}: label values must be class indices from 0 to 32767 (found {lo:g} .. '
                                 f'{hi:g}); is this an image rather than a label map? {SKIP_HINT}')
    return arr.astype(np.int16)


def _spacing(zooms: Sequence[float]) -> Tuple[Tuple[float, ...], bool]:
    """The header's voxel sizes, or ones (and ``False``: unknown) when they are missing or damaged."""
    z = tuple(float(v) for v in zooms)
    if z and all(np.isfinite(v) and v > 0 for v in z):
        return z, True
    return tuple(1.0 for _ in z), False


def _nifti_array(path: str):
    img = _nib_load(path)  # header checked against the file: size, gzip stream, scalar voxel type
    with reading(path, 'NIfTI file'):
        data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return img, data


def _probe_nifti(record: VolumeRecord) -> None:
    img = _nib_load(record.image)
    shape = tuple(int(v) for v in img.shape)
    shape = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(shape) not in (2, 3):
        raise UserInputError(f'{record.image}: a {len(shape)}D image ({"x".join(map(str, shape))}) where a 2D image '
                             f'or a 3D volume is expected.')
    if record.label:
        lab = _nib_load(record.label)
        lshape = tuple(int(v) for v in lab.shape)
        lshape = lshape[:3] if len(lshape) == 4 and lshape[3] == 1 else lshape
        if lshape != shape:
            raise UserInputError(f'{record.label}: label shape {lshape} differs from image shape {shape} '
                                 f'({record.image}).')


def _load_nifti(record: VolumeRecord, slice_axis: int) -> Volume:
    img, data = _nifti_array(record.image)
    if data.ndim == 4:
        raise UserInputError(f'{record.image}: a 4D image ({"x".join(map(str, data.shape))}) where a 3D volume is '
                             f'expected; split it into 3D volumes (for ACDC use the patientNNN_frameNN files, not '
                             f'the _4d cine).')
    if data.ndim not in (2, 3):
        raise UserInputError(f'{record.image}: expected a 2D or 3D image, got {data.ndim} dimensions.')
    data = check_finite(np.asarray(data, dtype=np.float32), record.image)
    zooms, spacing_known = _spacing(img.header.get_zooms()[:data.ndim])
    label = None
    if record.label:
        lab, ldata = _nifti_array(record.label)
        if ldata.shape != data.shape:
            raise UserInputError(f'{record.label}: label shape {ldata.shape} differs from image shape {data.shape} '
                                 f'({record.image}).')
        if not np.allclose(lab.affine, img.affine, rtol=1e-4, atol=1e-3, equal_nan=True):
            raise UserInputError(f'{record.label}: the label\'s affine differs from the image\'s ({record.image}); '
                                 f'they are not in the same space. Resample the label onto the image first.\n'
                                 f'image affine:\n{np.round(img.affine, 4)}\nlabel affine:\n{np.round(lab.affine, 4)}')
        label = _int_label(ldata, record.label)
    native_ndim = data.ndim
    if data.ndim == 2:
        data, label = data[None], (label[None] if label is not None else None)
        spacing, axis = (1.0, *zooms), 0
    else:
        axis = slice_axis % 3
        data = np.moveaxis(data, axis, 0)
        label = np.moveaxis(label, axis, 0) if label is not None else None
        spacing = (zooms[axis], *[z for i, z in enumerate(zooms) if i != axis])
    return Volume(record.case_id, np.ascontiguousarray(data, dtype=np.float32),
                  None if label is None else np.ascontiguousarray(label), np.asarray(img.affine, dtype=np.float64),
                  tuple(spacing), axis, spacing_known, record.image, record.label, record.patient, img.header.copy(),
                  native_ndim)


def _sitk_affine(img) -> np.ndarray:
    """Voxel (i, j, k) -> RAS mm affine of a SimpleITK image (SimpleITK is LPS)."""
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = d * np.asarray(img.GetSpacing(), dtype=np.float64)[None]
    aff[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        raise UserInputError('Reading NRRD / MetaImage needs SimpleITK: pip install "mednext-zoo[medical]".') \
            from None
    return sitk


def _sitk_header(path: str) -> Tuple[Tuple[int, ...], int]:
    """(size in SimpleITK's i, j, k order, components per pixel) from the header alone, after checking that
    the declared array fits the file (``.mhd`` / ``.nhdr`` keep their pixels in another file: the voxel cap
    only)."""
    sitk = _sitk()
    with reading(path, 'NRRD / MetaImage file'):
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        size = tuple(int(v) for v in reader.GetSize())
        comps = int(reader.GetNumberOfComponents())
        itemsize = sitk.GetArrayViewFromImage(sitk.Image([1] * len(size), reader.GetPixelID())).dtype.itemsize
        shape = (*size, comps) if comps > 1 else size
        if path.lower().endswith(('.nrrd', '.mha')):  # pixels in this file, raw or deflate-compressed
            on_disk = os.path.getsize(path)
            # raw or deflate: either way the array must be within deflate's reach of the file size
            check_declared_size(path, shape, itemsize, compressed=on_disk)
        else:
            check_declared_size(path, shape, itemsize)
    return size, comps


def _probe_sitk(record: VolumeRecord) -> None:
    size, comps = _sitk_header(record.image)
    if len(size) != 3 or comps != 1:
        raise UserInputError(f'{record.image}: a {len(size)}D image with {comps} component(s) where a 3D '
                             f'single-channel volume is expected.')
    if record.label:
        lsize, _ = _sitk_header(record.label)
        if lsize != size:
            raise UserInputError(f'{record.label}: label size {lsize} differs from image size {size} '
                                 f'({record.image}).')


def _load_sitk(record: VolumeRecord, slice_axis: int) -> Volume:
    sitk = _sitk()
    _probe_sitk(record)

    def read(path):
        with reading(path, 'NRRD / MetaImage file'):
            return sitk.ReadImage(path)

    img = read(record.image)
    with reading(record.image, 'NRRD / MetaImage file'):
        data = check_finite(sitk.GetArrayFromImage(img).astype(np.float32, copy=False), record.image)  # k, j, i
    label = None
    if record.label:
        lab = read(record.label)
        with reading(record.label, 'NRRD / MetaImage file'):
            ldata = sitk.GetArrayFromImage(lab)
        if ldata.shape != data.shape:
            raise UserInputError(f'{record.label}: label shape {ldata.shape} differs from image shape {data.shape} '
                                 f'({record.image}).')
        if not np.allclose(_sitk_affine(lab), _sitk_affine(img), rtol=1e-4, atol=1e-3):
            raise UserInputError(f'{record.label}: the label\'s geometry (origin / spacing / direction) differs from '
                                 f'the image\'s ({record.image}). Resample the label onto the image first.')
        label = _int_label(ldata, record.label)
    axis = 2 - slice_axis % 3  # slice_axis counts i, j, k like a NIfTI array; SimpleITK's array is k, j, i
    sp, spacing_known = _spacing(reversed(img.GetSpacing()))
    spacing = (sp[axis], *[z for i, z in enumerate(sp) if i != axis])
    data = np.moveaxis(data, axis, 0)
    label = np.moveaxis(label, axis, 0) if label is not None else None
    return Volume(record.case_id, np.ascontiguousarray(data, dtype=np.float32),
                  None if label is None else np.ascontiguousarray(label), _sitk_affine(img), spacing, axis,
                  spacing_known, record.image, record.label, record.patient, None, 3, img)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise UserInputError('Reading TransUNet .npy.h5 volumes needs h5py: pip install "mednext-zoo[medical]".') \
            from None
    return h5py


def _h5_dataset(f, key: str, path: str):
    """``f[key]`` after checking it is a numeric dataset whose declared size the file can hold."""
    h5py = _h5py()
    obj = f[key]
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in 'biuf':
        raise UserInputError(f'{path}: "{key}" is not a numeric array ({type(obj).__name__}, '
                             f'{getattr(obj, "dtype", "-")}). {SKIP_HINT}')
    on_disk = os.path.getsize(path)
    if obj.compression:
        check_declared_size(path, obj.shape, obj.dtype.itemsize, compressed=on_disk, what=key)
    else:
        check_declared_size(path, obj.shape, obj.dtype.itemsize, available=on_disk, what=key)
    return obj


def _probe_h5(record: VolumeRecord) -> None:
    h5py = _h5py()
    with reading(record.image, 'TransUNet volume file'), h5py.File(record.image, 'r') as f:
        if 'image' not in f:
            raise UserInputError(f'{record.image}: not a TransUNet volume file (no "image" array). {SKIP_HINT}')
        image = _h5_dataset(f, 'image', record.image)
        if len(image.shape) != 3:
            raise UserInputError(f'{record.image}: expected a D x H x W volume, got shape {image.shape}.')
        if 'label' in f and _h5_dataset(f, 'label', record.image).shape != image.shape:
            raise UserInputError(f'{record.image}: label shape {f["label"].shape} differs from image shape '
                                 f'{image.shape}.')


def _load_h5(record: VolumeRecord) -> Volume:
    h5py = _h5py()
    _probe_h5(record)
    with reading(record.image, 'TransUNet volume file'), h5py.File(record.image, 'r') as f:
        image = check_finite(np.asarray(f['image'], dtype=np.float32), record.image)
        label = _int_label(np.asarray(f['label']), record.image) if 'label' in f else None
    return Volume(record.case_id, image, label, np.eye(4), (1.0, 1.0, 1.0), 0, False, record.image, record.image,
                  record.patient)


def _npz_headers(path: str) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array of a ``.npz`` from its zip directory and ``.npy`` headers, checked against
    the bytes the archive holds (``numpy.load`` allocates the declared array before reading it)."""
    out = {}
    with reading(path, 'TransUNet slice file'), zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith('.npy'):
                continue
            key = info.filename[:-4]
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise UserInputError(f'{path}: unsupported .npy version {version} for "{key}". {SKIP_HINT}')
                shape, _, dtype = read_header(f)
            if dtype.hasobject or dtype.kind not in 'biuf':
                raise UserInputError(f'{path}: "{key}" holds {dtype} values, not numbers (pickled objects are '
                                     f'never loaded). {SKIP_HINT}')
            stored = info.compress_type != zipfile.ZIP_STORED
            check_declared_size(path, shape, dtype.itemsize, available=info.file_size, what=key,
                                compressed=info.compress_size if stored else None)
            out[key] = (tuple(int(v) for v in shape), dtype)
    return out


def _probe_npz(paths: Sequence[str]) -> None:
    first = None
    for p in paths:
        heads = _npz_headers(p)
        if 'image' not in heads:
            raise UserInputError(f'{p}: not a TransUNet slice file with "image" and "label" (arrays: '
                                 f'{", ".join(sorted(heads)) or "none"}). {SKIP_HINT}')
        shape = heads['image'][0]
        if len(shape) != 2:
            raise UserInputError(f'{p}: expected one 2D slice, got shape {shape}.')
        if 'label' in heads and heads['label'][0] != shape:
            raise UserInputError(f'{p}: label shape {heads["label"][0]} differs from image shape {shape}.')
        if first is not None and shape != first[1]:
            raise UserInputError(f'{p}: slice shape {shape} differs from {first[0]} {first[1]}.')
        first = first or (p, shape)


def _load_npz(paths: Sequence[str], record: VolumeRecord) -> Volume:
    _probe_npz(paths)
    imgs, labs = [], []
    for p in paths:
        with reading(p, 'TransUNet slice file'), np.load(p, allow_pickle=False) as z:
            imgs.append(check_finite(np.asarray(z['image'], dtype=np.float32), p))
            labs.append(_int_label(z['label'], p) if 'label' in z else None)
    label = np.stack(labs) if all(lab is not None for lab in labs) else None
    return Volume(record.case_id, np.stack(imgs), label, np.eye(4), (1.0, 1.0, 1.0), 0, False, paths[0],
                  paths[0] if label is not None else None, record.patient, native_ndim=3 if len(paths) > 1 else 2)


def _read_mask(path: str) -> np.ndarray:
    from PIL import Image

    with reading(path, 'mask'), Image.open(path) as lm:
        if lm.width <= 0 or lm.height <= 0:
            raise UserInputError(f'{path}: the mask is empty ({lm.width}x{lm.height}). {SKIP_HINT}')
        return np.asarray(lm.convert('L') if lm.mode in ('RGB', 'RGBA', 'LA', '1') else lm)


def _load_image2d(record: VolumeRecord) -> Volume:
    # the classification reader: [0, 1] floats, 16-bit and float images scaled by their range (not clipped)
    image = load_image(record.image)
    label = None
    if record.label:
        lab = _read_mask(record.label)
        values = np.unique(lab)
        if values.size <= 2 and values.max(initial=0) == 255:
            lab = (lab > 0)
        if lab.shape != image.shape[:2]:
            raise UserInputError(f'{record.label}: mask shape {lab.shape} differs from image shape '
                                 f'{image.shape[:2]} ({record.image}).')
        label = _int_label(lab, record.label)[None]
    roi = None
    if record.roi:
        roi = _read_mask(record.roi) > 0
        if roi.shape != image.shape[:2]:
            raise UserInputError(f'{record.roi}: region-of-interest shape {roi.shape} differs from image shape '
                                 f'{image.shape[:2]} ({record.image}).')
        roi = roi[None]
    return Volume(record.case_id, image[None], label, np.eye(4), (1.0, 1.0, 1.0), 0, False, record.image,
                  record.label, record.patient, native_ndim=2, roi=roi)


def _check_exists(record: VolumeRecord) -> None:
    if record.roi and record.fmt != 'image2d':
        raise UserInputError(f'{record.image}: a region of interest (roi) is supported for 2D images only; remove '
                             f'the roi of this {record.fmt} case.')
    for p in (record.image, record.label, record.roi) if record.fmt != 'npz_slices' else record.slices:
        if p and not os.path.isfile(p):
            raise UserInputError(f'{p}: file not found' + (' (missing label file).' if p == record.label else '.'))


def probe_volume(record: VolumeRecord) -> None:
    """Header-level checks of a case, without loading its voxels: the files exist and open, their declared
    sizes fit the files (truncation, damaged headers, decompression bombs), and image and label agree in shape.

    Raises :class:`UserInputError` naming the file. :func:`load_volume` checks the voxels themselves.
    """
    _check_exists(record)
    if record.fmt == 'nifti':
        _probe_nifti(record)
    elif record.fmt == 'sitk':
        _probe_sitk(record)
    elif record.fmt == 'h5':
        _probe_h5(record)
    elif record.fmt in ('npz', 'npz_slices'):
        _probe_npz(record.slices or [record.image])
    elif record.fmt == 'image2d':
        from .io import probe_image
        probe_image(record.image)
        if record.label:
            _read_mask(record.label)
        if record.roi:
            _read_mask(record.roi)
    else:
        raise UserInputError(f'{record.image}: unknown format {record.fmt!r}.')


def load_volume(record: VolumeRecord, label_map: Optional[LabelMap] = None, slice_axis: int = 2) -> Volume:
    """Load a case (slices-first), check image / label agreement and, with ``label_map``, the label values.

    ``slice_axis`` is the NIfTI array axis to slice along (2: the third axis, axial for most CT / MRI).
    Damaged files, NaN / inf intensities and label values that are not class indices raise
    :class:`UserInputError` naming the file.
    """
    _check_exists(record)
    if record.fmt == 'nifti':
        vol = _load_nifti(record, slice_axis)
    elif record.fmt == 'sitk':
        vol = _load_sitk(record, slice_axis)
    elif record.fmt == 'h5':
        vol = _load_h5(record)
    elif record.fmt == 'npz':
        vol = _load_npz([record.image], record)
    elif record.fmt == 'npz_slices':
        vol = _load_npz(record.slices, record)
    elif record.fmt == 'image2d':
        vol = _load_image2d(record)
    else:
        raise UserInputError(f'{record.image}: unknown format {record.fmt!r}.')
    if label_map is not None and vol.label is not None:
        check_label_values(vol.label, label_map, vol.label_path or vol.image_path)
    return vol


def iter_volumes(records: Sequence[VolumeRecord], load: Optional[Callable[[VolumeRecord], Volume]] = None,
                 on_bad_file: str = 'error', skipped: Optional[List[Tuple[str, str]]] = None) -> Iterator[Volume]:
    """Load ``records`` one at a time (``load``: default :func:`load_volume`).

    With ``on_bad_file='skip'`` a case whose files fail to load is left out and ``(file, reason)`` is appended
    to ``skipped``; with ``'error'`` the :class:`UserInputError` propagates.
    """
    if on_bad_file not in ON_BAD_FILE:
        raise UserInputError(f'--on-bad-file must be "error" or "skip", got {on_bad_file!r}.')
    load = load or load_volume
    for r in records:
        try:
            vol = load(r)
        except UserInputError as e:
            if on_bad_file != 'skip':
                raise
            if skipped is not None:
                skipped.append((r.image, str(e)))
            continue
        yield vol
