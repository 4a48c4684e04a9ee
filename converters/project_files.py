"""The files of a firmware project, rendered from templates/: the model and its inputs
as C arrays, main.cc, the Makefile, the README, tflq_project.json and the Bazel
workspace, with the FE310 platform layer and tflq's Bazel pieces copied from micro/."""
from __future__ import annotations

import dataclasses
import io as io_module
import json
import re
from pathlib import Path

import numpy as np

from tflq.converters import firmware_run, packing, tflm, toolchain
from tflq.converters.ram_budget import RAM_BYTES
from tflq.converters.micro_dir import MICRO_DIR
from tflq.errors import TflqError

_TEMPLATES = Path(__file__).with_name("templates")
_PLATFORM = toolchain.FE310_DIR
_PLATFORM_FILES = ("fe310.c", "fe310.h", "uart.c", "uart.h", "perf.h", "tflm_port.cc",
                   "fe310_sections.ld", "hifive1-reva.ld", "hifive1-revb.ld")
# Where Debian 12's libstdc++-arm-none-eabi-dev puts the C++ headers TFLM needs, for
# projects generated where no cross toolchain is installed (the Makefile can override).
_DEBIAN_CXX_STDLIB = ("/usr/include/newlib/c++/12.2.1",
                      "/usr/include/newlib/c++/12.2.1/arm-none-eabi/thumb/v7-m/nofp")


def render(flatbuffer, io, plan, inputs, budget, board,
           packed_ops=(), variant: "eval_firmware.Variant | None" = None,
           model_in_ram: bool = False) -> dict[str, str | bytes]:
    lines = packing.packing_lines(packed_ops)
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
