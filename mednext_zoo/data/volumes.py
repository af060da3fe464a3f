"""Segmentation datasets: find volumes and label maps in the common layouts, load them with their geometry.

Layouts (``discover`` picks one, or name it with ``layout=``):

* ``nnunet``  -- nnU-Net / Medical Segmentation Decathlon: ``imagesTr/CASE[_0000].nii.gz``,
  ``labelsTr/CASE.nii.gz``, optional ``imagesTs/``, ``labelsTs/`` and ``dataset.json`` (class names, modality);
* ``synapse`` -- TransUNet's preprocessed Synapse: ``train_npz/caseNNNN_sliceNNN.npz`` (keys ``image``,
  ``label``; one axial slice each, already windowed) and ``test_vol_h5/caseNNNN.npy.h5`` (``image``, ``label``,
  ``D, H, W``); these files carry no spacing or affine;
* ``acdc``    -- the ACDC release: ``patientNNN/patientNNN_frameNN.nii.gz`` with ``..._gt.nii.gz`` (ED / ES
  frames; ``Info.cfg`` names which is which; the ``_4d`` cine files are skipped);
* ``folders`` -- 2D images with masks: ``images/NAME.png`` and ``masks/NAME[_suffix].png`` (or ``labels/``);
* ``csv``     -- a CSV with columns ``image``, ``label`` and optionally ``case_id``, ``patient_id``, ``split``
  (paths relative to the CSV's folder).

A loaded :class:`Volume` is held slices-first (``D, H, W``; ``D, H, W, 3`` for colour 2D images) with the
spacing in that order; :meth:`Volume.to_native` puts an array back in the file's own axis order, so a prediction
is written with the source affine.
"""
from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserInputError
from .labels import LabelMap, check_label_values, patient_id, read_dataset_json

__all__ = ['VolumeRecord', 'Volume', 'SegDataset', 'discover', 'load_volume', 'case_id_of', 'NIFTI_EXTS', 'SITK_EXTS',
           'IMAGE_EXTS']

NIFTI_EXTS = ('.nii.gz', '.nii')
SITK_EXTS = ('.nrrd', '.nhdr', '.mha', '.mhd')  # read with SimpleITK
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
LAYOUTS = ('auto', 'nnunet', 'synapse', 'acdc', 'folders', 'csv')


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

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.image.shape[:3])

    def to_native(self, arr: np.ndarray) -> np.ndarray:
        """A ``D, H, W`` array in the source file's axis order."""
        if self.native_ndim == 2:
            return arr[0]
        return np.moveaxis(arr, 0, self.slice_axis)

    def native_spacing(self) -> Tuple[float, ...]:
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

    def split(self, name: str) -> List[VolumeRecord]:
        return [r for r in self.records if r.split == name]

    @property
    def case_ids(self) -> List[str]:
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


def _fmt_of(path: str) -> str:
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


# ---------------------------------------------------------------- discovery
def _nifti_files(folder: str) -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, '*')) if p.lower().endswith(NIFTI_EXTS + SITK_EXTS)
                  and not os.path.basename(p).startswith('._') and not p.lower().endswith('.raw'))


def _discover_nnunet(root: str) -> SegDataset:
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
                if m.group(2) != '0000':
                    raise UserInputError(f'{p}: multi-channel nnU-Net cases (channel {m.group(2)}) are not supported;'
                                         f' keep one channel (_0000) per case.')
                stem = m.group(1)
            label = None
            if need_labels:
                cands = [os.path.join(lab_dir, stem + e) for e in NIFTI_EXTS + SITK_EXTS]
                label = next((c for c in cands if os.path.isfile(c)), None)
                if label is None:
                    raise UserInputError(f'{p}: missing label file {cands[0]} (every image in '
                                         f'{os.path.basename(img_dir)}/ needs one in {os.path.basename(lab_dir)}/).')
            records.append(VolumeRecord(stem, p, label, _fmt_of(p), split=split))
    modality = meta.get('modality') or meta.get('channel_names')
    if isinstance(modality, dict):
        modality = next(iter(modality.values()), None)
    return SegDataset(root, 'nnunet', records, label_names=meta.get('labels'),
                      modality=str(modality) if modality else None,
                      meta_source=meta_path if meta else None)


