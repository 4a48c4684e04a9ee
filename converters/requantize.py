"""The two int32 -> int8 requantization roundings found in TFLite kernels.

A quantized layer computes an int32 accumulator and scales it by
M = s_in * s_w / s_out, stored as a 31-bit mantissa q and a power-of-two shift
(``quantize_multiplier``). Two ways of applying (q, shift) coexist:

- ``double_rounding``: gemmlowp's SaturatingRoundingDoublingHighMul, then
  RoundingDivideByPOT -- what TFLM's kernels do, and so what the FE310 does.
- ``single_rounding``: one 64-bit product, one round-half-up shift -- TFLite's
  ``TFLITE_SINGLE_ROUNDING`` form, which tf.lite's FULLY_CONNECTED uses in the
  TF 2.21 wheel.

They disagree by one step when the two roundings straddle a tie; see
docs/tflm_vs_tflite.md. numpy here, so tests and the C kernels' reference can
name the rounding they expect.
"""
from __future__ import annotations

import numpy as np


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: m = q * 2^(shift - 31), q in [2^30, 2^31)."""
    mantissa, shift = np.frexp(np.float64(m))
    q = int(np.round(mantissa * (1 << 31)))
    if q == 1 << 31:
        q //= 2
        shift += 1
    return q, int(shift)


def double_rounding(acc, q: int, shift: int) -> np.ndarray:
    """TFLM / gemmlowp: round(acc * 2^left * q / 2^31), then rounding shift right."""
    acc = np.asarray(acc, np.int64) * (1 << max(shift, 0))
    prod = acc * q
    nudge = np.where(prod >= 0, 1 << 30, 1 - (1 << 30))
    x = prod + nudge
    high = np.where(x >= 0, x >> 31, -((-x) >> 31))  # C++ integer division truncates
    right = max(-shift, 0)
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


def single_rounding(acc, q: int, shift: int) -> np.ndarray:
    """TFLite with TFLITE_SINGLE_ROUNDING: (acc * q + 2^(30 - shift)) >> (31 - shift)."""
    total = 31 - shift
    return (np.asarray(acc, np.int64) * q + (1 << (total - 1))) >> total


def fully_connected(model, op, inputs_int8: np.ndarray, rounding) -> np.ndarray:
    """A per-tensor int8 FULLY_CONNECTED op of a flatbuffer, in numpy with ``rounding``."""
    from tflq.converters import flatbuffer as fb

    x, w, b, y = (fb.tensor(model, i) for i in (*op.inputs[:3], op.outputs[0]))
    acc = (np.asarray(inputs_int8, np.int64).reshape(len(inputs_int8), -1) - x.zero_point[0]) \
        @ w.data.astype(np.int64).T + b.data
    # TFLite's GetQuantizedConvolutionMultipler: the scale product in float, then double.
    q, shift = quantize_multiplier(float(np.float32(x.scale[0]) * np.float32(w.scale[0])) / y.scale[0])
    low = -128
    options = op.builtinOptions
    if options is not None and options.fusedActivationFunction == 1:  # RELU
        low = int(y.zero_point[0])
    elif options is not None and options.fusedActivationFunction not in (0, 1):
        raise ValueError("only NONE and RELU fused activations are modelled here")
    return np.clip(rounding(acc, q, shift) + y.zero_point[0], low, 127)
