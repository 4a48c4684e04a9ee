"""Low-bit weights survive conversion exactly, for every registered quantizer."""
import numpy as np
import pytest
import tf_keras as keras

import tflq
from tflq.converters.tflite import low_bit_layers
from tflq import inq, models, pipeline, quantizers
from tflq.errors import TflqError
from tflq.schemes import Scheme

L = keras.layers


def mixed_model():
    """Conv2D (int8, first) -> DepthwiseConv2D -> Conv2D 1x1 -> Dense -> Dense (int8, last):
    the three middle layers get the scheme's low-bit quantizer."""
    return keras.Sequential([
        L.InputLayer((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1"),
        L.BatchNormalization(name="bn1"), L.ReLU(name="relu1"),
        L.DepthwiseConv2D(3, padding="same", name="dw"), L.ReLU(name="relu_dw"),
        L.Conv2D(16, 1, strides=2, name="pw", activation="relu"),
        L.Flatten(name="flatten"), L.Dense(32, activation="relu", name="fc"),
        L.Dense(10, name="logits")],
        name="mixed")


@pytest.fixture(scope="module")
def trained_mixed(digits):
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = models.compile_for_classification(mixed_model())
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("alias", quantizers.ALIASES)
def test_every_quantizer_converts_exactly(alias, trained_mixed, digits, tmp_path):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(1)
    qat = tflq.quantize_model(trained_mixed, scheme=alias, calibration_data=x_train)
    models.compile_for_classification(qat, learning_rate=1e-3)
    qat.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    flatbuffer = tflq.convert(qat)

    layers = {l.layer: l for l in low_bit_layers(qat, flatbuffer)}
    assert sorted(layers) == ["dw", "fc", "pw"]
    for l in layers.values():
        assert l.exact, l                          # int8 * scale == QAT weights
        assert l.max_levels_seen <= l.num_levels, l
        # Same family and bits; "twn" is "ternary", and Dense / depthwise layers
        # quantize per tensor, so "bwn" there is BinaryConnect's "binary".
        assert type(quantizers.get(l.quantizer)) is type(quantizers.get(alias))
        assert l.bits == quantizers.get(alias).bits

    x = np.concatenate([x_train, x_test])
    qat_pred = qat.predict(x, verbose=0).argmax(-1)
    lite = pipeline.tflite_predict(flatbuffer, x)
    # Where TFLite's int8 logits tie for the maximum, its argmax is the first of them,
    # whatever the float model says; fixed2's near-collapsed model has many ties.
    unique = (lite == lite.max(-1, keepdims=True)).sum(-1) == 1
    assert unique.mean() > 0.8
    # fixed2's levels are {0, ±Δ} with Δ a power of two >= max|w|: per channel, a Dense
    # unit's weights are all of its own max, and a one-step difference in its int8
    # output (TFLite's integer rounding against the float QAT graph) moves the logits
    # by several steps. Measured: 98.4% on the unique maxima; every other alias >= 99%.
    agreement = 0.97 if alias == "fixed2" else 0.99
    assert np.mean(lite.argmax(-1)[unique] == qat_pred[unique]) >= agreement
    # Agreement means little if the model collapsed to one class. fixed2's step is a
    # power of two >= max|w|, so most weights round to 0: two epochs do not recover.
    if alias != "fixed2":
        assert np.mean(qat_pred == np.concatenate([y_train, y_test])) > 0.3

    path = str(tmp_path / "qat.h5")
    with tflq.quantize_scope():
        qat.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0))


def test_mixed_per_layer_precision(trained_mixed, digits):
    (x_train, _), _ = digits
    scheme = Scheme(weights="log4", overrides={"dw": "ternary", "logits": "fixed4"})
    qat = tflq.quantize_model(trained_mixed, scheme=scheme, calibration_data=x_train)
    found = {l.layer: l.quantizer for l in low_bit_layers(qat, tflq.convert(qat))}
    assert found == {"dw": "ternary", "pw": "log4", "fc": "log4", "logits": "fixed4"}


def test_callable_override_and_all_layers_low_bit(trained_mixed, digits):
    (x_train, _), _ = digits
    scheme = Scheme(weights="int8", first_last_int8=False,
                    overrides=lambda layer: "bwn" if layer.name.startswith(("conv", "pw")) else None)
    qat = tflq.quantize_model(trained_mixed, scheme=scheme, calibration_data=x_train)
    found = {l.layer: l.quantizer for l in low_bit_layers(qat, tflq.convert(qat))}
    assert found == {"conv1": "bwn", "pw": "bwn"}


def test_override_on_a_layer_without_weights(trained_mixed):
    with pytest.raises(TflqError, match=r"'relu_dw'.*no such layer|'flatten.*no Conv2D"):
        tflq.quantize_model(trained_mixed, scheme=Scheme(overrides={"relu_dw": "log3"}))
    with pytest.raises(TflqError, match=r"'flatten' \(Flatten\): it has no Conv2D/DepthwiseConv2D/Dense"):
        tflq.quantize_model(trained_mixed, scheme=Scheme(overrides={"flatten": "log3"}))


def test_unknown_alias_lists_the_known_ones(trained_mixed):
    with pytest.raises(TflqError, match=r"unknown scheme 'log9'.*log3"):
        tflq.quantize_model(trained_mixed, scheme="log9")
    with pytest.raises(TflqError, match=r"layer 'fc'"):
        tflq.quantize_model(trained_mixed, scheme=Scheme(overrides={"fc": "nonsense"}))


