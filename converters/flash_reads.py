"""Data loads from the FE310's SPI flash per inference, counted in QEMU, and the time on
silicon they imply.

QEMU models no flash latency, so ``minstret`` hides the real chip's bottleneck: the
FE310 has no data cache, and its SPI flash controller (sifive-blocks ``TLSPIFlash.scala``)
serves one byte per request, skipping command and address only for the byte right after
the last one it served. ``micro/qemu/flash_reads.c``, a QEMU TCG plugin, counts every
data load from the flash window (0x20000000-0x3fffffff) between ``TFLQ_FLASH_WINDOW(1)``
and ``TFLQ_FLASH_WINDOW(0)`` (``micro/fe310/perf.h``; the generated ``main.cc`` brackets
each ``Invoke()``, the interval ``minstret`` measures), and tells sequential loads from
the rest as that controller would.

    estimated cycles = instructions + 64 x sequential flash bytes
                                    + 500 x non-sequential flash loads

The constants follow from the controller's reset settings (command 0x03, single I/O,
3 address bytes, no dummy cycles, SCKDIV 3: SPI clock = core clock / 8): a byte streamed
after the previous one is 8 SPI clocks = 64 core cycles; an isolated 32-bit load is
command + address + 4 bytes = 64 SPI clocks = 512, taken as 500
(``../shared/docs/FE310_AND_TFLM_FACTS.md``, "Flash on the real chip"). Estimated, not
measured on silicon; instruction-cache refills from flash and the core's own cycles per
instruction beyond one are not in it.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

from tflq.converters import tflm_host, tflm_sources
# The constants above, defined where the generator's cost estimate needs them too.
from tflq.converters.layer_cost import NONSEQUENTIAL_LOAD_CYCLES, SEQUENTIAL_BYTE_CYCLES
from tflq.converters.micro_dir import MICRO_DIR
from tflq.errors import TflqError

PLUGIN_SOURCES = (MICRO_DIR / "qemu" / "flash_reads.c", MICRO_DIR / "qemu" / "qemu_plugin_abi.h")
ESTIMATE = (f"instructions + {SEQUENTIAL_BYTE_CYCLES} x sequential flash bytes + "
            f"{NONSEQUENTIAL_LOAD_CYCLES} x non-sequential flash loads (FE310 reset flash "
            "settings: command 0x03, single I/O, SCKDIV 3; estimated, not measured on silicon)")
_WINDOW = re.compile(r"^window=(\d+) loads=(\d+) bytes=(\d+) seq_bytes=(\d+) "
                     r"nonseq_loads=(\d+)$", re.M)


@dataclasses.dataclass(frozen=True)
class FlashReads:
    """Flash data loads of one measured window (one inference), the mean over windows."""

    windows: int
    loads: float
    bytes: float
    seq_bytes: float
    nonseq_loads: float

    def silicon_cycles(self, instructions: float) -> float:
        """Estimated core cycles of the window on the FE310 (module docstring)."""
        return (instructions + SEQUENTIAL_BYTE_CYCLES * self.seq_bytes
                + NONSEQUENTIAL_LOAD_CYCLES * self.nonseq_loads)


def plugin() -> Path:
    """The plugin built for this host, once, in ``$TFLQ_CACHE_DIR/qemu-plugin``."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in PLUGIN_SOURCES)).hexdigest()[:16]
    out = tflm_sources.cache_dir() / "qemu-plugin" / f"flash_reads-{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tflq-plugin-", dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        command = [tflm_host.host_cc(), "-O2", "-shared", "-fPIC", "-fvisibility=hidden",
                   "-Wall", "-Werror", "-o", str(built), str(PLUGIN_SOURCES[0])]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise TflqError(f"building the QEMU flash-read plugin failed:\n{result.stderr}")
        os.replace(built, out)
    return out


def qemu_args(log: Path, profile: Path | None = None) -> tuple[str, ...]:
    """QEMU options that load the plugin, writing one line per window to ``log`` (and
    the windows' instructions per translated block to ``profile``)."""
    return ("-plugin", f"{plugin()},out={log}" + (f",profile={profile}" if profile else ""))


def functions(profile: str, symbols: list[tuple[int, str]]) -> dict[str, int]:
    """The plugin's profile as instructions per function (``symbols``: (address, name)
    by address; a block belongs to the last symbol at or below its pc), most first."""
    starts = [a for a, _ in symbols]
    totals: dict[str, int] = {}
    for m in re.finditer(r"^pc=0x([0-9a-f]+) instructions=(\d+)$", profile, re.M):
        i = bisect.bisect_right(starts, int(m.group(1), 16)) - 1
        name = symbols[i][1] if i >= 0 else "?"
        totals[name] = totals.get(name, 0) + int(m.group(2))
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def parse(text: str, source: str = "flash_reads") -> FlashReads:
    """The plugin's log: the mean of its windows. Raises TflqError if it has none."""
    rows = [tuple(int(v) for v in m.groups()[1:]) for m in _WINDOW.finditer(text)]
    if not rows:
        raise TflqError(f"{source}: the flash-read plugin saw no measured window "
                        "(no TFLQ_FLASH_WINDOW(1) ... (0) ran)")
    mean = [sum(column) / len(rows) for column in zip(*rows)]
    return FlashReads(len(rows), *mean)
