"""Keep ``evaluate`` off training data: content identities of files, and the overlap of the data to evaluate with
a run's train / val split.

At fit time every item of ``splits.csv`` gets a ``sha256`` column: the SHA-256 of its file's bytes (what
``sha256sum FILE`` prints), or for an item made of several files (a volume stored as slice files) the SHA-256 of
their digests joined by newlines. ``evaluate`` computes the same for the data it is given and finds the items the
run trained or validated on, wherever they now lie (a copy in another folder matches; a renamed file matches).
Runs from before the column fall back to hashing the paths splits.csv recorded, where those files still exist,
else to comparing the paths themselves, and say so.

Items of the run's ``test`` split are held out and always scored. ``train`` and ``val`` items are not: the
weights were fitted on one and picked (best checkpoint, temperature) on the other.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

from .._atomic import atomic_write_bytes
from ..errors import UserInputError

__all__ = ['file_sha256', 'content_id', 'Overlap', 'find_overlap', 'select_held_out', 'write_overlap_csv',
           'TRAINING_SPLITS']

TRAINING_SPLITS = ('train', 'val')
T = TypeVar('T')


def file_sha256(path: str, cache: Optional[Dict[str, str]] = None) -> str:
    """Hex SHA-256 of the bytes of ``path`` (memoised in ``cache`` by real path)."""
    key = os.path.realpath(path)
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest


def content_id(paths: Sequence[str], cache: Optional[Dict[str, str]] = None) -> str:
    """The identity of an item made of ``paths``: one file's SHA-256, or the SHA-256 of several files' digests."""
    digests = [file_sha256(p, cache) for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256('\n'.join(digests).encode()).hexdigest()


@dataclass
class Overlap(Generic[T]):
    """Which items of the data to evaluate the run trained (``train``) or validated (``val``) on."""
    items: List[T]
    used: Dict[int, str] = field(default_factory=dict)  # item index -> 'train' | 'val'
    matched_by: str = 'sha256 of the file contents'
    notes: List[str] = field(default_factory=list)

    @property
    def held_out(self) -> List[int]:
        """Indices of the items the run neither trained nor validated on."""
        return [i for i in range(len(self.items)) if i not in self.used]

    def counts(self) -> Dict[str, int]:
        """Number of items found in the run's ``train`` and in its ``val`` split."""
        return {s: sum(v == s for v in self.used.values()) for s in TRAINING_SPLITS}

    def describe(self) -> str:
        """One line for logs, e.g. ``'3 train, 1 val; matched by sha256 of the file contents'``."""
        c = self.counts()
        return ', '.join(f'{n} {s}' for s, n in c.items() if n) + f'; matched by {self.matched_by}'


def _read_splits(run_dir: str) -> Optional[List[Dict[str, str]]]:
    path = os.path.join(run_dir, 'splits.csv')
    if not os.path.isfile(path):
        return None
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.DictReader(f))


