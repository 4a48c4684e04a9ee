"""TFLite flatbuffer -> a TFLite-Micro firmware project for the SiFive FE310.

The project (see templates/) holds the model as a const array in flash (or, with
``model_in_ram``, in .data, copied from flash at boot), a main.cc registering exactly
the model's ops and self-testing on embedded int8 inputs (or, with ``eval_images``,
measuring accuracy on images in flash), tflq's kernels (``firmware_kernels``: packed
low-bit ops and rv32 int8 kernels), the FE310 platform layer copied from micro/fe310,
a Makefile and a Bazel workspace that compile TFLM from $TFLQ_TFLM_ROOT. Generating
needs no cross toolchain.

The model is read and checked once at the entrance (``converters.model``). RAM is
budgeted before anything is written: tensor arena + stack + static data (+ the model
when it is in RAM) must fit the FE310's 16 KiB (``memory_budget``: with TFLM sources,
TFLM's own arena on a 32-bit target; without, an upper bound from the wheel). Where
tflq's kernels would not fit, ``_fitting_plan`` keeps TFLM's for some op types. The
firmware's arena array is the budget's; tests/test_firmware_qemu.py checks it on the
device.
"""
from __future__ import annotations

import dataclasses
import io as io_module
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


from tflq.converters import (firmware_kernels, firmware_run, packing, tflm, tflm_host, tflm_sources,
                        toolchain)
from tflq.converters import flatbuffer as fb
from tflq.converters import model as typed_model
from tflq.converters.micro_dir import MICRO_DIR
from tflq import outputs
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

    arena: int  # tensor arena array: the 32-bit arena, rounded up to 16
    stack: int  # reserved by the linker script
    static: int  # .data + .bss besides the arena (an upper bound)
    host_arena: int  # "ilp32": TFLM's arena_used_bytes() (the device's); "wheel": its bound
    model: int = 0  # the flatbuffer in .data (model_in_ram), rounded up to 16; 0 in flash
    # "ilp32": TFLM's arena use measured by its 32-bit host build with the firmware's
    # kernels (the device's number, exactly); "wheel": an upper bound from the 64-bit
    # tflite-micro wheel, where no TFLM sources or no 32-bit compiler are here.
    arena_source: str = "wheel"

    @property
    def total(self) -> int:
        return self.arena + self.stack + self.static + self.model

    def describe(self) -> str:
        k = lambda n: f"{n / 1024:.1f} KiB"  # noqa: E731
        relation = ">" if self.total > RAM_BYTES else "<="
        model = f" + model in RAM {k(self.model)} ({self.model} B)" if self.model else ""
        return (f"arena {k(self.arena)} + stack {k(self.stack)} + static {k(self.static)}"
                f"{model} = {k(self.total)} {relation} {RAM_BYTES // 1024} KiB RAM (FE310)")


def model_ops(flatbuffer: bytes) -> list[str]:
    """Sorted names of the builtin ops the model uses (custom ops by their custom code)."""
    model = fb.load(flatbuffer)
    return sorted({fb.op_name(model, op) for sg in model.subgraphs for op in sg.operators or []})


