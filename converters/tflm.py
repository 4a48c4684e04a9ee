"""TFLite-Micro as tflq builds it for the FE310: pinned versions, sources, ops, flags.

The TFLM C++ sources are not in this repository and never are: ``source_root()``
finds them (``converters.tflm_sources``: ``TFLQ_TFLM_ROOT``, ``TFLQ_TFLM_ARCHIVE``, or
the pinned downloads). Generating a project needs none of them: the op table and the
source lists below are plain data, checked against a real tree by
``tests/test_firmware_qemu.py``.

Object files are cached outside the project, in ``$TFLQ_CACHE_DIR/tflm-obj`` (default
``${XDG_CACHE_HOME:-~/.cache}/tflq``) under a key hashing the TFLM tree's path and
commit, the pinned dependency versions, the compiler version and the flags; the
generated Makefile computes the key, so a project builds without tflq.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from tflq.converters import toolchain, tflm_sources
from tflq.errors import TflqError

ROOT_ENV = tflm_sources.ROOT_ENV
ARCHIVE_ENV = tflm_sources.ARCHIVE_ENV
COMMIT_ENV = "TFLQ_TFLM_COMMIT"
COMMIT_MARKER = tflm_sources.COMMIT_MARKER

# The firmware's TFLM and its pins (the sources tflq builds, on the device and on the host).
TFLM_COMMIT = tflm_sources.TFLM_COMMIT
FLATBUFFERS_VERSION = tflm_sources.FLATBUFFERS_VERSION
GEMMLOWP_COMMIT = tflm_sources.GEMMLOWP_COMMIT
RUY_COMMIT = tflm_sources.RUY_COMMIT
# sha256 of GitHub's zip archives, as TFLM's MODULE.bazel pins them (the Bazel rule).
GEMMLOWP_SHA256 = "43146e6f56cb5218a8caaab6b5d1601a083f1f31c06ff474a4378a7d35be9cfb"
RUY_SHA256 = "da5ec0cc07472bdb21589b0b51c8f3d7f75d2ed6230b794912adf213838d289a"

# The `tflite-micro` wheel: a host interpreter built from another TFLM commit. The
# reference only when no sources are available (converters.tflm_host says which).
HOST_WHEEL = "tflite-micro==0.dev20261023182759"
HOST_WHEEL_COMMIT = "8f6596d"

_SUBDIRS = tflm_sources.SUBDIRS

# The flags that build TFLM for rv32imac without warnings live with the toolchain.
ARCH_FLAGS = toolchain.ARCH_FLAGS
CXX_FLAGS = toolchain.CXX_FLAGS
# As TFLM's own Makefile: the framework for size, the kernels for speed.
FRAMEWORK_OPT = "-Os"
KERNEL_OPT = "-O2"

_MICRO = "tensorflow/lite/micro/"
_KERNELS = _MICRO + "kernels/"

# The framework: TFLM's MICROLITE_CC_BASE_SRCS without tests, without the host port
# (debug_log, micro_time, system_setup: micro/fe310/tflm_port.cc replaces them) and
# without test-only helpers. Every kernel also needs kernels/kernel_util.cc.
FRAMEWORK_SOURCES = tuple(_MICRO + s for s in (
    "arena_allocator/non_persistent_arena_buffer_allocator.cc",
    "arena_allocator/persistent_arena_buffer_allocator.cc",
    "arena_allocator/recording_single_arena_buffer_allocator.cc",
    "arena_allocator/single_arena_buffer_allocator.cc",
    "flatbuffer_utils.cc",
    "memory_helpers.cc",
    "memory_planner/greedy_memory_planner.cc",
    "memory_planner/linear_memory_planner.cc",
    "memory_planner/non_persistent_buffer_planner_shim.cc",
    "micro_allocation_info.cc",
    "micro_allocator.cc",
    "micro_context.cc",
    "micro_interpreter.cc",
    "micro_interpreter_context.cc",
    "micro_interpreter_graph.cc",
    "micro_log.cc",
    "micro_op_resolver.cc",
    "micro_profiler.cc",
    "micro_resource_variable.cc",
    "micro_utils.cc",
    "recording_micro_allocator.cc",
    "tflite_bridge/flatbuffer_conversions_bridge.cc",
    "tflite_bridge/micro_error_reporter.cc",
    "kernels/kernel_util.cc",
)) + (
    "tensorflow/compiler/mlir/lite/core/api/error_reporter.cc",
    "tensorflow/compiler/mlir/lite/schema/schema_utils.cc",
    "tensorflow/lite/core/api/flatbuffer_conversions.cc",
    "tensorflow/lite/core/api/tensor_utils.cc",
    "tensorflow/lite/core/c/common.cc",
    "tensorflow/lite/kernels/internal/common.cc",
    "tensorflow/lite/kernels/internal/portable_tensor_utils.cc",
    "tensorflow/lite/kernels/internal/quantization_util.cc",
    "tensorflow/lite/kernels/internal/reference/portable_tensor_utils.cc",
    "tensorflow/lite/kernels/internal/runtime_shape.cc",
    "tensorflow/lite/kernels/internal/tensor_ctypes.cc",
    "tensorflow/lite/kernels/internal/tensor_utils.cc",
    "tensorflow/lite/kernels/kernel_util.cc",
)
# Replaced by the FE310 port; listed so a check can prove they are left out.
HOST_PORT_SOURCES = tuple(_MICRO + s for s in ("debug_log.cc", "micro_time.cc", "system_setup.cc"))


@dataclasses.dataclass(frozen=True)
class Kernel:
    """How one builtin op gets into a firmware: its resolver call and its sources."""

    resolver_call: str  # MicroMutableOpResolver method, e.g. "AddFullyConnected"
    sources: tuple[str, ...]  # under tflite-micro/, besides FRAMEWORK_SOURCES


def _kernel(call: str, *names: str) -> Kernel:
    return Kernel(call, tuple(_KERNELS + n + ".cc" for n in names))


# Builtin op name (schema BuiltinOperator) -> Kernel. A kernel file's shared
# Prepare/Eval helpers live in its *_common.cc, which must come along.
OPS = {
    "ADD": _kernel("AddAdd", "add", "add_common"),
    "ARG_MAX": _kernel("AddArgMax", "arg_min_max"),
    "ARG_MIN": _kernel("AddArgMin", "arg_min_max"),
    "AVERAGE_POOL_2D": _kernel("AddAveragePool2D", "pooling", "pooling_common"),
    "BATCH_MATMUL": _kernel("AddBatchMatMul", "batch_matmul", "batch_matmul_common"),
    "CONCATENATION": _kernel("AddConcatenation", "concatenation"),
    "CONV_2D": _kernel("AddConv2D", "conv", "conv_common"),
    # Depthwise conv takes its tensor indices (kConvInputTensor, ...) from conv_common.
    "DEPTHWISE_CONV_2D": _kernel("AddDepthwiseConv2D", "depthwise_conv", "depthwise_conv_common",
                                 "conv_common"),
    "DEQUANTIZE": _kernel("AddDequantize", "dequantize", "dequantize_common"),
    "EXPAND_DIMS": _kernel("AddExpandDims", "expand_dims"),
    "FULLY_CONNECTED": _kernel("AddFullyConnected", "fully_connected", "fully_connected_common"),
    "HARD_SWISH": _kernel("AddHardSwish", "hard_swish", "hard_swish_common"),
    "LEAKY_RELU": _kernel("AddLeakyRelu", "leaky_relu", "leaky_relu_common"),
    "LOGISTIC": _kernel("AddLogistic", "logistic", "logistic_common"),
    "MAXIMUM": _kernel("AddMaximum", "maximum_minimum"),
    "MAX_POOL_2D": _kernel("AddMaxPool2D", "pooling", "pooling_common"),
    "MEAN": _kernel("AddMean", "reduce", "reduce_common"),
    "MINIMUM": _kernel("AddMinimum", "maximum_minimum"),
    "MUL": _kernel("AddMul", "mul", "mul_common"),
    "PACK": _kernel("AddPack", "pack"),
    "PAD": _kernel("AddPad", "pad", "pad_common"),
    "PADV2": _kernel("AddPadV2", "pad", "pad_common"),
    "PRELU": _kernel("AddPrelu", "prelu", "prelu_common"),
    "QUANTIZE": _kernel("AddQuantize", "quantize", "quantize_common"),
    "REDUCE_MAX": _kernel("AddReduceMax", "reduce", "reduce_common"),
    "RELU": _kernel("AddRelu", "activations", "activations_common"),
    "RELU6": _kernel("AddRelu6", "activations", "activations_common"),
    "RESHAPE": _kernel("AddReshape", "reshape", "reshape_common"),
    "RESIZE_NEAREST_NEIGHBOR": _kernel("AddResizeNearestNeighbor", "resize_nearest_neighbor"),
    "SHAPE": _kernel("AddShape", "shape"),
    "SLICE": _kernel("AddSlice", "slice"),
    "SOFTMAX": _kernel("AddSoftmax", "softmax", "softmax_common"),
    "SPLIT": _kernel("AddSplit", "split"),
    "SQUEEZE": _kernel("AddSqueeze", "squeeze"),
    "STRIDED_SLICE": _kernel("AddStridedSlice", "strided_slice", "strided_slice_common"),
    "SUB": _kernel("AddSub", "sub", "sub_common"),
    "SUM": _kernel("AddSum", "reduce", "reduce_common"),
    "TANH": _kernel("AddTanh", "tanh"),
    "TRANSPOSE": _kernel("AddTranspose", "transpose", "transpose_common"),
    "UNPACK": _kernel("AddUnpack", "unpack"),
}


def kernels_for(op_names) -> dict[str, Kernel]:
    """The Kernel of each op (sorted by name); TflqError names any op tflq cannot build."""
    ops = sorted(set(op_names))
    missing = [op for op in ops if op not in OPS]
    if missing:
        raise TflqError(
            f"the model uses op(s) {', '.join(missing)} that tflq's TFLM firmware does not "
            f"register (converters/tflm.py OPS). Supported: {', '.join(sorted(OPS))}.")
    return {op: OPS[op] for op in ops}


def kernel_sources(op_names) -> tuple[str, ...]:
    """The kernel .cc files (under tflite-micro/) the ops need, each once, sorted."""
    return tuple(sorted({s for k in kernels_for(op_names).values() for s in k.sources}))


def source_root(required: bool = True) -> Path | None:
    """The folder holding the four source trees (``tflm_sources.root``); with
    ``required=False``, None instead of TflqError when none can be had."""
    try:
        return tflm_sources.root()
    except TflqError:
        if required:
            raise
        return None


def local_commit(root: Path) -> str:
    """The TFLM commit of ``root``: ``$TFLQ_TFLM_COMMIT``, else ``root/TFLM_COMMIT``, else "unknown"."""
    value = os.environ.get(COMMIT_ENV, "").strip()
    if value:
        return value
    marker = Path(root) / COMMIT_MARKER
    words = marker.read_text().split() if marker.is_file() else []
    if words:
        return words[0]
    git = Path(root) / "tflite-micro" / ".git"
    if git.exists():
        out = subprocess.run(["git", "-C", str(git.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


def commits_note(root: Path | None, reference: str) -> str:
    """Which TFLM the firmware and the reference came from, for a mismatch message."""
    local = local_commit(root) if root is not None else "unknown"
    return f"firmware built from TFLM {local} ({root}); reference: {reference}"


def make(project_dir, *targets: str, jobs: int = 2, timeout_s: float = 1800,
         extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the generated Makefile (niced: the machine is shared); TflqError on failure."""
    root = source_root()
    env = dict(os.environ, **{ROOT_ENV: str(root)}, **(extra_env or {}))
    env.setdefault(COMMIT_ENV, local_commit(root))
    cmd = ["nice", "-n", "10", "make", f"-j{jobs}", "-C", str(project_dir), *targets]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise TflqError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
    return done
