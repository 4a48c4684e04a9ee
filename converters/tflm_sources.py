"""Where the TFLM C++ sources come from: a folder, an archive, or the pinned downloads.

No package registry carries TFLite-Micro's sources, and none of them is ever committed
here. ``root()`` finds them, in this order:

1. ``$TFLQ_TFLM_ROOT``: a folder holding ``tflite-micro/``, ``flatbuffers/``,
   ``gemmlowp/`` and ``ruy/`` (used as it is, unchecked: it may be a user's checkout);
2. ``$TFLQ_TFLM_ARCHIVE``: a ``.tar.gz`` of those four folders (e.g. the shared
   ``tflm-deps-90b983c2.tar.gz``), checked against ``ARCHIVE_SHA256`` and unpacked once
   into ``$TFLQ_CACHE_DIR/tflm-src/``;
3. otherwise the four pinned GitHub archives (``DOWNLOADS``), each unpacked tree
   checked against its ``tree_sha256`` and unpacked once into the same cache.

An unpacked tree is published by a rename, so a killed run never leaves a half tree
under the final name, and concurrent runs agree on one copy. Offline with neither
variable set, this fails with one line naming what to set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tflq import outputs
from tflq.errors import TflqError

ROOT_ENV = "TFLQ_TFLM_ROOT"
ARCHIVE_ENV = "TFLQ_TFLM_ARCHIVE"
CACHE_ENV = "TFLQ_CACHE_DIR"
SUBDIRS = ("tflite-micro", "flatbuffers", "gemmlowp", "ruy")
# One line naming the commit of tflite-micro/ (an archive has no .git).
COMMIT_MARKER = "TFLM_COMMIT"

TFLM_COMMIT = "90b983c2"
FLATBUFFERS_VERSION = "25.9.23"
GEMMLOWP_COMMIT = "fda83bdc38b118cc6b56753bd540caa49e570745"
RUY_COMMIT = "54774a7a2cf85963777289193629d4bd42de4a59"
# The four trees in one archive (tflm-deps-90b983c2.tar.gz: `git archive` of each pin).
ARCHIVE_SHA256 = "6c5a6c9c827a8cffc9d586a96a63086d6d3d46f04394123e473b6648b46c3d69"


@dataclasses.dataclass(frozen=True)
class Download:
    """One pinned upstream tree: where to get it and the digest of its files."""

    name: str  # the folder it becomes (one of SUBDIRS)
    url: str
    tree_sha256: str  # tree_digest() of the unpacked folder: GitHub's archive bytes vary

    def with_url(self, url: str) -> "Download":
        return dataclasses.replace(self, url=url)


_GITHUB = "https://github.com"
DOWNLOADS = (
    Download("tflite-micro", f"{_GITHUB}/tensorflow/tflite-micro/archive/{TFLM_COMMIT}.tar.gz",
             "309ac9f886a0a172936fc0c70fa2b8f7f6eb251f2ba024c47d85274e3382069e"),
    Download("flatbuffers",
             f"{_GITHUB}/google/flatbuffers/archive/refs/tags/v{FLATBUFFERS_VERSION}.tar.gz",
             "901022562e90f798a08bb8779fb89d186b73b93e894fb17e8aba0c063186b1bd"),
    Download("gemmlowp", f"{_GITHUB}/google/gemmlowp/archive/{GEMMLOWP_COMMIT}.tar.gz",
             "ce700403f02892d012f2a845af8700e05ca0a671244656abca93b2781d3ac143"),
    Download("ruy", f"{_GITHUB}/google/ruy/archive/{RUY_COMMIT}.tar.gz",
             "2164d5fbf04329d476d16f58f08e55b796444d974031677f9ca17994d0378133"),
)
_DOWNLOAD_TIMEOUT_S = 60


def cache_dir() -> Path:
    """tflq's cache root: ``$TFLQ_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/tflq``."""
    value = os.environ.get(CACHE_ENV)
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tflq"


