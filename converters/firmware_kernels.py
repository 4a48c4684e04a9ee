"""Which kernels a firmware gets: TFLM's reference ones, tflq's rv32 int8 ones, packed ops.

``kernels="tflq"`` swaps TFLM's reference FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D
sources for tflq's (micro/kernels/tflm/), the way TFLM selects its per-architecture
optimized kernels (the *_common.cc files stay TFLM's). ``kernels="reference"`` keeps
TFLM's. A model rewritten by ``converters.packing.pack_model`` also needs the
TFLQ_PACKED custom operator. The project carries tflq's sources in ``tflq_kernels/``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from tflq.converters import flatbuffer as fb
from tflq.converters import packing, tflm
from tflq.errors import TflqError
from tflq.converters.micro_dir import MICRO_DIR

KERNEL_CHOICES = ("tflq", "reference")
_MICRO_KERNELS = MICRO_DIR / "kernels"
PROJECT_DIR = "tflq_kernels"
# Builtin op -> the TFLM kernel file tflq's rv32 version replaces (same file name).
RV32_INT8 = {"FULLY_CONNECTED": "fully_connected", "CONV_2D": "conv",
             "DEPTHWISE_CONV_2D": "depthwise_conv"}
_C_CORE = ("tflq_kernels.h", "tflq_requantize.h", "layer_check.c", "layer_eval.c")
_GLUE = ("tflm/tflq_ops.h", "tflm/int8_common.cc")


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    kernels: str  # the choice asked for: "tflq" or "reference"
    builtin_ops: tuple[str, ...]  # builtin op names, sorted
    packed: bool  # the model uses TFLQ_PACKED
    rv32_int8: tuple[str, ...]  # builtin ops running tflq's rv32 int8 kernels
    tflm_sources: tuple[str, ...]  # kernel .cc files under tflite-micro/
    project_files: dict  # path in the project -> bytes (tflq_kernels/...)
    note: str  # one line for logs and the README

    @property
    def num_registrations(self) -> int:
        return len(self.builtin_ops) + int(self.packed)

    @property
    def resolver_calls(self) -> list[str]:
        calls = [f"op_resolver.{tflm.OPS[op].resolver_call}()" for op in self.builtin_ops]
        if self.packed:
            calls.append("op_resolver.AddCustom(tflq::kPackedOpName, tflq::Register_TFLQ_PACKED())")
        return calls

    @property
    def includes(self) -> list[str]:
        return [f'#include "{PROJECT_DIR}/tflq_ops.h"'] if self.packed else []

    @property
    def project_sources(self) -> list[str]:
        return sorted(p for p in self.project_files if p.endswith((".c", ".cc")))


def plan(flatbuffer: bytes, kernels: str = "tflq",
         reference_ops: frozenset = frozenset()) -> KernelPlan:
    """The kernels of ``flatbuffer``'s ops. tflq's int8 kernel for an op type is used only
    where every operator of that type is a layer it runs: int8 x int8 and within the
    limits its Prepare checks (``packing.layer_of_op``: e.g. at most 64 depthwise taps,
    no grouped convolution). Otherwise that op type keeps TFLM's reference kernel, and
    the note says which layer and why. ``reference_ops``: op types kept on TFLM's kernel
    because tflq's would not fit the RAM (``micro_project`` decides, the note says so)."""
    if kernels not in KERNEL_CHOICES:
        raise TflqError(f"unknown kernels {kernels!r}: choose one of {', '.join(KERNEL_CHOICES)}")
    model = fb.load(bytes(flatbuffer))
    names = [fb.op_name(model, op) for op in model.subgraphs[0].operators]
    packed = packing.CUSTOM_CODE in names
    builtin = tuple(sorted(set(n for n in names if n != packing.CUSTOM_CODE)))
    tflm.kernels_for(builtin)  # names any op tflq cannot build
    rv32, notes = [], []
    if kernels == "tflq":
        sg = model.subgraphs[0]
        for op_name in sorted(set(builtin) & set(RV32_INT8)):
            if op_name in reference_ops:
                notes.append(f"{op_name} keeps TFLM's reference kernel (RAM: with tflq's the "
                             "firmware would not fit 16 KiB)")
                continue
            ops = [op for op, n in zip(sg.operators, names) if n == op_name]
            refused = [(op, why) for op in ops
                       if isinstance(why := packing.layer_of_op(model, op), str)]
            if not refused:
                rv32.append(op_name)
            else:
                op, why = refused[0]
                layer = (sg.tensors[op.outputs[0]].name or b"?").decode(errors="replace")
                notes.append(f"{op_name} keeps TFLM's reference kernel ({layer!r}: {why})")
    replaced = {tflm._KERNELS + RV32_INT8[op] + ".cc" for op in rv32}
    sources = tuple(s for s in tflm.kernel_sources(builtin) if s not in replaced)
    files = {}
    if rv32 or packed:
        for name in (*_C_CORE, *_GLUE, *(f"tflm/{RV32_INT8[op]}.cc" for op in rv32),
                     *(("tflm/tflq_packed_op.cc",) if packed else ())):
            path = _MICRO_KERNELS / name
            if not path.is_file():
                raise TflqError(f"tflq kernel source {path} is missing: the project needs it")
            files[f"{PROJECT_DIR}/{Path(name).name}"] = path.read_bytes()
    parts = []
    if rv32:
        parts.append(f"tflq rv32 int8 kernels for {', '.join(rv32)}")
    if packed:
        parts.append(f"{names.count(packing.CUSTOM_CODE)} TFLQ_PACKED layer(s)")
    if not parts:
        parts.append("TFLM reference kernels")
    note = "; ".join(parts + notes)
    return KernelPlan(kernels, builtin, packed, tuple(rv32), sources, files, note)
