"""tflq: low-bit quantization-aware training for Keras, exact TFLite export, and
TFLite-Micro firmware for the SiFive FE310 (HiFive1, 16 KiB RAM).

    qat = tflq.quantize_model(float_model, scheme="int8", calibration_data=x[:512])
    qat.compile(...); qat.fit(...)
    flatbuffer = tflq.convert(qat)
"""
from tflq import _env  # noqa: F401  -- must run before TensorFlow is imported

from tflq.errors import TflqError
from tflq.qat import quantize_model, quantize_scope
from converters.tflite import convert, io_quantization, QuantParams

__all__ = ["TflqError", "quantize_model", "quantize_scope", "convert", "io_quantization",
           "QuantParams"]
__version__ = "0.1.0"
