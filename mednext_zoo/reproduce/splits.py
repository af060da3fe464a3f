"""Apply a tag's :class:`~.tag_protocols.SplitRule` to a recognised release; write and re-read the split file."""
from __future__ import annotations

import csv
import io
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .._atomic import atomic_write_text
from ..data import DataSource, Sample
from ..data.releases import Recognised
from ..errors import UserInputError
from .tag_protocols import SplitRule, TagProtocol

__all__ = ['SplitRow', 'split_release', 'to_data_source', 'split_table', 'render_split_file',
           'write_split_file']

SPLITS = ('train', 'val', 'test')
SplitRow = Tuple[str, str, str, str, str]  # (path or case id, label or patient, group, kind, split)


def _split_groups(groups_by_label: Dict[str, List[str]], rule: SplitRule) -> Dict[str, str]:
    """``{group: split}``: per label, the sorted groups in a seeded permutation, cut at the rule's fractions.

    Groups are label-pure, so cutting each label's groups stratifies by label exactly (in groups; in images up to
    the group sizes). ``numpy.random.RandomState`` keeps the permutation identical across versions and machines.
    """
    train_f, val_f, test_f = rule.fractions
    if abs(train_f + val_f + test_f - 1.0) > 1e-6:
        raise UserInputError(f'Split fractions {rule.fractions} do not sum to 1.')
    out: Dict[str, str] = {}
    for label in sorted(groups_by_label):
        groups = sorted(groups_by_label[label])
        order = np.random.RandomState(rule.seed).permutation(len(groups))
        n = len(groups)
        n_test = int(round(test_f * n))
        n_val = int(round(val_f * n))
        if n >= 3:  # every split gets at least one group of every label when it can
            n_test, n_val = max(1, n_test), max(1, n_val)
        for rank, i in enumerate(order):
            out[groups[i]] = 'test' if rank < n_test else 'val' if rank < n_test + n_val else 'train'
    return out


def split_release(rec: Recognised, protocol: TagProtocol) -> List[SplitRow]:
    """Every image (classification) or case (segmentation) with its split under the tag's rule."""
    rule = protocol.split
    if rule.kind == 'lists':
        from ..finetune.segmentation.protocols import get_protocol, protocol_split
        by = protocol_split(get_protocol(rule.lists), [c.case_id for c in rec.cases], rec.base)
        where = {cid: s for s, ids in by.items() for cid in ids}
        return [(c.case_id, c.patient, c.patient, 'volume', where[c.case_id]) for c in rec.cases]
    if rule.kind != 'fractions':
        raise UserInputError(f'Unknown split rule {rule.kind!r}.')
    groups: Dict[str, set] = {}
    for it in rec.items:
        groups.setdefault(it.label, set()).add(it.group)
    if any(len(g) < 3 for g in groups.values()):
        small = {k: len(v) for k, v in groups.items() if len(v) < 3}
        raise UserInputError(f'Too few independent groups to split train / val / test: {small}.')
    where = _split_groups({k: sorted(v) for k, v in groups.items()}, rule)
    rows: List[SplitRow] = []
    for it in rec.items:
        split = where[it.group]
        wanted = rule.test_kind if split == 'test' else rule.train_kind
        if it.kind == wanted:
            rows.append((it.path, it.label, it.group, it.kind, split))
    return rows


def to_data_source(rows: Sequence[SplitRow], protocol: TagProtocol, origin: str) -> DataSource:
    """A ``DataSource`` for ``finetune.fit`` with the tag's label order and the rows' splits.

    Groups shared by several images become patient ids, so that fit's own check refuses any leak.
    """
    sizes: Dict[str, int] = {}
    for r in rows:
        sizes[r[2]] = sizes.get(r[2], 0) + 1
    samples = [Sample(path, label, group if sizes[group] > 1 else None, split) for path, label, group, _, split
               in rows]
    return DataSource(samples, list(protocol.label_order), 3, origin=origin)


def split_table(rows: Sequence[SplitRow], protocol: TagProtocol) -> Dict[str, Dict[str, int]]:
    """``{split: {label: images}}`` (classification) or ``{split: {'cases': n, 'patients': m}}``."""
    out: Dict[str, Dict[str, int]] = {s: {} for s in SPLITS}
    if protocol.task == 'classification':
        for s in SPLITS:
            for label in protocol.label_order:
                out[s][label] = sum(r[4] == s and r[1] == label for r in rows)
    else:
        for s in SPLITS:
            mine = [r for r in rows if r[4] == s]
            out[s] = {'cases': len(mine), 'patients': len({r[1] for r in mine})}
    return {s: v for s, v in out.items() if any(v.values())}


def render_split_file(rows: Sequence[SplitRow], base: str) -> str:
    """CSV text with one row per image / case (paths relative to the release folder ``base``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(['item', 'label_or_patient', 'group', 'kind', 'split'])
    for item, label, group, kind, split in rows:
        w.writerow([os.path.relpath(item, base) if os.path.isabs(item) else item, label, group, kind, split])
    return buf.getvalue()


def write_split_file(path: str, rows: Sequence[SplitRow], base: str) -> str:
    """Write the split file (or check that an existing one is identical: a resumed run keeps its split).

    Returns its sha256.
    """
    import hashlib
    text = render_split_file(rows, base)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() != text:
                raise UserInputError(
                    f'{path} differs from the split computed now: the data changed since the run started. '
                    f'Restore the data, or start a new run (another --out, or --overwrite).')
    else:
        atomic_write_text(path, text)
    return hashlib.sha256(text.encode()).hexdigest()
