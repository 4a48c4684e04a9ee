"""``tflq report``: weight histograms and a layer table for a saved QAT model."""
from absl import flags

from tflq import report
from tflq.cli import flags_common
from tflq.errors import TflqError


def main():
    from tflq.cli.convert import load_keras_model, is_qat

    for flag in (flags_common.KERAS_MODEL, flags_common.OUTPUT_DIR):
        if not flag.value:
            raise TflqError(f"--{flag.name} is required")
    model = load_keras_model(flags_common.KERAS_MODEL.value)
    if not is_qat(model):
        from tflq.errors import TflqError
        raise TflqError(f"--keras_model {flags_common.KERAS_MODEL.value} is a float model: "
                        "report on a QAT model (tflq train writes qat.h5)")
    layers = report.write(model, flags_common.OUTPUT_DIR.value, flags_common.OVERWRITE.value)
    print(f"wrote {flags_common.OUTPUT_DIR.value}/report.md and {len(layers)} histograms")
