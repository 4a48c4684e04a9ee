"""Low-bit activations: exact codes in the int8 flatbuffer, for every activation alias."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tflq
from tflq import models, pipeline, schemes
from tflq.converters import flatbuffer as fb, tflm_host
from tflq.converters.tflite import low_bit_activations
from tflq.errors import TflqError
from tflq.qat import quantized_activations
from tflq.quantizers import activations
from tflq.schemes import Scheme

L = keras.layers


def act_model(signed: bool):
    """Conv (int8 weights, first) -> pool -> Conv -> Dense -> Dense (logits): three low-bit
    outputs. Ternary outputs need linear layers; the others get ReLUs."""
    act = None if signed else "relu"
    return keras.Sequential([
        L.InputLayer((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", activation=act, name="c1"), L.MaxPool2D(name="pool"),
        L.Conv2D(16, 3, padding="same", activation=act, name="c2"),
        L.Flatten(name="flatten"), L.Dense(32, activation=act, name="d1"),
        L.Dense(10, name="logits")], name=f"act_{'signed' if signed else 'relu'}")


@pytest.fixture(scope="module")
def trained(digits):
    (x_train, y_train), _ = digits
    found = {}
    for signed in (False, True):
        keras.utils.set_random_seed(0)
        model = models.compile_for_classification(act_model(signed))
        model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
        found[signed] = model
    return found


def codes_seen(flatbuffer, tensor, x) -> np.ndarray:
    """The distinct int8 values of ``tensor`` over inputs ``x``, on the TFLM host reference."""
    x_q = tflq.io_quantization(flatbuffer)[0].quantize(x)
    return np.unique(tflm_host.predict(fb.cut_at(flatbuffer, tensor), x_q))


@pytest.mark.parametrize("alias", activations.ALIASES)
def test_every_activation_alias_holds_only_its_codes(alias, trained, digits):
    (x_train, _), (x_test, _) = digits
    quantizer = activations.get(alias)
    model = trained[quantizer.signed]
    qat = tflq.quantize_model(model, Scheme(weights="int8", activations=alias),
                              calibration_data=x_train[:500])
    flatbuffer = tflq.convert(qat)
    found = low_bit_activations(qat, flatbuffer)
    assert [a.layer for a in found] == ["c1", "c2", "d1"]  # the logits stay int8
    for a in found:
        assert a.ok, a
        seen = codes_seen(flatbuffer, a.tensor, x_test)
        low, high = quantizer.codes
        assert low <= seen.min() and seen.max() <= high, (a.layer, seen)
        assert 2 <= len(seen) <= quantizer.num_levels, (a.layer, seen)
    # The QAT model's outputs of those layers are exactly the quantizer's levels.
    for wrapper, q, variables in quantized_activations(qat):
        sub = keras.Model(qat.inputs, wrapper.output)
        got = np.unique(sub.predict(x_test[:200], verbose=0))
        clip = float(variables["max_var"].numpy())
        levels = q.activation_quantizer.levels(clip if not quantizer.signed else 1.0)
        assert np.all(np.min(np.abs(got[:, None] - levels[None]), axis=1) <= 1e-5 * max(clip, 1)), \
            (wrapper.name, got, levels)


@pytest.mark.parametrize("scheme", ["binary_net", "qnn_w1a2", "fixed_net4",
                                    Scheme(weights="ternary", activations="ternary")],
                         ids=["w1a1", "w1a2", "w4a4", "w2a2_ternary"])
def test_trained_low_bit_nets_agree_with_tflite(scheme, trained, digits, tmp_path):
    (x_train, y_train), (x_test, y_test) = digits
    signed = schemes.resolve(scheme).activations == "ternary"
    keras.utils.set_random_seed(1)
    qat = tflq.quantize_model(trained[signed], scheme, calibration_data=x_train)
    clips = {v["clip"].name: float(v["clip"].numpy()) for _, _, v in quantized_activations(qat)}
    models.compile_for_classification(qat, learning_rate=1e-3)
    qat.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    flatbuffer = tflq.convert(qat)
    assert all(a.ok for a in low_bit_activations(qat, flatbuffer))

    x = np.concatenate([x_train, x_test])
    qat_pred = qat.predict(x, verbose=0).argmax(-1)
    lite = pipeline.tflite_predict(flatbuffer, x)
    unique = (lite == lite.max(-1, keepdims=True)).sum(-1) == 1
    assert unique.mean() > 0.9
    assert np.mean(lite.argmax(-1)[unique] == qat_pred[unique]) >= 0.99
    assert np.mean(qat_pred == np.concatenate([y_train, y_test])) > 0.5
    if schemes.resolve(scheme).activations.startswith("pact"):  # PACT's α trains
        after = {v["clip"].name: float(v["clip"].numpy()) for _, _, v in quantized_activations(qat)}
        assert any(abs(after[k] - clips[k]) > 1e-4 for k in clips), (clips, after)

    path = str(tmp_path / "qat.h5")
    with tflq.quantize_scope():
        qat.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0))
    assert tflq.convert(loaded) == flatbuffer


def test_pact_clip_gets_the_pact_gradient():
    """∂q/∂α = 1 where x > α, 0 elsewhere (PACT), through the fake-quant's range; the
    input's gradient is 1 inside [0, α] (x = α included) and 0 outside."""
    quantizer = activations.get("pact2")
    x = tf.constant([-1.0, 0.3, 0.9, 1.0, 2.5, 7.0])
    clip = tf.Variable(1.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        low, high = quantizer.fake_range(clip)
        y = tf.reduce_sum(quantizer(x, low, high) * tf.range(1.0, 7.0))
    np.testing.assert_allclose(quantizer(x, low, high).numpy(), [0, 1 / 3, 1, 1, 1, 1], rtol=1e-6)
    assert float(tape.gradient(y, clip)) == pytest.approx(5.0 + 6.0)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 2, 3, 4, 0, 0])


