"""multi_sensitivity_labels: exact argmax semantics (ties included), factors, dtypes, torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_plus.postprocessing import multi_sensitivity_labels

# label dicts -> lesion label values (lesions contiguous or interleaved with organs)
LABEL_SETS = {
    "contiguous": ({"background": 0, "liver": 1, "hcc": 2, "cyst": 3, "spleen": 4}, [2, 3]),
    "interleaved": ({"background": 0, "hcc": 1, "liver": 2, "cyst": 3, "spleen": 4}, [1, 3]),
}


def _tied_probabilities(num_channels: int, seed: int, shape=(5, 7, 6)) -> np.ndarray:
    """Softmax-like array drawn from a few values, so that argmax ties are everywhere."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([0.0, 0.125, 0.25, 0.5], dtype=np.float32), size=(num_channels, *shape))


def _reference(probabilities: np.ndarray, lesions, factor: float) -> np.ndarray:
    scaled = probabilities.astype(np.float32)
    scaled[lesions] *= np.float32(factor)
    return np.argmax(scaled, axis=0)


@pytest.mark.parametrize("label_set", sorted(LABEL_SETS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("as_torch", [False, True])
def test_factor_one_is_nnunet_segmentation_with_ties(label_set, dtype, as_torch):
    labels, lesions = LABEL_SETS[label_set]
    manager = LabelManager(labels, regions_class_order=None)
    probabilities = _tied_probabilities(len(labels), seed=1).astype(dtype)
    expected = manager.convert_probabilities_to_segmentation(probabilities.astype(np.float32))
    given = torch.from_numpy(probabilities) if as_torch else probabilities
    result = multi_sensitivity_labels(given, lesions, [1.0])
    if as_torch:
        assert isinstance(result, torch.Tensor) and result.dtype == torch.uint8
        result = result.numpy()
    assert result.dtype == np.uint8 and result.shape == (1, *probabilities.shape[1:])
    np.testing.assert_array_equal(result[0], expected)


@pytest.mark.parametrize(
    "voxel, lesions, factor, expected",
    [
        # background 0.5, liver 0.25, hcc (2) 0.25: 2 * 0.25 == 0.5 ties with the lower background -> 0
        ([0.5, 0.25, 0.25], [2], 2.0, 0),
        ([0.5, 0.25, 0.25], [2], 1.999, 0),
        ([0.5, 0.25, 0.25], [2], 2.001, 2),
        # lesion label 1 below organ label 2: the tie goes to the lesion (lower index)
        ([0.25, 0.25, 0.5], [1], 2.0, 1),
        ([0.25, 0.25, 0.5], [1], 1.999, 2),
        # two lesion channels tied: the lower lesion label wins whatever the factor
        ([0.2, 0.4, 0.4], [1, 2], 1.0, 1),
        ([0.5, 0.2, 0.2], [1, 2], 4.0, 1),
        # weak lesion: liver 0.6, hcc 0.2 -> liver at f = 1 and 2, hcc at f = 4
        ([0.1, 0.6, 0.2, 0.1], [2, 3], 1.0, 1),
        ([0.1, 0.6, 0.2, 0.1], [2, 3], 2.0, 1),
        ([0.1, 0.6, 0.2, 0.1], [2, 3], 4.0, 2),
    ],
)
def test_single_voxel_hand_computed(voxel, lesions, factor, expected):
    probabilities = np.array(voxel, dtype=np.float32).reshape(-1, 1, 1, 1)
    assert multi_sensitivity_labels(probabilities, lesions, [factor])[0, 0, 0, 0] == expected


def test_weak_lesion_appears_only_at_high_sensitivity():
    # 3 x 4 x 4 volume: liver everywhere, a weak 2x2 hcc spot in slice 1 and a confident cyst voxel
    probabilities = np.zeros((4, 3, 4, 4), dtype=np.float32)
    probabilities[1] = 0.9
    probabilities[0] = 0.1
    probabilities[:, 1, 1:3, 1:3] = np.array([0.1, 0.6, 0.2, 0.1])[:, None, None]
    probabilities[:, 2, 0, 0] = np.array([0.0, 0.2, 0.0, 0.8])
    maps = multi_sensitivity_labels(probabilities, [2, 3], [1, 4])
    assert maps.shape == (2, 3, 4, 4)
    expected_base = np.ones((3, 4, 4), dtype=np.uint8)
    expected_base[2, 0, 0] = 3
    expected_high = expected_base.copy()
    expected_high[1, 1:3, 1:3] = 2
    np.testing.assert_array_equal(maps[0], expected_base)
    np.testing.assert_array_equal(maps[1], expected_high)


@pytest.mark.parametrize("factors", [[1, 4], [4, 1], [0.5, 1, 2, 3, 8]])
@pytest.mark.parametrize("chunk_slices", [1, 2, 100])
def test_maps_follow_factor_order_and_do_not_depend_on_chunking(factors, chunk_slices):
    rng = np.random.default_rng(7)
    probabilities = rng.random((6, 5, 4, 3), dtype=np.float32)
    maps = multi_sensitivity_labels(probabilities, [2, 4, 5], factors, chunk_slices=chunk_slices)
    for i, factor in enumerate(factors):
        np.testing.assert_array_equal(maps[i], _reference(probabilities, [2, 4, 5], factor))


def test_raising_the_factor_never_removes_a_lesion_voxel():
    probabilities = _tied_probabilities(5, seed=3, shape=(6, 8, 8))
    factors = [0.5, 1, 1.5, 2, 4, 8]
    maps = multi_sensitivity_labels(probabilities, [2, 3], factors)
    lesion = np.isin(maps, [2, 3])
    for low, high in zip(lesion[:-1], lesion[1:]):
        assert not np.any(low & ~high)


def test_float16_is_computed_in_float32():
    rng = np.random.default_rng(11)
    probabilities = rng.random((5, 4, 6, 6)).astype(np.float16)
    maps = multi_sensitivity_labels(probabilities, [2, 3], [1, 3, 4])
    for i, factor in enumerate([1, 3, 4]):
        np.testing.assert_array_equal(maps[i], _reference(probabilities, [2, 3], factor))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torch_cpu_equals_numpy(dtype):
    rng = np.random.default_rng(5)
    probabilities = torch.from_numpy(rng.random((5, 3, 4, 5), dtype=np.float32)).to(dtype)
    result = multi_sensitivity_labels(probabilities, [1, 3], [1, 4])
    expected = multi_sensitivity_labels(probabilities.numpy(), [1, 3], [1, 4])
    assert result.device == probabilities.device
    np.testing.assert_array_equal(result.numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_gpu_stays_on_device():
    probabilities = torch.from_numpy(_tied_probabilities(5, seed=2)).cuda()
    result = multi_sensitivity_labels(probabilities, [2, 3], [1, 4])
    assert result.is_cuda
    np.testing.assert_array_equal(result.cpu().numpy(),
                                  multi_sensitivity_labels(probabilities.cpu().numpy(), [2, 3], [1, 4]))


def test_input_is_not_modified():
    probabilities = _tied_probabilities(5, seed=4)
    before = probabilities.copy()
    multi_sensitivity_labels(probabilities, [2, 3], [1, 4])
    np.testing.assert_array_equal(probabilities, before)


@pytest.mark.parametrize(
    "shape, lesions, factors, message",
    [
        ((3, 4, 4), [1], [1], "shape"),
        ((3, 2, 4, 4), [], [1], "empty"),
        ((3, 2, 4, 4), [3], [1], "not channels"),
        ((3, 2, 4, 4), [1, 1], [1], "twice"),
        ((2, 2, 4, 4), [0, 1], [1], "background"),
        ((3, 2, 4, 4), [1], [0], "positive"),
        ((3, 2, 4, 4), [1], [], "positive"),
    ],
)
def test_bad_input_raises_value_error(shape, lesions, factors, message):
    with pytest.raises(ValueError, match=message):
        multi_sensitivity_labels(np.zeros(shape, dtype=np.float32), lesions, factors)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 0, 5, 5)])
def test_empty_volume(shape):
    probabilities = np.zeros(shape, dtype=np.float32)
    probabilities[0] = 1.0                              # background everywhere (or no voxel at all)
    maps = multi_sensitivity_labels(probabilities, [2, 3], [1, 2, 4])
    assert maps.shape == (3, *shape[1:]) and not maps.any()
