"""int8 QAT (Jacob et al.): BN folding, calibration, conversion, interpreters agree."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tflq
from conftest import accuracy
from tflq.converters import flatbuffer as fb, requantize, tflm_host
from tflq import models, pipeline
from tflq.qat import fold_batch_norms

L = keras.layers


@pytest.mark.parametrize("layer", [
    L.Conv2D(6, 3, padding="same", use_bias=False),
    L.Conv2D(6, 3, strides=2, use_bias=True),
    L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
])
def test_fold_batch_norms_keeps_the_function(layer):
    rng = np.random.default_rng(1)
    model = keras.Sequential([L.InputLayer((8, 8, 3)), layer, L.BatchNormalization(name="bn"),
                              L.ReLU(), L.Flatten(), L.Dense(5), L.BatchNormalization()])
    for bn in (model.layers[1], model.layers[-1]):
        bn.set_weights([rng.uniform(0.5, 2, w.shape).astype(np.float32) if i in (0, 3)
                        else rng.normal(size=w.shape).astype(np.float32)
                        for i, w in enumerate(bn.get_weights())])
    folded = fold_batch_norms(model)
    assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(x), model(x, training=False), rtol=1e-4, atol=1e-4)


def test_calibrated_model_is_float_accurate_before_training(trained_conv_bn, digits):
    (x_train, _), (x_test, y_test) = digits
    float_acc = accuracy(trained_conv_bn, x_test, y_test)
    qat = tflq.quantize_model(trained_conv_bn, calibration_data=x_train)
    flatbuffer = tflq.convert(qat)
    tflite_acc = np.mean(pipeline.tflite_predict(flatbuffer, x_test).argmax(-1) == y_test)
    assert float_acc > 0.9
    assert abs(accuracy(qat, x_test, y_test) - float_acc) <= 0.02
    assert abs(tflite_acc - float_acc) <= 0.02


def test_without_calibration_tfmot_ranges_start_at_chance(trained_conv_bn, digits):
    # Why calibration exists: tfmot's weight ranges are [-6, 6] until a training step.
    _, (x_test, y_test) = digits
    assert accuracy(tflq.quantize_model(trained_conv_bn), x_test, y_test) < 0.3


def test_input_range_comes_from_data(trained_conv_bn, digits):
    (x_train, _), _ = digits
    flatbuffer = tflq.convert(tflq.quantize_model(trained_conv_bn, calibration_data=x_train))
    in_q, out_q = tflq.io_quantization(flatbuffer)
    assert in_q.scale == pytest.approx(1 / 255) and in_q.zero_point == -128
    assert out_q.scale > 0


@pytest.fixture(scope="module")
def fine_tuned(trained_conv_bn, digits):
    """Calibrated, then one epoch of QAT: the trained model is the converted model."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(1)
    qat = tflq.quantize_model(trained_conv_bn, calibration_data=x_train)
    models.compile_for_classification(qat, learning_rate=1e-4)
    qat.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    return qat, tflq.convert(qat)


def test_qat_and_tflite_agree(fine_tuned, digits):
    qat, flatbuffer = fine_tuned
    (x_train, _), (x_test, y_test) = digits
    x = np.concatenate([x_train, x_test])  # 1,797 images
    agreement = np.mean(pipeline.tflite_predict(flatbuffer, x).argmax(-1)
                        == qat.predict(x, verbose=0).argmax(-1))
    assert agreement >= 0.99
    # BN was folded during training, so the accuracies match (tfmot #549 is why).
    tflite_acc = np.mean(pipeline.tflite_predict(flatbuffer, x_test).argmax(-1) == y_test)
    assert abs(tflite_acc - accuracy(qat, x_test, y_test)) <= 0.005


def test_tflm_host_matches_tflite_reference_kernels(fine_tuned, digits):
    """TFLM (what the FE310 runs) and tf.lite's reference kernels agree except where
    FULLY_CONNECTED's requantization rounds differently: TFLM rounds twice
    (gemmlowp), tf.lite's FC once. docs/tflm_vs_tflite.md has the measurements."""
    _, flatbuffer = fine_tuned
    (x_train, _), (x_test, _) = digits
    x = np.concatenate([x_train, x_test])  # 1,797 inputs
    x_q = tflq.io_quantization(flatbuffer)[0].quantize(x)
    tflm = tflm_host.predict(flatbuffer, x_q).astype(int)
    ref = pipeline.tflite_predict(flatbuffer, x).astype(int)
    assert np.abs(tflm - ref).max() <= 1
    assert np.mean(np.all(tflm == ref, axis=1)) >= 0.98  # measured 98.9-99.2%

    model = fb.load(flatbuffer)
    (last,) = [op for op in model.subgraphs[0].operators if op.outputs[0] == model.subgraphs[0].outputs[0]]
    assert fb.op_name(model, last) == "FULLY_CONNECTED"
    fc_input = tflm_host.predict(fb.cut_at(flatbuffer, last.inputs[0]), x_q)
    fc_input_ref = pipeline.tflite_predict(fb.cut_at(flatbuffer, last.inputs[0]), x)
    np.testing.assert_array_equal(fc_input, fc_input_ref)  # every op before the FC is identical
    np.testing.assert_array_equal(
        requantize.fully_connected(model, last, fc_input, requantize.double_rounding), tflm)
    np.testing.assert_array_equal(
        requantize.fully_connected(model, last, fc_input, requantize.single_rounding), ref)


def test_saved_qat_model_loads_back(fine_tuned, digits, tmp_path):
    qat, _ = fine_tuned
    _, (x_test, _) = digits
    path = str(tmp_path / "qat.h5")
    with tflq.quantize_scope():
        qat.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0))
