"""The TQP2 packed-layer format that micro/kernels/ reads (C: tflq_kernels.h).

``choose_encoding`` picks a layer's encoding (bit-planes or a codebook), ``pack``
writes its blob, ``unpack`` reads it back (round trip: the int8 weights come back
exactly), ``reference`` runs a layer as TFLM's reference int8 kernels do (numpy), and
``scratch_bytes`` is the RAM the C kernel asks for. ``pack_activations`` /
``unpack_activations`` are the packed activation tensors' layout (k-bit codes in
the arena, ``Layer.in_packed`` / ``out_packed``). No flatbuffers here: the rewrite of
a model into TFLQ_PACKED ops is ``converters.packing``.
"""
from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np

from tflq.converters.requantize import double_rounding
from tflq.errors import TflqError

CUSTOM_CODE = "TFLQ_PACKED"
OP_FC, OP_CONV, OP_DEPTHWISE = 1, 2, 3
FMT_INT8, FMT_PLANES, FMT_LUT, FMT_BITSERIAL = 0, 1, 2, 3
FORMAT_NAMES = {FMT_INT8: "int8", FMT_PLANES: "bit-planes", FMT_LUT: "codebook",
                FMT_BITSERIAL: "bit-serial"}
FLAG_PER_CHANNEL, FLAG_THRESHOLDS = 0x01, 0x10  # BITSERIAL: bits 1..3 hold in_bits
FLAG_IN_RAM = 0x20  # any format: TFLQ_PACKED copies the blob into the arena at Prepare
FLAGS_OFFSET = 7  # the header's flags byte
OP_NAMES = {OP_FC: "FULLY_CONNECTED", OP_CONV: "CONV_2D", OP_DEPTHWISE: "DEPTHWISE_CONV_2D"}
HEADER = struct.Struct("<4sBBBBHH6H8B4i2I8B2H")
assert HEADER.size == 68
MAGIC = b"TQP2"
MAX_BITS = 4


@dataclasses.dataclass
class Layer:
    """One layer as the kernels see it; ``weights`` are int8 (out_channels, depth).

    For DEPTHWISE_CONV_2D, row c holds channel c's kh * kw taps.
    """

    op: int
    weights: np.ndarray
    bias: np.ndarray  # int32 (out_channels,): the model's bias (not bias_eff)
    multiplier: np.ndarray  # int32 per channel
    shift: np.ndarray  # int32 per channel, > 0: left
    input_offset: int
    output_offset: int
    act_min: int = -128
    act_max: int = 127
    in_hwc: tuple = (1, 1, 0)
    out_hw: tuple = (1, 1)
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    pad: tuple = (0, 0)  # top, left
    depth_multiplier: int = 1
    in_packed: int = 0  # k: the input is stored as k-bit codes (pack_activations); 0: int8
    out_packed: int = 0  # likewise the output (its range must be 128 - 2^k .. 127)
    # A fused MAX_POOL_2D of the output: (kh, kw, stride_h, stride_w, pad_top, pad_left,
    # out_h, out_w), or None.
    pool: tuple | None = None

    @property
    def output_hw(self) -> tuple:
        """The spatial size of what the layer stores: pooled when a pool is fused."""
        return tuple(self.pool[6:]) if self.pool else tuple(self.out_hw)

    @property
    def out_channels(self) -> int:
        return self.weights.shape[0]

    @property
    def depth(self) -> int:
        return self.weights.shape[1]


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How a layer's weights are stored: format, bits and codebook (per channel or one)."""

    format: int
    bits: int
    per_channel: bool
    codebook: np.ndarray  # PLANES, BITSERIAL: int16 (n, 2) (v0, d); LUT: int8 (n, 2**bits)
    in_bits: int = 0      # BITSERIAL: the input's code bits (its codes are lo .. 127)
    thresholds: bool = False  # BITSERIAL: output by thresholds instead of requantization

    def describe(self) -> str:
        if self.format == FMT_BITSERIAL:
            return (f"{self.bits}-bit bit-serial x {self.in_bits}-bit inputs"
                    + (", thresholds" if self.thresholds else ""))
        return f"{self.bits}-bit {FORMAT_NAMES[self.format]}"


