"""tflq: low-bit quantization-aware training for Keras, exact TFLite export, and
TFLite-Micro firmware for the SiFive FE310 (HiFive1, 16 KiB RAM).

    qat = tflq.quantize_model(float_model, scheme="int8", calibration_data=x[:512])
    qat.compile(...); qat.fit(...)
    flatbuffer = tflq.convert(qat)
    tflq.micro.generate_project(flatbuffer, "out/fw")

Names load on first use (PEP 562), so ``import tflq`` is cheap and sets
``TF_USE_LEGACY_KERAS`` before anything imports TensorFlow.
"""
import importlib

from tflq import _env  # noqa: F401  -- must run before TensorFlow is imported
from tflq.errors import TflqError

# name -> (module, attribute); attribute None: the module itself.
_NAMES = {
    "quantize_model": ("tflq.qat", "quantize_model"),
    "quantize_scope": ("tflq.qat", "quantize_scope"),
    "convert": ("tflq.converters.tflite", "convert"),
    "io_quantization": ("tflq.converters.tflite", "io_quantization"),
    "QuantParams": ("tflq.converters.tflite", "QuantParams"),
    "converters": ("tflq.converters", None),
    **{m: (f"tflq.{m}", None) for m in ("calibration", "data_free", "datasets", "demo", "inq",
                                        "layers", "micro", "models", "pipeline", "post_training",
                                        "qat", "quantizers", "report", "schemes")},
}

__all__ = ["TflqError", *_NAMES]
__version__ = "0.1.0"


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'tflq' has no attribute {name!r}")
    module, attribute = _NAMES[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
