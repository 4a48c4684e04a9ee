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
3. tfmot's ``quantize_annotate_model`` + ``quantize_apply`` with its default 8-bit
   scheme: symmetric int8 weights (per-channel for Conv2D/DepthwiseConv2D, per-tensor
   for Dense), asymmetric int8 activations with moving-average ranges, ReLU/ReLU6
   fused into the preceding layer.
4. Optional calibration (``tflq.calibration``): ranges from data, so the QAT model
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
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer, transforms)

from tflq import schemes
from tflq.errors import TflqError

_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def quantize_model(model: keras.Model, scheme="int8", calibration_data=None) -> keras.Model:
    """Returns a tf_keras QAT model of ``model``, ready for ``compile``/``fit``.

    Args:
      model: a built tf_keras Sequential or functional model.
      scheme: ``"int8"`` (Jacob et al. 2017 integer-only scheme) or another name
        from ``tflq.schemes.NAMES``, or a ``tflq.schemes.Scheme``.
      calibration_data: optional array (or dataset of input batches) of model
        inputs. When given, every quantization range is set from it, so the QAT
        model -- and ``tflq.convert`` of it without training -- is post-training
        quantization. Without it, ranges start at tfmot's [-6, 6] and are learnt
        during training.
    """
    scheme = schemes.resolve(scheme)
    check_model(model)
    folded = fold_batch_norms(model)
    check_layers(folded)
    annotated = tfmot.quantization.keras.quantize_annotate_model(folded)
    with quantize_scope():
        qat_model = tfmot.quantization.keras.quantize_apply(annotated)
    if calibration_data is not None:
        from tflq import calibration
        calibration.calibrate(qat_model, calibration_data)
    return qat_model


@contextlib.contextmanager
def quantize_scope():
    """Context in which a saved tflq QAT model loads back (``keras.models.load_model``)."""
    with tfmot.quantization.keras.quantize_scope():
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
