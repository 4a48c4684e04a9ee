"""A generated project built, run in QEMU, read back, and checked against the host reference.

The firmware speaks a line protocol over UART0 (templates/main.cc, main_eval.cc):
``OUTPUT <k> <int8...>`` per test input, ``PRED <k> <label> <argmax>`` per eval image,
``ACCURACY``, ``FEATURES`` and ``STATS`` lines. ``run`` parses it once into a
``DeviceRun``; every number it holds comes from the device (QEMU with
``-icount shift=0``: ``minstret`` counts retired instructions exactly).

``host_reference`` runs the flatbuffer the project embeds (``model.tflite``) on TFLM
built for the host from the same sources, with the project's kernel choice
(``tflq_project.json``), so the two must agree bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tflq.converters import flash_reads, tflm, tflm_host, toolchain
from tflq.errors import TflqError

QEMU_ELF = "build/hifive1-reva-qemu/firmware.elf"
PROJECT_JSON = "tflq_project.json"
MODEL_FILE = "model.tflite"
INPUTS_FILE = "test_inputs.npy"  # the self-test's inputs (count, input size) int8
_OUTPUT = re.compile(r"^OUTPUT (\d+)((?: -?\d+)+)$", re.M)
_PRED = re.compile(r"^PRED (\d+) (\d+) (\d+)$", re.M)
_STATS = re.compile(r"^STATS (.*)$", re.M)


@dataclasses.dataclass(frozen=True)
class DeviceRun:
    """What one firmware printed under QEMU, parsed."""

    project: Path
    uart_text: str
    exit_code: int
    outputs: np.ndarray | None  # (inputs, output values) int64, in input order; None if none
    preds: np.ndarray | None  # (images, 3): k, label, argmax (accuracy firmware)
    stats: dict[str, int]  # STATS and FEATURES fields
    flash: flash_reads.FlashReads | None = None  # per inference, if run with flash=True
    # instructions per function over all inferences, most first, if run with profile=True
    profile: dict[str, int] | None = None

    @property
    def elf(self) -> Path:
        return self.project / QEMU_ELF

    @property
    def instructions(self) -> int:
        return self.stats["instructions_per_inference"]

    @property
    def arena_bytes(self) -> int:
        return self.stats["arena_bytes"]

    @property
    def stack_bytes(self) -> int:
        return self.stats["stack_bytes"]

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.uart_text.splitlines()[-lines:])


def build(project: Path, jobs: int = 2) -> Path:
    """Builds the QEMU firmware of ``project`` (TFLM from ``tflm.source_root()``)."""
    tflm.make(project, "qemu-elf", jobs=jobs)
    return Path(project) / QEMU_ELF


def run(project: Path, timeout_s: float = 600, build_first: bool = True,
        flash: bool = False, profile: bool = False) -> DeviceRun:
    """Builds (unless told not to) and runs the project's QEMU firmware; parses its output.

    ``flash``: also count the data loads each inference makes from SPI flash
    (``flash_reads``; QEMU runs with the counting plugin, a few times slower);
    ``profile``: with it, the instructions of the inferences per function."""
    project = Path(project)
    if build_first:
        build(project)
    with tempfile.TemporaryDirectory(prefix="tflq-flash-") as tmp:
        log, hot = Path(tmp) / "flash_reads.txt", Path(tmp) / "profile.txt"
        result = toolchain.run_qemu(
            project / QEMU_ELF, timeout_s,
            flash_reads.qemu_args(log, hot if profile else None) if flash or profile else ())
        flash_result = flash_reads.parse(log.read_text() if log.exists() else "",
                                         str(project / QEMU_ELF)) if flash else None
        functions = (flash_reads.functions(hot.read_text() if hot.exists() else "",
                                           function_symbols(project / QEMU_ELF)) if profile else None)
    text = result.uart_text
    found = {int(m.group(1)): [int(v) for v in m.group(2).split()] for m in _OUTPUT.finditer(text)}
    outputs = None
    if found:
        if sorted(found) != list(range(len(found))):
            raise TflqError(f"{project}: OUTPUT lines {sorted(found)} are not 0..{len(found) - 1}")
        outputs = np.array([found[k] for k in range(len(found))], np.int64)
    preds = [[int(v) for v in m.groups()] for m in _PRED.finditer(text)]
    stats = {}
    for m in _STATS.finditer(text):
        stats.update({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))})
    for m in re.finditer(r"^FEATURES (.*)$", text, re.M):
        stats.update({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))})
    return DeviceRun(project, text, result.exit_code, outputs,
                     np.array(preds, np.int64) if preds else None, stats, flash_result,
                     functions)


def project_info(project: Path) -> dict:
    """The generator's record of a project (tflq_project.json)."""
    path = Path(project) / PROJECT_JSON
    if not path.is_file():
        raise TflqError(f"{project}: no {PROJECT_JSON}; was it generated by tflq?")
    return json.loads(path.read_text())


