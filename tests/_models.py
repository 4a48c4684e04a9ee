"""Tiny int8 models built with plain TF for the firmware tests (no training, no tflq.convert).

Random-init weights are enough: the tests compare the firmware with the TFLM host
interpreter bit for bit, and that holds for any weights.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

L = keras.layers


def mlp(inputs=64, hidden=32, classes=10):
    return keras.Sequential([L.InputLayer((inputs,)), L.Dense(hidden, activation="relu"),
                             L.Dense(classes)], name="mlp")


def small_cnn(side=12, filters=4, classes=10):
    return keras.Sequential([L.InputLayer((side, side, 1)),
                             L.Conv2D(filters, 3, activation="relu"), L.MaxPool2D(),
                             L.Flatten(), L.Dense(classes)], name="small_cnn")


def fashion_cnn(classes=10):
    """A Fashion-MNIST-shaped CNN (28x28x1) small enough for 16 KiB of RAM."""
    return keras.Sequential([L.InputLayer((28, 28, 1)),
                             L.Conv2D(8, 3, padding="same", activation="relu"), L.MaxPool2D(),
                             L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPool2D(),
                             L.Flatten(), L.Dense(classes)], name="fashion_cnn")


def dw_softmax(side=12, classes=10):
    """Depthwise conv, average pooling and a softmax: other kernels, other OpData."""
    return keras.Sequential([L.InputLayer((side, side, 2)),
                             L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu"),
                             L.AveragePooling2D(), L.Flatten(), L.Dense(classes),
                             L.Softmax()], name="dw_softmax")


def dw_large(side=10, channels=8, classes=10):
    """A 7x7 depthwise conv (49 taps, 16 channels): big enough that packing its weights
    saves bytes (tests/test_firmware_packed.py)."""
    return keras.Sequential([L.InputLayer((side, side, channels)),
                             L.DepthwiseConv2D(7, depth_multiplier=2, padding="same",
                                               activation="relu"),
                             L.GlobalAveragePooling2D(), L.Dense(classes)], name="dw_large")


def residual(side=8, channels=4, classes=10):
    """A skip connection (ADD), global average pooling (MEAN) and a sigmoid (LOGISTIC)."""
    x = inputs = L.Input((side, side, channels))
    y = L.Conv2D(channels, 3, padding="same")(x)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(classes, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="residual")


def wide_conv(side=12, channels=32, classes=10):
    """A 3x3 conv 32 -> 32 on 12x12: its 9 KiB of int8 weights do not fit beside its
    activations in 16 KiB of RAM, while blocks of a few channels' rows do."""
    return keras.Sequential([L.InputLayer((side, side, channels)),
                             L.Conv2D(channels, 3, padding="same", activation="relu"),
                             # AVERAGE_POOL_2D, not GlobalAveragePooling2D's MEAN: TFLM's
                             # MEAN reads its axis tensor from flash for every input value
                             # (130 KB per inference here), which would hide the conv's.
                             L.AveragePooling2D(side), L.Flatten(), L.Dense(classes)],
                            name="wide_conv")


def wide_cnn(side=48, filters=16, classes=10):
    """Too big for the FE310: one 48x48x16 int8 activation alone is 36 KiB."""
    return keras.Sequential([L.InputLayer((side, side, 1)),
                             L.Conv2D(filters, 3, padding="same", activation="relu"),
                             L.GlobalAveragePooling2D(), L.Dense(classes)], name="wide_cnn")


def autoencoder(inputs=128, hidden=64, bottleneck=8):
    """MLPerf Tiny's anomaly-detection shape, ten Dense layers, scaled from 640-128 to
    128-64: TFLM's FULLY_CONNECTED keeps 8 B of multiplier and shift per output
    channel in the arena, 13 KiB for the full size, which leaves no room in 16 KiB."""
    widths = [hidden] * 4 + [bottleneck] + [hidden] * 4
    layers = [L.InputLayer((inputs,))] + [L.Dense(w, activation="relu") for w in widths]
    return keras.Sequential(layers + [L.Dense(inputs)], name="autoencoder")


def to_int8_tflite(model, seed=0, samples=32) -> bytes:
    """Full-integer flatbuffer with int8 input and output, calibrated on random data."""
    rng = np.random.default_rng(seed)
    shape = (samples, *model.input_shape[1:])
    data = rng.uniform(-1, 1, shape).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in data)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def build(name: str, seed=0) -> bytes:
    keras.utils.set_random_seed(seed)
    return to_int8_tflite(BUILDERS[name](), seed)


BUILDERS = {"mlp": mlp, "small_cnn": small_cnn, "fashion_cnn": fashion_cnn,
            "dw_softmax": dw_softmax, "dw_large": dw_large, "residual": residual,
            "wide_conv": wide_conv, "wide_cnn": wide_cnn, "autoencoder": autoencoder}


def random_inputs(flatbuffer: bytes, count: int, seed=1) -> np.ndarray:
    """``count`` int8 inputs spanning the whole int8 range, shaped like the model input."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    shape = interpreter.get_input_details()[0]["shape"][1:]
    return np.random.default_rng(seed).integers(-128, 128, (count, *shape), dtype=np.int8)



def with_codebook(flatbuffer: bytes, levels, seed=0) -> bytes:
    from tflq.converters.packing import with_weight_levels
    return with_weight_levels(flatbuffer, levels, seed)
