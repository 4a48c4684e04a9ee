"""Uniform k-bit weights: fixed-point and min-max."""
from __future__ import annotations

import tensorflow as tf

from tflq.quantizers.base import WeightQuantizer, ceil_log2, clamp, pow2, round_half_up, ste


class FixedPointQuantizer(WeightQuantizer):
    r"""Symmetric fixed-point k-bit weights, per output channel (nnabla's
    FixedPointQuantize with the step chosen from the weights).

    A true fixed-point step, a power of two, the smallest that covers the channel:

    .. math::
        \Delta = 2^{\lceil \log_2(\max|w| / (2^{k-1} - 1)) \rceil}, \qquad
        q(w) = \Delta \cdot \operatorname{clip}(\operatorname{round}(w / \Delta),\, -(2^{k-1} - 1),\, 2^{k-1} - 1)

    Saturation: the ceiling makes :math:`(2^{k-1} - 1)\Delta \ge \max|w|`, so no
    weight of the channel saturates (the clip only matters for weights beyond
    2^100, where the statistic is clamped). The power-of-two step costs up to half
    the range (max|w| may use only half the codes); min-max does not. Levels
    Δ·{-(2^{k-1}-1), ..., 2^{k-1}-1}: 2^k - 1 of them, symmetric (round half to
    even is odd-symmetric), exact in int8 for k <= 8 (fixed8 = ±127). Idempotent
    exactly. Gradient: straight-through (identity; equal to the clip-masked one,
    since nothing saturates).

    Args:
      bits: k, 2 to 8.
      per_channel: Δ per output channel (default) or per tensor.

    Reference: nnabla ``F.fixed_point_quantize`` (sign, n, delta).
    """

    family = "fixed"
    min_bits, max_bits = 2, 8

    def _bits_error(self, bits: int) -> str:
        return (f"fixed{bits}: fixed-point weights take 2 to 8 bits (2^(k-1) - 1 positive "
                f"levels; int8 holds up to ±127, fixed8)")

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits - 1

    def _step(self, w):
        top = 2.0 ** (self.bits - 1) - 1.0
        return pow2(ceil_log2(clamp(self.max_abs(w) / top)))

    def _quantize(self, w):
        step = self._step(tf.stop_gradient(w))
        top = 2.0 ** (self.bits - 1) - 1.0
        return ste(w, step * tf.clip_by_value(tf.round(w / step), -top, top))


class MinMaxQuantizer(WeightQuantizer):
    r"""Asymmetric min-max k-bit weights (nnabla's MinMaxQuantize), per output channel.

    The range [min(w, 0), max(w, 0)] is split into 2^k - 1 steps and the zero point
    is nudged to an integer so that 0 is exactly a level, as TensorFlow's
    ``fake_quant_with_min_max_vars`` does (quant range [0, 2^k - 1], rounding half up):

    .. math::
        \Delta = \frac{\max(w, 0) - \min(w, 0)}{2^k - 1}, \quad
        z = \operatorname{round}(-\min(w, 0) / \Delta), \quad
        q(w) = \Delta\,(\operatorname{clip}(\operatorname{round}(w/\Delta) + z,\, 0,\, 2^k - 1) - z)

    Levels (i - z)·Δ, i = 0 .. 2^k - 1: 2^k of them, not symmetric about 0.
    Saturation: the nudge shifts the range by up to Δ/2, so the weight at the far
    end may be clipped by at most Δ/2 (as in TF). |i - z| <= 2^k - 1, so k <= 7
    fits int8 (minmax8 would need 255). Idempotent up to float32 rounding, except
    where -min/Δ is exactly a half-integer. Gradient: straight-through (identity).

    Args:
      bits: k, 2 to 7.
      per_channel: range per output channel (default) or per tensor.

    References: nnabla ``F.min_max_quantize``; Jacob et al., "Quantization and
    Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
    CVPR 2018 (the zero-point nudging of TF's fake-quant).
    """

    family = "minmax"
    min_bits, max_bits = 2, 7

    def _bits_error(self, bits: int) -> str:
        return (f"minmax{bits}: min-max weights take 2 to 7 bits here: the 2^k levels "
                f"(i - z)Δ span 2^k - 1 steps on one side of 0 in the worst case, and int8 "
                f"weights (zero point 0) hold |k| <= 127, so k = 8 (255) does not fit. "
                f"Use minmax7 or fixed8")

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits

    def _range(self, w):
        n = 2.0 ** self.bits - 1.0
        low = tf.minimum(self.reduce(tf.reduce_min, w), 0.0)
        high = tf.maximum(self.reduce(tf.reduce_max, w), 0.0)
        step = clamp(high / n - low / n)  # not (high - low) / n: that can overflow
        return step, round_half_up(-low / step)

    def _step(self, w):
        return self._range(w)[0]

    def _quantize(self, w):
        step, zero = self._range(tf.stop_gradient(w))
        top = 2.0 ** self.bits - 1.0
        i = tf.clip_by_value(round_half_up(w / step) + zero, 0.0, top)
        return ste(w, step * (i - zero))
