"""data=digits read from the digits.csv.gz scikit-learn ships, without importing scikit-learn: the same arrays as
sklearn.datasets.load_digits, bit for bit, in a fresh process that never imports it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from engine.sources.data import digits_arrays


def test_digits_are_load_digits_bit_for_bit() -> None:
    from sklearn.datasets import load_digits

    images, target = digits_arrays()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and target.dtype == bunch.target.dtype
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(target, bunch.target)


def test_reading_digits_does_not_import_sklearn() -> None:
    code = ("import sys; from engine.sources.data import digits_arrays; x, y = digits_arrays(); "
            "print(x.shape, len(set(y.tolist())), 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["(1797,", "8,", "8)", "10", "False"]