def test_presets_name_nnabla_families():
    assert schemes.resolve("binary_net") == Scheme(weights="binary", activations="binary")
    assert schemes.resolve("qnn_w1a2").activations == "pact2"
    for name in ("binary_connect", "binary_weight", "fixed_connect4", "fixed_net4",
                 "pow2_connect4", "inq4", "minmax4", "qnn_w1a2"):
        assert name in schemes.names()
        schemes.resolve(name)
    with pytest.raises(TflqError, match="pow2_net4.*power-of-two activations cannot be exact"):
        schemes.resolve("pow2_net4")


def test_bad_activation_specs_are_refused_with_the_layer(trained, digits):
    (x_train, _), _ = digits
    relu_model, linear_model = trained[False], trained[True]
    calib = x_train[:64]

    def refused(model, scheme, match):
        with pytest.raises(TflqError, match=match):
            tflq.quantize_model(model, scheme, calibration_data=calib)

    refused(relu_model, Scheme(activations="ternary"),
            r"layer 'c1'.*activation 'relu'.*ternary.*negative level")
    refused(relu_model, Scheme(activation_overrides={"pool": "pact2"}),
            r"layer 'pool' \(MaxPooling2D\).*keep the codes of their input")
    refused(relu_model, Scheme(activation_overrides={"nope": "pact2"}), r"no such layer")
    refused(relu_model, Scheme(activations="pow2_4"), r"layer 'c1'.*power-of-two activations")
    refused(relu_model, Scheme(activations="pact9"), r"layer 'c1'.*1 to 7 bits")
    refused(relu_model, Scheme(activations="pactt2"), r"did you mean pact2")
    with pytest.raises(TflqError, match="data_free=True cannot set low-bit activation clips"):
        tflq.quantize_model(relu_model, "binary_net", data_free=True, input_range=(0, 1))

    sigmoid = keras.Sequential([L.InputLayer((4,)), L.Dense(8, activation="sigmoid", name="s"),
                                L.Dense(2, name="o")])
    refused(sigmoid, Scheme(activations="pact2"), r"layer 's'.*activation 'sigmoid'")
    relu6 = keras.Sequential([L.InputLayer((4,)), L.Dense(8, name="d"), L.ReLU(6.0, name="r6"),
                              L.Dense(2, name="o")])
    refused(relu6, Scheme(activations="pact2"), r"layer 'd'.*ReLU layer 'r6'")
    del linear_model


def test_calibrated_clip_follows_small_activations():
    """A layer whose outputs are all below 0.1 gets a clip of their size, and the stored
    range is that clip's (no floor from the initial α = 6)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([L.InputLayer((16,)), L.Dense(16, activation="relu", name="small"),
                              L.Dense(4, name="out")])
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([kernel * 0.01, bias])
    x = np.random.default_rng(0).uniform(0, 1, (256, 16)).astype(np.float32)
    top = float(np.max(model.layers[0](x)))
    assert 0 < top < 0.1
    qat = tflq.quantize_model(model, Scheme(activations="pact2"), calibration_data=x)
    ((_, _, variables),) = quantized_activations(qat)
    clip = float(variables["clip"].numpy())
    assert 0 < clip <= top * 1.0001
    assert float(variables["max_var"].numpy()) == pytest.approx(clip, rel=1e-6)
