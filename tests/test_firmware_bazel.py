"""Generated firmware projects build with Bazel (Debian's 4.2.3, offline) as they do with Make.

The Bazel builds need `bazel`, TFLM sources (converters.tflm_sources),
riscv64-unknown-elf-gcc and qemu-system-riscv32; the outputs must equal the host
reference (TFLM built for the host from the same sources). TFLM's objects are shared between projects and runs through the
disk cache the project's .bazelrc names; a cold run compiles TFLM once (about a minute
on two cores).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import _models  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
from tflq.converters import firmware_kernels, firmware_run, micro_project, tflm, tflm_sources, toolchain

NUM_INPUTS = 8
STATS = re.compile(r"^STATS instructions_per_inference=(\d+) arena_bytes=(\d+) "
                   r"stack_bytes=(\d+)$", re.M)
BAZEL_FILES = ("WORKSPACE", ".bazelrc", "BUILD", "fe310/BUILD", "bazel/BUILD", "bazel/tflm.bzl",
               "bazel/toolchain/BUILD", "bazel/toolchain/cc_toolchain_config.bzl",
               "bazel/rules_cc_shim/WORKSPACE", "bazel/rules_cc_shim/cc/defs.bzl")
REPO = Path(__file__).resolve().parent.parent


def make_list(makefile: str, name: str) -> list[str]:
    body = re.search(rf"^{name} := \\\n((?:\t\S+(?: \\)?\n)+)", makefile, re.M)
    assert body, f"{name} not in the Makefile"
    return [line.strip(" \t\\") for line in body.group(1).splitlines()]


def bzl_list(build: str, name: str) -> list[str]:
    body = re.search(rf"^{name} = \[\n(.*?)^\]", build, re.M | re.S)
    assert body, f"{name} not in the BUILD file"
    return re.findall(r'^\s+"([^"]+)",$', body.group(1), re.M)


def bzl_value(build: str, name: str) -> str:
    return re.search(rf'^{name} = "?([^"\n]+)"?$', build, re.M).group(1)


def test_project_is_a_bazel_workspace_compiling_the_makefiles_sources(tmp_path):
    flatbuffer = _models.build("small_cnn")
    project = micro_project.generate_project(flatbuffer, tmp_path / "cnn")
    for name in BAZEL_FILES:
        assert (project / name).is_file(), name
    build, makefile = (project / "BUILD").read_text(), (project / "Makefile").read_text()

    # tflq's kernels: the FCs are TFLQ_PACKED int8 rows, the conv and its max-pool one
    # TFLQ_PACKED op.
    plan = project.plan
    assert plan == firmware_kernels.plan(project.flatbuffer)
    kernels = plan.tflm_sources
    assert bzl_list(build, "TFLM_FRAMEWORK_SRCS") == make_list(makefile, "TFLM_FRAMEWORK_SRCS") \
        == list(tflm.FRAMEWORK_SOURCES)
    assert bzl_list(build, "TFLM_KERNEL_SRCS") == make_list(makefile, "TFLM_KERNEL_SRCS") \
        == list(kernels)
    assert make_list(makefile, "TFLQ_KERNEL_SRCS") == plan.project_sources
    assert all(f'"{source}"' in build for source in plan.project_sources)
    assert "tflq_kernels/tflq_packed_op.cc" in build and "tflq_kernels/layer_eval.c" in build
    assert bzl_list(build, "TFLM_COPTS") == list(tflm.CXX_FLAGS)
    assert re.search(r"^TFLM_FLAGS := (.*)$", makefile, re.M).group(1) == " ".join(tflm.CXX_FLAGS)
    assert bzl_value(build, "FRAMEWORK_OPT") == tflm.FRAMEWORK_OPT
    assert bzl_value(build, "KERNEL_OPT") == tflm.KERNEL_OPT
    assert bzl_value(build, "STACK_BYTES") == re.search(r"^STACK_BYTES := (\d+)$", makefile,
                                                        re.M).group(1)
    # The toolchain and the rules_cc shim are copies of tflq's own, byte for byte.
    for ours, copy in ((REPO / "micro/toolchain", "bazel/toolchain"),
                       (REPO / "micro/bazel/rules_cc_shim", "bazel/rules_cc_shim")):
        for path in (p for p in ours.rglob("*") if p.is_file()):
            assert (project / copy / path.relative_to(ours)).read_bytes() == path.read_bytes()
    rule = (project / "bazel/tflm.bzl").read_text()
    for pin in (tflm.TFLM_COMMIT, tflm.FLATBUFFERS_VERSION, tflm.GEMMLOWP_COMMIT,
                tflm.GEMMLOWP_SHA256, tflm.RUY_COMMIT, tflm.RUY_SHA256):
        assert pin in rule
    assert "{{" not in rule + build + (project / "WORKSPACE").read_text()


def _require_bazel():
    if not shutil.which("bazel"):
        pytest.skip("bazel is not installed (Debian: apt-get install bazel-bootstrap "
                    "bazel-rules-java)")


def bazel_build(project: Path, output_base: Path, *targets: str) -> None:
    """`bazel build --config=fe310` in the project (niced, two jobs: the machine is shared),
    with the TFLM tree tflq found as $TFLQ_TFLM_ROOT."""
    cmd = ["nice", "-n", "10", "bazel", "--batch",
           f"--output_user_root={tflm_sources.cache_dir() / 'bazel'}",
           f"--output_base={output_base}", "build", "--config=fe310", "--jobs=2",
           f"--disk_cache={tflm_sources.cache_dir() / 'bazel-disk-cache'}", *targets]
    env = dict(os.environ, **{tflm.ROOT_ENV: str(tflm.source_root())})
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=900, env=env)
    log = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                    if "linux-sandbox" not in line)
    assert done.returncode == 0, f"`{' '.join(cmd)}` failed:\n{log[-4000:]}"


class Built:
    def __init__(self, flatbuffer, inputs, project: Path):
        self.flatbuffer, self.inputs, self.project = flatbuffer, inputs, project
        self.bin = project / "bazel-bin"


@pytest.fixture(scope="module")
def bazel_project(tmp_path_factory, firmware_tools):
    """name -> the model's project, generated and built with Bazel once per module."""
    _require_bazel()
    built = {}

    def get(name):
        if name not in built:
            flatbuffer = _models.build(name)
            inputs = _models.random_inputs(flatbuffer, NUM_INPUTS)
            root = tmp_path_factory.mktemp(f"bazel-{name}")
            project = micro_project.generate_project(flatbuffer, root / name, test_inputs=inputs)
            bazel_build(project, root / "output_base", "//:firmware", "//:firmware_qemu",
                        "//:firmware_hex")
            built[name] = Built(flatbuffer, inputs, project)
        return built[name]
    return get


