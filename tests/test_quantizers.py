"""Properties of every registered weight quantizer (pure math, no tfmot).

Parametrised over ``tflq.quantizers.ALIASES``, so a newly registered alias is
tested too. Families are told apart by their alias prefix where a property holds
only for some (the lists below say which and why).
"""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tflq  # noqa: F401  (before TensorFlow is used: sets TF_USE_LEGACY_KERAS)
from tflq import quantizers as Q
from tflq.errors import TflqError

# q(q(w)) == q(w) bit for bit: powers of two from max-based statistics.
EXACTLY_IDEMPOTENT = ("log", "fixed")
# Up to float32 rounding of a mean (TWN's α, BWN's α, DoReFa-1's E|w|) or of the
# min-max range (except where the zero point is exactly a tie, excluded below).
NEARLY_IDEMPOTENT = ("ternary", "twn", "binary", "bwn", "dorefa1", "minmax")
# Not idempotent: μL2Q re-measures σ on the levels; DoReFa (k >= 2) re-applies tanh.
# q(-w) == -q(w) everywhere, zeros included.
SYMMETRIC = ("log", "fixed", "ternary", "twn")
# Symmetric except at w = 0 (which goes to +Δ: no zero level) and at exact rounding ties.
SYMMETRIC_BUT_ZERO = ("binary", "bwn", "dorefa", "ul2q")
# Not symmetric at all: min-max (its range and zero point).
HAS_ZERO_LEVEL = ("log", "fixed", "ternary", "twn", "minmax")
# Gradient is not the identity: hard-tanh STE (binary, bwn) / through tanh (dorefa k >= 2).
MASKED_STE = ("binary", "bwn")


def family_is(alias, prefixes):
    return alias.startswith(prefixes)


# -- kernels ---------------------------------------------------------------------------
magnitudes = st.sampled_from([0.0, 1e-30, 1e-7, 1e-3, 0.05, 0.3, 1.0, 2.5, 1e6, 1e30])
element = st.one_of(
    st.floats(-4, 4, width=32, allow_subnormal=False),
    st.builds(lambda m, s: np.float32(m * s), magnitudes, st.sampled_from([-1.0, 1.0])))
shapes = st.one_of(
    st.tuples(st.sampled_from([1, 3]), st.sampled_from([1, 3]), st.integers(1, 3),
              st.integers(1, 4)),
    st.tuples(st.integers(1, 12), st.integers(1, 5)))


@st.composite
def kernels(draw):
    """Random kernels (k, k, cin, cout) or (in, out), mixing zeros, tiny, ordinary and
    huge magnitudes; some channels made constant or all zero."""
    w = draw(hnp.arrays(np.float32, draw(shapes), elements=element))
    for c in range(w.shape[-1]):
        kind = draw(st.sampled_from(["as is"] * 4 + ["zero", "constant"]))
        if kind == "zero":
            w[..., c] = 0.0
        elif kind == "constant":
            w[..., c] = draw(element)
    return w


def ordinary_kernel(seed, shape=(3, 3, 2, 4), scale=0.1):
    """A kernel like a trained one: Gaussian, no zeros or ties (almost surely)."""
    return np.random.default_rng(seed).normal(0.0, scale, shape).astype(np.float32)


def channels(x):
    x = np.asarray(x)
    return np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)


def integers_of(quantizer, w, q):
    """q / Δ per channel (rows), checking Δ's shape, sign and finiteness."""
    step = quantizer.step(w).numpy()
    assert step.dtype == np.float32
    assert step.shape == ((w.shape[-1],) if quantizer.per_channel else ())
    assert np.all(step > 0) and np.all(np.isfinite(step)), step
    return channels(q) / (step.reshape(-1, 1) if quantizer.per_channel else step)


def check_exact_int8(quantizer, w, q):
    assert q.shape == w.shape and q.dtype == np.float32 and np.all(np.isfinite(q))
    k = integers_of(quantizer, w, q)
    assert np.abs(k - np.round(k)).max() < 1e-4, "levels are not integer multiples of Δ"
    assert np.abs(np.round(k)).max() <= 127, "levels need more than int8"
    rows = channels(q) if quantizer.per_channel else q.reshape(1, -1)
    assert max(len(np.unique(r)) for r in rows) <= quantizer.num_levels


# -- properties ------------------------------------------------------------------------

@pytest.mark.parametrize("alias", Q.ALIASES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=kernels())
def test_levels_are_exact_int8_multiples_of_the_step(alias, w):
    quantizer = Q.get(alias)
    check_exact_int8(quantizer, w, quantizer(w).numpy())


