"""The weight-quantizer interface and the helpers every family shares.

A quantizer maps a float kernel (last axis = output channel) to quantized float
weights with a straight-through-estimator (STE) gradient, and gives the step Δ
(per channel) such that every level is k·Δ with an integer |k| <= 127. That is
what lets the int8 TFLite export hold the levels exactly (``tflq.qat``).

Conventions shared by every family:

- Levels are computed as ``Δ * k`` with ``k`` an exactly integer-valued float, so
  ``q / Δ`` is an integer to float32 rounding (one multiplication).
- Statistics (max|w|, mean|w|, σ, ...) are clamped to ``[TINY, HUGE]`` =
  [2^-60, 2^100]: Δ stays a normal, finite float32 > 0 and 127·Δ cannot overflow
  (weights beyond 2^100 saturate). An all-zero channel quantizes to 0 where 0 is
  a level (log, fixed, min-max, ternary) and to +Δ with Δ of the order of 2^-60
  where it is not (binary, BWN, μL2Q: sign(0) = +1); DoReFa's levels do not scale
  with the weights, so its zeros go to +1/(2^k - 1). Weights below 2^-60 in a
  channel of such weights come out as 0 or as a level of that order.
- Binary logarithms are exact: ``log`` is off by an ulp often enough to move a
  level, so its floor is corrected against exact powers of two.
- ``step(w)`` must be given the same float kernel as ``__call__``: for μL2Q the
  statistics of the levels differ from those of the kernel (see ``UL2QQuantizer``).
"""
from __future__ import annotations

import tensorflow as tf

from tflq.errors import TflqError

TINY = 2.0 ** -60   # smallest statistic (and Δ scale) of a channel
HUGE = 2.0 ** 100   # largest statistic of a channel
_SQRT2 = 1.4142135  # float32(√2) lies just below √2; no float32 mantissa ties with √2
_LN2 = 0.6931472


class ConfigIdentity:
    """Equality, hash and repr from ``get_config()``: two quantizers of one class with
    the same configuration are the same quantizer (weights and activations alike)."""

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def from_config_spec(spec: dict, classes: dict, what: str):
    """An instance from ``{"class_name": ..., "config": ...}`` of one of ``classes``."""
    cls = classes.get(spec["class_name"])
    if cls is None:
        raise TflqError(f"unknown {what} class {spec['class_name']!r}: one of {', '.join(classes)}")
    try:
        return cls.from_config(dict(spec["config"]))
    except TypeError as e:
        raise TflqError(f"bad config for {spec['class_name']}: {spec['config']!r} ({e})") from None


class WeightQuantizer(ConfigIdentity):
    """Base: maps a float kernel to quantized float levels.

    Subclasses set ``family`` (alias prefix), ``min_bits``/``max_bits`` and
    implement ``num_levels``, ``_quantize(w)`` and ``_step(w)``; ``_step`` returns
    Δ with the kept-dims shape of a per-channel (or per-tensor) reduction.
    """

    family = ""             # alias prefix, e.g. "log"
    min_bits, max_bits = 1, 8

    def __init__(self, bits: int, per_channel: bool = True):
        if isinstance(bits, bool) or int(bits) != bits:
            raise TflqError(f"{type(self).__name__}: bits must be an integer, not {bits!r}")
        if not self.min_bits <= int(bits) <= self.max_bits:
            raise TflqError(self._bits_error(int(bits)))
        self.bits = int(bits)
        self.per_channel = bool(per_channel)

    def _bits_error(self, bits: int) -> str:
        return (f"{type(self).__name__}: {bits} bits is out of range: {self.min_bits} to "
                f"{self.max_bits} bits keep every level exactly on the int8 grid (|k| <= 127)")

    @property
    def alias(self) -> str:
        """The registry alias of this configuration, e.g. ``"log3"``."""
        return f"{self.family}{self.bits}"

    @property
    def precision(self) -> int:
        """Bits per weight (larq's name for it)."""
        return self.bits

    @property
    def num_levels(self) -> int:
        """The most distinct quantized values a channel can have."""
        raise NotImplementedError

    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        """Quantized weights: same shape, float32, straight-through gradient."""
        w = tf.convert_to_tensor(w, tf.float32)
        return self._quantize(w)

    def step(self, w: tf.Tensor) -> tf.Tensor:
        """Δ: shape [channels] (or [] per tensor), float32, > 0; q(w) / Δ is an
        integer with |integer| <= 127 in every channel. Pass the same ``w`` as to
        ``__call__`` (the raw kernel, not its levels)."""
        w = tf.stop_gradient(tf.convert_to_tensor(w, tf.float32))
        return tf.reshape(self._step(w), [-1] if self.per_channel else [])

    def get_config(self) -> dict:
        return {"bits": self.bits, "per_channel": self.per_channel}

    @classmethod
    def from_config(cls, config: dict) -> "WeightQuantizer":
        return cls(**config)

    # -- helpers for subclasses: statistics per output channel (last axis) or per tensor.
    def reduce(self, fn, x: tf.Tensor) -> tf.Tensor:
        """``fn`` (tf.reduce_max, ...) over all axes but the last, keeping dims; or all axes."""
        axes = list(range(x.shape.rank - 1)) if self.per_channel else None
        return fn(x, axis=axes, keepdims=True)

    def max_abs(self, w: tf.Tensor) -> tf.Tensor:
        """max|w| per channel, clamped to [TINY, HUGE]."""
        return clamp(self.reduce(tf.reduce_max, tf.abs(w)))

    def _quantize(self, w):
        raise NotImplementedError

    def _step(self, w):
        raise NotImplementedError


