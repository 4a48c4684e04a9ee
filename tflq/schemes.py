"""Quantization schemes: which quantizer each layer's weights and output get.

The base is Jacob et al. 2017 ("Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference"): int8 asymmetric activations, 32-bit
biases, BatchNorm folded, ReLU fused. A scheme chooses the *weight* quantizer of
each Conv2D / DepthwiseConv2D / Dense:

- ``"int8"``: Jacob et al.'s int8 symmetric weights (tfmot's default 8-bit config).
- any ``tflq.quantizers`` alias (``"log3"``, ``"ternary"``, ``"bwn"``, ...): that
  quantizer on every weighted layer but the first and the last, which stay int8
  (they are small and the most sensitive; ``first_last_int8=False`` changes that).
- a ``Scheme`` with per-layer ``overrides`` for mixed precision.

and the quantizer of each such layer's *output* (``Scheme.activations``): "int8",
or a ``tflq.quantizers.activations`` alias ("binary", "ternary", "pact2",
"dorefa2", "fixed4", ...) on every weighted layer's output but the last one's
(the logits stay int8), with ``activation_overrides`` per layer. Pooling,
Flatten and Reshape after such a layer keep its codes.

Presets name the families of nnabla's quantization example and QNN
(``PRESETS``): "binary_connect", "binary_net", "binary_weight", "fixed_connect4",
"fixed_net4", "pow2_connect4", "inq4", "minmax4", "qnn_w1a2" ("pow2_net4" is
refused: power-of-two activations cannot be exact in TFLite).
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
      activations: the default spec for the outputs of Conv2D / DepthwiseConv2D /
        Dense layers but the last: "int8" or a ``tflq.quantizers.activations`` alias
        or instance.
      activation_overrides: ``{layer_name: spec}`` or a callable, as ``overrides``;
        they win over the last layer's int8.
    """

    weights: Spec = INT8
    overrides: Union[Mapping[str, Spec], Callable] = dataclasses.field(default_factory=dict)
    first_last_int8: bool = True
    incremental: bool = False
    activations: Spec = INT8
    activation_overrides: Union[Mapping[str, Spec], Callable] = dataclasses.field(
        default_factory=dict)


# INQ: Zhou et al.'s powers of two, frozen incrementally.
_INQ = {"inq3": "log3", "inq4": "log4"}

# nnabla's quantization families ("connect": low-bit weights; "net": weights and
# activations) and QNN's W1A2 (Hubara et al. 2018). First and last layers keep int8
# weights and the logits int8 activations, as every scheme does by default.
PRESETS = {
    "binary_connect": Scheme(weights="binary"),                       # BinaryConnect
    "binary_net": Scheme(weights="binary", activations="binary"),     # BinaryNet, W1A1
    "binary_weight": Scheme(weights="bwn"),                           # BWN (XNOR-Net)
    "fixed_connect4": Scheme(weights="fixed4"),
    "fixed_net4": Scheme(weights="fixed4", activations="fixed4"),     # W4A4
    "pow2_connect4": Scheme(weights="log4"),
    "inq4": Scheme(weights="log4", incremental=True),
    "minmax4": Scheme(weights="minmax4"),
    "qnn_w1a2": Scheme(weights="binary", activations="pact2"),        # QNN W1A2
}
_REFUSED = {
    "pow2_net4": "power-of-two activations cannot be exact in TFLite: the int8 "
                 "requantization rounds to every code between its clamps and no TFLite "
                 "builtin maps codes onto powers of two. pow2_connect4 keeps the "
                 "power-of-two weights with int8 activations; Scheme(weights=\"log4\", "
                 "activations=\"fixed4\") adds 4-bit fixed-point activations"}


def names() -> tuple[str, ...]:
    """Every scheme name: "int8", the weight quantizer aliases and the presets."""
    from tflq import quantizers
    return (INT8, *quantizers.ALIASES, *_INQ, *(p for p in PRESETS if p not in _INQ))


def resolve(scheme) -> Scheme:
    """Returns a Scheme for a scheme name or Scheme; raises TflqError otherwise."""
    if isinstance(scheme, Scheme):
        return scheme
    if scheme == INT8:
        return Scheme()
    if isinstance(scheme, str) and scheme in _INQ:
        return Scheme(weights=_INQ[scheme], incremental=True)
    if isinstance(scheme, str) and scheme in PRESETS:
        return PRESETS[scheme]
    if isinstance(scheme, str) and scheme in _REFUSED:
        raise TflqError(f"scheme {scheme!r}: {_REFUSED[scheme]}")
    if isinstance(scheme, str) and scheme in names():
        return Scheme(weights=scheme)
    raise TflqError(f"unknown scheme {scheme!r}: choose one of {', '.join(names())}")


