"""Layers that read low-bit activations get their int8 weights on the finest grid.

TFLM requantizes a layer's accumulator with M = s_in · s_w / s_out as a 31-bit
multiplier and a right shift, rounding after the multiply *and* after the shift
(gemmlowp's double rounding, ``converters.requantize``). The first rounding is at
2^-shift of an output step. With 8-bit inputs M is small, the shift long, and
that rounding invisible. A layer with low-bit weights (codes ±1 at scale Δ) that
reads low-bit activations (s_in ≈ s_out) has M ≈ Δ: a shift of 2 or 3 bits,
so outputs within 1/8 of a step of a rounding threshold land on the other code --
one output in twelve in a binary net, measured on the digits. Its int32 bias,
round(b / (s_in · s_w)), is equally coarse.

``rewrite`` therefore multiplies such a layer's int8 codes by m = ⌊127 / max|code|⌋
(per channel where the weights are per channel) and divides their scale by m. The
real weights are the same (m·k · Δ/m = k·Δ, and the codes still take the
quantizer's few values), M shrinks m-fold (7 more shift bits for binary and
ternary weights), and the bias is re-quantized from the QAT model's float bias on
the m-fold finer grid.
"""
from __future__ import annotations

import re

import numpy as np

from tflq.converters import flatbuffer as fb
from tflq.converters.per_channel_dense import set_quantized

# Ops whose int8 output holds the codes of their input (same scale and zero point).
_KEEP_CODES = ("MAX_POOL_2D", "RESHAPE", "SQUEEZE", "PAD")


def rewrite(flatbuffer: bytes, qat_model, activations) -> bytes:
    """``flatbuffer`` with every FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D that
    reads one of ``activations`` (``converters.tflite.low_bit_activations``) on the
    finest int8 weight grid."""
    coded = {a.tensor for a in activations if a.ok}
    if not coded:
        return flatbuffer
    model = fb.load(flatbuffer)
    sg = model.subgraphs[0]
    biases = _float_biases(qat_model)
    changed = False
    for op in sg.operators:
        name = fb.op_name(model, op)
        if name in _KEEP_CODES and op.inputs[0] in coded:
            coded.add(int(op.outputs[0]))
        elif name in fb.LAYER_OPS[:3] and op.inputs[0] in coded:
            changed |= _refine(model, op, biases)
    if not changed:
        return flatbuffer
    fb.drop_unused(model)
    return fb.dump(model)


def _float_biases(qat_model) -> dict:
    """{wrapper name: float bias} of the QAT model's weighted layers."""
    from tflq.qat import quantized_kernels
    return {w.name: np.asarray(w.layer.bias.numpy(), np.float64)
            for w, _, _, _ in quantized_kernels(qat_model) if getattr(w.layer, "bias", None) is not None}


def _refine(model, op, biases: dict) -> bool:
    sg = model.subgraphs[0]
    w_tensor = sg.tensors[op.inputs[1]]
    w = fb.tensor(model, op.inputs[1])
    if w.data is None or w.data.dtype != np.int8:
        return False
    per_channel = len(w.scale) > 1
    if per_channel and w_tensor.quantization.quantizedDimension != 0:
        return False  # per-channel depthwise: int8 weights, max code 127 already
    codes = w.data.astype(np.int64).reshape(len(w.data) if per_channel else 1, -1)
    top = np.maximum(np.abs(codes).max(axis=1), 1)
    m = 127 // top
    if np.all(m == 1):
        return False
    scales = w.scale.astype(np.float64) / m
    set_quantized(model, w_tensor, (codes * m[:, None]).reshape(w.data.shape).astype(np.int8),
                  scales)
    if per_channel:
        w_tensor.quantization.quantizedDimension = 0
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        b_tensor = sg.tensors[op.inputs[2]]
        old = fb.tensor(model, op.inputs[2])
        s_in = float(sg.tensors[op.inputs[0]].quantization.scale[0])
        grid = s_in * scales  # one per channel, or one per tensor
        out_name = fb.tensor(model, op.outputs[0]).name
        bias = next((b for name, b in biases.items()
                     if re.search(rf"(^|[/;]){re.escape(name)}/", out_name)
                     and b.shape == old.data.shape), None)
        if bias is None:  # the converter's bias, on the finer grid
            bias = old.data.astype(np.float64) * np.broadcast_to(
                old.scale.astype(np.float64), old.data.shape)
        q = np.clip(np.rint(bias / np.broadcast_to(grid, bias.shape)), -2**31,
                    2**31 - 1).astype(np.int32)
        set_quantized(model, b_tensor, q, grid)
    return True
