"""match_lesions / match_overlaps / assign_tiers: one-to-one assignment, criteria, ignored references, per-class
counts."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_plus.postprocessing import assign_one_to_one, assign_tiers, match_lesions, match_overlaps, overlap_table


def _row(*segments, length=12) -> np.ndarray:
    """(1, 1, length) instance map with ``(id, start, stop)`` segments."""
    instances = np.zeros((1, 1, length), dtype=np.int32)
    for lesion_id, start, stop in segments:
        instances[0, 0, start:stop] = lesion_id
    return instances


def test_one_prediction_covering_two_references():
    reference = _row((1, 0, 4), (2, 6, 8))
    predicted = _row((1, 0, 8))                        # shares 4 voxels with ref 1, 2 with ref 2
    result = match_lesions(reference, {1: 2, 2: 2}, predicted, {1: 2})
    assert result.pairs == [(1, 1)] and result.tp == [(1, 1)]
    assert result.fn == [2] and result.fp == [] and result.fl == []
    assert result.counts() == {"tp": 1, "fl": 0, "fp": 0, "fn": 1}


def test_one_reference_covered_by_two_predictions():
    reference = _row((1, 0, 8))
    predicted = _row((1, 0, 3), (2, 5, 6))             # 3 and 1 shared voxels
    result = match_lesions(reference, {1: 3}, predicted, {1: 3, 2: 3})
    assert result.pairs == [(1, 1)] and result.fp == [2] and result.fn == []


def test_assignment_maximises_total_overlap_not_greedy():
    # ref 1 overlaps pred 1 (5 voxels) and pred 2 (4); ref 2 overlaps pred 1 only (4).
    # Greedy on the largest overlap gives (1, 1) alone; the optimum is (1, 2) + (2, 1) = 8 voxels.
    reference = np.zeros((2, 1, 12), dtype=np.int32)
    predicted = np.zeros((2, 1, 12), dtype=np.int32)
    reference[0, 0, 0:9] = 1
    predicted[0, 0, 0:5] = 1
    predicted[0, 0, 5:9] = 2
    reference[1, 0, 0:4] = 2
    predicted[1, 0, 0:4] = 1
    result = match_lesions(reference, {1: 2, 2: 2}, predicted, {1: 2, 2: 2})
    assert result.pairs == [(1, 2), (2, 1)]
    assert result.fp == [] and result.fn == []


@pytest.mark.parametrize(
    "criterion, matched",
    [("overlap", True), ("dice:0.2", True), ("dice:0.33", True), ("dice:0.34", False), ("dice:0.5", False)],
)
def test_dice_criterion(criterion, matched):
    reference = _row((1, 0, 10))
    predicted = _row((1, 8, 10))                       # Dice = 2 * 2 / (10 + 2) = 1/3
    result = match_lesions(reference, {1: 2}, predicted, {1: 2}, criterion=criterion)
    assert (result.pairs == [(1, 1)]) is matched
    assert result.counts() == ({"tp": 1, "fl": 0, "fp": 0, "fn": 0} if matched
                               else {"tp": 0, "fl": 0, "fp": 1, "fn": 1})


def test_false_label_and_per_class_counts():
    reference = _row((1, 0, 2), (2, 3, 5), (3, 6, 8), length=14)
    predicted = _row((1, 0, 2), (2, 3, 5), (3, 10, 12), length=14)
    result = match_lesions(reference, {1: 2, 2: 2, 3: 3}, predicted, {1: 2, 2: 3, 3: 4})
    assert result.tp == [(1, 1)] and result.fl == [(2, 2)]
    assert result.fp == [3] and result.fn == [3]
    assert result.per_class([2, 3, 4]) == {
        2: {"tp": 1, "fl_ref": 1, "fl_pred": 0, "fp": 0, "fn": 0},
        3: {"tp": 0, "fl_ref": 0, "fl_pred": 1, "fp": 0, "fn": 1},
        4: {"tp": 0, "fl_ref": 0, "fl_pred": 0, "fp": 1, "fn": 0},
    }


def test_ignored_references():
    reference = _row((1, 0, 3), (2, 5, 6), (3, 8, 9))
    # pred 1 on ref 1; pred 2 only on the ignored ref 2; pred 3 touches ignored ref 3 and nothing else
    predicted = _row((1, 0, 3), (2, 5, 6), (3, 8, 11))
    result = match_lesions(reference, {1: 2, 2: 2, 3: 2}, predicted, {1: 2, 2: 2, 3: 2},
                           ignored_reference_ids=[2, 3])
    assert result.pairs == [(1, 1)] and result.fp == [] and result.fn == []


def test_ignored_reference_does_not_steal_a_prediction():
    reference = _row((1, 0, 2), (2, 2, 8))
    predicted = _row((1, 0, 8))                        # mostly on the ignored ref 2
    result = match_lesions(reference, {1: 2, 2: 2}, predicted, {1: 2}, ignored_reference_ids={2})
    assert result.pairs == [(1, 1)] and result.counts() == {"tp": 1, "fl": 0, "fp": 0, "fn": 0}


@pytest.mark.parametrize(
    "reference, predicted, expected",
    [
        (_row(), _row(), {"tp": 0, "fl": 0, "fp": 0, "fn": 0}),
        (_row((1, 0, 2)), _row(), {"tp": 0, "fl": 0, "fp": 0, "fn": 1}),
        (_row(), _row((1, 0, 2), (2, 4, 5)), {"tp": 0, "fl": 0, "fp": 2, "fn": 0}),
    ],
)
def test_empty_sides(reference, predicted, expected):
    ref_labels = {i: 2 for i in np.unique(reference) if i}
    pred_labels = {i: 2 for i in np.unique(predicted) if i}
    assert match_lesions(reference, ref_labels, predicted, pred_labels).counts() == expected


def test_overlap_table():
    reference = _row((1, 0, 4), (3, 6, 8))
    predicted = _row((2, 2, 7))
    refs, preds, shared = overlap_table(reference, predicted)
    assert refs.tolist() == [1, 3] and preds.tolist() == [2, 2] and shared.tolist() == [2, 1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"criterion": "iou"}, "criterion"),
        ({"criterion": "dice:abc"}, "criterion"),
        ({"criterion": "dice:1.5"}, "criterion"),
    ],
)
def test_bad_criterion(kwargs, message):
    with pytest.raises(ValueError, match=message):
        match_lesions(_row((1, 0, 2)), {1: 2}, _row((1, 0, 2)), {1: 2}, **kwargs)


def test_shape_mismatch_and_missing_labels():
    with pytest.raises(ValueError, match="shape"):
        match_lesions(_row((1, 0, 2)), {1: 2}, _row((1, 0, 2), length=10), {1: 2})
    with pytest.raises(ValueError, match="predicted lesion id"):
        match_lesions(_row((1, 0, 2)), {1: 2}, _row((1, 0, 2), (2, 4, 5)), {1: 2})


def test_assign_tiers():
    base = _row((1, 1, 2), (2, 6, 7), length=14)
    high = _row((1, 0, 3), (2, 4, 5), (3, 6, 9), (4, 12, 13), length=14)
    assert assign_tiers(base, high) == {1: "confident", 2: "suspicious", 3: "confident", 4: "suspicious"}
    assert assign_tiers(_row(), _row()) == {}


def test_assign_one_to_one_on_table_rows():
    # ref 1 - pred 1: 5, ref 1 - pred 2: 4, ref 2 - pred 1: 4 -> (1, 2) + (2, 1) = 8 beats (1, 1) = 5
    assert assign_one_to_one([1, 1, 2], [1, 2, 1], [5, 4, 4]) == [(1, 2), (2, 1)]
    assert assign_one_to_one([], [], []) == []


@pytest.mark.parametrize("criterion", ["overlap", "dice:0.3"])
def test_match_overlaps_is_the_core_of_match_lesions(criterion):
    """match_lesions = match_overlaps on the overlap table (the classifier's rule scores replay the latter)."""
    reference = _row((1, 0, 4), (2, 5, 7), (3, 9, 10))
    predicted = _row((1, 0, 6), (2, 8, 12))
    ref_labels, pred_labels = {1: 2, 2: 3, 3: 2}, {1: 3, 2: 2}
    expected = match_lesions(reference, ref_labels, predicted, pred_labels, criterion=criterion,
                             ignored_reference_ids=[3])
    ref_ids, pred_ids, shared = overlap_table(reference, predicted)
    eligible = None
    if criterion != "overlap":
        sizes_ref, sizes_pred = np.bincount(reference.ravel()), np.bincount(predicted.ravel())
        eligible = 2.0 * shared / (sizes_ref[ref_ids] + sizes_pred[pred_ids]) > 0.3
    result = match_overlaps(ref_ids, pred_ids, shared, ref_labels, pred_labels, ignored_reference_ids=[3],
                            eligible=eligible)
    assert result == expected
    assert result.fp == []                   # pred 2 overlaps only the ignored ref 3: no FP
