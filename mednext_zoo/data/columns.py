"""Column names of the CSV files a user writes (classification manifests, segmentation CSVs): typos are refused.

A misspelled optional column used to be ignored without a word: ``patient id`` for ``patient_id`` made the split
ignore patients (so they leaked across splits), ``spilt`` for ``split`` dropped the given split. Now
:func:`check_columns`

* refuses a column that is a near miss of a known column the file lacks -- the same name up to case, spaces,
  hyphens and underscores (``Patient ID``, ``patientid``), or a small edit away (``spilt``, ``lable``,
  ``patient``) -- naming both;
* lists any other unknown column in a warning (they are ignored);
* with ``strict`` (``--strict-columns``), refuses every unknown column.
"""
from __future__ import annotations

import difflib
import os
import re
import warnings
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import UserInputError

__all__ = ['check_columns', 'near_miss', 'did_you_mean']


def _squash(name: str) -> str:
    """Lower case without spaces, hyphens, underscores or dots: ``'Patient ID'`` -> ``'patientid'``."""
    return re.sub(r'[\s_\-.]+', '', name.lower())


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours cost 1."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def near_miss(column: str, known: Iterable[str]) -> Optional[str]:
    """The known name ``column`` is probably a misspelling of, or None: equal after :func:`_squash`, or at most one
    edit away (two for names of more than six letters)."""
    c = _squash(column)
    best = None
    for k in known:
        kk = _squash(k)
        d = 0 if c == kk else _distance(c, kk)
        if d <= (2 if len(kk) > 6 else 1) and (best is None or d < best[0]):
            best = (d, k)
    return best[1] if best else None


def check_columns(columns: Sequence[str], required: Sequence[str], optional: Sequence[str], path: str,
                  strict: bool = False, what: str = 'CSV', aliases: Optional[Dict[str, str]] = None) -> List[str]:
    """Check a CSV header; returns the unknown (ignored) columns.

    Args:
        columns: The header, as the reader saw it (lower-cased, stripped).
        required, optional: The column names the reader uses.
        aliases: Other accepted names of a column (``{'patient': 'patient_id'}``): known, not near misses.
        strict: Refuse any unknown column (``--strict-columns``).

    Raises UserInputError for a near miss of a known column the file lacks (naming both) and, with ``strict``,
    for any unknown column; warns about the other unknown columns.
    """
    aliases = aliases or {}
    known = list(required) + list(optional) + list(aliases)
    present = {aliases.get(c, c) for c in columns}
    unknown = [c for c in columns if c and c not in known]  # an empty name: a trailing comma
    absent = [k for k in list(required) + list(optional) if k not in present]
    all_names = ', '.join(list(required) + list(optional))
    for c in unknown:
        match = near_miss(c, absent)
        if match is not None:
            raise UserInputError(
                f'{what} {path}: column {c!r} looks like a misspelling of {match!r}, which mednext-zoo would '
                f'otherwise ignore without a word. Rename the column to {match!r} (if it holds something else, give '
                f'it a name that is not a near miss). Known columns: {all_names}.')
    if unknown and strict:
        raise UserInputError(f'{what} {path}: unknown column(s) {", ".join(map(repr, unknown))} (--strict-columns); '
                             f'known columns: {all_names}. Remove or rename them, or drop --strict-columns.')
    if unknown:
        warnings.warn(f'{what} {path}: column(s) {", ".join(map(repr, unknown))} are not used and are ignored '
                      f'(known: {all_names}; --strict-columns makes this an error).', stacklevel=3)
    return unknown


def did_you_mean(path: str) -> str:
    """For a path that does not exist: ``' Did you mean cls/train?'`` when its folder holds a close name, a note
    when that folder is missing too, else ``''``."""
    parent, name = os.path.split(os.path.normpath(path))
    if parent and not os.path.isdir(parent):
        return f' Its folder {parent} does not exist either.'
    try:
        entries = os.listdir(parent or '.')
    except OSError:
        return ''
    close = difflib.get_close_matches(name, entries, n=1, cutoff=0.75)
    return f' Did you mean {os.path.join(parent, close[0])}?' if close else ''
