"""Labelled 2D image collections: discovery (ImageFolder tree or CSV manifest), splits and a torch Dataset.

* ImageFolder: ``ROOT/<class>/<file>``, or ``ROOT/{train,val,test}/<class>/<file>`` for given splits.
* CSV manifest: columns ``path,label`` and optionally ``patient_id``, ``split`` (train / val / test) and
  ``slice`` (NIfTI slice index); relative paths are resolved against the CSV's folder.
* A MedMNIST ``.npz`` file (or a name such as ``pneumoniamnist_64``), with its official splits: see :mod:`.medmnist`.

A 3D NIfTI volume without a slice index contributes every slice along its last axis, all grouped under one
patient (the file) so that slices of one volume never straddle two splits.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import UserInputError
from ._untrusted import read_csv_rows
from .columns import check_columns, did_you_mean
from .io import SUPPORTED_EXTS, Window, image_kind, load_image, nifti_num_slices, parse_window, probe_image
from .samples import DataSource, Sample

__all__ = [
    'Sample', 'DataSource', 'discover', 'read_csv_manifest', 'read_image_folder', 'assign_splits',
    'kfold_assignments', 'hold_out_test', 'check_patient_splits', 'ImageClassificationDataset', 'EpochSampler',
    'build_transforms', 'SPLITS', 'load_sample', 'multi_hot', 'OneClassError',
]

SPLITS = ('train', 'val', 'test')
_SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'val': 'val', 'valid': 'val', 'validation': 'val',
                  'test': 'test', 'testing': 'test'}


def _norm_split(value: str, where: str) -> Optional[str]:
    v = (value or '').strip().lower()
    if not v:
        return None
    if v not in _SPLIT_ALIASES:
        raise UserInputError(f'Unknown split {value!r} in {where}; use train, val or test (or leave it empty).')
    return _SPLIT_ALIASES[v]


def _expand(path: str, label: str, patient: Optional[str], split: Optional[str],
            slice_index: Optional[int]) -> List[Sample]:
    if image_kind(path) == 'nifti' and slice_index is None:
        n = nifti_num_slices(path)
        if n > 1:
            pid = patient if patient is not None else os.path.abspath(path)
            return [Sample(path, label, pid, split, k) for k in range(n)]
    return [Sample(path, label, patient, split, slice_index)]


class OneClassError(UserInputError):
    """The data holds a single class: an error for training, not for scoring (``evaluate`` uses ``source``)."""

    def __init__(self, message: str, source: DataSource):
        super().__init__(message)
        self.source = source


def _scan(entries: List[Tuple[str, str, Optional[str], Optional[str], Optional[int]]], on_bad_file: str,
          origin: str, skipped: Optional[List[Tuple[str, str]]] = None) -> DataSource:
    if on_bad_file not in ('error', 'skip'):
        raise UserInputError(f'--on-bad-file must be "error" or "skip", got {on_bad_file!r}.')
    samples: List[Sample] = []
    skipped = list(skipped or [])
    channels = 1
    for path, label, patient, split, slice_index in entries:
        try:
            ch = probe_image(path)
            samples.extend(_expand(path, label, patient, split, slice_index))
        except UserInputError as e:
            if on_bad_file == 'skip':
                skipped.append((path, str(e)))
                continue
            raise
        channels = max(channels, ch)
    if skipped:
        warnings.warn(f'Skipped {len(skipped)} unreadable or missing file(s) in {origin} (first: {skipped[0][0]}).',
                      stacklevel=3)
    if not samples:
        raise UserInputError(f'No readable images in {origin} (supported: {", ".join(SUPPORTED_EXTS)}).')
    classes = sorted({s.label for s in samples})
    src = DataSource(samples, classes, channels, skipped, origin)
    if len(classes) < 2:
        raise OneClassError(
            f'Only one class ({classes[0]!r}) found in {origin}; classification needs at least two. '
            f'An ImageFolder tree needs one sub-folder per class.', src)
    check_patient_splits(src.samples)
    return src


def _image_files(folder: str) -> List[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for f in sorted(files):
            if not f.startswith('.') and image_kind(f) is not None:
                out.append(os.path.join(root, f))
    return out


def read_image_folder(root: str, on_bad_file: str = 'error') -> DataSource:
    """ImageFolder tree: class sub-folders, optionally under ``train/``, ``val/`` and ``test/``."""
    if not os.path.isdir(root):
        raise UserInputError(f'Data folder {root} does not exist.')
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))
    split_dirs = {d: _SPLIT_ALIASES[d.lower()] for d in subdirs if d.lower() in _SPLIT_ALIASES}
    entries = []
    if split_dirs:
        others = [d for d in subdirs if d not in split_dirs]
        if others:
            raise UserInputError(
                f'{root} mixes split folders ({", ".join(split_dirs)}) with other folders ({", ".join(others)}); '
                f'put every class folder under train/, val/ or test/.')
        for d, split in split_dirs.items():
            for cls in sorted(c for c in os.listdir(os.path.join(root, d)) if os.path.isdir(os.path.join(root, d, c))):
                for f in _image_files(os.path.join(root, d, cls)):
                    entries.append((f, cls, None, split, None))
    else:
        for cls in subdirs:
            for f in _image_files(os.path.join(root, cls)):
                entries.append((f, cls, None, None, None))
    if not entries:
        raise UserInputError(
            f'No images found in {root}. Expected class sub-folders (ROOT/<class>/<image>) holding '
            f'{", ".join(SUPPORTED_EXTS)} files.')
    return _scan(entries, on_bad_file, root)


def read_csv_manifest(csv_path: str, on_bad_file: str = 'error', strict_columns: bool = False) -> DataSource:
    """CSV manifest with columns ``path,label[,patient_id][,split][,slice]`` (UTF-8).

    With ``on_bad_file='skip'`` rows naming a missing file are skipped and counted in ``DataSource.skipped``
    like unreadable files; a damaged manifest (not UTF-8, too many fields, a bad split or slice) always stops.
    A misspelled column (``patient id``, ``spilt``) is refused; other unknown columns are ignored with a warning,
    refused with ``strict_columns`` (see :func:`mednext_zoo.data.columns.check_columns`).
    """
    if not os.path.isfile(csv_path):
        raise UserInputError(f'CSV manifest {csv_path} does not exist.')
    base = os.path.dirname(os.path.abspath(csv_path))
    cols, rows = read_csv_rows(csv_path)
    check_columns(cols, ('path', 'label'), ('patient_id', 'split', 'slice'), csv_path, strict_columns, 'CSV manifest')
    missing = [c for c in ('path', 'label') if c not in cols]
    if missing:
        raise UserInputError(f'CSV manifest {csv_path} lacks column(s) {", ".join(missing)}; it has '
                             f'{cols or "no header"}. Required: path,label; optional: patient_id,split,slice.')
    if not rows:
        raise UserInputError(f'CSV manifest {csv_path} has no rows.')
    entries, skipped = [], []
    for line, r in rows:  # line numbers as a spreadsheet shows them
        where = f'{csv_path} line {line}'
        if not r.get('path'):
            raise UserInputError(f'Empty path in {where}.')
        if not r.get('label'):
            raise UserInputError(f'Empty label for {r["path"]} in {where}.')
        path = r['path'] if os.path.isabs(r['path']) else os.path.join(base, r['path'])
        if not os.path.isfile(path):
            if on_bad_file == 'skip':
                skipped.append((path, f'File {path} listed in {where} does not exist.'))
                continue
            raise UserInputError(f'File {path} listed in {where} does not exist.')
        slice_index = None
        if r.get('slice'):
            try:
                slice_index = int(r['slice'])
            except ValueError:
                raise UserInputError(f'Slice {r["slice"]!r} in {where} is not an integer.') from None
            if slice_index < 0:
                raise UserInputError(f'Slice {slice_index} in {where} is negative.')
        entries.append((path, r['label'], r.get('patient_id') or None, _norm_split(r.get('split', ''), where),
                        slice_index))
    if not entries:
        raise UserInputError(f'No existing files listed in {csv_path}.')
    return _scan(entries, on_bad_file, csv_path, skipped)


def discover(data: Union[str, os.PathLike], on_bad_file: str = 'error',
             labels: Union[None, str, Sequence[str]] = None, strict_columns: bool = False) -> DataSource:
    """An ImageFolder tree (a directory), a CSV manifest (a ``.csv`` file) or a MedMNIST ``.npz`` (a path, or a
    name such as ``pneumoniamnist_64`` found in ``$MEDMNIST_ROOT`` / ``~/.medmnist``).

    ``labels`` (class names, MedMNIST only) overrides the built-in table; see :func:`.medmnist.read_medmnist`.
    ``strict_columns``: a CSV manifest's unknown columns are an error (see :func:`read_csv_manifest`).
    """
    data = os.fspath(data)
    from .medmnist import is_array_source, read_medmnist
    if is_array_source(data):
        return read_medmnist(data, labels)
    if labels is not None:
        raise UserInputError('--labels names the classes of a MedMNIST .npz file; folders and CSV manifests take '
                             'their class names from the folder names / the label column.')
    if not os.path.exists(data):
        raise UserInputError(f'--data {data} does not exist.{did_you_mean(data)}')
    if os.path.isfile(data) and data.lower().endswith('.csv'):
        return read_csv_manifest(data, on_bad_file, strict_columns)
    if os.path.isdir(data):
        return read_image_folder(data, on_bad_file)
    raise UserInputError(f'--data {data} is neither a folder of class sub-folders nor a .csv manifest.')


def check_patient_splits(samples: Sequence[Sample]) -> None:
    """Raise if a patient id appears in more than one split (a leak between train and evaluation)."""
    seen: Dict[str, str] = {}
    for s in samples:
        if s.patient_id is None or s.split is None:
            continue
        prev = seen.setdefault(s.patient_id, s.split)
        if prev != s.split:
            raise UserInputError(
                f'Patient {s.patient_id!r} appears in both the {prev!r} and {s.split!r} splits (e.g. {s.name}); '
                f'a patient must stay in one split. Fix the split column of the manifest.')


def _groups(samples: Sequence[Sample]) -> Optional[np.ndarray]:
    if not any(s.patient_id is not None for s in samples):
        return None
    return np.array([s.patient_id if s.patient_id is not None else f'__sample{i}' for i, s in enumerate(samples)])


def _holdout(samples: List[Sample], frac: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices (keep, held_out): stratified by label, grouped by patient when ids exist."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

    idx = np.arange(len(samples))
    y = np.array([s.label for s in samples])
    groups = _groups(samples)
    if groups is not None:
        n_splits = max(2, int(round(1.0 / frac)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                keep, held = next(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(idx, y, groups))
        except ValueError:
            keep, held = next(GroupShuffleSplit(1, test_size=frac, random_state=seed).split(idx, y, groups))
        return sorted(keep.tolist()), sorted(held.tolist())
    try:
        keep, held = next(StratifiedShuffleSplit(1, test_size=frac, random_state=seed).split(idx, y))
    except ValueError:
        raise UserInputError(
            f'Cannot hold out {frac:.0%} of {len(samples)} images with every class represented; '
            f'add images, change --val-frac, or give the split explicitly.') from None
    return sorted(keep.tolist()), sorted(held.tolist())


def assign_splits(source: DataSource, val_frac: float = 0.2, test_frac: float = 0.0, seed: int = 0) -> DataSource:
    """Fill in missing splits: stratified by class, grouped by patient id when present.

    Samples with a split keep it. Missing test / val splits are carved out of the unassigned (or train) samples.
    """
    samples = list(source.samples)
    have = {s.split for s in samples}
    free = [i for i, s in enumerate(samples) if s.split is None]
    if not free and 'val' not in have:  # e.g. train/ and test/ folders only: take val from train
        free = [i for i, s in enumerate(samples) if s.split == 'train']
    out = list(samples)
    remaining = free
    if 'test' not in have and test_frac > 0 and remaining:
        sub = [samples[i] for i in remaining]
        keep, held = _holdout(sub, test_frac, seed)
        for j in held:
            out[remaining[j]] = replace(sub[j], split='test')
        remaining = [remaining[j] for j in keep]
    if 'val' not in have and remaining:
        sub = [samples[i] for i in remaining]
        frac = val_frac / max(1e-8, 1.0 - (test_frac if 'test' not in have else 0.0))
        keep, held = _holdout(sub, min(frac, 0.5), seed + 1)
        for j in held:
            out[remaining[j]] = replace(sub[j], split='val')
        remaining = [remaining[j] for j in keep]
    for i in remaining:
        out[i] = replace(out[i], split='train')
    out = [s if s.split is not None else replace(s, split='train') for s in out]
    check_patient_splits(out)
    for split in ('train', 'val'):
        if not any(s.split == split for s in out):
            raise UserInputError(f'The {split} split of {source.origin} is empty; add images or change --val-frac.')
    return replace(source, samples=out)


def hold_out_test(source: DataSource, frac: float, seed: int = 0) -> DataSource:
    """Mark ``frac`` of the samples as ``test`` (stratified, patient-grouped) unless a test split exists."""
    if frac <= 0 or any(s.split == 'test' for s in source.samples):
        return source
    keep, held = _holdout(list(source.samples), frac, seed)
    samples = list(source.samples)
    for j in held:
        samples[j] = replace(samples[j], split='test')
    for j in keep:
        if samples[j].split == 'test':
            samples[j] = replace(samples[j], split=None)
    return replace(source, samples=samples)


def kfold_assignments(source: DataSource, k: int, seed: int = 0) -> List[DataSource]:
    """``k`` copies of ``source`` whose non-test samples are split train / val by fold (stratified, grouped)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise UserInputError(f'--folds must be at least 2, got {k}.')
    pool = [i for i, s in enumerate(source.samples) if s.split != 'test']
    sub = [source.samples[i] for i in pool]
    y = np.array([s.label for s in sub])
    groups = _groups(sub)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            if groups is not None:
                folds = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(sub, y, groups))
            else:
                folds = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(sub, y))
    except ValueError as e:
        raise UserInputError(f'Cannot make {k} folds from {len(sub)} images: {e}') from None
    out = []
    for _, val_idx in folds:
        val = set(val_idx.tolist())
        samples = list(source.samples)
        for j, i in enumerate(pool):
            samples[i] = replace(samples[i], split='val' if j in val else 'train')
        check_patient_splits(samples)
        out.append(replace(source, samples=samples))
    return out


