"""Post-training quantization (calibration data, no fit) and data-free quantization:
TFLite int8 accuracy on the full Fashion-MNIST test set, with the Dense layers' low-bit
weights per tensor (as before converters/per_channel_dense.py) and per channel (now the
default), calibrated only, with ``post_training=True`` (scale search, rounding
optimisation and bias correction), with cross-layer equalization, and data-free (DFQ).

The models: the seed's MLP (784-50-10, or 64 projection profiles -> 50 -> 10), every
layer low-bit, and the demo CNN with the default scheme (first and last layers int8),
trained in float for --epochs and then only calibrated (1,000 training images): the
seed project's "without retraining". Accuracy is tf.lite's reference
kernels on the int8 inputs the device would see. The targets are issue 14's.

    .venv/bin/python benchmarks/post_training.py

Writes docs/benchmarks/post_training.{json,md}.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import tflq  # noqa: E402  -- before TensorFlow
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

from projection_experiment import build_mlp, device_inputs, load, tflite_int8  # noqa: E402
from tflq import models, quantizers  # noqa: E402
from tflq.layers import profile_matrix  # noqa: E402
from tflq.schemes import Scheme  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "post_training.md"
BINS = 16
# Issue 14's post-training targets, points below float.
TARGETS = {("raw", "log3"): 2, ("raw", "log4"): 1, ("raw", "fixed4"): 1, ("raw", "ternary"): 4,
           ("profiles", "log3"): 4}
SCHEMES = ("log3", "log4", "fixed4", "ternary")


def per_tensor(alias: str):
    q = quantizers.get(alias)
    return type(q).from_config({**q.get_config(), "per_channel": False})


def ds_cnn(input_shape) -> keras.Model:
    """The DS-CNN shape of keyword spotting (conv, then depthwise-separable blocks, global
    pooling), on 28x28 images instead of 49x10 spectrograms: BN after every conv."""
    L = keras.layers
    layers = [L.InputLayer(input_shape), L.Conv2D(16, 3, strides=2, padding="same",
                                                  use_bias=False, name="conv"),
              L.BatchNormalization(), L.ReLU()]
    for i in range(2):
        layers += [L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}"),
                   L.BatchNormalization(), L.ReLU(),
                   L.Conv2D(16, 1, use_bias=False, name=f"pw{i}"), L.BatchNormalization(),
                   L.ReLU()]
    layers += [L.GlobalAveragePooling2D(), L.Dense(10, name="logits")]
    return keras.Sequential(layers, name="ds_cnn")


def quantize(model, scheme, method: str, calibration):
    """``method``: calibrated, post_training, post_training + equalize, or data-free."""
    if method == "data-free":
        return tflq.quantize_model(model, scheme, data_free=True, input_range=(0.0, 1.0))
    return tflq.quantize_model(model, scheme, calibration_data=calibration,
                               post_training=method != "calibrated",
                               equalize=method.endswith("equalize"))


def target(kind: str, alias: str, method: str):
    """Issue 14's target for a row: (reference row, points below it), or None."""
    if method == "data-free" and kind == "cnn":
        return {"int8": ("int8", 1), "log4": ("float", 3)}.get(alias)
    if method.startswith("post_training"):
        if kind == "cnn" and alias in ("log3", "ternary"):
            return ("float", 1.5)
        if (kind, alias) in TARGETS:
            return ("float", TARGETS[(kind, alias)])
    return None


def run_cnn(data, epochs: int, kind: str = "cnn") -> list:
    """The demo CNN (tflq.models "cnn") or the DS-CNN with the default scheme: first and
    last layers int8, the rest low-bit."""
    (x_train, y_train, u_train), (x_test, y_test, u_test) = data
    keras.utils.set_random_seed(0)
    model = models.compile_for_classification(
        models.build("cnn", x_train.shape[1:]) if kind == "cnn" else ds_cnn(x_train.shape[1:]))
    model.fit(x_train, y_train, epochs=epochs, batch_size=128, verbose=0)
    float_acc = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))
    rows = [{"input": kind, "weights": "float", "dense": "", "method": "", "accuracy": float_acc}]
    variants = [("int8", "calibrated"), ("int8", "data-free")]
    for alias in ("log4", "log3", "ternary"):
        variants += [(alias, m) for m in ("calibrated", "post_training",
                                          "post_training + equalize", "data-free")]
    for alias, method in variants:
        keras.utils.set_random_seed(1)
        qat = quantize(model, alias, method, x_train[:1000])
        flatbuffer = tflq.convert(qat)
        inputs = device_inputs(flatbuffer, "raw", u_test, BINS)
        accuracy = float(np.mean(tflite_int8(flatbuffer, inputs).argmax(-1) == y_test))
        rows.append({"input": kind, "weights": alias, "dense": "first and last int8",
                     "method": method, "accuracy": accuracy,
                     "target": target(kind, alias, method)})
        print(rows[-1], flush=True)
    return rows


