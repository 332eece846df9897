"""Aggregation, printing and comparison of per-case results (hand-built per-case dicts, no arrays)."""
from __future__ import annotations

import json

import pytest

from nnunet_plus.evaluation.conventions import bin_name, RADIUS_BINS_MM, VOLUME_BINS_CM3
from nnunet_plus.evaluation.summary import (
    compare_summaries, format_comparison, format_percent, format_summary, summarize,
)
from nnunet_plus.schema import build_schema

SCHEMA = build_schema({"background": 0, "liver": 1, "hcc": 2, "metastasis": 3, "hemangioma": 4, "cyst": 5})
LESIONS = SCHEMA.lesions  # ('hcc', 'metastasis', 'hemangioma', 'cyst')


def make_case(name, ref, pred, probs, *, ref_class, pred_class, ref_lesions=(), pred_lesions=(),
              dice_counts=((0, 0, 0), (0, 0, 0))):
    """A per-case dict as evaluate_case returns it.

    ref / pred: sets of lesion names present; ref_lesions: (class, volume_cm3, radius_mm, outcome, matched
    class or None); pred_lesions: (class, outcome, score, matched class or None).
    """
    per_class = {n: dict(tp=0, fl_ref=0, fl_pred=0, fp=0, fn=0) for n in LESIONS}
    groups = {g: dict(tp=0, fl_ref=0, fl_pred=0, fp=0, fn=0) for g in ("malignant", "benign")}
    group_of = {n: ("malignant" if n in SCHEMA.malignant else "benign") for n in LESIONS}
    counts = dict(tp=0, fl=0, fp=0, fn=0, ignored_reference=0, ignored_predicted=0)
    for cls, _, _, outcome, other in ref_lesions:
        if outcome == "ignored":
            counts["ignored_reference"] += 1
            continue
        if outcome == "fn":
            counts["fn"] += 1
            per_class[cls]["fn"] += 1
            groups[group_of[cls]]["fn"] += 1
            continue
        counts["tp" if cls == other else "fl"] += 1
        if cls == other:
            per_class[cls]["tp"] += 1
        else:
            per_class[cls]["fl_ref"] += 1
            per_class[other]["fl_pred"] += 1
        if group_of[cls] == group_of[other]:
            groups[group_of[cls]]["tp"] += 1
        else:
            groups[group_of[cls]]["fl_ref"] += 1
            groups[group_of[other]]["fl_pred"] += 1
    for cls, outcome, _, _ in pred_lesions:
        if outcome == "fp":
            counts["fp"] += 1
            per_class[cls]["fp"] += 1
            groups[group_of[cls]]["fp"] += 1
        elif outcome == "ignored":
            counts["ignored_predicted"] += 1

    def presence(names):
        out = {n: n in names for n in LESIONS}
        out.update(malignant=any(n in SCHEMA.malignant for n in names),
                   benign=any(n in SCHEMA.benign for n in names), tumor=bool(names))
        return out

    def group(c):
        return "normal" if c == "normal" else group_of[c]

    voxels = {k: dict(intersection=i, reference=r, prediction=p) for k, (i, r, p) in zip(("liver", "lesion"),
                                                                                           dice_counts)}
    return {
        "case": name, "missing": False, "counts": counts, "per_class": per_class,
        "malignant_group": groups["malignant"], "benign_group": groups["benign"],
        "reference_lesions": [dict(id=i + 1, **{"class": c}, volume_cm3=v, radius_mm=r, outcome=o, matched_id=None)
                              for i, (c, v, r, o, _) in enumerate(ref_lesions)],
        "predicted_lesions": [dict(id=i + 1, **{"class": c}, volume_cm3=1.0, outcome=o, matched_id=None, score=s)
                              for i, (c, o, s, _) in enumerate(pred_lesions)],
        "patient": {"reference_class": ref_class, "predicted_class": pred_class,
                    "reference_group": group(ref_class), "predicted_group": group(pred_class),
                    "reference": presence(ref), "predicted": presence(pred),
                    "probabilities": {**{n: float(n in pred) for n in LESIONS}, **probs},
                    "probability_source": "json"},
        "dice": {k: (None if v["reference"] + v["prediction"] == 0
                     else 2 * v["intersection"] / (v["reference"] + v["prediction"])) for k, v in voxels.items()},
        "voxels": voxels,
    }


