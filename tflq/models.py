"""Built-in Keras (tf_keras) models for the demo, the benchmarks and the tests.

Both are sized for the FE310's 16 KiB RAM: the CNN's largest pair of live int8
activations (28x28x1 in, 28x28x8 out) is 7 KiB.
"""
from __future__ import annotations

import tf_keras as keras

from tflq.errors import TflqError

NAMES = ("cnn", "mlp")


def build(name: str, input_shape, num_classes: int = 10) -> keras.Model:
    """Returns an uncompiled float model: ``"cnn"`` or ``"mlp"``."""
    L = keras.layers
    if name == "cnn":
        # Conv -> BN -> ReLU blocks: BN is folded into the conv by quantize_model.
        layers = [L.InputLayer(input_shape, name="image")]
        for i, filters in enumerate((8, 16), start=1):
            layers += [L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}"),
                       L.BatchNormalization(name=f"bn{i}"), L.ReLU(name=f"relu{i}"),
                       L.MaxPool2D(name=f"pool{i}")]
        layers += [L.Flatten(name="flatten"), L.Dense(num_classes, name="logits")]
        return keras.Sequential(layers, name="cnn")
    if name == "mlp":
        # One hidden layer of 50 units: the size of the seed project's HiFive1 MLP.
        return keras.Sequential([L.InputLayer(input_shape, name="image"), L.Flatten(name="flatten"),
                                 L.Dense(50, activation="relu", name="hidden"),
                                 L.Dense(num_classes, name="logits")], name="mlp")
    raise TflqError(f"unknown model {name!r}: choose one of {', '.join(NAMES)}")


def compile_for_classification(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Compiles ``model`` (logits out) with Adam and sparse cross-entropy; returns it."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model
