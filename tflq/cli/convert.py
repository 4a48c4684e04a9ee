"""``tflq convert``: a Keras model file -> int8 TFLite flatbuffer at --output.

A QAT model (saved by tflq) converts as it is; a float model is quantized with
--scheme and calibrated on --calibration_samples images of --dataset first
(post-training quantization: no fit follows, so by default its low-bit layers are
also fitted to those images, ``tflq.post_training``; --nopost_training turns it off).
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
    if not is_qat(model):
        logging.info("%s is a float model: quantizing with %s, calibrating on %s",
                     flags_common.KERAS_MODEL.value, flags_common.SCHEME.value, flags_common.DATASET.value)
        (x_train, _), _ = datasets.load(flags_common.DATASET.value)
        model = quantize_model(model, scheme=flags_common.SCHEME.value,
                               calibration_data=x_train[:flags_common.CALIBRATION_SAMPLES.value],
                               post_training=_POST_TRAINING.value)
    flatbuffer = convert(model)
    outputs.write_bytes(_OUTPUT.value, flatbuffer, flags_common.OVERWRITE.value)
    print(f"wrote {_OUTPUT.value} ({len(flatbuffer)} bytes)")
