"""Instructions per output channel of the int32 -> int8 requantization on the FE310,
measured in QEMU (-icount shift=0, minstret).

Each output channel of a tflq kernel ends in the same sequence: add the bias, requantize
(TFLM's MultiplyByQuantizedMultiplier), add the output zero point, clamp, store. The
driver runs it over 256 channels with their own multiplier and shift (loaded from RAM
as in the kernels), minus the same loop without the requantization, and checks every
output against converters/requantize.py's double_rounding.

    .venv/bin/python benchmarks/requantize_cost.py [--header micro/kernels/tflq_requantize.h]

--header: a C header defining tflq_multiply_by_quantized_multiplier (default: the
tree's). Prints one line; docs/benchmarks/requantize.md quotes it.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from tflq.converters import requantize, toolchain  # noqa: E402
from tflq.converters.micro_dir import MICRO_DIR  # noqa: E402

N = 256


def _array(name, ctype, values):
    return f"static {ctype} {name}[{len(values)}] = {{{', '.join(str(int(v)) for v in values)}}};\n"


def expected(acc, bias, mult, shift, offset) -> np.ndarray:
    """converters/requantize.py's outputs for the driver's loop."""
    return np.array([np.clip(int(requantize.double_rounding(a + b, int(m), int(s))) + offset,
                             -128, 127) for a, b, m, s in zip(acc, bias, mult, shift)])


def run_on_device(header: str, acc, bias, mult, shift, offset: int):
    """(int8 outputs, int32 requantized values, loop instructions without and with the
    requantization), on the FE310 in QEMU."""
    n = len(acc)
    driver = (
        '#include <stdio.h>\n#include "perf.h"\n#include "requantize_under_test.h"\n'
        + _array("acc", "int32_t", acc) + _array("bias", "int32_t", bias)
        + _array("mult", "int32_t", mult) + _array("shift", "int32_t", shift)
        + f"static int8_t out[{n}];\nstatic volatile int32_t offset = {offset};\n"
        "__attribute__((noinline)) static void with(int32_t off) {\n"
        f"  for (int c = 0; c < {n}; ++c) {{\n"
        "    int32_t v = tflq_multiply_by_quantized_multiplier(acc[c] + bias[c], mult[c], shift[c]) + off;\n"
        "    if (v < -128) v = -128;\n    if (v > 127) v = 127;\n    out[c] = (int8_t)v;\n  }\n}\n"
        "__attribute__((noinline)) static void without(int32_t off) {\n"
        f"  for (int c = 0; c < {n}; ++c) {{\n"
        "    int32_t v = acc[c] + bias[c] + mult[c] + shift[c] + off;\n"
        "    if (v < -128) v = -128;\n    if (v > 127) v = 127;\n    out[c] = (int8_t)v;\n  }\n}\n"
        f"static int32_t raw[{n}];\n"
        "__attribute__((noinline)) static void unclamped(void) {\n"
        f"  for (int c = 0; c < {n}; ++c)\n"
        "    raw[c] = tflq_multiply_by_quantized_multiplier(acc[c] + bias[c], mult[c], shift[c]);\n}\n"
        "int main(void) {\n  const int32_t off = offset;\n  unclamped();\n"
        "  uint32_t t0 = tflq_read_minstret32();\n  without(off);\n"
        "  uint32_t t1 = tflq_read_minstret32();\n  with(off);\n"
        "  uint32_t t2 = tflq_read_minstret32();\n"
        '  printf("BASE %lu\\nREQ %lu\\n", (unsigned long)(t1 - t0), (unsigned long)(t2 - t1));\n'
        f'  printf("OUT"); for (int c = 0; c < {n}; ++c) printf(" %d", out[c]); printf("\\n");\n'
        f'  printf("RAW"); for (int c = 0; c < {n}; ++c) printf(" %ld", (long)raw[c]); printf("\\n");\n'
        "  return 0;\n}\n")
    tc = toolchain.find_toolchain()
    fe310 = MICRO_DIR / "fe310"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "main.c").write_text(driver)
        (tmp / "requantize_under_test.h").write_text(Path(header).read_text())
        objects = []
        for source in (tmp / "main.c", fe310 / "fe310.c", fe310 / "uart.c"):
            objects.append(str(tmp / (source.name + ".o")))
            subprocess.run([tc.tool("gcc"), *tc.c_flags(semihosting=True), "-O2", "-Wall",
                            "-Werror", f"-I{tmp}", "-c", str(source), "-o", objects[-1]],
                           check=True)
        elf = tmp / "requantize.elf"
        subprocess.run([tc.tool("gcc"), *objects, *tc.link_flags("hifive1-reva"), "-o", str(elf)],
                       check=True)
        result = toolchain.run_qemu(elf, timeout_s=60)
    lines = dict(line.split(" ", 1) for line in result.uart_text.splitlines() if " " in line)
    return (np.array(lines["OUT"].split(), int), np.array(lines["RAW"].split(), np.int64),
            int(lines["BASE"]), int(lines["REQ"]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--header", default=str(MICRO_DIR / "kernels" / "tflq_requantize.h"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    acc = rng.integers(-2 ** 20, 2 ** 20, N)
    bias = rng.integers(-2 ** 12, 2 ** 12, N)
    mult = rng.integers(2 ** 30, 2 ** 31, N)
    shift = rng.integers(-12, 1, N)
    offset = -5
    got, _, base, req = run_on_device(args.header, acc, bias, mult, shift, offset)
    want = expected(acc, bias, mult, shift, offset)
    if not np.array_equal(got, want):
        raise SystemExit(f"device outputs differ from double_rounding at "
                         f"{np.flatnonzero(got != want)[:8].tolist()}")
    print(f"{args.header}: {(req - base) / N:.2f} instructions per output channel for the "
          f"requantization ({req / N:.2f} for the whole bias + requantize + offset + clamp + "
          f"store loop body, {base / N:.2f} without the requantization); {N} outputs equal "
          "converters/requantize.py")


if __name__ == "__main__":
    main()
