"""The RISC-V toolchain and QEMU for the FE310: find them, give their flags, run firmware.

Debian 12 packages everything needed (``riscv64-unknown-elf-gcc`` 12.2 with the
rv32imac/ilp32 multilib, picolibc, ``qemu-system-riscv32``) except C++ standard
headers for this target: TFLM needs only header-only parts of the C++ library, and
the arm-none-eabi ones from ``libstdc++-arm-none-eabi-dev`` serve. A toolchain that
ships its own headers needs none.

The platform layer the flags refer to is ``micro/fe310`` (``FE310_DIR``).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tflq.converters.micro_dir import MICRO_DIR
from tflq.errors import TflqError

FE310_DIR = MICRO_DIR / "fe310"
PLATFORM_C_SOURCES = ("fe310.c", "uart.c")
PLATFORM_CXX_SOURCES = ("tflm_port.cc",)
BOARDS = {"hifive1-reva": "hifive1-reva.ld", "hifive1-revb": "hifive1-revb.ld"}

PREFIX = "riscv64-unknown-elf-"
ARCH_FLAGS = ("-march=rv32imac", "-mabi=ilp32", "-mcmodel=medlow")
# These built all of TFLM for rv32imac with no warnings.
CXX_FLAGS = (
    "-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics",
    "-fno-use-cxa-atexit", "-ffunction-sections", "-fdata-sections", "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables", "-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_DISABLE_X86_NEON",
    "-DTF_LITE_MCU_DEBUG_LOG", "-DTF_LITE_USE_GLOBAL_CMATH_FUNCTIONS",
    "-DTF_LITE_USE_GLOBAL_MIN", "-DTF_LITE_USE_GLOBAL_MAX", "-DNDEBUG")
C_FLAGS = ("-std=c11", "-ffunction-sections", "-fdata-sections")
# picolibc's printf flavours, chosen at link time: "integer" has no %f but is ~7 KB
# smaller and needs less stack; TFLM's own messages print no floats.
PRINTF_FLAGS = {"integer": ("-DPICOLIBC_INTEGER_PRINTF_SCANF",),
                "float": ("-DPICOLIBC_FLOAT_PRINTF_SCANF",), "double": ()}

QEMU = "qemu-system-riscv32"
_ARM_CXX_ROOT = "/usr/include/newlib/c++"
_ARM_CXX_MULTILIB = "arm-none-eabi/thumb/v7-m/nofp"


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Paths to the cross tools and the extra C++ header directories they need."""

    gcc: str
    cxx: tuple[str, ...]  # C++ compiler command: g++, or gcc -x c++
    cxx_isystem: tuple[str, ...]  # empty when the toolchain has its own C++ headers

    def tool(self, name: str) -> str:
        """The binutils program ``name`` ("nm", "size", "objcopy", ...) beside gcc."""
        path = Path(self.gcc).with_name(PREFIX + name)
        if not path.exists():
            raise TflqError(f"{path} not found: install binutils-riscv64-unknown-elf.")
        return str(path)

    def c_flags(self, semihosting: bool = False) -> list[str]:
        """Flags for the platform's C files and plain C programs (add -O yourself)."""
        return [*ARCH_FLAGS, "-specs=picolibc.specs", *C_FLAGS, f"-I{FE310_DIR}",
                *_semihosting_flag(semihosting)]

    def cxx_flags(self, semihosting: bool = False) -> list[str]:
        """Flags for TFLM and C++ application files (add -O and TFLM's -I yourself)."""
        isystem = ["-nostdinc++", *(f for d in self.cxx_isystem for f in ("-isystem", d))]
        return [*ARCH_FLAGS, "-specs=picolibc.specs", *(isystem if self.cxx_isystem else []),
                *CXX_FLAGS, f"-I{FE310_DIR}", *_semihosting_flag(semihosting)]

    def link_flags(self, board: str = "hifive1-reva", stack_size: int | None = None,
                   printf: str = "integer") -> list[str]:
        """Flags to link with ``gcc`` (not g++: there is no libstdc++.a for this target)."""
        if board not in BOARDS:
            raise TflqError(f"unknown board {board!r}: use one of {', '.join(BOARDS)}.")
        if printf not in PRINTF_FLAGS:
            raise TflqError(f"unknown printf {printf!r}: use one of {', '.join(PRINTF_FLAGS)}.")
        stack = [] if stack_size is None else [f"-Wl,--defsym=__tflq_stack_size={stack_size}"]
        # -L: ld looks for the INCLUDEd fe310_sections.ld in -L dirs, not beside the script.
        return [*ARCH_FLAGS, "-specs=picolibc.specs", "--crt0=hosted", *PRINTF_FLAGS[printf],
                f"-L{FE310_DIR}", "-T", BOARDS[board], "-Wl,--gc-sections", *stack]


def _semihosting_flag(on: bool) -> list[str]:
    return ["-DTFLQ_SEMIHOSTING=1"] if on else []


