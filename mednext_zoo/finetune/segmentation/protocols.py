"""Evaluation protocols as data: label maps, the Synapse and ACDC case lists, patient-grouped folds.

See ``/shared/PROTOCOLS.md`` (and ``docs/segmentation.md``) for where these lists come from. Case ids are
matched by their number, so ``case0001``, ``img0001`` and ``case0001.npy.h5`` all name Synapse case 1, and
``patient002_frame01`` names ACDC patient 2.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...errors import UserInputError

__all__ = [
    'LabelMap', 'Protocol', 'SYNAPSE_LABEL_MAP', 'BTCV_LABEL_MAP', 'BTCV_TO_SYNAPSE', 'ACDC_LABEL_MAP', 'LABEL_MAPS',
    'SYNAPSE', 'ACDC', 'PROTOCOLS', 'get_label_map', 'get_protocol', 'case_number', 'patient_id',
    'check_label_values', 'check_label_names', 'remap_labels', 'protocol_split', 'grouped_kfold',
]


@dataclass(frozen=True)
class LabelMap:
    """Integer label value -> class name; value 0 is background."""
    name: str
    classes: Tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def foreground(self) -> Tuple[str, ...]:
        return self.classes[1:]

    def as_dict(self) -> Dict[str, str]:
        return {str(i): c for i, c in enumerate(self.classes)}

    @classmethod
    def from_names(cls, names: Sequence[str], name: str = 'custom') -> LabelMap:
        return cls(name, tuple(str(n) for n in names))


# TransUNet's preprocessed Synapse release (train_npz / test_vol_h5) and the paper's Table: 1..8 in this order.
SYNAPSE_LABEL_MAP = LabelMap('synapse', (
    'background', 'aorta', 'gallbladder', 'left kidney', 'right kidney', 'liver', 'pancreas', 'spleen', 'stomach',
))
# The raw BTCV (MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault") label values.
BTCV_LABEL_MAP = LabelMap('btcv', (
    'background', 'spleen', 'right kidney', 'left kidney', 'gallbladder', 'esophagus', 'liver', 'stomach', 'aorta',
    'inferior vena cava', 'portal and splenic vein', 'pancreas', 'right adrenal gland', 'left adrenal gland',
))
# raw BTCV value -> Synapse value (by organ name); the other BTCV organs become background.
BTCV_TO_SYNAPSE: Dict[int, int] = {
    BTCV_LABEL_MAP.classes.index(n): SYNAPSE_LABEL_MAP.classes.index(n) for n in SYNAPSE_LABEL_MAP.foreground
}
ACDC_LABEL_MAP = LabelMap('acdc', ('background', 'right ventricle', 'myocardium', 'left ventricle'))
LABEL_MAPS: Dict[str, LabelMap] = {m.name: m for m in (SYNAPSE_LABEL_MAP, BTCV_LABEL_MAP, ACDC_LABEL_MAP)}

_SYN_TEST = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
_SYN_TRAIN = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
_ACDC_TEST = (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
_ACDC_VAL = (19, 21, 29, 33, 41, 50, 61, 71, 76, 80)
_ACDC_TRAIN = tuple(i for i in range(1, 101) if i not in _ACDC_TEST + _ACDC_VAL)


@dataclass(frozen=True)
class Protocol:
    """A published evaluation protocol: label map, split by case / patient number, preprocessing, metrics."""
    name: str
    label_map: LabelMap
    splits: Mapping[str, Tuple[int, ...]]  # split -> patient / case numbers
    intensity: str  # 'ct' (window) | 'zscore' | 'minmax' | 'none'
    img_size: int = 224
    group_by_patient: bool = False  # ACDC: a split lists patients, each with ED and ES volumes
    reference: str = ''
    notes: Tuple[str, ...] = field(default_factory=tuple)


SYNAPSE = Protocol(
    'synapse', SYNAPSE_LABEL_MAP, {'train': _SYN_TRAIN, 'test': _SYN_TEST}, intensity='ct',
    reference='TransUNet (Chen et al. 2021) / Swin-Unet: 18 train / 12 test BTCV CT volumes',
    notes=('HU clipped to [-125, 275] and scaled to [0, 1] per volume',
           'loss 0.5 CE + 0.5 soft Dice over all 9 classes; 224x224 slices'),
)
ACDC = Protocol(
    'acdc', ACDC_LABEL_MAP, {'train': _ACDC_TRAIN, 'val': _ACDC_VAL, 'test': _ACDC_TEST}, intensity='zscore',
    group_by_patient=True,
    reference='TransUNet-lineage ACDC split: 70 / 10 / 20 patients (ED + ES frames)',
    notes=('another common 70/10/20 list uses different patients; numbers across lists do not compare',),
)
PROTOCOLS: Dict[str, Protocol] = {'synapse': SYNAPSE, 'acdc': ACDC}


def get_label_map(name_or_names) -> LabelMap:
    """A named label map ('synapse', 'btcv', 'acdc') or one built from a list of class names."""
    if isinstance(name_or_names, LabelMap):
        return name_or_names
    if isinstance(name_or_names, str):
        key = name_or_names.lower()
        if key not in LABEL_MAPS:
            raise UserInputError(f'Unknown label map {name_or_names!r}; choose one of {", ".join(LABEL_MAPS)} '
                                 f'or give the class names in order (background first).')
        return LABEL_MAPS[key]
    names = list(name_or_names)
    if len(names) < 2:
        raise UserInputError(f'A label map needs background and at least one class; got {names}.')
    return LabelMap.from_names(names)


def get_protocol(name: str) -> Protocol:
    if name.lower() not in PROTOCOLS:
        raise UserInputError(f'Unknown protocol {name!r}; choose one of {", ".join(PROTOCOLS)}.')
    return PROTOCOLS[name.lower()]


_NUM_RE = re.compile(r'(\d+)')


def case_number(case_id: str) -> Optional[int]:
    """The case / patient number of an id: 'case0005' -> 5, 'patient002_frame12' -> 2, 'img0001' -> 1."""
    m = re.search(r'patient(\d+)', case_id, re.IGNORECASE)
    if m:
        return int(m.group(1))
    m = _NUM_RE.search(os.path.basename(case_id))
    return int(m.group(1)) if m else None


_FRAME_RE = re.compile(r'[_-](frame\d+|ed|es|t\d+)$', re.IGNORECASE)


def patient_id(case_id: str) -> str:
    """The patient of a volume id: strips an ACDC-style ``_frameNN`` / ``_ED`` / ``_ES`` suffix."""
    stem = _FRAME_RE.sub('', case_id)
    return stem


def check_label_values(label: np.ndarray, label_map: LabelMap, path: str) -> None:
    """Raise if ``label`` holds a value that is not a class of ``label_map`` (naming the file)."""
    values = np.unique(label)
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        raise UserInputError(f'{path}: label values must be integers; found {values[:8].tolist()}. '
                             f'Is this an image rather than a label map?')
    bad = [int(v) for v in values if v < 0 or v >= label_map.num_classes]
    if bad:
        raise UserInputError(
            f'{path}: label values {bad[:10]} are outside the label map {label_map.name!r} '
            f'(0..{label_map.num_classes - 1}: {", ".join(label_map.classes)}). Choose the right --labels / '
            f'--protocol, or remap the labels first (e.g. remap_labels(label, BTCV_TO_SYNAPSE) for raw BTCV).')


def check_label_names(names: Mapping[str, str] | Sequence[str], label_map: LabelMap, source: str) -> None:
    """Raise if the class names a dataset declares (e.g. dataset.json 'labels') disagree with ``label_map``."""
    if isinstance(names, Mapping):
        items = {}
        for k, v in names.items():  # nnU-Net v1: {"0": "background"}; v2: {"background": 0}
            if str(k).isdigit():
                items[int(k)] = str(v)
            elif isinstance(v, int) or str(v).isdigit():
                items[int(v)] = str(k)
        declared = [items.get(i) for i in range(max(items) + 1)] if items else []
    else:
        declared = [str(n) for n in names]

    def norm(s):
        s = (s or '').lower().replace('_', ' ').replace('(', ' ').replace(')', ' ')
        s = re.sub(r'\bkidney\s+l\b|\bl\s+kidney\b', 'left kidney', s)
        s = re.sub(r'\bkidney\s+r\b|\br\s+kidney\b', 'right kidney', s)
        return ' '.join(s.split())

    diffs = []
    for i in range(max(len(declared), label_map.num_classes)):
        want = label_map.classes[i] if i < label_map.num_classes else None
        got = declared[i] if i < len(declared) else None
        if i == 0 and got is not None and norm(got) in ('background', 'bg', 'clear label'):
            continue
        if want is None or got is None or norm(got) != norm(want):
            diffs.append(f'{i}: dataset {got!r} vs map {want!r}')
    if diffs:
        raise UserInputError(f'{source}: the dataset\'s labels do not match the label map {label_map.name!r} '
                             f'({"; ".join(diffs[:6])}). Public copies disagree on which integer is which organ: '
                             f'remap the labels or choose the matching label map.')


def remap_labels(label: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Map label values (e.g. raw BTCV -> Synapse); values not in ``mapping`` become 0 (background)."""
    lut = np.zeros(int(max(int(label.max()) if label.size else 0, max(mapping, default=0))) + 1, dtype=np.int16)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
    return lut[label.astype(np.int64)]


