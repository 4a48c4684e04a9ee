"""QAT Keras model -> fully integer TFLite flatbuffer (int8 input and output)."""
from __future__ import annotations

import dataclasses

from tflq import _env  # noqa: F401  -- before TensorFlow
import numpy as np
import tensorflow as tf

from tflq.errors import TflqError


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """Affine int8 quantization of one tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def quantize(self, x) -> np.ndarray:
        q = np.round(np.asarray(x, np.float32) / self.scale) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize(self, q) -> np.ndarray:
        return (np.asarray(q, np.float32) - self.zero_point) * self.scale


def convert(qat_model, representative_data=None) -> bytes:
    """Returns a fully integer TFLite flatbuffer of ``qat_model``.

    A ``quantize_model`` model with a ``ProjectionProfiles`` first layer converts
    without it: the flatbuffer takes the int8 profiles, and its ``tflq_feature``
    metadata records the image size and bins the firmware computes them with.

    Ranges come from the QAT model's fake-quant nodes; ``representative_data``
    (model inputs) is needed only for tensors the QAT model left unquantized.
    """
    from tflq.qat import LowBitWeightQuantizer, quantized_kernels
    from tflq import layers

    head, body = layers.features_of(qat_model)
    if head is not None:  # ProjectionProfiles: the firmware computes it, in C
        if representative_data is not None:
            representative_data = head(np.asarray(representative_data, np.float32)).numpy()
        from tflq.converters import features, flatbuffer as fb
        height, width = (int(d) for d in head.input_shape[1:3])
        return fb.with_metadata(convert(body, representative_data), features.METADATA,
                                features.describe(height, width, head.bins))
    if not quantized_kernels(qat_model) and not any(
            type(l).__name__ == "QuantizeLayer" for l in getattr(qat_model, "layers", ())):
        raise TflqError(f"model {getattr(qat_model, 'name', '?')!r} is a float model: quantize it "
                        "with tflq.quantize_model(model, scheme=..., calibration_data=...) first")
    for weight in qat_model.weights:
        if not np.all(np.isfinite(weight.numpy())):
            raise TflqError(f"model {qat_model.name!r}: weight {weight.name!r} holds NaN or Inf; "
                            "training diverged or the file is damaged")
    # A low-bit layer's stored int8 range was set before the last optimizer step.
    for _, kernel, quantizer, variables in quantized_kernels(qat_model):
        if isinstance(quantizer, LowBitWeightQuantizer):
            quantizer.sync(kernel, variables)
    from tflq.converters import per_channel_dense, weight_grid
    dense = per_channel_dense.layers(qat_model)
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    if representative_data is not None:
        samples = np.asarray(representative_data, np.float32)
        converter.representative_dataset = lambda: ([s[None]] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with per_channel_dense.for_conversion(dense):
        flatbuffer = converter.convert()
    flatbuffer = per_channel_dense.rewrite(flatbuffer, dense)
    flatbuffer = weight_grid.rewrite(flatbuffer, qat_model, low_bit_activations(qat_model, flatbuffer))
    _check_integer_only(flatbuffer, qat_model.name)
    bad = [l for l in low_bit_layers(qat_model, flatbuffer) if not l.ok]
    if bad:
        raise TflqError("low-bit weights did not survive conversion exactly: " + "; ".join(
            f"layer {l.layer!r} ({l.quantizer}): " + (
                "no int8 tensor in the flatbuffer equals its quantized weights" if not l.exact else
                f"{l.max_levels_seen} distinct int8 values in a channel > {l.num_levels} levels")
            for l in bad))
    bad = [a for a in low_bit_activations(qat_model, flatbuffer) if not a.ok]
    if bad:
        raise TflqError("low-bit activations did not survive conversion exactly: " + "; ".join(
            f"layer {a.layer!r} ({a.quantizer}): {a.problem}" for a in bad))
    return flatbuffer


@dataclasses.dataclass(frozen=True)
class LowBitActivation:
    """How one layer's low-bit output came out in the flatbuffer: the op's output
    tensor, and why its codes can only be the quantizer's (or ``problem``)."""

    layer: str
    quantizer: str
    num_levels: int
    tensor: int               # index of the op's output tensor (-1: not found)
    codes: tuple              # (lowest, highest) int8 code the op can write
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def low_bit_activations(qat_model, flatbuffer: bytes) -> list[LowBitActivation]:
    """Finds the op that produces each low-bit activation and checks, from the
    flatbuffer alone, that it can write only the quantizer's codes: the output's
    zero point and scale are the quantizer's and the op's fused activation clamps
    below (RELU at the zero point, RELU_N1_TO_1 at -1 and 1), int8 saturation above
    (``tflq.quantizers.activations``)."""
    import re
    from tflq.converters import flatbuffer as fb
    from tflq.qat import quantized_activations
    from tflq import layers
    from tensorflow.lite.python import schema_py_generated as schema

    _, qat_model = layers.features_of(qat_model)
    model = fb.load(flatbuffer)
    graph = model.subgraphs[0]
    fused_names = {v: k for k, v in vars(schema.ActivationFunctionType).items()
                   if not k.startswith("_")}
    found = []
    for wrapper, quantizer, variables in quantized_activations(qat_model):
        aq = quantizer.activation_quantizer
        step = float(variables["max_var"].numpy() - variables["min_var"].numpy()) / 255.0
        pattern = re.compile(rf"(^|[/;]){re.escape(wrapper.name)}/")
        ops = [op for op in graph.operators if fb.op_name(model, op) in fb.LAYER_OPS
               and op.outputs is not None and len(op.outputs) == 1
               and pattern.search(fb.tensor(model, op.outputs[0]).name)]
        problem, index = "", -1
        if len(ops) != 1:
            problem = (f"{len(ops)} ops of the flatbuffer name it as their output; expected one "
                       "FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D")
        else:
            index = int(ops[0].outputs[0])
            t = fb.tensor(model, index)
            fused = fused_names.get(getattr(ops[0].builtinOptions, "fusedActivationFunction", 0))
            zp = int(t.zero_point[0]) if len(t.zero_point) == 1 else None
            scale = float(t.scale[0]) if len(t.scale) == 1 else None
            if fused != aq.fused:
                problem = f"its op's fused activation is {fused}, not {aq.fused}"
            elif zp != aq.zero_point:
                problem = f"its tensor's zero point is {zp}, not {aq.zero_point}"
            elif scale is None or abs(scale - step) > 1e-5 * step:
                problem = f"its tensor's scale is {scale}, not the quantizer's step {step:.6g}"
        found.append(LowBitActivation(wrapper.layer.name, aq.alias, aq.num_levels, index,
                                      aq.codes, problem))
    return found


