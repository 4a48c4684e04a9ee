r"""Post-training quantization that holds up without retraining.

``quantize_model(model, scheme, calibration_data=x, post_training=True)`` calibrates,
then runs ``optimize``: layer by layer, in graph order, each low-bit Conv2D / Dense is
fitted to the float model's outputs of that layer, given the calibration inputs *as
the quantized model computes them*: each layer sees, and corrects, the error of the
layers before it. Then the model is calibrated again. (Int8 and depthwise layers are
left as calibrated: bias correction of the int8 first and last layers of the demo CNN
cost 0.6-1.0 points in ``benchmarks/post_training.py``.)

**Scale search** (per output channel; the layer's output error, not the weights'). A
quantizer's levels are k·Δ_c, with Δ_c set by the channel's statistics: log's window
top from max|w|, fixed point's power-of-two step. tflq gives each channel a scale s_c
(``LowBitWeightQuantizer``'s ``scale`` variable), with levels
:math:`q_s(w) = s \cdot q(w / s)`. These are still k·(s·Δ), so they are exact in int8
with a per-channel scale. For s on a grid over one octave, :math:`s = 2^{-j/J}`, the
search keeps the s that minimises the channel's expected squared output error on the
layer's inputs X in the quantized model (patches, for a Conv2D) and X_f in the float
one:

.. math::  E_c(s) = \lVert X q_s(w_c) - X_f w_c \rVert^2

This is the layer-wise objective of AdaRound (Nagel et al. 2020) and of OCS/OMSE-style
scale searches, with the rounding left to the quantizer. Quantizers that are
homogeneous in w (TWN, BWN, μL2Q, min-max) give the same levels for every s; for them
the search changes nothing, and the rounding optimisation below does the work.

**Rounding optimisation** (AdaRound's objective, Nagel et al. 2020, solved greedily).
Rounding each weight to its nearest level is optimal for the weights' error, not for
E_c. With the scale fixed, coordinate descent over the weights (``PASSES`` sweeps)
moves each weight to the level just below or just above it (for ternary, to any of
its three levels), whichever lowers E_c; the
levels are those the channel already uses, so the quantizer maps the result to itself
and ``optimize`` writes it into the kernel (a channel where it would not stays as it
was). For TWN and BWN, whose levels are α·k for any α, the codes come first: TWN's
threshold t = f·mean|w_c| is searched over f ∈ [0.2, 1.6] (the paper fixes f = 0.7
for Gaussian weights), each code pattern k gets the α of least output error
:math:`\alpha = k^\top X^\top X_f w / k^\top X^\top X k`, and α is refitted after each
sweep.

**Bias correction** (Nagel et al. 2019, "Data-Free Quantization", §4.2, the empirical
form). Quantization shifts a channel's expected pre-activation, through its weights and
the layers before it, by :math:`\mathbb{E}[x]^\top q(w_c) - \mathbb{E}[x_f]^\top w_c`.
Subtracting it from the bias removes the shift:

.. math::  b_c \leftarrow b_c - (\mathbb{E}[x]^\top q(w_c) - \mathbb{E}[x_f]^\top w_c)

Both need only the calibration data. ``benchmarks/post_training.py`` measures what they
give (docs/benchmarks/post_training.md).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tflq.errors import TflqError

GRID = 16  # scales per octave
MAX_ROWS = 32768  # patches of a Conv2D's inputs used
PASSES = 3  # of the rounding optimisation's coordinate descent
# Families whose levels are α·k for any α > 0 (the quantizer maps α·k to itself).
_FREE_SCALE = ("ternary", "binary")


def optimize(qat_model: keras.Model, data, float_model: keras.Model | None = None,
             search: bool = True, rounding: bool = True, bias_correction: bool = True,
             batch_size: int = 256) -> None:
    """Scale search, rounding optimisation and bias correction of every low-bit Conv2D /
    Dense of ``qat_model`` (a calibrated tflq QAT model), in place. ``data``: model
    inputs. ``float_model``: the float model it quantizes (same layer names), whose
    outputs each layer is fitted to; without it, each layer is fitted to its own float
    weights on the quantized model's inputs."""
    from tflq.qat import LowBitWeightQuantizer, quantized_kernels

    from tflq import layers

    if isinstance(data, tf.data.Dataset):
        raise TflqError("post-training optimisation takes calibration_data as an array of "
                        "inputs, not a tf.data.Dataset")
    raw = data = np.asarray(data, np.float32)
    head, qat_model = layers.features_of(qat_model)
    if head is not None:  # ProjectionProfiles: the body sees the profiles
        data = head(data).numpy()
    if len(data) < 2:
        raise TflqError(f"post-training optimisation needs at least 2 calibration samples, "
                        f"got {len(data)}")
    for wrapper, kernel, quantizer, variables in quantized_kernels(qat_model):
        layer = wrapper.layer
        if (not isinstance(quantizer, LowBitWeightQuantizer) or quantizer.depthwise
                or quantizer.incremental or type(layer).__name__ not in ("Conv2D", "Dense")):
            continue
        inputs = lambda model, x: _patches(layer, keras.Model(  # noqa: E731
            model.inputs, model.get_layer(layer.name).input if model is float_model
            else wrapper.input).predict(x, batch_size=batch_size, verbose=0))
        x = inputs(qat_model, data)  # (rows, fan_in), fan_in in the kernel's flattened order
        x_float = x if float_model is None else inputs(float_model, raw)
        w = kernel.numpy().reshape(-1, kernel.shape[-1]).astype(np.float64)  # (fan_in, out)
        objective = _Objective(x, x_float, w)
        if search and quantizer.weight_quantizer.family not in _FREE_SCALE:
            best = _search(quantizer, kernel, objective)
            variables["scale"].assign(best.astype(np.float32) if quantizer.weight_quantizer
                                      .per_channel else np.float32(best.mean()))
        if rounding:
            _round(quantizer, kernel, variables, objective, w)
        quantizer.sync(kernel, variables)
        if bias_correction and layer.use_bias:
            q = np.asarray(quantizer.quantized(kernel, variables), np.float64).reshape(w.shape)
            shift = x.mean(0) @ q - x_float.mean(0) @ w
            layer.bias.assign((layer.bias.numpy() - shift).astype(np.float32))


