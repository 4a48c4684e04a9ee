r"""Data-free quantization (DFQ; Nagel, van Baalen, Blankevoort, Welling, "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019).

``quantize_model(model, scheme, data_free=True, input_range=(low, high))`` quantizes
with no calibration data at all. Everything comes from the float model: its weights
and the statistics its BatchNormalization layers learnt in training.

**Cross-layer equalization** (§4.1). Scaling output channel i of a layer by 1/s_i and
the matching input channel of the next layer by s_i leaves the network's function
unchanged when what lies between is positively homogeneous per channel:
ReLU(x/s) = ReLU(x)/s, and the same for max and average pooling, flattening and
padding. With :math:`r^{(1)}_i` the range max|W| of channel i in the first layer's
output and :math:`r^{(2)}_i` that of input channel i in the second's,

.. math::  s_i = \sqrt{r^{(1)}_i / r^{(2)}_i}

makes both ranges :math:`\sqrt{r^{(1)}_i r^{(2)}_i}`. This matters most where one step
is shared by channels of very different ranges: per-tensor weights, above all the
depthwise kernels of a depthwise-separable model, after BatchNorm folding has
multiplied each channel by its own γ/σ. ``equalize`` repeats it over every chain of
Conv2D / DepthwiseConv2D / Dense pairs until the scales settle (``SWEEPS``).

**Statistics from BatchNorm** (§4.2). A layer followed by a BatchNormalization has
pre-activations of mean β and standard deviation |γ| per channel (the distribution BN
was trained to produce). tflq carries them forward through the float model: through a
ReLU (ReLU6) as the mean and variance of a Gaussian clipped to [0, ∞) ([0, 6]);
exactly for the mean through Dense, Conv2D and DepthwiseConv2D; for the variance
assuming independent inputs; unchanged through pooling (an underestimate of the mean
after max pooling), flattening and padding. The model's input is taken as uniform on
``input_range``, which no statistic can give.

**Activation ranges** from these statistics: each channel's pre-activation range
μ ± ``NUM_SIGMA``·σ, through its activation function; a tensor's range is the union
over its channels. The input's range is ``input_range``.

**Bias correction** (§4.2, the analytic form). A layer whose input mean E[x] is known
from BatchNorm statistics (every layer but those reading the model's input) gets

.. math::  b_c \leftarrow b_c - \mathbb{E}[x]^\top (q(W_c) - W_c)

summed over the kernel's spatial positions (padding ignored), as
``tflq.post_training`` does with the calibration data's mean.

Weight ranges depend on the weights only: tfmot's own quantizers set them in one
training-mode pass over a zero input, whose activation ranges are then replaced.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tf_keras as keras

from tflq.errors import TflqError

SWEEPS = 20        # rounds of equalization over every chain
NUM_SIGMA = 6.0    # a channel's range is mean ± NUM_SIGMA standard deviations
_WEIGHTED = ("Conv2D", "DepthwiseConv2D", "Dense")
# Between two weighted layers: positively homogeneous per channel, channels kept.
_PASS = ("MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
         "Dropout", "ZeroPadding2D", "Flatten")


@dataclasses.dataclass
class Stats:
    """Per channel (the last axis) of a tensor: mean, standard deviation, and range;
    ``from_bn``: derived from BatchNorm statistics (not from the input's guess)."""
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    from_bn: bool


def bn_statistics(model: keras.Model) -> dict:
    """``{layer_name: (mean, std)}`` of the pre-activations of each Conv2D /
    DepthwiseConv2D / Dense that a BatchNormalization follows (β and |γ|)."""
    found = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        source = _inputs(layer)
        if len(source) != 1 or type(source[0]).__name__ not in _WEIGHTED:
            continue
        channels = layer.moving_mean.shape[0]
        beta = layer.beta.numpy() if layer.center else np.zeros(channels)
        gamma = layer.gamma.numpy() if layer.scale else np.ones(channels)
        found[source[0].name] = (beta.astype(np.float64), np.abs(gamma).astype(np.float64))
    return found


def equalize(folded: keras.Model, statistics: dict | None = None) -> list:
    """Cross-layer equalization of ``folded`` (BatchNorm folded, ReLUs fused), in place;
    ``statistics`` (from ``bn_statistics``) are rescaled with their layers. Returns the
    (first, second) layer-name pairs it equalized."""
    pairs = _pairs(folded)
    for _ in range(SWEEPS):
        for first, second, rows in pairs:
            w1, w2 = _kernel(first), _kernel(second)
            r1 = _output_ranges(first, w1)
            r2 = np.array([np.abs(_input_slice(second, w2, r)).max() for r in rows])
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            _scale_outputs(first, w1, 1.0 / s)
            _scale_inputs(second, w2, rows, s)
            if statistics and first.name in statistics:
                mean, std = statistics[first.name]
                statistics[first.name] = (mean / s, std / s)
    return [(a.name, b.name) for a, b, _ in pairs]


def propagate(folded: keras.Model, statistics: dict, input_range) -> dict:
    """``{layer_name: Stats}`` of every layer's output of ``folded``, from
    BatchNorm ``statistics`` and the input taken as uniform on ``input_range``."""
    low, high = (float(v) for v in input_range)
    out = {}
    for layer in _layers(folded):
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.InputLayer):
            c = layer.output_shape[0][-1] if isinstance(layer.output_shape, list) else layer.output_shape[-1]
            full = lambda v: np.full(c, v, np.float64)  # noqa: E731
            out[layer.name] = Stats(full((low + high) / 2), full((high - low) / math.sqrt(12)),
                                    full(low), full(high), False)
            continue
        inputs = [out[l.name] for l in _inputs(layer)]
        if kind in _WEIGHTED:
            x = inputs[0]
            if layer.name in statistics:
                mean, std = statistics[layer.name]
                from_bn = True
            else:
                mean, std = _linear(layer, x)
                from_bn = x.from_bn
            out[layer.name] = _activate(layer, layer.get_config().get("activation", "linear"),
                                        mean, std, from_bn)
        elif kind in ("ReLU", "Activation"):
            x = inputs[0]
            activation = layer.get_config().get("activation", "relu") if kind == "Activation" \
                else _relu_name(layer)
            clipped = _activate(layer, activation, x.mean, x.std, x.from_bn)
            clipped.low = _apply(activation, x.low)
            clipped.high = _apply(activation, x.high)
            out[layer.name] = clipped
        elif kind in _PASS:
            x = inputs[0]
            if kind == "Flatten":
                repeat = int(np.prod(layer.input_shape[1:-1]))
                x = Stats(*(np.tile(v, repeat) for v in (x.mean, x.std, x.low, x.high)), x.from_bn)
            out[layer.name] = x
        elif kind == "Add":
            out[layer.name] = Stats(sum(x.mean for x in inputs),
                                    np.sqrt(sum(x.std ** 2 for x in inputs)),
                                    sum(x.low for x in inputs), sum(x.high for x in inputs),
                                    all(x.from_bn for x in inputs))
        elif kind == "Concatenate":
            out[layer.name] = Stats(*(np.concatenate([getattr(x, f) for x in inputs])
                                      for f in ("mean", "std", "low", "high")),
                                    all(x.from_bn for x in inputs))
        else:
            raise TflqError(f"data-free quantization cannot carry activation statistics "
                            f"through layer {layer.name!r} ({kind}); give calibration_data "
                            "instead")
    return out