@pytest.mark.parametrize("alias", Q.ALIASES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=kernels())
def test_quantizing_twice(alias, w):
    quantizer = Q.get(alias)
    q = quantizer(w).numpy()
    qq = quantizer(q).numpy()
    if family_is(alias, EXACTLY_IDEMPOTENT):
        np.testing.assert_array_equal(qq, q)
    elif family_is(alias, NEARLY_IDEMPOTENT):
        if alias.startswith("minmax"):  # a zero point exactly at .5 is nudged differently
            low = np.minimum(channels(w).min(1), 0)
            high = np.maximum(channels(w).max(1), 0)
            z = -low / np.maximum((high - low) / (2 ** quantizer.bits - 1), 1e-30)
            assume(np.all(np.abs(z - np.floor(z) - 0.5) > 1e-3))
        np.testing.assert_allclose(qq, q, rtol=1e-5, atol=0)
    else:
        check_exact_int8(quantizer, q, qq)  # at least still a valid quantization


@pytest.mark.parametrize("alias", [a for a in Q.ALIASES if family_is(a, SYMMETRIC)])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=kernels())
def test_sign_symmetry(alias, w):
    quantizer = Q.get(alias)
    np.testing.assert_array_equal(quantizer(-w).numpy(), -quantizer(w).numpy())


@pytest.mark.parametrize("alias", [a for a in Q.ALIASES if family_is(a, SYMMETRIC_BUT_ZERO)])
def test_sign_symmetry_away_from_zero_and_ties(alias):
    quantizer = Q.get(alias)
    for seed in range(3):
        w = ordinary_kernel(seed)
        np.testing.assert_allclose(quantizer(-w).numpy(), -quantizer(w).numpy(), rtol=1e-6)


@pytest.mark.parametrize("alias", Q.ALIASES)
def test_zero_weights_and_all_zero_channels(alias):
    quantizer = Q.get(alias)
    w = ordinary_kernel(1, (4, 3))
    w[:, 1] = 0.0
    w[0, 0] = 0.0
    q = quantizer(w).numpy()
    check_exact_int8(quantizer, w, q)
    if family_is(alias, HAS_ZERO_LEVEL):
        assert q[0, 0] == 0.0 and np.all(q[:, 1] == 0.0)
    else:  # no zero level: 0 goes to the smallest positive level (sign(0) = +1) ...
        assert np.all(q[:, 1] > 0.0)
        if not alias.startswith("ul2q"):  # (μL2Q's offset β = mΔ can make 0 a level)
            assert q[0, 0] > 0.0
        if quantizer.per_channel:  # ... which, for an all-zero channel, is tiny
            assert np.all(q[:, 1] <= 2.0 ** -59)


@pytest.mark.parametrize("alias", Q.ALIASES)
def test_per_channel_statistics_are_independent(alias):
    quantizer = Q.get(alias)
    w = ordinary_kernel(2, (3, 3, 2, 4)) * np.array([1e-3, 0.1, 1.0, 30.0], np.float32)
    q = quantizer(w).numpy()
    if quantizer.per_channel:
        for c in range(w.shape[-1]):
            np.testing.assert_allclose(q[..., c:c + 1], quantizer(w[..., c:c + 1]).numpy(),
                                       rtol=1e-5)  # (sums in another order)
    else:
        flat = quantizer(w.reshape(-1, 1)).numpy().reshape(w.shape)
        np.testing.assert_allclose(q, flat, rtol=1e-6)


@pytest.mark.parametrize("alias", Q.ALIASES)
def test_step_of_the_levels(alias):
    """step(q(w)) == step(w) holds for every family but μL2Q, whose σ changes:
    that is why ``step`` must be given the raw kernel."""
    quantizer = Q.get(alias)
    w = ordinary_kernel(3)
    q = quantizer(w).numpy()
    same = np.allclose(quantizer.step(q).numpy(), quantizer.step(w).numpy(), rtol=1e-5)
    assert same != alias.startswith("ul2q"), alias


