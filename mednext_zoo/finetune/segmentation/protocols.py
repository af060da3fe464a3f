"""Evaluation protocols as data: the Synapse and ACDC case lists, their intensity recipe, patient-grouped folds.

See ``docs/segmentation.md`` for where these lists come from. Case ids are matched by their number, so
``case0001``, ``img0001`` and ``case0001.npy.h5`` all name Synapse case 1, and ``patient002_frame01`` names ACDC
patient 2. Label maps live in :mod:`mednext_zoo.data.labels`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...catalog import (
    ACDC_TEST_PATIENTS,
    ACDC_TRAIN_PATIENTS,
    ACDC_VAL_PATIENTS,
    SYNAPSE_TEST_CASES,
    SYNAPSE_TRAIN_CASES,
)
from ...data.labels import (  # noqa: F401  (re-exported: the protocol API has always offered them)
    ACDC_LABEL_MAP,
    BTCV_LABEL_MAP,
    BTCV_TO_SYNAPSE,
    LABEL_MAPS,
    SYNAPSE_LABEL_MAP,
    LabelMap,
    case_number,
    check_label_names,
    check_label_values,
    get_label_map,
    patient_id,
    remap_labels,
)
from ...errors import UserInputError

__all__ = [
    'Protocol', 'SYNAPSE', 'ACDC', 'PROTOCOLS', 'get_protocol', 'protocol_split', 'grouped_kfold',
    'LabelMap', 'SYNAPSE_LABEL_MAP', 'BTCV_LABEL_MAP', 'BTCV_TO_SYNAPSE', 'ACDC_LABEL_MAP', 'LABEL_MAPS',
    'get_label_map', 'case_number', 'patient_id', 'check_label_values', 'check_label_names', 'remap_labels',
]



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
    'synapse', SYNAPSE_LABEL_MAP, {'train': SYNAPSE_TRAIN_CASES, 'test': SYNAPSE_TEST_CASES}, intensity='ct',
    reference='TransUNet (Chen et al. 2021) / Swin-Unet: 18 train / 12 test BTCV CT volumes',
    notes=('HU clipped to [-125, 275] and scaled to [0, 1] per volume',
           'loss 0.5 CE + 0.5 soft Dice over all 9 classes; 224x224 slices'),
)
ACDC = Protocol(
    'acdc', ACDC_LABEL_MAP, {'train': ACDC_TRAIN_PATIENTS, 'val': ACDC_VAL_PATIENTS, 'test': ACDC_TEST_PATIENTS},
    intensity='zscore',
    group_by_patient=True,
    reference='TransUNet-lineage ACDC split: 70 / 10 / 20 patients (ED + ES frames)',
    notes=('another common 70/10/20 list uses different patients; numbers across lists do not compare',),
)
PROTOCOLS: Dict[str, Protocol] = {'synapse': SYNAPSE, 'acdc': ACDC}


def get_protocol(name: str) -> Protocol:
    """The :class:`Protocol` named ``name`` (case-insensitive; ``synapse`` or ``acdc``); raises UserInputError
    otherwise."""
    if name.lower() not in PROTOCOLS:
        raise UserInputError(f'Unknown protocol {name!r}; choose one of {", ".join(PROTOCOLS)}.')
    return PROTOCOLS[name.lower()]


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
