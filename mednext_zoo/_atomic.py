"""Atomic file writes: every layer writes through a temporary file in the target's folder + ``os.replace``.

A reader (or a run killed mid-write) sees the old file or the new one, never half of one.

File modes: a new file gets the mode an ordinary ``open(path, 'w')`` would give it (``0o666`` less the
process umask: ``0o644`` under the usual ``022``), and a replaced file keeps its own mode. ``tempfile.mkstemp``
alone would leave every file ``0o600``, unreadable to the rest of a group sharing a run folder.
"""
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Tuple, Union

PathLike = Union[str, os.PathLike]

__all__ = ['atomic_path', 'atomic_write_bytes', 'atomic_write_text']


def _create_temp(path: Path) -> Tuple[Path, int]:
    """Create an empty temporary file beside ``path`` with the umask-governed default mode; return it and the
    mode the final file must have (the mode of the file it replaces, if any).

    ``os.open(..., 0o666)`` lets the kernel apply the umask, so no ``os.umask`` round trip (racy across threads)
    is needed; ``O_EXCL`` makes the random name safe against an existing file or link of that name.
    """
    suffix = ''.join(path.suffixes)  # writers that pick the format from the extension (.nii.gz, .nrrd) see it
    for _ in range(100):
        tmp = path.parent / f'.{path.name}.tmp-{secrets.token_hex(4)}{suffix}'
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = stat.S_IMODE(os.stat(tmp).st_mode)
        return tmp, mode
    raise FileExistsError(f'could not create a temporary file beside {path}')  # pragma: no cover


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``, ``.nrrd``, ...) for writers that pick the
    format from the extension. The folder is created if needed. The file that lands at ``path`` has the mode
    a plain ``open`` would give a new file under the current umask, or the mode of the file it replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _create_temp(path)
    try:
        yield tmp
        os.chmod(tmp, mode)  # also when the writer deleted and re-created the temporary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode('utf-8'))
