"""Built-in datasets load from local packages with the documented shapes."""
import numpy as np

from tflq import datasets


def test_fashion_mnist_from_the_debian_package():
    (x_train, y_train), (x_test, y_test) = datasets.load("fashion_mnist")
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() == 1
    assert sorted(np.unique(y_test)) == list(range(10))
    assert np.bincount(y_test).tolist() == [1000] * 10  # the published test split


def test_digits_split_is_fixed():
    (x_train, y_train), (x_test, y_test) = datasets.load("digits")
    assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
    (x_again, _), _ = datasets.load("digits")
    np.testing.assert_array_equal(x_train, x_again)
