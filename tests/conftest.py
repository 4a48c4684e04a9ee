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
