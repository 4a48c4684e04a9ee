"""Logarithmic (power-of-two) weights."""
from __future__ import annotations

import tensorflow as tf

from tflq.quantizers.base import WeightQuantizer, is_positive, pow2, round_log2, sign_plus, ste


class LogQuantizer(WeightQuantizer):
    r"""Power-of-two weights with an exact zero.

    With :math:`n = 2^{b-1} - 1` exponents per output channel (b bits hold the
    sign, the zero and n magnitudes):

    .. math::
        e_{max} = \operatorname{round}(\log_2 \max_c |w|), \qquad e_{min} = e_{max} - n + 1

        q(w) = \begin{cases} 0 & |w| < 2^{e_{min} - 1} \\
               \operatorname{sign}(w)\, 2^{\operatorname{clip}(\operatorname{round}(\log_2|w|),\, e_{min},\, e_{max})}
               & \text{otherwise} \end{cases}

    Rounding is in the log domain (Miyashita et al.; nnabla's Pow2Quantize is
    "linear quantization in the log2 domain"): a weight goes to the power of two
    nearest in ratio, i.e. up iff :math:`|w| \ge \sqrt2 \cdot 2^{\lfloor\log_2|w|\rfloor}`.
    That is the rounding these papers train with, and it makes the window
    scale-free. The window's top :math:`e_{max}` is the same rounding applied to the
    channel's max|w|, so the largest weight is never clipped (it lands on its own
    nearest power of two); with ``floor`` it could be cut by up to 2x. The zero
    decision is the linear one: below half the smallest level a weight is nearer
    to 0 than to :math:`2^{e_{min}}`.

    Exactness: the levels are :math:`\Delta \cdot \{0, \pm 1, \pm 2, \dots, \pm 2^{n-1}\}`,
    :math:`\Delta = 2^{e_{min}}`, so int8 holds them only while :math:`2^{n-1} \le 127`,
    i.e. n <= 7 exponents, b <= 4 (log4: 1..64). Gradient: straight-through
    (identity, not masked: the window follows the weights, so nothing saturates
    for long).

    Args:
      bits: 2 to 4 (log2 = {0, ±2^e_max}: 3 levels; log3: 7; log4: 15).
      per_channel: exponent window per output channel (default) or per tensor.

    References:
      - Cai, Takemoto, Nakajo, "Weight Quantized DNN on IoT Devices" (DLQ), IAIT 2018.
      - Miyashita, Lee, Murmann, "Convolutional Neural Networks using Logarithmic
        Data Representation", arXiv:1603.01025, 2016.
      - nnabla ``F.pow2_quantize``.
    """

    family = "log"
    min_bits, max_bits = 2, 4

    def _bits_error(self, bits: int) -> str:
        if bits > self.max_bits:
            n = 2 ** (bits - 1) - 1
            return (f"log{bits}: {bits} bits would give {n} exponents per channel, levels up to "
                    f"2^{n - 1} times the smallest; int8 export holds at most "
                    f"7 exponents exactly (2^6 = 64 <= 127 < 2^7 = 128). Use log4 (15 levels: "
                    f"0, ±1, ±2, ..., ±64 times Δ) or a uniform quantizer (fixed8, minmax7)")
        return (f"log{bits}: {bits} bits is out of range: log quantizers take 2 to 4 bits "
                f"(sign, zero and 2^(b-1) - 1 exponents)")

    @property
    def num_levels(self) -> int:
        return 2 * self.exponents + 1

    @property
    def exponents(self) -> int:
        """n: the number of powers of two per channel."""
        return 2 ** (self.bits - 1) - 1

    def _window(self, w):
        e_max = tf.minimum(round_log2(self.max_abs(w)), 127.0)
        return e_max - (self.exponents - 1), e_max

    def _quantize(self, w):
        e_min, e_max = self._window(w)
        magnitude = tf.abs(w)
        # round(log2|w|) - e_min, in [0, n - 1]; |w| is floored only to keep log2 finite.
        e = tf.clip_by_value(round_log2(tf.maximum(magnitude, pow2(e_min - 1))), e_min, e_max)
        keep = 1.0 - is_positive(pow2(e_min - 1) - magnitude)  # |w| >= half the smallest level
        k = keep * sign_plus(w) * pow2(e - e_min)
        return ste(w, pow2(e_min) * k)

    def _step(self, w):
        return pow2(self._window(w)[0])