@pytest.mark.parametrize("alias", Q.ALIASES)
def test_gradient_is_the_documented_straight_through_estimator(alias):
    quantizer = Q.get(alias)
    w = ordinary_kernel(4, scale=0.6)
    w[0, 0, 0, 0], w[1, 1, 0, 0] = 1.5, -2.0  # beyond the hard-tanh STE's ±1
    w = tf.Variable(w)
    upstream = tf.constant(np.random.default_rng(5).normal(size=w.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizer(w) * upstream)
    grad = tape.gradient(loss, w)
    assert grad is not None and grad.shape == w.shape and np.all(np.isfinite(grad.numpy()))
    if family_is(alias, MASKED_STE):            # dq/dw = 1[|w| <= 1]
        expected = upstream * tf.cast(tf.abs(w) <= 1.0, tf.float32)
    elif alias.startswith("dorefa") and alias != "dorefa1":
        with tf.GradientTape() as tape:          # through tanh(w) / max|tanh(w)|
            t = tf.tanh(w)
            loss = tf.reduce_sum(t / quantizer.reduce(tf.reduce_max, tf.abs(t)) * upstream)
        expected = tape.gradient(loss, w)
    else:                                        # identity
        expected = upstream
    np.testing.assert_allclose(grad.numpy(), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_known_values():
    w = np.array([[0.5], [0.26], [0.1], [0.01], [-0.3], [0.0], [0.36], [-0.35]], np.float32)
    # log3: e_max = round(log2 0.5) = -1, exponents -3..-1, zero below 2^-4; log-domain
    # rounding: 0.36 > √2·0.25 -> 0.5, 0.35 < √2·0.25 -> 0.25.
    np.testing.assert_array_equal(Q.get("log3")(w).numpy().ravel(),
                                  [0.5, 0.25, 0.125, 0, -0.25, 0, 0.5, -0.25])
    np.testing.assert_array_equal(Q.get("log3").step(w).numpy(), [0.125])
    twn = Q.get("ternary")(w).numpy().ravel()  # t = 0.7 * 0.23875, α = mean(.5,.26,.3,.36,.35)
    np.testing.assert_allclose(twn, 0.354 * np.array([1, 1, 0, 0, -1, 0, 1, -1]), rtol=1e-6)
    # fixed3: Δ = 2^ceil(log2(0.5 / 3)) = 1/4 (1/8 would reach only 3/8 < 0.5).
    np.testing.assert_array_equal(Q.get("fixed3")(w).numpy().ravel(),
                                  [0.5, 0.25, 0, 0, -0.25, 0, 0.25, -0.25])
    np.testing.assert_array_equal(Q.get("fixed3").step(w).numpy(), [0.25])
    # bwn: α = mean|w|; sign(0) = +1.
    np.testing.assert_allclose(Q.get("bwn")(w).numpy().ravel(),
                               0.235 * np.array([1, 1, 1, 1, -1, 1, 1, -1]), rtol=1e-6)
    # minmax2: range [-0.35, 0.5], Δ = 0.85/3, z = round(1.2353) = 1: levels -Δ, 0, Δ, 2Δ.
    d = np.float32(0.85) / 3
    np.testing.assert_allclose(Q.get("minmax2")(w).numpy().ravel(),
                               d * np.array([2, 1, 0, 0, -1, 0, 1, -1]), rtol=1e-6)
    # dorefa2: levels ±1/3, ±1; tanh(0.5) is the max.
    np.testing.assert_allclose(Q.get("dorefa2")(w).numpy().ravel(),
                               np.array([3, 1, 1, 1, -1, 1, 3, -3]) / 3, rtol=1e-6)


def test_ul2q_follows_the_paper():
    from tflq.quantizers.ul2q import LAMBDAS
    assert LAMBDAS == (1.5959, 0.9894, 0.5838, 0.3327, 0.1897, 0.1043, 0.0563, 0.0304)
    # A zero-mean channel: β = 0, levels α(j - 1/2), α = λ_k σ, clipped at ±(2^(k-1) - 1/2)α.
    w = np.array([-3.0, -1.0, -0.2, 0.2, 1.0, 3.0], np.float32).reshape(-1, 1)
    sigma = np.std(w)
    for bits in (1, 2, 3):
        alpha = LAMBDAS[bits - 1] * sigma
        half = 2 ** (bits - 1)
        phi = np.clip(w / alpha + 0.5, 1 - half, half)
        expected = alpha * np.floor(phi + 0.5) - 0.5 * alpha
        quantizer = Q.get(f"ul2q{bits}")
        np.testing.assert_allclose(quantizer(w).numpy(), expected, rtol=1e-5)
        np.testing.assert_allclose(quantizer.step(w).numpy(), [alpha / 2], rtol=1e-6)
    # A constant channel is reproduced (the grid is widened to reach μ), not collapsed.
    c = np.full((5, 1), 0.3, np.float32)
    for bits in range(1, 8):
        np.testing.assert_allclose(Q.get(f"ul2q{bits}")(c).numpy(), c, rtol=1e-5)


# -- configuration, registry, errors ---------------------------------------------------

@pytest.mark.parametrize("alias", Q.ALIASES)
def test_config_round_trip_and_registry(alias):
    quantizer = Q.get(alias)
    assert isinstance(quantizer, Q.WeightQuantizer) and quantizer.precision == quantizer.bits
    config = quantizer.get_config()
    again = type(quantizer).from_config(config)
    assert again == quantizer and again.get_config() == config and again.alias == quantizer.alias
    by_dict = Q.get({"class_name": type(quantizer).__name__, "config": config})
    assert by_dict == quantizer and by_dict.alias == quantizer.alias
    assert Q.get(quantizer) is quantizer
    assert Q.get(quantizer.alias) == quantizer  # the canonical alias ("twn" -> "ternary")


def test_registry_is_live_and_rejects_duplicates():
    assert len(set(Q.ALIASES)) == len(Q.ALIASES) and {"log3", "twn", "ul2q2"} <= set(Q.ALIASES)
    with pytest.raises(TflqError, match="registered twice"):
        Q.register("log3", lambda: Q.LogQuantizer(3))
    with pytest.raises(TflqError, match="not a tflq.quantizers.WeightQuantizer"):
        Q.register("not_a_quantizer", lambda: 3)
    assert "not_a_quantizer" not in Q.ALIASES


def test_errors_name_the_valid_choices():
    with pytest.raises(TflqError, match=r"unknown quantizer 'lgo3' \(did you mean log3\?\): "
                                        r"choose one of log2, log3, log4, ternary.*minmax7"):
        Q.get("lgo3")
    with pytest.raises(TflqError, match=r"7 exponents exactly \(2\^6 = 64 <= 127 < 2\^7.*log4"):
        Q.get("log5")
    for bits in (5, 6, 7, 8):
        with pytest.raises(TflqError, match="Use log4"):
            Q.LogQuantizer(bits)
    with pytest.raises(TflqError, match=r"log quantizers take 2 to 4 bits"):
        Q.LogQuantizer(1)
    with pytest.raises(TflqError, match=r"minmax8.*2 to 7 bits.*minmax2, minmax3"):
        Q.get("minmax8")
    with pytest.raises(TflqError, match=r"dorefa9.*1 to 7 bits"):
        Q.get("dorefa9")
    with pytest.raises(TflqError, match=r"fixed-point weights take 2 to 8 bits"):
        Q.FixedPointQuantizer(9)
    with pytest.raises(TflqError, match=r"ul2q8.*1 to 7 bits"):
        Q.get("ul2q8")
    with pytest.raises(TflqError, match="bits must be an integer"):
        Q.FixedPointQuantizer(2.5)
    with pytest.raises(TflqError, match="not a quantizer"):
        Q.get(3.5)
    with pytest.raises(TflqError, match="unknown quantizer class 'Nope'.*LogQuantizer"):
        Q.get({"class_name": "Nope", "config": {}})


def test_exact_powers_of_two_and_binary_logarithms():
    from tflq.quantizers.base import ceil_log2, floor_log2, pow2, round_log2
    e = np.arange(-126, 128, dtype=np.float32)
    np.testing.assert_array_equal(pow2(tf.constant(e)).numpy(), np.ldexp(np.float32(1), e.astype(int)))
    p = np.ldexp(np.float32(1), np.arange(-125, 127)).astype(np.float32)
    x = np.concatenate([p, np.nextafter(p, np.float32(0)), np.nextafter(p, np.float32(np.inf)),
                        p * np.float32(1.4142135), p * np.float32(1.4142137),
                        np.random.default_rng(0).uniform(1e-30, 1e30, 1000).astype(np.float32)])
    x = x[np.isfinite(x) & (x >= np.finfo(np.float32).tiny)]
    mantissa, exponent = np.frexp(x)  # x = mantissa * 2^exponent, mantissa in [0.5, 1)
    floor = exponent - 1
    np.testing.assert_array_equal(floor_log2(tf.constant(x)).numpy(), floor)
    np.testing.assert_array_equal(ceil_log2(tf.constant(x)).numpy(), floor + (mantissa > 0.5))
    np.testing.assert_array_equal(round_log2(tf.constant(x)).numpy(),
                                  floor + (2 * mantissa.astype(np.float64) > np.sqrt(2)))
