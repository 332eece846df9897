"""Property tests (hypothesis) on small random arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nnunet_plus.postprocessing import liver_max, match_lesions, multi_sensitivity_labels, seg2det

SETTINGS = settings(max_examples=50, deadline=None)

# the 3D structuring element equivalent to each connectivity
_PAPER = np.zeros((3, 3, 3), dtype=bool)
_PAPER[1] = True
_PAPER[0, 1, 1] = _PAPER[2, 1, 1] = True
STRUCTURES = {
    "paper": _PAPER,
    6: ndi.generate_binary_structure(3, 1),
    18: ndi.generate_binary_structure(3, 2),
    26: ndi.generate_binary_structure(3, 3),
}

shapes = st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7))
label_maps = shapes.flatmap(lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 4)))
spacings = st.tuples(*(st.floats(0.3, 4.0) for _ in range(3)))


def _probabilities(label_map: np.ndarray, seed: int, channels: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).random((channels, *label_map.shape), dtype=np.float32)


@SETTINGS
@given(label_map=label_maps, connectivity=st.sampled_from(["paper", 6, 18, 26]))
def test_instances_equal_scipy_label_with_the_equivalent_structure(label_map, connectivity):
    mask = np.isin(label_map, [2, 3])
    expected, count = ndi.label(mask, structure=STRUCTURES[connectivity])
    detections = seg2det(label_map, [2, 3], connectivity=connectivity)
    assert len(detections.lesions) == count
    np.testing.assert_array_equal(detections.instances, expected)      # same ids, raster order


@SETTINGS
@given(label_map=label_maps, spacing=spacings, connectivity=st.sampled_from(["paper", 26]))
def test_instance_volumes_sum_to_the_lesion_mask_volume(label_map, spacing, connectivity):
    detections = seg2det(label_map, [2, 3, 4], spacing=spacing, connectivity=connectivity)
    mask_volume = np.isin(label_map, [2, 3, 4]).sum() * spacing[0] * spacing[1] * spacing[2]
    assert sum(r["volume_mm3"] for r in detections.lesions) == pytest.approx(mask_volume)


@SETTINGS
@given(label_map=label_maps, spacing=spacings)
def test_axial_diameter_equals_brute_force(label_map, spacing):
    detections = seg2det(label_map, [2, 3], spacing=spacing)
    for record in detections.lesions:
        voxels = np.argwhere(detections.instances == record["id"])
        best = 0.0
        for z in np.unique(voxels[:, 0]):
            points = voxels[voxels[:, 0] == z][:, 1:] * np.array(spacing[1:])
            best = max(best, float(np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max()))
        assert record["axial_diameter_mm"] == pytest.approx(best, abs=1e-9)
        assert record["sphere_diameter_mm"] == pytest.approx((6 * record["volume_mm3"] / math.pi) ** (1 / 3))


@SETTINGS
@given(label_map=label_maps, seed=st.integers(0, 2 ** 16))
def test_maps_are_argmax_of_the_scaled_softmax_and_higher_factors_only_add_lesion_voxels(label_map, seed):
    rng = np.random.default_rng(seed)
    # quantised probabilities: many exact ties; powers of two: the scaled reference is exact
    probabilities = (rng.integers(0, 4, (5, *label_map.shape)) / 4).astype(np.float32)
    factors = [1, 2, 4]
    maps = multi_sensitivity_labels(probabilities, [2, 3], factors, chunk_slices=int(rng.integers(1, 4)))
    for i, factor in enumerate(factors):
        scaled = probabilities.copy()
        scaled[[2, 3]] *= factor
        np.testing.assert_array_equal(maps[i], np.argmax(scaled, axis=0))
    lesion = np.isin(maps, [2, 3])
    assert not np.any(lesion[0] & ~lesion[1]) and not np.any(lesion[1] & ~lesion[2])


@SETTINGS
@given(label_map=label_maps, seed=st.integers(0, 2 ** 16))
def test_functions_never_modify_their_inputs(label_map, seed):
    probabilities = _probabilities(label_map, seed)
    image = np.random.default_rng(seed).normal(40, 10, label_map.shape)
    before = (label_map.copy(), probabilities.copy(), image.copy())
    multi_sensitivity_labels(probabilities, [2, 3], [1, 4])
    detections = seg2det(label_map, [2, 3], probabilities=probabilities, image=image, min_volume_mm3=2.0)
    other = seg2det(label_map, [3, 4], connectivity=6)
    instances = (detections.instances.copy(), other.instances.copy())
    match_lesions(detections.instances, detections.labels(), other.instances, other.labels(),
                  criterion="dice:0.2")
    liver_max(probabilities, label_map, liver_labels=[1], lesion_labels=[2, 3], dilate_mm=1.0)
    for after, original in zip((label_map, probabilities, image, detections.instances, other.instances),
                                (*before, *instances)):
        np.testing.assert_array_equal(after, original)


@SETTINGS
@given(label_map=label_maps)
def test_match_counts_are_consistent(label_map):
    reference = seg2det(label_map, [2, 3])
    predicted = seg2det(label_map, [3, 4], connectivity=26)
    result = match_lesions(reference.instances, reference.labels(), predicted.instances, predicted.labels())
    counts = result.counts()
    assert counts["tp"] + counts["fl"] + counts["fn"] == len(reference.lesions)
    assert counts["tp"] + counts["fl"] + counts["fp"] == len(predicted.lesions)
    assert len({r for r, _ in result.pairs}) == len({p for _, p in result.pairs}) == len(result.pairs)
