"""The end-to-end recipe behind ``tflq train``, the demo and the benchmarks:
train float -> quantize (calibrated) -> QAT fine-tune -> convert -> evaluate.
"""
from __future__ import annotations

import dataclasses
import time

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tflq.converters.tflite import convert, io_quantization
from tflq import datasets, models
from tflq.qat import quantize_model


@dataclasses.dataclass
class Result:
    float_model: keras.Model
    qat_model: keras.Model
    flatbuffer: bytes
    metrics: dict


def run(dataset: str, model: str | keras.Model = "cnn", scheme="int8", epochs: float = 3,
        qat_epochs: float = 1, batch_size: int = 128, calibration_samples: int = 1000,
        seed: int = 0, verbose="auto") -> Result:
    """Trains a float model (skipped when ``epochs`` is 0 and ``model`` is a model),
    quantizes it with calibration, fine-tunes with QAT, converts and evaluates."""
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = datasets.load(dataset)
    metrics: dict = {"dataset": dataset, "scheme": str(scheme), "test_images": int(len(x_test))}

    if isinstance(model, str):
        metrics["model"] = model
        model = models.build(model, x_train.shape[1:], int(y_train.max()) + 1)
    else:
        metrics["model"] = model.name
    if not model.optimizer:
        models.compile_for_classification(model)
    if epochs:
        logging.info("stage 1/4: training float %s for %s epochs", model.name, epochs)
        metrics["float_seconds_per_step"] = _fit(model, x_train, y_train, epochs, batch_size, verbose)
    metrics["float_accuracy"] = _accuracy(model, x_test, y_test)
    logging.info("float accuracy %.4f", metrics["float_accuracy"])

    logging.info("stage 2/4: quantizing (%s), calibrating on %d images", scheme, calibration_samples)
    qat = quantize_model(model, scheme=scheme, calibration_data=x_train[:calibration_samples])
    models.compile_for_classification(qat, learning_rate=1e-4)
    metrics["calibrated_accuracy"] = _accuracy(qat, x_test, y_test)
    if qat_epochs:
        logging.info("stage 3/4: QAT fine-tuning for %s epochs", qat_epochs)
        metrics["qat_seconds_per_step"] = _fit(qat, x_train, y_train, qat_epochs, batch_size, verbose)
    metrics["qat_accuracy"] = _accuracy(qat, x_test, y_test)
    logging.info("QAT accuracy %.4f", metrics["qat_accuracy"])

    logging.info("stage 4/4: converting to TFLite int8")
    flatbuffer = convert(qat)
    predictions = tflite_predict(flatbuffer, x_test)
    metrics["tflite_accuracy"] = float(np.mean(predictions.argmax(-1) == y_test))
    metrics["qat_tflite_agreement"] = float(np.mean(
        predictions.argmax(-1) == qat.predict(x_test, batch_size=1000, verbose=0).argmax(-1)))
    metrics["flatbuffer_bytes"] = len(flatbuffer)
    logging.info("TFLite int8 accuracy %.4f, %d bytes", metrics["tflite_accuracy"], len(flatbuffer))
    return Result(model, qat, flatbuffer, metrics)


def tflite_predict(flatbuffer: bytes, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """int8 outputs of the flatbuffer on float inputs ``x``, with tf.lite's
    reference kernels (the default XNNPACK path rounds differently from TFLM)."""
    in_q, _ = io_quantization(flatbuffer)
    interpreter = tf.lite.Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for start in range(0, len(x), batch):
        chunk = in_q.quantize(x[start:start + batch])
        interpreter.resize_tensor_input(inp["index"], chunk.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(outputs)


class _StepTimes(keras.callbacks.Callback):
    """Wall time of each training step (batch)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _fit(model, x, y, epochs: float, batch_size: int, verbose) -> float:
    """Fits for ``epochs`` (fractions allowed); returns the median seconds per step,
    leaving out the first 10 steps (graph tracing)."""
    whole, part = int(epochs), epochs - int(epochs)
    steps = _StepTimes()
    if whole:
        model.fit(x, y, epochs=whole, batch_size=batch_size, verbose=verbose, callbacks=[steps])
    if part:
        n = max(int(len(x) * part), batch_size)
        model.fit(x[:n], y[:n], epochs=1, batch_size=batch_size, verbose=verbose, callbacks=[steps])
    return float(np.median(steps.times[10:] or steps.times))


def _accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, batch_size=1000, verbose=0).argmax(-1) == y))