# Instructions per MAC of each kernel on the FE310, measured on FC 128 -> 128 in QEMU
# (docs/benchmarks/packed_kernels.md: int8 inputs; docs/benchmarks/bit_serial.md: k-bit
# inputs, keyed by bits x in_bits, the popcounts per word pair, W4A4 from its forced
# row). Between measured points, linear. The packer compares them to choose a layer's
# kernel.
_PER_MAC = {
    FMT_INT8: {8: 3.51},  # int8 rows in 8-channel groups (the generator's int8 FC)
    FMT_PLANES: {1: 2.58, 2: 4.01, 4: 6.85},
    FMT_LUT: {2: 7.54, 3: 7.54, 4: 7.86},
    FMT_BITSERIAL: {1: 0.90, 2: 1.76, 4: 3.18, 16: 11.73},
}


def estimated_per_mac(enc: Encoding | None) -> float:
    """The instructions per MAC ``enc``'s kernel takes (``_PER_MAC``); None: int8 rows."""
    if enc is None:
        return _PER_MAC[FMT_INT8][8]
    table = _PER_MAC[enc.format]
    key = enc.bits * enc.in_bits if enc.format == FMT_BITSERIAL else enc.bits
    points = sorted(table)
    return float(np.interp(key, points, [table[p] for p in points]))


def input_low(in_bits: int) -> int:
    """The lowest input code of a BITSERIAL layer: its codes are lo .. 127."""
    return 128 - (1 << in_bits)


def same_padding(size: int, out: int, stride: int, kernel: int, dilation: int = 1) -> int:
    """TFLite's SAME padding before the first row / column (ComputePaddingHeightWidth)."""
    effective = (kernel - 1) * dilation + 1
    return max((out - 1) * stride + effective - size, 0) // 2


def store_bits(k: int) -> int:
    """Bits per code of a packed activation tensor of k-bit codes (3 is stored in 4,
    so no code straddles a byte); 0: int8."""
    return 4 if k == 3 else k


