r"""Post-training quantization that holds up without retraining.

``quantize_model(model, scheme, calibration_data=x, post_training=True)`` calibrates,
then runs ``optimize``: layer by layer, in graph order, each low-bit Conv2D / Dense is
fitted to its calibration inputs *as the quantized model computes them* (so each layer
sees, and corrects, the error of the layers before it). Then it is calibrated again.

**Scale search** (per output channel; the layer's output error, not the weights'). A
quantizer's levels are k·Δ_c, with Δ_c set by the channel's statistics: log's window
top from max|w|, fixed point's power-of-two step. tflq gives each channel a scale s_c
(``LowBitWeightQuantizer``'s ``scale`` variable), with levels
:math:`q_s(w) = s \cdot q(w / s)`. These are still k·(s·Δ), so they are exact in int8
with a per-channel scale. For s on a grid over one octave, :math:`s = 2^{-j/J}`, the
search keeps the s that minimises the channel's expected squared output error on the
layer's inputs X (patches, for a Conv2D):

.. math::  E_c(s) = (w_c - q_s(w_c))^\top \, X^\top X \, (w_c - q_s(w_c))

This is the layer-wise objective of AdaRound (Nagel et al. 2020) and of OCS/OMSE-style
scale searches, with the rounding left to the quantizer. Quantizers that are
homogeneous in w (TWN, BWN, μL2Q, min-max) give the same levels for every s; for them
the search changes nothing.

**Bias correction** (Nagel et al. 2019, "Data-Free Quantization", §4.2, the empirical
form). Quantizing the weights shifts a channel's expected pre-activation by
:math:`\mathbb{E}[x]^\top (q(w_c) - w_c)`. Adding the opposite to the bias removes the
shift:

.. math::  b_c \leftarrow b_c - \mathbb{E}[x]^\top (q(w_c) - w_c)

Both need only the calibration data. ``benchmarks/post_training.py`` measures what they
give (docs/benchmarks/post_training.md).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tflq.errors import TflqError

GRID = 16  # scales per octave
MAX_ROWS = 32768  # patches of a Conv2D's inputs used


def optimize(qat_model: keras.Model, data, search: bool = True, bias_correction: bool = True,
             batch_size: int = 256) -> None:
    """Scale search and bias correction of every low-bit Conv2D / Dense of
    ``qat_model`` (a calibrated tflq QAT model), in place. ``data``: model inputs."""
    from tflq.qat import LowBitWeightQuantizer, quantized_kernels

    from tflq import layers

    if isinstance(data, tf.data.Dataset):
        raise TflqError("post-training optimisation takes calibration_data as an array of "
                        "inputs, not a tf.data.Dataset")
    data = np.asarray(data, np.float32)
    head, qat_model = layers.features_of(qat_model)
    if head is not None:  # ProjectionProfiles: the body sees the profiles
        data = head(data).numpy()
    if len(data) < 2:
        raise TflqError(f"post-training optimisation needs at least 2 calibration samples, "
                        f"got {len(data)}")
    for wrapper, kernel, quantizer, variables in quantized_kernels(qat_model):
        layer = wrapper.layer
        if (not isinstance(quantizer, LowBitWeightQuantizer) or quantizer.depthwise
                or quantizer.incremental or type(layer).__name__ not in ("Conv2D", "Dense")):
            continue
        x = keras.Model(qat_model.inputs, wrapper.input).predict(data, batch_size=batch_size,
                                                                 verbose=0)
        x = _patches(layer, x)  # (samples, fan_in), fan_in in the kernel's flattened order
        w = kernel.numpy().reshape(-1, kernel.shape[-1]).astype(np.float64)  # (fan_in, out)
        if search:
            gram = x.T @ x / len(x)
            best = _search(quantizer, kernel, gram)
            variables["scale"].assign(best.astype(np.float32) if quantizer.weight_quantizer
                                      .per_channel else np.float32(best.mean()))
        quantizer.sync(kernel, variables)
        if bias_correction and layer.use_bias:
            q = np.asarray(quantizer.quantized(kernel, variables), np.float64)
            shift = x.mean(0) @ (q.reshape(w.shape) - w)
            layer.bias.assign((layer.bias.numpy() - shift).astype(np.float32))


def _search(quantizer, kernel, gram: np.ndarray) -> np.ndarray:
    """Per output channel: the scale on the one-octave grid with the least output error
    (ties: the larger scale, 1.0 first)."""
    w = tf.convert_to_tensor(kernel)
    flat_w = w.numpy().reshape(-1, w.shape[-1]).astype(np.float64)
    errors = []
    scales = 2.0 ** (-np.arange(GRID) / GRID)
    per_channel = quantizer.weight_quantizer.per_channel
    for s in scales:
        scale = tf.constant(np.full(w.shape[-1], s, np.float32) if per_channel else np.float32(s))
        d = np.asarray(quantizer.levels(w, scale), np.float64).reshape(flat_w.shape) - flat_w
        error = np.sum((gram @ d) * d, axis=0)  # per output channel
        errors.append(error if per_channel else np.full(d.shape[1], error.sum()))
    return scales[np.argmin(np.stack(errors), axis=0)]


def _patches(layer, x: np.ndarray) -> np.ndarray:
    """The layer's inputs as rows of its kernel's fan-in: Dense inputs as they are, a
    Conv2D's input patches (kh, kw, in order, as the kernel flattens)."""
    if type(layer).__name__ == "Dense":
        if x.ndim != 2:
            raise TflqError(f"layer {layer.name!r}: post-training optimisation takes Dense "
                            f"layers on flat inputs, not {x.shape[1:]}")
        return x.astype(np.float64)
    kh, kw = layer.kernel_size
    patches = tf.image.extract_patches(
        x, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
        rates=[1, *layer.dilation_rate, 1], padding=layer.padding.upper())
    rows = patches.numpy().reshape(-1, kh * kw * x.shape[-1])
    if len(rows) > MAX_ROWS:  # a random subset of the patches bounds the memory
        rows = rows[np.random.default_rng(0).choice(len(rows), MAX_ROWS, replace=False)]
    return rows.astype(np.float64)
