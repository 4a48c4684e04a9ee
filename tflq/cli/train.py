"""``tflq train``: float training, calibrated int8 QAT, conversion; writes --output_dir."""
import json
import os

from absl import flags, logging

from tflq import models, outputs, pipeline
from tflq.cli import flags_common
from tflq.errors import TflqError
from tflq.qat import quantize_scope

_MODEL = flags.DEFINE_enum("model", "cnn", list(models.NAMES), "Built-in model to train.")
_EPOCHS = flags.DEFINE_float("epochs", 3, "Float training epochs (fractions allowed).", lower_bound=0)
_QAT_EPOCHS = flags.DEFINE_float("qat_epochs", 1, "QAT fine-tuning epochs.", lower_bound=0)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1)


def main():
    if not flags_common.OUTPUT_DIR.value:
        raise TflqError("--output_dir is required")
    outputs.check_free(flags_common.OUTPUT_DIR.value, flags_common.OVERWRITE.value)
    model = _MODEL.value
    if flags_common.KERAS_MODEL.value:
        from tflq.cli.convert import load_keras_model
        model = load_keras_model(flags_common.KERAS_MODEL.value)
    result = pipeline.run(flags_common.DATASET.value, model, scheme=flags_common.scheme(),
                          epochs=_EPOCHS.value, qat_epochs=_QAT_EPOCHS.value,
                          batch_size=_BATCH_SIZE.value,
                          calibration_samples=flags_common.CALIBRATION_SAMPLES.value)
    with outputs.atomic_dir(flags_common.OUTPUT_DIR.value, flags_common.OVERWRITE.value) as tmp:
        result.float_model.save(os.path.join(tmp, "float.h5"))
        with quantize_scope():
            result.qat_model.save(os.path.join(tmp, "qat.h5"))
        with open(os.path.join(tmp, "model.tflite"), "wb") as f:
            f.write(result.flatbuffer)
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(result.metrics, f, indent=2)
    m = result.metrics
    logging.info("wrote %s", flags_common.OUTPUT_DIR.value)
    print(f"float accuracy        {m['float_accuracy']:.4f}\n"
          f"QAT accuracy          {m['qat_accuracy']:.4f}\n"
          f"TFLite int8 accuracy  {m['tflite_accuracy']:.4f}  ({m['test_images']} test images)\n"
          f"flatbuffer            {m['flatbuffer_bytes']} bytes  ({flags_common.OUTPUT_DIR.value}/model.tflite)")
