"""Benchmark for the demo CNN on Fashion-MNIST: accuracies, flatbuffer bytes, and
the cost of a QAT training step relative to a float one.

    .venv/bin/python benchmarks/qat_demo.py    # writes docs/benchmarks/qat_demo.md

Step times are medians over each fit's steps, leaving out the first 10 (graph
tracing), at batch size 128 on this machine's CPU. They are wall-clock numbers:
run it on an otherwise idle machine.
"""
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tflq import pipeline  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks", "qat_demo.md")


def main():
    r = pipeline.run("fashion_mnist", "cnn", epochs=3, qat_epochs=1, batch_size=128, verbose=0).metrics
    ratio = r["qat_seconds_per_step"] / r["float_seconds_per_step"]
    table = "\n".join([
        "| float acc | int8 QAT acc | TFLite int8 acc | QAT/TFLite agreement | flatbuffer bytes | float step | QAT step | QAT/float |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['float_accuracy']:.4f} | {r['qat_accuracy']:.4f} | {r['tflite_accuracy']:.4f} | "
        f"{r['qat_tflite_agreement']:.4f} | {r['flatbuffer_bytes']:,} | "
        f"{1e3 * r['float_seconds_per_step']:.1f} ms | {1e3 * r['qat_seconds_per_step']:.1f} ms | {ratio:.2f}x |",
    ])
    text = (f"# Demo CNN on Fashion-MNIST: int8 QAT\n\n"
            f"`.venv/bin/python benchmarks/qat_demo.py` on {os.cpu_count()} cores "
            f"({platform.processor() or platform.machine()}); 3 float epochs, calibration on 1,000 "
            f"training images, 1 QAT epoch; accuracies on all {r['test_images']:,} test images "
            f"(TFLite: tf.lite reference kernels).\n\n{table}\n")
    print(text)
    with open(OUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
