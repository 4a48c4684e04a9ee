"""Atomic outputs: a result appears whole under its final name, or not at all.

Everything is written into a temporary sibling (same filesystem), then renamed.
An existing output is replaced only when asked (``overwrite=True``), and then
only after the new one is complete.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from tflq.errors import TflqError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_free(path: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Raises TflqError if ``path`` exists and may not be overwritten."""
    if os.path.lexists(path) and not overwrite:
        raise TflqError(f"{path} already exists; not overwriting it without {flag}")


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False):
    """Yields a temporary directory that becomes ``path`` when the block succeeds."""
    path = os.path.abspath(path)
    check_free(path, overwrite)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 700: give it the user's mode
    try:
        yield tmp
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str, data: bytes, overwrite: bool = False) -> None:
    """Writes ``data`` to ``path`` atomically."""
    path = os.path.abspath(path)
    check_free(path, overwrite)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
