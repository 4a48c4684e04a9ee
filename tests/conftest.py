"""Shared fixtures: small real models trained once per session on the 8x8 digits."""
import tflq  # noqa: F401  -- sets TF_USE_LEGACY_KERAS before TensorFlow loads

import numpy as np
import pytest
import tf_keras as keras

from tflq import datasets, models


@pytest.fixture(scope="session")
def digits():
    return datasets.load("digits")


def conv_bn_model(input_shape=(8, 8, 1)) -> keras.Model:
    """Conv-BN-ReLU x2 -> Dense: the shape the issue's BN tests ask for."""
    L = keras.layers
    return keras.Sequential([
        L.InputLayer(input_shape),
        L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1"),
        L.BatchNormalization(name="bn1"), L.ReLU(name="relu1"),
        L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2"),
        L.BatchNormalization(name="bn2"), L.ReLU(name="relu2"),
        L.Flatten(), L.Dense(10, name="logits")], name="conv_bn")


@pytest.fixture(scope="session")
def trained_conv_bn(digits):
    """A float Conv-BN-ReLU model trained to ~95% on the digits (a few seconds)."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = models.compile_for_classification(conv_bn_model())
    model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
    return model


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


@pytest.fixture(scope="session")
def firmware_tools():
    """TFLM sources (converters.tflm_sources: TFLQ_TFLM_ROOT, TFLQ_TFLM_ARCHIVE or the
    pinned downloads), the riscv toolchain and QEMU; skips naming what is missing."""
    from tflq.converters import tflm, toolchain
    from tflq.errors import TflqError

    try:
        root = tflm.source_root()
        toolchain.find_toolchain()
        toolchain.find_qemu()
    except TflqError as e:
        pytest.skip(f"firmware test needs TFLM sources, riscv gcc and QEMU: {e}")
    return root


@pytest.fixture(scope="session")
def shared_models():
    """The corpus of real int8 models (TFLM's examples, MLPerf Tiny): $TFLQ_MODELS_DIR, else
    ../shared/models beside the checkout; skips naming both when neither exists."""
    import os
    from pathlib import Path

    folder = Path(os.environ.get("TFLQ_MODELS_DIR")
                  or Path(__file__).resolve().parents[2] / "shared" / "models")
    if not folder.is_dir():
        pytest.skip(f"no model corpus at {folder}: set TFLQ_MODELS_DIR to a folder of .tflite "
                    "files (see ../shared/models/README.md)")
    return folder
