"""The one reader of nnU-Net's exported probabilities (nnunet_plus.files.safe_load.load_softmax): no pickle, and a
one-line error naming the file for anything that is not a finite (C, Z, Y, X) array."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_plus.files.safe_load import load_softmax


def test_reads_a_softmax_export(tmp_path):
    probabilities = np.random.default_rng(0).random((3, 2, 4, 5)).astype(np.float32)
    np.savez_compressed(tmp_path / "case.npz", probabilities=probabilities)
    np.testing.assert_array_equal(load_softmax(tmp_path / "case.npz"), probabilities)


@pytest.mark.parametrize("content, message", [
    ({"probabilities": np.array([object()], dtype=object)}, "cannot be read as nnU-Net probabilities"),
    ({"softmax": np.zeros((2, 2, 2, 2))}, "has no 'probabilities' array"),
    ({"probabilities": np.zeros((2, 2, 2))}, r"must be \(C, Z, Y, X\)"),
    ({"probabilities": np.full((2, 2, 2, 2), np.nan)}, "NaN or infinite"),
    (b"not a zip file", "cannot be read as nnU-Net probabilities"),
])
def test_bad_exports_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "case.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, **content)
    with pytest.raises(ValueError, match=message) as error:
        load_softmax(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