# ---------------------------------------------------------------- torch side
def build_transforms(img_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                     crop_scale: Tuple[float, float] = (0.25, 1.0), hflip: float = 0.5):
    """Tensor transforms: random resized crop + horizontal flip for training, resize for evaluation."""
    from torchvision.transforms import v2

    ops = []
    if train:
        ops.append(v2.RandomResizedCrop((img_size, img_size), scale=tuple(crop_scale), antialias=True))
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
    else:
        ops.append(v2.Resize((img_size, img_size), antialias=True))
    ops.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(ops)


def load_sample(sample: Sample, window: Union[None, str, Window] = None) -> np.ndarray:
    """The image of ``sample`` as float32 in ``[0, 1]``, ``(H, W)`` or ``(H, W, 3)``: a file (see
    :func:`.io.load_image`) or one image of a MedMNIST file."""
    if sample.item is not None:
        from .medmnist import load_array_image
        return load_array_image(sample.path, sample.item)
    return load_image(sample.path, sample.slice_index, window)


def multi_hot(label: str, class_to_idx: Dict[str, int]) -> torch.Tensor:
    """A multi-label ``Sample.label`` (``|``-joined names, ``''`` for none) as a float ``(L,)`` 0/1 vector."""
    out = torch.zeros(len(class_to_idx), dtype=torch.float32)
    for name in filter(None, label.split('|')):
        if name not in class_to_idx:
            raise UserInputError(f'Label {name!r} is not one of the labels {list(class_to_idx)}.')
        out[class_to_idx[name]] = 1.0
    return out