def arena_upper_bound(flatbuffer: bytes, name: str = "model") -> int:
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
    log = _wheel_allocations(flatbuffer, name)
    found = re.search(r"Arena allocation total (\d+) bytes", log)
    if "Failed to resize buffer" in log:
        raise TflqError(f"{name}: needs more than {_HOST_ARENA // 2**20} MiB of tensor arena on "
                        f"TFLM's host interpreter, far beyond the FE310's "
                        f"{RAM_BYTES // 1024} KiB RAM: {log.strip().splitlines()[-1]}")
    if not found:
        raise TflqError(f"{name}: TFLM's host interpreter ({tflm.HOST_WHEEL}) could not "
                        f"allocate it: {' '.join(log.split())[-500:] or 'no arena figure printed'}")
    return -(-int(found.group(1)) // 16) * 16


# The wheel's interpreter reads the model in a child process: a model that crashes TFLM
# (it checks less than tflq's entrance does) must not take the caller down with it.
_ALLOCATE = """
import sys
from tflite_micro.python.tflite_micro import runtime
data = open(sys.argv[1], "rb").read()
try:
    runtime.Interpreter.from_bytes(data, arena_size=int(sys.argv[2])).print_allocations()
except Exception as e:
    sys.stderr.write(f"{type(e).__name__}: {e}\\n")
"""


def _wheel_allocations(flatbuffer: bytes, name: str) -> str:
    """What the wheel's TFLM logs allocating ``flatbuffer`` (stderr), from a child process."""
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(flatbuffer)
        f.flush()
        try:
            done = subprocess.run([sys.executable, "-c", _ALLOCATE, f.name, str(_HOST_ARENA)],
                                  capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise TflqError(f"{name}: TFLM's host interpreter ({tflm.HOST_WHEEL}) did not "
                            "finish allocating it in 180 s") from None
    if done.returncode < 0:
        raise TflqError(f"{name}: TFLM's host interpreter ({tflm.HOST_WHEEL}) crashed (signal "
                        f"{-done.returncode}) allocating it: it is malformed in a way "
                        "tflq's checks do not catch")
    return done.stdout + done.stderr


def stack_reservation(num_ops: int) -> int:
    """Bytes of stack to reserve for a firmware registering ``num_ops`` ops (x256, >= 2 KiB)."""
    need = STACK_BASE_BYTES + RESOLVER_BYTES[0] + RESOLVER_BYTES[1] * num_ops + INTERPRETER_BYTES
    return max(2048, -(-need // 256) * 256)


# Beyond the smallest arena that works on the ILP32 host build: one TfLiteTensor and its
# quantization (Prepare's temporaries), in case a kernel's temporaries differ by input.
ARENA_MARGIN = 64
# Per op running tflq's rv32 int8 kernel, beyond the reference kernel's arena use: the
# OpData's extra pointer (rounded up).
RV32_OPDATA_BYTES = 16


def memory_budget(flatbuffer: bytes, firmware_flatbuffer: bytes | None = None,
                  plan: "firmware_kernels.KernelPlan | None" = None,
                  name: str = "model") -> MemoryBudget:
    """RAM of the firmware running ``firmware_flatbuffer`` (default: ``flatbuffer``) with
    ``plan``'s kernels (default: TFLM's reference ones).

    With TFLM sources here (``tflm_sources.local_root``) and a 32-bit host compiler, the
    arena comes from TFLM's ILP32 host build of the firmware's own kernels on the
    firmware's own flatbuffer: ``host_arena`` is its arena_used_bytes() (the device's
    figure, byte for byte) and the arena array the smallest that works plus
    ``ARENA_MARGIN`` (``tflm_host.ArenaUse``): a little more, which Prepare's temporaries
    need (an arena of just arena_used_bytes() makes TFLM fail or trap). Otherwise it is
    an upper bound: the wheel's 64-bit figure for the int8 ``flatbuffer`` (which cannot
    load TFLQ_PACKED ops), plus what tflq's kernels add on top (packed ops' scratch; per
    rv32 int8 op its bias + offset array and CONV_2D patch).
    """
    firmware_flatbuffer = flatbuffer if firmware_flatbuffer is None else firmware_flatbuffer
    plan = firmware_kernels.plan(firmware_flatbuffer, "reference") if plan is None else plan
    stack = stack_reservation(plan.num_registrations)
    root = tflm_sources.local_root()
    if root is not None and tflm_host.ilp32_available():
        use = tflm_host.arena_bytes_ilp32(firmware_flatbuffer, plan, root, name)
        return MemoryBudget(arena=-(-(use.needed + ARENA_MARGIN) // 16) * 16, stack=stack,
                            static=STATIC_BYTES,
                            host_arena=use.used, arena_source="ilp32")
    host = arena_upper_bound(flatbuffer, name)
    extra = 0
    if plan.packed:
        extra += packing.model_scratch_bytes(firmware_flatbuffer)
    model = fb.load(bytes(firmware_flatbuffer))
    for op in model.subgraphs[0].operators:
        if fb.op_name(model, op) in plan.rv32_int8:
            layer = packing.layer_of_op(model, op)
            if isinstance(layer, packing.Layer):
                extra += (4 * layer.out_channels + RV32_OPDATA_BYTES
                          + packing.scratch_bytes(layer, None))
    return MemoryBudget(arena=-(-(host + extra) // 16) * 16, stack=stack, static=STATIC_BYTES,
                        host_arena=host, arena_source="wheel")


def _fitting_plan(flatbuffer: bytes, int8_flatbuffer: bytes, kernels: str, name: str,
                  fits) -> tuple["firmware_kernels.KernelPlan", MemoryBudget]:
    """The fastest kernel plan whose firmware ``fits`` (budget -> bool): tflq's kernels
    where they were asked for, then TFLM's for one op type more at a time (tflq's keep
    per-channel arrays and patches in the arena). The first plan's budget if none fits."""
    import itertools

    plan = firmware_kernels.plan(flatbuffer, kernels)
    budget = memory_budget(int8_flatbuffer, flatbuffer, plan, name)
    if fits(budget) or not plan.rv32_int8:
        return plan, budget
    types = plan.rv32_int8
    for count in range(1, len(types) + 1):
        for keep in itertools.combinations(types, count):
            candidate = firmware_kernels.plan(flatbuffer, kernels, reference_ops=frozenset(keep))
            candidate_budget = memory_budget(int8_flatbuffer, flatbuffer, candidate, name)
            if fits(candidate_budget):
                return candidate, candidate_budget
    return plan, budget


@dataclasses.dataclass(frozen=True, eq=False)
class Project(os.PathLike):
    """What ``generate_project`` wrote and every decision behind it. It is also the
    project's path (``os.fspath(project)``, ``project / "Makefile"``)."""

    path: Path
    model_name: str
    flatbuffer: bytes  # the firmware's own (packed, when any layer was)
    plan: "firmware_kernels.KernelPlan"  # the kernel of each op type and why (plan.note)
    packing: tuple  # packing.PackedOp per FC / conv layer: packed how, or why not
    budget: MemoryBudget
    test_inputs: "np.ndarray | None"  # the self-test's embedded inputs (None: accuracy firmware)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other

    def __getattr__(self, attribute):  # the rest of Path's interface: exists(), rglob(), ...
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self.path, attribute)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def packing_lines(self) -> list[str]:
        return packing_lines(self.packing)


def generate_project(flatbuffer: bytes, out_dir, target: str = "fe310",
                     board: str = "hifive1-revb", test_inputs=None,
                     overwrite: bool = False, model_name: str | None = None,
                     pack: bool | None = None, kernels: str = "tflq",
                     model_in_ram: bool = False, eval_images=None, eval_labels=None,
                     feature: str | None = None) -> Project:
    """Writes a TFLM firmware project for ``flatbuffer`` into ``out_dir``; returns the
    ``Project`` (its path, and every decision: kernels, packing, budget).

    ``pack``: rewrite FC / CONV_2D / DEPTHWISE_CONV_2D layers whose weights take <= 4
    bits into TFLQ_PACKED ops (``converters.packing``); None (default) packs when at
    least one layer is eligible, False never. ``kernels``: "tflq" runs the remaining
    int8 FC / CONV_2D / DEPTHWISE_CONV_2D on tflq's rv32 kernels, "reference" on TFLM's.
    Which layers were packed, and why the others were not, is logged and written
    into the project's README.

    ``test_inputs``: int8 array (count, *input_shape) or (count, input_size) embedded for
    the self-test; None embeds one input of zero points. ``model_name`` (for comments and
    messages) defaults to the folder's name. Raises TflqError, writing
    nothing, if the model does not fit 16 KiB of RAM or ``out_dir`` exists and
    ``overwrite`` is False.

    ``model_in_ram``: place the flatbuffer in .data (crt0 copies it from flash at boot)
    instead of flash; its bytes then count against the 16 KiB RAM budget.

    Accuracy firmware (``eval_images`` given; see ``_eval_variant``): main.cc comes from
    templates/main_eval.cc and test_data.{h,cc} hold ``eval_images`` and ``eval_labels``
    in flash. ``feature`` defaults to the one the model's ``tflq_feature`` metadata
    declares (``tflq.convert`` of a model with a ProjectionProfiles first layer). With
    ``feature="projection_profiles"`` the images are raw uint8
    (count, H, W) and the firmware computes the model's int8 input with
    micro/features/projection_profiles.c (bins = input size / 4); with ``feature=None``
    they are the model's int8 inputs. It prints ``PRED k label argmax`` per image,
    ``ACCURACY correct/total`` and STATS; ``test_inputs`` is then unused.
    """
    out_dir = Path(out_dir)
    if target != "fe310":
        raise TflqError(f"unknown target {target!r}: tflq generates firmware for 'fe310' only")
    if board not in BOARDS:
        raise TflqError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    outputs.check_free(str(out_dir), overwrite, flag="overwrite=True")
    flatbuffer = bytes(flatbuffer)
    # The entrance: a valid model (one line if not), then ops and types, then the fit,
    # then the inputs.
    checked = typed_model.read(flatbuffer, model_name or out_dir.name)
    typed_model.check_firmware_support(checked, tflm.OPS, (packing.CUSTOM_CODE,))
    io = _io_tensors(checked)
    int8_flatbuffer, packed_ops = flatbuffer, []
    if pack is not False:
        candidate, packed_ops = packing.pack_model(flatbuffer)
        if any(p.encoding for p in packed_ops):
            flatbuffer = candidate
    variant = None
    if eval_images is not None:
        if feature is None and checked.feature is not None:  # the model says what it takes
            feature = checked.feature["feature"]
        variant = _eval_variant(int8_flatbuffer, io, eval_images, eval_labels, feature,
                                checked.feature)
        test_inputs = None
    elif feature is not None or eval_labels is not None:
        raise TflqError("feature and eval_labels need eval_images (the accuracy firmware)")
    flash_data = len(flatbuffer) + (variant.flash_bytes if variant else 0)
    if flash_data > FLASH_MODEL_LIMIT:
        raise TflqError(f"model is {len(flatbuffer)} bytes"
                        + (f" and the eval data {variant.flash_bytes}" if variant else "")
                        + f": more than the {FLASH_MODEL_LIMIT} bytes of HiFive1 flash "
                        + ("left for them" if variant else "left for it"))
    def placed(b: MemoryBudget) -> MemoryBudget:
        return _placement_budget(b, len(flatbuffer), model_in_ram,
                                 variant.static_bytes if variant else 0)

    plan, budget = _fitting_plan(flatbuffer, int8_flatbuffer, kernels, io.name,
                                 lambda b: placed(b).total <= RAM_BYTES)
    budget = placed(budget)
    if variant is not None:
        plan = dataclasses.replace(plan, project_files={**plan.project_files,
                                                        **variant.kernel_files})
    if budget.total > RAM_BYTES and model_in_ram:
        raise TflqError(_model_in_ram_error(io.name, budget, len(flatbuffer)))
    if budget.total > RAM_BYTES:
        measured = ("TFLM's own arena use on a 32-bit target" if budget.arena_source == "ilp32"
                    else f"an upper bound (64-bit wheel: {budget.host_arena} B)")
        raise TflqError(f"model {io.name!r} does not fit the FE310 with any kernel choice: "
                        f"{budget.describe()}. The arena is {measured}; shrink the largest "
                        "activations (fewer channels, smaller input, earlier pooling).")
    inputs = _test_inputs(test_inputs, io)
    files = _render_files(flatbuffer, io, plan, inputs, budget, board, packed_ops,
                          variant=variant, model_in_ram=model_in_ram)
    _write_atomically(out_dir, files, overwrite)
    return Project(out_dir, io.name, flatbuffer, plan, tuple(packed_ops), budget,
                   None if variant is not None else inputs)


def _placement_budget(budget: MemoryBudget, model_bytes: int, model_in_ram: bool,
                      extra_static: int = 0) -> MemoryBudget:
    """``budget`` with the model's bytes in RAM (model_in_ram) and extra static data."""
    return dataclasses.replace(budget, static=budget.static + extra_static,
                               model=-(-model_bytes // 16) * 16 if model_in_ram else 0)


def _model_in_ram_error(name: str, budget: MemoryBudget, model_bytes: int) -> str:
    in_flash = budget.total - budget.model
    return (f"model {name!r} does not fit the FE310 with the model in RAM: {budget.describe()}. "
            f"With model_in_ram=True the flatbuffer's {model_bytes} B are copied into RAM "
            f"(.data) and count against the {RAM_BYTES} B; the rest of the firmware "
            f"needs {in_flash} B, "
            + (f"which leaves {RAM_BYTES - in_flash} B for the model. Keep the model in "
               "flash (model_in_ram=False) or shrink it." if in_flash <= RAM_BYTES
               else "more than the RAM even with the model in flash."))


# The accuracy firmware: templates/main_eval.cc, with the images in test_data.{h,cc}.
FEATURES = ("projection_profiles",)
_FEATURE_DIR = MICRO_DIR / "features"


@dataclasses.dataclass(frozen=True)
class _Variant:
    templates: dict  # project file -> template it is rendered from instead
    values: dict  # extra template values
    files: dict  # project files written instead of the rendered ones
    kernel_files: dict  # extra C sources under tflq_kernels/ (Makefile and Bazel build them)
    flash_bytes: int  # const data in flash besides the model
    static_bytes: int  # .bss the variant adds


def _eval_variant(flatbuffer: bytes, io: _IO, eval_images, eval_labels,
                  feature: str | None, declared: dict | None) -> _Variant:
    """main_eval.cc + the images, labels and feature parameters in test_data.{h,cc}."""
    from tflq.converters import features as host_features
    from tflq.converters.tflite import io_quantization

    if feature is not None and feature not in FEATURES:
        raise TflqError(f"unknown feature {feature!r}: choose one of {', '.join(FEATURES)} "
                        "or None (eval_images are the model's int8 inputs)")
    images = np.asarray(eval_images)
    labels = np.asarray(eval_labels) if eval_labels is not None else None
    input_size = int(np.prod(io.input_shape[1:] if io.input_shape[:1] == (1,) else io.input_shape))
    if labels is None or labels.ndim != 1 or len(labels) != len(images) or len(images) == 0:
        raise TflqError(f"eval_labels must be one integer label per eval image: got "
                        f"{None if labels is None else labels.shape} for {images.shape} images")
    if labels.min() < 0 or labels.max() > 255:
        raise TflqError("eval_labels must be in 0..255")
    kernel_files, static_bytes, lines = {}, 0, []
    if feature == "projection_profiles":
        if images.dtype != np.uint8 or images.ndim != 3:
            raise TflqError(f"eval_images are {images.dtype} {images.shape}: projection_profiles "
                            "takes raw uint8 images (count, height, width)")
        height, width = images.shape[1:]
        bins = input_size // 4
        if 4 * bins != input_size or bins > min(height, width):
            raise TflqError(f"model input has {input_size} values: projection_profiles gives "
                            f"4 * bins, bins <= {min(height, width)} for {height}x{width} images")
        if declared is not None and (height, width) != (declared["height"], declared["width"]):
            raise TflqError(f"eval_images are {height}x{width}; the model takes the projection "
                            f"profiles of {declared['height']}x{declared['width']} images "
                            "(its tflq_feature metadata)")
        in_q, _ = io_quantization(flatbuffer)
        params = host_features.profile_multipliers(height, width, bins, float(in_q.scale))
        pixel_bytes = height * width
        lines += ["#define TFLQ_EVAL_PROFILES 1",
                  f"constexpr int kImageHeight = {height};",
                  f"constexpr int kImageWidth = {width};",
                  f"constexpr int kProfileBins = {bins};",
                  f"constexpr int32_t kFeatureZeroPoint = {int(in_q.zero_point)};",
                  "extern const int32_t g_feature_multiplier[4 * kProfileBins];",
                  "extern const int32_t g_feature_shift[4 * kProfileBins];"]
        arrays = (f"const int32_t g_feature_multiplier[4 * kProfileBins] = {{"
                  f"{', '.join(str(int(m)) for m, _ in params)}}};\n"
                  f"const int32_t g_feature_shift[4 * kProfileBins] = {{"
                  f"{', '.join(str(int(s)) for _, s in params)}}};\n")
        for name in ("projection_profiles.c", "projection_profiles.h"):
            kernel_files[f"tflq_kernels/{name}"] = (_FEATURE_DIR / name).read_bytes()
        static_bytes = 4 * 4 * bins  # the int32 sums scratch (static in main_eval.cc)
        element = "uint8_t"
    else:
        if images.dtype != np.int8 or images[0].size != input_size:
            raise TflqError(f"eval_images are {images.dtype} {images.shape}: without a feature "
                            f"they are the model's int8 inputs ({input_size} values each)")
        pixel_bytes, arrays, element = input_size, "", "int8_t"
    rows = images.reshape(len(images), -1)
    header = "\n".join([
        "// Generated by tflq: images and labels for the accuracy firmware (main.cc).",
        "#ifndef TFLQ_TEST_DATA_H_", "#define TFLQ_TEST_DATA_H_", "",
        "#include <stddef.h>", "#include <stdint.h>", "",
        f"constexpr int kNumEvalImages = {len(rows)};",
        f"constexpr size_t kEvalImageBytes = {pixel_bytes};",
        *lines,
        f"extern const {element} g_eval_images[kNumEvalImages][kEvalImageBytes];",
        "extern const uint8_t g_eval_labels[kNumEvalImages];", "",
        "#endif  // TFLQ_TEST_DATA_H_", ""])
    body = "\n".join([
        f"// Generated by tflq: {len(rows)} eval image(s) ({feature or 'model inputs'}) and "
        "labels, in flash.",
        '#include "test_data.h"', "",
        arrays + f"const {element} g_eval_images[kNumEvalImages][kEvalImageBytes] = {{",
        ",\n".join("{" + ",".join(map(str, r.tolist())) + "}" for r in rows),
        "};",
        "const uint8_t g_eval_labels[kNumEvalImages] = {",
        ",".join(str(int(v)) for v in labels),
        "};", ""])
    note = (f" Not in this build: it is an **accuracy firmware** (`main.cc` from "
            f"templates/main_eval.cc) over {len(rows)} eval images in flash (`test_data.cc`, "
            f"feature: {feature or 'none, the images are the int8 inputs'}); it prints "
            "`PRED <k> <label> <argmax>` per image, `ACCURACY <correct>/<total>`"
            + (", `FEATURES instructions_per_image=<n>`" if feature else "") + " and `STATS`.")
    return _Variant(templates={"main.cc": "main_eval.cc"},
                    values={"eval_feature": feature or "none", "eval_note": note},
                    files={"test_data.h": header, "test_data.cc": body},
                    kernel_files=kernel_files,
                    flash_bytes=rows.size + len(rows) + 2 * static_bytes,
                    static_bytes=static_bytes)


@dataclasses.dataclass(frozen=True)
class _IO:
    name: str
    input_shape: tuple
    input_zero_point: int


def _io_tensors(model: typed_model.Model) -> _IO:
    """The input's shape and zero point (``check_firmware_support`` passed: one int8 each)."""
    inp = model.tensors[model.inputs[0]]
    return _IO(model.name, inp.shape, inp.zero_point[0] if inp.zero_point else 0)


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


def packing_lines(packed_ops) -> list[str]:
    """One line per FC / CONV_2D / DEPTHWISE_CONV_2D: packed how, or why it stays int8."""
    return [f"{p.op} {p.output!r}: " + (
        f"packed as {p.encoding}, {p.int8_bytes} -> {p.packed_bytes} bytes" if p.encoding
        else f"stays int8 ({p.reason})") for p in packed_ops]


def _render_files(flatbuffer, io, plan, inputs, budget, board,
                  packed_ops=(), variant: _Variant | None = None,
                  model_in_ram: bool = False) -> dict[str, str | bytes]:
    lines = packing_lines(packed_ops)
    values = {
        "model_name": io.name,
        "board": board,
        "num_ops": str(plan.num_registrations),
        "resolver_calls": "\n".join(f"  TF_LITE_ENSURE_STATUS({call});"
                                    for call in plan.resolver_calls),
        "kernel_includes": "\n".join(plan.includes),
        "kernels_note": plan.note,
        "packing_report": "\n".join(f"- {line}" for line in lines) or "- no FC / conv layers",
        "tflq_kernel_sources": _make_list(plan.project_sources),
        "arena_comment": (f"TFLM's ILP32 host build with these kernels: {budget.host_arena} B "
                          "used, this much\n// needed with Prepare's temporaries. The device "
                          "prints its use as STATS arena_bytes."
                          if budget.arena_source == "ilp32" else
                          f"An upper bound of the 32-bit arena: the 64-bit host interpreter "
                          f"used {budget.host_arena} B. The\n// actual use is printed as "
                          "STATS arena_bytes."),
        "arena_note": ("The arena is TFLM's own on a 32-bit target (its ILP32 host build "
                       f"with these kernels: {budget.host_arena} B used), plus what Prepare's "
                       "temporaries need; the firmware prints its use."
                       if budget.arena_source == "ilp32" else
                       "The arena is an upper bound of what the 32-bit target uses; the "
                       "firmware prints the real figure."),
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
        "kernel_sources": _make_list(plan.tflm_sources),
        "deps_pins": (f"flatbuffers-{tflm.FLATBUFFERS_VERSION} gemmlowp-{tflm.GEMMLOWP_COMMIT} "
                      f"ruy-{tflm.RUY_COMMIT}"),
        "ops_list": ", ".join([*plan.builtin_ops, *([packing.CUSTOM_CODE] if plan.packed else [])]),
        "arena_kib": f"{budget.arena / 1024:.1f}",
        "budget": budget.describe(),
        **_placement_values(model_in_ram),
        **(variant.values if variant else {}),
    }
    files: dict[str, str | bytes] = {}
    for template in ("main.cc", "model_data.h", "model_data.cc", "test_data.h",
                     "test_data.cc", "Makefile", "README.md"):
        source = variant.templates.get(template, template) if variant else template
        files[template] = _fill((_TEMPLATES / source).read_text(), values, source)
    if variant:
        files.update(variant.files)
    for name in _PLATFORM_FILES:
        path = _PLATFORM / name
        if not path.is_file():
            raise TflqError(f"FE310 platform file {path} is missing: the project needs it")
        files[f"fe310/{name}"] = path.read_bytes()
    files.update(plan.project_files)
    files.update(_bazel_files(values, plan))
    # The flatbuffer the firmware embeds, and the decisions it was built with: what the
    # host reference needs to run the same model with the same kernels.
    files[firmware_run.MODEL_FILE] = bytes(flatbuffer)
    if variant is None:  # the self-test's inputs, as the firmware embeds them
        files[firmware_run.INPUTS_FILE] = _npy_bytes(inputs)
    files[firmware_run.PROJECT_JSON] = json.dumps({
        "model_name": io.name, "board": board, "kernels": plan.kernels,
        "kernels_note": plan.note, "builtin_ops": list(plan.builtin_ops),
        "packed": plan.packed, "rv32_int8": list(plan.rv32_int8),
        "packing": lines, "model_in_ram": model_in_ram,
        "accuracy_firmware": variant is not None, "num_test_inputs": int(len(inputs)),
        "budget": dataclasses.asdict(budget), "ram_bytes": RAM_BYTES,
        "tflm_commit": tflm.TFLM_COMMIT}, indent=2) + "\n"
    return files


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io_module.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _placement_values(model_in_ram: bool) -> dict:
    """Template values placing the model: flash (const, .rodata) or RAM (.data)."""
    if not model_in_ram:
        return {"model_placement": "in flash", "model_placement_title": "In flash",
                "model_section": "", "eval_note": ""}
    # A section named .data.*: the linker script puts it in .data, which crt0 copies
    # from flash to RAM at boot; the array stays const to TFLM.
    where = "RAM (.data, copied from flash at boot by crt0)"
    return {"model_placement": f"in {where}", "model_placement_title": f"In {where}",
            "model_section": ' __attribute__((section(".data.tflq_model")))', "eval_note": ""}


# The project as a Bazel workspace: template -> path in the project, and tflq's own
# Bazel pieces copied in (micro/toolchain and the rules_cc shim stay the one source).
_BAZEL_TEMPLATES = {"WORKSPACE.tmpl": "WORKSPACE", "bazelrc.tmpl": ".bazelrc",
                    "BUILD.tmpl": "BUILD", "fe310_BUILD.tmpl": "fe310/BUILD",
                    "bazel_BUILD.tmpl": "bazel/BUILD", "tflm.bzl.tmpl": "bazel/tflm.bzl"}
_BAZEL_COPIES = {MICRO_DIR / "toolchain": "bazel/toolchain",
                 MICRO_DIR / "bazel/rules_cc_shim": "bazel/rules_cc_shim"}


def _bazel_files(values: dict, plan) -> dict[str, str | bytes]:
    """WORKSPACE, BUILD files and bazel/ for `bazel build --config=fe310 //:firmware`.

    The BUILD compiles the Makefile's sources with its flags; bazel/tflm.bzl provides
    them as @tflm, from $TFLQ_TFLM_ROOT or downloaded at converters/tflm.py's pins.
    """
    values = dict(
        values,
        tflm_copts=_bzl_list(tflm.CXX_FLAGS),
        bazel_framework_sources=_bzl_list(tflm.FRAMEWORK_SOURCES, brackets=False),
        bazel_kernel_sources=_bzl_list(plan.tflm_sources, brackets=False),
        bazel_tflq_c_sources=_bzl_list([p for p in plan.project_sources if p.endswith(".c")],
                                       brackets=False),
        bazel_tflq_cc_sources=_bzl_list([p for p in plan.project_sources if p.endswith(".cc")],
                                        brackets=False),
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
    with outputs.atomic_dir(str(out_dir), overwrite, flag="overwrite=True") as tmp:
        for rel, content in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
