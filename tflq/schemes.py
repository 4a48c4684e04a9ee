"""Quantization schemes: which quantizer each layer's weights get.

Activations are always int8 as in Jacob et al. 2017 ("Quantization and Training
of Neural Networks for Efficient Integer-Arithmetic-Only Inference"): int8
asymmetric activations, 32-bit biases, BatchNorm folded, ReLU fused. A scheme
chooses the *weight* quantizer of each Conv2D / DepthwiseConv2D / Dense:

- ``"int8"``: Jacob et al.'s int8 symmetric weights (tfmot's default 8-bit config).
- any ``tflq.quantizers`` alias (``"log3"``, ``"ternary"``, ``"bwn"``, ...): that
  quantizer on every weighted layer but the first and the last, which stay int8
  (they are small and the most sensitive; ``first_last_int8=False`` changes that).
- a ``Scheme`` with per-layer ``overrides`` for mixed precision.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Union

from tflq.errors import TflqError

INT8 = "int8"
_WEIGHTED = ("Conv2D", "DepthwiseConv2D", "Dense")

# A weight spec: "int8", a quantizer alias, a WeightQuantizer or its config dict.
Spec = Union[str, object]


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Weight quantizers for a model.

    Args:
      weights: the default spec for Conv2D / DepthwiseConv2D / Dense kernels.
      overrides: ``{layer_name: spec}``, or a callable ``layer -> spec or None``
        (None: use the default); overrides win over ``first_last_int8``.
      first_last_int8: keep the first and last weighted layers int8.
      incremental: INQ (Zhou et al. 2017): quantize and freeze the low-bit weights
        a growing share at a time; train with the ``tflq.inq.INQ`` callback.
    """

    weights: Spec = INT8
    overrides: Union[Mapping[str, Spec], Callable] = dataclasses.field(default_factory=dict)
    first_last_int8: bool = True
    incremental: bool = False


# INQ: Zhou et al.'s powers of two, frozen incrementally.
_INQ = {"inq3": "log3", "inq4": "log4"}


def names() -> tuple[str, ...]:
    """Every scheme name: "int8" and the quantizer aliases."""
    from tflq import quantizers
    return (INT8, *quantizers.ALIASES, *_INQ)


def resolve(scheme) -> Scheme:
    """Returns a Scheme for a scheme name or Scheme; raises TflqError otherwise."""
    if isinstance(scheme, Scheme):
        return scheme
    if scheme == INT8:
        return Scheme()
    if isinstance(scheme, str) and scheme in _INQ:
        return Scheme(weights=_INQ[scheme], incremental=True)
    if isinstance(scheme, str) and scheme in names():
        return Scheme(weights=scheme)
    raise TflqError(f"unknown scheme {scheme!r}: choose one of {', '.join(names())}")


def layer_quantizers(scheme: Scheme, model) -> dict:
    """``{layer_name: WeightQuantizer}`` for the layers that get low-bit weights.

    Layers left out are int8. Raises TflqError for an override naming a layer the
    model does not have, or a layer without weights.
    """
    from tflq import quantizers

    weighted = [l for l in model.layers if type(l).__name__ in _WEIGHTED]
    by_name = {l.name: l for l in model.layers}
    if isinstance(scheme.overrides, Mapping):
        for name in scheme.overrides:
            if name not in by_name:
                raise TflqError(f"scheme override for layer {name!r}: the model has no such layer "
                                f"(weighted layers: {', '.join(l.name for l in weighted)})")
            if by_name[name] not in weighted:
                layer = by_name[name]
                raise TflqError(f"scheme override for layer {name!r} ({type(layer).__name__}): "
                                "it has no Conv2D/DepthwiseConv2D/Dense weights to quantize")
        override = lambda layer: scheme.overrides.get(layer.name)  # noqa: E731
    else:
        override = scheme.overrides

    edges = {weighted[0].name, weighted[-1].name} if weighted and scheme.first_last_int8 else set()
    chosen = {}
    for layer in weighted:
        spec = override(layer)
        if spec is None:
            spec = INT8 if layer.name in edges else scheme.weights
        if isinstance(spec, str) and spec == INT8:
            continue
        try:
            quantizer = quantizers.get(spec)
        except TflqError as e:
            raise TflqError(f"layer {layer.name!r}: {e}") from None
        if type(layer).__name__ == "DepthwiseConv2D" and quantizer.per_channel:
            # Depthwise weights stay per tensor, as tfmot keeps them. Dense layers are
            # per channel: converters/per_channel_dense.py puts them in the flatbuffer.
            quantizer = type(quantizer).from_config({**quantizer.get_config(), "per_channel": False})
        chosen[layer.name] = quantizer
    return chosen
