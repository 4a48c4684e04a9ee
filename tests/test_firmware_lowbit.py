"""A tflq QAT model with low-bit weights, end to end: QAT -> int8 TFLite (levels exact)
-> FE310 firmware in QEMU, bit-exact with TFLM's host interpreter and within one
step of tf.lite's reference kernels. Needs TFLM sources ($TFLQ_TFLM_ROOT)."""
import os

import numpy as np
import pytest

import tflq
from conftest import conv_bn_model
from converters import micro_project, tflm, tflm_host
from converters.tflite import low_bit_layers
from test_firmware_qemu import build_and_run, outputs
from tflq import models, pipeline
from tflq.schemes import Scheme

pytestmark = pytest.mark.skipif(
    not os.environ.get(tflm.ROOT_ENV),
    reason=f"{tflm.ROOT_ENV} is not set: no TFLM sources to build firmware from")


@pytest.mark.parametrize("scheme", ["log3", "ternary"])
def test_low_bit_firmware_is_bit_exact(scheme, trained_conv_bn, digits, tmp_path):
    (x_train, y_train), (x_test, _) = digits
    qat = tflq.quantize_model(trained_conv_bn, calibration_data=x_train,
                              scheme=Scheme(weights=scheme, first_last_int8=False))
    models.compile_for_classification(qat, learning_rate=1e-3)
    qat.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    flatbuffer = tflq.convert(qat)
    assert len(low_bit_layers(qat, flatbuffer)) == 3  # conv1, conv2, logits all low-bit

    x = x_test[:32]
    inputs = tflq.io_quantization(flatbuffer)[0].quantize(x)
    project = micro_project.generate_project(flatbuffer, tmp_path / scheme, test_inputs=inputs)
    run = build_and_run(project)
    assert run.exit_code == 0, run.uart_text[-2000:]
    device = np.stack([outputs(run.uart_text)[k] for k in range(len(x))])
    host = tflm_host.predict(flatbuffer, inputs).astype(np.int64)
    assert np.array_equal(device, host), tflm.commits_note(tflm.source_root())
    reference = pipeline.tflite_predict(flatbuffer, x).astype(np.int64)
    assert np.abs(device - reference).max() <= 1
