"""Built-in datasets that need no network.

- ``"fashion_mnist"``: 28x28 grey images from Debian's ``dataset-fashion-mnist``
  package (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``), 60,000 / 10,000.
- ``"digits"``: scikit-learn's bundled 8x8 digits (1,797 images), split 80/20 with
  a fixed seed; small enough for fast tests.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` with images as
float32 in [0, 1] shaped ``(N, H, W, 1)`` and labels as int64.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from tflq.errors import TflqError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
NAMES = ("fashion_mnist", "digits")

Split = tuple[np.ndarray, np.ndarray]


def load(name: str, data_dir: str | None = None) -> tuple[Split, Split]:
    """Returns ``(x_train, y_train), (x_test, y_test)`` for a built-in dataset."""
    if name == "fashion_mnist":
        return _fashion_mnist(data_dir or os.environ.get("TFLQ_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    if name == "digits":
        return _digits()
    raise TflqError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")


def _read_idx(path: str) -> np.ndarray:
    """Reads one gzipped IDX file (the MNIST format: big-endian dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise TflqError(f"{path}: not an unsigned-byte IDX file (header {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise TflqError(f"{path}: truncated: {body.size} bytes of data for dims {dims}")
    return body.reshape(dims)


def _fashion_mnist(data_dir: str) -> tuple[Split, Split]:
    files = {
        "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    paths = {k: os.path.join(data_dir, f) for k, f in files.items()}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise TflqError(
            f"Fashion-MNIST not found: {missing[0]} is missing. Install Debian's package "
            "with `apt-get install dataset-fashion-mnist`, or set TFLQ_FASHION_MNIST_DIR "
            "to a folder holding the four *-ubyte.gz files.")
    arrays = {k: _read_idx(p) for k, p in paths.items()}
    images = lambda a: (a.astype(np.float32) / 255.0)[..., None]  # noqa: E731
    return ((images(arrays["x_train"]), arrays["y_train"].astype(np.int64)),
            (images(arrays["x_test"]), arrays["y_test"].astype(np.int64)))


def _digits() -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return (x[train], y[train]), (x[test], y[test])
