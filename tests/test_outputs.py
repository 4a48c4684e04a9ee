"""Atomic outputs (tflq.outputs): modes, a path that appears meanwhile, stale temp folders."""
import os
import stat

import pytest

from tflq import outputs
from tflq.errors import TflqError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_get_the_umask_modes(tmp_path, umask_022):
    with outputs.atomic_dir(str(tmp_path / "run")) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").close()
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o755
    outputs.write_bytes(str(tmp_path / "m.tflite"), b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "m.tflite").st_mode) == 0o644


def test_a_path_that_appears_during_the_write_is_kept(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(TflqError, match="already exists"):
        with outputs.atomic_dir(str(target)) as tmp:
            open(os.path.join(tmp, "new.txt"), "w").close()
            target.mkdir()
            (target / "theirs.txt").write_text("keep me")
    assert os.listdir(target) == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folder left
    with pytest.raises(TflqError, match="already exists"):
        outputs.write_bytes(str(target / "theirs.txt"), b"new")
    assert (target / "theirs.txt").read_text() == "keep me"


def test_stale_temp_folders_of_killed_runs_are_removed(tmp_path):
    stale = tmp_path / ".run.tmp-999999999-abcd"
    stale.mkdir()
    (stale / "half.txt").write_text("left by a killed run")
    mine = tmp_path / f".other.tmp-{os.getpid()}-live"
    mine.mkdir()  # a live process's (this one's) temp folder stays
    with outputs.atomic_dir(str(tmp_path / "run")):
        pass
    assert not stale.exists() and mine.exists()
