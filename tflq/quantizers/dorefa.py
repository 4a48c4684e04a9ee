"""DoReFa-Net weights."""
from __future__ import annotations

import tensorflow as tf

from tflq.quantizers.base import WeightQuantizer, clamp, round_half_up, sign_plus, ste


class DoReFaQuantizer(WeightQuantizer):
    r"""DoReFa-Net k-bit weights.

    For k >= 2:

    .. math::
        q(w) = 2\, \operatorname{quantize}_k\!\left(\frac{\tanh w}{2 \max|\tanh w|} + \frac12\right) - 1,
        \qquad \operatorname{quantize}_k(x) = \frac{\operatorname{round}((2^k - 1)x)}{2^k - 1}

    The levels are the odd multiples of Δ = 1/(2^k - 1) in [-1, 1] (2^k of them;
    exact in int8 for k <= 7). They do not depend on the weights' scale: the paper
    trains from scratch, with BatchNorm after each layer. Zero is not a level:
    rounding is half up, so w = 0 goes to +Δ (symmetric otherwise).
    Gradient: as the paper and its reference code (tensorpack), through tanh and
    the max normalisation, straight-through (identity) over the rounding only.

    For k = 1 the paper (and tensorpack) use BWN instead,
    :math:`q(w) = \operatorname{sign}(w) \cdot \operatorname{mean}|w|` with sign(0) = +1,
    Δ = mean|w| and an identity straight-through gradient; so does this class.

    The max (and k = 1's mean) is per tensor, following the paper
    (``per_channel=False``, the default here); ``per_channel=True`` takes it per
    output channel.

    Args:
      bits: k, 1 to 7.
      per_channel: normalise per output channel; default False (paper).

    Reference:
      Zhou, Wu, Ni, Zhou, Wen, Zou, "DoReFa-Net: Training Low Bitwidth
      Convolutional Neural Networks with Low Bitwidth Gradients", arXiv:1606.06160.
    """

    family = "dorefa"
    min_bits, max_bits = 1, 7

    def __init__(self, bits: int, per_channel: bool = False):
        super().__init__(bits, per_channel)

    def _bits_error(self, bits: int) -> str:
        return (f"dorefa{bits}: DoReFa takes 1 to 7 bits here: its 2^k levels are the odd "
                f"multiples of 1/(2^k - 1), and int8 holds |k| <= 127 (k = 8 would need 255)")

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits

    def _mean_abs(self, w):
        scale = self.max_abs(w)
        return clamp(self.reduce(tf.reduce_mean, tf.abs(w) / scale) * scale)

    def _quantize(self, w):
        if self.bits == 1:
            return ste(w, self._mean_abs(tf.stop_gradient(w)) * sign_plus(w))
        n = 2.0 ** self.bits - 1.0
        t = tf.tanh(w)
        surrogate = t / tf.maximum(self.reduce(tf.reduce_max, tf.abs(t)), 1e-30)  # 2x - 1
        k = 2.0 * round_half_up(tf.stop_gradient(n * (surrogate + 1.0) / 2.0)) - n  # odd, |k| <= n
        # Forward exactly Δ·k; backward: identity over the rounding, then through
        # the normalisation and tanh (d q / d surrogate = 1).
        return ste(surrogate, (1.0 / n) * k)

    def _step(self, w):
        if self.bits == 1:
            return self._mean_abs(w)
        return tf.fill(tf.shape(self.reduce(tf.reduce_max, w)), 1.0 / (2.0 ** self.bits - 1.0))
