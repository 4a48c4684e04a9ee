"""What each FC / CONV_2D / DEPTHWISE_CONV_2D of a generated firmware costs one
inference on the FE310, estimated; the generator chooses each layer's kernel by it
(``micro_project``) and the project's README shows it.

- instructions = MACs x the kernel's instructions per MAC, measured by
  ``benchmarks/packed_kernels.py`` on FC 128 -> 128 (``packed_format._PER_MAC``; tflq's
  builtin int8 DEPTHWISE_CONV_2D: ``INT8_DEPTHWISE_PER_MAC``), corrected for how many
  channels share a table kernel's tables (``TABLE_PER_INPUT``: a narrow layer, or a
  block staged at every Eval, builds them more often), plus a staged CONV_2D's patch
  gathered again for every block of channels after the first (``PATCH_PER_INPUT``).
- flash bytes = the weight bytes the layer reads from SPI flash per inference: none
  when its blob is copied into RAM at AllocateTensors, the blob once when it is staged
  at every Eval, else its weights at every read (a CONV_2D's at every output position).
- cycles = instructions + 64 x flash bytes (a byte read in sequence; the 500 cycles of
  each isolated flash load are not modelled). Both constants follow from the flash
  controller's reset settings (``converters.flash_reads``).
"""
from __future__ import annotations

import dataclasses

from tflq.converters.packed_format import FMT_LUT, FMT_PLANES, estimated_per_mac

SEQUENTIAL_BYTE_CYCLES = 64  # core cycles per flash byte read right after the last one
NONSEQUENTIAL_LOAD_CYCLES = 500  # per isolated 32-bit flash load

# The generator switches a layer from its low-bit kernel to int8 rows only where that
# saves more than this share of the layer's estimate: the per-MAC figures come from one
# layer shape each, and shapes move them by more than the closest gaps. (DS-CNN with
# ternary weights: int8 rows estimated 2% faster, 4.01 vs 3.93 instructions per MAC;
# measured, the firmware took 4% more instructions with them.)
SWITCH_MARGIN = 0.10

# Instructions per input, output position and block of channels that share them, a
# kernel spends building its tables; _PER_MAC includes them spread over
# MEASURED_CHANNELS. Fitted to the demo CNN's layers (conv 8 -> 16 channels on 14x14,
# FC 7840 -> 10), low-bit kernel on every layer against int8 rows
# (docs/benchmarks/packed_kernels.md, Fashion-MNIST models): binary 25, ternary 20,
# fixed4 11 (bit-planes: 20), log3 32 (codebooks: 32).
TABLE_PER_INPUT = {FMT_PLANES: 20, FMT_LUT: 32}
MEASURED_CHANNELS = 128
# Instructions per input to gather a CONV_2D's patch again, per output position and
# staged block of channels after the first: CONV_2D 3x3 16 -> 64 on 8x8 staged 16
# channels at a time, its patch gathering (conv_channels in the benchmark's QEMU
# profile) 98,164 instructions over 4 blocks x 64 positions x 144 inputs. (A 1x1
# kernel over int8 input gathers nothing: this overestimates it.)
PATCH_PER_INPUT = 2.7

# tflq's builtin int8 DEPTHWISE_CONV_2D 3x3 on 8x8, 32 and 64 channels: 5.85, 5.82
# (docs/benchmarks/packed_kernels.md; the channel-plane loop of micro/kernels).
INT8_DEPTHWISE_PER_MAC = 5.84
# int8 rows of a CONV_2D with at least 8 output channels, two output positions per pass
# (layer_eval.c: int8_vector2): CONV_2D 3x3 16 -> 64 on 8x8, generator default, 3.18
# (docs/benchmarks/packed_kernels.md). Other int8 rows: FC 128 -> 128's figure
# (packed_format._PER_MAC).
INT8_CONV_PER_MAC = 3.18


def int8_per_mac(op: str, out_channels: int) -> float:
    """Instructions per MAC of tflq's int8 kernel for a layer (``op``: its TFLite
    operator name): int8 rows, or the builtin DEPTHWISE_CONV_2D."""
    if op == "DEPTHWISE_CONV_2D":
        return INT8_DEPTHWISE_PER_MAC
    return INT8_CONV_PER_MAC if op == "CONV_2D" and out_channels >= 8 else estimated_per_mac(None)


@dataclasses.dataclass(frozen=True)
class Estimate:
    instructions: int = 0
    flash_bytes: int = 0

    @property
    def cycles(self) -> int:
        return self.instructions + SEQUENTIAL_BYTE_CYCLES * self.flash_bytes

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.instructions + other.instructions,
                        self.flash_bytes + other.flash_bytes)

    def describe(self) -> str:
        return (f"est. {self.instructions:,} instructions + {self.flash_bytes:,} flash "
                f"bytes = {self.cycles:,} cycles per inference")


def per_mac(p) -> float:
    """Instructions per MAC of ``p``'s kernel (a ``packing.PackedOp``), its tables
    shared by as many channels as it has, or as its staged blocks hold."""
    if not p.encoding:
        return int8_per_mac(p.op, p.out_channels)
    if not p.tables:
        return p.per_mac
    sharing = min(p.stage_channels or p.out_channels, p.out_channels)
    return p.per_mac + TABLE_PER_INPUT[p.tables] * (1 / sharing - 1 / MEASURED_CHANNELS)


def of_layer(p) -> Estimate:
    """The estimate of one ``packing.PackedOp`` (module docstring); zero for a layer
    tflq's kernels do not handle (no MACs counted)."""
    weight_bytes = p.packed_bytes if p.encoding else p.int8_bytes
    reads = 0 if p.in_ram else 1 if p.stage_channels else p.flash_reads
    instructions = p.macs * per_mac(p)
    if p.stage_channels:
        blocks = -(-p.out_channels // p.stage_channels)
        instructions += p.positions * (blocks - 1) * p.depth * PATCH_PER_INPUT
    return Estimate(round(instructions), weight_bytes * reads)


def of_model(packed_ops) -> Estimate:
    return sum((of_layer(p) for p in packed_ops), Estimate())
