"""The bridge to tfmot: Keras model -> quantization-aware-training (QAT) model.

This is the only module that knows tfmot's wrappers. The path from
``quantize_model`` to a quantizer is short on purpose:

1. ``check_model``: tf_keras, Sequential or functional, every layer quantizable.
2. ``fold_batch_norms``: BatchNormalization after Conv2D / DepthwiseConv2D / Dense
   is folded into that layer's kernel and bias *before* QAT, so the network trains
   on the folded, quantized weights (Jacob et al. 2017, section 3.2) and the model
   that trains is the model that converts. tfmot keeps BN separate during training
   and folds it only in the converter, so its trained and converted weights differ
   (tfmot #549).
3. ``fuse_relus``: a ReLU layer, or an ``Activation("relu")``, after a
   linear Conv2D / DepthwiseConv2D / Dense becomes that layer's activation, so one
   fake-quant follows the fused op, as TFLite runs it.
4. tfmot's ``quantize_annotate_layer`` + ``quantize_apply`` with its default 8-bit
   scheme (``_Scheme``: tfmot's, with one fix: its LayerReLUQuantize transform gives a
   Conv2D / DepthwiseConv2D / Dense followed by a ReLU layer it does not fuse -- ReLU6,
   leaky -- no quantization at all; ``_LayoutTransform`` gives it back its weight
   quantizer, with no fake-quant between it and the ReLU, whose output is quantized
   and which the converter fuses). ``check_weight_quantizers`` then makes sure every
   Conv2D / DepthwiseConv2D / Dense got the scheme's weight quantizer. Symmetric int8
   weights (tfmot's: per channel for Conv2D, per tensor for Dense and DepthwiseConv2D;
   low-bit quantizers are per channel for Dense too, see
   ``converters.per_channel_dense``), asymmetric int8 activations with moving-average
   ranges. Layers the scheme gives a low-bit quantizer get ``LowBitQuantizeConfig``:
   the same activation handling, and weights through a ``tflq.quantizers``
   quantizer whose levels land exactly on an int8 grid (``LowBitWeightQuantizer``).
5. Optional calibration (``tflq.calibration``): ranges from data, so the QAT model
   predicts at near-float accuracy before any fine-tuning.
"""
from __future__ import annotations

import collections
import contextlib

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs, default_8bit_quantize_layout_transform,
    default_8bit_quantize_registry, default_8bit_quantize_scheme, default_8bit_quantizers)
from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer, transforms)

from tflq import data_free as dfq, layers, schemes
from tflq.errors import TflqError

