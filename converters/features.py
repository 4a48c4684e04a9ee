"""Device-side input features, as the firmware computes them (host reference).

``int8_profiles`` is ``micro/features/projection_profiles.c`` in numpy: integer
pixel sums per bin, then TFLite's fixed-point requantization (the same double
rounding TFLM's kernels use) straight to the model's int8 input. The firmware takes
the raw uint8 image; these are the exact int8 features it feeds the model.
"""
from __future__ import annotations

import numpy as np

from tflq.converters import requantize
from tflq.layers import bin_index, bin_sizes


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
