"""evaluate_case on small hand-built label maps: TP / FL / FP / FN, split and merged lesions, empty cases,
min-volume ignore, match criteria, the case JSON and instance map, patient truth / prediction, Dice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_plus.schema import build_schema

from nnunet_plus.evaluation.case import evaluate_case

SCHEMA = build_schema({"background": 0, "liver": 1, "hcc": 2, "metastasis": 3, "hemangioma": 4, "cyst": 5})
HCC, META, HEM, CYST = 2, 3, 4, 5
SHAPE = (8, 32, 32)
SPACING = (2.0, 1.0, 1.0)  # one voxel = 2 mm3


def blank() -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[:, 1:31, 1:31] = 1  # liver
    return a


def put(a: np.ndarray, label: int, z: slice, y: slice, x: slice) -> np.ndarray:
    a[z, y, x] = label
    return a


def run(ref, pred, **kw):
    kw.setdefault("min_volume_cm3", 0.0)
    return evaluate_case(ref, pred, SCHEMA, spacing=SPACING, **kw)


def counts(result):
    c = result["counts"]
    return c["tp"], c["fl"], c["fp"], c["fn"]


@pytest.fixture
def mixed():
    """ref: A hcc, B cyst, C metastasis. pred: A' hcc on A (TP), B' hcc on B (FL), D cyst alone (FP), C missed."""
    ref, pred = blank(), blank()
    put(ref, HCC, slice(1, 4), slice(2, 6), slice(2, 6))
    put(ref, CYST, slice(1, 4), slice(10, 14), slice(10, 14))
    put(ref, META, slice(5, 7), slice(20, 24), slice(20, 24))
    put(pred, HCC, slice(1, 4), slice(3, 7), slice(3, 7))
    put(pred, HCC, slice(1, 4), slice(10, 13), slice(10, 13))
    put(pred, CYST, slice(5, 7), slice(2, 5), slice(25, 28))
    return ref, pred


def test_tp_fl_fp_fn_and_per_class(mixed):
    r = run(*mixed, case="c1")
    assert r["case"] == "c1" and r["missing"] is False
    assert counts(r) == (1, 1, 1, 1)
    assert r["per_class"]["hcc"] == dict(tp=1, fl_ref=0, fl_pred=1, fp=0, fn=0)
    assert r["per_class"]["cyst"] == dict(tp=0, fl_ref=1, fl_pred=0, fp=1, fn=0)
    assert r["per_class"]["metastasis"] == dict(tp=0, fl_ref=0, fl_pred=0, fp=0, fn=1)
    assert r["per_class"]["hemangioma"] == dict(tp=0, fl_ref=0, fl_pred=0, fp=0, fn=0)
    assert r["malignant_group"] == dict(tp=1, fl_ref=0, fl_pred=1, fp=0, fn=1)
    assert r["benign_group"] == dict(tp=0, fl_ref=1, fl_pred=0, fp=1, fn=0)
    json.dumps(r, allow_nan=False)


def test_lesion_records(mixed):
    r = run(*mixed)
    by_class = {lesion["class"]: lesion for lesion in r["reference_lesions"]}
    assert by_class["hcc"]["outcome"] == "tp" and by_class["cyst"]["outcome"] == "fl"
    assert by_class["metastasis"]["outcome"] == "fn" and by_class["metastasis"]["matched_id"] is None
    assert by_class["hcc"]["volume_cm3"] == pytest.approx(3 * 4 * 4 * 2 / 1000)
    # equivalent-sphere radius of 96 mm3: (3 V / 4 pi)^(1/3)
    assert by_class["hcc"]["radius_mm"] == pytest.approx((3 * 96 / (4 * np.pi)) ** (1 / 3), rel=1e-6)
    outcomes = sorted(lesion["outcome"] for lesion in r["predicted_lesions"])
    assert outcomes == ["fl", "fp", "tp"]
    assert all(lesion["score"] is None for lesion in r["predicted_lesions"])


def test_patient_truth_and_prediction(mixed):
    p = run(*mixed)["patient"]
    assert p["reference_class"] == "hcc" and p["predicted_class"] == "hcc"
    assert p["reference_group"] == "malignant" and p["predicted_group"] == "malignant"
    assert p["reference"]["metastasis"] and not p["predicted"]["metastasis"]
    assert p["reference"]["benign"] and p["predicted"]["benign"]  # the FP cyst
    assert p["probability_source"] == "label_map"
    assert p["probabilities"]["malignant"] == 1.0 and p["probabilities"]["hemangioma"] == 0.0


def test_split_lesion_is_one_tp_and_one_fp():
    ref, pred = blank(), blank()
    put(ref, HCC, slice(1, 5), slice(4, 14), slice(4, 14))
    put(pred, HCC, slice(1, 5), slice(4, 14), slice(4, 8))     # two halves of the same lesion,
    put(pred, HCC, slice(1, 5), slice(4, 14), slice(10, 14))   # separated by a gap
    r = run(ref, pred)
    assert counts(r) == (1, 0, 1, 0)


def test_merged_lesions_are_one_tp_and_one_fn():
    ref, pred = blank(), blank()
    put(ref, META, slice(1, 5), slice(4, 8), slice(4, 8))
    put(ref, META, slice(1, 5), slice(4, 8), slice(10, 14))
    put(pred, META, slice(1, 5), slice(4, 8), slice(4, 14))    # one blob over both
    r = run(ref, pred)
    assert counts(r) == (1, 0, 0, 1)


def test_empty_reference_all_fp():
    ref, pred = blank(), blank()
    put(pred, CYST, slice(1, 3), slice(4, 8), slice(4, 8))
    put(pred, HEM, slice(4, 6), slice(20, 24), slice(20, 24))
    r = run(ref, pred)
    assert counts(r) == (0, 0, 2, 0)
    assert r["patient"]["reference_class"] == "normal" and r["patient"]["predicted_class"] == "hemangioma"
    assert r["dice"]["lesion"] == 0.0
    assert r["dice"]["liver"] == 1.0


def test_empty_prediction_all_fn():
    ref, pred = blank(), blank()
    put(ref, CYST, slice(1, 3), slice(4, 8), slice(4, 8))
    put(ref, HCC, slice(4, 6), slice(20, 24), slice(20, 24))
    r = run(ref, pred)
    assert counts(r) == (0, 0, 0, 2)
    assert r["patient"]["predicted_class"] == "normal" and r["patient"]["predicted_group"] == "normal"
    assert r["dice"]["lesion"] == 0.0


def test_both_empty():
    r = run(blank(), blank())
    assert counts(r) == (0, 0, 0, 0)
    assert r["dice"]["lesion"] is None and r["dice"]["liver"] == 1.0
    assert r["reference_lesions"] == [] and r["predicted_lesions"] == []
    r = run(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8))
    assert r["dice"]["liver"] is None


def test_min_volume_ignores_small_reference_lesions_and_their_predictions():
    ref, pred = blank(), blank()
    put(ref, HCC, slice(1, 5), slice(4, 14), slice(4, 14))          # 400 voxels = 0.8 cm3
    put(ref, CYST, slice(1, 2), slice(20, 23), slice(20, 23))       # 9 voxels = 0.018 cm3, detected
    put(ref, CYST, slice(5, 6), slice(20, 23), slice(20, 23))       # 0.018 cm3, missed
    put(pred, HCC, slice(1, 5), slice(4, 14), slice(4, 14))
    put(pred, CYST, slice(1, 2), slice(20, 24), slice(20, 24))      # overlaps only the ignored cyst
    kept = run(ref, pred, min_volume_cm3=0.0)
    assert counts(kept) == (2, 0, 0, 1)
    r = run(ref, pred, min_volume_cm3=0.5)
    assert counts(r) == (1, 0, 0, 0)
    assert r["counts"]["ignored_reference"] == 2 and r["counts"]["ignored_predicted"] == 1
    assert sorted(lesion["outcome"] for lesion in r["reference_lesions"]) == ["ignored", "ignored", "tp"]
    assert sorted(lesion["outcome"] for lesion in r["predicted_lesions"]) == ["ignored", "tp"]
    # patient truth keeps every reference lesion (the tiny cysts still make the patient "has benign")
    assert r["patient"]["reference"]["benign"]


def test_dice_criterion_rejects_thin_overlap():
    ref, pred = blank(), blank()
    put(ref, HCC, slice(1, 5), slice(4, 14), slice(4, 14))     # 400 voxels
    put(pred, HCC, slice(1, 5), slice(13, 23), slice(4, 14))   # shares one row: 40 voxels, Dice 0.1
    assert counts(run(ref, pred, criterion="overlap")) == (1, 0, 0, 0)
    assert counts(run(ref, pred, criterion="dice:0.2")) == (0, 0, 1, 1)
    assert counts(run(ref, pred, criterion="dice:0.05")) == (1, 0, 0, 0)


def test_lesion_and_liver_dice():
    ref, pred = blank(), blank()
    put(ref, HCC, slice(1, 5), slice(4, 14), slice(4, 14))     # 400
    put(pred, HCC, slice(1, 5), slice(9, 19), slice(4, 14))    # 400, 200 shared
    r = run(ref, pred)
    assert r["dice"]["lesion"] == pytest.approx(0.5)
    assert r["voxels"]["lesion"] == dict(intersection=200, reference=400, prediction=400)
    assert r["dice"]["liver"] == 1.0


def case_json(lesions, patient=None):
    return {"case": "c1", "spacing": list(SPACING), "sensitivities": [1.0, 4.0], "lesions": lesions,
            "patient": patient or {}}


def test_json_and_instances_define_the_predicted_lesions(mixed):
    ref, pred = mixed
    instances = np.zeros(SHAPE, np.int32)
    instances[1:4, 3:7, 3:7] = 1        # on A (hcc): reported as metastasis -> FL
    instances[1:4, 10:13, 10:13] = 2    # on B (cyst): reported as cyst -> TP
    instances[5:7, 2:5, 25:28] = 3      # not reported (e.g. dropped by PLUS) -> not counted
    lesions = [{"id": 1, "class": "metastasis", "label": META, "probability": 0.8},
               {"id": 2, "class": "cyst", "probability": 0.6}]
    patient = {"class": "metastasis", "probabilities": {"tumor": 0.9, "malignant": 0.8, "benign": 0.6, "hcc": 0.3}}
    r = run(ref, pred, predicted_json=case_json(lesions, patient), predicted_instances=instances)
    assert counts(r) == (1, 1, 0, 1)
    assert sorted((lesion["id"], lesion["outcome"], lesion["score"]) for lesion in r["predicted_lesions"]) == [
        (1, "fl", 0.8), (2, "tp", 0.6)]
    p = r["patient"]
    assert p["predicted_class"] == "metastasis" and p["probability_source"] == "json"
    assert p["probabilities"]["malignant"] == 0.8 and p["probabilities"]["hcc"] == 0.3
    assert p["probabilities"]["hemangioma"] == 0.0  # absent from the JSON: 0/1 from the lesions
    assert p["probabilities"]["metastasis"] == 1.0


def test_json_without_instances_attaches_probabilities_by_bbox(mixed):
    ref, pred = mixed
    lesions = [{"id": 1, "class": "hcc", "bbox": [1, 3, 3, 4, 7, 7], "probability": 0.7},
               {"id": 2, "class": "hcc", "bbox": [1, 10, 10, 4, 13, 13], "probability": 0.4},
               {"id": 3, "class": "cyst", "bbox": [5, 2, 25, 7, 5, 28], "probability": 0.2}]
    r = run(ref, pred, predicted_json=case_json(lesions))
    assert counts(r) == (1, 1, 1, 1)
    scores = {lesion["outcome"]: lesion["score"] for lesion in r["predicted_lesions"]}
    assert scores == {"tp": 0.7, "fl": 0.4, "fp": 0.2}


def test_bad_inputs_raise(mixed):
    ref, pred = mixed
    with pytest.raises(ValueError, match="shape"):
        run(ref, pred[:, :16])
    bad = pred.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"label value\(s\) \[9\]"):
        run(ref, bad)
    with pytest.raises(ValueError, match="needs predicted_json"):
        run(ref, pred, predicted_instances=np.zeros(SHAPE, np.int32))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(ref, pred, SCHEMA, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="patient class"):
        run(ref, pred, predicted_json=case_json([], {"class": "tumour"}))


def test_inputs_are_not_modified(mixed):
    ref, pred = mixed
    before = ref.copy(), pred.copy()
    run(ref, pred)
    assert np.array_equal(ref, before[0]) and np.array_equal(pred, before[1])