def _discover_synapse(root: str) -> SegDataset:
    records: List[VolumeRecord] = []
    by_case: Dict[str, List[Tuple[int, str]]] = {}
    for p in sorted(glob.glob(os.path.join(root, 'train_npz', '*.npz'))):
        m = re.match(r'^(.*?)_slice(\d+)\.npz$', os.path.basename(p))
        if not m:
            raise UserInputError(f'{p}: expected TransUNet slice files named caseNNNN_sliceNNN.npz.')
        by_case.setdefault(m.group(1), []).append((int(m.group(2)), p))
    for case, items in sorted(by_case.items()):
        items.sort()
        records.append(VolumeRecord(case, items[0][1], items[0][1], 'npz_slices', split='train',
                                    slices=tuple(p for _, p in items)))
    for p in sorted(glob.glob(os.path.join(root, 'test_vol_h5', '*.h5'))):
        records.append(VolumeRecord(_strip_ext(os.path.basename(p)).replace('.npy', ''), p, p, 'h5', split='test'))
    return SegDataset(root, 'synapse', records, modality='CT',
                      info={'spacing': 'not stored in TransUNet files (HD95 in voxels in both modes)'})


def _read_info_cfg(path: str) -> Dict[str, int]:
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


def _discover_acdc(root: str) -> SegDataset:
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
            raise UserInputError(f'{p}: missing label file {os.path.join(folder, stem + "_gt.nii.gz")}.')
        frame = int(re.search(r'frame(\d+)', stem).group(1))
        info = _read_info_cfg(os.path.join(folder, 'Info.cfg'))
        phase = next((k for k, v in info.items() if v == frame), None)
        records.append(VolumeRecord(stem, p, label, 'nifti', patient=stem.split('_')[0], phase=phase))
    return SegDataset(root, 'acdc', records, modality='MRI')


def _discover_folders(root: str) -> SegDataset:
    img_dir = os.path.join(root, 'images')
    lab_dir = next((os.path.join(root, d) for d in ('masks', 'labels') if os.path.isdir(os.path.join(root, d))), None)
    if lab_dir is None:
        raise UserInputError(f'{root}: a 2D folder dataset needs images/ and masks/ (or labels/) sub-folders.')
    masks = {}
    for p in sorted(glob.glob(os.path.join(lab_dir, '*'))):
        if p.lower().endswith(IMAGE_EXTS):
            masks[_strip_ext(os.path.basename(p))] = p
    records = []
    for p in sorted(glob.glob(os.path.join(img_dir, '*'))):
        if not p.lower().endswith(IMAGE_EXTS):
            continue
        stem = _strip_ext(os.path.basename(p))
        label = masks.get(stem) or next((v for k, v in masks.items() if k.startswith(stem + '_')), None)
        if label is None:
            raise UserInputError(f'{p}: missing label file (no {stem}.png or {stem}_*.png in {lab_dir}).')
        records.append(VolumeRecord(stem, p, label, 'image2d', patient=stem))
    return SegDataset(root, 'folders', records)


def _discover_csv(path: str) -> SegDataset:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if 'image' not in cols:
            raise UserInputError(f'{path}: the CSV needs an "image" column (and "label"; optional case_id, '
                                 f'patient_id, split); found columns {cols}.')
        rows = [{(k or '').strip().lower(): (v or '').strip() for k, v in r.items()} for r in reader]
    records = []
    for i, r in enumerate(rows, start=2):
        img = os.path.join(base, r['image'])
        if not os.path.isfile(img):
            raise UserInputError(f'{path} line {i}: image file {img} does not exist.')
        lab = os.path.join(base, r['label']) if r.get('label') else None
        if lab is not None and not os.path.isfile(lab):
            raise UserInputError(f'{path} line {i}: missing label file {lab}.')
        cid = r.get('case_id') or _strip_ext(os.path.basename(img))
        split = (r.get('split') or '').lower() or None
        records.append(VolumeRecord(cid, img, lab, _fmt_of(img), patient=r.get('patient_id') or r.get('patient') or '',
                                    split=split))
    return SegDataset(path, 'csv', records)


def discover(source: str, layout: str = 'auto') -> SegDataset:
    """Index the cases of a dataset folder or CSV (see the module docstring for the layouts)."""
    if layout not in LAYOUTS:
        raise UserInputError(f'Unknown layout {layout!r}; choose one of {", ".join(LAYOUTS)}.')
    if not os.path.exists(source):
        raise UserInputError(f'{source}: no such file or folder.')
    if os.path.isfile(source):
        if layout not in ('auto', 'csv') or not source.lower().endswith('.csv'):
            raise UserInputError(f'{source}: give a dataset folder or a .csv of image / label pairs.')
        ds = _discover_csv(source)
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
              'folders': _discover_folders, 'csv': _discover_csv}[layout](source)
    if not ds.records:
        raise UserInputError(f'{source}: the dataset is empty (no cases found in the {ds.layout} layout).')
    return ds