def _compiles(command: list[str], source: str, suffix: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="tflq-probe-") as tmp:
        path = Path(tmp) / f"probe{suffix}"
        path.write_text(source)
        result = subprocess.run([*command, "-fsyntax-only", str(path)],
                                capture_output=True, text=True)
        return result.returncode == 0


_CXX_PROBE = "#include <cstdint>\n#include <type_traits>\nstatic_assert(sizeof(std::int32_t) == 4);\n"
_PICOLIBC_PROBE = "#include <stdio.h>\n#ifndef __PICOLIBC__\n#error not picolibc\n#endif\n"


@functools.lru_cache(maxsize=None)
def find_toolchain() -> Toolchain:
    """The riscv64-unknown-elf toolchain with picolibc; raises TflqError naming what to install."""
    gcc = shutil.which(PREFIX + "gcc")
    if gcc is None:
        raise TflqError(f"{PREFIX}gcc not found on PATH: install gcc-riscv64-unknown-elf.")
    base = [*ARCH_FLAGS, "-specs=picolibc.specs"]
    if not _compiles([gcc, *base], _PICOLIBC_PROBE, ".c"):
        raise TflqError(f"{gcc} cannot use picolibc (-specs=picolibc.specs): "
                        "install picolibc-riscv64-unknown-elf.")
    gxx = shutil.which(PREFIX + "g++")
    cxx = (gxx,) if gxx else (gcc, "-x", "c++")
    if _compiles([*cxx, *base], _CXX_PROBE, ".cc"):
        return Toolchain(gcc, cxx, ())
    for root in sorted(glob.glob(f"{_ARM_CXX_ROOT}/*/"), reverse=True):
        dirs = (root.rstrip("/"), f"{root}{_ARM_CXX_MULTILIB}")
        flags = ["-nostdinc++", *(f for d in dirs for f in ("-isystem", d))]
        if os.path.isdir(dirs[1]) and _compiles([*cxx, *base, *flags], _CXX_PROBE, ".cc"):
            return Toolchain(gcc, cxx, dirs)
    raise TflqError(f"no C++ standard headers for {PREFIX}gcc (<cstdint> does not compile): "
                    f"install libstdc++-arm-none-eabi-dev (headers under {_ARM_CXX_ROOT}).")


def find_qemu() -> str:
    """Path of qemu-system-riscv32; raises TflqError naming the package if it is missing."""
    path = shutil.which(QEMU)
    if path is None:
        raise TflqError(f"{QEMU} not found on PATH: install qemu-system-misc.")
    return path


@dataclasses.dataclass(frozen=True)
class QemuResult:
    """What a firmware run printed on UART0 ("\\r\\n" read as "\\n") and its exit code."""

    uart_text: str
    exit_code: int


def qemu_command(elf_path: str | os.PathLike, extra: tuple[str, ...] = ()) -> list[str]:
    """The QEMU command line run_qemu uses, for running firmware by hand (``extra``: more
    options, e.g. a ``-plugin``)."""
    # -icount shift=0: minstret/mcycle count retired instructions exactly.
    # -monitor none -serial stdio: stdout carries UART0 alone and stdin is not
    # parsed for monitor escapes (CI has no terminal).
    return [find_qemu(), "-M", "sifive_e", "-nographic", "-monitor", "none",
            "-serial", "stdio", "-semihosting-config", "enable=on,target=native",
            "-icount", "shift=0", *extra, "-kernel", str(elf_path)]


def run_qemu(elf_path: str | os.PathLike, timeout_s: float = 120.0,
             extra: tuple[str, ...] = ()) -> QemuResult:
    """Runs an ELF on QEMU's sifive_e (HiFive1 Rev A) until it exits through semihosting.

    The firmware must be linked for hifive1-reva and built with -DTFLQ_SEMIHOSTING=1,
    or it never ends QEMU. Raises TflqError on timeout (QEMU is killed) or if QEMU
    itself fails, with the tail of the UART output.
    """
    if not Path(elf_path).is_file():
        raise TflqError(f"{elf_path}: no such firmware ELF.")
    command = qemu_command(elf_path, extra)
    # Output goes to files, not pipes, so a killed run still leaves what it printed.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            exit_code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            exit_code = None
        out.seek(0)
        err.seek(0)
        uart = out.read().decode("utf-8", errors="replace").replace("\r\n", "\n")
        stderr = err.read().decode("utf-8", errors="replace")
    tail = "\n".join(uart.splitlines()[-20:]) or "(nothing)"
    if exit_code is None:
        raise TflqError(
            f"{elf_path} did not exit within {timeout_s:g} s under QEMU (killed). Was it "
            f"built with -DTFLQ_SEMIHOSTING=1 and linked for hifive1-reva? "
            f"Last UART output:\n{tail}")
    if exit_code != 0 and f"{QEMU}:" in stderr:
        raise TflqError(f"QEMU failed on {elf_path} (exit {exit_code}): {stderr.strip()}\n"
                        f"Last UART output:\n{tail}")
    return QemuResult(uart, exit_code)