class _Objective:
    """A channel's output error E = ||X q - X_f w||² / N, with X the layer's inputs in the
    quantized model and X_f in the float one, as a function of d = q - w:
    E(d) = dᵀGd - 2hᵀd + const, G = XᵀX / N, h = Xᵀ(X_f - X) w / N."""

    def __init__(self, x: np.ndarray, x_float: np.ndarray, w: np.ndarray):
        self.gram = x.T @ x / len(x)
        self.h = x.T @ ((x_float - x) @ w) / len(x)

    def error(self, d: np.ndarray) -> np.ndarray:
        """E(d) - const, per output channel."""
        return np.sum((self.gram @ d) * d - 2 * self.h * d, axis=0)


def _round(quantizer, kernel, variables, objective: _Objective, w: np.ndarray) -> None:
    """Rounding optimisation: the levels of ``kernel`` that minimise each channel's output
    error, written into ``kernel`` where the quantizer maps them to themselves."""
    wq = quantizer.weight_quantizer
    q = np.asarray(quantizer.quantized(kernel, variables), np.float64).reshape(w.shape)
    free_scale = wq.family in _FREE_SCALE
    if wq.family == "ternary":
        q = _ternary_search(w, objective, wq.per_channel)
    for _ in range(PASSES):
        q = _descend(w, q, objective, _level_sets(q, wq), every_level=wq.family == "ternary")
        if free_scale:
            q = _refit_scale(w, q, objective, wq.per_channel)
    original = kernel.numpy()
    kernel.assign(q.reshape(kernel.shape).astype(np.float32))
    again = np.asarray(quantizer.quantized(kernel, variables)).reshape(w.shape)
    kept = np.all(again == q.astype(np.float32), axis=0)  # channels the quantizer keeps
    if not wq.per_channel and not kept.all():
        kept[:] = False
    if not kept.all():  # the rest go back to their float weights
        flat = kernel.numpy().reshape(w.shape)
        flat[:, ~kept] = original.reshape(w.shape)[:, ~kept]
        kernel.assign(flat.reshape(kernel.shape))


def _ternary_search(w: np.ndarray, objective: _Objective, per_channel: bool) -> np.ndarray:
    """TWN levels α·sign(w)·[|w| > t] with the threshold t = f·mean|w| (f on a grid) and
    α of least output error, per channel (or one f and α per tensor)."""
    mean = np.abs(w).mean(0)
    best, best_error = None, None
    for f in np.linspace(0.2, 1.6, 29):
        codes = np.sign(w) * (np.abs(w) > f * mean)
        q = _refit_scale(w, codes, objective, per_channel)
        error = objective.error(q - w)
        if not per_channel:
            error = np.full_like(error, error.sum())
        if best is None:
            best, best_error = q, error
        else:
            better = error < best_error
            best[:, better], best_error[better] = q[:, better], error[better]
    return best


