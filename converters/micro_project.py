"""TFLite flatbuffer -> a TFLite-Micro firmware project for the SiFive FE310.

The project (see templates/) holds the model as a const array in flash, a main.cc
registering exactly the model's ops and self-testing on embedded int8 inputs, the
FE310 platform layer copied from micro/fe310, and a Makefile that compiles TFLM
from $TFLQ_TFLM_ROOT. Generating needs no TFLM sources and no cross toolchain.

RAM is budgeted before anything is written: tensor arena + stack + static data
must fit the FE310's 16 KiB. The arena figure is an upper bound of the 32-bit
arena, argued in ``arena_upper_bound`` and checked in QEMU by
tests/test_firmware_qemu.py; the firmware's arena array is that size.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from converters import flatbuffer as fb
from converters import tflm, toolchain
from tflq.errors import TflqError

RAM_BYTES = 16 * 1024
BOARDS = ("hifive1-revb", "hifive1-reva")
# Flash past the bootloader on the smaller board (Rev B: 4 MiB - 64 KiB), minus room
# for TFLM + picolibc + the app (about 80 KB measured).
FLASH_MODEL_LIMIT = 4 * 1024 * 1024 - 64 * 1024 - 128 * 1024
# Stack reserved by the linker: kernels' call depth plus main()'s locals, of which
# the op resolver and the interpreter are the big ones (hello_world keeps them on the
# stack too). Sizes on rv32 for TFLM 90b983c2. The deepest base measured in QEMU
# (conv + add model) is 824 B, so STACK_BASE_BYTES leaves ~700 B of margin.
STACK_BASE_BYTES = 1536
RESOLVER_BYTES = (12, 36)  # MicroMutableOpResolver<N>: 12 + 36 * N bytes
INTERPRETER_BYTES = 212  # MicroInterpreter
# .data + .bss besides the arena and the stack: TFLM's and picolibc's globals and the
# UART stream: 40-56 B measured on the test models (TFLM 90b983c2);
# the margin is for other TFLM commits. tests/test_firmware_qemu.py checks it.
STATIC_BYTES = 256

_TEMPLATES = Path(__file__).with_name("templates")
_PLATFORM = toolchain.FE310_DIR
_PLATFORM_FILES = ("fe310.c", "fe310.h", "uart.c", "uart.h", "perf.h", "tflm_port.cc",
                   "fe310_sections.ld", "hifive1-reva.ld", "hifive1-revb.ld")
# Where Debian 12's libstdc++-arm-none-eabi-dev puts the C++ headers TFLM needs, for
# projects generated where no cross toolchain is installed (the Makefile can override).
_DEBIAN_CXX_STDLIB = ("/usr/include/newlib/c++/12.2.1",
                      "/usr/include/newlib/c++/12.2.1/arm-none-eabi/thumb/v7-m/nofp")
_HOST_ARENA = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """RAM of one firmware, in bytes: what the linker will place in the 16 KiB DTIM."""

    arena: int  # tensor arena array: the 32-bit upper bound, rounded up to 16
    stack: int  # reserved by the linker script
    static: int  # .data + .bss besides the arena (an upper bound)
    host_arena: int  # the 64-bit host interpreter's figure the bound came from

    @property
    def total(self) -> int:
        return self.arena + self.stack + self.static

    def describe(self) -> str:
        k = lambda n: f"{n / 1024:.1f} KiB"  # noqa: E731
        relation = ">" if self.total > RAM_BYTES else "<="
        return (f"arena {k(self.arena)} + stack {k(self.stack)} + static {k(self.static)} = "
                f"{k(self.total)} {relation} {RAM_BYTES // 1024} KiB RAM (FE310)")


def model_ops(flatbuffer: bytes) -> list[str]:
    """Sorted names of the builtin ops the model uses (custom ops by their custom code)."""
    model = fb.load(flatbuffer)
    return sorted({fb.op_name(model, op) for sg in model.subgraphs for op in sg.operators or []})


def arena_upper_bound(flatbuffer: bytes) -> int:
    """Bytes of tensor arena the model needs on the 32-bit FE310, from above.

    TFLM's host interpreter (64-bit) reports head + tail of its arena. The head
    (planned tensor buffers, scratch, the planner's working data) and the tail
    (TfLiteEvalTensors, nodes, kernels' OpData, the allocator itself) are the same
    allocations on both targets, each no larger with 4-byte pointers and size_t
    (alignments are no larger either: int64 is 8-aligned on ilp32 too), and the
    host's RecordingMicroAllocator is bigger than the firmware's MicroAllocator. So
    the host total bounds the 32-bit use of the same TFLM commit. Measured in QEMU
    (firmware TFLM 90b983c2, host 8f6596d) on five models it overstates by 660-870 B,
    the price of needing neither TFLM sources nor a cross build to size the arena.
    """
    from tflite_micro.python.tflite_micro import runtime

    log = _capture_stderr(lambda: runtime.Interpreter.from_bytes(
        flatbuffer, arena_size=_HOST_ARENA).print_allocations())
    found = re.search(r"Arena allocation total (\d+) bytes", log.text)
    if "Failed to resize buffer" in log.text:
        raise TflqError(f"model needs more than {_HOST_ARENA // 2**20} MiB of tensor arena on "
                        f"TFLM's host interpreter, far beyond the FE310's "
                        f"{RAM_BYTES // 1024} KiB RAM: {log.text.strip().splitlines()[-1]}")
    if log.error is not None or not found:
        raise TflqError(f"TFLM's host interpreter ({tflm.HOST_WHEEL}) could not allocate the "
                        f"model: {log.error or 'no arena figure printed'}\n{log.text.strip()}")
    return -(-int(found.group(1)) // 16) * 16


def stack_reservation(num_ops: int) -> int:
    """Bytes of stack to reserve for a firmware registering ``num_ops`` ops (x256, >= 2 KiB)."""
    need = STACK_BASE_BYTES + RESOLVER_BYTES[0] + RESOLVER_BYTES[1] * num_ops + INTERPRETER_BYTES
    return max(2048, -(-need // 256) * 256)


def memory_budget(flatbuffer: bytes) -> MemoryBudget:
    host = arena_upper_bound(flatbuffer)
    return MemoryBudget(arena=host, stack=stack_reservation(len(model_ops(flatbuffer))),
                        static=STATIC_BYTES, host_arena=host)


def generate_project(flatbuffer: bytes, out_dir, target: str = "fe310",
                     board: str = "hifive1-revb", test_inputs=None,
                     overwrite: bool = False, model_name: str | None = None) -> Path:
    """Writes a TFLM firmware project for ``flatbuffer`` into ``out_dir``; returns its path.

    ``test_inputs``: int8 array (count, *input_shape) or (count, input_size) embedded for
    the self-test; None embeds one input of zero points. ``model_name`` (for comments and
    messages) defaults to the folder's name. Raises TflqError, writing
    nothing, if the model does not fit 16 KiB of RAM or ``out_dir`` exists and
    ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if target != "fe310":
        raise TflqError(f"unknown target {target!r}: tflq generates firmware for 'fe310' only")
    if board not in BOARDS:
        raise TflqError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    if out_dir.exists() and not overwrite:
        raise TflqError(f"{out_dir} already exists: pass overwrite=True to replace it")
    flatbuffer = bytes(flatbuffer)
    io = _io_tensors(flatbuffer, model_name or out_dir.name)
    kernels = tflm.kernels_for(model_ops(flatbuffer))
    inputs = _test_inputs(test_inputs, io)
    if len(flatbuffer) > FLASH_MODEL_LIMIT:
        raise TflqError(f"model is {len(flatbuffer)} bytes: more than the "
                        f"{FLASH_MODEL_LIMIT} bytes of HiFive1 flash left for it")
    budget = memory_budget(flatbuffer)
    if budget.total > RAM_BYTES:
        raise TflqError(f"model {io.name!r} does not fit the FE310: {budget.describe()}. "
                        "The arena is an upper bound of the 32-bit arena (host "
                        f"interpreter: {budget.host_arena} B); shrink the largest "
                        "activations (fewer channels, smaller input, earlier pooling).")
    files = _render_files(flatbuffer, io, kernels, inputs, budget, board)
    _write_atomically(out_dir, files, overwrite)
    return out_dir


@dataclasses.dataclass(frozen=True)
class _IO:
    name: str
    input_shape: tuple
    input_zero_point: int


def _io_tensors(flatbuffer: bytes, name: str) -> _IO:
    model = fb.load(flatbuffer)
    if len(model.subgraphs) != 1:
        raise TflqError(f"model has {len(model.subgraphs)} subgraphs: the firmware runs one")
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise TflqError(f"model has {len(sg.inputs)} inputs and {len(sg.outputs)} outputs: "
                        "the firmware self-test handles one of each")
    int8 = fb.schema.TensorType.INT8
    for role, index in (("input", sg.inputs[0]), ("output", sg.outputs[0])):
        if sg.tensors[index].type != int8:
            raise TflqError(f"model {role} {sg.tensors[index].name.decode()!r} is not int8: "
                            "convert with int8 input and output (tflq.convert does)")
    inp = fb.tensor(model, sg.inputs[0])
    zp = int(inp.zero_point[0]) if inp.zero_point.size else 0
    return _IO(name, tuple(int(d) for d in inp.shape), zp)


def _test_inputs(test_inputs, io: _IO) -> np.ndarray:
    sample_shape = io.input_shape[1:] if io.input_shape[:1] == (1,) else io.input_shape
    size = int(np.prod(sample_shape))
    if test_inputs is None:
        return np.full((1, size), io.input_zero_point, np.int8)
    arr = np.asarray(test_inputs)
    if arr.dtype != np.int8:
        raise TflqError(f"test_inputs are {arr.dtype}: pass int8 (quantized) inputs")
    if arr.ndim < 1 or arr.shape[0] == 0 or arr[0].size != size:
        raise TflqError(f"test_inputs have shape {arr.shape}: expected (count, "
                        f"{', '.join(map(str, sample_shape))}) int8, count >= 1")
    return arr.reshape(arr.shape[0], size)


def _render_files(flatbuffer, io, kernels, inputs, budget, board) -> dict[str, str | bytes]:
    values = {
        "model_name": io.name,
        "board": board,
        "num_ops": str(len(kernels)),
        "resolver_calls": "\n".join(f"  TF_LITE_ENSURE_STATUS(op_resolver.{k.resolver_call}());"
                                    for k in kernels.values()),
        "arena_comment": (f"An upper bound of the 32-bit arena: the 64-bit host interpreter "
                          f"used {budget.host_arena} B. The\n// actual use is printed as "
                          "STATS arena_bytes."),
        "arena_bytes": str(budget.arena),
        "model_bytes": str(len(flatbuffer)),
        "model_array": _c_bytes(flatbuffer),
        "num_inputs": str(len(inputs)),
        "input_bytes": str(inputs.shape[1]),
        "input_shape": "x".join(map(str, io.input_shape)),
        "inputs_array": ",\n".join("  {" + ", ".join(map(str, row.tolist())) + "}"
                                   for row in inputs),
        "cxx_stdlib_includes": " ".join(_cxx_stdlib_includes()),
        "stack_bytes": str(budget.stack),
        "arch_flags": " ".join(tflm.ARCH_FLAGS),
        "cxx_flags": " ".join(tflm.CXX_FLAGS),
        "framework_opt": tflm.FRAMEWORK_OPT,
        "kernel_opt": tflm.KERNEL_OPT,
        "framework_sources": _make_list(tflm.FRAMEWORK_SOURCES),
        "kernel_sources": _make_list(tflm.kernel_sources(kernels)),
        "deps_pins": (f"flatbuffers-{tflm.FLATBUFFERS_VERSION} gemmlowp-{tflm.GEMMLOWP_COMMIT} "
                      f"ruy-{tflm.RUY_COMMIT}"),
        "ops_list": ", ".join(kernels),
        "arena_kib": f"{budget.arena / 1024:.1f}",
        "budget": budget.describe(),
    }
    files: dict[str, str | bytes] = {}
    for template in ("main.cc", "model_data.h", "model_data.cc", "test_data.h",
                     "test_data.cc", "Makefile", "README.md"):
        files[template] = _fill((_TEMPLATES / template).read_text(), values, template)
    for name in _PLATFORM_FILES:
        path = _PLATFORM / name
        if not path.is_file():
            raise TflqError(f"FE310 platform file {path} is missing: the project needs it")
        files[f"fe310/{name}"] = path.read_bytes()
    files.update(_bazel_files(values, kernels))
    return files


# The project as a Bazel workspace: template -> path in the project, and tflq's own
# Bazel pieces copied in (micro/toolchain and the rules_cc shim stay the one source).
_BAZEL_TEMPLATES = {"WORKSPACE.tmpl": "WORKSPACE", "bazelrc.tmpl": ".bazelrc",
                    "BUILD.tmpl": "BUILD", "fe310_BUILD.tmpl": "fe310/BUILD",
                    "bazel_BUILD.tmpl": "bazel/BUILD", "tflm.bzl.tmpl": "bazel/tflm.bzl"}
_BAZEL_COPIES = {_PLATFORM.parent / "toolchain": "bazel/toolchain",
                 _PLATFORM.parent.parent / "tools/bazel/rules_cc_shim": "bazel/rules_cc_shim"}


def _bazel_files(values: dict, kernels) -> dict[str, str | bytes]:
    """WORKSPACE, BUILD files and bazel/ for `bazel build --config=fe310 //:firmware`.

    The BUILD compiles the Makefile's sources with its flags; bazel/tflm.bzl provides
    them as @tflm, from $TFLQ_TFLM_ROOT or downloaded at converters/tflm.py's pins.
    """
    values = dict(
        values,
        tflm_copts=_bzl_list(tflm.CXX_FLAGS),
        bazel_framework_sources=_bzl_list(tflm.FRAMEWORK_SOURCES, brackets=False),
        bazel_kernel_sources=_bzl_list(tflm.kernel_sources(kernels), brackets=False),
        tflm_commit=tflm.TFLM_COMMIT,
        flatbuffers_version=tflm.FLATBUFFERS_VERSION,
        gemmlowp_commit=tflm.GEMMLOWP_COMMIT,
        gemmlowp_sha256=tflm.GEMMLOWP_SHA256,
        ruy_commit=tflm.RUY_COMMIT,
        ruy_sha256=tflm.RUY_SHA256,
    )
    files: dict[str, str | bytes] = {
        dest: _fill((_TEMPLATES / "bazel" / template).read_text(), values, template)
        for template, dest in _BAZEL_TEMPLATES.items()}
    for source, dest in _BAZEL_COPIES.items():
        if not source.is_dir():
            raise TflqError(f"{source} is missing: the project's Bazel build needs a copy of it")
        for path in sorted(source.rglob("*")):
            if path.is_file():
                files[f"{dest}/{path.relative_to(source).as_posix()}"] = path.read_bytes()
    return files


def _bzl_list(items, brackets: bool = True) -> str:
    lines = "\n".join(f'    "{item}",' for item in items)
    return f"[\n{lines}\n]" if brackets else lines


def _cxx_stdlib_includes() -> tuple[str, ...]:
    try:
        return toolchain.find_toolchain().cxx_isystem
    except TflqError:
        return _DEBIAN_CXX_STDLIB


def _fill(text: str, values: dict, template: str) -> str:
    def one(match):
        key = match.group(1)
        if key not in values:
            raise TflqError(f"template {template} uses unknown placeholder {{{{{key}}}}}")
        return values[key]
    return re.sub(r"\{\{(\w+)\}\}", one, text)


def _c_bytes(data: bytes, per_line: int = 12) -> str:
    return ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in data[i:i + per_line])
                      for i in range(0, len(data), per_line))


def _make_list(paths) -> str:
    return " \\\n".join(f"\t{p}" for p in paths)


def _write_atomically(out_dir: Path, files: dict, overwrite: bool) -> None:
    """Writes ``files`` into a temporary sibling of ``out_dir``, then renames it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            if not overwrite:
                raise TflqError(f"{out_dir} already exists: pass overwrite=True to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / out_dir.name)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclasses.dataclass
class _Captured:
    text: str
    error: Exception | None


def _capture_stderr(fn) -> _Captured:
    """Runs ``fn`` with file descriptor 2 redirected: TFLM's C++ code logs there."""
    sys.stderr.flush()
    saved = os.dup(2)
    error = None
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            fn()
        except (RuntimeError, ValueError) as e:
            error = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return _Captured(log.read().decode(errors="replace"), error)