def find_overlap(run_dir: str, items: Sequence[T], item_files: Callable[[T], Sequence[str]],
                 row_files: Callable[[Dict[str, str]], Sequence[str]],
                 item_extra: Callable[[T], str] = lambda _: '',
                 row_extra: Callable[[Dict[str, str]], str] = lambda _: '',
                 legacy_files: Optional[Callable[[T], Sequence[str]]] = None,
                 item_id: Optional[Callable[[T], str]] = None) -> Overlap[T]:
    """Match ``items`` against the train / val rows of ``run_dir/splits.csv``.

    ``item_files(item)``: the files whose content identifies an item (what fit recorded as ``sha256``);
    ``row_files(row)``: the files a splits.csv row names (used for runs without the column);
    ``legacy_files(item)``: the files such a row would name for ``item`` (default ``item_files``);
    ``item_extra`` / ``row_extra``: what else tells items of one file apart (a slice index);
    ``item_id(item)``: the identity fit recorded, when it is not the SHA-256 of ``item_files`` (one image of an
    array file).
    """
    items = list(items)
    out: Overlap[T] = Overlap(items)
    rows = _read_splits(run_dir)
    if rows is None:
        out.matched_by = 'nothing'
        out.notes.append(f'{run_dir} has no splits.csv: the overlap with its training data could not be checked')
        return out
    legacy_files = legacy_files or item_files
    cache: Dict[str, str] = {}
    known: Dict[Tuple[str, Any, str], str] = {}
    kinds: Dict[str, int] = {}
    for row in rows:
        split = (row.get('split') or '').strip()
        if split not in TRAINING_SPLITS:
            continue
        extra = row_extra(row)
        if row.get('sha256'):
            kind, ident = 'sha', row['sha256']
        else:
            files = [f for f in row_files(row) if f]
            if files and all(os.path.isfile(f) for f in files):
                kind, ident = 'legacy-sha', content_id(files, cache)
            else:
                kind, ident = 'path', tuple(os.path.realpath(f) for f in files)
        kinds[kind] = kinds.get(kind, 0) + 1
        known.setdefault((kind, ident, extra), split)
    if kinds.get('legacy-sha') or kinds.get('path'):
        out.matched_by = ', '.join(
            {'sha': 'sha256 recorded at fit time', 'legacy-sha': 'sha256 of the files at the paths splits.csv '
             'recorded (the run predates the sha256 column)', 'path': 'file path (the recorded files no longer '
             'exist; a copy elsewhere is not recognised)'}[k] + f' for {n} item(s)' for k, n in kinds.items())
        out.notes.append(f'{run_dir}/splits.csv has no sha256 column (a run from an earlier mednext-zoo); matched '
                         f'by {out.matched_by}')
    for i, item in enumerate(items):
        extra = item_extra(item)
        for kind in kinds:
            if kind == 'sha':
                ident: Any = item_id(item) if item_id is not None else content_id(item_files(item), cache)
            elif kind == 'legacy-sha':
                ident = content_id(legacy_files(item), cache)
            else:
                ident = tuple(os.path.realpath(f) for f in legacy_files(item))
            split = known.get((kind, ident, extra))
            if split is not None:
                out.used[i] = split
                break
    return out


def select_held_out(overlap: Overlap[T], include_training_data: bool, data: str, what: str,
                    name: Callable[[T], str], run_split: str = 'train / val') -> Tuple[List[T], Dict[str, Any]]:
    """The items to score and the report entry, printing what was decided.

    By default only held-out items are scored (a UserInputError when none are left); ``include_training_data``
    scores all of them and the report lists the overlap.
    """
    n, used = len(overlap.items), len(overlap.used)
    report: Dict[str, Any] = {'items': n, 'in_training_data': used, **overlap.counts(),
                              'held_out': n - used, 'matched_by': overlap.matched_by, 'notes': list(overlap.notes),
                              'scored': 'held-out only', 'overlapping': []}
    for note in overlap.notes:
        print(f'[mednext-zoo] note: {note}', flush=True)
    if not used:
        print(f'[mednext-zoo] none of the {n} {what} of {data} is in the run\'s {run_split} split '
              f'(matched by {overlap.matched_by}).', flush=True)
        return list(overlap.items), report
    report['overlapping'] = [{'item': name(overlap.items[i]), 'run_split': s} for i, s in sorted(overlap.used.items())]
    if include_training_data:
        report['scored'] = 'all (--include-training-data)'
        print(f'[mednext-zoo] --include-training-data: scoring all {n} {what}, {used} of which the run trained or '
              f'validated on ({overlap.describe()}). These figures are optimistic; the overlap is listed in the '
              f'report.', flush=True)
        return list(overlap.items), report
    if used == n:
        raise UserInputError(
            f'All {n} {what} of {data} are in the run\'s training data ({overlap.describe()}): their scores would '
            f'measure memorisation, not performance on new data. Evaluate on {what} the run neither trained nor '
            f'validated on (its held-out test split is marked in splits.csv), or pass --include-training-data to '
            f'score them anyway.')
    print(f'[mednext-zoo] {used} of the {n} {what} of {data} are in the run\'s training data ({overlap.describe()}): '
          f'scoring only the {n - used} held-out {what}. --include-training-data scores all {n}.', flush=True)
    return [overlap.items[i] for i in overlap.held_out], report


def write_overlap_csv(path: str, report: Dict[str, Any]) -> Optional[str]:
    """``path`` listing every overlapping item and its run split (nothing written when there is none)."""
    rows = report.get('overlapping') or []
    if not rows:
        return None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(['item', 'run_split'])
    w.writerows([r['item'], r['run_split']] for r in rows)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path
