"""Quantization schemes: which quantizer each layer's weights and activations get.

``"int8"`` is the integer-only scheme of Jacob et al. 2017 ("Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"):
int8 symmetric weights, int8 asymmetric activations, 32-bit biases, BatchNorm
folded, ReLU fused. Low-bit weight schemes build on it.
"""
from __future__ import annotations

import dataclasses

from tflq.errors import TflqError

NAMES = ("int8",)


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A scheme: a weight quantizer for Conv2D / DepthwiseConv2D / Dense kernels."""

    weights: str = "int8"


def resolve(scheme) -> Scheme:
    """Returns a Scheme for a scheme name or Scheme; raises TflqError otherwise."""
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, str) and scheme in NAMES:
        return Scheme(weights=scheme)
    raise TflqError(f"unknown scheme {scheme!r}: choose one of {', '.join(NAMES)}")