def _override(overrides, weighted, by_name, what: str):
    """The per-layer override function of ``overrides``; checks the names it gives."""
    if not isinstance(overrides, Mapping):
        return overrides
    for name in overrides:
        if name not in by_name:
            raise TflqError(f"scheme {what} for layer {name!r}: the model has no such layer "
                            f"(weighted layers: {', '.join(l.name for l in weighted)})")
        if by_name[name] not in weighted:
            layer = by_name[name]
            why = ("it has no Conv2D/DepthwiseConv2D/Dense weights to quantize" if what == "override"
                   else "only a Conv2D/DepthwiseConv2D/Dense output takes a low-bit activation "
                        "quantizer (pooling, Flatten and Reshape keep the codes of their input)")
            raise TflqError(f"scheme {what} for layer {name!r} ({type(layer).__name__}): {why}")
    return lambda layer: overrides.get(layer.name)


def _per_layer(weighted, override, int8_names, default, get):
    """(layer, quantizer) for each weighted layer whose spec (its override, else int8 for
    ``int8_names``, else ``default``) is not "int8"; a bad spec names the layer."""
    for layer in weighted:
        spec = override(layer)
        if spec is None:
            spec = INT8 if layer.name in int8_names else default
        if isinstance(spec, str) and spec == INT8:
            continue
        try:
            yield layer, get(spec)
        except TflqError as e:
            raise TflqError(f"layer {layer.name!r}: {e}") from None


def layer_quantizers(scheme: Scheme, model) -> dict:
    """``{layer_name: WeightQuantizer}`` for the layers that get low-bit weights.

    Layers left out are int8. Raises TflqError for an override naming a layer the
    model does not have, or a layer without weights.
    """
    from tflq import quantizers

    weighted = [l for l in model.layers if type(l).__name__ in _WEIGHTED]
    by_name = {l.name: l for l in model.layers}
    override = _override(scheme.overrides, weighted, by_name, "override")

    edges = {weighted[0].name, weighted[-1].name} if weighted and scheme.first_last_int8 else set()
    chosen = {}
    for layer, quantizer in _per_layer(weighted, override, edges, scheme.weights, quantizers.get):
        if type(layer).__name__ == "DepthwiseConv2D" and quantizer.per_channel:
            # Depthwise weights stay per tensor, as tfmot keeps them. Dense layers are
            # per channel: converters/per_channel_dense.py puts them in the flatbuffer.
            quantizer = type(quantizer).from_config({**quantizer.get_config(), "per_channel": False})
        chosen[layer.name] = quantizer
    return chosen


def activation_quantizers(scheme: Scheme, model) -> dict:
    """``{layer_name: ActivationQuantizer}`` for the layers whose output is low-bit.

    Raises TflqError naming the layer for an override of a layer the model lacks or
    that has no weights, and for a layer whose output cannot take the quantizer: an
    activation other than linear or ReLU (the quantizer's clamp replaces it), a
    ternary quantizer after a ReLU (no negative level left), or an output that goes
    through a ReLU layer the converter does not fuse into the op.
    """
    from tflq.quantizers import activations

    weighted = [l for l in model.layers if type(l).__name__ in _WEIGHTED]
    by_name = {l.name: l for l in model.layers}
    override = _override(scheme.activation_overrides, weighted, by_name, "activation override")
    last = {weighted[-1].name} if weighted and scheme.first_last_int8 else set()
    chosen = {}
    for layer, quantizer in _per_layer(weighted, override, last, scheme.activations,
                                       activations.get):
        act = getattr(layer.activation, "__name__", type(layer.activation).__name__)
        if act not in ("linear", "relu") or (quantizer.signed and act == "relu"):
            need = "a linear activation (it needs the negative level)" if quantizer.signed \
                else "a linear or ReLU activation (its clamp at 0 and at the clip is the ReLU)"
            raise TflqError(f"layer {layer.name!r} ({type(layer).__name__}, activation {act!r}): "
                            f"the {quantizer.alias} activation quantizer needs {need}")
        after = [n.outbound_layer for n in layer._outbound_nodes]
        relus = [l for l in after if type(l).__name__ in ("ReLU", "Activation", "LeakyReLU",
                                                           "PReLU", "ELU")]
        if relus:
            raise TflqError(
                f"layer {layer.name!r}: its output goes through the {type(relus[0]).__name__} "
                f"layer {relus[0].name!r}, which is quantized at 8 bits after it; a "
                f"{quantizer.alias} activation must be the layer's own (give {layer.name!r} "
                "activation='relu' or 'linear' and drop the layer)")
        chosen[layer.name] = quantizer
    return chosen
