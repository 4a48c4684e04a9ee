"""Device-side input features, as the firmware computes them (host reference).

A model whose first layer is ``tflq.layers.ProjectionProfiles`` converts without it
(``tflq.convert``), and says so in its ``tflq_feature`` metadata: ``describe`` writes
it, ``declared`` reads it (at the firmware stage's entrance, ``converters.model``).

``int8_profiles`` is ``micro/features/projection_profiles.c`` in numpy: integer
pixel sums per bin, then TFLite's fixed-point requantization (the same double
rounding TFLM's kernels use) straight to the model's int8 input. The firmware takes
the raw uint8 image; these are the exact int8 features it feeds the model.
"""
from __future__ import annotations

import json

import numpy as np

from tflq.converters import requantize
from tflq.errors import TflqError
from tflq.layers import bin_index, bin_sizes

METADATA = "tflq_feature"
NAMES = ("projection_profiles",)


def describe(height: int, width: int, bins: int) -> bytes:
    """The ``tflq_feature`` metadata of a model that takes ``bins`` projection profiles
    of ``height`` x ``width`` images."""
    return json.dumps({"feature": "projection_profiles", "height": height, "width": width,
                       "bins": bins}, sort_keys=True).encode()


def declared(data: bytes | None) -> dict | None:
    """The feature a model's ``tflq_feature`` metadata declares, checked; None without it."""
    if data is None:
        return None
    try:
        feature = json.loads(data.decode())
        ok = (isinstance(feature, dict) and feature.get("feature") in NAMES
              and all(isinstance(feature.get(k), int) and 0 < feature[k] <= 4096
                      for k in ("height", "width", "bins"))
              and feature["bins"] <= min(feature["height"], feature["width"]))
    except (UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        raise TflqError(f"metadata {METADATA!r} is not a tflq feature description: "
                        f"{data[:80]!r}")
    return feature


def profile_multipliers(height: int, width: int, bins: int, input_scale: float):
    """Per-feature (multiplier, shift): feature = sum / (255 * n) / input_scale."""
    return [requantize.quantize_multiplier(1.0 / (255.0 * n * input_scale))
            for n in bin_sizes(height, width, bins)]


def int8_profiles(images_uint8: np.ndarray, bins: int, input_scale: float,
                  input_zero_point: int) -> np.ndarray:
    """``(N, 4 * bins)`` int8 features of ``(N, H, W)`` uint8 images."""
    images = np.asarray(images_uint8).astype(np.int64)
    n, height, width = images.shape[:3]
    index = bin_index(height, width, bins).reshape(4, -1)
    flat = images.reshape(n, -1)
    sums = np.concatenate([
        np.stack([np.bincount(index[d], weights=row, minlength=bins) for row in flat])
        for d in range(4)], axis=1).astype(np.int64)
    out = np.empty_like(sums)
    for k, (q, shift) in enumerate(profile_multipliers(height, width, bins, input_scale)):
        out[:, k] = requantize.double_rounding(sums[:, k], q, shift)
    return np.clip(out + input_zero_point, -128, 127).astype(np.int8)
