"""Output folders of ``predict``: never overwritten without ``--overwrite``, no stale files left beside new ones.

A second ``predict`` into the same folder used to replace ``predictions.csv`` (its 9 rows became 1) and keep the
Grad-CAM images of the first call beside the new ones. :func:`claim_output_dir` refuses a folder that holds an
earlier call's outputs unless ``overwrite``; :func:`remove_stale` then deletes the earlier files this call did not
write again, once the new ones are written (so a call that fails half-way leaves the earlier outputs).
"""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Callable, Hashable, Iterable, List, Sequence, Set, TypeVar

from ..errors import UserInputError

__all__ = ['claim_output_dir', 'remove_stale', 'unique_inputs']

T = TypeVar('T')


def claim_output_dir(out: str, patterns: Sequence[str], overwrite: bool, what: str = 'predictions') -> Set[str]:
    """The files under ``out`` matching ``patterns`` (globs relative to ``out``: an earlier call's outputs).

    Raises UserInputError when there are any and ``overwrite`` is off."""
    earlier = {os.path.abspath(p) for pat in patterns for p in glob.glob(os.path.join(out, pat))
               if os.path.isfile(p)}
    if earlier and not overwrite:
        shown = sorted(os.path.relpath(p, out) for p in earlier)
        more = f' and {len(shown) - 3} more' if len(shown) > 3 else ''
        raise UserInputError(f'{out} already holds {what} of an earlier call ({", ".join(shown[:3])}{more}); pass '
                             f'--overwrite to replace them, or choose another --out.')
    return earlier


def remove_stale(earlier: Set[str], written: Iterable[str]) -> List[str]:
    """Delete the files of ``earlier`` that are not in ``written`` (this call's outputs); returns them."""
    keep = {os.path.abspath(p) for p in written}
    stale = sorted(earlier - keep)
    for p in stale:
        with contextlib.suppress(OSError):
            os.unlink(p)
    return stale


def unique_inputs(items: Iterable[T], key: Callable[[T], Hashable] = os.path.realpath) -> List[T]:
    """``items`` without repeats, in first-seen order: by default paths, one file given twice (directly and through
    its folder, or by two spellings) counting once; ``key`` says what makes two items the same."""
    seen: Set[Hashable] = set()
    out = []
    for it in items:
        k = key(it)
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out