def _item_seed(seed: int, epoch: int, index: int) -> int:
    h = hashlib.blake2b(f'{seed}/{epoch}/{index}'.encode(), digest_size=8).digest()
    return int.from_bytes(h, 'little') & 0x7FFF_FFFF_FFFF_FFFF


class ImageClassificationDataset(Dataset):
    """``(image (C, H, W) float32, label int)`` pairs.

    Grayscale images give 1 channel, or 3 identical channels when ``in_chans == 3``. Indices may be
    ``(index, epoch)`` pairs (see :class:`EpochSampler`): augmentation then depends only on
    ``(seed, epoch, index)``, so runs repeat exactly whatever the workers, ranks or resume point.
    """

    def __init__(self, samples: Sequence[Sample], class_to_idx: Dict[str, int], transform=None, in_chans: int = 3,
                 window: Union[None, str, Window] = None, seed: int = 0, multi_label: bool = False):
        self.samples = list(samples)
        self.class_to_idx = dict(class_to_idx)
        self.multi_label = multi_label
        self.targets = [multi_hot(s.label, self.class_to_idx) if multi_label else self.class_to_idx[s.label]
                        for s in self.samples]
        self.transform = transform
        self.in_chans = in_chans
        self.window = parse_window(window)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        """Sample ``i`` as ``C, H, W`` float32 in ``[0, 1]`` before the transform (see :func:`load_image`);
        grayscale is repeated to 3 channels when ``in_chans == 3``. Raises UserInputError for a colour image with
        ``in_chans == 1``."""
        s = self.samples[i]
        arr = load_sample(s, self.window)
        x = torch.from_numpy(np.ascontiguousarray(arr))
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if x.shape[0] == 1 and self.in_chans == 3:
            x = x.expand(3, -1, -1)
        elif x.shape[0] == 3 and self.in_chans == 1:
            raise UserInputError(f'{s.name} is a colour image but the model takes 1 channel; use --in-chans 3.')
        return x.contiguous()

    def __getitem__(self, item):
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        x = self.load(i)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_item_seed(self.seed, epoch, i))
                x = self.transform(x)
        return x, self.targets[i]


class EpochSampler(Sampler):
    """Yields ``(index, epoch)``: a per-epoch shuffle (or class-balanced draw) sharded over ranks.

    The order is a function of ``(seed, epoch)`` only; ``start`` skips the first batches of an epoch when a
    run resumes from a mid-epoch checkpoint. Without shuffling, ranks take contiguous-free strided shards.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 weights: Optional[Sequence[float]] = None, drop_last: bool = False):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw the order of ``epoch`` next, skipping its first ``start`` indices of this rank (mid-epoch resume)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> List[int]:
        if not self.shuffle:
            return list(range(self.n))[self.rank::self.world_size]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        else:
            idx = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.n // self.world_size if self.drop_last else -(-self.n // self.world_size)
        total = per_rank * self.world_size
        idx = (idx + idx[:total - len(idx)])[:total] if total > len(idx) else idx[:total]  # pad by wrapping
        return idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for i in self._indices()[self.start:]:
            yield i, self.epoch

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)
