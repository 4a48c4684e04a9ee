"""Binary weights: BinaryConnect and Binary-Weight-Networks (XNOR-Net)."""
from __future__ import annotations

import tensorflow as tf

from tflq.quantizers.base import WeightQuantizer, clamp, sign_plus, ste_clipped


class BinaryQuantizer(WeightQuantizer):
    r"""Binary weights :math:`q(w) = \alpha \cdot \operatorname{sign}(w)`, with sign(0) = +1
    (two levels, never a third: a zero weight goes to +α).

    .. math::
        \alpha = \operatorname{mean}|w| \quad \text{(per tensor, or per output channel)}

    - ``per_channel=False`` (alias ``"binary"``): BinaryConnect. The paper's weights
      are ±1 (α = 1) and rely on the BatchNorm after each layer to rescale. tflq
      folds BatchNorm into the kernel before QAT, so a ±1 kernel would multiply the
      layer's output by ~1/mean|w| (often 10-100x) with nothing left to undo it;
      tflq therefore keeps one per-tensor scale α = mean|w| (the L2-optimal single
      scale). The binary pattern, sign(w), is exactly BinaryConnect's; with one
      scale per layer the export is still a 1-bit kernel times one number.
    - ``per_channel=True`` (alias ``"bwn"``): Binary-Weight-Networks (XNOR-Net),
      α_c = mean|w_c| per output channel, the L2-optimal scale of each filter.

    Δ = α (|k| = 1). Symmetric except at w = 0 (+α both ways). Gradient: the
    hard-tanh straight-through estimator of BinaryNet/XNOR-Net and larq's
    ``ste_sign``, :math:`\partial q/\partial w = 1_{|w| \le 1}` (BinaryConnect
    instead clips the real weights to [-1, 1]; the effect is the same: weights
    beyond ±1 stop moving). α gets no gradient (it is a statistic, as in larq).

    Args:
      per_channel: False = BinaryConnect ("binary", the default of this class);
        True = BWN ("bwn").

    References:
      - Courbariaux, Bengio, David, "BinaryConnect: Training Deep Neural Networks
        with binary weights during propagations", NeurIPS 2015.
      - Rastegari, Ordonez, Redmon, Farhadi, "XNOR-Net: ImageNet Classification
        Using Binary Convolutional Neural Networks", ECCV 2016.
    """

    family = "binary"
    min_bits = max_bits = 1

    def __init__(self, bits: int = 1, per_channel: bool = False):
        super().__init__(bits, per_channel)

    def _bits_error(self, bits: int) -> str:
        return f"binary weights take exactly 1 bit, not {bits}"

    @property
    def alias(self) -> str:
        return "bwn" if self.per_channel else "binary"

    @property
    def num_levels(self) -> int:
        return 2

    def _alpha(self, w):
        scale = self.max_abs(w)  # normalise first: sums of huge weights would overflow
        return clamp(self.reduce(tf.reduce_mean, tf.abs(w) / scale) * scale)

    def _quantize(self, w):
        return ste_clipped(w, self._alpha(w) * sign_plus(w), 1.0)

    def _step(self, w):
        return self._alpha(w)