def host_reference(project: Path, inputs: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(outputs, reference name): the project's own flatbuffer and kernel choice on the
    host build of TFLM, one row of flattened outputs per input (default: the inputs the
    project embeds)."""
    info = project_info(project)
    if inputs is None:
        inputs = np.load(Path(project) / INPUTS_FILE, allow_pickle=False)
    flatbuffer = (Path(project) / MODEL_FILE).read_bytes()
    interpreter = tflm_host.Interpreter(flatbuffer, info["kernels"], name=str(project))
    rows = [interpreter.invoke(x)[0].reshape(-1) for x in np.asarray(inputs)]
    return np.array(rows, np.int64), interpreter.reference


def mismatches(device: np.ndarray, host: np.ndarray) -> list[int]:
    """Indices of the inputs whose device and host outputs differ (all, if counts differ)."""
    if device is None or device.shape != host.shape:
        return list(range(len(host)))
    return [k for k in range(len(host)) if not np.array_equal(device[k], host[k])]


def check_bit_exact(run_: DeviceRun, inputs: np.ndarray | None = None) -> str:
    """Raises TflqError unless every OUTPUT line equals the host reference; returns the
    reference's name."""
    host, reference = host_reference(run_.project, inputs)
    differ = mismatches(run_.outputs, host)
    if differ:
        k = differ[0]
        got = None if run_.outputs is None or k >= len(run_.outputs) else run_.outputs[k].tolist()
        raise TflqError(
            f"{run_.project}: device outputs differ from the host reference on "
            f"{len(differ)} of {len(host)} inputs (first, input {k}: device {got} vs host "
            f"{host[k].tolist()}); {tflm.commits_note(tflm.source_root(), reference)}\n"
            f"{run_.tail()}")
    return reference


def elf_sections(elf: Path) -> dict[str, int]:
    """Section sizes of an ELF (``size -A``)."""
    out = subprocess.run([toolchain.find_toolchain().tool("size"), "-A", str(elf)],
                         capture_output=True, text=True, check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\S+)\s+(\d+)", out, re.M)}


def function_symbols(elf: Path) -> list[tuple[int, str]]:
    """(address, name) of the ELF's functions, by address (``nm -C``)."""
    out = subprocess.run([toolchain.find_toolchain().tool("nm"), "-C", "-n", str(elf)],
                         capture_output=True, text=True, check=True).stdout
    return [(int(m.group(1), 16), m.group(2))
            for m in re.finditer(r"^(\w+) [tTwW] (.+)$", out, re.M)]


def ram_sections(elf: Path) -> tuple[int, int]:
    """Bytes of .data/.tdata/.tbss/.bss, and of the tensor arena array, from the ELF."""
    sections = elf_sections(elf)
    ram = sum(sections.get(s, 0) for s in (".data", ".tdata", ".tbss", ".bss"))
    symbols = subprocess.run([toolchain.find_toolchain().tool("nm"), "-S", str(elf)],
                             capture_output=True, text=True, check=True).stdout
    arena = re.search(r"^\w+ (\w+) [bB] \S*tensor_arena", symbols, re.M)
    return ram, int(arena.group(1), 16) if arena else 0


def flash_bytes(elf: Path) -> int:
    """Bytes the image occupies in flash: code, constants and .data's initial values."""
    sections = elf_sections(elf)
    return sum(sections.get(s, 0) for s in (".init", ".text", ".rodata", ".srodata", ".data"))
