"""The firmware's RAM: tensor arena + stack + static data (+ the model, when it is in
RAM) against the FE310's 16 KiB, and the kernel plan that fits it.

``memory_budget``: with TFLM sources and a 32-bit host compiler, TFLM's own arena use
on an ILP32 build of the firmware's kernels (the device's figure); without, an upper
bound from the tflite-micro wheel. ``fitting_plan``: where tflq's kernels would not
fit, TFLM's for some op types. tests/test_firmware_qemu.py checks the budget on the
device.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import subprocess
import sys
import tempfile

from tflq.converters import firmware_kernels, packing, tflm, tflm_host, tflm_sources
from tflq.converters import flatbuffer as fb
from tflq.errors import TflqError

RAM_BYTES = 16 * 1024
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
    load TFLQ_PACKED ops), plus what tflq's kernels add on top (packed ops' scratch and
    weights copied into RAM; per rv32 int8 op its bias + offset array and CONV_2D patch).
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
        extra += (packing.model_scratch_bytes(firmware_flatbuffer)
                  + packing.model_staged_bytes(firmware_flatbuffer))
    model = fb.load(bytes(firmware_flatbuffer))
    for op in model.subgraphs[0].operators:
        if fb.op_name(model, op) in plan.rv32_int8:
            layer = packing.layer_of_op(model, op)
            if isinstance(layer, packing.Layer):
                extra += (4 * layer.out_channels + RV32_OPDATA_BYTES
                          + packing.scratch_bytes(layer, None))
    return MemoryBudget(arena=-(-(host + extra) // 16) * 16, stack=stack, static=STATIC_BYTES,
                        host_arena=host, arena_source="wheel")


def fitting_plan(flatbuffer: bytes, int8_flatbuffer: bytes, kernels: str, name: str,
                  fits) -> tuple["firmware_kernels.KernelPlan", MemoryBudget]:
    """The fastest kernel plan whose firmware ``fits`` (budget -> bool): tflq's kernels
    where they were asked for, then TFLM's for one op type more at a time (tflq's keep
    per-channel arrays and patches in the arena). The first plan's budget if none fits."""
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


def with_placement(budget: MemoryBudget, model_bytes: int, model_in_ram: bool,
                      extra_static: int = 0) -> MemoryBudget:
    """``budget`` with the model's bytes in RAM (model_in_ram) and extra static data."""
    return dataclasses.replace(budget, static=budget.static + extra_static,
                               model=-(-model_bytes // 16) * 16 if model_in_ram else 0)


def model_in_ram_error(name: str, budget: MemoryBudget, model_bytes: int) -> str:
    in_flash = budget.total - budget.model
    return (f"model {name!r} does not fit the FE310 with the model in RAM: {budget.describe()}. "
            f"With model_in_ram=True the flatbuffer's {model_bytes} B are copied into RAM "
            f"(.data) and count against the {RAM_BYTES} B; the rest of the firmware "
            f"needs {in_flash} B, "
            + (f"which leaves {RAM_BYTES - in_flash} B for the model. Keep the model in "
               "flash (model_in_ram=False) or shrink it." if in_flash <= RAM_BYTES
               else "more than the RAM even with the model in flash."))