def activation_bytes(values: int, k: int) -> int:
    """Bytes of one batch of ``values`` activations packed at k bits (0: int8); the C
    tflq_tensor_bytes."""
    return values if k == 0 else -(-values * store_bits(k) // 8)


def pack_activations(x: np.ndarray, k: int) -> np.ndarray:
    """int8 activations (batch, ...) holding only the codes 128 - 2^k .. 127 as packed
    bytes (batch, activation_bytes): code x - (128 - 2^k) of store_bits(k) bits, LSB
    first, element e at bit e * s."""
    x = np.asarray(x, np.int64).reshape(len(x), -1)
    codes = x - input_low(k)
    if codes.min(initial=0) < 0 or codes.max(initial=0) >= 1 << k:
        raise TflqError(f"activations outside the {k}-bit codes {input_low(k)} .. 127")
    s = store_bits(k)
    per = 8 // s
    n = x.shape[1]
    padded = np.zeros((len(x), -(-n // per) * per), np.int64)
    padded[:, :n] = codes
    return (padded.reshape(len(x), -1, per) << (np.arange(per) * s)).sum(-1).astype(np.uint8)


def unpack_activations(packed: np.ndarray, k: int, values: int) -> np.ndarray:
    """The int8 activations (batch, values) of packed bytes (pack_activations)."""
    packed = np.asarray(packed, np.uint8).reshape(len(packed), -1).astype(np.int64)
    s = store_bits(k)
    per = 8 // s
    codes = (packed[:, :, None] >> (np.arange(per) * s)) & ((1 << s) - 1)
    return (codes.reshape(len(packed), -1)[:, :values] + input_low(k)).astype(np.int8)


def bit_serial(enc: Encoding, in_bits: int, layer: "Layer") -> Encoding:
    """``enc`` (bit-planes) as BITSERIAL for ``in_bits``-bit inputs, with output
    thresholds where ``thresholds`` can prove them."""
    if enc.format != FMT_PLANES or not 1 <= in_bits <= MAX_BITS:
        raise TflqError(f"bit-serial needs bit-plane weights and 1..{MAX_BITS}-bit inputs")
    draft = dataclasses.replace(enc, format=FMT_BITSERIAL, in_bits=in_bits)
    return dataclasses.replace(draft, thresholds=thresholds(layer, draft) is not None)


def _affine(values: np.ndarray) -> tuple[int, int, int]:
    """(v0, d, bits): the smallest grid v0 + d * code holding ``values``."""
    v0 = int(values.min())
    diffs = (values.astype(np.int64) - v0)
    d = int(np.gcd.reduce(diffs)) or 1
    codes = int(diffs.max()) // d + 1
    return v0, d, max(1, math.ceil(math.log2(codes)))


def choose_encoding(weights: np.ndarray) -> Encoding | str:
    """The fewest-bits encoding of int8 ``weights`` (C, K), or why none has <= 4 bits.

    Bit-planes (affine codebooks: ternary, binary, fixed-point...) win ties: no
    multiplies and fewer instructions per weight than a codebook lookup.
    """
    w = np.asarray(weights, np.int8)
    rows = [np.unique(r) for r in w]
    per_channel = [_affine(r) for r in rows]
    planes_pc = max(b for _, _, b in per_channel)
    shared = _affine(np.unique(w))
    union = np.unique(w)
    lut_bits = max(2, math.ceil(math.log2(len(union)))) if len(union) > 1 else 2
    candidates = []
    if shared[2] <= MAX_BITS:
        candidates.append((shared[2], 0, Encoding(FMT_PLANES, shared[2], False,
                                                  np.array([shared[:2]], np.int16))))
    if planes_pc <= MAX_BITS:
        candidates.append((planes_pc, 1, Encoding(
            FMT_PLANES, planes_pc, True, np.array([p[:2] for p in per_channel], np.int16))))
    if len(union) <= 1 << MAX_BITS:
        levels = np.zeros((1, 1 << lut_bits), np.int8)
        levels[0, :len(union)] = union
        candidates.append((lut_bits, 2, Encoding(FMT_LUT, lut_bits, False, levels)))
    if not candidates:
        return (f"{len(union)} distinct int8 weight values (a {MAX_BITS}-bit codebook holds "
                f"{1 << MAX_BITS}) and no affine grid of <= {MAX_BITS} bits")
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _codes(layer: Layer, enc: Encoding) -> np.ndarray:
    w = layer.weights.astype(np.int64)
    if enc.format in (FMT_PLANES, FMT_BITSERIAL):
        book = enc.codebook if enc.per_channel else np.repeat(enc.codebook, len(w), 0)
        v0, d = book[:, :1].astype(np.int64), book[:, 1:].astype(np.int64)
        codes = (w - v0) // d
        if not np.array_equal(v0 + d * codes, w) or codes.min() < 0 or codes.max() >= 1 << enc.bits:
            raise TflqError("bit-plane codebook does not hold the weights")
        return codes
    levels = enc.codebook[0].astype(np.int64)
    lookup = {int(v): i for i, v in reversed(list(enumerate(levels)))}
    try:
        return np.vectorize(lambda v: lookup[int(v)], otypes=[np.int64])(w)
    except KeyError as e:
        raise TflqError(f"codebook does not hold weight {e.args[0]}") from None


def _pack_rows(codes: np.ndarray, enc: Encoding) -> np.ndarray:
    c, k = codes.shape
    chunks = -(-k // 8)
    padded = np.zeros((c, chunks * 8), np.int64)
    padded[:, :k] = codes
    by_chunk = padded.reshape(c, chunks, 8)
    out = np.zeros((c, chunks, enc.bits), np.uint8)
    if enc.format == FMT_PLANES:  # byte j: bit j of the 8 codes, input r at bit r
        for j in range(enc.bits):
            out[:, :, j] = (((by_chunk >> j) & 1) << np.arange(8)).sum(-1)
    else:  # 8 codes of `bits` bits, LSB first, in `bits` little-endian bytes
        word = (by_chunk << (np.arange(8) * enc.bits)).sum(-1)
        for j in range(enc.bits):
            out[:, :, j] = (word >> (8 * j)) & 0xFF
    return out.reshape(c, chunks * enc.bits)


def _pack_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """BITSERIAL rows: per 32 inputs, ``bits`` little-endian u32 words; word j holds bit
    j of the 32 codes, input r at bit r."""
    c, k = codes.shape
    groups = -(-k // 32)
    padded = np.zeros((c, groups * 32), np.int64)
    padded[:, :k] = codes
    by_group = padded.reshape(c, groups, 32)
    words = np.zeros((c, groups, bits), np.uint32)
    for j in range(bits):
        words[:, :, j] = (((by_group >> j) & 1) << np.arange(32)).sum(-1).astype(np.uint32)
    return words.reshape(c, -1).astype("<u4").view(np.uint8).reshape(c, groups * bits * 4)


def _unpack_words(rows: np.ndarray, k: int, bits: int) -> np.ndarray:
    c = rows.shape[0]
    words = rows.copy().view("<u4").reshape(c, -1, bits).astype(np.int64)
    codes = sum(((words[:, :, j:j + 1] >> np.arange(32)) & 1) << j for j in range(bits))
    return codes.reshape(c, -1)[:, :k]


def _unpack_rows(rows: np.ndarray, k: int, fmt: int, bits: int) -> np.ndarray:
    c = rows.shape[0]
    by_chunk = rows.reshape(c, -1, bits).astype(np.int64)
    if fmt == FMT_PLANES:
        codes = sum(((by_chunk[:, :, j:j + 1] >> np.arange(8)) & 1) << j for j in range(bits))
    else:
        word = sum(by_chunk[:, :, j:j + 1] << (8 * j) for j in range(bits))
        codes = (word >> (np.arange(8) * bits)) & ((1 << bits) - 1)
    return codes.reshape(c, -1)[:, :k]


def _input_shift(enc: Encoding | None) -> int:
    """What the kernels subtract from each input: BITSERIAL works on a = x - lo."""
    return input_low(enc.in_bits) if enc is not None and enc.format == FMT_BITSERIAL else 0


def bias_eff(layer: Layer, enc: Encoding | None = None) -> np.ndarray:
    """bias + (input_offset + lo) * sum(w): what the kernels add to sum((x - lo) * w)
    (lo = 0 but for BITSERIAL)."""
    offset = layer.input_offset + _input_shift(enc)
    acc = layer.bias.astype(np.int64) + offset * layer.weights.astype(np.int64).sum(1)
    if np.abs(acc).max(initial=0) >= 2 ** 31:
        raise TflqError("bias + input offset x weight sum overflows int32")
    return acc.astype(np.int32)


def thresholds(layer: Layer, enc: Encoding) -> np.ndarray | None:
    """int32 (C, L - 1): for output code act_min + i, the least accumulator
    (sum((x - lo) * w) + bias_eff) that requantizes and clamps to at least it; None
    when the output has more than 4 codes or requantization could wrap.

    Exact because requantization is monotone in the accumulator as long as a left
    shift cannot overflow: the accumulator's whole range, from the weights and the
    input codes 0 .. 2^in_bits - 1, is checked for that."""
    codes = layer.act_max - layer.act_min + 1
    if enc.format != FMT_BITSERIAL or not 2 <= codes <= 4 or np.any(layer.multiplier < 0):
        return None
    w = layer.weights.astype(np.int64)
    top = (1 << enc.in_bits) - 1
    base = bias_eff(layer, enc).astype(np.int64)
    lows = base + top * np.minimum(w, 0).sum(1)
    highs = base + top * np.maximum(w, 0).sum(1)
    out = np.empty((layer.out_channels, codes - 1), np.int64)
    for c in range(layer.out_channels):
        m, shift = int(layer.multiplier[c]), int(layer.shift[c])
        if shift > 0 and max(abs(int(lows[c])), abs(int(highs[c]))) << shift >= 2 ** 31:
            return None

        def code(acc):
            v = int(double_rounding(np.array([acc]), m, shift)[0]) + layer.output_offset
            return min(max(v, layer.act_min), layer.act_max)

        for i in range(1, codes):
            lo, hi = int(lows[c]), int(highs[c]) + 1  # the answer is in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                if code(mid) >= layer.act_min + i:
                    hi = mid
                else:
                    lo = mid + 1
            out[c, i - 1] = lo
    if np.abs(out).max(initial=0) >= 2 ** 31:
        return None
    return out.astype(np.int32)


# int8 FC / CONV_2D blobs store output channels in groups of 8 while 8 remain, then one
# of 4 (micro/kernels/tflq_kernels.h, TFLQ_FMT_INT8); the kernel's group loops read each
# group in one sequential stream. A staged block (stage_channels) is a multiple of
# STAGE_UNIT channels, or all, so that it holds whole groups (TFLQ_STAGE_UNIT).
INT8_GROUPS = (8, 4)
STAGE_UNIT = 8


def _int8_group_spans(c: int) -> list[tuple[int, int, int]]:
    """(first channel, channels, group size) of ``INT8_GROUPS``' runs, then the rows."""
    spans, first = [], 0
    for size in INT8_GROUPS:
        n = (c - first) // size * size
        spans.append((first, n, size))
        first += n
    return spans + [(first, c - first, 1)]


def _int8_groups(w: np.ndarray) -> np.ndarray:
    """int8 FC / CONV_2D weights (c, k) in the blob's order: each group ordered by input
    (w[c, k], .., w[c + g - 1, k], then k + 1), then the last c % 4 rows."""
    k = w.shape[1]
    return np.concatenate([w[a:a + n].reshape(-1, g, k).transpose(0, 2, 1).reshape(-1)
                           for a, n, g in _int8_group_spans(w.shape[0])])


def _int8_rows(raw: np.ndarray, c: int, k: int) -> np.ndarray:
    """The (c, k) weights of ``_int8_groups``' order."""
    return np.concatenate([raw[a * k:(a + n) * k].reshape(-1, k, g).transpose(0, 2, 1)
                           .reshape(n, k) for a, n, g in _int8_group_spans(c)])


def pack(layer: Layer, enc: Encoding | None = None) -> bytes:
    """The TQP2 blob of ``layer`` (``enc`` None: int8 rows, for tests of the int8 path)."""
    w = np.asarray(layer.weights, np.int8)
    c, k = w.shape
    if enc is None:
        fmt, bits, flags, codebook = FMT_INT8, 8, 0, b""
        rows = w.T if layer.op == OP_DEPTHWISE else _int8_groups(w)  # depthwise: TFLite's
        row_bytes, weight_bytes = k, np.ascontiguousarray(rows).tobytes()
    else:
        fmt, bits, flags = enc.format, enc.bits, int(enc.per_channel)
        codebook = np.ascontiguousarray(enc.codebook).astype(
            np.int8 if fmt == FMT_LUT else "<i2").tobytes()
        rows = (_pack_words(_codes(layer, enc), bits) if fmt == FMT_BITSERIAL
                else _pack_rows(_codes(layer, enc), enc))
        row_bytes, weight_bytes = rows.shape[1], rows.tobytes()
        if fmt == FMT_BITSERIAL:
            flags |= enc.in_bits << 1
    codebook += bytes(-len(codebook) % 4)
    if enc is not None and enc.thresholds:
        table = thresholds(layer, enc)
        if table is None:
            raise TflqError("output thresholds cannot be proven for this layer")
        flags |= FLAG_THRESHOLDS
        codebook += np.asarray(table, "<i4").tobytes()
    total = HEADER.size + 12 * c + len(codebook) + len(weight_bytes)
    if max(c, k, *layer.in_hwc, *layer.out_hw, layer.depth_multiplier) >= 1 << 16:
        raise TflqError(f"layer of {c} channels x depth {k} is too large to pack (u16 fields)")
    pool = layer.pool or (0,) * 8
    if max(*pool[:6], *layer.kernel, *layer.stride, *layer.dilation, *layer.pad) > 255:
        raise TflqError("kernel, stride, dilation or padding above 255 (u8 fields)")
    header = HEADER.pack(MAGIC, layer.op, fmt, bits, flags, c, k, *layer.in_hwc,
                         *layer.out_hw, layer.depth_multiplier, *layer.kernel, *layer.stride,
                         *layer.dilation, *layer.pad, layer.input_offset,
                         layer.output_offset, layer.act_min, layer.act_max, row_bytes, total,
                         layer.in_packed, layer.out_packed, *pool)
    per_channel = b"".join(np.asarray(a, "<i4").tobytes() for a in (
        bias_eff(layer, enc), layer.multiplier, layer.shift))
    return header + per_channel + codebook + weight_bytes


def unpack(blob: bytes) -> tuple[Layer, Encoding | None]:
    """The layer and encoding a blob holds (bias recovered from bias_eff)."""
    if len(blob) < HEADER.size:
        raise TflqError(f"packed blob of {len(blob)} bytes is shorter than its header")
    (magic, op, fmt, bits, flags, c, k, ih, iw, ic, oh, ow, dm, kh, kw, sh, sw, dh, dw, pt,
     pl, in_off, out_off, amin, amax, row_bytes, total, in_packed, out_packed,
     *pool) = HEADER.unpack_from(blob)
    if magic != MAGIC or total != len(blob):
        raise TflqError("not a TQP2 blob, or its length differs from its header")
    arrays = np.frombuffer(blob, "<i4", 3 * c, HEADER.size).reshape(3, c)
    pos = HEADER.size + 12 * c
    enc = None
    if fmt == FMT_INT8:
        raw = np.frombuffer(blob, np.int8, c * k, len(blob) - c * k)
        w = raw.reshape(k, c).T if op == OP_DEPTHWISE else _int8_rows(raw, c, k)
    else:
        n = c if flags & 1 else 1
        if fmt == FMT_LUT:
            book = np.frombuffer(blob, np.int8, n << bits, pos).reshape(n, 1 << bits)
        else:
            book = np.frombuffer(blob, "<i2", 2 * n, pos).reshape(n, 2).astype(np.int16)
        enc = Encoding(fmt, bits, bool(flags & 1), book,
                       (flags >> 1) & 7 if fmt == FMT_BITSERIAL else 0,
                       bool(flags & FLAG_THRESHOLDS))
        rows = np.frombuffer(blob, np.uint8, c * row_bytes, len(blob) - c * row_bytes)
        if fmt == FMT_BITSERIAL:
            codes = _unpack_words(rows.reshape(c, row_bytes), k, bits)
        else:
            codes = _unpack_rows(rows.reshape(c, row_bytes), k, fmt, bits)
        if fmt in (FMT_PLANES, FMT_BITSERIAL):
            full = book if flags & 1 else np.repeat(book, c, 0)
            w = full[:, :1].astype(np.int64) + full[:, 1:].astype(np.int64) * codes
        else:
            full = book if flags & 1 else np.repeat(book, c, 0)
            w = np.take_along_axis(full.astype(np.int64), codes, 1)
    w = np.asarray(w).astype(np.int8)
    offset = in_off + _input_shift(enc)
    bias = (arrays[0].astype(np.int64) - offset * w.astype(np.int64).sum(1)).astype(np.int32)
    layer = Layer(op, w, bias, arrays[1].copy(), arrays[2].copy(), in_off, out_off, amin, amax,
                  (ih, iw, ic), (oh, ow), (kh, kw), (sh, sw), (dh, dw), (pt, pl), dm,
                  in_packed, out_packed, tuple(pool) if pool[0] else None)
    return layer, enc


def max_pool(y: np.ndarray, hw: tuple, pool: tuple) -> np.ndarray:
    """TFLM's reference MAX_POOL_2D (no activation) of int8 ``y`` (batch, h * w * C)."""
    kh, kw, sh, sw, pt, pl, oh, ow = pool
    batches = len(y)
    h, w = hw
    y = y.reshape(batches, h, w, -1)
    out = np.empty((batches, oh, ow, y.shape[-1]), y.dtype)
    for py in range(oh):
        for px in range(ow):
            y0, x0 = py * sh - pt, px * sw - pl
            window = y[:, max(y0, 0):min(y0 + kh, h), max(x0, 0):min(x0 + kw, w)]
            out[:, py, px] = window.max(axis=(1, 2))
    return out.reshape(batches, -1)


def reference(layer: Layer, x: np.ndarray) -> np.ndarray:
    """TFLM's reference int8 kernel for ``layer`` on int8 ``x`` (batch, *input), then
    the fused max-pool if any: int8 values, whatever ``in_packed`` / ``out_packed``
    say about how the C kernel stores them."""
    x = np.asarray(x, np.int64)
    batches = x.shape[0]
    w = layer.weights.astype(np.int64)
    if layer.op == OP_FC:
        acc = (x.reshape(batches, -1) + layer.input_offset) @ w.T + layer.bias
    else:
        (ih, iw, ic), (oh, ow), (kh, kw) = layer.in_hwc, layer.out_hw, layer.kernel
        xs = x.reshape(batches, ih, iw, ic) + layer.input_offset
        acc = np.zeros((batches, oh, ow, layer.out_channels), np.int64)
        for oy in range(oh):
            for ox in range(ow):
                for ky in range(kh):
                    iy = oy * layer.stride[0] - layer.pad[0] + ky * layer.dilation[0]
                    for kx in range(kw):
                        ix = ox * layer.stride[1] - layer.pad[1] + kx * layer.dilation[1]
                        if not (0 <= iy < ih and 0 <= ix < iw):
                            continue  # TFLM skips padding taps
                        if layer.op == OP_CONV:
                            taps = w.reshape(-1, kh, kw, ic)[:, ky, kx, :]  # (C, ic)
                            acc[:, oy, ox] += xs[:, iy, ix, :] @ taps.T
                        else:
                            src = xs[:, iy, ix, np.arange(layer.out_channels)
                                     // layer.depth_multiplier]
                            acc[:, oy, ox] += src * w[:, ky * kw + kx]
        acc = acc + layer.bias
    acc = acc.reshape(batches, -1, layer.out_channels)
    out = np.empty_like(acc)
    for c in range(layer.out_channels):
        out[..., c] = double_rounding(acc[..., c], int(layer.multiplier[c]), int(layer.shift[c]))
    out = np.clip(out + layer.output_offset, layer.act_min, layer.act_max)
    out = out.reshape(batches, -1).astype(np.int8)
    return max_pool(out, layer.out_hw, layer.pool) if layer.pool else out


# ---- flatbuffer operators <-> layers ----


def row_bytes(layer: Layer, enc: Encoding | None) -> int:
    """Bytes of one output channel's weight row in the blob (the header's row_bytes)."""
    if enc is None:
        return layer.depth
    if enc.format == FMT_BITSERIAL:
        return 4 * enc.bits * -(-layer.depth // 32)
    return enc.bits * -(-layer.depth // 8)


def stage_bytes(layer: Layer, enc: Encoding | None, channels: int) -> int:
    """Scratch a CONV_2D staged ``channels`` output channels at a time adds
    (tflq_stage_bytes): their rows, then every per-channel constant the kernel reads:
    bias, multiplier and shift (int32), output thresholds (int32, act_max - act_min per
    channel), affine (v0, d) pairs (int16) or int8 levels (one set when shared), each
    part rounded up to 4 bytes."""
    words = 3 * channels
    codebooks = channels if enc is not None and enc.per_channel else 1
    extra = 0
    if enc is not None:
        if enc.thresholds:
            words += channels * (layer.act_max - layer.act_min)
        if enc.format in (FMT_PLANES, FMT_BITSERIAL):
            extra = 4 * codebooks
        elif enc.format == FMT_LUT:
            extra = -(-(codebooks << enc.bits) // 4) * 4
    return -(-channels * row_bytes(layer, enc) // 4) * 4 + 4 * words + extra


def scratch_bytes(layer: Layer, enc: Encoding | None) -> int:
    """RAM tflq_scratch_bytes (micro/kernels) requests for ``layer``: a row of output
    channels when they are packed or pooled, CONV_2D's patch (or a packed FC input,
    unpacked; both once per output position of a pass), the shared tables of one input
    block, and accumulators when there is more than one block. Must equal the C
    function (tests/test_kernels.py checks)."""
    padded = -(-layer.depth // 8) * 8
    # positions_per_pass: int8 rows in 8-channel groups compute two positions at a time
    passes = 2 if layer.op == OP_CONV and enc is None and layer.out_channels >= 8 else 1
    total = passes * -(-layer.out_channels // 4) * 4 if layer.op != OP_DEPTHWISE and (
        layer.out_packed or layer.pool) else 0
    if layer.op == OP_CONV or (layer.op == OP_FC and layer.in_packed):
        total += passes * padded
    if enc is not None and enc.format == FMT_BITSERIAL:  # the input's bit-planes
        return total + 4 * enc.in_bits * -(-layer.depth // 32)
    shared = layer.op != OP_DEPTHWISE and enc is not None and (
        enc.format == FMT_PLANES or (enc.format == FMT_LUT and not enc.per_channel))
    if shared:
        block = min(padded, 64 if enc.format == FMT_PLANES else 512 // (2 << enc.bits))
        total += block // 4 * 32 if enc.format == FMT_PLANES else block * (2 << enc.bits)
        if block < layer.depth:
            total += 4 * layer.out_channels
    return total
