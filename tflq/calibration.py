"""Sets every quantization range of a QAT model from data.

tfmot starts each range at [-6, 6]. Its moving-average activation ranges move
0.1% per training step, its input range only ever widens from [-6, 6] (a [0, 1]
image gets ~21 of its 256 levels), and in inference its weight ranges are the
initial [-6, 6] until a training step has run. A freshly quantized tfmot model
therefore predicts at chance.

Calibration runs the data through the QAT model once in training mode, with
every range reset to [0, 0] and tfmot's moving-average op swapped for its
all-values op (a running min/max), so each range becomes exactly the range of
the tensor it quantizes over the whole calibration set -- computed by tfmot's own
ops on the quantized network, as in the model that converts. Low-bit activations
(``tflq.quantizers.activations``) first get the clip with the least squared error
on their inputs, one layer after another. Layers whose
training mode is random or stateful (Dropout, BatchNormalization) run in
inference mode for the pass.
"""
from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

from tflq.errors import TflqError


def calibrate(qat_model: keras.Model, data, batch_size: int = 256) -> None:
    """Sets ``qat_model``'s weight and activation ranges from ``data`` (inputs only)."""
    batches = list(_batches(data, batch_size))
    if not batches:
        raise TflqError("calibration_data is empty: give at least one input sample")
    want = tuple(qat_model.input_shape[1:])
    for k, batch in enumerate(batches):
        got = tuple(batch.shape[1:])
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            raise TflqError(f"calibration_data samples have shape {got}; model "
                            f"{qat_model.name!r} takes {want} (batch {k})")
        if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(batch, tf.float32)))):
            raise TflqError(f"calibration_data holds NaN or Inf (batch {k} of {batch_size})")
    with _running_min_max(), _inference_behaviour(qat_model):
        _pass(qat_model, batches)
        if _fit_activation_clips(qat_model, batches):
            _pass(qat_model, batches)  # the 8-bit ranges after the low-bit outputs


def _pass(qat_model, batches) -> None:
    for var in _range_variables(qat_model):
        var.assign(tf.zeros_like(var))
    for batch in batches:
        qat_model(batch, training=True)


def _fit_activation_clips(qat_model, batches) -> bool:
    """Sets each calibrated low-bit activation's clip α to the least-squares clip of
    its inputs, in layer order, each given the quantized outputs of the layers before
    it. Returns whether there was any."""
    from tflq.qat import LowBitActivationQuantizer, quantized_activations

    fitted = False
    for _, quantizer, variables in quantized_activations(qat_model):
        if not quantizer.activation_quantizer.calibrated:
            continue
        seen = {}
        LowBitActivationQuantizer.observe = seen
        try:
            for batch in batches:
                qat_model(batch, training=True)
        finally:
            LowBitActivationQuantizer.observe = None
        clip = quantizer.activation_quantizer.fit_clip(
            np.concatenate([x.ravel() for x in seen[variables["clip"].name]]))
        if clip is not None:
            variables["clip"].assign(clip)
            fitted = True
    return fitted


def _batches(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        for item in data:
            yield item[0] if isinstance(item, (tuple, list)) else item
        return
    data = np.asarray(data, dtype=np.float32)
    for start in range(0, len(data), batch_size):
        yield tf.constant(data[start:start + batch_size])


def _range_variables(model):
    """The min/max variables tfmot's quantizers keep (names ``.../*_min:0``, ``*_max:0``)."""
    return [v for v in model.non_trainable_weights
            if v.name.endswith(("_min:0", "_max:0"))]


@contextlib.contextmanager
def _running_min_max():
    """Makes tfmot's moving-average quantizer keep the running min/max instead."""
    moving_average = quant_ops.MovingAvgQuantize

    def all_values(inputs, min_var, max_var, per_channel=False, ema_decay=0.999,
                   name_prefix="MovingAvgQuantize", is_training=True, num_bits=8,
                   narrow_range=False, symmetric=False):
        del ema_decay
        if per_channel:
            raise TflqError("calibration of per-channel activation ranges is not supported")
        return quant_ops.AllValuesQuantize(inputs, min_var, max_var, name_prefix=name_prefix,
                                           is_training=is_training, num_bits=num_bits,
                                           narrow_range=narrow_range, symmetric=symmetric)

    quant_ops.MovingAvgQuantize = all_values
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = moving_average


@contextlib.contextmanager
def _inference_behaviour(model):
    """Dropout off and BatchNormalization on moving statistics while calibrating."""
    dropouts = [m for m in model.submodules if isinstance(m, keras.layers.Dropout)]
    rates = [d.rate for d in dropouts]
    trainable = model.trainable
    model.trainable = False  # tf_keras BN runs in inference mode when not trainable
    for d in dropouts:
        d.rate = 0.0
    try:
        yield
    finally:
        model.trainable = trainable
        for d, rate in zip(dropouts, rates):
            d.rate = rate