def clamp(stat: tf.Tensor) -> tf.Tensor:
    """A channel statistic clamped to [TINY, HUGE]."""
    return tf.clip_by_value(stat, TINY, HUGE)


# -- exact powers of two and binary logarithms -------------------------------------------
# Kernel-sized tensors go through float ops only (pow, log, floor, sign, max, ...): no
# bool masks, casts from bool or selects with scalar branches, whose results are
# larger than their operands; the TFLite converter does not fold such ops on big
# kernels, and the quantizer would then stay in the model as float ops.

def pow2(e: tf.Tensor) -> tf.Tensor:
    """2^e exactly, for integer-valued float ``e`` (clipped to the normal range [-126, 127])."""
    return tf.pow(2.0, tf.clip_by_value(e, -126.0, 127.0))


def is_positive(x: tf.Tensor) -> tf.Tensor:
    """1.0 where x > 0, else 0.0 (float ops only)."""
    return tf.sign(tf.maximum(x, 0.0))


def sign_plus(w: tf.Tensor) -> tf.Tensor:
    """sign(w) with sign(0) = +1 (float ops only)."""
    s = tf.sign(w)
    return s + (1.0 - tf.abs(s))


def _mantissa(x, e):
    return x / pow2(e)  # in [1, 2); exact (division by a power of two)


def floor_log2(x: tf.Tensor) -> tf.Tensor:
    """floor(log2 x) exactly, as float, for positive normal float32 ``x``."""
    e = tf.floor(tf.math.log(x) / _LN2)
    # Compare ratios (exact: divisions by powers of two), not differences (subnormal).
    e = e - is_positive(1.0 - _mantissa(x, e))        # log rounded up across a power of two
    return e + (1.0 - is_positive(2.0 - _mantissa(x, e)))  # ... or down


def round_log2(x: tf.Tensor) -> tf.Tensor:
    """round(log2 x) exactly (rounding in the log domain: up iff x >= √2·2^floor)."""
    e = floor_log2(x)
    return e + is_positive(_mantissa(x, e) - _SQRT2)


def ceil_log2(x: tf.Tensor) -> tf.Tensor:
    """ceil(log2 x) exactly."""
    e = floor_log2(x)
    return e + is_positive(_mantissa(x, e) - 1.0)


def round_half_up(x: tf.Tensor) -> tf.Tensor:
    """floor(x + 0.5): ties go up (so 0.5 -> 1 and -0.5 -> 0), as TF's fake-quant does."""
    return tf.floor(x + 0.5)


# -- straight-through estimators --------------------------------------------------------
# Custom gradients rather than ``w + stop_gradient(q - w)``: that form's forward value
# is q only up to float rounding, which splits one level into several nearly equal
# values and breaks the exact int8 export.

@tf.custom_gradient
def _pass_through(w, q):
    return tf.identity(q), lambda dy: (dy, tf.zeros_like(q))


def ste(w: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """Exactly ``q`` forward; identity gradient to ``w`` (straight-through estimator)."""
    return _pass_through(w, tf.stop_gradient(q))


@tf.custom_gradient
def _masked_pass_through(w, q, limit):
    def grad(dy):
        return (dy * tf.cast(tf.abs(w) <= limit, dy.dtype), tf.zeros_like(q),
                tf.zeros_like(limit))
    return tf.identity(q), grad


def ste_clipped(w: tf.Tensor, q: tf.Tensor, limit: float = 1.0) -> tf.Tensor:
    """Exactly ``q`` forward; gradient ``dy · 1[|w| <= limit]`` (the hard-tanh STE)."""
    return _masked_pass_through(w, tf.stop_gradient(q), tf.constant(limit, tf.float32))
