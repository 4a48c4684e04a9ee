"""Where TFLM's sources come from (converters.tflm_sources): archive and download paths,
each checked by sha256 and unpacked once; offline failures in one line.

The downloads are exercised with file:// URLs to archives made here, so nothing
leaves the machine.
"""
import os
import tarfile
from pathlib import Path

import pytest

from tflq.converters import tflm_sources
from tflq.errors import TflqError

_REAL_ARCHIVE = os.environ.get(tflm_sources.ARCHIVE_ENV)  # read before the fixture unsets it


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv(tflm_sources.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(tflm_sources.ROOT_ENV, raising=False)
    monkeypatch.delenv(tflm_sources.ARCHIVE_ENV, raising=False)
    return tmp_path / "cache"


def _tree(folder, name):
    (folder / "src").mkdir(parents=True)
    (folder / "src" / f"{name}.h").write_text(f"// {name}\n")
    (folder / "README").write_text(name)
    os.symlink("src", folder / "link")
    return folder


def _targz(path, folder, arcname):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return path


def _deps_archive(tmp_path):
    for name in tflm_sources.SUBDIRS:
        _tree(tmp_path / "deps" / name, name)
    (tmp_path / "deps" / "TFLM_COMMIT").write_text("abc123\n")
    with tarfile.open(tmp_path / "deps.tar.gz", "w:gz") as tar:
        for entry in sorted((tmp_path / "deps").iterdir()):
            tar.add(entry, arcname=entry.name)
    return tmp_path / "deps.tar.gz"


def _downloads(tmp_path):
    downloads = []
    for name in tflm_sources.SUBDIRS:
        folder = _tree(tmp_path / "upstream" / f"{name}-1234", name)
        archive = _targz(tmp_path / f"{name}.tar.gz", folder, f"{name}-1234")
        downloads.append(tflm_sources.Download(name, archive.as_uri(),
                                               tflm_sources.tree_digest(folder)))
    return tuple(downloads)


def test_archive_is_checked_and_unpacked_once(tmp_path, monkeypatch, cache):
    archive = _deps_archive(tmp_path)
    sha = tflm_sources.file_sha256(archive)
    root = tflm_sources.unpack_archive(archive, sha)
    assert root.parent == cache / "tflm-src"
    assert all((root / d / "README").read_text() == d for d in tflm_sources.SUBDIRS)
    assert (root / "TFLM_COMMIT").read_text().strip() == "abc123"
    archive.write_bytes(b"changed")  # the unpacked copy is used from now on
    assert tflm_sources.unpack_archive(archive, sha) == root
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]


def test_archive_with_the_wrong_sha256_is_refused_and_nothing_is_left(tmp_path, cache):
    archive = _deps_archive(tmp_path)
    with pytest.raises(TflqError, match=r"has sha256 [0-9a-f]{64}, not the pinned 0{64}"):
        tflm_sources.unpack_archive(archive, "0" * 64)
    assert not (cache / "tflm-src").exists() or not list((cache / "tflm-src").iterdir())


def test_archive_that_is_not_a_tarball_is_one_clear_error(tmp_path):
    bad = tmp_path / "deps.tar.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(TflqError, match="not a readable .tar.gz"):
        tflm_sources.unpack_archive(bad, tflm_sources.file_sha256(bad))
    with pytest.raises(TflqError, match="no such file"):
        tflm_sources.unpack_archive(tmp_path / "absent.tar.gz")


def test_archive_env_is_used_when_root_is_unset(tmp_path, monkeypatch):
    archive = _deps_archive(tmp_path)
    monkeypatch.setenv(tflm_sources.ARCHIVE_ENV, str(archive))
    # Not the pinned archive: refused by its sha256, naming the variable.
    with pytest.raises(TflqError, match=tflm_sources.ARCHIVE_ENV):
        tflm_sources.root()
    monkeypatch.setenv(tflm_sources.ROOT_ENV, str(tmp_path / "deps"))
    assert tflm_sources.root() == tmp_path / "deps"  # a folder comes first


def test_root_folder_missing_trees_names_them(tmp_path, monkeypatch):
    (tmp_path / "half" / "tflite-micro").mkdir(parents=True)
    monkeypatch.setenv(tflm_sources.ROOT_ENV, str(tmp_path / "half"))
    with pytest.raises(TflqError, match="lacks flatbuffers/, gemmlowp/, ruy/"):
        tflm_sources.root()


def test_downloads_are_checked_by_tree_sha256_and_kept(tmp_path):
    downloads = _downloads(tmp_path)
    root = tflm_sources.root(downloads)
    for name in tflm_sources.SUBDIRS:
        assert (root / name / "src" / f"{name}.h").is_file()
        assert os.readlink(root / name / "link") == "src"
    assert (root / "TFLM_COMMIT").read_text().strip() == tflm_sources.TFLM_COMMIT
    for d in downloads:  # a second call downloads nothing
        os.unlink(d.url[len("file://"):])
    assert tflm_sources.root(downloads) == root


def test_download_with_other_files_is_refused(tmp_path, cache):
    downloads = list(_downloads(tmp_path))
    downloads[2] = tflm_sources.Download(downloads[2].name, downloads[2].url, "f" * 64)
    with pytest.raises(TflqError, match=r"gemmlowp.tar.gz: its files have tree sha256 "):
        tflm_sources.download(tuple(downloads))
    assert not list((cache / "tflm-src").iterdir())


def test_offline_download_fails_in_one_line_naming_what_to_set(tmp_path):
    offline = tuple(d.with_url((tmp_path / f"absent-{d.name}.tar.gz").as_uri())
                    for d in tflm_sources.DOWNLOADS)
    with pytest.raises(TflqError) as e:
        tflm_sources.root(offline)
    message = str(e.value)
    assert "\n" not in message
    assert tflm_sources.ARCHIVE_ENV in message and tflm_sources.ROOT_ENV in message


def test_stale_temp_folders_of_killed_runs_are_removed(tmp_path, cache):
    stale = cache / "tflm-src" / ".archive-x.tmp-999999999-abc"
    stale.mkdir(parents=True)
    (stale / "half").write_text("left by a killed run")
    tflm_sources.unpack_archive(_deps_archive(tmp_path),
                                tflm_sources.file_sha256(tmp_path / "deps.tar.gz"))
    assert not stale.exists()


def test_tree_digest_sees_contents_names_and_links(tmp_path):
    a = _tree(tmp_path / "a", "x")
    before = tflm_sources.tree_digest(a)
    (a / "README").write_text("y")
    assert tflm_sources.tree_digest(a) != before
    (a / "README").write_text("x")
    assert tflm_sources.tree_digest(a) == before
    os.unlink(a / "link")
    os.symlink("README", a / "link")
    assert tflm_sources.tree_digest(a) != before


@pytest.mark.firmware
@pytest.mark.skipif(not _REAL_ARCHIVE, reason=f"{tflm_sources.ARCHIVE_ENV} is not set (.ci/run "
                    "sets it to the shared tflm-deps archive)")
def test_real_archive_holds_the_pinned_trees():
    """The shared archive unpacks to exactly the trees the pinned downloads must give."""
    root = tflm_sources.unpack_archive(Path(_REAL_ARCHIVE))
    assert (root / "TFLM_COMMIT").read_text().split()[0] == tflm_sources.TFLM_COMMIT
    for d in tflm_sources.DOWNLOADS:
        assert tflm_sources.tree_digest(root / d.name) == d.tree_sha256, d.name
