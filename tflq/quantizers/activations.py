r"""Low-bit activation quantizers: k-bit codes that an int8 TFLite tensor holds exactly.

A layer's output is quantized to a few levels in QAT, and the int8 tensor the
converter writes holds exactly those levels' codes: the tensor's scale, zero point
and the producing op's clamp leave the requantization no other code to land on.

**Unsigned k bits** (``UniformActivation``; binary is k = 1). Levels
:math:`s\cdot\{0, 1, \dots, n\}`, :math:`n = 2^k - 1`, :math:`s = \alpha / n`:

.. math::
    q(x) = s \cdot \operatorname{round}(\operatorname{clip}(x, 0, \alpha) / s)

The int8 tensor gets scale s and zero point :math:`z = 128 - 2^k`, so its codes
are z .. 127: the fused ReLU clamps at z (real 0) and int8 saturation at 127
(real α). No other clamp is needed. In QAT this is ``relu`` and then TensorFlow's
8-bit fake-quant over :math:`[-(256 - 2^k)\,s,\ \alpha]`: that range is 255 steps
of s with 0 on a step, so TF does not nudge it, and inside [0, α] the fake-quant
equals q(x). The converter fuses the ReLU into the op and takes the range as the
tensor's scale and zero point. Gradient: the fake-quant's straight-through
gradient inside [0, α] and, for a learned α, its gradient with respect to the
range's top, :math:`\partial q / \partial\alpha = 1_{x > \alpha}`, which is
PACT's.

**Ternary** (``TernaryActivation``): levels {-1, 0, +1} at scale 1, zero point 0,
``clip(x, -1, 1)`` and rounding (thresholds ±1/2). The converter fuses the clip
as RELU_N1_TO_1, which clamps the codes to -1 .. 1. The scale is fixed at 1 because
RELU_N1_TO_1 clamps at the real values ±1; the layer's weights and bias learn the
magnitude.

Why binary activations are {0, α} and not BinaryNet's {-1, +1}: two int8 codes
that differ by one hold two reals that differ by one step s; {-1, +1} would need
s = 2 and a zero point halfway between two codes, which int8 tensors cannot have.
With the codes two apart (s = 1), the requantization could land on the code
between them. {0, α} is the same network up to an affine map the next layer
absorbs (its weights doubled, its bias shifted by -Σw), so training learns it.

Power-of-two activations (nnabla's pow2 net) are refused: the requantization
rounds to every integer code between the clamps, and no TFLite builtin maps codes
onto powers of two (it would take a lookup-table op).

References:
  - Courbariaux, Hubara, et al., "Binarized Neural Networks", NeurIPS 2016.
  - Hubara et al., "Quantized Neural Networks: Training Neural Networks with Low
    Precision Weights and Activations", JMLR 2018 (QNN).
  - Zhou et al., "DoReFa-Net", arXiv:1606.06160 (activations clipped to [0, 1]).
  - Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural
    Networks", arXiv:1805.06085.
  - Li, Zhang, Liu, "Ternary Weight Networks", 2016 (the ternary form).
  - nnabla ``F.fixed_point_quantize`` (sign=False; a power-of-two step).
"""
from __future__ import annotations

import difflib
import re

import numpy as np
import tensorflow as tf

from tflq.errors import TflqError
from tflq.quantizers.base import ConfigIdentity, from_config_spec

INT8 = "int8"


