"""Low-bit schemes on Fashion-MNIST: TFLite int8 accuracy after QAT, weight bytes.

    .venv/bin/python benchmarks/schemes.py          # writes docs/benchmarks/schemes.md
    .venv/bin/python benchmarks/schemes.py --quick  # 1 float epoch, 1 QAT epoch

Models: the seed's MLP (784 -> 50 -> 10; the hidden layer gets the scheme, the
output layer stays int8) and tflq's demo CNN (scheme defaults: first and last
weighted layers int8, the middle conv low-bit). Each scheme starts from the same
trained float model, calibrates on 1,000 training images, fine-tunes with QAT and
converts; accuracy is the TFLite int8 model's (tf.lite reference kernels) on all
10,000 test images. Weight bytes count each layer at its bits (packed), plus
nothing for codebooks (a few bytes per channel; see the packing benchmark).
"""
import argparse
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


def scheme_for(model_name: str, alias: str):
    if alias == "int8" or model_name == "cnn":
        return alias
    return Scheme(weights=alias, first_last_int8=False, overrides={"logits": "int8"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    float_epochs, qat_epochs = (1, 1) if args.quick else (5, 3)
    (x_train, y_train), (x_test, y_test) = datasets.load("fashion_mnist")
    rows = []
    for model_name in ("mlp", "cnn"):
        keras.utils.set_random_seed(0)
        float_model = models.compile_for_classification(models.build(model_name, x_train.shape[1:]))
        float_model.fit(x_train, y_train, epochs=float_epochs, batch_size=128, verbose=0)
        float_acc = float(np.mean(float_model.predict(x_test, verbose=0).argmax(-1) == y_test))
        weights = sum(l.count_params() - l.bias.shape[0] for l in float_model.layers
                      if hasattr(l, "kernel"))
        rows.append((model_name, "float", float_acc, None, 4 * weights))
        print(rows[-1], flush=True)
        for alias in SCHEMES:
            keras.utils.set_random_seed(1)
            qat = tflq.quantize_model(float_model, scheme=scheme_for(model_name, alias),
                                      calibration_data=x_train[:1000])
            models.compile_for_classification(qat, learning_rate=1e-4 if alias == "int8" else 1e-3)
            qat.fit(x_train, y_train, epochs=qat_epochs, batch_size=128, verbose=0)
            flatbuffer = tflq.convert(qat)
            acc = float(np.mean(pipeline.tflite_predict(flatbuffer, x_test).argmax(-1) == y_test))
            packed = sum(l.packed_bytes for l in report.layer_weights(qat))
            rows.append((model_name, alias, acc, acc - float_acc, packed))
            print(rows[-1], flush=True)

    lines = ["| model | weights | TFLite int8 accuracy | vs float | weight bytes at b bits |",
             "|---|---|---|---|---|"]
    for model_name, alias, acc, delta, size in rows:
        lines.append(f"| {model_name} | {alias} | {acc:.4f} | "
                     f"{'' if delta is None else f'{100 * delta:+.2f} pt'} | {size:,}"
                     f"{' (float32)' if alias == 'float' else ''} |")
    text = (f"# Low-bit weight schemes on Fashion-MNIST\n\n`.venv/bin/python benchmarks/schemes.py"
            f"{' --quick' if args.quick else ''}`: {float_epochs} float epochs, {qat_epochs} QAT "
            "epochs (batch 128, Adam 1e-3; int8 1e-4), calibration on 1,000 training images; "
            "accuracy of the converted int8 TFLite model on the 10,000 test images.\n\n"
            "MLP 784-50-10: the hidden layer gets the scheme, the output layer stays int8. "
            "CNN (tflq's demo): scheme defaults, i.e. first conv and last dense stay int8 and "
            "only the middle conv is low-bit.\n\n" + "\n".join(lines) + "\n")
    print(text)
    with open(OUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