def test_inq_freezes_incrementally_and_ends_exact(trained_mixed, digits):
    (x_train, y_train), _ = digits
    qat = tflq.quantize_model(trained_mixed, scheme="inq4", calibration_data=x_train)
    models.compile_for_classification(qat, learning_rate=1e-3)
    shares = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            masks = [v["mask"].numpy() for _, _, _, v in inq.incremental_layers(qat)]
            shares.append(sum(m.sum() for m in masks) / sum(m.size for m in masks))

    qat.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0, callbacks=[inq.INQ(), Record()])
    assert shares == pytest.approx([0.5, 0.75, 0.875, 1.0], abs=0.01)
    layers = low_bit_layers(qat, tflq.convert(qat))
    assert len(layers) == 3 and all(l.ok and l.num_levels == 15 for l in layers)


def activation_layers_model():
    """The published-model idiom: Activation("relu") after Conv2D (+BN) and Dense, as in
    MLPerf Tiny's autoencoder and ResNet-8, in a functional graph with a residual Add."""
    x = inputs = L.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Activation("relu", name="act1")(x)
    y = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    y = L.Activation("relu", name="act2")(y)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(16, name="fc")(x)
    x = L.Activation("relu", name="act_fc")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="activations")


def test_activation_layers_keep_the_scheme_weight_quantizer(digits):
    (x_train, _), _ = digits
    keras.utils.set_random_seed(0)
    model = activation_layers_model()
    model(x_train[:4])
    scheme = Scheme(weights="log4", first_last_int8=False)
    qat = tflq.quantize_model(model, scheme=scheme, calibration_data=x_train[:256])
    flatbuffer = tflq.convert(qat)
    layers = {l.layer: l for l in low_bit_layers(qat, flatbuffer)}
    assert set(layers) == {"conv1", "conv2", "fc", "logits"}, layers
    for layer in layers.values():  # the grid check: <= 15 distinct int8 values per channel
        assert layer.ok and 1 < layer.max_levels_seen <= 15, layer


def relu_layers_model():
    """ReLU layers the converter fuses (ReLU6) and one it does not (leaky), each after
    the op they follow: tfmot's LayerReLUQuantize left such ops with float weights."""
    x = inputs = L.Input((8, 8, 1))
    x = L.Conv2D(4, 3, name="c1")(x)
    x = L.ReLU(6.0, name="r6")(x)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = L.ReLU(6.0, name="r6b")(x)
    x = L.Flatten()(x)
    x = L.Dense(8, name="fc")(x)
    x = L.ReLU(negative_slope=0.1, name="leaky")(x)
    return keras.Model(inputs, L.Dense(3, name="o")(x))


@pytest.mark.parametrize("weights", ["int8", "log4"])
def test_relu6_and_leaky_relu_layers_keep_the_weight_quantizer(weights, tmp_path):
    from tflq.converters import model as typed_model

    keras.utils.set_random_seed(0)
    data = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    scheme = "int8" if weights == "int8" else Scheme(weights=weights, first_last_int8=False)
    qat = tflq.quantize_model(relu_layers_model(), scheme=scheme, calibration_data=data)
    flatbuffer = tflq.convert(qat)
    ops = [op.op for op in typed_model.read(flatbuffer).operators]
    # ReLU6 is fused into CONV_2D and DEPTHWISE_CONV_2D; the leaky ReLU is an op.
    assert ops == ["CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "FULLY_CONNECTED", "LEAKY_RELU",
                   "FULLY_CONNECTED"], ops
    if weights != "int8":
        layers = {l.layer: l for l in low_bit_layers(qat, flatbuffer)}
        assert set(layers) == {"c1", "dw", "fc", "o"}, layers
        assert all(l.ok and 1 < l.max_levels_seen <= 15 for l in layers.values()), layers

    agree = np.mean(pipeline.tflite_predict(flatbuffer, data).argmax(-1)
                    == qat.predict(data, verbose=0).argmax(-1))
    assert agree >= 0.95

    qat.save(tmp_path / "qat.h5")  # the weights-only configs survive a save
    with tflq.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "qat.h5")
    np.testing.assert_allclose(loaded.predict(data, verbose=0), qat.predict(data, verbose=0),
                               rtol=1e-5, atol=1e-5)


def branching_model():
    """Concatenate, ZeroPadding2D, a BN after a conv without bias, Reshape, pooling and
    a residual Add, in one functional graph."""
    x = inputs = L.Input((8, 8, 1))
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.Conv2D(4, 3, use_bias=False, name="stem")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    a = L.Conv2D(4, 1, activation="relu", name="branch_a")(x)
    b = L.DepthwiseConv2D(3, padding="same", activation="relu", name="branch_b")(x)
    x = L.Concatenate(name="concat")([a, b])
    x = L.MaxPool2D(name="pool")(x)
    y = L.Conv2D(8, 3, padding="same", name="res")(x)
    x = L.Add(name="add")([x, y])
    x = L.Reshape((4 * 4 * 8,), name="reshape")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="branching")


@pytest.mark.parametrize("weights", ["int8", "log4"])
def test_branching_graphs_get_the_scheme_on_every_layer(weights, digits):
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = models.compile_for_classification(branching_model(), learning_rate=3e-3)
    model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0)  # BN statistics too
    scheme = "int8" if weights == "int8" else Scheme(weights=weights, first_last_int8=False)
    qat = tflq.quantize_model(model, scheme=scheme, calibration_data=x_train[:256])
    flatbuffer = tflq.convert(qat)
    if weights != "int8":
        layers = {l.layer: l for l in low_bit_layers(qat, flatbuffer)}
        assert set(layers) == {"stem", "branch_a", "branch_b", "res", "logits"}, layers
        assert all(l.ok and 1 < l.max_levels_seen <= 15 for l in layers.values()), layers
    data = x_train[:100]
    agree = np.mean(pipeline.tflite_predict(flatbuffer, data).argmax(-1)
                    == qat.predict(data, verbose=0).argmax(-1))
    assert agree >= 0.95
