"""MedMNIST v2 / MedMNIST+ ``.npz`` files as a classification source, with their official splits.

A MedMNIST file holds six arrays: ``{train,val,test}_images`` (``N, H, W`` grayscale or ``N, H, W, 3`` RGB,
uint8; H = W = 28, 64, 128 or 224) and ``{train,val,test}_labels`` (``N, 1`` class indices, or ``N, L`` 0/1 for
the multi-label ChestMNIST). The subset's class names and task type come from :data:`MEDMNIST_2D`, keyed by the
file name (``pneumoniamnist_64.npz`` -> ``pneumoniamnist``); ``labels=`` overrides them.

A name such as ``pneumoniamnist_64`` (or ``pneumoniamnist`` for 28 px) resolves in the medmnist package's cache
folder, ``$MEDMNIST_ROOT`` or ``~/.medmnist``. Nothing is downloaded. Arrays are read with ``allow_pickle=False``,
and every header is checked against the bytes the archive holds before anything is allocated.

Each image becomes a :class:`~.images.Sample` whose ``path`` is the file and whose ``item`` is ``SPLIT/INDEX``
(``test/17``); its official split is kept. Pixels are scaled to ``[0, 1]`` by /255, like an 8-bit PNG.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserInputError
from ._untrusted import DEFLATE_MAX_RATIO, check_declared_size, reading
from .samples import DataSource, Sample

__all__ = ['MedMNISTInfo', 'MEDMNIST_2D', 'MEDMNIST_LICENCE', 'MEDMNIST_CITATION', 'TASK_TYPES', 'medmnist_root',
           'is_array_source', 'resolve_npz', 'subset_of', 'read_medmnist', 'load_array_image', 'array_item_id',
           'parse_item']

MEDMNIST_LICENCE = 'CC BY 4.0'
MEDMNIST_CITATION = ('Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D '
                     'biomedical image classification. Scientific Data 10:41 (2023). doi:10.1038/s41597-022-01721-8')
TASK_TYPES = ('binary', 'multi-class', 'multi-label', 'ordinal')
_KEYS = tuple(f'{s}_{k}' for s in ('train', 'val', 'test') for k in ('images', 'labels'))
_SIZE_SUFFIX = re.compile(r'^(?P<subset>[a-z0-9]+?)(?:_(?P<size>28|64|128|224))?$')


@dataclass(frozen=True)
class MedMNISTInfo:
    """One 2D MedMNIST subset: task type, class (or label) names in index order, channels."""
    task: str  # one of TASK_TYPES; 'ordinal' is trained and scored as multi-class (as the MedMNIST paper does)
    classes: Tuple[str, ...]
    channels: int
    modality: str


_ORGANS = ('bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver', 'lung-left',
           'lung-right', 'pancreas', 'spleen')

#: The 2D subsets of MedMNIST v2 (facts from the MedMNIST paper / package's INFO table).
MEDMNIST_2D: Dict[str, MedMNISTInfo] = {
    'pathmnist': MedMNISTInfo('multi-class', (
        'adipose', 'background', 'debris', 'lymphocytes', 'mucus', 'smooth muscle', 'normal colon mucosa',
        'cancer-associated stroma', 'colorectal adenocarcinoma epithelium'), 3, 'colon pathology'),
    'chestmnist': MedMNISTInfo('multi-label', (
        'atelectasis', 'cardiomegaly', 'effusion', 'infiltration', 'mass', 'nodule', 'pneumonia', 'pneumothorax',
        'consolidation', 'edema', 'emphysema', 'fibrosis', 'pleural', 'hernia'), 1, 'chest X-ray'),
    'dermamnist': MedMNISTInfo('multi-class', (
        'actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma', 'benign keratosis-like lesions',
        'dermatofibroma', 'melanoma', 'melanocytic nevi', 'vascular lesions'), 3, 'dermatoscope'),
    'octmnist': MedMNISTInfo('multi-class', (
        'choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'), 1, 'retinal OCT'),
    'pneumoniamnist': MedMNISTInfo('binary', ('normal', 'pneumonia'), 1, 'chest X-ray'),
    'retinamnist': MedMNISTInfo('ordinal', ('0', '1', '2', '3', '4'), 3, 'fundus camera'),
    'breastmnist': MedMNISTInfo('binary', ('malignant', 'normal, benign'), 1, 'breast ultrasound'),
    'bloodmnist': MedMNISTInfo('multi-class', (
        'basophil', 'eosinophil', 'erythroblast',
        'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)', 'lymphocyte', 'monocyte',
        'neutrophil', 'platelet'), 3, 'blood cell microscope'),
    'tissuemnist': MedMNISTInfo('multi-class', (
        'Collecting Duct, Connecting Tubule', 'Distal Convoluted Tubule', 'Glomerular endothelial cells',
        'Interstitial endothelial cells', 'Leukocytes', 'Podocytes', 'Proximal Tubule Segments',
        'Thick Ascending Limb'), 1, 'kidney cortex microscope'),
    'organamnist': MedMNISTInfo('multi-class', _ORGANS, 1, 'abdominal CT'),
    'organcmnist': MedMNISTInfo('multi-class', _ORGANS, 1, 'abdominal CT'),
    'organsmnist': MedMNISTInfo('multi-class', _ORGANS, 1, 'abdominal CT'),
}


def medmnist_root() -> str:
    """The medmnist package's cache folder: ``$MEDMNIST_ROOT``, else ``~/.medmnist``."""
    return os.path.expanduser(os.environ.get('MEDMNIST_ROOT') or os.path.join('~', '.medmnist'))


