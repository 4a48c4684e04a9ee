"""A tflq QAT model with low-bit weights, end to end: QAT -> int8 TFLite (levels exact)
-> FE310 firmware in QEMU, bit-exact with TFLM's host interpreter and within one
step of tf.lite's reference kernels. Needs TFLM sources, riscv gcc and QEMU."""
import numpy as np
import pytest

import tflq
from conftest import conv_bn_model
from tflq.converters import firmware_run, micro_project, tflm_host
from tflq.converters.tflite import low_bit_layers
from test_firmware_qemu import build_and_run
from tflq import models, pipeline
from tflq.schemes import Scheme

pytestmark = [pytest.mark.firmware, pytest.mark.usefixtures("firmware_tools")]


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
    assert run.exit_code == 0, run.tail()
    firmware_run.check_bit_exact(run, inputs)  # the packed model, tflq kernels, on the host
    host = tflm_host.predict(flatbuffer, inputs)  # the int8 model, TFLM's reference kernels
    assert np.array_equal(run.outputs, host)
    reference = pipeline.tflite_predict(flatbuffer, x).astype(np.int64).reshape(len(x), -1)
    assert np.abs(run.outputs - reference).max() <= 1


@pytest.mark.parametrize("scheme", ["binary_net", Scheme(weights="ternary", activations="pact2"),
                                    "fixed_net4"], ids=["w1a1", "w2a2", "w4a4"])
def test_low_bit_activation_firmware_is_bit_exact(scheme, trained_conv_bn, digits, tmp_path):
    """W1A1 / W2A2 / W4A4 nets on the device: the firmware equals the host reference on
    32 inputs, and each low-bit activation tensor of the device's model holds only its
    2^k codes on the host reference."""
    from tflq.converters import flatbuffer as fb
    from tflq.converters.tflite import low_bit_activations

    (x_train, y_train), (x_test, _) = digits
    qat = tflq.quantize_model(trained_conv_bn, scheme, calibration_data=x_train)
    models.compile_for_classification(qat, learning_rate=1e-3)
    qat.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    flatbuffer = tflq.convert(qat)
    found = low_bit_activations(qat, flatbuffer)
    assert [a.layer for a in found] == ["conv1", "conv2"] and all(a.ok for a in found)

    inputs = tflq.io_quantization(flatbuffer)[0].quantize(x_test[:32])
    name = scheme if isinstance(scheme, str) else "w2a2"
    # Weights stay in flash: the arena comparison below is about the activations.
    project = micro_project.generate_project(flatbuffer, tmp_path / name, test_inputs=inputs,
                                             weights_in_ram=False)
    # conv2 reads conv1's low-bit codes: the bit-serial kernel where
    # it is the faster one (W1A1, W2A2), the bit-plane kernel for W4A4 (16 popcounts a word).
    serial = [p for p in project.packing if p.encoding and "bit-serial" in p.encoding]
    assert [p.op for p in serial] == ([] if name == "fixed_net4" else ["CONV_2D"]), \
        project.packing_lines
    # Packed activations: conv1 (int8 rows) writes k-bit codes, conv2 reads and writes
    # them, the logits read them through the Flatten (dropped: same order).
    bits = {"binary_net": 1, "w2a2": 2, "fixed_net4": 4}[name]
    by_op = [(p.op, p.in_bits, p.out_bits) for p in project.packing]
    assert by_op == [("CONV_2D", 0, bits), ("CONV_2D", bits, bits),
                     ("FULLY_CONNECTED", bits, 0)], project.packing_lines
    for p in project.packing[:2]:
        assert p.out_bytes[1] == -(-p.out_bytes[0] * bits // 8)
    run = build_and_run(project)
    assert run.exit_code == 0, run.tail()
    firmware_run.check_bit_exact(run, inputs)
    assert np.array_equal(run.outputs, tflm_host.predict(flatbuffer, inputs))
    # The arena shrinks on the device: below the same firmware's with int8 activations
    # (its ILP32 host figure, which is the device's: test_firmware_qemu).
    unpacked = micro_project.generate_project(flatbuffer, tmp_path / f"{name}_int8_activations",
                                              test_inputs=inputs, pack_activations=False,
                                              weights_in_ram=False)
    assert all(p.out_bits == 0 for p in unpacked.packing)
    assert run.arena_bytes == project.budget.host_arena
    assert run.arena_bytes < unpacked.budget.host_arena, (run.arena_bytes, unpacked.budget)
    for a in found:
        codes = np.unique(tflm_host.predict(fb.cut_at(flatbuffer, a.tensor), inputs))
        assert a.codes[0] <= codes.min() and codes.max() <= a.codes[1], (a, codes)
