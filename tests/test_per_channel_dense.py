"""Per-channel Dense weights (converters/per_channel_dense.py): every low-bit quantizer
gets one step per output channel, the flatbuffer's FULLY_CONNECTED holds exactly those
codes with one scale per channel, tf.lite runs it as the QAT model does, and on the
device (tflq's kernels, packed kernels, TFLM's reference kernels) it equals the host
reference on every input."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import _models
import tflq
from tflq import pipeline
from tflq.converters import firmware_run, micro_project
from tflq.converters import model as typed_model
from tflq.converters.tflite import low_bit_layers
from tflq.schemes import Scheme

L = keras.layers
SCHEMES = ["log3", "log4", "fixed4", "ternary", "bwn"]  # per channel (binary, dorefa: per tensor)


@pytest.fixture(scope="module")
def trained_mlp(digits):
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([L.InputLayer((8, 8, 1)), L.Flatten(),
                              L.Dense(32, activation="relu", name="hidden"),
                              L.Dense(10, name="logits")])
    tflq.models.compile_for_classification(model, learning_rate=3e-3)
    model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def converted(trained_mlp, digits):
    (x_train, _), _ = digits
    out = {}
    for weights in SCHEMES:
        qat = tflq.quantize_model(trained_mlp, scheme=Scheme(weights=weights, first_last_int8=False),
                                  calibration_data=x_train)
        out[weights] = qat, tflq.convert(qat)
    return out


def fc_weights(flatbuffer):
    checked = typed_model.read(flatbuffer)
    return [checked.tensors[op.inputs[1]] for op in checked.operators
            if op.op == "FULLY_CONNECTED"]


@pytest.mark.parametrize("weights", SCHEMES)
def test_every_dense_is_per_channel_and_exact(weights, converted):
    qat, flatbuffer = converted[weights]
    for tensor in fc_weights(flatbuffer):
        channels = tensor.shape[0]
        assert len(tensor.scale) == channels and tensor.quantized_dimension == 0, tensor
        assert tensor.zero_point == (0,) * channels
    layers = low_bit_layers(qat, flatbuffer)
    assert {l.layer for l in layers} == {"hidden", "logits"}
    assert all(l.ok and l.max_levels_seen <= l.num_levels for l in layers), layers
    # Not a per-tensor model in disguise: channels have steps of their own (log steps
    # are powers of two, so channels of one octave share theirs).
    assert any(len(set(t.scale)) > 1 for t in fc_weights(flatbuffer))


@pytest.mark.parametrize("weights", SCHEMES)
def test_tflite_runs_the_per_channel_model_as_the_qat_model(weights, converted, digits):
    qat, flatbuffer = converted[weights]
    _, (x_test, _) = digits
    tflite = pipeline.tflite_predict(flatbuffer, x_test).argmax(-1)
    agree = np.mean(tflite == qat.predict(x_test, verbose=0).argmax(-1))
    assert agree >= 0.99, agree


@pytest.mark.firmware
@pytest.mark.usefixtures("firmware_tools")
@pytest.mark.parametrize("weights,kernels", [("log3", "tflq"), ("ternary", "tflq"),
                                             ("fixed4", "reference")])
def test_per_channel_dense_firmware_equals_the_host_reference(weights, kernels, converted,
                                                              tmp_path):
    _, flatbuffer = converted[weights]
    inputs = _models.random_inputs(flatbuffer, 32)
    project = micro_project.generate_project(flatbuffer, tmp_path / weights, test_inputs=inputs,
                                             kernels=kernels, pack=kernels == "tflq")
    run = firmware_run.run(project)
    assert run.exit_code == 0, run.tail()
    firmware_run.check_bit_exact(run)
    if kernels == "tflq":  # both layers packed, per channel
        assert [op.encoding is not None for op in project.packing] == [True, True]


@pytest.mark.firmware
@pytest.mark.usefixtures("firmware_tools")
@pytest.mark.parametrize("weights", SCHEMES)
def test_tflm_runs_per_channel_dense_as_the_numpy_reference_and_near_tflite(weights, converted):
    """TFLM's reference kernels equal the per-channel numpy reference (double rounding,
    packed_format.reference) exactly; tf.lite's reference kernels round FULLY_CONNECTED
    once (docs/tflm_vs_tflite.md), so they may differ by one step."""
    from tflq.converters import flatbuffer as fb, packing, tflm_host

    _, flatbuffer = converted[weights]
    inputs = _models.random_inputs(flatbuffer, 64)
    tflm = tflm_host.predict(flatbuffer, inputs, kernels="reference").reshape(len(inputs), -1)
    model = fb.load(flatbuffer)
    x = inputs.reshape(len(inputs), -1)
    for op in model.subgraphs[0].operators:
        if fb.op_name(model, op) == "FULLY_CONNECTED":
            layer = packing.layer_of_op(model, op)
            x = packing.reference(layer, x)
    np.testing.assert_array_equal(tflm, x)

    interpreter = tf.lite.Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    given, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    tflite = []
    for row in inputs:
        interpreter.set_tensor(given["index"], row[None])
        interpreter.invoke()
        tflite.append(interpreter.get_tensor(out["index"]).ravel())
    assert np.abs(np.array(tflite, np.int32) - tflm).max() <= 1