def cohort():
    """Five patients (hand-computed expectations in the tests below)."""
    return [
        make_case("p1", {"hcc"}, {"hcc"}, dict(malignant=0.9, benign=0.2, tumor=0.95),
                  ref_class="hcc", pred_class="hcc",
                  ref_lesions=[("hcc", 30.0, 19.0, "tp", "hcc"), ("hcc", 0.2, 3.0, "ignored", None)],
                  pred_lesions=[("hcc", "tp", 0.9, "hcc"), ("hcc", "fp", 0.4, None)],
                  dice_counts=((90, 100, 100), (8, 10, 10))),
        make_case("p2", {"cyst"}, set(), dict(malignant=0.1, benign=0.3, tumor=0.3),
                  ref_class="cyst", pred_class="normal",
                  ref_lesions=[("cyst", 1.0, 6.0, "fn", None)], dice_counts=((60, 100, 60), (0, 5, 0))),
        make_case("p3", set(), {"cyst"}, dict(malignant=0.2, benign=0.6, tumor=0.6),
                  ref_class="normal", pred_class="cyst",
                  pred_lesions=[("cyst", "fp", 0.6, None)], dice_counts=((50, 50, 50), (0, 0, 4))),
        make_case("p4", {"hcc", "cyst"}, {"metastasis"}, dict(malignant=0.7, benign=0.4, tumor=0.8),
                  ref_class="hcc", pred_class="metastasis",
                  ref_lesions=[("hcc", 70.0, 26.0, "fl", "metastasis"), ("cyst", 3.0, 9.0, "fl", "metastasis")],
                  pred_lesions=[("metastasis", "fl", 0.8, "hcc"), ("metastasis", "fl", 0.7, "cyst")],
                  dice_counts=((100, 100, 100), (10, 20, 20))),
        make_case("p5", set(), set(), dict(malignant=0.05, benign=0.1, tumor=0.1),
                  ref_class="normal", pred_class="normal", dice_counts=((0, 0, 0), (0, 0, 0))),
    ]


@pytest.fixture(scope="module")
def summary():
    return summarize(cohort(), SCHEMA, criterion="overlap", min_volume_cm3=0.5)


def test_summary_is_strict_json_with_issue_keys(summary):
    text = json.dumps(summary, allow_nan=False)
    back = json.loads(text)
    for key in ("lesion_level", "per_class", "malignant_group", "patient_level", "froc", "dice", "volume_bins",
                "radius_bins", "per_case", "meta"):
        assert key in back
    for key in ("tp", "fl", "fp", "fn", "precision", "recall", "f1", "recall_rough"):
        assert key in back["lesion_level"] and key in back["per_class"]["hcc"] and key in back["malignant_group"]
    for key in ("malignant", "benign", "screening", "three_class_accuracy", "confusion_matrix", "auc"):
        assert key in back["patient_level"]
    assert len(back["per_case"]) == 5


def test_lesion_level_totals(summary):
    ll = summary["lesion_level"]
    # TP 1 (p1), FL 2 (p4), FP 2 (p1, p3), FN 1 (p2); one ignored reference lesion
    assert (ll["tp"], ll["fl"], ll["fp"], ll["fn"], ll["ignored_reference"]) == (1, 2, 2, 1, 1)
    assert ll["precision"] == pytest.approx(1 / 5)
    assert ll["recall"] == pytest.approx(1 / 4)
    assert ll["recall_rough"] == pytest.approx(3 / 4)


def test_per_class_counts_fl_from_each_side(summary):
    hcc = summary["per_class"]["hcc"]
    assert (hcc["tp"], hcc["fl_ref"], hcc["fl_pred"], hcc["fp"], hcc["fn"]) == (1, 1, 0, 1, 0)
    assert hcc["recall"] == pytest.approx(1 / 2) and hcc["precision"] == pytest.approx(1 / 2)
    meta = summary["per_class"]["metastasis"]
    assert (meta["tp"], meta["fl_ref"], meta["fl_pred"]) == (0, 0, 2)
    assert meta["precision"] == 0.0 and meta["recall"] is None
    cyst = summary["per_class"]["cyst"]
    assert (cyst["tp"], cyst["fl_ref"], cyst["fp"], cyst["fn"]) == (0, 1, 1, 1)
    # malignant group: hcc->metastasis is a group TP, cyst->metastasis a benign FL_ref / malignant FL_pred
    mg = summary["malignant_group"]
    assert (mg["tp"], mg["fl_ref"], mg["fl_pred"], mg["fp"], mg["fn"]) == (2, 0, 1, 1, 0)
    assert mg["precision"] == pytest.approx(2 / 4) and mg["recall"] == 1.0
    bg = summary["benign_group"]
    assert (bg["tp"], bg["fl_ref"], bg["fl_pred"], bg["fp"], bg["fn"]) == (0, 1, 0, 1, 1)


def test_patient_level_hand_cohort(summary):
    pl = summary["patient_level"]
    assert (pl["malignant"]["precision"], pl["malignant"]["recall"], pl["malignant"]["f1"]) == (1.0, 1.0, 1.0)
    assert (pl["benign"]["tp"], pl["benign"]["fp"], pl["benign"]["fn"], pl["benign"]["f1"]) == (0, 1, 2, 0.0)
    sc = pl["screening"]
    assert (sc["tp"], sc["fp"], sc["fn"], sc["tn"]) == (2, 1, 1, 1)
    assert sc["f1"] == pytest.approx(2 / 3) and sc["accuracy"] == pytest.approx(3 / 5)
    assert pl["three_class_accuracy"] == pytest.approx(3 / 5)
    cm = pl["confusion_matrix"]
    assert cm["labels"] == ["normal", "hcc", "metastasis", "hemangioma", "cyst"]
    assert cm["matrix"] == [[1, 0, 0, 0, 1],
                            [0, 1, 1, 0, 0],
                            [0, 0, 0, 0, 0],
                            [0, 0, 0, 0, 0],
                            [1, 0, 0, 0, 0]]
    assert pl["three_class_confusion_matrix"]["matrix"] == [[1, 1, 0], [1, 0, 0], [0, 0, 2]]
    assert pl["auc"]["malignant"] == pytest.approx(1.0)
    assert pl["auc"]["benign"] == pytest.approx(4 / 6)
    assert pl["auc"]["tumor"] == pytest.approx(5 / 6)
    assert pl["auc"]["hemangioma"] is None  # no patient has one


