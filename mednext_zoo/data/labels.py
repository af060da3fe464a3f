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
        """Number of classes, background included."""
        return len(self.classes)

    @property
    def foreground(self) -> Tuple[str, ...]:
        """The class names without the background (label values 1, 2, ...)."""
        return self.classes[1:]

    def as_dict(self) -> Dict[str, str]:
        """``{'0': 'background', '1': ...}``: label value (as text, the ``dataset.json`` convention) -> class name."""
        return {str(i): c for i, c in enumerate(self.classes)}

    @classmethod
    def from_names(cls, names: Sequence[str], name: str = 'custom') -> LabelMap:
        """A label map from class names in label-value order (the first is the background)."""
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


MAX_LABEL_VALUE = 32767  # label maps are held as int16


def _check_labels_field(labels, path: str) -> None:
    """``labels`` as nnU-Net writes it: v1 ``{"0": "background", ...}``, v2 ``{"background": 0, ...}``, or a list
    of names. Region-based v2 labels (``{"tumour": [1, 2]}``) are not class indices and are refused."""
    if isinstance(labels, list):
        if not all(isinstance(n, (str, int, float)) for n in labels) or len(labels) > MAX_LABEL_VALUE + 1:
            raise UserInputError(f'{path}: "labels" must list class names, got {str(labels)[:80]}.')
        return
    if not isinstance(labels, dict):
        raise UserInputError(f'{path}: "labels" must be an object or a list of names, got {type(labels).__name__}.')
    for k, v in labels.items():
        if str(k).strip().isdigit():
            value = int(str(k).strip())
        elif isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit())):
            raise UserInputError(
                f'{path}: "labels" entry {k!r}: {v!r} is not a class index (nnU-Net v1 writes "1": "liver", v2 '
                f'writes "liver": 1; region-based labels such as lists are not supported).')
        else:
            value = int(v)
        if value > MAX_LABEL_VALUE:
            raise UserInputError(f'{path}: "labels" entry {k!r}: {v!r}: class index {value} is too large '
                                 f'(at most {MAX_LABEL_VALUE}).')


def read_dataset_json(path: str) -> Dict:
    """An nnU-Net / MSD ``dataset.json``: a JSON object whose ``labels`` (if present) maps names to class
    indices; anything else is refused with a message naming the file."""
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError(f'{path}: not valid UTF-8 JSON ({e}).') from None
    except RecursionError:
        raise UserInputError(f'{path}: JSON nested too deeply to be a dataset description.') from None
    except OSError as e:
        raise UserInputError(f'Cannot read {path}: {e}.') from None
    if not isinstance(meta, dict):
        raise UserInputError(f'{path}: expected a JSON object with "labels" (and "modality" / "channel_names"), '
                             f'got a {type(meta).__name__}.')
    if 'labels' in meta:
        _check_labels_field(meta['labels'], path)
    return meta
