"""Per-channel Dense weights, exactly, in the flatbuffer.

A low-bit quantizer works per output channel of a Dense kernel as of a Conv2D one: each
channel has its own step Δ_c (its own log window, its own scale). TFLite's
FULLY_CONNECTED takes per-channel int8 weights (scale per output row, quantized
dimension 0), and TFLM's and tf.lite's kernels run them, but the converter refuses a
per-channel fake-quant on a Dense kernel ("mismatched quantized axes": the kernel is
(in, out) in Keras, (out, in) in TFLite).

So ``tflq.convert`` converts such a layer with a per-tensor fake-quant at the largest
step (``for_conversion``), and ``rewrite`` then gives the FULLY_CONNECTED its
per-channel weights back through the schema's object API: int8 codes
``levels / Δ_c`` (integers, by the quantizers' contract), scales Δ_c, and the bias
re-quantized per channel as the converter quantizes biases, round(b / (s_in · Δ_c)).
``converters.tflite.low_bit_layers`` then checks every channel's codes, as for Conv2D.
"""
from __future__ import annotations

import contextlib

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from tflq.converters import flatbuffer as fb
from tflq.errors import TflqError


def layers(qat_model) -> list:
    """(wrapper, kernel, quantizer, variables) of each per-channel low-bit Dense."""
    from tflq.qat import LowBitWeightQuantizer, quantized_kernels

    return [(wrapper, kernel, quantizer, variables)
            for wrapper, kernel, quantizer, variables in quantized_kernels(qat_model)
            if isinstance(quantizer, LowBitWeightQuantizer) and not quantizer.depthwise
            and quantizer.weight_quantizer.per_channel and len(kernel.shape) == 2]


@contextlib.contextmanager
def for_conversion(dense_layers):
    """While converting: those layers' fake-quant per tensor, at their largest step."""
    for _, _, quantizer, _ in dense_layers:
        quantizer.export_per_tensor = True
    try:
        yield
    finally:
        for _, _, quantizer, _ in dense_layers:
            quantizer.export_per_tensor = False


def rewrite(flatbuffer: bytes, dense_layers) -> bytes:
    """``flatbuffer`` with each of ``dense_layers``' FULLY_CONNECTED per channel."""
    if not dense_layers:
        return flatbuffer
    model = fb.load(flatbuffer)
    sg = model.subgraphs[0]
    fc_ops = [op for op in sg.operators if fb.op_name(model, op) == "FULLY_CONNECTED"]
    for wrapper, kernel, quantizer, variables in dense_layers:
        levels = np.asarray(quantizer.quantized(kernel, variables), np.float64).T  # (out, in)
        steps = np.asarray(variables["max_var"].numpy(), np.float64) / 127.0
        op = _find(model, fc_ops, wrapper.name, levels, steps.max())
        codes = np.rint(levels / steps[:, None])
        if np.abs(codes).max() > 127 or not np.allclose(codes * steps[:, None], levels,
                                                          rtol=1e-6, atol=0):
            raise TflqError(f"layer {wrapper.layer.name!r}: its levels are not integer "
                            "multiples of its per-channel steps")
        weights = sg.tensors[op.inputs[1]]
        set_quantized(model, weights, codes.astype(np.int8), steps)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            s_in = float(sg.tensors[op.inputs[0]].quantization.scale[0])
            bias = np.asarray(wrapper.layer.bias.numpy(), np.float64)
            scales = s_in * steps
            q = np.clip(np.rint(bias / scales), -2**31, 2**31 - 1).astype(np.int32)
            set_quantized(model, sg.tensors[op.inputs[2]], q, scales)
    fb.drop_unused(model)
    return fb.dump(model)


def _find(model, fc_ops, wrapper_name: str, levels: np.ndarray, step: float):
    """The FULLY_CONNECTED whose weights are ``levels`` at the per-tensor ``step``."""
    sg = model.subgraphs[0]
    found = []
    for op in fc_ops:
        t = fb.tensor(model, op.inputs[1])
        if (t.data is None or t.data.shape != levels.shape or len(t.scale) != 1
                or not np.isclose(t.scale[0], step, rtol=1e-6)):
            continue
        if np.all(np.abs(t.data * step - levels) <= 0.5 * step * (1 + 1e-5)):
            found.append((f"/{wrapper_name}/" in t.name, op))
    named = [op for by_name, op in found if by_name]
    if len(named) == 1 or len(found) == 1:
        return (named or [op for _, op in found])[0]
    raise TflqError(f"{wrapper_name}: found {len(found)} FULLY_CONNECTED operators with its "
                    "weights in the converted model, not one")


def set_quantized(model, tensor, values: np.ndarray, scales: np.ndarray) -> None:
    """Points ``tensor`` at a new buffer holding ``values``, quantized per channel
    (dimension 0) with ``scales`` and zero points 0."""
    buffer = schema.BufferT()
    buffer.data = np.ascontiguousarray(values).view(np.uint8).ravel()
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1
    q = tensor.quantization or schema.QuantizationParametersT()
    q.scale = np.asarray(scales, np.float32)
    q.zeroPoint = np.zeros(len(scales), np.int64)
    q.quantizedDimension = 0
    q.min = q.max = None
    tensor.quantization = q