def protocol_split(protocol: Protocol, case_ids: Iterable[str], source: str = 'dataset',
                   require_all: bool = True) -> Dict[str, List[str]]:
    """Assign the dataset's volumes to the protocol's splits by case / patient number.

    Raises when a listed case is missing (with ``require_all``) or when a volume is not in any split.
    """
    ids = list(case_ids)
    number_to_split = {n: s for s, ns in protocol.splits.items() for n in ns}
    out: Dict[str, List[str]] = {s: [] for s in protocol.splits}
    unknown = []
    seen = set()
    for cid in ids:
        n = case_number(cid)
        if n is None or n not in number_to_split:
            unknown.append(cid)
            continue
        out[number_to_split[n]].append(cid)
        seen.add(n)
    if unknown:
        raise UserInputError(f'{source}: {len(unknown)} volume(s) are in none of the {protocol.name} protocol\'s '
                             f'lists (e.g. {", ".join(unknown[:5])}); is this the {protocol.name} dataset?')
    if require_all:
        missing = sorted(set(number_to_split) - seen)
        if missing:
            raise UserInputError(f'{source}: the {protocol.name} protocol needs case/patient numbers '
                                 f'{missing[:12]}{" ..." if len(missing) > 12 else ""} which are not in the '
                                 f'dataset ({len(missing)} missing).')
    return out


