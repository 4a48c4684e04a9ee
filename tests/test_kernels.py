"""micro/kernels against TFLM's reference int8 arithmetic (numpy), on the host and on rv32imac.

Every format and bit width, FC / CONV_2D / DEPTHWISE_CONV_2D, random shapes, strides,
dilations, paddings and zero points; the packing format round-trips; corrupt blobs are
refused with a message.
"""
import struct
import zlib
import sys
from pathlib import Path

import numpy as np
import pytest

from tflq.converters import kernels, packed_format, packing, toolchain
from tflq.converters.requantize import double_rounding
from tflq.errors import TflqError

# Codebooks in int8 units, as tflq's quantizers export them.
CODEBOOKS = {
    "binary": [-3, 3],
    "ternary": [-5, 0, 5],
    "log3": [-4, -2, -1, 0, 1, 2, 4],
    "log4": [-64, -16, -4, -1, 0, 1, 4, 16, 64],
    "fixed4": list(range(-7, 8)),
    "uniform3": [-12, -8, -4, 0, 4, 8, 12, 16],
    "odd2": [-5, 0, 7],
    "random16": None,  # 16 random levels: a 4-bit codebook
    "int8": None,  # full int8: stays int8 rows
}
EXPECTED = {"binary": "1-bit bit-planes", "ternary": "2-bit bit-planes",
            "log3": "3-bit codebook", "log4": "4-bit codebook", "fixed4": "4-bit bit-planes",
            "uniform3": "3-bit bit-planes", "odd2": "2-bit codebook",
            "random16": "4-bit codebook"}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return kernels.HostKernels(tmp_path_factory.mktemp("kernels"))


