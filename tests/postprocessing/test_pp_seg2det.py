"""seg2det: connectivity, class vote, physical measures, HU / softmax statistics, filtering, errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_plus.postprocessing import RECORD_KEYS, seg2det


def _volume(shape, voxels, label=2) -> np.ndarray:
    label_map = np.zeros(shape, dtype=np.uint8)
    for voxel in voxels:
        label_map[voxel] = label
    return label_map


@pytest.mark.parametrize(
    "voxels, expected",
    [
        # only a corner is shared across slices: one lesion only with 26-connectivity
        ([(0, 1, 1), (1, 2, 2)], {"paper": 2, 6: 2, 18: 2, 26: 1}),
        # an edge across slices (same x, y differs)
        ([(0, 1, 1), (1, 2, 1)], {"paper": 2, 6: 2, 18: 1, 26: 1}),
        # diagonal inside one axial slice: 8-connected in plane
        ([(0, 1, 1), (0, 2, 2)], {"paper": 1, 6: 2, 18: 1, 26: 1}),
        # same pixel in consecutive slices
        ([(0, 1, 1), (1, 1, 1)], {"paper": 1, 6: 1, 18: 1, 26: 1}),
        # diagonal in slice 0, then straight up into slice 1
        ([(0, 1, 1), (0, 2, 2), (1, 2, 2)], {"paper": 1, 6: 2, 18: 1, 26: 1}),
    ],
)
@pytest.mark.parametrize("connectivity", ["paper", 6, 18, 26])
def test_connectivity(voxels, expected, connectivity):
    detections = seg2det(_volume((3, 4, 4), voxels), [2], connectivity=connectivity)
    assert len(detections.lesions) == expected[connectivity]
    assert detections.instances.max() == expected[connectivity]


@pytest.mark.parametrize(
    "shape, voxels",
    [
        ((2, 3, 3), [(0, 2, 0), (1, 0, 0)]),   # lesions touch the first and the last row
        ((2, 4, 3), [(0, 3, 0), (1, 1, 0)]),   # lesions touch the last row but not the first
        ((2, 4, 3), [(0, 0, 0), (1, 2, 0)]),   # lesions touch the first row but not the last
    ],
)
def test_paper_connectivity_never_links_the_bottom_of_a_slice_to_the_top_of_the_next(shape, voxels):
    assert len(seg2det(_volume(shape, voxels), [2], connectivity="paper").lesions) == 2


def test_lesions_are_the_union_of_all_lesion_classes():
    label_map = np.zeros((1, 3, 6), dtype=np.uint8)
    label_map[0, 1, 1:3] = 2
    label_map[0, 1, 3:5] = 3          # touches the hcc part: one lesion
    label_map[0, 0, 0] = 1            # liver is not a lesion
    detections = seg2det(label_map, [2, 3])
    assert len(detections.lesions) == 1
    assert detections.lesions[0]["n_voxels"] == 4


@pytest.mark.parametrize(
    "labels, lesion_labels, priority, expected",
    [
        ([2, 2, 2, 3, 3], [2, 3], None, 2),        # plain majority
        ([2, 3, 3, 3, 2], [2, 3], None, 3),
        ([2, 2, 3, 3], [2, 3], None, 2),           # tie -> first lesion label by default
        ([2, 2, 3, 3], [3, 2], None, 3),
        ([2, 2, 3, 3], [2, 3], [3, 2], 3),         # tie -> higher priority
        ([2, 3, 4, 4, 3], [2, 3, 4], [4, 2, 3], 4),
        ([2, 3, 4, 4, 3], [2, 3, 4], [3, 4, 2], 3),
    ],
)
def test_class_vote_and_tie_rule(labels, lesion_labels, priority, expected):
    label_map = np.zeros((1, 1, len(labels) + 2), dtype=np.uint8)
    label_map[0, 0, 1:-1] = labels
    detections = seg2det(label_map, lesion_labels, priority=priority)
    assert detections.labels() == {1: expected}


def _block_case():
    """4 x 6 x 7 volume with one 2 x 3 x 4 hcc block at z 1:3, y 1:4, x 2:6."""
    label_map = np.zeros((4, 6, 7), dtype=np.uint8)
    label_map[1:3, 1:4, 2:6] = 2
    return label_map


@pytest.mark.parametrize("connectivity", ["paper", 26])
def test_anisotropic_measures(connectivity):
    spacing = (2.5, 0.5, 1.0)                       # z, y, x
    record = seg2det(_block_case(), [2, 3], spacing=spacing, connectivity=connectivity).lesions[0]
    assert record["id"] == 1 and record["label"] == 2
    assert record["n_voxels"] == 24
    assert record["volume_mm3"] == pytest.approx(30.0)          # 24 * 2.5 * 0.5 * 1.0
    assert record["volume_cm3"] == pytest.approx(0.03)
    assert record["axial_diameter_mm"] == pytest.approx(math.sqrt(1.0 ** 2 + 3.0 ** 2))   # 2 rows, 3 columns
    assert record["sphere_diameter_mm"] == pytest.approx((6 * 30.0 / math.pi) ** (1 / 3))
    assert record["bbox"] == [1, 1, 2, 3, 4, 6]
    assert record["centroid_voxel"] == pytest.approx([1.5, 2.0, 3.5])
    assert record["centroid_world"] == pytest.approx([3.5, 1.0, 3.75])   # x, y, z mm from origin 0
    for key in ("hu_mean", "hu_std", "hu_min", "hu_max", "prior", "max_probability"):
        assert record[key] is None


@pytest.mark.parametrize(
    "direction",
    [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 1, 0, 1, 0, 0, 0, 0, 1)],
)
def test_world_centroid_matches_simpleitk(direction):
    spacing_zyx, origin = (2.5, 0.5, 1.0), (10.0, 20.0, 30.0)
    record = seg2det(_block_case(), [2], spacing=spacing_zyx, origin=origin, direction=direction).lesions[0]
    image = sitk.Image(7, 6, 4, sitk.sitkUInt8)
    image.SetSpacing(spacing_zyx[::-1])
    image.SetOrigin(origin)
    image.SetDirection(direction)
    expected = image.TransformContinuousIndexToPhysicalPoint(record["centroid_voxel"][::-1])
    assert record["centroid_world"] == pytest.approx(list(expected))


def test_diameter_is_the_longest_slice():
    label_map = np.zeros((3, 8, 8), dtype=np.uint8)
    label_map[0, 2, 2:4] = 2                        # 1 mm
    label_map[1, 1:6, 1:3] = 2                      # corner to corner: 4 rows, 1 column -> sqrt(17)
    label_map[2, 3, 1:3] = 2
    record = seg2det(label_map, [2]).lesions[0]
    assert record["axial_diameter_mm"] == pytest.approx(math.sqrt(17))


def test_hu_statistics_and_softmax_priors():
    label_map = _block_case()
    image = np.full(label_map.shape, 40, dtype=np.int16)
    image[1] = 20
    image[2] = 60
    probabilities = np.zeros((4, *label_map.shape), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 1] = np.array([0.1, 0.2, 0.6, 0.1])[:, None, None]
    probabilities[:, 2] = np.array([0.0, 0.05, 0.8, 0.15])[:, None, None]
    record = seg2det(label_map, [2, 3], image=image, probabilities=probabilities).lesions[0]
    assert record["hu_mean"] == pytest.approx(40.0)
    assert record["hu_std"] == pytest.approx(20.0)
    assert (record["hu_min"], record["hu_max"]) == (20.0, 60.0)
    assert record["prior"] == pytest.approx([0.7, 0.125])
    assert record["max_probability"] == pytest.approx(0.95)


@pytest.mark.parametrize("kind", ["float16", "torch", "torch_float16", "image_4d"])
def test_other_input_kinds_give_the_same_statistics(kind):
    rng = np.random.default_rng(0)
    label_map = _block_case()
    probabilities = rng.random((4, *label_map.shape), dtype=np.float32)
    image = rng.normal(40, 10, label_map.shape).astype(np.float32)
    expected = seg2det(label_map, [2, 3], probabilities=probabilities, image=image).lesions[0]
    other_probabilities, other_image, tolerance = probabilities, image, 1e-6
    if kind == "float16":
        other_probabilities, tolerance = probabilities.astype(np.float16), 2e-3
    elif kind == "torch":
        other_probabilities = torch.from_numpy(probabilities)
    elif kind == "torch_float16":
        other_probabilities, tolerance = torch.from_numpy(probabilities).half(), 2e-3
    else:
        other_image = np.stack([image, image + 100])          # (C, Z, Y, X): channel 0 is used
    record = seg2det(label_map, [2, 3], probabilities=other_probabilities, image=other_image).lesions[0]
    assert record["prior"] == pytest.approx(expected["prior"], abs=tolerance)
    assert record["max_probability"] == pytest.approx(expected["max_probability"], abs=2 * tolerance)
    assert record["hu_mean"] == pytest.approx(expected["hu_mean"])


def test_min_volume_drops_and_renumbers():
    label_map = np.zeros((1, 5, 9), dtype=np.uint8)
    label_map[0, 0, 0] = 2                          # 1 voxel  (first in raster order)
    label_map[0, 2, 0:5] = 3                        # 5 voxels
    label_map[0, 4, 7:9] = 2                        # 2 voxels
    detections = seg2det(label_map, [2, 3], spacing=(2.0, 1.0, 1.0), min_volume_mm3=4.0)
    assert [(r["id"], r["label"], r["n_voxels"]) for r in detections.lesions] == [(1, 3, 5), (2, 2, 2)]
    expected = np.zeros(label_map.shape, dtype=np.int32)
    expected[0, 2, 0:5] = 1
    expected[0, 4, 7:9] = 2
    np.testing.assert_array_equal(detections.instances, expected)
    assert len(seg2det(label_map, [2, 3], min_volume_mm3=100.0).lesions) == 0


def test_ids_follow_the_raster_order_of_the_first_voxel():
    label_map = np.zeros((2, 5, 5), dtype=np.uint8)
    label_map[1, 0, 0] = 3
    label_map[0, 4, 4] = 2
    detections = seg2det(label_map, [2, 3])
    assert detections.labels() == {1: 2, 2: 3}
    assert detections.instances[0, 4, 4] == 1 and detections.instances[1, 0, 0] == 2


@pytest.mark.parametrize("connectivity", ["paper", 6, "26"])
def test_empty_volume(connectivity):
    detections = seg2det(np.ones((3, 4, 5), dtype=np.uint8), [2, 3], connectivity=connectivity,
                         probabilities=np.zeros((4, 3, 4, 5), dtype=np.float32))
    assert detections.lesions == [] and detections.labels() == {}
    assert detections.instances.dtype == np.int32 and not detections.instances.any()
    frame = detections.to_dataframe()
    assert len(frame) == 0 and list(frame.columns) == list(RECORD_KEYS)


def test_outputs_are_json_and_pandas_ready():
    rng = np.random.default_rng(1)
    label_map = (rng.random((4, 9, 9)) < 0.3).astype(np.uint8) * rng.integers(2, 4, (4, 9, 9)).astype(np.uint8)
    detections = seg2det(label_map, [2, 3], probabilities=rng.random((4, 4, 9, 9)),
                         image=rng.normal(size=(4, 9, 9)))
    assert detections.instances.dtype == np.int32
    json.loads(json.dumps(detections.lesions))
    assert [r["id"] for r in detections.lesions] == list(range(1, len(detections.lesions) + 1))
    assert all(list(r) == list(RECORD_KEYS) for r in detections.lesions)
    frame = detections.to_dataframe()
    assert len(frame) == len(detections.lesions) and frame["n_voxels"].sum() == np.count_nonzero(label_map)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"connectivity": 8}, "connectivity"),
        ({"connectivity": "face"}, "connectivity"),
        ({"probabilities": np.zeros((3, 2, 3, 4))}, "probabilities"),     # C must exceed label 3
        ({"probabilities": np.zeros((4, 2, 3, 3))}, "probabilities"),
        ({"image": np.zeros((2, 3, 5))}, "image"),
        ({"priority": [2]}, "priority"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"min_volume_mm3": -1.0}, "min_volume"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        seg2det(np.zeros((2, 3, 4), dtype=np.uint8), [2, 3], **kwargs)


@pytest.mark.parametrize("label_map, message", [(np.zeros((3, 4)), "shape"), (np.zeros((2, 3, 4)), "integer")])
def test_bad_label_map_raises_value_error(label_map, message):
    with pytest.raises(ValueError, match=message):
        seg2det(label_map, [1])
