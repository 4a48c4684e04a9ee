"""Built-in Keras (tf_keras) models for the demo, the benchmarks and the tests.

All are sized for the FE310's 16 KiB RAM: the CNN's largest pair of live int8
activations (28x28x1 in, 28x28x8 out) is 7 KiB; the DS-CNN's on a 49x10 input
(25x5x32 twice) is 7.8 KiB.
"""
from __future__ import annotations

import tf_keras as keras

from tflq.errors import TflqError

NAMES = ("cnn", "mlp", "ds_cnn")


def build(name: str, input_shape, num_classes: int = 10) -> keras.Model:
    """Returns an uncompiled float model: ``"cnn"``, ``"mlp"`` or ``"ds_cnn"``."""
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
    if name == "ds_cnn":
        # MLPerf Tiny's keyword-spotting DS-CNN (Conv 10x4 stride 2, four depthwise 3x3 +
        # pointwise blocks, average pool, Dense) with 32 channels instead of 64, and
        # ReLUs fused instead of batch norms, so that it fits 16 KiB on a 49x10 input.
        channels = 32
        layers = [L.InputLayer(input_shape),
                  L.Conv2D(channels, (10, 4), strides=2, padding="same", activation="relu")]
        for _ in range(4):
            layers += [L.DepthwiseConv2D(3, padding="same", activation="relu"),
                       L.Conv2D(channels, 1, activation="relu")]
        pooled = [-(-int(side) // 2) for side in input_shape[:2]]
        return keras.Sequential(layers + [L.AveragePooling2D(pooled), L.Flatten(),
                                          L.Dense(num_classes)], name="ds_cnn")
    raise TflqError(f"unknown model {name!r}: choose one of {', '.join(NAMES)}")


def compile_for_classification(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Compiles ``model`` (logits out) with Adam and sparse cross-entropy; returns it."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model
