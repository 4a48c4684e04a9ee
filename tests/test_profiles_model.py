"""A Keras model whose first layer is tflq's ProjectionProfiles: quantize_model keeps the
layer float, tflq.convert leaves it out of the flatbuffer and records it in the
`tflq_feature` metadata, and the firmware computes the profiles from the raw image in C
(micro/features/projection_profiles.c), with the device equal to the host reference."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tflq
from tflq.converters import features, firmware_run, micro_project
from tflq.converters import model as typed_model
from tflq.converters.tflite import low_bit_layers
from tflq.errors import TflqError
from tflq.layers import ProjectionProfiles
from tflq.schemes import Scheme

L = keras.layers
BINS = 4  # digits are 8x8


@pytest.fixture(scope="module")
def profiles_model(digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([L.InputLayer((8, 8, 1)), ProjectionProfiles(BINS, name="profiles"),
                              L.Dense(32, activation="relu", name="hidden"),
                              L.Dense(10, name="logits")])
    tflq.models.compile_for_classification(model, learning_rate=3e-3)
    model.fit(x_train, y_train, epochs=20, batch_size=64, verbose=0)
    qat = tflq.quantize_model(model, scheme=Scheme(weights="log3", first_last_int8=False),
                              calibration_data=x_train)
    return qat, tflq.convert(qat)


def as_uint8(x):
    return np.rint(x[..., 0] * 255).astype(np.uint8)


def test_the_layer_stays_float_and_out_of_the_flatbuffer(profiles_model, digits):
    qat, flatbuffer = profiles_model
    assert isinstance(qat.layers[1], ProjectionProfiles) and qat.input_shape == (None, 8, 8, 1)
    checked = typed_model.read(flatbuffer)
    assert checked.feature == {"feature": "projection_profiles", "height": 8, "width": 8,
                               "bins": BINS}
    assert checked.tensors[checked.inputs[0]].shape == (1, 4 * BINS)
    assert [op.op for op in checked.operators] == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    layers = low_bit_layers(qat, flatbuffer)  # the wrapper: its body is checked
    assert {l.layer for l in layers} == {"hidden", "logits"}
    assert all(l.ok and l.max_levels_seen <= 7 for l in layers), layers


def test_tflite_on_the_firmware_features_agrees_with_the_qat_model(profiles_model, digits):
    qat, flatbuffer = profiles_model
    _, (x_test, y_test) = digits
    images = as_uint8(x_test)
    in_q, _ = tflq.io_quantization(flatbuffer)
    inputs = features.int8_profiles(images, BINS, in_q.scale, in_q.zero_point)
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    given, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    tflite = []
    for row in inputs:
        interpreter.set_tensor(given["index"], row[None])
        interpreter.invoke()
        tflite.append(interpreter.get_tensor(out["index"]).argmax())
    qat_preds = qat.predict(images[..., None] / np.float32(255), verbose=0).argmax(-1)
    assert np.mean(np.array(tflite) == qat_preds) >= 0.97
    assert np.mean(qat_preds == y_test) > 0.6  # it learnt something from 16 features


def test_a_profiles_layer_anywhere_but_first_is_refused_by_name():
    model = keras.Sequential([L.InputLayer((8, 8, 1)), L.Conv2D(1, 1, name="c"),
                              ProjectionProfiles(BINS, name="late"), L.Dense(3)])
    with pytest.raises(TflqError, match="layer 'late' .*must be the model's first layer"):
        tflq.quantize_model(model)


def test_bad_feature_metadata_is_refused_at_the_entrance(profiles_model):
    from tflq.converters import flatbuffer as fb

    _, flatbuffer = profiles_model
    for data, says in ((b"{not json", "is not a tflq feature description"),
                       (features.describe(8, 8, 5), "declares 5 projection profile bins")):
        with pytest.raises(TflqError, match=says):
            typed_model.read(fb.with_metadata(flatbuffer, features.METADATA, data), "m.tflite")


@pytest.mark.firmware
@pytest.mark.usefixtures("firmware_tools")
def test_the_firmware_computes_the_profiles_and_equals_the_host(profiles_model, digits, tmp_path):
    _, flatbuffer = profiles_model
    _, (x_test, y_test) = digits
    images, labels = as_uint8(x_test[:40]), y_test[:40]
    with pytest.raises(TflqError, match="eval_images are 9x8; the model takes the projection "
                                        "profiles of 8x8 images"):
        micro_project.generate_project(flatbuffer, tmp_path / "bad", eval_labels=labels[:2],
                                       eval_images=np.zeros((2, 9, 8), np.uint8))
    # No feature= argument: the model's metadata says what the firmware computes.
    project = micro_project.generate_project(flatbuffer, tmp_path / "fw", eval_images=images,
                                             eval_labels=labels)
    assert (project / "tflq_kernels/projection_profiles.c").exists()
    run = firmware_run.run(project)
    assert run.exit_code == 0, run.tail()
    in_q, _ = tflq.io_quantization(flatbuffer)
    host, _ = firmware_run.host_reference(
        project, features.int8_profiles(images, BINS, in_q.scale, in_q.zero_point))
    np.testing.assert_array_equal(run.preds[:, 2], host.argmax(-1))
    assert len(set(host.argmax(-1))) > 3