def subset_of(path: Union[str, os.PathLike]) -> Optional[str]:
    """The MedMNIST subset a file name names (``pneumoniamnist_64.npz`` -> ``pneumoniamnist``), else None."""
    stem = os.path.basename(os.fspath(path)).lower()
    stem = stem[:-4] if stem.endswith('.npz') else stem
    m = _SIZE_SUFFIX.match(stem)
    return m.group('subset') if m and m.group('subset') in MEDMNIST_2D else None


def _name_candidates(name: str) -> List[str]:
    stem = name[:-4] if name.lower().endswith('.npz') else name
    m = _SIZE_SUFFIX.match(stem.lower())
    if m and m.group('size') == '28':  # medmnist stores 28 px files without a suffix
        return [f'{m.group("subset")}.npz', f'{stem}.npz']
    return [f'{stem}.npz']


def is_array_source(data: Union[str, os.PathLike]) -> bool:
    """True for a ``.npz`` path or a bare MedMNIST name (``pneumoniamnist_64``)."""
    s = os.fspath(data)
    if s.lower().endswith('.npz'):
        return True
    return os.sep not in s and '/' not in s and not os.path.exists(s) and subset_of(s) is not None


def resolve_npz(data: Union[str, os.PathLike]) -> str:
    """The ``.npz`` file for ``data``: an existing path, or a MedMNIST name looked up in :func:`medmnist_root`.

    Raises UserInputError naming every place looked in; nothing is downloaded.
    """
    s = os.fspath(data)
    if os.path.isfile(s):
        return s
    if os.sep in s or '/' in s or os.path.exists(s):
        raise UserInputError(f'MedMNIST file {s} does not exist.')
    root = medmnist_root()
    tried = [os.path.join(root, c) for c in _name_candidates(s)]
    for p in tried:
        if os.path.isfile(p):
            return p
    subset = subset_of(s)
    hint = (f' Download it with the medmnist package (python -m medmnist download --flag {subset}'
            f'{" --size " + s.rsplit("_", 1)[1] if "_" in s else ""}) or from zenodo, then point --data at the file'
            if subset else '')
    raise UserInputError(f'{s}: no such file; looked for {" and ".join(tried)} (MEDMNIST_ROOT={root}). '
                         f'Nothing is downloaded.{hint}.')


