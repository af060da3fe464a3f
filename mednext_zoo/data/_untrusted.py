"""Reading files we did not write: one error type, allocations bounded by what the file can hold, finite values.

Every reader of the data layer parses bytes that come from somewhere else (a scanner, a download, a colleague's
disk). The libraries under them (Pillow, pydicom, nibabel, SimpleITK, h5py, numpy) raise dozens of exception
types on damaged input -- ``struct.error``, ``KeyError``, ``EOFError``, ``zlib.error``, ``MemoryError``,
``RuntimeError`` ... -- so this module turns them into one :class:`UserInputError` naming the file, and checks
what a header *declares* before anything is allocated:

* a zero-size dimension is refused;
* more than :data:`MAX_VOXELS` elements are refused (``MEDNEXT_ZOO_MAX_VOXELS`` raises the cap);
* an uncompressed payload larger than the bytes the file holds is refused (a truncated file);
* a deflate-compressed payload larger than :data:`DEFLATE_MAX_RATIO` times its compressed size is refused:
  deflate cannot expand data more than about 1032:1, so such a header lies.

None of the libraries does all of this itself (Pillow alone refuses decompression bombs), hence this module.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import struct
import zlib
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserInputError

__all__ = ['MAX_VOXELS', 'DEFLATE_MAX_RATIO', 'SKIP_HINT', 'reading', 'check_declared_size', 'check_finite',
           'check_gzip_complete', 'read_csv_rows', 'max_voxels']

MAX_VOXELS = 2 ** 30  # elements in one image / volume: 4 GiB as float32, twice a 512 x 512 x 2000 CT
DEFLATE_MAX_RATIO = 1100  # deflate's ceiling is 1032:1; a little slack for container overhead
SKIP_HINT = 'Fix or remove the file (or pass --on-bad-file skip).'


def max_voxels() -> int:
    """:data:`MAX_VOXELS`, or the ``MEDNEXT_ZOO_MAX_VOXELS`` environment variable when set."""
    value = os.environ.get('MEDNEXT_ZOO_MAX_VOXELS')
    if value:
        try:
            return int(value)
        except ValueError:
            raise UserInputError(f'MEDNEXT_ZOO_MAX_VOXELS must be an integer, got {value!r}.') from None
    return MAX_VOXELS


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    text = text[-1] if text else ''  # SimpleITK / ITK put the useful line last
    if isinstance(e, MemoryError):
        return 'not enough memory to load it (is its header damaged?)'
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


@contextmanager
def reading(path: str, what: str = 'file') -> Iterator[None]:
    """Turn any error raised while parsing ``path`` into a :class:`UserInputError` naming it.

    ``UserInputError`` passes through unchanged; ``KeyboardInterrupt`` / ``SystemExit`` are not caught.
    """
    try:
        yield
    except UserInputError:
        raise
    except Exception as e:  # third-party parsers raise anything on damaged bytes (RecursionError included)
        raise UserInputError(f'Cannot read {what} {path}: {_describe(e)}. {SKIP_HINT}') from None


def check_declared_size(path: str, shape: Sequence[int], itemsize: int, *, available: Optional[int] = None,
                        compressed: Optional[int] = None, what: str = 'image') -> int:
    """Refuse a header whose array cannot be real, before anything is allocated; returns the payload bytes.

    Args:
        shape: The array shape the header declares.
        itemsize: Bytes per element.
        available: Bytes the file holds for the payload when it is stored uncompressed.
        compressed: Size in bytes of the deflate-compressed payload (or of the whole ``.gz`` file).
    """
    dims = [int(s) for s in shape]
    if any(d < 0 for d in dims):
        raise UserInputError(f'{path}: the header declares a negative size {tuple(dims)}. {SKIP_HINT}')
    if any(d == 0 for d in dims):
        raise UserInputError(f'{path}: the {what} is empty (shape {tuple(dims)}). {SKIP_HINT}')
    n = 1
    for d in dims:
        n *= d
    cap = max_voxels()
    if n > cap:
        raise UserInputError(
            f'{path}: the header declares a {"x".join(map(str, dims))} {what} ({n:,} elements), more than the '
            f'{cap:,} this package loads (MEDNEXT_ZOO_MAX_VOXELS raises the cap). A damaged header? {SKIP_HINT}')
    nbytes = n * max(1, int(itemsize))
    if available is not None and nbytes > available:
        raise UserInputError(
            f'{path}: the header declares {nbytes:,} bytes of {what} data but the file holds {max(0, available):,}: '
            f'the file is truncated or its header is damaged. {SKIP_HINT}')
    if compressed is not None and nbytes > DEFLATE_MAX_RATIO * max(1, compressed):
        raise UserInputError(
            f'{path}: the header declares {nbytes:,} bytes of {what} data, more than {compressed:,} compressed bytes '
            f'can hold: the header is damaged. {SKIP_HINT}')
    return nbytes


def check_gzip_complete(path: str, expected: Optional[int] = None) -> None:
    """Refuse a truncated or corrupt ``.gz`` file.

    The gzip trailer stores the uncompressed size modulo 2**32: when it matches ``expected`` the file is whole
    (one read of 8 bytes). Otherwise -- a truncated file, or a legitimate multi-member gzip whose trailer names
    the last member only -- the stream is decompressed and discarded chunk by chunk to be sure.
    """
    size = os.path.getsize(path)
    if size < 18:  # 10-byte header + 8-byte trailer
        raise UserInputError(f'{path}: truncated gzip file ({size} bytes). {SKIP_HINT}')
    if expected is not None:
        with open(path, 'rb') as f:
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack('<I', f.read(4))
        if isize == expected % 2 ** 32:
            return
    try:
        with gzip.open(path, 'rb') as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise UserInputError(f'{path}: truncated or corrupt gzip data ({_describe(e)}). {SKIP_HINT}') from None


def check_finite(arr: np.ndarray, path: str, what: str = 'image') -> np.ndarray:
    """Refuse NaN / inf values (a float image with them would poison every normalisation and the loss)."""
    if arr.dtype.kind in 'fc' and arr.size and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise UserInputError(
            f'{path}: {bad:,} of {arr.size:,} {what} values are NaN or infinite. Replace them (e.g. '
            f'numpy.nan_to_num) and save the file again. {SKIP_HINT}')
    return arr


def read_csv_rows(path: str) -> Tuple[List[str], List[Tuple[int, Dict[str, str]]]]:
    """A UTF-8 CSV as (lower-cased column names, [(line number, {column: stripped value})]).

    Refuses, naming the file and line: text that is not UTF-8, NUL bytes or other damage the csv module
    reports, and rows with more fields than the header (an unquoted comma in a path, usually).
    """
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserInputError(f'{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the CSV as UTF-8.') \
            from None
    except OSError as e:
        raise UserInputError(f'Cannot read {path}: {_describe(e)}.') from None
    if '\0' in text:
        line = text.count('\n', 0, text.index('\0')) + 1
        raise UserInputError(f'{path} line {line}: a NUL byte; this is not a text CSV file.')
    reader = csv.DictReader(io.StringIO(text, newline=''))
    rows = []
    try:
        cols = [(c or '').strip().lower() for c in (reader.fieldnames or [])]
        for r in reader:
            if None in r:
                raise UserInputError(
                    f'{path} line {reader.line_num}: {len(cols) + len(r[None])} fields for {len(cols)} columns '
                    f'({", ".join(cols)}); quote values that contain commas.')
            rows.append((reader.line_num, {(k or '').strip().lower(): (v or '').strip() for k, v in r.items()}))
    except csv.Error as e:
        raise UserInputError(f'{path} line {reader.line_num}: not a readable CSV ({e}).') from None
    return cols, rows
