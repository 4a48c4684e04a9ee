"""Low-bit schemes on Fashion-MNIST: TFLite int8 accuracy after QAT, weight bytes.

    .venv/bin/python benchmarks/schemes.py --models=mlp,cnn --float_epochs=5 --qat_epochs=3

Results accumulate per model in docs/benchmarks/schemes.json (a run replaces the
rows of the models it ran) and the table docs/benchmarks/schemes.md is written
from it, with each model's epochs.

Models: the seed's MLP (784 -> 50 -> 10; the hidden layer gets the scheme, the
output layer stays int8) and tflq's demo CNN (scheme defaults: first and last
weighted layers int8, the middle conv low-bit). Each scheme starts from the same
trained float model, calibrates on 1,000 training images, fine-tunes with QAT and
converts; accuracy is the TFLite int8 model's (tf.lite reference kernels) on all
10,000 test images. Weight bytes count each layer at its bits (packed), plus
nothing for codebooks (a few bytes per channel; see the packing benchmark).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

import tflq  # noqa: E402
from tflq import datasets, models, pipeline, report  # noqa: E402
from tflq.schemes import Scheme  # noqa: E402

SCHEMES = ("int8", "log3", "log4", "ternary", "binary", "ul2q2", "dorefa2", "fixed4")
OUT = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks", "schemes.md")
RESULTS = OUT.replace(".md", ".json")


def scheme_for(model_name: str, alias: str):
    if alias == "int8" or model_name == "cnn":
        return alias
    return Scheme(weights=alias, first_last_int8=False, overrides={"logits": "int8"})


def run_model(model_name, float_epochs, qat_epochs, data):
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(0)
    float_model = models.compile_for_classification(models.build(model_name, x_train.shape[1:]))
    float_model.fit(x_train, y_train, epochs=float_epochs, batch_size=128, verbose=0)
    float_acc = float(np.mean(float_model.predict(x_test, verbose=0).argmax(-1) == y_test))
    weights = sum(int(np.prod(l.kernel.shape)) for l in float_model.layers if hasattr(l, "kernel"))
    rows = [{"scheme": "float", "accuracy": float_acc, "bytes": 4 * weights}]
    print(model_name, rows[-1], flush=True)
    for alias in SCHEMES:
        keras.utils.set_random_seed(1)
        qat = tflq.quantize_model(float_model, scheme=scheme_for(model_name, alias),
                                  calibration_data=x_train[:1000])
        models.compile_for_classification(qat, learning_rate=1e-4 if alias == "int8" else 1e-3)
        qat.fit(x_train, y_train, epochs=qat_epochs, batch_size=128, verbose=0)
        flatbuffer = tflq.convert(qat)
        acc = float(np.mean(pipeline.tflite_predict(flatbuffer, x_test).argmax(-1) == y_test))
        packed = sum(l.packed_bytes for l in report.layer_weights(qat))
        rows.append({"scheme": alias, "accuracy": acc, "bytes": packed})
        print(model_name, rows[-1], flush=True)
    return {"float_epochs": float_epochs, "qat_epochs": qat_epochs, "rows": rows}


def render(results) -> str:
    lines = ["| model | epochs (float + QAT) | weights | TFLite int8 accuracy | vs float | weight bytes at b bits |",
             "|---|---|---|---|---|---|"]
    for model_name, result in results.items():
        float_acc = result["rows"][0]["accuracy"]
        for row in result["rows"]:
            delta = "" if row["scheme"] == "float" else f"{100 * (row['accuracy'] - float_acc):+.2f} pt"
            lines.append(f"| {model_name} | {result['float_epochs']} + {result['qat_epochs']} | "
                         f"{row['scheme']} | {row['accuracy']:.4f} | {delta} | {row['bytes']:,}"
                         f"{' (float32)' if row['scheme'] == 'float' else ''} |")
    return ("# Low-bit weight schemes on Fashion-MNIST\n\n"
            "`.venv/bin/python benchmarks/schemes.py --models=... --float_epochs=... --qat_epochs=...` "
            "(batch 128, Adam 1e-3; int8 QAT 1e-4), calibration on 1,000 training images; accuracy "
            "of the converted int8 TFLite model (tf.lite reference kernels) on the 10,000 test "
            "images. Float bytes are float32. QAT fine-tuning adds epochs of training on "
            "top of the float model's, which is why int8 and some low-bit rows beat float: "
            "compare the rows with each other as much as with float.\n\n"
            "MLP 784-50-10: the hidden layer gets the scheme, the output layer stays int8. "
            "CNN (tflq's demo): scheme defaults, i.e. the first conv and the last dense stay "
            "int8 and only the middle conv (1,152 of 9,064 weights) is low-bit.\n\n"
            + "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--float_epochs", type=int, default=5)
    parser.add_argument("--qat_epochs", type=int, default=3)
    args = parser.parse_args()
    data = datasets.load("fashion_mnist")
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    for model_name in args.models.split(","):
        results[model_name] = run_model(model_name, args.float_epochs, args.qat_epochs, data)
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1)
        text = render({k: results[k] for k in ("mlp", "cnn") if k in results})
        with open(OUT, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
