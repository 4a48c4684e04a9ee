"""Bad input gets one clear error that names what is wrong, and nothing is written."""
import gzip
import os

import numpy as np
import pytest
import tf_keras as keras

import tflq
from tflq import datasets
from tflq.errors import TflqError

L = keras.layers


def test_keras3_model_is_refused_with_how_to_fix():
    import keras as keras3  # Keras 3, TensorFlow 2.21's default

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TflqError, match=r"Keras 3 model.*import tf_keras as keras"):
        tflq.quantize_model(model)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(TflqError, match=r"'net' is a subclassed model \(Net\).*Sequential"):
        tflq.quantize_model(model)


@pytest.mark.parametrize("layer, cls", [
    (L.LSTM(4, name="rnn"), "LSTM"),
    (L.Lambda(lambda t: t * 2, name="double"), "Lambda"),
])
def test_unsupported_layer_is_named(layer, cls):
    model = keras.Sequential([L.InputLayer((3, 4)), layer, L.Flatten(), L.Dense(2)])
    name = layer.name
    with pytest.raises(TflqError, match=rf"layer '{name}' \({cls}\) cannot be quantized"):
        tflq.quantize_model(model)


def test_batch_norm_that_cannot_be_folded_is_named():
    model = keras.Sequential([L.InputLayer((8,)), L.Dense(4), L.ReLU(),
                              L.BatchNormalization(name="late_bn"), L.Dense(2)])
    with pytest.raises(TflqError, match=r"'late_bn' \(BatchNormalization\).*directly after"):
        tflq.quantize_model(model)


def test_unknown_scheme_lists_the_known_ones():
    model = keras.Sequential([L.InputLayer((4,)), L.Dense(2)])
    with pytest.raises(TflqError, match=r"unknown scheme 'int3'.*int8"):
        tflq.quantize_model(model, scheme="int3")


def test_empty_calibration_data():
    model = keras.Sequential([L.InputLayer((4,)), L.Dense(2)])
    with pytest.raises(TflqError, match="calibration_data is empty"):
        tflq.quantize_model(model, calibration_data=np.zeros((0, 4), np.float32))


def test_missing_dataset_names_the_debian_package(tmp_path):
    with pytest.raises(TflqError, match=r"apt-get install dataset-fashion-mnist"):
        datasets.load("fashion_mnist", data_dir=str(tmp_path))


def test_truncated_idx_file_is_named(tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\0" * 100)
    with pytest.raises(TflqError, match=r"train-images-idx3-ubyte.gz: truncated"):
        datasets.load("fashion_mnist", data_dir=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(TflqError, match="unknown dataset 'cifar'.*fashion_mnist"):
        datasets.load("cifar")


def test_float_model_to_convert_is_refused_with_what_to_do():
    import tf_keras as keras
    model = keras.Sequential([keras.layers.InputLayer((4,)), keras.layers.Dense(2, name="d")])
    with pytest.raises(TflqError, match="is a float model: quantize it with tflq.quantize_model"):
        tflq.convert(model)


def test_nan_weights_and_bad_calibration_data_are_refused_by_name():
    import numpy as np
    import tf_keras as keras
    model = keras.Sequential([keras.layers.InputLayer((4,)), keras.layers.Dense(2, name="d")])
    with pytest.raises(TflqError, match="holds NaN or Inf"):
        tflq.quantize_model(model, calibration_data=np.full((8, 4), np.nan, np.float32))
    with pytest.raises(TflqError, match=r"samples have shape \(5,\); model .* takes \(4,\)"):
        tflq.quantize_model(model, calibration_data=np.zeros((8, 5), np.float32))
    qat = tflq.quantize_model(model, calibration_data=np.zeros((8, 4), np.float32))
    kernel = [w for w in qat.weights if w.name.endswith("kernel:0")][0]
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    with pytest.raises(TflqError, match=r"weight '.*kernel:0' holds NaN or Inf"):
        tflq.convert(qat)