def io_quantization(flatbuffer: bytes) -> tuple[QuantParams, QuantParams]:
    """Returns the (input, output) QuantParams of a single-input, single-output model."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    return (QuantParams(*map(_scalar, inp["quantization"])),
            QuantParams(*map(_scalar, out["quantization"])))


def _scalar(v):
    return v.item() if hasattr(v, "item") else v


def _check_integer_only(flatbuffer: bytes, name: str) -> None:
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    floats = [t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    if floats:
        raise TflqError(
            f"model {name!r} did not convert to integers only: float tensors "
            f"{', '.join(floats[:5])}{' ...' if len(floats) > 5 else ''} remain. "
            "Quantize every layer with tflq.quantize_model, or pass representative_data.")


@dataclasses.dataclass(frozen=True)
class LowBitLayer:
    """How one low-bit layer's weights came out in the flatbuffer."""

    layer: str
    quantizer: str
    bits: int
    num_levels: int           # the quantizer's level count per channel
    max_levels_seen: int      # most distinct int8 values in any channel of the tensor
    tensor: str               # the flatbuffer tensor holding the weights
    exact: bool               # int8 * scale == the QAT model's quantized weights

    @property
    def ok(self) -> bool:
        return self.exact and self.max_levels_seen <= self.num_levels


def low_bit_layers(qat_model, flatbuffer: bytes) -> list[LowBitLayer]:
    """Finds each low-bit layer's int8 weight tensor and checks it holds exactly
    the quantizer's levels (compared with the QAT model's quantized weights)."""
    from tflq.converters import flatbuffer as fb
    from tflq.qat import LowBitWeightQuantizer, quantized_kernels
    from tflq import layers

    _, qat_model = layers.features_of(qat_model)  # a ProjectionProfiles head has no weights
    model = fb.load(flatbuffer)
    constants = []
    for i, t in enumerate(model.subgraphs[0].tensors):
        tensor = fb.tensor(model, i)
        if tensor.data is not None and tensor.data.dtype == np.int8 and len(tensor.scale):
            constants.append(tensor)
    found = []
    for wrapper, kernel, quantizer, variables in quantized_kernels(qat_model):
        if not isinstance(quantizer, LowBitWeightQuantizer):
            continue
        attr = "depthwise_kernel" if quantizer.depthwise else "kernel"
        expected = np.asarray(quantizer(kernel, False, variables))
        wq = quantizer.weight_quantizer
        # The kernel as TFLite lays it out: Conv2D (out, kh, kw, in); Dense (out, in);
        # DepthwiseConv2D (1, kh, kw, in * multiplier).
        if attr == "depthwise_kernel":
            candidates = [expected.reshape(1, *expected.shape[:2], -1)]
        elif expected.ndim == 4:
            candidates = [np.transpose(expected, (3, 0, 1, 2))]
        else:
            candidates = [expected.T]
        match = None
        for t in constants:
            for want in candidates:
                if t.data.shape != want.shape:
                    continue
                axis = 0 if len(t.scale) > 1 and t.data.ndim and t.data.shape[0] == len(t.scale) else -1
                scale = t.scale.reshape([-1 if d == (axis % t.data.ndim) else 1
                                         for d in range(t.data.ndim)]) if len(t.scale) > 1 else t.scale[0]
                if np.allclose(t.data * scale, want, rtol=1e-5, atol=1e-6 * np.abs(want).max()):
                    match = (t, axis)
                    break
            if match:
                break
        if match is None:
            found.append(LowBitLayer(wrapper.layer.name, wq.alias, wq.bits, wq.num_levels, -1, "", False))
            continue
        t, axis = match
        channels = np.moveaxis(t.data, axis, 0).reshape(t.data.shape[axis], -1) if len(t.scale) > 1 \
            else t.data.reshape(1, -1)
        seen = max(len(np.unique(c)) for c in channels)
        found.append(LowBitLayer(wrapper.layer.name, wq.alias, wq.bits, wq.num_levels, seen, t.name, True))
    return found
