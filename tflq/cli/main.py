"""``tflq`` console script: verb first, absl flags after.

    tflq train   --dataset=fashion_mnist --model=cnn --output_dir=out/demo
    tflq convert --keras_model=float.h5 --scheme=int8 --dataset=fashion_mnist --output=m.tflite
"""
import contextlib
import os
import sys

from tflq import _env  # noqa: F401  -- before TensorFlow

from absl import app


@contextlib.contextmanager
def _quiet_stderr():
    """TensorFlow's C++ start-up lines (oneDNN, CUDA probes) go to file descriptor 2 while
    it is imported; they are dropped unless the import itself fails."""
    failed, text = None, ""
    with _env.stderr_to_tempfile() as log:
        try:
            yield
        except BaseException as e:  # noqa: BLE001 -- shown with its log, then raised
            failed = e
            log.seek(0)
            text = log.read().decode(errors="replace")
    if failed is not None:
        sys.stderr.write(text)
        raise failed


with _quiet_stderr():
    import tensorflow  # noqa: E402  -- its start-up noise, once, here
    tensorflow.config.list_physical_devices()  # and its CUDA probe's
    from tflq.cli import convert, demo, micro, report, train  # noqa: E402

from tflq.errors import TflqError  # noqa: E402

VERBS = {"demo": demo.main, "train": train.main, "convert": convert.main,
         "micro": micro.main, "report": report.main}


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
        # Bad input: one line (the message names what is wrong), no usage text, exit 1.
        print(f"tflq {argv[1]}: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 -- a defect: still no traceback for the user
        if os.environ.get("TFLQ_DEBUG"):
            raise
        message = " ".join(str(e).split())[:400]
        print(f"tflq {argv[1]}: internal error, {type(e).__name__}: {message} (a tflq defect: "
              "rerun with TFLQ_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        sys.exit(2)


def run():
    import warnings
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
    app.run(main)


if __name__ == "__main__":
    run()