def grouped_kfold(case_ids: Sequence[str], k: int = 5, groups: Optional[Sequence[str]] = None,
                  seed: int = 0) -> List[Tuple[List[str], List[str]]]:
    """Patient-grouped k-fold: ``[(train_ids, val_ids), ...]``; the volumes of one patient share a fold.

    ``groups`` defaults to :func:`patient_id` of each case id (ACDC's ED and ES frames of one patient).
    """
    from sklearn.model_selection import GroupKFold

    ids = list(case_ids)
    grp = list(groups) if groups is not None else [patient_id(c) for c in ids]
    n_groups = len(set(grp))
    if k < 2 or n_groups < k:
        raise UserInputError(f'k-fold needs 2 <= k <= number of patients; got k={k} with {n_groups} patients.')
    folds = []
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for tr, va in splitter.split(np.zeros(len(ids)), groups=grp):
        train, val = [ids[i] for i in tr], [ids[i] for i in va]
        overlap = {grp[i] for i in tr} & {grp[i] for i in va}
        if overlap:  # GroupKFold guarantees this; kept as a guard against a future change
            raise RuntimeError(f'patients in two folds: {sorted(overlap)[:5]}')
        folds.append((train, val))
    return folds


def read_dataset_json(path: str) -> Dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserInputError(f'{path}: not valid JSON ({e}).') from None
