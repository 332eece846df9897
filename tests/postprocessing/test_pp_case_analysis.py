"""analyse_case: the schema-driven chain on a small hand-built softmax."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnunet_plus.case_analysis import analyse_case
from nnunet_plus.schema import build_schema

LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}


def _softmax(weak_cyst: bool = True, confident_hcc: bool = True) -> np.ndarray:
    """(4, 6, 10, 10): liver box, a confident hcc block (slices 2-3) and a weak cyst voxel (4, 6, 6)."""
    probabilities = np.zeros((4, 6, 10, 10), dtype=np.float32)
    probabilities[0] = 0.97
    probabilities[1:] = 0.01
    probabilities[:, :, 2:8, 2:8] = np.array([0.01, 0.97, 0.01, 0.01])[:, None, None, None]
    if confident_hcc:
        probabilities[:, 2:4, 3:5, 3:5] = np.array([0.01, 0.3, 0.6, 0.09])[:, None, None, None]
    if weak_cyst:
        probabilities[:, 4, 6, 6] = [0.01, 0.6, 0.09, 0.3]    # liver at f = 1, cyst at f = 4
    return probabilities


@pytest.mark.parametrize("kind", ["float32", "float16", "torch"])
def test_two_tiers_livermax_and_patient(kind):
    schema = build_schema(LABELS)
    probabilities = _softmax()
    given = {"float32": probabilities, "float16": probabilities.astype(np.float16),
             "torch": torch.from_numpy(probabilities)}[kind]
    analysis = analyse_case(given, schema, spacing=(2.0, 1.0, 1.0))
    assert isinstance(analysis.label_maps, np.ndarray) and analysis.label_maps.shape == (2, 6, 10, 10)
    assert analysis.base_detections.labels() == {1: 2}
    assert analysis.detections.labels() == {1: 2, 2: 3}
    assert [r["tier"] for r in analysis.detections.lesions] == ["confident", "suspicious"]
    assert analysis.livermax == pytest.approx({2: 0.6, 3: 0.3}, abs=1e-3)
    assert analysis.patient == pytest.approx({"tumor": 0.6, "malignant": 0.6, "benign": 0.3}, abs=1e-3)
    assert analysis.patient_class == 2

    summary = json.loads(json.dumps(analysis.to_json(schema)))
    assert [(r["id"], r["class"], r["tier"]) for r in summary["lesions"]] == \
        [(1, "hcc", "confident"), (2, "cyst", "suspicious")]
    assert summary["lesions"][0]["probability"] == pytest.approx(0.6, abs=1e-3)
    assert summary["lesions"][1]["prior"] == pytest.approx({"hcc": 0.09, "cyst": 0.3}, abs=1e-3)
    assert summary["patient"]["class"] == "hcc"
    assert summary["patient"]["livermax"] == pytest.approx({"hcc": 0.6, "cyst": 0.3}, abs=1e-3)
    assert set(summary["patient"]["probabilities"]) == {"tumor", "malignant", "benign", "hcc", "cyst"}
    assert summary["sensitivities"] == [1.0, 4.0] and summary["spacing"] == [2.0, 1.0, 1.0]


def test_normal_case():
    schema = build_schema(LABELS)
    analysis = analyse_case(_softmax(weak_cyst=False, confident_hcc=False), schema, spacing=(1.0, 1.0, 1.0))
    assert analysis.detections.lesions == [] and analysis.patient_class == 0
    assert analysis.to_json(schema)["patient"]["class"] == "normal"
    assert analysis.livermax == pytest.approx({2: 0.01, 3: 0.01})


def test_single_sensitivity_marks_everything_confident():
    schema = build_schema(LABELS, sensitivities=[1.0])
    analysis = analyse_case(_softmax(), schema, spacing=(1.0, 1.0, 1.0))
    assert analysis.label_maps.shape[0] == 1
    assert [r["tier"] for r in analysis.detections.lesions] == ["confident"]


def test_minimum_volume_from_the_schema():
    schema = build_schema(LABELS, min_lesion_volume_mm3=4.0)       # the cyst voxel is 2 mm3
    analysis = analyse_case(_softmax(), schema, spacing=(2.0, 1.0, 1.0))
    assert analysis.detections.labels() == {1: 2}


def _speckled_softmax() -> np.ndarray:
    """The confident hcc block plus four isolated cyst voxels, suspicious (liver wins at f = 1, cyst at f = 4),
    with cyst probability 0.21 at (5, 5, 7) and 0.30, 0.20, 0.25 at (5, 7, 2 / 4 / 6)."""
    probabilities = _softmax(weak_cyst=False)
    for (y, x), cyst in zip(((5, 7), (7, 2), (7, 4), (7, 6)), (0.21, 0.30, 0.20, 0.25)):
        probabilities[:, 5, y, x] = [0.01, 0.99 - 0.09 - cyst, 0.09, cyst]
    return probabilities


def test_suspicious_candidates_capped_most_probable_first():
    probabilities = _speckled_softmax()
    everything = analyse_case(probabilities, build_schema(LABELS, max_suspicious_per_case=0), spacing=(1, 1, 1))
    assert [r["tier"] for r in everything.detections.lesions] == ["confident"] + ["suspicious"] * 4

    analysis = analyse_case(probabilities, build_schema(LABELS, max_suspicious_per_case=2), spacing=(1, 1, 1))
    lesions = analysis.detections.lesions
    assert [r["id"] for r in lesions] == [1, 2, 3]
    assert [r["tier"] for r in lesions] == ["confident", "suspicious", "suspicious"]
    assert [list(r["centroid_voxel"]) for r in lesions[1:]] == [[5.0, 7.0, 2.0], [5.0, 7.0, 6.0]]  # 0.30, 0.25
    assert [r["max_probability"] for r in lesions[1:]] == pytest.approx([0.39, 0.34], abs=1e-3)  # any lesion
    instances = analysis.detections.instances
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2, 3]
    assert instances[5, 7, 4] == 0 and instances[5, 5, 7] == 0
    assert analysis.label_maps[-1][5, 7, 4] == 1 and analysis.label_maps[-1][5, 5, 7] == 1   # back to liver
    assert analysis.label_maps[-1][5, 7, 2] == 3
    # the confident tier and the patient level do not change
    assert analysis.base_detections.labels() == everything.base_detections.labels() == {1: 2}
    assert analysis.patient_class == everything.patient_class == 2


def test_wrong_channel_count():
    with pytest.raises(ValueError, match="C=4"):
        analyse_case(np.zeros((3, 2, 2, 2), dtype=np.float32), build_schema(LABELS), spacing=(1.0, 1.0, 1.0))


def test_candidates_are_nnunet_lesions_then_new_suspicious_ones():
    """A confident candidate is nnU-Net's f = 1 lesion itself (not its larger f = 4 component); the f = 4 halo
    around it is no candidate; a lesion found only at f = 4 is a suspicious candidate."""
    from nnunet_plus.case_analysis import merge_candidates

    probabilities = _softmax()
    probabilities[:, 2:4, 5, 3:5] = np.array([0.01, 0.6, 0.3, 0.09])[:, None, None]  # halo: hcc only at f = 4
    schema = build_schema(LABELS)
    analysis = analyse_case(probabilities, schema, spacing=(2.0, 1.0, 1.0))
    assert (analysis.label_maps[-1][2:4, 5, 3:5] == 2).all() and (analysis.label_maps[0][2:4, 5, 3:5] == 1).all()
    confident, suspicious = analysis.detections.lesions
    assert (confident["tier"], confident["n_voxels"], confident["label"]) == ("confident", 8, 2)
    assert (suspicious["tier"], suspicious["n_voxels"], suspicious["label"]) == ("suspicious", 1, 3)
    np.testing.assert_array_equal(analysis.detections.instances == 1, analysis.base_detections.instances == 1)
    assert analysis.detections.instances[4, 6, 6] == 2
    assert confident["prior"] == pytest.approx([0.6, 0.09])  # over its own f = 1 voxels, not diluted by the halo
    with pytest.raises(ValueError, match="differ in shape"):
        merge_candidates(analysis.base_detections, type(analysis.detections)(np.zeros((2, 2, 2), np.int32), []))
