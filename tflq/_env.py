"""Process set-up that must happen before TensorFlow is imported.

tfmot 0.8.1 works only with Keras 2 (``tf_keras``); TensorFlow 2.21 defaults to
Keras 3. tfmot reads ``TF_USE_LEGACY_KERAS`` when it is imported, so tflq sets it
here, first thing, and users never have to.
"""
import contextlib
import os
import sys
import tempfile

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def stderr_to_tempfile():
    """File descriptor 2 (where TensorFlow's and TFLM's C++ code log) goes to a temporary
    file for the block; yields the file. The CLI and the demo keep the screen for tflq."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