def calibrate(qat_model: keras.Model, folded: keras.Model, statistics: dict, input_range,
              bias_correction: bool = True) -> None:
    """Sets ``qat_model``'s ranges from ``folded``'s statistics and corrects its biases."""
    from tflq import calibration
    from tflq.qat import quantized_kernels

    low, high = _input_range(input_range)
    stats = propagate(folded, statistics, (low, high))
    # Weight ranges: tfmot's quantizers, one training-mode pass (any input will do).
    calibration.calibrate(qat_model, np.zeros((1, *qat_model.input_shape[1:]), np.float32))
    if bias_correction:
        for wrapper, kernel, quantizer, variables in quantized_kernels(qat_model):
            layer = wrapper.layer
            x = stats[_inputs(folded.get_layer(layer.name))[0].name]
            if not x.from_bn or not layer.use_bias:
                continue
            error = np.asarray(quantizer(kernel, False, variables), np.float64) - kernel.numpy()
            layer.bias.assign((layer.bias.numpy() - _shift(layer, error, x.mean)).astype(np.float32))
    for layer in qat_model.layers:
        variables = [v for v in layer.non_trainable_weights
                     if v.name.endswith(("_min:0", "_max:0")) and "kernel_m" not in v.name]
        if not variables:
            continue
        if isinstance(layer, keras.layers.InputLayer) or type(layer).__name__ == "QuantizeLayer":
            lo, hi = low, high
        else:
            s = stats.get(layer.layer.name)
            if s is None:
                raise TflqError(f"data-free quantization found no statistics for layer "
                                f"{layer.layer.name!r}; give calibration_data instead")
            lo, hi = float(min(s.low.min(), 0.0)), float(max(s.high.max(), 0.0))
        for v in variables:
            v.assign(np.full(v.shape, lo if v.name.endswith("_min:0") else hi, np.float32))


