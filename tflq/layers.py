"""Keras layers tflq adds.

``ProjectionProfiles``: the input reduction of Cai, Takemoto and Nakajo's HiFive1
MNIST classifier ("Weight Quantized DNN on IoT Devices", GCCE/IAIT 2018).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

DIRECTIONS = ("rows", "columns", "diagonals", "anti_diagonals")


def bin_index(height: int, width: int, bins: int) -> np.ndarray:
    """``(4, height, width)`` int array: the bin of each pixel in each direction.

    Direction d groups the image's lines -- rows i, columns j, diagonals
    i - j + (width - 1), anti-diagonals i + j -- into ``bins`` consecutive bins:
    line l of L lines goes to bin floor(l * bins / L).
    """
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    lines = [(i, height), (j, width), (i - j + width - 1, height + width - 1),
             (i + j, height + width - 1)]
    return np.stack([(l * bins) // count for l, count in lines])


def bin_sizes(height: int, width: int, bins: int) -> np.ndarray:
    """``(4 * bins,)``: how many pixels each feature averages."""
    index = bin_index(height, width, bins)
    return np.concatenate([np.bincount(index[d].ravel(), minlength=bins) for d in range(4)])


def profile_matrix(height: int, width: int, bins: int) -> np.ndarray:
    """``(height * width, 4 * bins)`` float32: image (flattened) @ matrix = features."""
    index = bin_index(height, width, bins).reshape(4, -1)
    matrix = np.zeros((height * width, 4 * bins), np.float32)
    for d in range(4):
        matrix[np.arange(height * width), d * bins + index[d]] = 1.0
    return (matrix / bin_sizes(height, width, bins)[None, :]).astype(np.float32)


@keras.utils.register_keras_serializable(package="tflq")
class ProjectionProfiles(keras.layers.Layer):
    r"""Four-direction projection profiles of a grey image.

    For an image :math:`x \in [0, 1]^{H \times W}` and each direction -- rows,
    columns, diagonals (:math:`i - j`) and anti-diagonals (:math:`i + j`) -- the
    direction's L lines are grouped into ``bins`` consecutive bins (line l into bin
    :math:`\lfloor l \cdot bins / L \rfloor`) and each feature is the **mean pixel
    value** of its bin:

    .. math::  f_{d,b} = \frac{1}{n_{d,b}} \sum_{(i,j) \in B_{d,b}} x_{ij}

    so features stay in [0, 1] whatever the bin size. Output: ``(batch, 4 * bins)``,
    ordered rows, columns, diagonals, anti-diagonals. A 28x28 image with 16 bins
    gives 64 features: 784 / 64 = 12.25x fewer inputs, as in the paper.

    On the device the same features come from integer pixel sums
    (``micro/features/projection_profiles.c``; host reference
    ``converters.features.int8_profiles``).
    """

    def __init__(self, bins: int = 16, **kwargs):
        kwargs["trainable"] = False  # a fixed transform: nothing to learn
        super().__init__(**kwargs)
        self.bins = bins

    def build(self, input_shape):
        height, width = int(input_shape[1]), int(input_shape[2])
        self._matrix = tf.constant(profile_matrix(height, width, self.bins))
        super().build(input_shape)

    def call(self, images):
        flat = tf.reshape(tf.cast(images, tf.float32), (tf.shape(images)[0], -1))
        return tf.matmul(flat, self._matrix)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4 * self.bins)

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


def split_features(model: keras.Model) -> tuple[ProjectionProfiles | None, keras.Model]:
    """``(head, body)``: a ``ProjectionProfiles`` first layer and the model after it
    (which takes the profiles as its input), or ``(None, model)``.

    The head is not quantized: the firmware computes it from the raw image in C
    (``micro/features/projection_profiles.c``) before the model runs. Raises
    TflqError if a ProjectionProfiles layer is anywhere but first, or if the image
    also feeds another layer.
    """
    from tflq.errors import TflqError

    inner = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    later = [l.name for l in inner[1:] if isinstance(l, ProjectionProfiles)]
    if later:
        raise TflqError(f"layer {later[0]!r} (ProjectionProfiles) must be the model's first "
                        "layer: the firmware computes it from the image before the model runs")
    if not inner or not isinstance(inner[0], ProjectionProfiles):
        return None, model
    head = inner[0]
    if len(model.inputs) != 1 or any(
            len(l._outbound_nodes) != 1 for l in model.layers
            if isinstance(l, keras.layers.InputLayer)):
        raise TflqError(f"layer {head.name!r} (ProjectionProfiles) must be the only layer "
                        "that reads the model's single input image")
    return head, keras.Model(head.output, model.outputs, name=model.name)


def with_features(head: ProjectionProfiles, body: keras.Model, name: str) -> keras.Model:
    """``body`` behind a copy of ``head``: images in, as the float model took them."""
    inputs = keras.Input(head.input_shape[1:], name="image")
    profiles = ProjectionProfiles.from_config(head.get_config())(inputs)
    return keras.Model(inputs, body(profiles), name=name)


def features_of(model: keras.Model) -> tuple[ProjectionProfiles | None, keras.Model]:
    """The inverse of ``with_features``: ``(head, body)``, or ``(None, model)``."""
    inner = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    if (len(inner) == 2 and isinstance(inner[0], ProjectionProfiles)
            and isinstance(inner[1], keras.Model)):
        return inner[0], inner[1]
    return None, model