def run(kind: str, data, epochs: int) -> list:
    if kind in ("cnn", "ds_cnn"):
        return run_cnn(data, epochs, kind)
    (x_train, y_train, u_train), (x_test, y_test, u_test) = data
    if kind == "profiles":
        matrix = profile_matrix(28, 28, BINS)
        f_train = (u_train.reshape(len(u_train), -1) / np.float32(255)) @ matrix
        f_test = (u_test.reshape(len(u_test), -1) / np.float32(255)) @ matrix
    else:
        f_train, f_test = x_train, x_test
    keras.utils.set_random_seed(0)
    model = models.compile_for_classification(build_mlp(f_train.shape[1:]))
    model.fit(f_train, y_train, epochs=epochs, batch_size=128, verbose=0)
    float_acc = float(np.mean(model.predict(f_test, verbose=0).argmax(-1) == y_test))
    rows = [{"input": kind, "weights": "float", "dense": "", "method": "", "accuracy": float_acc}]
    calibration = f_train[:1000]
    variants = [("int8", "per tensor (tfmot)", "int8", "calibrated")]
    for alias in SCHEMES:
        per_channel = Scheme(weights=alias, first_last_int8=False)
        variants += [(alias, "per tensor", Scheme(weights=per_tensor(alias), first_last_int8=False),
                      "calibrated")]
        variants += [(alias, "per channel", per_channel, m) for m in (
            "calibrated", "post_training", "post_training + equalize")]
    for alias, dense, scheme, method in variants:
        keras.utils.set_random_seed(1)
        qat = quantize(model, scheme, method, calibration)
        flatbuffer = tflq.convert(qat)
        inputs = device_inputs(flatbuffer, kind, u_test, BINS)
        accuracy = float(np.mean(tflite_int8(flatbuffer, inputs).argmax(-1) == y_test))
        rows.append({"input": kind, "weights": alias, "dense": dense, "method": method,
                     "accuracy": accuracy, "target": target(kind, alias, method)})
        print(rows[-1], flush=True)
    return rows


def render(results: dict) -> str:
    lines = ["# Post-training and data-free quantization", "",
             "Written by `.venv/bin/python benchmarks/post_training.py` "
             f"({results['seconds']:.0f} s). Fashion-MNIST. Models: the seed's MLP 784-50-10 "
             "on raw pixels (`raw`) or on 64 projection profiles (`profiles`), every layer "
             "low-bit; the demo CNN (`cnn`) and a DS-CNN-shaped model (`ds_cnn`: conv, two "
             "depthwise-separable blocks, global pooling, BN after every conv), both with "
             f"first and last layers int8. Each is trained in float for {results['epochs']} "
             "epochs and then quantized without any fit. TFLite int8 accuracy on the 10,000 "
             "test images (tf.lite reference kernels, the device's int8 inputs).", "",
             "Methods:", "",
             "- `calibrated`: `quantize_model(..., calibration_data=1,000 training images)`;",
             "- `post_training`: the same with `post_training=True`: per-channel scale search "
             "and rounding optimisation on each layer's output error against the float model, "
             "and bias correction (`tflq.post_training`);",
             "- `+ equalize`: cross-layer equalization first (`equalize=True`);",
             "- `data-free`: `quantize_model(..., data_free=True, input_range=(0, 1))`, no "
             "data at all: equalization, then ranges and bias correction from the BatchNorm "
             "statistics (`tflq.data_free`).", "",
             "Targets: issue 14's, in points below the float row (or, for data-free int8, "
             "the calibrated int8 row). The issue sets none for the DS-CNN.", "",
             "| model | weights | Dense weights | method | accuracy | vs float | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    misses = []
    for rows in results["rows"].values():
        by = {(r["weights"], r["method"]): r["accuracy"] for r in rows}
        float_acc = rows[0]["accuracy"]
        for r in rows:
            delta = 100 * (r["accuracy"] - float_acc)
            goal, met = r.get("target"), ""
            if goal:
                reference = by[("int8", "calibrated")] if goal[0] == "int8" else float_acc
                met = "yes" if 100 * (r["accuracy"] - reference) >= -goal[1] else "no"
                if met == "no":
                    misses.append(f"{r['input']} {r['weights']} {r['method']}")
            goal_text = "" if not goal else (f">= {'calibrated int8' if goal[0] == 'int8' else 'float'}"
                                             f" - {goal[1]}")
            lines.append(f"| {r['input']} | {r['weights']} | {r['dense']} | {r['method']} | "
                         f"{100 * r['accuracy']:.2f} | {delta:+.2f} | {goal_text} | {met} |")
    lines += ["", "Misses: " + ("; ".join(misses) if misses else "none") + ".", "",
              "Notes. Equalization is opt-in because it does not always pay: it moves "
              "range between layers that are both per channel, which helps neither, and "
              "on the demo CNN's ternary layer it costs accuracy. The DS-CNN's low-bit "
              "rows stay far below float: its depthwise kernels are per tensor (as "
              "tfmot's) and `post_training` fits only Conv2D and Dense layers, so nothing "
              "but equalization helps the 3x3 depthwise layers, which have 9 weights "
              "per channel."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--inputs", default="raw,profiles,cnn,ds_cnn")
    args = parser.parse_args()
    start = time.time()
    data = load("fashion_mnist")
    results = {"epochs": args.epochs,
               "rows": {kind: run(kind, data, args.epochs) for kind in args.inputs.split(",")}}
    results["seconds"] = time.time() - start
    OUT.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    OUT.write_text(render(results))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