def _input_range(input_range):
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise TflqError(f"input_range must be (low, high), the range of the model's inputs, "
                        f"not {input_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise TflqError(f"input_range must be finite with low < high, not {input_range!r}")
    return low, high


# -- statistics through one layer --------------------------------------------------------

def _linear(layer, x: Stats):
    """Mean (exact) and standard deviation (inputs independent) of a layer's
    pre-activations."""
    w = _kernel(layer)
    kind = type(layer).__name__
    bias = layer.bias.numpy() if layer.use_bias else 0.0
    if kind == "Dense":
        return x.mean @ w + bias, np.sqrt((x.std ** 2) @ (w ** 2))
    if kind == "Conv2D":
        return (np.einsum("c,hwco->o", x.mean, w) + bias,
                np.sqrt(np.einsum("c,hwco->o", x.std ** 2, w ** 2)))
    flat = w.reshape(-1, w.shape[2] * w.shape[3])  # depthwise: output in * mult + m
    rep = lambda v: np.repeat(v, w.shape[3])  # noqa: E731
    return rep(x.mean) * flat.sum(0) + bias, np.sqrt(rep(x.std ** 2) * (flat ** 2).sum(0))


def _relu_name(layer) -> str:
    config = layer.get_config()
    if config.get("negative_slope") or config.get("threshold"):
        raise TflqError(f"data-free quantization cannot carry statistics through layer "
                        f"{layer.name!r} (a leaky or thresholded ReLU); give calibration_data")
    return {None: "relu", 6: "relu6", 6.0: "relu6"}.get(config.get("max_value"), "unknown")


def _activate(layer, activation: str, mean, std, from_bn: bool) -> Stats:
    """Stats of activation(x) for x ~ N(mean, std²) per channel."""
    bounds = {"linear": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}
    if activation not in bounds:
        raise TflqError(f"data-free quantization cannot carry statistics through layer "
                        f"{layer.name!r}'s activation {activation!r}; give calibration_data")
    a, b = bounds[activation]
    low, high = mean - NUM_SIGMA * std, mean + NUM_SIGMA * std
    m, s = _clipped_normal(np.asarray(mean, np.float64), np.asarray(std, np.float64), a, b)
    return Stats(m, s, np.clip(low, a, b), np.clip(high, a, b), from_bn)


def _apply(activation: str, v):
    return {"linear": v, "relu": np.maximum(v, 0), "relu6": np.clip(v, 0, 6)}[activation]


def _clipped_normal(mu, sigma, a: float, b: float):
    """Mean and standard deviation of clip(x, a, b) for x ~ N(mu, sigma²)."""
    sigma = np.maximum(sigma, 1e-12)
    cdf = np.vectorize(lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) if np.isfinite(z)
                       else (1.0 if z > 0 else 0.0))
    pdf = lambda z: np.where(np.isfinite(z), np.exp(-0.5 * np.where(np.isfinite(z), z, 0) ** 2)  # noqa: E731
                             / math.sqrt(2 * math.pi), 0.0)
    alpha, beta = (a - mu) / sigma, (b - mu) / sigma
    pa, pb, fa, fb = cdf(alpha), cdf(beta), pdf(alpha), pdf(beta)
    za = np.where(np.isfinite(alpha), alpha, 0.0) * fa
    zb = np.where(np.isfinite(beta), beta, 0.0) * fb
    fa_term = np.where(np.isfinite(a), a, 0.0)
    fb_term = np.where(np.isfinite(b), b, 0.0)
    mean = fa_term * pa + fb_term * (1 - pb) + mu * (pb - pa) + sigma * (fa - fb)
    second = (fa_term ** 2 * pa + fb_term ** 2 * (1 - pb) + mu ** 2 * (pb - pa)
              + 2 * mu * sigma * (fa - fb) + sigma ** 2 * ((pb - pa) + za - zb))
    return mean, np.sqrt(np.maximum(second - mean ** 2, 0.0))