def output_lines(uart_text: str) -> list[str]:
    return re.findall(r"^OUTPUT \d+(?: -?\d+)+$", uart_text, re.M)


@pytest.mark.parametrize("name", ["mlp", "small_cnn"])
def test_bazel_firmware_matches_host_interpreter_bit_for_bit(bazel_project, name):
    built = bazel_project(name)
    run = toolchain.run_qemu(built.bin / "firmware_qemu", timeout_s=300)
    assert run.exit_code == 0, run.uart_text[-2000:]
    expected, reference = firmware_run.host_reference(built.project, built.inputs)
    want = [f"OUTPUT {k} " + " ".join(map(str, row.tolist())) for k, row in enumerate(expected)]
    assert output_lines(run.uart_text) == want, (
        f"{name}: the Bazel-built firmware differs from the host reference; "
        + tflm.commits_note(tflm.source_root(), reference))
    stats = STATS.search(run.uart_text)
    assert stats, run.uart_text[-500:]
    instructions, arena, stack = map(int, stats.groups())
    budget = micro_project.MemoryBudget(**firmware_run.project_info(built.project)["budget"])
    assert instructions > 1000 and 0 < arena <= budget.arena and 0 < stack <= budget.stack


def test_bazel_and_make_firmware_print_the_same(bazel_project):
    """Same sources and flags: the same outputs and the same instruction counts."""
    built = bazel_project("mlp")
    tflm.make(built.project, "qemu-elf")
    by_make = toolchain.run_qemu(built.project / "build/hifive1-reva-qemu/firmware.elf")
    by_bazel = toolchain.run_qemu(built.bin / "firmware_qemu")
    assert by_make.exit_code == by_bazel.exit_code == 0
    lines = [line for line in by_bazel.uart_text.splitlines() if line.startswith(("OUTPUT", "STATS"))]
    assert len(lines) == NUM_INPUTS + 1, by_bazel.uart_text[-1000:]
    assert lines == [line for line in by_make.uart_text.splitlines()
                     if line.startswith(("OUTPUT", "STATS"))]


def test_bazel_board_build_links_for_hifive1_revb(bazel_project):
    built = bazel_project("small_cnn")
    symbols = subprocess.run([toolchain.find_toolchain().tool("nm"), str(built.bin / "firmware")],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"^20010000 T _start$", symbols, re.M), "Rev B programs start at 0x20010000"
    hex_text = (built.bin / "firmware.hex").read_text()
    assert hex_text.startswith(":020000042001"), "the HEX file loads at 0x2001xxxx"
    # The QEMU build is linked for the Rev A (0x20400000), where sifive_e starts.
    symbols = subprocess.run([toolchain.find_toolchain().tool("nm"),
                              str(built.bin / "firmware_qemu")],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"^20400000 T _start$", symbols, re.M)