# ---------------------------------------------------------------- reading
def _headers(path: str) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of the archive from the ``.npy`` headers, checked against the bytes held."""
    out = {}
    with reading(path, 'MedMNIST file'), zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith('.npy'):
                continue
            key = info.filename[:-4]
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise UserInputError(f'{path}: unsupported .npy version {version} for "{key}".')
                shape, _, dtype = read_header(f)
            if dtype.hasobject:
                raise UserInputError(f'{path}: "{key}" holds Python objects; pickled data is never loaded. Save the '
                                     f'arrays as numbers (uint8 images, integer labels).')
            shape = tuple(int(v) for v in shape)
            per_item = shape[1:] if len(shape) > 1 else shape
            check_declared_size(path, per_item or (1,), dtype.itemsize, what=f'"{key}" item')
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if info.compress_type == zipfile.ZIP_STORED and nbytes > info.file_size:
                raise UserInputError(f'{path}: "{key}" declares {nbytes:,} bytes but the archive holds '
                                     f'{info.file_size:,}: the file is truncated or damaged.')
            if info.compress_type != zipfile.ZIP_STORED and nbytes > DEFLATE_MAX_RATIO * max(1, info.compress_size):
                raise UserInputError(f'{path}: "{key}" declares more data than its compressed bytes can hold: the '
                                     f'header is damaged.')
            out[key] = (shape, dtype)
    return out


class _Arrays:
    """The decoded arrays of one file, read once per process (keyed by real path, size and mtime)."""
    _lock = threading.Lock()
    _cache: Dict[Tuple[str, int, float], Dict[str, np.ndarray]] = {}

    @classmethod
    def get(cls, path: str, key: str) -> np.ndarray:
        st = os.stat(path)
        ident = (os.path.realpath(path), st.st_size, st.st_mtime)
        with cls._lock:
            arrays = cls._cache.get(ident)
            if arrays is None:
                cls._cache.clear()  # one file at a time: a 224 px set is hundreds of MB
                arrays = cls._cache[ident] = {}
            if key not in arrays:
                with reading(path, 'MedMNIST file'), np.load(path, allow_pickle=False) as z:
                    arrays[key] = np.asarray(z[key])
            return arrays[key]


def _check_labels(path: str, split: str, labels: np.ndarray, n_images: int, num_classes: Optional[int],
                  multi_label: Optional[bool]) -> np.ndarray:
    key = f'{split}_labels'
    if labels.dtype.kind not in 'biu':
        raise UserInputError(f'{path}: "{key}" has dtype {labels.dtype}; labels must be integers (class indices, '
                             f'or 0/1 per label for a multi-label set).')
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise UserInputError(f'{path}: "{key}" has shape {labels.shape}; expected (N, 1) class indices or (N, L) '
                             f'0/1 labels.')
    if labels.shape[0] != n_images:
        raise UserInputError(f'{path}: {n_images} {split} images but {labels.shape[0]} {split} labels; the arrays '
                             f'must have the same length.')
    if multi_label:
        bad = ~np.isin(labels, (0, 1))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise UserInputError(f'{path}: {split} image {row} has multi-label values {labels[row].tolist()}; each '
                                 f'label must be 0 or 1.')
        if num_classes is not None and labels.shape[1] != num_classes:
            raise UserInputError(f'{path}: "{key}" has {labels.shape[1]} labels per image but {num_classes} label '
                                 f'names are given.')
        return labels.astype(np.int64)
    lab = labels[:, 0].astype(np.int64)
    if num_classes is not None:
        bad = np.flatnonzero((lab < 0) | (lab >= num_classes))
        if bad.size:
            raise UserInputError(f'{path}: {split} image {int(bad[0])} has label {int(lab[bad[0]])}, outside '
                                 f'0..{num_classes - 1} ({num_classes} classes); {bad.size} label(s) are out of '
                                 f'range. Fix the file or give the class names with --labels.')
    elif (lab < 0).any():
        raise UserInputError(f'{path}: negative class index {int(lab.min())} in "{key}".')
    return lab


def _parse_labels(labels: Union[None, str, Sequence[str]]) -> Tuple[Optional[str], Optional[List[str]]]:
    """``--labels``: ``"a,b,c"`` or ``"multi-label:a,b,c"`` (a task prefix from TASK_TYPES is optional)."""
    if labels is None:
        return None, None
    task = None
    if isinstance(labels, str):
        text = labels.strip()
        head, sep, rest = text.partition(':')
        if sep and head.strip().lower() in TASK_TYPES:
            task, text = head.strip().lower(), rest
        names = [s.strip() for s in text.split(',')]
    else:
        names = [str(s).strip() for s in labels]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise UserInputError(f'--labels {labels!r}: give distinct, non-empty class names separated by commas '
                             f'(optionally prefixed by a task: {", ".join(TASK_TYPES)}), e.g. "normal,pneumonia".')
    return task, names


def read_medmnist(data: Union[str, os.PathLike], labels: Union[None, str, Sequence[str]] = None):
    """A MedMNIST ``.npz`` (path or name) as a :class:`~.images.DataSource` with the official splits.

    ``labels`` overrides the built-in class names (and, with a ``task:`` prefix, the task type). A file the table
    does not know gets ``class_0..K-1`` (multi-label when the labels are ``N, L`` with L > 1).
    """

    path = resolve_npz(data)
    heads = _headers(path)
    missing = [k for k in _KEYS if k not in heads]
    if missing:
        have = ', '.join(sorted(heads)) or 'none'
        raise UserInputError(f'{path}: not a MedMNIST file; it lacks {", ".join(missing)} (it has {have}). A '
                             f'MedMNIST .npz holds train/val/test _images and _labels.')
    subset = subset_of(path)
    info = MEDMNIST_2D.get(subset) if subset else None
    task_override, names = _parse_labels(labels)
    channels = None
    shapes = {}
    for split in ('train', 'val', 'test'):
        shape, dtype = heads[f'{split}_images']
        if dtype != np.uint8:
            raise UserInputError(f'{path}: "{split}_images" has dtype {dtype}; MedMNIST images are uint8 (0-255). '
                                 f'Convert them (e.g. np.clip(x * 255, 0, 255).astype(np.uint8)) and save again.')
        if len(shape) == 3:
            ch = 1
        elif len(shape) == 4 and shape[3] in (1, 3):
            ch = shape[3]
        else:
            raise UserInputError(f'{path}: "{split}_images" has shape {shape}; expected (N, H, W) grayscale or '
                                 f'(N, H, W, 3) RGB.')
        if channels is not None and ch != channels:
            raise UserInputError(f'{path}: the splits mix grayscale and RGB images.')
        channels = ch
        shapes[split] = shape
    label_cols = {heads[f'{s}_labels'][0][1] if len(heads[f'{s}_labels'][0]) == 2 else 1 for s in shapes}
    inferred_multi = max(label_cols) > 1
    task = task_override or (info.task if info and not names else None)
    if task is None:
        task = 'multi-label' if inferred_multi else None
    multi = task == 'multi-label'
    if inferred_multi and not multi:
        raise UserInputError(f'{path}: the labels have {max(label_cols)} columns (a multi-label set) but the task is '
                             f'{task}; pass --labels "multi-label:NAME1,NAME2,...".')
    classes = names or (list(info.classes) if info else None)
    arrays = {s: _check_labels(path, s, _Arrays.get(path, f'{s}_labels'), shapes[s][0],
                               len(classes) if classes else None, multi) for s in shapes}
    if classes is None:
        k = (max(int(a.max()) for a in arrays.values()) + 1) if not multi else arrays['train'].shape[1]
        classes = [f'class_{i}' for i in range(max(k, 2))]
    if task is None:
        task = 'binary' if len(classes) == 2 else 'multi-class'
    if not multi and len(classes) < 2:
        raise UserInputError(f'{path}: classification needs at least two classes, got {classes}.')
    samples = []
    for split in ('train', 'val', 'test'):
        lab = arrays[split]
        for i in range(shapes[split][0]):
            if multi:
                label = '|'.join(classes[j] for j in np.flatnonzero(lab[i])) or ''
            else:
                label = classes[int(lab[i])]
            samples.append(Sample(path, label, None, split, item=f'{split}/{i}'))
    size = shapes['train'][1]
    meta = {'format': 'medmnist', 'subset': subset, 'size': int(size), 'known_subset': info is not None,
            'licence': MEDMNIST_LICENCE if info else None, 'modality': info.modality if info else None,
            'official_splits': True, 'task_type': task}
    return DataSource(samples, list(classes), channels, [], path, task='multi-label' if multi else 'single-label',
                      meta=meta)


def parse_item(item: str) -> Tuple[str, int]:
    """``'test/17'`` -> ``('test_images', 17)``."""
    split, _, idx = item.partition('/')
    if split not in ('train', 'val', 'test') or not idx.isdigit():
        raise UserInputError(f'Bad array item {item!r}; expected SPLIT/INDEX such as test/17.')
    return f'{split}_images', int(idx)


def load_array_image(path: str, item: str) -> np.ndarray:
    """One image of a MedMNIST file as float32 in ``[0, 1]``: ``(H, W)`` grayscale or ``(H, W, 3)`` RGB."""
    key, idx = parse_item(item)
    arr = _Arrays.get(path, key)
    if not 0 <= idx < arr.shape[0]:
        raise UserInputError(f'{path}: {item} is out of range ({arr.shape[0]} images in {key}).')
    img = arr[idx]
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img.astype(np.float32) / 255.0


def array_item_id(path: str, item: str) -> str:
    """The content identity of one array image: the SHA-256 of its shape and pixels (what ``splits.csv`` records;
    the same image in another file matches)."""
    key, idx = parse_item(item)
    arr = np.ascontiguousarray(_Arrays.get(path, key)[idx])
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