def test_froc_pools_scored_lesions(summary):
    fr = summary["froc"]
    # scored (score, hit): 0.9 hit, 0.4 fp, 0.6 fp, 0.8 hit, 0.7 hit; 4 reference lesions, 5 patients.
    assert fr["curve"]["thresholds"] == [0.9, 0.8, 0.7, 0.6, 0.4]
    assert fr["curve"]["fp_per_patient"] == [0.0, 0.0, 0.0, 0.2, 0.4]
    assert fr["curve"]["sensitivity"] == [0.25, 0.5, 0.75, 0.75, 0.75]
    assert fr["sensitivity"] == [0.75] * 7


def test_froc_absent_without_scores():
    cases = cohort()
    cases[0]["predicted_lesions"][0]["score"] = None
    s = summarize(cases, SCHEMA)
    assert s["froc"] is None and any("FROC" in n for n in s["meta"]["notes"])


def test_dice_mean_and_global(summary):
    d = summary["dice"]
    # liver per case: 0.9, 2*60/160 = 0.75, 1.0, 1.0, None; lesion: 0.8, 0, 0, 0.5, None
    assert d["liver"]["mean"] == pytest.approx((0.9 + 0.75 + 1.0 + 1.0) / 4)
    assert d["liver"]["n"] == 4
    assert d["liver"]["global"] == pytest.approx(2 * 300 / (350 + 310))
    assert d["lesion"]["mean"] == pytest.approx((0.8 + 0 + 0 + 0.5) / 4)


def test_volume_and_radius_bins(summary):
    vb = summary["volume_bins"]
    assert list(vb) == [b[0] for b in VOLUME_BINS_CM3]
    assert vb["16-64"]["n"] == 1 and vb["16-64"]["recall"] == 1.0
    assert vb[">64"]["n"] == 1 and vb[">64"]["recall"] == 0.0 and vb[">64"]["recall_rough"] == 1.0
    assert vb["0.5-2"]["n"] == 1 and vb["0.5-2"]["fn"] == 1
    assert vb["<0.5"]["n"] == 0 and vb["<0.5"]["recall"] is None  # the 0.2 cm3 lesion is ignored
    assert vb[">64"]["high"] is None
    rb = summary["radius_bins"]
    assert [rb[k]["n"] for k in rb] == [0, 2, 1, 1]


def test_bin_edges_are_half_open():
    assert bin_name(0.5, VOLUME_BINS_CM3) == "0.5-2"
    assert bin_name(64.0, VOLUME_BINS_CM3) == ">64"
    assert bin_name(4.999, RADIUS_BINS_MM) == "<5" and bin_name(20.0, RADIUS_BINS_MM) == ">20"


def test_format_percent_rounds_half_up_like_the_papers():
    assert format_percent(385 / 400) == "96.3%"   # Table V "Malig" precision
    assert format_percent(448 / 538) == "83.3%"
    assert format_percent(None) == "n/a"
    assert format_percent(1.0) == "100.0%"


def test_format_summary_tables(summary):
    text = format_summary(summary)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("Type"))
    assert header.split() == ["Type", "FN", "FP", "FL", "TP", "Precision", "Recall", "Recall-rough", "F1"]
    all_row = next(line for line in lines if line.startswith("All "))
    assert all_row.split() == ["All", "1", "2", "2", "1", "20.0%", "25.0%", "75.0%", "22.2%"]
    assert any(line.startswith("Malig ") for line in lines)
    assert "Three-class (normal / benign / malignant) accuracy: 60.0%" in text
    assert "malignant 1.000" in text


def test_compare_summaries_and_format(summary):
    better = summarize(cohort()[:1] + cohort()[4:], SCHEMA)
    cmp = compare_summaries(summary, better)
    assert cmp["lesion recall"]["baseline"] == pytest.approx(0.25)
    assert cmp["lesion recall"]["ours"] == pytest.approx(1.0)
    assert cmp["lesion recall"]["delta"] == pytest.approx(0.75)
    assert cmp["per_class"]["hcc"]["recall"]["delta"] == pytest.approx(0.5)
    text = format_comparison(summary, better, names=("nnU-Net", "+PLUS"))
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["nnU-Net"][1:4] == ["22.2%", "20.0%", "25.0%"]
    assert rows["delta"][:2] == ["delta", "(pp)"]
    recall_delta = next(line for line in text.splitlines() if line.startswith("lesion recall "))
    assert recall_delta.split()[-1] == "+75.00"