def tree_digest(folder: Path) -> str:
    """sha256 over a tree's relative paths, symlink targets and file contents, sorted."""
    h = hashlib.sha256()
    folder = Path(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(folder).as_posix().encode()
            if path.is_symlink():
                h.update(b"L" + rel + b"\0" + os.readlink(path).encode() + b"\0")
            elif path.is_file():
                data = path.read_bytes()
                h.update(b"F" + rel + b"\0" + str(len(data)).encode() + b"\0" + data)
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_tree(root: Path, what: str) -> Path:
    """``root`` if it holds all of SUBDIRS; TflqError naming the missing ones."""
    missing = [d for d in SUBDIRS if not (root / d).is_dir()]
    if missing:
        raise TflqError(f"{what} lacks {', '.join(d + '/' for d in missing)}: it must hold "
                        f"{', '.join(d + '/' for d in SUBDIRS)}.")
    return root


def root(downloads: tuple[Download, ...] | None = None) -> Path:
    """The folder holding the four source trees, found as the module docstring says."""
    value = os.environ.get(ROOT_ENV)
    if value:
        return check_tree(Path(value).expanduser(), f"{ROOT_ENV}={value}")
    archive = os.environ.get(ARCHIVE_ENV)
    if archive:
        return unpack_archive(Path(archive).expanduser())
    return download(downloads)


def local_root() -> Path | None:
    """The sources if they are here without a download (a folder, the archive, or an
    earlier download in the cache); None otherwise. Never touches the network."""
    try:
        if os.environ.get(ROOT_ENV) or os.environ.get(ARCHIVE_ENV):
            return root()
    except TflqError:
        return None
    downloaded = _download_target(DOWNLOADS)
    return downloaded if (downloaded / COMMIT_MARKER).is_file() else None


def unpack_archive(archive: Path, expected_sha256: str = ARCHIVE_SHA256) -> Path:
    """The archive's trees, unpacked once into the cache after a sha256 check."""
    if not archive.is_file():
        raise TflqError(f"{ARCHIVE_ENV}={archive}: no such file (the TFLM sources archive, "
                        f"e.g. tflm-deps-{TFLM_COMMIT}.tar.gz).")
    target = cache_dir() / "tflm-src" / f"archive-{expected_sha256[:16]}"
    if (target / COMMIT_MARKER).is_file():
        return target
    got = file_sha256(archive)
    if got != expected_sha256:
        raise TflqError(f"{ARCHIVE_ENV}={archive} has sha256 {got}, not the pinned "
                        f"{expected_sha256}: not the TFLM {TFLM_COMMIT} sources archive.")

    def fill(tmp: Path) -> None:
        _extract(archive, tmp, str(archive))
        check_tree(tmp, f"{ARCHIVE_ENV}={archive}")
        if not (tmp / COMMIT_MARKER).is_file():
            (tmp / COMMIT_MARKER).write_text(TFLM_COMMIT + "\n")

    return _publish(target, fill)


def download(downloads: tuple[Download, ...] | None = None) -> Path:
    """The pinned trees (``DOWNLOADS`` unless given), downloaded and checked once into
    the cache."""
    downloads = DOWNLOADS if downloads is None else downloads
    target = _download_target(downloads)
    if (target / COMMIT_MARKER).is_file():
        return target

    def fill(tmp: Path) -> None:
        for d in downloads:
            archive = tmp / f"{d.name}.tar.gz"
            try:
                with urllib.request.urlopen(d.url, timeout=_DOWNLOAD_TIMEOUT_S) as response, \
                        open(archive, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as e:
                raise TflqError(
                    f"no TFLM sources: {ROOT_ENV} and {ARCHIVE_ENV} are unset and downloading "
                    f"{d.url} failed ({getattr(e, 'reason', e)}). Set {ARCHIVE_ENV} to "
                    f"tflm-deps-{TFLM_COMMIT}.tar.gz or {ROOT_ENV} to a folder holding "
                    f"{', '.join(s + '/' for s in SUBDIRS)}.") from None
            unpacked = tmp / f"{d.name}.unpacked"
            _extract(archive, unpacked, d.url)
            tops = list(unpacked.iterdir())
            if len(tops) != 1 or not tops[0].is_dir():
                raise TflqError(f"{d.url}: expected one top-level folder, found "
                                f"{sorted(p.name for p in tops)}")
            got = tree_digest(tops[0])
            if got != d.tree_sha256:
                raise TflqError(f"{d.url}: its files have tree sha256 {got}, not the pinned "
                                f"{d.tree_sha256}; not using them.")
            tops[0].rename(tmp / d.name)
            shutil.rmtree(unpacked)
            archive.unlink()
        (tmp / COMMIT_MARKER).write_text(TFLM_COMMIT + "\n")

    return _publish(target, fill)


def _download_target(downloads: tuple[Download, ...]) -> Path:
    """The cache folder the pinned trees of ``downloads`` are unpacked into."""
    key = hashlib.sha256("".join(d.tree_sha256 for d in downloads).encode()).hexdigest()[:16]
    return cache_dir() / "tflm-src" / f"download-{key}"


def _extract(archive: Path, into: Path, what: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TflqError(f"{what}: not a readable .tar.gz ({e}).") from None


def _publish(target: Path, fill) -> Path:
    """Runs ``fill(tmp)`` on a fresh sibling of ``target``, then renames it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    outputs.remove_stale(str(target.parent))
    tmp = Path(tempfile.mkdtemp(prefix=outputs.temp_prefix(str(target)), dir=target.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / COMMIT_MARKER).is_file():  # another run did not publish it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
