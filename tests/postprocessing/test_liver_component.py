"""keep_largest_liver_component and its use in analyse_case: stray liver goes, lesions stay."""
from __future__ import annotations

import numpy as np

from nnunet_plus.case_analysis import analyse_case
from nnunet_plus.postprocessing.liver_component import keep_largest_liver_component
from nnunet_plus.schema import build_schema

LIVER, HCC, CYST = 1, 2, 3
LABELS = {"background": 0, "liver": LIVER, "hcc": HCC, "cyst": CYST}


def _maps() -> np.ndarray:
    """(2, 8, 12, 12): a liver block with an hcc inside, a 2-voxel liver speck far away, a cyst speck outside
    the liver; map 1 (f = 4) also calls one voxel of the liver block a cyst."""
    base = np.zeros((8, 12, 12), dtype=np.uint8)
    base[1:6, 1:7, 1:7] = LIVER
    base[2:4, 2:4, 2:4] = HCC
    base[7, 10, 10:12] = LIVER          # stray liver
    base[7, 1, 10] = CYST               # lesion outside the liver: not ours to remove
    high = base.copy()
    high[5, 6, 6] = CYST
    return np.stack([base, high])


def test_the_stray_liver_is_cleared_in_every_map_and_lesions_stay():
    maps = _maps()
    cleaned = keep_largest_liver_component(maps, [LIVER], [HCC, CYST])
    assert (cleaned[:, 7, 10, 10:12] == 0).all()
    changed = cleaned != maps
    assert changed.sum() == 4 and changed[:, 7, 10, 10:12].all()   # the speck, in both maps, nothing else
    assert (cleaned == CYST).sum() == (maps == CYST).sum() and (cleaned == HCC).sum() == (maps == HCC).sum()
    assert (maps[:, 7, 10, 10:12] == LIVER).all()                   # the input is not modified


def test_liver_joined_through_a_lesion_is_one_region():
    maps = _maps()
    maps[:, 6:8, 4, 4] = HCC          # an hcc bridging the block and a small liver part below it
    maps[:, 7, 4, 5] = LIVER
    cleaned = keep_largest_liver_component(maps, [LIVER], [HCC, CYST])
    assert (cleaned[:, 7, 4, 5] == LIVER).all()


def test_one_region_or_none_is_returned_unchanged():
    single = _maps()
    single[:, 7] = 0
    assert np.array_equal(keep_largest_liver_component(single, [LIVER], [HCC, CYST]), single)
    empty = np.zeros((1, 4, 4, 4), dtype=np.uint8)
    assert np.array_equal(keep_largest_liver_component(empty, [LIVER], [HCC]), empty)


def _softmax() -> np.ndarray:
    """(4, 8, 12, 12) softmax whose argmax is ``_maps()[0]`` (the cyst speck at f = 1 too)."""
    base = _maps()[0]
    probabilities = np.full((4, *base.shape), 0.02, dtype=np.float32)
    for label in range(4):
        probabilities[label][base == label] = 0.94
    return probabilities


def test_analyse_case_clears_stray_liver_unless_the_schema_says_otherwise():
    probabilities = _softmax()
    default = analyse_case(probabilities, build_schema(LABELS), spacing=(1.0, 1.0, 1.0))
    keep_all = analyse_case(probabilities, build_schema(LABELS, liver_largest_component=False),
                            spacing=(1.0, 1.0, 1.0))
    assert (default.label_maps[:, 7, 10, 10:12] == 0).all()
    assert (keep_all.label_maps[:, 7, 10, 10:12] == LIVER).all()
    assert default.detections.labels() == keep_all.detections.labels() == {1: HCC, 2: CYST}
