"""``tflq`` console script: verb first, absl flags after.

    tflq train   --dataset=fashion_mnist --model=cnn --output_dir=out/demo
    tflq convert --keras_model=float.h5 --scheme=int8 --dataset=fashion_mnist --output=m.tflite
"""
from tflq import _env  # noqa: F401  -- before TensorFlow

from absl import app

from tflq.cli import convert, micro, report, train
from tflq.errors import TflqError

VERBS = {"train": train.main, "convert": convert.main, "micro": micro.main,
         "report": report.main}


def main(argv):
    # TensorFlow logs its own INFO lines (SavedModel assets, converter notes) through
    # absl; tflq's one line per stage is what a user wants to read.
    import logging
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if len(argv) < 2 or argv[1] not in VERBS:
        raise app.UsageError(
            f"give a verb first: tflq {{{'|'.join(VERBS)}}} [--flags]; "
            f"got {argv[1:2] or 'none'}. `tflq --helpfull` lists the flags.")
    if len(argv) > 2:
        raise app.UsageError(f"unexpected arguments {argv[2:]}: flags are written --name=value")
    try:
        VERBS[argv[1]]()
    except TflqError as e:
        raise app.UsageError(f"tflq {argv[1]}: {e}") from None


def run():
    import warnings
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
    app.run(main)


if __name__ == "__main__":
    run()