class ActivationQuantizer(ConfigIdentity):
    """Base: a layer's output -> a few levels an int8 tensor holds exactly.

    Subclasses give ``num_levels``, the int8 ``zero_point``, ``fake_range(clip)``
    (the 8-bit fake-quant bounds for clip α), ``fused`` (the TFLite fused
    activation that clamps the codes), ``prepare(x)`` (what goes into the
    fake-quant), and ``fit_clip(samples)`` for the calibrated forms.
    """

    family = ""
    min_bits, max_bits = 1, 7
    fused = "RELU"          # the converter's fused activation that clamps the codes
    signed = False

    def __init__(self, bits: int, clip: float = 6.0, learn_clip: bool = True):
        if isinstance(bits, bool) or int(bits) != bits or not self.min_bits <= bits <= self.max_bits:
            raise TflqError(f"{type(self).__name__}: bits must be an integer from {self.min_bits} "
                            f"to {self.max_bits}, not {bits!r} (2^k codes must fit in int8 "
                            "above the ReLU's zero point)")
        clip = float(clip)
        if not np.isfinite(clip) or clip <= 0:
            raise TflqError(f"{type(self).__name__}: clip must be a finite number > 0, not {clip!r}")
        self.bits, self.clip, self.learn_clip = int(bits), clip, bool(learn_clip)

    @property
    def alias(self) -> str:
        return f"{self.family}{self.bits}"

    @property
    def num_levels(self) -> int:
        return 2 ** self.bits

    @property
    def zero_point(self) -> int:
        """The int8 zero point: the codes are zero_point .. 127."""
        return 128 - 2 ** self.bits

    @property
    def codes(self) -> tuple[int, int]:
        """(lowest, highest) int8 code."""
        return self.zero_point, self.zero_point + self.num_levels - 1

    def step(self, clip):
        return clip / (2.0 ** self.bits - 1.0)

    def fake_range(self, clip):
        """(min, max) of the 8-bit fake-quant: 255 steps, the top one at ``clip``."""
        s = self.step(clip)
        return -(256.0 - 2.0 ** self.bits) * s, (2.0 ** self.bits - 1.0) * s

    def prepare(self, x):
        return tf.nn.relu(x)

    def __call__(self, x, low, high):
        """The quantized activation, for the fake-quant range (``fake_range``)."""
        return tf.quantization.fake_quant_with_min_max_vars(self.prepare(x), low, high,
                                                            num_bits=8, narrow_range=False)

    def levels(self, clip) -> np.ndarray:
        """Every level the quantizer can output, as floats."""
        return np.arange(self.num_levels, dtype=np.float64) * float(self.step(clip))

    @property
    def calibrated(self) -> bool:
        """Whether calibration sets α from data."""
        return self.learn_clip

    def fit_clip(self, samples: np.ndarray) -> float | None:
        """The clip α with the least squared quantization error on ``samples`` (the
        quantizer's inputs), or None when α is fixed. Calibration sets it."""
        if not self.calibrated:
            return None
        v = np.maximum(np.asarray(samples, np.float64).ravel(), 0.0)
        top = float(v.max()) if v.size else 0.0
        if top <= 0:
            return None
        return _least_error(v, self._candidates(top), self.bits)

    def _candidates(self, top: float) -> np.ndarray:
        return top * np.linspace(0.02, 1.0, 50)

    def get_config(self) -> dict:
        return {"bits": self.bits, "clip": self.clip, "learn_clip": self.learn_clip}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _least_error(v: np.ndarray, candidates: np.ndarray, bits: int) -> float:
    n = 2.0 ** bits - 1.0
    if v.size > 200_000:  # a fixed subsample: the error curve is smooth in α
        v = v[np.random.RandomState(0).choice(v.size, 200_000, replace=False)]
    errors = []
    for alpha in candidates:
        s = alpha / n
        q = s * np.clip(np.floor(v / s + 0.5), 0.0, n)
        errors.append(np.mean((q - v) ** 2))
    return float(candidates[int(np.argmin(errors))])


class UniformActivation(ActivationQuantizer):
    r"""Unsigned k-bit activations on [0, α] (module docstring for the exact export).

    - ``learn_clip=True`` (aliases ``pact1`` .. ``pact7``; ``binary`` is 1 bit): α is a
      trained variable with PACT's gradient; calibration starts it at the
      least-squares clip of the data.
    - ``learn_clip=False, clip=1.0`` (``dorefa1`` .. ``dorefa7``): DoReFa-Net's and
      QNN's fixed [0, 1] range.
    - ``pow2_step=True`` (``fixed1`` .. ``fixed7``): nnabla's fixed-point net, a step
      that is a power of two (calibrated, not trained).

    Args:
      bits: k, 1 to 7 (1 = binary {0, α}).
      clip: α before calibration or training (tfmot's ranges start at 6 too).
      learn_clip: train α (PACT).
      pow2_step: α / (2^k - 1) is a power of two.
    """

    family = "pact"

    def __init__(self, bits: int, clip: float = 6.0, learn_clip: bool = True,
                 pow2_step: bool = False):
        super().__init__(bits, clip, learn_clip and not pow2_step)
        self.pow2_step = bool(pow2_step)
        if self.pow2_step:
            self.clip = float((2 ** bits - 1) * 2.0 ** np.round(np.log2(clip / (2 ** bits - 1))))

    @property
    def alias(self) -> str:
        if self.pow2_step:
            return f"fixed{self.bits}"
        if not self.learn_clip:
            return f"dorefa{self.bits}"
        return "binary" if self.bits == 1 else f"pact{self.bits}"

    @property
    def calibrated(self):
        return self.learn_clip or self.pow2_step

    def _candidates(self, top):
        if not self.pow2_step:
            return super()._candidates(top)
        n = 2 ** self.bits - 1
        e = np.ceil(np.log2(top / n))
        return n * 2.0 ** np.arange(e - 8, e + 1)

    def get_config(self):
        return {**super().get_config(), "pow2_step": self.pow2_step}


