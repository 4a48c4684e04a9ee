"""micro/kernels (tflq's C layer kernels) built for the host and for rv32imac.

``HostKernels`` compiles them with the system C compiler into a shared library and
calls them through ctypes, so tests compare them with ``converters.packed_format.reference``
without any cross toolchain. ``rv32_program`` links a C driver with them and the
FE310 platform layer into an ELF for QEMU (tests and the kernel benchmark).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tflq.converters import packed_format, toolchain
from tflq.converters.micro_dir import MICRO_DIR
from tflq.errors import TflqError

KERNELS_DIR = MICRO_DIR / "kernels"
C_SOURCES = tuple(KERNELS_DIR / n for n in ("layer_check.c", "layer_eval.c"))
_LAYER_BYTES = 512  # >= sizeof(tflq_layer_t) on any host


class HostKernels:
    """The C kernels in a host shared library (built into ``build_dir``)."""

    def __init__(self, build_dir):
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if cc is None:
            raise TflqError("no host C compiler (cc/gcc) to build micro/kernels: "
                            "apt-get install gcc")
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in
                                         (*C_SOURCES, KERNELS_DIR / "tflq_kernels.h",
                                          KERNELS_DIR / "tflq_requantize.h")))
        lib = Path(build_dir) / f"libtflq_kernels-{digest.hexdigest()[:12]}.so"
        if not lib.exists():
            lib.parent.mkdir(parents=True, exist_ok=True)
            tmp = lib.with_suffix(".tmp")
            subprocess.run([cc, "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared",
                            "-fPIC", *map(str, C_SOURCES), "-o", str(tmp)], check=True)
            os.replace(tmp, lib)
        self._lib = ctypes.CDLL(str(lib))
        self._lib.tflq_layer_parse.restype = ctypes.c_int
        self._lib.tflq_scratch_bytes.restype = ctypes.c_size_t
        self._lib.tflq_requantize.restype = ctypes.c_int32
        self._lib.tflq_requantize.argtypes = [ctypes.c_int32] * 3

    def parse(self, blob: bytes, stage_channels: int = 0):
        """(layer struct, blob buffer) or raises TflqError with the C message;
        ``stage_channels`` as TFLQ_PACKED's custom options set it."""
        buf = ctypes.create_string_buffer(bytes(blob), len(blob))  # malloc: aligned
        layer = ctypes.create_string_buffer(_LAYER_BYTES)
        err = ctypes.create_string_buffer(256)
        if self._lib.tflq_layer_parse(buf, ctypes.c_size_t(len(blob)), layer, err, 256) != 0:
            raise TflqError(err.value.decode())
        if stage_channels and self._lib.tflq_layer_stage(layer, stage_channels, err, 256) != 0:
            raise TflqError(err.value.decode())
        return layer, buf

    def eval(self, blob: bytes, x: np.ndarray, out_size: int, stage_channels: int = 0
             ) -> np.ndarray:
        """Runs the blob's layer on ``x`` (batch, input bytes: int8 values or packed codes)
        -> (batch, out_size bytes) as int8."""
        layer, buf = self.parse(blob, stage_channels)
        x = np.ascontiguousarray(x).view(np.int8)
        out = np.zeros((x.shape[0], out_size), np.int8)
        scratch = np.zeros(self._lib.tflq_scratch_bytes(layer) // 4 + 1, np.int32)
        self._lib.tflq_layer_eval(layer, x.ctypes, ctypes.c_int(x.shape[0]), out.ctypes,
                                  scratch.ctypes)
        del buf
        return out

    def run(self, blob: bytes, x: np.ndarray, stage_channels: int = 0) -> np.ndarray:
        """The layer on int8 values ``x`` (batch, ...) -> int8 values (batch, outputs):
        packs the input and unpacks the output as the blob's in_packed / out_packed say."""
        layer, _ = packed_format.unpack(blob)
        x = np.asarray(x, np.int8).reshape(len(x), -1)
        if layer.in_packed:
            x = packed_format.pack_activations(x, layer.in_packed)
        values = int(np.prod(layer.output_hw)) * layer.out_channels
        out = self.eval(blob, x, packed_format.activation_bytes(values, layer.out_packed),
                        stage_channels)
        if layer.out_packed:
            out = packed_format.unpack_activations(out.view(np.uint8), layer.out_packed, values)
        return out

    def scratch_bytes(self, blob: bytes, stage_channels: int = 0) -> int:
        layer, _ = self.parse(blob, stage_channels)
        return int(self._lib.tflq_scratch_bytes(layer))

    def requantize(self, acc: int, multiplier: int, shift: int) -> int:
        return int(self._lib.tflq_requantize(acc, multiplier, shift))


def c_array(name: str, ctype: str, values, align: int = 4) -> str:
    values = np.asarray(values).ravel()
    body = ",".join(str(int(v)) for v in values)
    return f"static const {ctype} {name}[{len(values)}] __attribute__((aligned({align}))) = {{{body}}};\n"


def rv32_program(driver_c: str, out_dir, name: str = "kernels", opt: str = "-O2") -> Path:
    """Compiles ``driver_c`` (source text) with micro/kernels and the FE310 platform layer
    into ``out_dir/name.elf`` (Rev A link, semihosting exit) for QEMU."""
    tc = toolchain.find_toolchain()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    driver = out_dir / f"{name}_main.c"
    driver.write_text(driver_c)
    sources = [driver, *C_SOURCES, toolchain.FE310_DIR / "fe310.c", toolchain.FE310_DIR / "uart.c"]
    objects = []
    for source in sources:
        obj = out_dir / f"{name}_{source.stem}.o"
        subprocess.run([tc.tool("gcc"), *tc.c_flags(semihosting=True), opt, "-Wall", "-Werror",
                        f"-I{KERNELS_DIR}", "-c", str(source), "-o", str(obj)], check=True)
        objects.append(str(obj))
    elf = out_dir / f"{name}.elf"
    subprocess.run([tc.tool("gcc"), *objects, *tc.link_flags("hifive1-reva"), "-o", str(elf)],
                   check=True)
    return elf
