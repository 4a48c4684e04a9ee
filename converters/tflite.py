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

    Ranges come from the QAT model's fake-quant nodes; ``representative_data``
    (model inputs) is needed only for tensors the QAT model left unquantized.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    if representative_data is not None:
        samples = np.asarray(representative_data, np.float32)
        converter.representative_dataset = lambda: ([s[None]] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flatbuffer = converter.convert()
    _check_integer_only(flatbuffer, qat_model.name)
    return flatbuffer


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