_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def quantize_model(model: keras.Model, scheme="int8", calibration_data=None,
                   post_training: bool = False, data_free: bool = False,
                   input_range=None, equalize: bool = False) -> keras.Model:
    """Returns a tf_keras QAT model of ``model``, ready for ``compile``/``fit``.

    Args:
      model: a built tf_keras Sequential or functional model. A first
        ``tflq.layers.ProjectionProfiles`` layer stays float: ``tflq.convert`` leaves it
        out of the flatbuffer (recording it in the metadata) and the firmware
        computes it from the raw image in C.
      scheme: ``"int8"`` (Jacob et al. 2017 integer-only scheme) or another name
        from ``tflq.schemes.NAMES``, or a ``tflq.schemes.Scheme``.
      calibration_data: optional array (or dataset of input batches) of model
        inputs. When given, every quantization range is set from it, so the QAT
        model -- and ``tflq.convert`` of it without training -- is post-training
        quantization. Without it, ranges start at tfmot's [-6, 6] and are learnt
        during training.
      post_training: with ``calibration_data`` and no fit to follow: also fit each
        low-bit Conv2D / Dense to the calibration data (per-channel scale search on
        the layer's output error, and bias correction; ``tflq.post_training``).
      data_free: quantize with no data (DFQ, ``tflq.data_free``): cross-layer
        equalization, then ranges and bias correction from the BatchNorm statistics.
      input_range: with ``data_free``, (low, high) of the model's inputs.
      equalize: cross-layer equalization (``tflq.data_free.equalize``) before
        quantizing, as ``data_free`` always does; the float function is unchanged.
    """
    scheme = schemes.resolve(scheme)
    check_model(model)
    if post_training and calibration_data is None:
        raise TflqError("post_training=True needs calibration_data (the inputs it fits "
                        "the quantized layers to)")
    if data_free and (calibration_data is not None or post_training):
        raise TflqError("data_free=True quantizes without data: give it no calibration_data "
                        "and no post_training")
    if data_free and input_range is None:
        raise TflqError("data_free=True needs input_range=(low, high), the range of the "
                        "model's inputs: no statistic in the model gives it")
    if input_range is not None and not data_free:
        raise TflqError("input_range is for data_free=True; calibration_data gives the "
                        "input range otherwise")
    if data_free and _low_bit_outputs(scheme):
        raise TflqError("data_free=True cannot set low-bit activation clips: they need data "
                        "(give calibration_data instead)")
    head, body = layers.split_features(model)
    if head is not None and (data_free or equalize):
        raise TflqError(f"{'data_free' if data_free else 'equalize'}=True does not support "
                        f"the ProjectionProfiles layer {head.name!r}")
    if head is not None:  # ProjectionProfiles first: the firmware computes it in C
        qat_model = layers.with_features(head, quantize_model(body, scheme), model.name)
        _calibrate(qat_model, calibration_data, post_training, model)
        return qat_model
    statistics = dfq.bn_statistics(model) if data_free else None
    folded = fuse_relus(fold_batch_norms(model))
    check_layers(folded)
    if data_free or equalize:  # on a copy: folding returns the model itself without BN
        copy = keras.models.clone_model(folded)
        copy.set_weights(folded.get_weights())
        folded = copy
        dfq.equalize(folded, statistics)
    configs = schemes.layer_quantizers(scheme, folded)
    outputs = schemes.activation_quantizers(scheme, folded)

    def annotate(layer):
        if layer.name not in configs and layer.name not in outputs:
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        attr = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else "kernel"
        return tfmot.quantization.keras.quantize_annotate_layer(layer, LowBitQuantizeConfig(
            configs.get(layer.name), attr, scheme.incremental,
            activation_quantizer=outputs.get(layer.name),
            int8_conv=not isinstance(layer, keras.layers.Dense)))

    annotated = keras.models.clone_model(folded, clone_function=lambda l: annotate(
        l.__class__.from_config(l.get_config())))
    annotated.set_weights(folded.get_weights())
    with quantize_scope():
        qat_model = tfmot.quantization.keras.quantize_apply(annotated, scheme=_Scheme())
    check_weight_quantizers(folded, qat_model, configs)
    if data_free:
        dfq.calibrate(qat_model, folded, statistics, input_range)
    _calibrate(qat_model, calibration_data, post_training, folded)
    return qat_model


def _low_bit_outputs(scheme) -> bool:
    from tflq.quantizers import activations
    return (scheme.activations != activations.INT8 or callable(scheme.activation_overrides)
            or any(v != activations.INT8 for v in scheme.activation_overrides.values()))


def _calibrate(qat_model, calibration_data, post_training: bool, float_model) -> None:
    if calibration_data is None:
        return
    from tflq import calibration
    calibration.calibrate(qat_model, calibration_data)
    if post_training:  # the layers fitted to the data change the ranges: again
        from tflq import post_training as fit
        fit.optimize(qat_model, calibration_data, float_model)
        calibration.calibrate(qat_model, calibration_data)


@contextlib.contextmanager
def quantize_scope():
    """Context in which a saved tflq QAT model loads back (``keras.models.load_model``)."""
    with tfmot.quantization.keras.quantize_scope(
            {"LowBitQuantizeConfig": LowBitQuantizeConfig,
             "LowBitWeightQuantizer": LowBitWeightQuantizer,
             "LowBitActivationQuantizer": LowBitActivationQuantizer}):
        yield


