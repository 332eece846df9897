"""Metric formulas from counts, checked against the cascaded paper's Table V and hand computations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_plus.evaluation.metrics import (
    FROC_FP_RATES, accuracy, auc, binary_metrics, class_lesion_metrics, confusion_matrix, dice,
    dice_from_counts, f1_from, froc, lesion_metrics, mean_or_none, safe_ratio,
)


def pct(x: float) -> float:
    return round(100 * x, 1)


# Table V of the cascaded paper (High+ReCls, consensus portion): FN, FP, FL, TP, then the published
# precision / recall / recall-rough in %. Table V gives only the reference-side FL per class; the
# prediction-side FL below (fl_pred) is solved from the published precision, and its column sum is 64,
# the "All" row's FL, which confirms the reading of the table.
TABLE_V = {
    #        fn  fp  fl   tp fl_pred  prec  recall rough
    "HCC": (11, 6, 13, 223, 33, 85.1, 90.3, 95.5),
    "ICC": (0, 1, 5, 8, 4, 61.5, 61.5, 100.0),
    "Meta": (13, 8, 15, 130, 14, 85.5, 82.3, 91.8),
    "Hem": (1, 1, 5, 6, 3, 60.0, 50.0, 91.7),
    "Other": (8, 6, 24, 25, 7, 65.8, 43.9, 86.0),
    "Cyst": (5, 4, 2, 56, 3, 88.9, 88.9, 92.1),
}


def test_table_v_hcc_row_from_its_counts():
    m = class_lesion_metrics(tp=223, fl_ref=13, fl_pred=33, fp=6, fn=11)
    assert pct(m["recall"]) == 90.3          # 223 / (223 + 11 + 13) = 223 / 247
    assert pct(m["recall_rough"]) == 95.5    # 236 / 247
    assert m["fl"] == 13 and m["fl_ref"] == 13 and m["fl_pred"] == 33


def test_table_v_all_row_from_its_counts():
    m = lesion_metrics(tp=448, fl=64, fp=26, fn=38)
    assert pct(m["precision"]) == 83.3       # 448 / 538
    assert pct(m["recall"]) == 81.5          # 448 / 550
    assert pct(m["recall_rough"]) == 93.1    # 512 / 550
    assert m["f1"] == pytest.approx(2 * (448 / 538) * (448 / 550) / (448 / 538 + 448 / 550))
    assert (m["tp"], m["fl"], m["fp"], m["fn"]) == (448, 64, 26, 38)


@pytest.mark.parametrize("name", sorted(TABLE_V))
def test_table_v_every_class_row(name):
    fn, fp, fl, tp, fl_pred, prec, recall, rough = TABLE_V[name]
    m = class_lesion_metrics(tp=tp, fl_ref=fl, fl_pred=fl_pred, fp=fp, fn=fn)
    assert (pct(m["precision"]), pct(m["recall"]), pct(m["recall_rough"])) == (prec, recall, rough)


def test_table_v_class_rows_add_up_to_all_row():
    cols = np.array([v[:5] for v in TABLE_V.values()]).sum(axis=0)
    assert cols.tolist() == [38, 26, 64, 448, 64]


def test_table_v_malignant_group_row():
    # Malig: FN 24, FP 15, FL 9, TP 385 -> 96.3 %, 92.1 %, 94.3 %: a benign reference is never predicted
    # malignant in that table (fl_pred = 0), and type errors inside the group count as TP.
    m = class_lesion_metrics(tp=385, fl_ref=9, fl_pred=0, fp=15, fn=24)
    assert m["precision"] == pytest.approx(0.9625)
    assert pct(m["recall"]) == 92.1
    assert pct(m["recall_rough"]) == 94.3


def test_zero_denominators_are_none_and_json_safe():
    m = lesion_metrics(0, 0, 0, 0)
    assert m["precision"] is None and m["recall"] is None and m["f1"] is None and m["recall_rough"] is None
    json.dumps(m, allow_nan=False)
    only_fp = lesion_metrics(0, 0, 3, 0)
    assert only_fp["precision"] == 0.0 and only_fp["recall"] is None and only_fp["f1"] is None
    only_fn = lesion_metrics(0, 0, 0, 2)
    assert only_fn["precision"] is None and only_fn["recall"] == 0.0 and only_fn["recall_rough"] == 0.0
    assert f1_from(0.0, 0.0) == 0.0
    assert safe_ratio(1, 0) is None


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_counts_raise(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        lesion_metrics(bad, 0, 0, 0)


def test_binary_metrics_hand_cohort():
    # 6 patients: truth T T T F F F, prediction T T F T F F -> TP 2, FN 1, FP 1, TN 2.
    m = binary_metrics([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["n"]) == (2, 1, 1, 2, 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_binary_metrics_rejects_non_binary_and_length_mismatch():
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics([0, 1], [0])


def test_accuracy_and_confusion_matrix():
    truth = ["normal", "benign", "malignant", "malignant", "benign"]
    pred = ["normal", "malignant", "malignant", "benign", "benign"]
    assert accuracy(truth, pred) == pytest.approx(3 / 5)
    assert accuracy([], []) is None
    labels = ["normal", "benign", "malignant"]
    assert confusion_matrix(truth, pred, labels) == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match="not among"):
        confusion_matrix(["x"], ["normal"], labels)


def test_auc_hand_example_and_single_class():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4.
    assert auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert auc([1, 1], [0.2, 0.3]) is None
    assert auc([], []) is None


def test_froc_hand_example():
    # 2 patients, 4 reference lesions. Predictions (score, hit):
    # 0.9 hit, 0.8 FP, 0.7 hit, 0.6 FP, 0.5 FP, 0.3 hit
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3]
    hits = [True, False, True, False, False, True]
    r = froc(scores, hits, n_reference=4, n_patients=2)
    # thresholds: 0.9 -> (0 FP/pt, 1/4), 0.8 -> (0.5, 1/4), 0.7 -> (0.5, 2/4), 0.6 -> (1, 2/4),
    # 0.5 -> (1.5, 2/4), 0.3 -> (1.5, 3/4)
    assert r["curve"]["fp_per_patient"] == [0.0, 0.5, 0.5, 1.0, 1.5, 1.5]
    assert r["curve"]["sensitivity"] == [0.25, 0.25, 0.5, 0.5, 0.5, 0.75]
    # at 1/8 and 1/4 FP/pt only the 0.9 point qualifies; at 1/2 and 1: 0.5; at 2, 4, 8: 0.75.
    assert r["fp_rates"] == list(FROC_FP_RATES)
    assert r["sensitivity"] == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75]
    assert r["mean_sensitivity"] == pytest.approx((0.25 * 2 + 0.5 * 2 + 0.75 * 3) / 7)


def test_froc_edge_cases():
    assert froc([], [], n_reference=0, n_patients=3) is None
    none_scored = froc([], [], n_reference=2, n_patients=1)
    assert none_scored["sensitivity"] == [0.0] * 7
    # a first operating point already above 1/8 FP per patient -> 0.0 there
    r = froc([0.9, 0.8], [False, True], n_reference=1, n_patients=1)
    assert r["sensitivity"][:3] == [0.0, 0.0, 0.0] and r["sensitivity"][3] == 1.0
    with pytest.raises(ValueError, match="hits"):
        froc([0.5, 0.5], [True, True], n_reference=1, n_patients=1)


def test_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) is None
    a[0, :2] = True
    b[0, 1:4] = True
    assert dice(a, b) == pytest.approx(2 * 1 / (2 + 3))
    assert dice_from_counts(0, 0, 5) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:2])


def test_mean_or_none():
    assert mean_or_none([None, 1.0, 0.5]) == 0.75
    assert mean_or_none([None]) is None
    assert not math.isnan(mean_or_none([0.0]))
