"""Label maps and label checks shared by every task: class names by integer value, the Synapse / BTCV / ACDC
maps, patient ids from case ids, and the class names a dataset declares (``dataset.json``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserInputError

__all__ = [
    'LabelMap', 'SYNAPSE_LABEL_MAP', 'BTCV_LABEL_MAP', 'BTCV_TO_SYNAPSE', 'ACDC_LABEL_MAP', 'LABEL_MAPS',
    'get_label_map', 'case_number', 'patient_id', 'check_label_values', 'check_label_names', 'remap_labels',
    'read_dataset_json',
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


def read_dataset_json(path: str) -> Dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserInputError(f'{path}: not valid JSON ({e}).') from None
