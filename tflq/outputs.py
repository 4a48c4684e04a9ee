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


def temp_prefix(path: str) -> str:
    """The prefix of ``path``'s temporary siblings: ``.<name>.tmp-<pid>-``."""
    return f".{os.path.basename(path)}.tmp-{os.getpid()}-"


def remove_stale(parent: str) -> None:
    """Removes temporary siblings (``.*.tmp-<pid>-*``) whose process no longer runs:
    what a killed run left behind."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(".") or ".tmp-" not in name:
            continue
        pid = name.split(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            victim = os.path.join(parent, name)
            if os.path.isdir(victim) and not os.path.islink(victim):
                shutil.rmtree(victim, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(victim)


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False, flag: str = "--overwrite"):
    """Yields a temporary directory that becomes ``path`` when the block succeeds.

    ``overwrite`` is checked before and again at the rename, so a ``path`` that appeared
    meanwhile is kept. The directory gets the user's umask mode (mkdtemp's is 700)."""
    path = os.path.abspath(path)
    check_free(path, overwrite, flag)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent)
    tmp = tempfile.mkdtemp(prefix=temp_prefix(path), dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        check_free(path, overwrite, flag)
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
    remove_stale(os.path.dirname(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 600
        check_free(path, overwrite)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
