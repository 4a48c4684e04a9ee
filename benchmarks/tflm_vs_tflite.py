"""Where TFLM's host interpreter and tf.lite's reference kernels disagree, and why.

Trains the tests' Conv-BN-ReLU digits model (int8 QAT, one epoch), then cuts the
flatbuffer after every operator (schema object API) and compares that tensor on
both interpreters over all 1,797 digits; for each FULLY_CONNECTED it recomputes
the output from the (identical) input with both requantization roundings.

    .venv/bin/python benchmarks/tflm_vs_tflite.py   # prints the table in docs/tflm_vs_tflite.md
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import tflq  # noqa: E402  -- before TensorFlow
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

from conftest import conv_bn_model  # noqa: E402
from tflq.converters import flatbuffer as fb, requantize, tflm_host  # noqa: E402
from tflq import datasets, models, pipeline  # noqa: E402


def main():
    (x_train, y_train), (x_test, _) = datasets.load("digits")
    keras.utils.set_random_seed(0)
    float_model = models.compile_for_classification(conv_bn_model())
    float_model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
    qat = tflq.quantize_model(float_model, calibration_data=x_train)
    models.compile_for_classification(qat, learning_rate=1e-4)
    qat.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    flatbuffer = tflq.convert(qat)

    x = np.concatenate([x_train, x_test])
    x_q = tflq.io_quantization(flatbuffer)[0].quantize(x)
    model = fb.load(flatbuffer)
    print(f"| op | output tensor | inputs (of {len(x)}) differing | elements differing | max diff |")
    print("|---|---|---|---|---|")
    for op in model.subgraphs[0].operators:
        name = fb.op_name(model, op)
        cut = fb.cut_at(flatbuffer, op.outputs[0])
        tflm = tflm_host.predict(cut, x_q).astype(np.int64).reshape(len(x), -1)
        ref = pipeline.tflite_predict(cut, x).astype(np.int64).reshape(len(x), -1)
        diff = np.abs(tflm - ref)
        print(f"| {name} | {op.outputs[0]} | {int((diff.max(1) > 0).sum())} | "
              f"{int((diff > 0).sum())} of {diff.size} | {diff.max()} |")
        if name == "FULLY_CONNECTED":
            fc_input = tflm_host.predict(fb.cut_at(flatbuffer, op.inputs[0]), x_q)
            for rounding in (requantize.double_rounding, requantize.single_rounding):
                out = requantize.fully_connected(model, op, fc_input, rounding)
                print(f"|   {rounding.__name__} (numpy) | | equals TFLM on {int(np.all(out == tflm, 1).sum())}, "
                      f"tf.lite REF on {int(np.all(out == ref, 1).sum())} inputs | | |")


if __name__ == "__main__":
    main()