def check_model(model) -> None:
    """Raises TflqError unless ``model`` is a built tf_keras model tflq can quantize."""
    module = type(model).__module__
    if not isinstance(model, keras.Model):
        if module.startswith("keras"):
            raise TflqError(
                f"{type(model).__name__} {getattr(model, 'name', '')!r} is a Keras 3 model; "
                "tflq works on Keras 2 models (tfmot 0.8.1 needs them). Build it with "
                "`import tf_keras as keras` instead of `import keras` / `tf.keras`.")
        raise TflqError(f"expected a tf_keras model, got {type(model).__name__} from {module}")
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise TflqError(
            f"model {model.name!r} is a subclassed model ({type(model).__name__}); tflq "
            "needs a Sequential or functional model, whose layer graph it can rewrite. "
            "Rebuild it with keras.Sequential([...]) or keras.Model(inputs, outputs).")
    if not model.built:
        raise TflqError(f"model {model.name!r} is not built: give its first layer an input_shape")


def check_layers(model) -> None:
    """Raises TflqError naming the first layer tfmot's 8-bit registry cannot quantize."""
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or registry.supports(layer):
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            hint = ("only a BatchNormalization directly after a Conv2D, DepthwiseConv2D or "
                    "Dense with linear activation (and used by nothing else) can be folded; "
                    "move it there or remove it")
        elif isinstance(layer, keras.Model):
            hint = "nested models are not supported: flatten it into one model"
        elif isinstance(layer, keras.layers.Lambda):
            hint = "replace the Lambda with built-in layers (Lambda code cannot be quantized)"
        else:
            hint = ("tflq supports the layers of tfmot's default 8-bit registry "
                    "(Conv2D, DepthwiseConv2D, Dense, pooling, ReLU, Add, Concatenate, "
                    "Reshape, ...); replace it or quantize the model without it")
        raise TflqError(
            f"layer {layer.name!r} ({type(layer).__name__}) cannot be quantized: {hint}.")


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` with each foldable BatchNormalization folded away.

    A BatchNormalization over the channel axis whose only input is a linear
    Conv2D / DepthwiseConv2D / Dense (used by nothing else) is folded with its
    moving statistics:  s = gamma / sqrt(var + eps),  W' = W * s,
    b' = (b - mean) * s + beta.  The statistics are frozen from here on, as in the
    later phase of Jacob et al.'s training: train the float model first.
    """
    if not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers):
        return model
    folded, _ = model_transformer.ModelTransformer(model, [_FoldBatchNorm()]).transform()
    return folded


def fuse_relus(model: keras.Model) -> keras.Model:
    """Returns ``model`` with each plain ReLU layer or ``Activation("relu")`` after a linear Conv2D / DepthwiseConv2D / Dense (used by nothing else) made that
    layer's activation."""
    if not any(isinstance(l, (keras.layers.ReLU, keras.layers.Activation)) for l in model.layers):
        return model
    fused, _ = model_transformer.ModelTransformer(
        model, [_FuseReLU("ReLU"), _FuseReLU("Activation")]).transform()
    return fused


def check_weight_quantizers(model: keras.Model, qat_model: keras.Model, configs: dict) -> None:
    """Raises TflqError naming each Conv2D / DepthwiseConv2D / Dense of ``model`` whose
    kernel is not fake-quantized in ``qat_model`` as the scheme says (``configs``: the
    low-bit layers by name; the others get tfmot's int8 quantizer)."""
    found = {wrapper.layer.name: quantizer for wrapper, _, quantizer, _ in quantized_kernels(qat_model)}
    problems = []
    for layer in model.layers:
        if type(layer).__name__ not in _FOLDABLE:
            continue
        quantizer = found.get(layer.name)
        if quantizer is None:
            after = [n.outbound_layer for n in layer._outbound_nodes]
            relu = [l.name for l in after if isinstance(l, (keras.layers.ReLU,
                                                            keras.layers.Activation))]
            why = f" (it feeds {relu[0]!r})" if relu else ""
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}) got no weight "
                            f"quantizer from tfmot's 8-bit transforms{why}")
        elif layer.name in configs and not isinstance(quantizer, LowBitWeightQuantizer):
            problems.append(f"layer {layer.name!r} got {type(quantizer).__name__}, not the "
                            "scheme's low-bit quantizer")
    if problems:
        raise TflqError("quantize_model would train without the scheme's weight quantization: "
                        + "; ".join(problems) + ". Please report the pattern to tflq.")


class _FuseReLU(transforms.Transform):
    """(Conv2D | DepthwiseConv2D | Dense, linear) -> ReLU or Activation  ==>  one layer."""

    def __init__(self, layer_type: str):
        self.layer_type = layer_type

    def pattern(self):
        return transforms.LayerPattern(
            self.layer_type, inputs=[transforms.LayerPattern("|".join(_FOLDABLE),
                                                             config={"activation": "linear"})])

    def replacement(self, match_layer):
        relu, layer_node = match_layer.layer["config"], match_layer.input_layers[0]
        # Only a plain ReLU: tfmot's QuantizeAwareActivation has no relu6, and a
        # ReLU(max_value=6) layer after the op is quantized (and fused by the converter).
        if self.layer_type == "Activation":
            activation = "relu" if relu.get("activation") == "relu" else None
        else:
            plain = (relu.get("negative_slope", 0) == 0 and relu.get("threshold", 0) == 0
                     and relu.get("max_value") is None)
            activation = "relu" if plain else None
        if activation is None:
            return match_layer  # ReLU6, a leaky ReLU, tanh, ... stays a layer of its own
        cfg = dict(layer_node.layer["config"], activation=activation)
        return transforms.LayerNode(dict(layer_node.layer, config=cfg),
                                    weights=layer_node.weights,
                                    input_layers=layer_node.input_layers,
                                    metadata=layer_node.metadata)


class LowBitWeightQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """tfmot Quantizer around a ``tflq.quantizers.WeightQuantizer``.

    The tflq quantizer maps the kernel to its levels (with its straight-through
    gradient); a final int8 fake-quant over [-127Δ, 127Δ] (narrow range) then
    tells the TFLite converter the int8 scale Δ. Because every level is an integer
    multiple k·Δ with |k| <= 127, that fake-quant changes nothing and the int8
    tensor the converter writes holds exactly the quantizer's levels.

    The range is stored and set on every training step (and by calibration),
    like tfmot's LastValueQuantizer; inference and the converter use the stored one.

    ``incremental=True`` is INQ (Zhou et al. 2017, see ``tflq.inq``): only the
    weights in the mask are quantized and frozen; the rest stay float (on the int8
    grid) and keep training until the ``tflq.inq.INQ`` callback has masked them all.
    """

    # Set only while tflq.convert converts a per-channel Dense (per_channel_dense).
    export_per_tensor = False

    def __init__(self, weight_quantizer, depthwise: bool = False, incremental: bool = False):
        from tflq import quantizers
        self.weight_quantizer = quantizers.get(weight_quantizer)
        self.depthwise = depthwise
        self.incremental = incremental

    def build(self, tensor_shape, name, layer):
        # The int8 range [-127Δ, 127Δ] lives in variables, as tfmot's own weight
        # quantizers keep theirs: the converter folds a fake-quant whose bounds are
        # variables, but not always one whose bounds are computed from the weights.
        channels = tensor_shape[-1] * (tensor_shape[-2] if self.depthwise else 1)
        shape = (channels,) if self.weight_quantizer.per_channel else ()
        bound = lambda v: keras.initializers.Constant(v)  # noqa: E731  tfmot's initial ±6
        variables = {
            "min_var": layer.add_weight(f"{name}_min", shape=shape, initializer=bound(-6.0),
                                        trainable=False),
            "max_var": layer.add_weight(f"{name}_max", shape=shape, initializer=bound(6.0),
                                        trainable=False),
            # Per-channel scale s: levels s * q(w / s), still k * Δ (tflq.post_training).
            "scale": layer.add_weight(f"{name}_scale", shape=shape, initializer=bound(1.0),
                                      trainable=False)}
        if self.incremental:
            zeros = keras.initializers.Zeros()
            variables["mask"] = layer.add_weight(f"{name}_inq_mask", shape=tensor_shape,
                                                 initializer=zeros, trainable=False)
            variables["frozen"] = layer.add_weight(f"{name}_inq_frozen", shape=tensor_shape,
                                                   initializer=zeros, trainable=False)
        return variables

    def levels(self, kernel, scale=1.0):
        """The quantizer's levels for ``kernel`` (a Keras-layout kernel) at per-channel
        ``scale`` s: s * q(kernel / s), whose step is s * Δ(kernel / s)."""
        flat = self._flat(kernel)
        return self._unflat(scale * self.weight_quantizer(flat / scale), kernel)

    def step(self, kernel, scale=1.0):
        """Δ of ``levels(kernel, scale)``: shape [channels] (or [] per tensor)."""
        return scale * self.weight_quantizer.step(self._flat(kernel) / scale)

    def quantized(self, kernel, variables):
        """The kernel as the model uses it in inference (levels, or INQ's mix)."""
        return self._source_and_levels(kernel, variables)[1]

    def _scale(self, variables):
        return 1.0 if self.incremental or "scale" not in variables else variables["scale"]

    def _source_and_levels(self, kernel, variables):
        """(what Δ is computed from, the quantized kernel). Δ comes from the float
        kernel, never from its levels: μL2Q's σ of the levels differs from the
        kernel's. For INQ both are the mix of frozen levels and float weights."""
        if self.incremental:
            mask = variables["mask"]
            mixed = mask * variables["frozen"] + (1.0 - mask) * kernel
            return mixed, mixed
        return kernel, self.levels(kernel, self._scale(variables))

    def sync(self, kernel, variables) -> None:
        """Sets the stored int8 range from the current kernel. Training steps set it
        before the optimizer moves the weights; ``tflq.convert`` calls this first."""
        source, _ = self._source_and_levels(kernel, variables)
        step = self.step(source, self._scale(variables))
        variables["min_var"].assign(-127.0 * step)
        variables["max_var"].assign(127.0 * step)

    def __call__(self, inputs, training, weights, **kwargs):
        source, levels = self._source_and_levels(inputs, weights)
        low, high = weights["min_var"], weights["max_var"]
        if training:
            step = tf.stop_gradient(self.step(source, self._scale(weights)))
            low, high = low.assign(-127.0 * step), high.assign(127.0 * step)
        if self.export_per_tensor and low.shape.rank:  # tflq.converters.per_channel_dense
            low, high = tf.reduce_min(low), tf.reduce_max(high)
        fake_quant = (tf.quantization.fake_quant_with_min_max_vars if low.shape.rank == 0
                      else tf.quantization.fake_quant_with_min_max_vars_per_channel)
        return self._unflat(fake_quant(self._flat(levels), low, high, num_bits=8,
                                       narrow_range=True), inputs)

    def _flat(self, kernel):
        # Depthwise kernels are (kh, kw, in, mult); output channel = in * mult + m.
        return tf.reshape(kernel, (*kernel.shape[:2], 1, -1)) if self.depthwise else kernel

    def _unflat(self, w, like):
        return tf.reshape(w, like.shape) if self.depthwise else w

    def get_config(self):
        wq = self.weight_quantizer
        return {"weight_quantizer": {"class_name": type(wq).__name__, "config": wq.get_config()},
                "depthwise": self.depthwise, "incremental": self.incremental}

    def __eq__(self, other):
        return isinstance(other, LowBitWeightQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)


class LowBitActivationQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """tfmot Quantizer around a ``tflq.quantizers.activations.ActivationQuantizer``.

    Keeps the clip α (trained for PACT, set by calibration) and the 8-bit
    fake-quant range derived from it. Training steps derive the range from α (so
    α gets the fake-quant's gradient) and store it; inference and the converter use
    the stored range, as tfmot's own quantizers do.

    While ``observe`` holds a dict (``tflq.calibration``), an eager call also records
    its inputs there under the clip variable's name.
    """

    observe = None

    def __init__(self, activation_quantizer):
        from tflq.quantizers import activations
        self.activation_quantizer = activations.get(activation_quantizer)

    def build(self, tensor_shape, name, layer):
        aq = self.activation_quantizer
        low, high = aq.fake_range(aq.clip)
        const = keras.initializers.Constant
        # A trainable clip joins the wrapper's trainable weights after the layer's own,
        # whether the layer was built before the wrapper (quantize_apply) or by it (a
        # model loading back): an .h5 file restores weights by that order.
        inner = getattr(layer, "layer", None)
        for weight in (inner.trainable_weights if inner is not None else ()):
            if all(weight is not w for w in layer._trainable_weights):
                layer._trainable_weights.append(weight)
        return {"clip": layer.add_weight(f"{name}_clip", shape=(), initializer=const(aq.clip),
                                         trainable=aq.learn_clip),
                "min_var": layer.add_weight(f"{name}_min", shape=(), initializer=const(low),
                                            trainable=False),
                "max_var": layer.add_weight(f"{name}_max", shape=(), initializer=const(high),
                                            trainable=False)}

    def __call__(self, inputs, training, weights, **kwargs):
        aq = self.activation_quantizer
        if self.observe is not None and tf.executing_eagerly():
            self.observe.setdefault(weights["clip"].name, []).append(np.asarray(inputs))
        if not training:
            return aq(inputs, weights["min_var"], weights["max_var"])
        # The clip stays positive whatever the optimizer does.
        clip = tf.maximum(weights["clip"], 1e-6)
        low, high = aq.fake_range(clip)
        with tf.control_dependencies([weights["min_var"].assign(low),
                                      weights["max_var"].assign(high)]):
            return aq(inputs, low, high)

    def get_config(self):
        aq = self.activation_quantizer
        return {"activation_quantizer": {"class_name": type(aq).__name__,
                                         "config": aq.get_config()}}

    def __eq__(self, other):
        return isinstance(other, LowBitActivationQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)


class LowBitQuantizeConfig(default_8bit_quantize_registry.Default8BitQuantizeConfig):
    """tfmot's 8-bit config (int8 activations, fused activation) with low-bit weights,
    a low-bit output, or both.

    ``weight_quantizer=None``: tfmot's int8 weights (per channel for Conv2D and
    DepthwiseConv2D, ``int8_conv``; per tensor for Dense). ``activation_quantizer``:
    a ``tflq.quantizers.activations`` quantizer for the layer's output instead of
    tfmot's 8-bit one. ``quantize_activation=False``: weights only, for a layer whose
    output a following ReLU layer quantizes (see ``_LayoutTransform``)."""

    def __init__(self, weight_quantizer, weight_attr: str = "kernel", incremental: bool = False,
                 quantize_activation: bool = True, activation_quantizer=None,
                 int8_conv: bool = False):
        super().__init__([weight_attr], ["activation"] if quantize_activation else [], False)
        self.int8_conv = bool(int8_conv)
        if weight_quantizer is None:
            if self.int8_conv:
                self.weight_quantizer = default_8bit_quantizers.Default8BitConvWeightsQuantizer()
        elif not isinstance(weight_quantizer, LowBitWeightQuantizer):
            weight_quantizer = LowBitWeightQuantizer(
                weight_quantizer, depthwise=weight_attr == "depthwise_kernel",
                incremental=incremental)
        if weight_quantizer is not None:
            self.weight_quantizer = weight_quantizer
        self.low_bit_weights = weight_quantizer is not None
        if activation_quantizer is not None and not isinstance(activation_quantizer,
                                                               LowBitActivationQuantizer):
            activation_quantizer = LowBitActivationQuantizer(activation_quantizer)
        if activation_quantizer is not None:
            self.activation_quantizer = activation_quantizer
        self.low_bit_activation = activation_quantizer is not None

    def get_config(self):
        return {"weight_quantizer": (self.weight_quantizer.get_config() if self.low_bit_weights
                                     else None),
                "weight_attr": self.weight_attrs[0],
                "quantize_activation": bool(self.activation_attrs),
                "activation_quantizer": (self.activation_quantizer.get_config()
                                         if self.low_bit_activation else None),
                "int8_conv": self.int8_conv}

    @classmethod
    def from_config(cls, config):
        weights, outputs = config["weight_quantizer"], config.get("activation_quantizer")
        return cls(LowBitWeightQuantizer(**weights) if weights else None, config["weight_attr"],
                   quantize_activation=config.get("quantize_activation", True),
                   activation_quantizer=(LowBitActivationQuantizer(**outputs) if outputs
                                         else None),
                   int8_conv=config.get("int8_conv", False))


class _LayoutTransform(default_8bit_quantize_layout_transform.Default8BitQuantizeLayoutTransform):
    """tfmot's 8-bit layout transforms, then one repair.

    tfmot's LayerReLUQuantize (meant for Add -> ReLU) also matches Conv2D /
    DepthwiseConv2D / Dense -> ReLU and replaces the layer's config with a no-op, so
    the layer trains and converts with float weights. Here such a layer gets back the
    config it had (the scheme's low-bit one, or the registry's int8 one) minus its
    activation quantizer: the weights are fake-quantized, and the only fake-quant is
    the ReLU layer's, after it, which is where TFLite's fused activation puts it.
    """

    def apply(self, model, layer_quantize_map):
        given = {name: meta.get("quantize_config") for name, meta in layer_quantize_map.items()}
        transformed, quantize_map = super().apply(model, layer_quantize_map)
        registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
        for layer in transformed.layers:
            meta = quantize_map.get(layer.name, {})
            if (type(layer).__name__ in _FOLDABLE and isinstance(
                    meta.get("quantize_config"), default_8bit_quantize_configs.NoOpQuantizeConfig)):
                config = given.get(layer.name) or registry.get_quantize_config(layer)
                if all(_fusable(n.outbound_layer) for n in layer._outbound_nodes):
                    config = _weights_only(config)
                quantize_map[layer.name] = dict(meta, quantize_config=config)
        return transformed, quantize_map


def _fusable(layer) -> bool:
    """A ReLU layer the converter fuses into the op before it (RELU, RELU6)."""
    config = layer.get_config()
    return (isinstance(layer, keras.layers.ReLU) and not config.get("negative_slope")
            and not config.get("threshold") and config.get("max_value") in (None, 6))


def _weights_only(config):
    if isinstance(config, LowBitQuantizeConfig):
        return LowBitQuantizeConfig(config.weight_quantizer if config.low_bit_weights else None,
                                    config.weight_attrs[0], quantize_activation=False,
                                    int8_conv=config.int8_conv)
    return type(config)(config.weight_attrs, [], False)


class _Scheme(default_8bit_quantize_scheme.Default8BitQuantizeScheme):
    """tfmot's default 8-bit scheme with ``_LayoutTransform``."""

    def get_layout_transformer(self):
        return _LayoutTransform()


class _FoldBatchNorm(transforms.Transform):
    """tfmot graph transform: (Conv2D | DepthwiseConv2D | Dense) -> BN  ==>  one layer."""

    def pattern(self):
        return transforms.LayerPattern(
            "BatchNormalization",
            inputs=[transforms.LayerPattern("|".join(_FOLDABLE), config={"activation": "linear"})])

    def replacement(self, match_layer):
        bn_node, layer_node = match_layer, match_layer.input_layers[0]
        bn_cfg, cfg = bn_node.layer["config"], layer_node.layer["config"]
        axis = bn_cfg["axis"]
        axis = axis if isinstance(axis, int) else (axis[0] if len(axis) == 1 else None)
        if axis not in (-1, 3) and not (layer_node.layer["class_name"] == "Dense" and axis == 1):
            logging.warning("BatchNormalization %r normalises axis %s, not channels: not folded",
                            bn_cfg["name"], bn_cfg["axis"])
            return match_layer

        bn = _weights_by_suffix(bn_node.weights)
        w = _weights_by_suffix(layer_node.weights)
        mean, var = bn["moving_mean"], bn["moving_variance"]
        if np.all(mean == 0) and np.all(var == 1):
            logging.warning(
                "BatchNormalization %r has never been trained (moving mean 0, variance 1): "
                "folding makes it an identity. Train the float model before quantize_model.",
                bn_cfg["name"])
        gamma = bn.get("gamma", np.ones_like(mean))
        beta = bn.get("beta", np.zeros_like(mean))
        scale = gamma / np.sqrt(var + bn_cfg["epsilon"])
        kernel_name = "depthwise_kernel" if "depthwise_kernel" in w else "kernel"
        kernel = w[kernel_name]
        # The output channel is the last kernel axis, except for depthwise kernels
        # (kh, kw, in, multiplier), whose output channel is in * multiplier + m.
        kernel = kernel * scale.reshape(kernel.shape[-2:] if kernel_name == "depthwise_kernel"
                                        else kernel.shape[-1:])
        bias = w.get("bias", np.zeros_like(mean))
        bias = (bias - mean) * scale + beta

        cfg = dict(cfg, use_bias=True)
        new_layer = dict(layer_node.layer, config=cfg)
        weights = collections.OrderedDict(
            [(f"{kernel_name}:0", kernel.astype(np.float32)), ("bias:0", bias.astype(np.float32))])
        return transforms.LayerNode(new_layer, weights=weights,
                                    input_layers=layer_node.input_layers,
                                    metadata=layer_node.metadata)


def _weights_by_suffix(weights: dict) -> dict:
    """{'conv/kernel:0': w} -> {'kernel': w}."""
    return {name.split("/")[-1].split(":")[0]: np.asarray(value) for name, value in weights.items()}


def quantized_kernels(qat_model):
    """``[(wrapper, kernel_variable, tfmot_quantizer, quantizer_variables)]`` for every
    quantized Conv2D / DepthwiseConv2D / Dense kernel of a tflq QAT model.

    Calling ``tfmot_quantizer(kernel_variable, False, quantizer_variables)`` gives the
    kernel as the model uses it in inference. (tfmot 0.8.1 keeps these in the
    wrapper's ``_weight_vars``; this is the one place that reads them.)
    """
    found = []
    for wrapper in qat_model.layers:
        for weight, quantizer, variables in getattr(wrapper, "_weight_vars", ()):
            if weight.name.endswith(("/kernel:0", "/depthwise_kernel:0")):
                found.append((wrapper, weight, quantizer, variables))
    return found


def quantized_activations(qat_model):
    """``[(wrapper, LowBitActivationQuantizer, quantizer_variables)]`` for every layer of
    a tflq QAT model whose output is low-bit, in layer order (tfmot 0.8.1 keeps them
    in its QuantizeAwareActivation; this is the one place that reads them)."""
    found = []
    for wrapper in qat_model.layers:
        act = getattr(getattr(wrapper, "layer", None), "activation", None)
        if (isinstance(act, quantize_aware_activation.QuantizeAwareActivation)
                and isinstance(act.quantizer, LowBitActivationQuantizer)):
            found.append((wrapper, act.quantizer, act._post_activation_vars))
    return found
