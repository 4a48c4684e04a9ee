"""μL2Q: ultra-low-loss quantization."""
from __future__ import annotations

import tensorflow as tf

from tflq.quantizers.base import WeightQuantizer, clamp, round_half_up, ste

# λ_k for k = 1..8 bits: Table I of the paper (α/σ minimising the L2 loss for
# Gaussian weights, found by a search of stated precision 0.008 .. 0.0002).
LAMBDAS = (1.5959, 0.9894, 0.5838, 0.3327, 0.1897, 0.1043, 0.0563, 0.0304)


class UL2QQuantizer(WeightQuantizer):
    r"""μL2Q k-bit weights (Algorithm 1 of the paper), per output channel.

    With mean μ and (population) standard deviation σ of the channel's weights:

    .. math::
        \alpha = \lambda_k \sigma, \quad \beta = \mu, \quad
        \varphi = \operatorname{clip}\!\left(\frac{w - \beta}{\alpha} + \frac12,\; 1 - 2^{k-1},\; 2^{k-1}\right),
        \quad q(w) = \alpha \operatorname{round}(\varphi) - \frac{\alpha}{2} + \beta

    λ_1..λ_8 = 1.5959, 0.9894, 0.5838, 0.3327, 0.1897, 0.1043, 0.0563, 0.0304
    (the paper's Table I). 2^k levels.

    Exact int8 export. The levels α(j - 1/2) are odd multiples of Δ = α/2, at most
    (2^k - 1)Δ. The offset β would move them off that grid, so tflq rounds it to
    the grid, β = mΔ with m = round(μ/Δ) clipped to ±(128 - 2^k): every level
    (2j - 1 + m)Δ then has |2j - 1 + m| <= 127. That moves β by at most α/4 (and
    not at all in the usual case, kernels being near zero-mean, where m = 0); for
    k = 7 there is no room left and β = 0. Two further departures, both only for
    degenerate channels: Δ is at least |μ|/127, so that the grid reaches μ when
    σ << |μ| (a constant or single-weight channel is then reproduced, instead of
    collapsing to ~0 with α = λσ = 0); and Δ >= 2^-60 (an all-zero channel goes
    to +Δ, the method having no zero level).

    Rounding is half up (floor(φ + 1/2)), so w = β goes to β + α/2; the method is
    otherwise symmetric (q(-w) = -q(w), β included). Gradient: straight-through
    (identity, not masked), as the paper ("the gradient of the quantized weight
    approximates that of the full-precision weight"). Not idempotent: σ of the
    levels is not σ of the weights, so ``step`` must see the raw kernel.

    The paper (and its Caffe code) takes μ, σ per layer; ``per_channel=True`` (the
    default) takes them per output channel, ``False`` per tensor as the paper.

    Args:
      bits: k, 1 to 7 (ul2q2 is the 2-bit, 4-level variant).
      per_channel: μ, σ per output channel (default) or per tensor (paper).

    Reference:
      Cheng Gong, Tao Li, Ye Lu, Cong Hao, Xiaofan Zhang, Deming Chen, Yao Chen,
      "μL2Q: An Ultra-Low Loss Quantization Method for DNN Compression", IJCNN 2019.
      Code: github.com/GongCheng1919/Quantization-caffe (whose λ table differs
      slightly from the paper's: 1.5950, 0.9953, 0.5872, ...).
    """

    family = "ul2q"
    min_bits, max_bits = 1, 7

    def _bits_error(self, bits: int) -> str:
        return (f"ul2q{bits}: μL2Q takes 1 to 7 bits here: its 2^k levels are odd multiples "
                f"of Δ = α/2 up to (2^k - 1)Δ, and int8 holds |k| <= 127 (k = 8 would need 255)")

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits

    def _params(self, w):
        """Δ and m (β = mΔ), per channel."""
        scale = self.max_abs(w)  # normalise first: squares of huge weights would overflow
        x = w / scale
        mean = self.reduce(tf.reduce_mean, x)
        std = tf.sqrt(self.reduce(tf.reduce_mean, tf.square(x - mean)))
        step = clamp(tf.maximum(LAMBDAS[self.bits - 1] * std / 2.0, tf.abs(mean) / 127.0) * scale)
        room = 128.0 - 2.0 ** self.bits  # how far β may shift the odd multiples
        m = tf.clip_by_value(tf.round(mean * scale / step), -room, room)
        return step, m

    def _quantize(self, w):
        step, m = self._params(tf.stop_gradient(w))
        half = 2.0 ** (self.bits - 1)
        phi = tf.clip_by_value((w - m * step) / (2.0 * step) + 0.5, 1.0 - half, half)
        k = 2.0 * round_half_up(phi) - 1.0 + m
        return ste(w, step * k)

    def _step(self, w):
        return self._params(w)[0]
