"""``tflq convert``: a Keras model file -> int8 TFLite flatbuffer at --output.

A QAT model (saved by tflq) converts as it is; a float model is quantized with
--scheme and calibrated on --calibration_samples images of --dataset first
(post-training quantization: no fit follows, so by default its low-bit layers are
also fitted to those images, ``tflq.post_training``; --nopost_training turns it off).
--data_free quantizes a float model with no data at all (``tflq.data_free``).
"""

from absl import flags, logging
import tf_keras as keras

from tflq.converters.tflite import convert
from tflq import datasets, model_files, outputs
from tflq.cli import flags_common
from tflq.errors import TflqError
from tflq.qat import quantize_model

_OUTPUT = flags.DEFINE_string("output", None, "Where to write the .tflite flatbuffer.")
_POST_TRAINING = flags.DEFINE_bool(
    "post_training", True, "For a float model: fit each low-bit layer to the calibration "
    "images (per-channel scale search, bias correction; tflq.post_training).")
_DATA_FREE = flags.DEFINE_bool(
    "data_free", False, "For a float model: quantize with no data (DFQ: cross-layer "
    "equalization, ranges and bias correction from the BatchNorm statistics; "
    "tflq.data_free). --dataset is then not read.")
_INPUT_RANGE = flags.DEFINE_list(
    "input_range", ["0", "1"], "With --data_free: low,high of the model's inputs "
    "(tflq's datasets give images in 0,1).")
_EQUALIZE = flags.DEFINE_bool(
    "equalize", False, "For a float model: cross-layer equalization before quantizing "
    "(always on with --data_free).")


def load_keras_model(path: str) -> keras.Model:
    """Loads a tf_keras model file (float or tflq QAT), its stored config checked first
    (tflq.model_files); errors name the file."""
    return model_files.load(path, allow_unsafe=flags_common.ALLOW_UNSAFE.value)


def is_qat(model: keras.Model) -> bool:
    return any(type(l).__name__ in ("QuantizeLayer", "QuantizeWrapperV2", "QuantizeWrapper")
               for l in model.layers)


def main():
    for flag in (flags_common.KERAS_MODEL, _OUTPUT):
        if not flag.value:
            raise TflqError(f"--{flag.name} is required")
    outputs.check_free(_OUTPUT.value, flags_common.OVERWRITE.value)
    model = load_keras_model(flags_common.KERAS_MODEL.value)
    if not is_qat(model) and _DATA_FREE.value:
        logging.info("%s is a float model: quantizing with %s, data-free",
                     flags_common.KERAS_MODEL.value, flags_common.SCHEME.value)
        model = quantize_model(model, scheme=flags_common.scheme(), data_free=True,
                               input_range=_input_range())
    elif not is_qat(model):
        logging.info("%s is a float model: quantizing with %s, calibrating on %s",
                     flags_common.KERAS_MODEL.value, flags_common.SCHEME.value, flags_common.DATASET.value)
        (x_train, _), _ = datasets.load(flags_common.DATASET.value)
        model = quantize_model(model, scheme=flags_common.scheme(),
                               calibration_data=x_train[:flags_common.CALIBRATION_SAMPLES.value],
                               post_training=_POST_TRAINING.value, equalize=_EQUALIZE.value)
    flatbuffer = convert(model)
    outputs.write_bytes(_OUTPUT.value, flatbuffer, flags_common.OVERWRITE.value)
    print(f"wrote {_OUTPUT.value} ({len(flatbuffer)} bytes)")


def _input_range() -> tuple:
    try:
        low, high = (float(v) for v in _INPUT_RANGE.value)
    except ValueError:
        raise TflqError(f"--input_range must be two numbers low,high, not "
                        f"{','.join(_INPUT_RANGE.value)!r}") from None
    return low, high