def random_layer(rng, op, codebook, per_channel_scale=True, dw3x3=False):
    """dw3x3: a DEPTHWISE_CONV_2D 3x3, stride 1, no dilation, multiplier 1 (the
    kernel's specialised loop)."""
    zp_in, zp_out = (int(v) for v in rng.integers(-128, 128, 2))
    act = [(-128, 127), (max(-128, zp_out), 127), (zp_out - 20, zp_out + 40)][rng.integers(3)]
    act = (max(-128, act[0]), min(127, act[1]))
    if op == packing.OP_FC:
        depth, channels = int(rng.integers(1, 300)), int(rng.integers(1, 40))
        geometry, kernel = dict(in_hwc=(1, 1, depth)), None
    else:
        ih, iw = (int(v) for v in rng.integers(1, 12, 2))
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        stride = tuple(int(v) for v in rng.integers(1, 3, 2))
        dil = tuple(int(v) for v in rng.integers(1, 3, 2))
        if dw3x3:
            kh, kw, stride, dil = 3, 3, (1, 1), (1, 1)
        same = bool(rng.integers(2))
        eff = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
        if not same and (eff[0] > ih or eff[1] > iw):
            same = True
        if same:
            oh, ow = -(-ih // stride[0]), -(-iw // stride[1])
            pad = (packing._same_padding(ih, oh, stride[0], kh, dil[0]),
                   packing._same_padding(iw, ow, stride[1], kw, dil[1]))
        else:
            oh, ow = (ih - eff[0]) // stride[0] + 1, (iw - eff[1]) // stride[1] + 1
            pad = (0, 0)
        if op == packing.OP_CONV:
            ic, mult = int(rng.integers(1, 10)), 1
            channels = int(rng.integers(1, 24))
            depth = kh * kw * ic
        else:
            ic, mult = int(rng.integers(1, 8)), 1 if dw3x3 else int(rng.integers(1, 3))
            channels, depth = ic * mult, kh * kw
        geometry = dict(in_hwc=(ih, iw, ic), out_hw=(oh, ow), kernel=(kh, kw), stride=stride,
                        dilation=dil, pad=pad, depth_multiplier=mult)
        kernel = (kh, kw)
    del kernel
    if codebook is None:
        weights = rng.integers(-127, 128, (channels, depth))
    else:
        weights = rng.choice(np.asarray(codebook), (channels, depth))
    scales = rng.uniform(0.001, 0.05, channels if per_channel_scale else 1)
    name = packing.OP_NAMES[op]
    mult_, shift = packing.requant_params(name, rng.uniform(0.005, 0.05), scales,
                                          rng.uniform(0.02, 0.3), channels)
    bias = rng.integers(-20000, 20000, channels).astype(np.int32)
    return packing.Layer(op, weights.astype(np.int8), bias, mult_, shift, -zp_in, zp_out,
                         act[0], act[1], **geometry)


def input_for(rng, layer, batches):
    ih, iw, ic = layer.in_hwc
    return rng.integers(-128, 128, (batches, ih * iw * ic)).astype(np.int8)


def out_size(layer):
    return layer.out_hw[0] * layer.out_hw[1] * layer.out_channels


def codebook_of(rng, name):
    if name == "random16":
        return rng.choice(np.arange(-127, 128), 16, replace=False)
    return CODEBOOKS[name]


@pytest.mark.parametrize("op", [packing.OP_FC, packing.OP_CONV, packing.OP_DEPTHWISE],
                         ids=["fc", "conv", "depthwise"])
@pytest.mark.parametrize("name", list(CODEBOOKS))
def test_c_kernels_equal_tflm_reference_arithmetic(host, op, name):
    rng = np.random.default_rng(abs(hash((op, name))) % 2 ** 32)
    for trial in range(12):
        layer = random_layer(rng, op, codebook_of(rng, name), per_channel_scale=trial % 2 == 0)
        enc = None if name == "int8" else packing.choose_encoding(layer.weights)
        if name != "int8":
            assert not isinstance(enc, str), enc
        blob = packing.pack(layer, enc)
        x = input_for(rng, layer, batches=int(rng.integers(1, 3)))
        assert packing.scratch_bytes(layer, enc) == host.scratch_bytes(blob)
        np.testing.assert_array_equal(host.eval(blob, x, out_size(layer)),
                                      packing.reference(layer, x),
                                      err_msg=f"{name} trial {trial}: {layer}")


@pytest.mark.parametrize("op", [packing.OP_FC, packing.OP_CONV], ids=["fc", "conv"])
def test_int8_blob_weights_are_channel_groups_in_input_order(op):
    # The group loops read a group's weights as one sequential stream (the FE310's
    # flash serves a byte after the last one without a new command): w[c..c+g-1, k] at
    # group offset g k. 15 channels: one group of 8, one of 4, then 3 rows.
    rng = np.random.default_rng(7)
    layer = random_layer(rng, op, CODEBOOKS["int8"])
    layer.weights = rng.integers(-128, 128, (15, 5)).astype(np.int8)
    layer.bias = layer.bias[:1].repeat(15)
    layer.multiplier, layer.shift = layer.multiplier[:1].repeat(15), layer.shift[:1].repeat(15)
    if op == packing.OP_CONV:
        layer.in_hwc, layer.kernel = (*layer.in_hwc[:2], 5), (1, 1)
    blob = packing.pack(layer, None)
    stored = np.frombuffer(blob, np.int8, 75, len(blob) - 75)
    w = layer.weights
    np.testing.assert_array_equal(stored[:40], w[:8].T.reshape(-1))
    np.testing.assert_array_equal(stored[40:60], w[8:12].T.reshape(-1))
    np.testing.assert_array_equal(stored[60:], w[12:].reshape(-1))
    np.testing.assert_array_equal(packing.unpack(blob)[0].weights, w)


@pytest.mark.parametrize("name", list(CODEBOOKS))
def test_depthwise_3x3_loop_equals_tflm_reference_arithmetic(host, name):
    # Sizes from 1x1 up, SAME and VALID: padding on every side, and inputs narrower
    # than the window; swept along rows, and down columns where those are longer (and
    # the output as wide as the input).
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    sweeps = set()
    for trial in range(16):
        layer = random_layer(rng, packing.OP_DEPTHWISE, codebook_of(rng, name),
                             per_channel_scale=trial % 2 == 0, dw3x3=True)
        channels = layer.out_channels
        if trial >= 12:  # multipliers above 1: left shifts, which the loop folds into weights
            layer.shift = rng.integers(1, 4, channels).astype(np.int32)
            layer.multiplier = rng.integers(2**30, 2**31, channels).astype(np.int32)
            layer.bias = rng.integers(-300, 300, channels).astype(np.int32)
        if trial >= 14:  # biases near int32's limits: the fast rounding's bound, and beyond
            layer.shift = rng.integers(-25, -20, channels).astype(np.int32)
            low = 2**30 if trial == 14 else 2**31 - 2**27
            layer.bias = (rng.choice([-1, 1], channels) *
                          rng.integers(low, 2**31 - 2**18, channels)).astype(np.int32)
        assert (layer.kernel, layer.stride, layer.dilation) == ((3, 3), (1, 1), (1, 1))
        sweeps.add(layer.out_hw[0] > layer.out_hw[1] and layer.out_hw[1] == layer.in_hwc[1])
        enc = None if name == "int8" else packing.choose_encoding(layer.weights)
        blob = packing.pack(layer, enc)
        x = input_for(rng, layer, batches=int(rng.integers(1, 3)))
        np.testing.assert_array_equal(host.eval(blob, x, out_size(layer)),
                                      packing.reference(layer, x),
                                      err_msg=f"{name} trial {trial}: {layer}")
    assert sweeps == {False, True}, "draw shapes for both sweeps"


def bit_serial_layer(rng, op, codebook, in_bits, out_codes=None):
    """A layer whose input holds in_bits-bit codes lo .. 127 (a low-bit activation), as a
    BITSERIAL encoding; out_codes: an activation range of that many codes (thresholds)."""
    layer = random_layer(rng, op, codebook)
    layer.input_offset = -packing.input_low(in_bits)
    if out_codes is not None:
        layer.act_min = int(rng.integers(-128, 129 - out_codes))
        layer.act_max = layer.act_min + out_codes - 1
        layer.output_offset = int(np.clip(layer.act_min + rng.integers(-3, 4), -128, 127))
    enc = packing.choose_encoding(layer.weights)
    if enc.format != packing.FMT_PLANES:  # a small layer missed levels: the codebook's grid
        v0, d, bits = packed_format._affine(np.unique(codebook))
        enc = packing.Encoding(packing.FMT_PLANES, bits, False, np.array([[v0, d]], np.int16))
    return layer, packing.bit_serial(enc, in_bits, layer)


def bit_serial_input(rng, layer, in_bits, batches):
    ih, iw, ic = layer.in_hwc
    return rng.integers(packing.input_low(in_bits), 128, (batches, ih * iw * ic)).astype(np.int8)


@pytest.mark.parametrize("op", [packing.OP_FC, packing.OP_CONV], ids=["fc", "conv"])
@pytest.mark.parametrize("name", ["binary", "ternary", "fixed4", "uniform3"])
@pytest.mark.parametrize("in_bits", [1, 2, 3, 4])
def test_bit_serial_kernels_equal_tflm_reference_arithmetic(host, op, name, in_bits):
    rng = np.random.default_rng(zlib.crc32(repr((op, name, in_bits)).encode()))
    used_thresholds = 0
    for trial in range(8):
        out_codes = [None, 2, 3, 4][trial % 4]
        layer, enc = bit_serial_layer(rng, op, CODEBOOKS[name], in_bits, out_codes)
        used_thresholds += enc.thresholds
        blob = packing.pack(layer, enc)
        back, back_enc = packing.unpack(blob)
        np.testing.assert_array_equal(back.weights, layer.weights)
        np.testing.assert_array_equal(back.bias, layer.bias)
        assert (back_enc.format, back_enc.bits, back_enc.in_bits, back_enc.thresholds) == (
            enc.format, enc.bits, in_bits, enc.thresholds)
        np.testing.assert_array_equal(back_enc.codebook, enc.codebook)
        x = bit_serial_input(rng, layer, in_bits, batches=int(rng.integers(1, 3)))
        assert packing.scratch_bytes(layer, enc) == host.scratch_bytes(blob)
        np.testing.assert_array_equal(host.eval(blob, x, out_size(layer)),
                                      packing.reference(layer, x),
                                      err_msg=f"{name} A{in_bits} trial {trial}: {enc.describe()}")
    assert used_thresholds >= 4  # every small output range took the threshold path


def random_pool(rng, layer):
    """A MAX_POOL_2D fused into a CONV_2D / DEPTHWISE_CONV_2D layer's output: random
    window, stride and SAME / VALID padding, as TFLM computes them."""
    oh, ow = layer.out_hw
    k = [int(rng.integers(1, 4)) for _ in range(2)]
    stride = [int(rng.integers(1, 4)) for _ in range(2)]
    same = bool(rng.integers(2)) or k[0] > oh or k[1] > ow
    if same:
        out = [-(-n // s) for n, s in zip((oh, ow), stride)]
        pad = [max((o - 1) * s + kk - n, 0) // 2 for o, s, kk, n in zip(out, stride, k, (oh, ow))]
    else:
        out = [(n - kk) // s + 1 for n, kk, s in zip((oh, ow), k, stride)]
        pad = [0, 0]
    return (*k, *stride, *pad, *out)


def packed_io_layer(rng, op, name, trial):
    """A layer with packed input and / or output codes and, for convolutions, a fused
    max-pool: the activation layouts of tflq's packed-activation models."""
    if name == "bit-serial":
        in_bits = int(rng.integers(1, 5))
        layer, enc = bit_serial_layer(rng, op, CODEBOOKS["ternary"], in_bits)
        layer.in_packed = in_bits if trial % 2 else 0
    else:
        layer = random_layer(rng, op, codebook_of(rng, name))
        enc = None if name == "int8" else packing.choose_encoding(layer.weights)
        layer.in_packed = trial % 5
    layer.out_packed = (3 * trial + 1) % 5
    if layer.out_packed:
        layer.act_min, layer.act_max = packing.input_low(layer.out_packed), 127
        layer.output_offset = int(np.clip(layer.act_min + rng.integers(-2, 6), -128, 127))
    if op != packing.OP_FC and trial % 3:
        layer.pool = random_pool(rng, layer)
    return layer, enc


@pytest.mark.parametrize("op,name", [
    (op, name) for op in (packing.OP_FC, packing.OP_CONV, packing.OP_DEPTHWISE)
    for name in ("int8", "ternary", "fixed4", "log3", "bit-serial")
    if not (op == packing.OP_DEPTHWISE and name == "bit-serial")])  # no bit-serial depthwise
def test_packed_activations_and_fused_pools_equal_the_reference(host, op, name):
    """k-bit packed inputs and outputs (pack_activations' layout) and fused max-pools give
    TFLM's arithmetic, then TFLM's MAX_POOL_2D, exactly."""
    rng = np.random.default_rng(zlib.crc32(repr((op, name, "packed")).encode()))
    seen = set()
    for trial in range(16):
        layer, enc = packed_io_layer(rng, op, name, trial)
        seen.add((layer.in_packed > 0, layer.out_packed > 0, layer.pool is not None))
        blob = packing.pack(layer, enc)
        back, _ = packing.unpack(blob)
        assert (back.in_packed, back.out_packed, back.pool) == (
            layer.in_packed, layer.out_packed, layer.pool)
        bits = layer.in_packed or (enc.in_bits if enc is not None else 0)
        low = packing.input_low(bits) if bits else -128
        ih, iw, ic = layer.in_hwc
        x = rng.integers(low, 128, (int(rng.integers(1, 3)), ih * iw * ic)).astype(np.int8)
        assert packing.scratch_bytes(layer, enc) == host.scratch_bytes(blob)
        np.testing.assert_array_equal(host.run(blob, x), packing.reference(layer, x),
                                      err_msg=f"{name} trial {trial}: {layer}")
    assert len(seen) >= (3 if op == packing.OP_FC else 5)  # int8 / packed in and out, pooled or not


def _conv_cases(rng, name, trial):
    """A CONV_2D layer and encoding: weights of the codebook ``name``, bit-serial with
    output thresholds, or packed input / output codes with a fused max-pool."""
    if name == "bit-serial":
        return bit_serial_layer(rng, packing.OP_CONV, CODEBOOKS["ternary"], 1 + trial % 4,
                                [None, 2, 3, 4][trial % 4])
    if name == "packed io":
        return packed_io_layer(rng, packing.OP_CONV, ("int8", "ternary", "log3")[trial % 3],
                               trial)
    layer = random_layer(rng, packing.OP_CONV, codebook_of(rng, name),
                         per_channel_scale=trial % 2 == 0)
    return layer, None if name == "int8" else packing.choose_encoding(layer.weights)


@pytest.mark.parametrize("name", [*CODEBOOKS, "bit-serial", "packed io"])
def test_conv_staged_in_blocks_of_channels_equals_the_reference(host, name):
    """stage_channels (TFLQ_PACKED's custom options): rows and constants copied into
    scratch a block of output channels at a time give the same outputs, and the scratch
    the Python formula says."""
    rng = np.random.default_rng(zlib.crc32(repr((name, "staged")).encode()))
    for trial in range(8):
        layer, enc = _conv_cases(rng, name, trial)
        blob = packing.pack(layer, enc)
        bits = layer.in_packed or (enc.in_bits if enc is not None else 0)
        low = packing.input_low(bits) if bits else -128
        ih, iw, ic = layer.in_hwc
        x = rng.integers(low, 128, (int(rng.integers(1, 3)), ih * iw * ic)).astype(np.int8)
        expected = packing.reference(layer, x)
        c = layer.out_channels
        unit = packing.STAGE_UNIT
        for channels in sorted({c, *(n for n in (unit, 2 * unit) if n < c)}):
            assert host.scratch_bytes(blob, channels) == (
                packing.scratch_bytes(layer, enc) + packing.stage_bytes(layer, enc, channels))
            np.testing.assert_array_equal(host.run(blob, x, channels), expected,
                                          err_msg=f"{name} trial {trial}: {channels} of {c}")


def test_stage_channels_are_checked(host):
    rng = np.random.default_rng(8)
    layer = random_layer(rng, packing.OP_CONV, CODEBOOKS["ternary"])
    while layer.out_channels < 6:
        layer = random_layer(rng, packing.OP_CONV, CODEBOOKS["ternary"])
    conv = packing.pack(layer, packing.choose_encoding(layer.weights))
    with pytest.raises(TflqError, match="3 channels staged at a time"):
        host.parse(conv, 3)
    with pytest.raises(TflqError, match="FULLY_CONNECTED: 4 channels staged"):
        host.parse(_blob(rng, op=packing.OP_FC), 4)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_packed_activation_layout_round_trips(k):
    rng = np.random.default_rng(k)
    x = rng.integers(packing.input_low(k), 128, (3, 37)).astype(np.int8)
    packed = packed_format.pack_activations(x, k)
    assert packed.shape == (3, packed_format.activation_bytes(37, k))
    np.testing.assert_array_equal(packed_format.unpack_activations(packed, k, 37), x)
    # element 1's code sits at bits s .. 2s - 1 of byte 0 (LSB first)
    s = packed_format.store_bits(k)
    assert (packed[0, 0] >> s) & ((1 << s) - 1) == x[0, 1] - packing.input_low(k)
    with pytest.raises(TflqError, match="outside"):
        packed_format.pack_activations(x - 1 if k < 4 else np.full((1, 2), -128, np.int8), k)


def test_thresholds_are_the_requantization_steps():
    """Each threshold is the least accumulator reaching its code, within the range the
    weights and 1-bit inputs can reach: one less stays below, unless it is the bottom."""
    rng = np.random.default_rng(3)
    layer, enc = bit_serial_layer(rng, packing.OP_FC, CODEBOOKS["binary"], 1, out_codes=3)
    table = packing.thresholds(layer, enc)
    w = layer.weights.astype(np.int64)
    bottom = packing.bias_eff(layer, enc) + np.minimum(w, 0).sum(1)
    for c in range(layer.out_channels):
        m, shift = int(layer.multiplier[c]), int(layer.shift[c])
        code = lambda acc: min(max(int(double_rounding(np.array([acc]), m, shift)[0])  # noqa: E731
                                   + layer.output_offset, layer.act_min), layer.act_max)
        for i, t in enumerate(table[c], start=1):
            if code(int(t)) >= layer.act_min + i and t > bottom[c]:  # t is the step
                assert code(int(t) - 1) < layer.act_min + i


@pytest.mark.parametrize("name", [n for n in EXPECTED])
def test_encoding_is_the_fewest_bits_and_round_trips(name):
    rng = np.random.default_rng(7)
    # Every level present, as after QAT on a layer of useful size.
    book = np.asarray(codebook_of(rng, name))
    weights = np.concatenate([np.tile(book, (16, 1)), rng.choice(book, (16, 40))], 1)
    enc = packing.choose_encoding(weights)
    assert enc.describe() == EXPECTED[name]
    layer = packing.Layer(packing.OP_FC, weights.astype(np.int8), np.arange(16, dtype=np.int32),
                          np.full(16, 1 << 30, np.int32), np.full(16, -3, np.int32), 5, -3,
                          in_hwc=(1, 1, weights.shape[1]))
    blob = packing.pack(layer, enc)
    back, enc_back = packing.unpack(blob)
    np.testing.assert_array_equal(back.weights, layer.weights)
    np.testing.assert_array_equal(back.bias, layer.bias)
    assert enc_back.describe() == enc.describe()
    # b bits per weight: rows of bits * ceil(depth / 8) bytes.
    weight_bytes = 16 * enc.bits * -(-weights.shape[1] // 8)
    assert len(blob) == packing.HEADER.size + 12 * 16 + (-(-enc.codebook.nbytes // 4) * 4) + weight_bytes


def test_too_many_levels_stay_int8():
    rng = np.random.default_rng(3)
    reason = packing.choose_encoding(rng.integers(-127, 128, (4, 200)))
    assert isinstance(reason, str) and "distinct int8 weight values" in reason


def test_requantize_is_tflm_double_rounding(host):
    rng = np.random.default_rng(11)
    accs = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 2000), [0, 1, -1, 2 ** 31 - 1]])
    for q, shift in [(1 << 30, -1), (1518500250, -7), (2 ** 31 - 1, -31), (1 << 30, 0),
                     (1395864371, 3), (1288490189, -12)]:
        small = accs >> max(shift, 0)  # left shifts must not overflow (as in TFLM)
        want = double_rounding(small, q, shift)
        got = [host.requantize(int(a), q, shift) for a in small]
        np.testing.assert_array_equal(got, want, err_msg=f"q={q} shift={shift}")


@pytest.mark.firmware
@pytest.mark.usefixtures("firmware_tools")
def test_requantize_on_the_fe310_is_tflm_double_rounding():
    """micro/kernels/tflq_requantize.h compiled for rv32imac, in QEMU, against numpy: ties,
    extremes and every shift from -31 to 3 (left shifts kept from overflowing, as in
    TFLM)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import requantize_cost  # noqa: E402  -- the benchmark's driver, so both run one program

    rng = np.random.default_rng(12)
    rows = []
    for shift in range(-31, 4):
        for q in (1 << 30, 2 ** 31 - 1, 1518500250, int(rng.integers(1 << 30, 1 << 31))):
            accs = [0, 1, -1, 2 ** 31 - 1, -2 ** 31 + 1, *rng.integers(-2 ** 31, 2 ** 31, 4)]
            # ties: with q = 2^30, a*q/2^31 = a/2 (odd a), and high = 3*2^(r-1) at a = 3*2^r
            accs += [3, -3] + ([3 << -shift, -(3 << -shift)] if 0 < -shift <= 29 else [])
            rows += [(int(a) >> max(shift, 0), q, shift) for a in accs]
    acc, mult, shift = (np.array(c, np.int64) for c in zip(*rows))
    _, raw, _, _ = requantize_cost.run_on_device(
        str(kernels.KERNELS_DIR / "tflq_requantize.h"), acc, np.zeros_like(acc), mult, shift, 0)
    want = np.array([int(double_rounding(a, int(q), int(s))) for a, q, s in rows])
    np.testing.assert_array_equal(raw, want)


def _blob(rng, name="ternary", op=packing.OP_CONV):
    layer = random_layer(rng, op, CODEBOOKS[name])
    return packing.pack(layer, packing.choose_encoding(layer.weights))


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-1], "header says"),
    (lambda b: b + b"\0\0\0\0", "header says"),
    (lambda b: b[:40], "less than the 68-byte header"),
    (lambda b: b"XQP1" + b[4:], "bad magic"),
    (lambda b: b[:6] + bytes([7]) + b[7:], "bits"),  # bit width 7
    (lambda b: b[:5] + bytes([9]) + b[6:], "unknown weight format"),
    (lambda b: b[:7] + bytes([1]) + b[8:], "codebook need"),  # per-channel flag: sizes differ
    (lambda b: b[:48] + struct.pack("<I", 3) + b[52:], "bytes per weight row"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "unknown op"),
    (lambda b: b[:7] + bytes([0x40]) + b[8:], "unknown flags"),
])
def test_corrupt_blobs_are_refused_with_a_message(host, corrupt, message):
    blob = _blob(np.random.default_rng(5))
    host.parse(blob)
    bad = corrupt(blob)
    if len(bad) >= 68 and bad[:4] == b"TQP2":
        bad = bad[:52] + struct.pack("<I", len(bad)) + bad[56:] if message != "header says" else bad
    with pytest.raises(TflqError, match=message):
        host.parse(bad)


def test_rv32imac_in_qemu_equals_the_reference(tmp_path):
    try:
        toolchain.find_toolchain()
        toolchain.find_qemu()
    except Exception as e:  # noqa: BLE001 -- the message names the package
        pytest.skip(str(e))
    rng = np.random.default_rng(21)
    cases = []
    for op in (packing.OP_FC, packing.OP_CONV, packing.OP_DEPTHWISE):
        for name in ("binary", "ternary", "log3", "fixed4", "uniform3", "odd2", "int8"):
            layer = random_layer(rng, op, CODEBOOKS[name])
            enc = None if name == "int8" else packing.choose_encoding(layer.weights)
            cases.append((layer, packing.pack(layer, enc), input_for(rng, layer, 2)))
    for op in (packing.OP_FC, packing.OP_CONV):  # bit-serial: low-bit inputs
        for name, in_bits, out_codes in (("binary", 1, 2), ("binary", 2, None),
                                         ("ternary", 2, 4), ("fixed4", 3, None)):
            layer, enc = bit_serial_layer(rng, op, CODEBOOKS[name], in_bits, out_codes)
            cases.append((layer, packing.pack(layer, enc), bit_serial_input(rng, layer, in_bits, 2)))
    for op in (packing.OP_FC, packing.OP_CONV, packing.OP_DEPTHWISE):  # packed in / out, pools
        for name, trial in (("int8", 4), ("ternary", 7), ("log3", 2), ("bit-serial", 5)):
            if op == packing.OP_DEPTHWISE and name == "bit-serial":
                continue
            layer, enc = packed_io_layer(rng, op, name, trial)
            bits = layer.in_packed or (enc.in_bits if enc is not None else 0)
            ih, iw, ic = layer.in_hwc
            x = rng.integers(packing.input_low(bits) if bits else -128, 128, (2, ih * iw * ic))
            cases.append((layer, packing.pack(layer, enc), x.astype(np.int8)))
    sweeps = {}
    while len(sweeps) < 2:  # the 3x3 depthwise loop, along rows and down columns
        layer = random_layer(rng, packing.OP_DEPTHWISE, CODEBOOKS["int8"], dw3x3=True)
        (oh, ow), iw = layer.out_hw, layer.in_hwc[1]
        sweeps.setdefault(oh > ow and ow == iw, layer)
    cases += [(layer, packing.pack(layer, None), input_for(rng, layer, 2))
              for layer in sweeps.values()]
    source = ['#include <stdio.h>\n#include "tflq_kernels.h"\n']
    calls = []
    for i, (layer, blob, x) in enumerate(cases):
        source.append(kernels.c_array(f"blob{i}", "uint8_t", np.frombuffer(blob, np.uint8)))
        stored = packed_format.pack_activations(x, layer.in_packed) if layer.in_packed else x
        source.append(kernels.c_array(f"x{i}", "int8_t", stored.view(np.int8)))
        values = int(np.prod(layer.output_hw)) * layer.out_channels
        size = packed_format.activation_bytes(values, layer.out_packed)
        calls.append(f"  run({i}, blob{i}, sizeof(blob{i}), x{i}, 2, {size});\n")
    source.append(
        "static int8_t out[4096]; static int32_t scratch[1024];\n"
        "static void run(int id, const uint8_t* blob, unsigned len, const int8_t* x, int n, int size) {\n"
        "  tflq_layer_t l; char err[128];\n"
        "  if (tflq_layer_parse(blob, len, &l, err, sizeof err)) { printf(\"ERR %d %s\\n\", id, err); return; }\n"
        "  if (tflq_scratch_bytes(&l) > sizeof scratch) { printf(\"ERR %d scratch\\n\", id); return; }\n"
        "  tflq_layer_eval(&l, x, n, out, scratch);\n"
        "  printf(\"Y %d\", id); for (int i = 0; i < n * size; ++i) printf(\" %d\", out[i]); printf(\"\\n\");\n"
        "}\nint main(void) {\n" + "".join(calls) + "  return 0;\n}\n")
    elf = kernels.rv32_program("".join(source), tmp_path)
    result = toolchain.run_qemu(elf, timeout_s=120)
    assert result.exit_code == 0, result.uart_text[-800:]
    lines = {int(l.split()[1]): l.split()[2:] for l in result.uart_text.splitlines()
             if l.startswith("Y ")}
    assert "ERR" not in result.uart_text, result.uart_text
    for i, (layer, _, x) in enumerate(cases):
        got = np.array(lines[i], int).reshape(2, -1)
        if layer.out_packed:
            got = packed_format.unpack_activations(got.astype(np.int8).view(np.uint8),
                                                   layer.out_packed,
                                                   int(np.prod(layer.output_hw)) * layer.out_channels)
        np.testing.assert_array_equal(got, packing.reference(layer, x), err_msg=f"case {i}")