class TernaryActivation(ActivationQuantizer):
    r"""Ternary activations {-1, 0, +1}: :math:`q(x) = \operatorname{round}(\operatorname{clip}(x, -1, 1))`
    (thresholds ±1/2), at scale 1 and zero point 0; the export fuses the clip as
    RELU_N1_TO_1 (module docstring). The layer feeding it must be linear: it needs
    the negative level. Gradient: straight-through inside [-1, 1] (hard tanh)."""

    family = "ternary"
    fused = "RELU_N1_TO_1"
    signed = True

    def __init__(self):
        super().__init__(2, 1.0, False)

    @property
    def alias(self):
        return "ternary"

    @property
    def num_levels(self):
        return 3

    @property
    def zero_point(self):
        return 0

    @property
    def codes(self):
        return -1, 1

    def step(self, clip):
        return 1.0

    def fake_range(self, clip):
        return -128.0, 127.0

    def prepare(self, x):
        return tf.clip_by_value(x, -1.0, 1.0)

    def levels(self, clip):
        return np.array([-1.0, 0.0, 1.0])

    def get_config(self):
        return {}


# -- aliases ------------------------------------------------------------------------------
def _factories():
    found = {"binary": lambda: UniformActivation(1), "ternary": TernaryActivation}
    for bits in range(2, 8):
        found[f"pact{bits}"] = lambda b=bits: UniformActivation(b)
    for bits in range(1, 8):
        found[f"dorefa{bits}"] = lambda b=bits: UniformActivation(b, 1.0, learn_clip=False)
    for bits in range(1, 8):
        found[f"fixed{bits}"] = lambda b=bits: UniformActivation(b, pow2_step=True)
    return found


_FACTORIES = _factories()
_CLASSES = {c.__name__: c for c in (UniformActivation, TernaryActivation)}
ALIASES = tuple(_FACTORIES)


def get(spec) -> ActivationQuantizer:
    """An activation quantizer from an alias (``"pact2"``), an instance, or its
    ``{"class_name": ..., "config": ...}``; raises TflqError with the reason otherwise."""
    if isinstance(spec, ActivationQuantizer):
        return spec
    if isinstance(spec, str):
        if spec in _FACTORIES:
            return _FACTORIES[spec]()
        if re.fullmatch(r"(pow2|log)_?\d*", spec.strip().lower()):
            raise TflqError(
                f"activation quantizer {spec!r}: power-of-two activations cannot be exact in "
                "TFLite. The int8 requantization of the layer that produces them rounds to "
                "every integer code between its clamps, and no TFLite builtin maps codes onto "
                "powers of two. Use power-of-two weights (\"log4\") with uniform activations "
                "(\"fixed4\": nnabla's fixed-point activations, whose step is a power of two).")
        match = re.fullmatch(r"(pact|dorefa|fixed)(\d+)", spec.strip().lower())
        if match:
            raise TflqError(f"activation quantizer {spec!r}: {match.group(1)} activations take 1 "
                            "to 7 bits (2^k codes above the zero point of an int8 tensor; "
                            "8 bits is \"int8\")")
        near = difflib.get_close_matches(spec.strip().lower(), ALIASES, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise TflqError(f"unknown activation quantizer {spec!r}{hint}: choose \"int8\" or one "
                        f"of {', '.join(ALIASES)}")
    if isinstance(spec, dict) and set(spec) == {"class_name", "config"}:
        return from_config_spec(spec, _CLASSES, "activation quantizer")
    raise TflqError(f"not an activation quantizer: {spec!r} (give an alias such as 'pact2', "
                    "an ActivationQuantizer, or its {'class_name': ..., 'config': ...})")