# ---------------------------------------------------------------- loading
def _int_label(arr: np.ndarray, path: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == 'f':
        r = np.round(arr)
        if not np.allclose(arr, r, atol=1e-3):
            raise UserInputError(f'{path}: label values must be integers (found non-integer values such as '
                                 f'{arr[np.abs(arr - r) > 1e-3].flat[0]:g}); is this an image rather than a label map?')
        arr = r
    return arr.astype(np.int16)


def _load_nifti(record: VolumeRecord, slice_axis: int) -> Volume:
    import nibabel as nib

    def read(path):
        try:
            return nib.load(path)
        except Exception as e:  # nibabel raises several types for unreadable files
            raise UserInputError(f'{path}: cannot read as NIfTI ({e}).') from None

    img = read(record.image)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise UserInputError(f'{record.image}: a 4D image ({"x".join(map(str, data.shape))}) where a 3D volume is '
                             f'expected; split it into 3D volumes (for ACDC use the patientNNN_frameNN files, not '
                             f'the _4d cine).')
    if data.ndim not in (2, 3):
        raise UserInputError(f'{record.image}: expected a 2D or 3D image, got {data.ndim} dimensions.')
    zooms = tuple(float(z) for z in img.header.get_zooms()[:data.ndim])
    label = None
    if record.label:
        lab = read(record.label)
        ldata = np.asanyarray(lab.dataobj)
        if ldata.ndim == 4 and ldata.shape[3] == 1:
            ldata = ldata[..., 0]
        if ldata.shape != data.shape:
            raise UserInputError(f'{record.label}: label shape {ldata.shape} differs from image shape {data.shape} '
                                 f'({record.image}).')
        if not np.allclose(lab.affine, img.affine, rtol=1e-4, atol=1e-3):
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
                  tuple(spacing), axis, True, record.image, record.label, record.patient, img.header.copy(),
                  native_ndim)


