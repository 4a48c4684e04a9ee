"""`bazel build --config=fe310` with Debian's Bazel 4.2.3, offline, and the result runs."""
import os
import shutil
import subprocess

import pytest

from tflq.converters import toolchain

ROOT = os.path.join(os.path.dirname(__file__), "..")


def bazel(*args):
    return subprocess.run(["bazel", "--batch", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def built():
    if not shutil.which("bazel"):
        pytest.skip("bazel is not installed (Debian: apt-get install bazel-bootstrap bazel-rules-java)")
    result = bazel("build", "--config=fe310", "//micro/fe310:all")
    assert result.returncode == 0, result.stderr[-3000:]
    out = bazel("info", "--config=fe310", "bazel-bin").stdout.strip()
    return os.path.join(out, "micro", "fe310")


def test_reva_selftest_runs_in_qemu(built):
    result = toolchain.run_qemu(os.path.join(built, "selftest_hifive1-reva"), timeout_s=60)
    assert result.exit_code == 3
    assert "tflq fe310 selftest" in result.uart_text
    assert "loop_n=1000 loop_instret=2008" in result.uart_text


def test_revb_program_starts_at_its_flash_origin(built):
    nm = toolchain.find_toolchain().tool("nm")
    symbols = subprocess.run([nm, os.path.join(built, "selftest_hifive1-revb")],
                             capture_output=True, text=True, check=True).stdout
    assert "20010000 T _start" in symbols


def test_python_library_target():
    if not shutil.which("bazel"):
        pytest.skip("bazel is not installed")
    result = bazel("build", "//:tflq")
    assert result.returncode == 0, result.stderr[-3000:]
