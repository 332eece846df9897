"""The refinement rule (nnunet_plus.refine) on a hand-made softmax, with and without a classifier.

Softmax (background, liver, hcc, cyst) on a 6 x 20 x 20 grid, spacing 2 x 1 x 1 mm:
  liver everywhere in [0:6, 1:19, 1:19] (liver 0.9, background 0.1), background 0.9 / liver 0.1 elsewhere;
  lesion A [1:4, 3:7, 3:7]: hcc 0.8, liver 0.15, bg 0.05 -> hcc at f=1 (confident), 3*4*4 = 48 voxels;
  lesion B [2:4, 12:15, 12:15]: cyst 0.3, liver 0.65, bg 0.05 -> liver at f=1, cyst at f=4 (suspicious).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from nnunet_plus.decision_rule import DecisionRule
from nnunet_plus.files.image_io import Geometry
from nnunet_plus.refine import CaseRefiner
from nnunet_plus.schema import build_schema

SCHEMA = build_schema({"background": 0, "liver": 1, "hcc": 2, "cyst": 3})
A = (slice(1, 4), slice(3, 7), slice(3, 7))
B = (slice(2, 4), slice(12, 15), slice(12, 15))
GEOMETRY = Geometry(size=(20, 20, 6), spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0),
                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _softmax() -> np.ndarray:
    p = np.zeros((4, 6, 20, 20), np.float32)
    p[0], p[1] = 0.9, 0.1
    p[0][:, 1:19, 1:19], p[1][:, 1:19, 1:19] = 0.1, 0.9
    for box, values in ((A, (0.05, 0.15, 0.8, 0.0)), (B, (0.05, 0.65, 0.0, 0.3))):
        for c, v in enumerate(values):
            p[c][box] = v
    return p


def _image() -> np.ndarray:
    image = np.full((1, 6, 20, 20), 60.0, np.float32)
    image[0][A] = 30.0
    return image


#: the network's own answer: reject on a "not a lesion" majority, take the PLUS type when it leads
MAJORITY = DecisionRule(reject_confident=0.5, relabel_margin=0.0, accept_suspicious=0.5)


class FakeClassifier:
    """Duck-typed PLUSInference: per candidate, rows chosen by where the candidate is; ``rule`` its decision rule."""

    def __init__(self, row_a, row_b, rule: DecisionRule = MAJORITY):
        self.rows = {"A": np.asarray(row_a), "B": np.asarray(row_b)}
        self.rule = rule

    def predict_case(self, image, probabilities, analysis, *, spacing):
        assert spacing == (2.0, 1.0, 1.0) and image.shape == (1, 6, 20, 20)
        rows = [self.rows["A" if rec["centroid_voxel"][1] < 10 else "B"] for rec in analysis.detections.lesions]
        return SimpleNamespace(lesion_probabilities=np.stack(rows),
                               patient={"tumor": 0.7, "malignant": 0.7, "benign": 0.1, "hcc": 0.7, "cyst": 0.1})


def test_without_classifier_reports_base_lesions_with_nnunet_prior():
    result = CaseRefiner(SCHEMA).refine("c", _image(), _softmax(), GEOMETRY)
    lesions = result.record["lesions"]
    assert len(lesions) == 1
    lesion = lesions[0]
    assert (lesion["id"], lesion["class"], lesion["label"], lesion["tier"]) == (1, "hcc", 2, "confident")
    assert lesion["probability"] == pytest.approx(0.8)
    assert lesion["prior"] == pytest.approx({"hcc": 0.8, "cyst": 0.0})
    assert lesion["n_voxels"] == 48 and lesion["volume_mm3"] == pytest.approx(96.0)
    assert lesion["hu_mean"] == pytest.approx(30.0)
    assert "plus" not in lesion and result.record["classifier"] is False
    expected = np.zeros((6, 20, 20), np.uint8)
    expected[:, 1:19, 1:19] = 1
    expected[A] = 2
    np.testing.assert_array_equal(result.label_map, expected)  # B (suspicious) stays liver
    np.testing.assert_array_equal(result.instances, (expected == 2).astype(np.int32))
    patient = result.record["patient"]
    assert patient["class"] == "hcc" and patient["n_lesions"] == 1
    assert patient["probability_source"] == "livermax"
    assert patient["livermax"] == pytest.approx({"hcc": 0.8, "cyst": 0.3})
    assert patient["probabilities"] == pytest.approx({"tumor": 0.8, "malignant": 0.8, "benign": 0.3,
                                                      "hcc": 0.8, "cyst": 0.3})
    assert result.record["rejected"] == []


@pytest.mark.parametrize("row_a, row_b", [([0.05, 0.05, 0.9], [0.9, 0.05, 0.05]),   # "reject A, add B"
                                          ([0.1, 0.8, 0.1], [0.1, 0.8, 0.1]),     # "retype A, add B"
                                          ([np.nan, np.nan, np.nan], [np.nan] * 3)])
def test_identity_rule_reproduces_nnunet_alone_whatever_the_classifier_says(row_a, row_b):
    alone = CaseRefiner(SCHEMA).refine("c", _image(), _softmax(), GEOMETRY)
    guarded = CaseRefiner(SCHEMA, classifier=FakeClassifier(row_a, row_b, rule=DecisionRule())).refine(
        "c", _image(), _softmax(), GEOMETRY)
    np.testing.assert_array_equal(guarded.label_map, alone.label_map)
    np.testing.assert_array_equal(guarded.instances, alone.instances)
    assert [(r["id"], r["class"]) for r in guarded.record["lesions"]] == [(1, "hcc")]
    assert guarded.record["patient"] == alone.record["patient"]  # stage two stepped aside: LiverMax
    assert guarded.record["operating_point"].startswith("identity")
    assert [r["tier"] for r in guarded.record["rejected"]] == ["suspicious"]


@pytest.mark.parametrize("margin, expected", [(0.2, "cyst"), (0.5, "hcc")])
def test_confident_lesion_is_retyped_only_beyond_the_margin(margin, expected):
    """A is hcc for nnU-Net; PLUS says cyst 0.6 vs hcc 0.3 (lead 0.3)."""
    rule = DecisionRule(reject_confident=0.5, relabel_margin=margin, accept_suspicious=1.0)
    result = CaseRefiner(SCHEMA, classifier=FakeClassifier([0.3, 0.6, 0.1], [0.1, 0.1, 0.8], rule=rule)).refine(
        "c", _image(), _softmax(), GEOMETRY)
    (lesion,) = result.record["lesions"]
    assert (lesion["class"], lesion["nnunet_class"]) == (expected, "hcc")
    assert set(np.unique(result.label_map[A])) == {SCHEMA.labels[expected]}


def test_classifier_rejects_not_a_lesion_and_relabels_candidates():
    classifier = FakeClassifier(row_a=[0.2, 0.1, 0.7], row_b=[0.6, 0.3, 0.1])  # hcc, cyst, not_a_lesion
    result = CaseRefiner(SCHEMA, classifier=classifier).refine("c", _image(), _softmax(), GEOMETRY)
    (lesion,) = result.record["lesions"]
    assert (lesion["id"], lesion["class"], lesion["nnunet_class"], lesion["tier"]) == (1, "hcc", "cyst", "suspicious")
    assert lesion["probability"] == pytest.approx(0.6)
    assert lesion["plus"] == pytest.approx({"hcc": 0.6, "cyst": 0.3, "not_a_lesion": 0.1})
    (rejected,) = result.record["rejected"]
    assert rejected["rejected_by"] == "not_a_lesion" and rejected["nnunet_class"] == "hcc"
    expected = np.zeros((6, 20, 20), np.uint8)
    expected[:, 1:19, 1:19] = 1  # A rejected -> its best non-lesion label (liver 0.15 > background 0.05)
    expected[B] = 2              # B reported as hcc
    np.testing.assert_array_equal(result.label_map, expected)
    np.testing.assert_array_equal(result.instances, (expected == 2).astype(np.int32))
    patient = result.record["patient"]  # MAJORITY takes no patient probability from PLUS
    assert patient["class"] == "hcc" and patient["probability_source"] == "livermax"
    assert patient["probabilities"] == patient["livermax_probabilities"]


@pytest.mark.parametrize("from_plus", [(), ("tumor",), ("benign", "cyst", "hcc", "malignant", "tumor")])
def test_patient_probabilities_come_from_plus_only_for_the_rule_s_keys(from_plus):
    """PLUS (FakeClassifier): tumor 0.7, malignant 0.7, benign 0.1, hcc 0.7, cyst 0.1; LiverMax: tumor 0.8,
    malignant 0.8, benign 0.3, hcc 0.8, cyst 0.3. The lesion decisions do not depend on it."""
    rule = DecisionRule(reject_confident=0.5, relabel_margin=0.0, accept_suspicious=0.5, patient_from_plus=from_plus)
    result = CaseRefiner(SCHEMA, classifier=FakeClassifier([0.2, 0.1, 0.7], [0.6, 0.3, 0.1], rule=rule)).refine(
        "c", _image(), _softmax(), GEOMETRY)
    patient = result.record["patient"]
    plus = {"tumor": 0.7, "malignant": 0.7, "benign": 0.1, "hcc": 0.7, "cyst": 0.1}
    livermax = {"tumor": 0.8, "malignant": 0.8, "benign": 0.3, "hcc": 0.8, "cyst": 0.3}
    assert patient["livermax_probabilities"] == pytest.approx(livermax)
    assert patient["probabilities"] == pytest.approx({k: plus[k] if k in from_plus else livermax[k] for k in plus})
    assert patient["probability_sources"] == {k: "plus" if k in from_plus else "livermax" for k in plus}
    assert patient["probability_source"] == {0: "livermax", 1: "mixed", 5: "plus"}[len(from_plus)]
    assert [(r["class"], r["tier"]) for r in result.record["lesions"]] == [("hcc", "suspicious")]
    if from_plus:
        assert "patient probabilities of " + ", ".join(from_plus) in result.record["operating_point"]


def test_min_probability_rejects_low_confidence_lesions():
    classifier = FakeClassifier(row_a=[0.9, 0.05, 0.05], row_b=[0.2, 0.5, 0.3])
    result = CaseRefiner(SCHEMA, classifier=classifier, min_probability=0.55).refine("c", _image(), _softmax(),
                                                                                    GEOMETRY)
    assert [(r["class"], r["probability"]) for r in result.record["lesions"]] == [("hcc", pytest.approx(0.9))]
    (rejected,) = result.record["rejected"]
    assert rejected["rejected_by"] == "min_probability" and rejected["class"] == "cyst"
    assert result.record["patient"]["class"] == "hcc"
    assert set(np.unique(result.label_map)) == {0, 1, 2}


def test_json_is_plain_python_and_world_centroid_uses_geometry():
    import json

    result = CaseRefiner(SCHEMA).refine("c", None, _softmax(), GEOMETRY)
    text = json.dumps(result.record)
    (lesion,) = json.loads(text)["lesions"]
    # centroid voxel (z, y, x) = (2, 4.5, 4.5); world x = 10 + 4.5, y = -5 + 4.5, z = 3 + 2 * 2
    assert lesion["centroid_world"] == pytest.approx([14.5, -0.5, 7.0])
    assert lesion["hu_mean"] is None


def test_classifier_needs_the_image_and_bad_shapes_are_rejected():
    refiner = CaseRefiner(SCHEMA, classifier=FakeClassifier([1, 0, 0], [1, 0, 0]))
    with pytest.raises(ValueError, match="needs the CT image"):
        refiner.refine("c", None, _softmax(), GEOMETRY)
    with pytest.raises(ValueError, match=r"shape \(K=4, Z, Y, X\)"):
        CaseRefiner(SCHEMA).refine("c", None, _softmax()[:3], GEOMETRY)
    with pytest.raises(ValueError, match="does not match the image grid"):
        CaseRefiner(SCHEMA).refine("c", None, _softmax()[:, :5], GEOMETRY)
    with pytest.raises(ValueError, match="min_probability"):
        CaseRefiner(SCHEMA, min_probability=1.5)


def test_the_liver_found_is_reported_and_a_case_without_liver_is_flagged(tmp_path, caplog):
    """``patient.liver_found`` / ``liver_volume_ml`` from the final label map (liver + lesion labels); a case whose
    softmax holds no liver is still "normal", but flagged, and writing it logs a warning naming the case."""
    from nnunet_plus.predict.runner import write_case_outputs

    record = CaseRefiner(SCHEMA).refine("c", _image(), _softmax(), GEOMETRY).record["patient"]
    assert record["liver_found"] is True
    assert record["liver_volume_ml"] == pytest.approx(6 * 18 * 18 * 2.0 / 1000.0)  # liver box incl. lesion A
    air = np.zeros((4, 6, 20, 20), np.float32)
    air[0] = 1.0
    result = CaseRefiner(SCHEMA).refine("air", np.full((1, 6, 20, 20), -1000.0, np.float32), air, GEOMETRY)
    patient = result.record["patient"]
    assert (patient["class"], patient["n_lesions"], patient["liver_found"], patient["liver_volume_ml"]) == \
        ("normal", 0, False, 0.0)
    with caplog.at_level("WARNING", logger="nnunet_plus.predict.runner"):
        write_case_outputs(tmp_path, result, schema=SCHEMA, image=None)
    assert any("case air: no liver found" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "air.json").is_file()
    caplog.clear()
    with caplog.at_level("WARNING", logger="nnunet_plus.predict.runner"):
        write_case_outputs(tmp_path, CaseRefiner(SCHEMA).refine("c", _image(), _softmax(), GEOMETRY), schema=SCHEMA,
                           image=None)
    assert not any("no liver" in r.getMessage() for r in caplog.records)


def test_a_liver_that_is_not_liver_tissue_is_flagged(tmp_path, caplog):
    """``patient.liver_hu_median``: the median HU of the liver region (None without image); a model that paints
    liver into air gives a liver far outside LIVER_HU_RANGE, which writing the case logs as a warning."""
    from nnunet_plus.predict.runner import write_case_outputs

    assert CaseRefiner(SCHEMA).refine("c", _image(), _softmax(), GEOMETRY).record["patient"]["liver_hu_median"] \
        == pytest.approx(60.0)  # liver 60 HU, lesion A 30 HU on fewer voxels
    assert CaseRefiner(SCHEMA).refine("c", None, _softmax(), GEOMETRY).record["patient"]["liver_hu_median"] is None
    liver_everywhere = np.zeros((4, 6, 20, 20), np.float32)
    liver_everywhere[1] = 1.0
    for case, hu, warned in (("air", -1000.0, True), ("bone", 700.0, True), ("fatty", -30.0, False)):
        result = CaseRefiner(SCHEMA).refine(case, np.full((1, 6, 20, 20), hu, np.float32), liver_everywhere,
                                            GEOMETRY)
        patient = result.record["patient"]
        assert patient["liver_found"] is True and patient["liver_hu_median"] == pytest.approx(hu)
        caplog.clear()
        with caplog.at_level("WARNING", logger="nnunet_plus.predict.runner"):
            write_case_outputs(tmp_path, result, schema=SCHEMA, image=None)
        messages = [r.getMessage() for r in caplog.records]
        assert any(f"case {case}: the liver found has a median of {hu:.0f} HU" in m for m in messages) == warned, \
            messages
        assert json.loads((tmp_path / f"{case}.json").read_text())["patient"]["liver_hu_median"] == \
            pytest.approx(hu)