def _shift(layer, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """E[x]ᵀ (q(W) - W) per output channel."""
    kind = type(layer).__name__
    if kind == "Dense":
        return mean @ error
    if kind == "Conv2D":
        return np.einsum("c,hwco->o", mean, error)
    return np.repeat(mean, error.shape[3]) * error.reshape(-1, error.shape[2] * error.shape[3]).sum(0)


# -- equalization pairs ------------------------------------------------------------------

def _layers(model):
    """``model``'s layers, InputLayer(s) first, in graph order."""
    inputs = [l for l in model.layers if isinstance(l, keras.layers.InputLayer)]
    if not inputs:  # a Sequential model's InputLayer is not in .layers
        inputs = [model._input_layers[0]] if getattr(model, "_input_layers", None) else []
    return inputs + [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]


def _inputs(layer) -> list:
    inbound = layer._inbound_nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _consumers(layer) -> list:
    return [node.outbound_layer for node in layer._outbound_nodes]


def _pairs(folded) -> list:
    """(first, second, rows) for each weighted layer whose output reaches exactly one
    weighted layer through per-channel homogeneous layers and nothing else; ``rows``:
    for each output channel of ``first``, the indices of ``second``'s input it feeds."""
    pairs = []
    for first in folded.layers:
        if type(first).__name__ not in _WEIGHTED:
            continue
        if first.get_config().get("activation") not in ("linear", "relu"):
            continue
        if type(first).__name__ == "DepthwiseConv2D" and _kernel(first).shape[3] != 1:
            continue
        channels = len(_output_ranges(first, _kernel(first)))
        layer, repeat = first, 1
        while True:
            after = _consumers(layer)
            if len(after) != 1 or len(_inputs(after[0])) != 1:
                break
            layer = after[0]
            kind = type(layer).__name__
            if kind in _WEIGHTED:
                if kind == "DepthwiseConv2D" and _kernel(layer).shape[3] != 1:
                    break
                index = np.arange(channels * repeat).reshape(repeat, channels)
                pairs.append((first, layer, [index[:, i] for i in range(channels)]))
                break
            if kind == "Flatten":
                repeat *= int(np.prod(layer.input_shape[1:-1]))
            elif kind == "ReLU":
                config = layer.get_config()  # ReLU(x / s) = ReLU(x) / s: no slope, threshold, cap
                if (config.get("negative_slope") or config.get("threshold")
                        or config.get("max_value") is not None):
                    break
            elif kind not in _PASS:
                break
    return pairs


def _kernel_variable(layer):
    return layer.depthwise_kernel if type(layer).__name__ == "DepthwiseConv2D" else layer.kernel


def _kernel(layer) -> np.ndarray:
    return _kernel_variable(layer).numpy()


def _output_ranges(layer, w: np.ndarray) -> np.ndarray:
    return np.abs(w.reshape(-1, w.shape[-1] if type(layer).__name__ != "DepthwiseConv2D"
                            else w.shape[2] * w.shape[3])).max(0)


def _input_slice(layer, w: np.ndarray, rows):
    kind = type(layer).__name__
    if kind == "Dense":
        return w[rows, :]
    return w[:, :, rows, :]


def _scale_outputs(layer, w: np.ndarray, factor: np.ndarray) -> None:
    shape = (w.shape[2], 1) if type(layer).__name__ == "DepthwiseConv2D" else (w.shape[-1],)
    _kernel_variable(layer).assign((w * factor.reshape(shape)).astype(np.float32))
    if layer.use_bias:
        layer.bias.assign((layer.bias.numpy() * factor).astype(np.float32))


def _scale_inputs(layer, w: np.ndarray, rows, factor: np.ndarray) -> None:
    w = w.copy()
    for r, f in zip(rows, factor):
        if type(layer).__name__ == "Dense":
            w[r, :] *= f
        else:
            w[:, :, r, :] *= f
    _kernel_variable(layer).assign(w.astype(np.float32))
