"""Ternary weights: TWN."""
from __future__ import annotations

import tensorflow as tf

from tflq.quantizers.base import WeightQuantizer, clamp, is_positive, ste


class TernaryQuantizer(WeightQuantizer):
    r"""Ternary Weight Networks, per output channel:

    .. math::
        t = 0.7 \cdot \operatorname{mean}|w|, \qquad
        \alpha = \operatorname{mean}\{|w| : |w| > t\}, \qquad
        q(w) = \alpha \cdot \operatorname{sign}(w) \cdot [|w| > t]

    (0.7·E|w| is the paper's approximation of the L2-optimal threshold for
    Gaussian/uniform weights; α is then the exact L2-optimal scale.) Levels
    {-α, 0, α}; Δ = α. Symmetric (q(-w) = -q(w)); an all-zero channel stays zero.
    Gradient: straight-through (identity), as in the paper. Two bits per weight
    when packed. The paper's statistics are per layer; ``per_channel=True`` (the
    default) takes them per output channel.

    Args:
      per_channel: t and α per output channel (default) or per tensor.

    Reference:
      Li, Zhang, Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016.
    """

    family = "ternary"
    min_bits = max_bits = 2

    def __init__(self, bits: int = 2, per_channel: bool = True):
        super().__init__(bits, per_channel)

    def _bits_error(self, bits: int) -> str:
        return f"ternary weights take exactly 2 bits, not {bits}"

    @property
    def alias(self) -> str:
        return "ternary"

    @property
    def num_levels(self) -> int:
        return 3

    def _threshold_alpha(self, w):
        magnitude = tf.abs(w)
        scale = self.max_abs(w)  # normalise first: sums of huge weights would overflow
        m = magnitude / scale
        threshold = 0.7 * self.reduce(tf.reduce_mean, m)
        above = is_positive(m - threshold)
        alpha = self.reduce(tf.reduce_sum, m * above) / tf.maximum(
            self.reduce(tf.reduce_sum, above), 1.0)
        return threshold * scale, clamp(alpha * scale)

    def _quantize(self, w):
        threshold, alpha = self._threshold_alpha(w)
        k = tf.sign(w) * is_positive(tf.abs(w) - threshold)
        return ste(w, alpha * k)

    def _step(self, w):
        return self._threshold_alpha(w)[1]