def _refit_scale(w: np.ndarray, q: np.ndarray, objective: _Objective, per_channel: bool):
    """``q``'s codes k (q / its channel's largest |q|) times the scale of least output
    error α = kᵀ(Gw + h) / kᵀGk (per channel, or one for the tensor)."""
    top = np.abs(q).max(0)
    codes = q / np.where(top > 0, top, 1.0)
    gk = objective.gram @ codes
    num = np.sum(codes * (objective.gram @ w + objective.h), axis=0)
    den = np.sum(gk * codes, axis=0)
    if not per_channel:
        num, den = np.full_like(num, num.sum()), np.full_like(den, den.sum())
    alpha = np.where((den > 0) & (num > 0), num / np.where(den > 0, den, 1.0), top)
    return codes * alpha


def _level_sets(q: np.ndarray, weight_quantizer) -> list:
    """Per channel, the sorted levels it may use: those it uses (for a per-tensor
    quantizer, those the tensor uses), and ±α for binary, ±α and 0 for ternary."""
    sets = [np.unique(q[:, c]) for c in range(q.shape[1])]
    if not weight_quantizer.per_channel:
        sets = [np.unique(np.concatenate(sets))] * q.shape[1]
    if weight_quantizer.family in _FREE_SCALE:
        zero = [0.0] if weight_quantizer.family == "ternary" else []
        sets = [np.unique(np.concatenate([s, -s, zero])) for s in sets]
    return sets


def _descend(w: np.ndarray, q: np.ndarray, objective: _Objective, sets: list,
             every_level: bool = False) -> np.ndarray:
    """One pass of coordinate descent on E(q - w), every channel at once: each weight
    moves to the candidate level that lowers E most. The candidates are the levels just
    below and just above its float value (AdaRound's choice between rounding down and
    up, made greedily); with ``every_level`` (ternary: -α, 0, α), every level: a weight
    may also change sign. (Measured in benchmarks/post_training.py: on the demo CNN's
    ternary layer this gains 0.7 points; for BWN, sign flips cost 3.)"""
    candidates = np.empty((3 if every_level else 2, *w.shape))
    for c, levels in enumerate(sets):
        if every_level:
            candidates[:, :, c] = np.resize(levels, 3)[:, None]
            continue
        i = np.searchsorted(levels, w[:, c])  # levels[i - 1] < w <= levels[i]
        candidates[0, :, c] = levels[np.maximum(i - 1, 0)]
        candidates[1, :, c] = levels[np.minimum(i, len(levels) - 1)]
    q, gram = q.copy(), objective.gram
    r = gram @ (q - w) - objective.h  # half the gradient of E
    diagonal = np.diag(gram)
    for i in range(len(w)):
        moves = candidates[:, i] - q[i]  # (candidates, channels)
        gains = 2 * moves * r[i] + moves ** 2 * diagonal[i]
        best = np.argmin(gains, axis=0)
        delta = np.where(gains[best, np.arange(len(best))] < 0.0,
                         moves[best, np.arange(len(best))], 0.0)
        if np.any(delta):
            q[i] += delta
            r += np.outer(gram[:, i], delta)
    return q


def _search(quantizer, kernel, objective: _Objective) -> np.ndarray:
    """Per output channel: the scale on the one-octave grid with the least output error
    (ties: the larger scale, 1.0 first)."""
    w = tf.convert_to_tensor(kernel)
    flat_w = w.numpy().reshape(-1, w.shape[-1]).astype(np.float64)
    errors = []
    scales = 2.0 ** (-np.arange(GRID) / GRID)
    per_channel = quantizer.weight_quantizer.per_channel
    for s in scales:
        scale = tf.constant(np.full(w.shape[-1], s, np.float32) if per_channel else np.float32(s))
        d = np.asarray(quantizer.levels(w, scale), np.float64).reshape(flat_w.shape) - flat_w
        error = objective.error(d)  # per output channel
        errors.append(error if per_channel else np.full(d.shape[1], error.sum()))
    return scales[np.argmin(np.stack(errors), axis=0)]


def _patches(layer, x: np.ndarray) -> np.ndarray:
    """The layer's inputs as rows of its kernel's fan-in: Dense inputs as they are, a
    Conv2D's input patches (kh, kw, in order, as the kernel flattens)."""
    if type(layer).__name__ == "Dense":
        if x.ndim != 2:
            raise TflqError(f"layer {layer.name!r}: post-training optimisation takes Dense "
                            f"layers on flat inputs, not {x.shape[1:]}")
        return x.astype(np.float64)
    kh, kw = layer.kernel_size
    patches = tf.image.extract_patches(
        x, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
        rates=[1, *layer.dilation_rate, 1], padding=layer.padding.upper())
    rows = patches.numpy().reshape(-1, kh * kw * x.shape[-1])
    if len(rows) > MAX_ROWS:  # a random subset of the patches bounds the memory
        rows = rows[np.random.default_rng(0).choice(len(rows), MAX_ROWS, replace=False)]
    return rows.astype(np.float64)