def _sitk_affine(img) -> np.ndarray:
    """Voxel (i, j, k) -> RAS mm affine of a SimpleITK image (SimpleITK is LPS)."""
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = d * np.asarray(img.GetSpacing(), dtype=np.float64)[None]
    aff[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def _load_sitk(record: VolumeRecord, slice_axis: int) -> Volume:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise UserInputError(f'{record.image}: reading NRRD / MetaImage needs SimpleITK: pip install SimpleITK.') \
            from None

    def read(path):
        try:
            return sitk.ReadImage(path)
        except RuntimeError as e:
            raise UserInputError(f'{path}: cannot read with SimpleITK ({str(e).strip().splitlines()[-1]}).') from None

    img = read(record.image)
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(f'{record.image}: a {img.GetDimension()}D image with {img.GetNumberOfComponentsPerPixel()}'
                             f' component(s) where a 3D single-channel volume is expected.')
    data = sitk.GetArrayFromImage(img)  # k, j, i
    label = None
    if record.label:
        lab = read(record.label)
        ldata = sitk.GetArrayFromImage(lab)
        if ldata.shape != data.shape:
            raise UserInputError(f'{record.label}: label shape {ldata.shape} differs from image shape {data.shape} '
                                 f'({record.image}).')
        if not np.allclose(_sitk_affine(lab), _sitk_affine(img), rtol=1e-4, atol=1e-3):
            raise UserInputError(f'{record.label}: the label\'s geometry (origin / spacing / direction) differs from '
                                 f'the image\'s ({record.image}). Resample the label onto the image first.')
        label = _int_label(ldata, record.label)
    axis = 2 - slice_axis % 3  # slice_axis counts i, j, k like a NIfTI array; SimpleITK's array is k, j, i
    sp = tuple(float(v) for v in reversed(img.GetSpacing()))
    spacing = (sp[axis], *[z for i, z in enumerate(sp) if i != axis])
    data = np.moveaxis(data, axis, 0)
    label = np.moveaxis(label, axis, 0) if label is not None else None
    return Volume(record.case_id, np.ascontiguousarray(data, dtype=np.float32),
                  None if label is None else np.ascontiguousarray(label), _sitk_affine(img), spacing, axis, True,
                  record.image, record.label, record.patient, None, 3, img)


def _load_h5(record: VolumeRecord) -> Volume:
    try:
        import h5py
    except ImportError:
        raise UserInputError('Reading TransUNet .npy.h5 volumes needs h5py: pip install "mednext-zoo[medical]".') \
            from None
    try:
        with h5py.File(record.image, 'r') as f:
            image = np.asarray(f['image'], dtype=np.float32)
            label = _int_label(np.asarray(f['label']), record.image) if 'label' in f else None
    except (OSError, KeyError) as e:
        raise UserInputError(f'{record.image}: not a TransUNet volume file with "image" and "label" ({e}).') from None
    if image.ndim != 3:
        raise UserInputError(f'{record.image}: expected a D x H x W volume, got shape {image.shape}.')
    if label is not None and label.shape != image.shape:
        raise UserInputError(f'{record.image}: label shape {label.shape} differs from image shape {image.shape}.')
    return Volume(record.case_id, image, label, np.eye(4), (1.0, 1.0, 1.0), 0, False, record.image, record.image,
                  record.patient)


def _load_npz(paths: Sequence[str], record: VolumeRecord) -> Volume:
    imgs, labs = [], []
    for p in paths:
        try:
            with np.load(p) as z:
                imgs.append(np.asarray(z['image'], dtype=np.float32))
                labs.append(_int_label(z['label'], p) if 'label' in z else None)
        except (OSError, KeyError, ValueError) as e:
            raise UserInputError(f'{p}: not a TransUNet slice file with "image" and "label" ({e}).') from None
        if imgs[-1].ndim != 2:
            raise UserInputError(f'{p}: expected one 2D slice, got shape {imgs[-1].shape}.')
        if labs[-1] is not None and labs[-1].shape != imgs[-1].shape:
            raise UserInputError(f'{p}: label shape {labs[-1].shape} differs from image shape {imgs[-1].shape}.')
        if imgs[-1].shape != imgs[0].shape:
            raise UserInputError(f'{p}: slice shape {imgs[-1].shape} differs from {paths[0]} {imgs[0].shape}.')
    label = np.stack(labs) if all(lab is not None for lab in labs) else None
    return Volume(record.case_id, np.stack(imgs), label, np.eye(4), (1.0, 1.0, 1.0), 0, False, paths[0],
                  paths[0] if label is not None else None, record.patient, native_ndim=3 if len(paths) > 1 else 2)


def _load_image2d(record: VolumeRecord) -> Volume:
    from PIL import Image

    try:
        with Image.open(record.image) as im:
            im = im.convert('L') if im.mode in ('L', 'I', 'I;16', 'F', '1', 'LA') else im.convert('RGB')
            image = np.asarray(im, dtype=np.float32) / (255.0 if im.mode in ('L', 'RGB') else 1.0)
    except OSError as e:
        raise UserInputError(f'{record.image}: cannot read the image ({e}).') from None
    label = None
    if record.label:
        try:
            with Image.open(record.label) as lm:
                lab = np.asarray(lm.convert('L') if lm.mode in ('RGB', 'RGBA', 'LA', '1') else lm)
        except OSError as e:
            raise UserInputError(f'{record.label}: cannot read the mask ({e}).') from None
        values = np.unique(lab)
        if values.size <= 2 and values.max(initial=0) == 255:
            lab = (lab > 0)
        if lab.shape != image.shape[:2]:
            raise UserInputError(f'{record.label}: mask shape {lab.shape} differs from image shape '
                                 f'{image.shape[:2]} ({record.image}).')
        label = _int_label(lab, record.label)[None]
    return Volume(record.case_id, image[None], label, np.eye(4), (1.0, 1.0, 1.0), 0, False, record.image,
                  record.label, record.patient, native_ndim=2)


def load_volume(record: VolumeRecord, label_map: Optional[LabelMap] = None, slice_axis: int = 2) -> Volume:
    """Load a case (slices-first), check image / label agreement and, with ``label_map``, the label values.

    ``slice_axis`` is the NIfTI array axis to slice along (2: the third axis, axial for most CT / MRI).
    """
    for p in (record.image, record.label) if record.fmt != 'npz_slices' else ():
        if p and not os.path.isfile(p):
            raise UserInputError(f'{p}: file not found' + (' (missing label file).' if p == record.label else '.'))
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
