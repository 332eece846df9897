"""Which patient probabilities stage two takes from PLUS (nnunet_plus.classifier.patient_sources), and how the
choice is fitted with the decision rule, stored and read back."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from nnunet_plus.classifier.bank_io import load_case_bank
from nnunet_plus.classifier.operating_point import fit_rule, load_rule, save_rule
from nnunet_plus.classifier.patient_sources import fit_patient_sources, patient_probabilities
from nnunet_plus.decision_rule import DecisionRule

HCC, CYST = 0, 1
CLASSES = {"malignant_classes": [HCC], "benign_classes": [CYST], "class_names": ("hcc", "cyst")}


def _case(malignant: bool, benign: bool, livermax: tuple[float, float], plus_row: list[float]):
    """One bank case (what fit_patient_sources reads) with one candidate whose PLUS row is ``plus_row``;
    ``livermax`` = nnU-Net's LiverMax (malignant, benign)."""
    bank = SimpleNamespace(patient=np.array([malignant or benign, malignant, benign], np.uint8),
                           patient_types=np.array([malignant, benign], np.uint8),
                           nnunet_patient=np.array([max(livermax), *livermax], np.float32),
                           nnunet_livermax=np.array(livermax, np.float32))
    return bank, np.array([plus_row], np.float64)


def test_patient_probabilities_are_the_highest_over_the_candidates():
    table = np.array([[0.5, 0.1, 0.4], [0.2, 0.7, 0.1]])
    got = patient_probabilities(table, **CLASSES)
    assert got == pytest.approx({"tumor": 0.9, "malignant": 0.5, "benign": 0.7, "hcc": 0.5, "cyst": 0.7})
    for no_candidate in (np.zeros((0, 3)), np.zeros(0)):
        assert patient_probabilities(no_candidate, **CLASSES) == dict.fromkeys(["tumor", "malignant", "benign", "hcc",
                                                                                "cyst"], 0.0)
    with pytest.raises(ValueError, match="must be"):
        patient_probabilities(np.ones(3), **CLASSES)


def test_plus_is_taken_only_where_it_ranks_the_validation_patients_strictly_better():
    """Malignant: LiverMax ranks one pair wrong, PLUS ranks all right -> PLUS. Benign: both perfect (a tie) ->
    LiverMax. Tumour: every patient has a lesion, the AUC is undefined -> LiverMax."""
    cases = [_case(True, False, (0.9, 0.2), [0.8, 0.1, 0.1]),
             _case(True, True, (0.4, 0.9), [0.6, 0.3, 0.1]),
             _case(False, True, (0.5, 0.8), [0.1, 0.8, 0.1]),
             _case(False, True, (0.3, 0.7), [0.2, 0.7, 0.1])]
    banks, tables = zip(*cases)
    chosen, aucs = fit_patient_sources(banks, tables, **CLASSES)
    assert chosen == ("malignant", "hcc")
    assert aucs["malignant"] == pytest.approx([0.75, 1.0]) and aucs["hcc"] == pytest.approx([0.75, 1.0])
    assert aucs["benign"] == pytest.approx([1.0, 1.0])
    assert aucs["tumor"] == [None, None]


def test_a_network_that_returns_nan_ranks_nothing():
    cases = [_case(True, False, (0.9, 0.2), [np.nan] * 3), _case(False, True, (0.1, 0.8), [np.nan] * 3)]
    banks, tables = zip(*cases)
    chosen, aucs = fit_patient_sources(banks, tables, **CLASSES)
    assert chosen == () and aucs["malignant"] == [1.0, None]


def _banks(cls_project):
    return [load_case_bank(cls_project.bank / f"{case}.npz") for case in cls_project.cases]


def test_the_fitted_rule_carries_the_sources_through_its_json(tmp_path, cls_project):
    """Probabilities that know the targets rank the fixture's patients at least as well as LiverMax; whatever
    was chosen, it follows the AUCs stored beside it and survives the JSON file."""
    banks = _banks(cls_project)
    oracle = [np.eye(3)[b.target] * 0.9 + 0.1 / 3 for b in banks]
    fitted = fit_rule(banks, oracle, **CLASSES)
    expected = tuple(sorted(k for k, (lm, plus) in fitted.patient_auc.items()
                            if lm is not None and plus is not None and plus > lm))
    assert fitted.rule.patient_from_plus == expected
    assert set(fitted.patient_auc) == {"tumor", "malignant", "benign", "hcc", "cyst"}
    path = save_rule(fitted, tmp_path / "operating_point.json")
    assert load_rule(path).patient_from_plus == expected
    assert json.loads(path.read_text())["patient_auc"] == fitted.patient_auc
    assert "LiverMax / PLUS" in fitted.describe_patient_auc()


def test_a_rule_file_without_patient_sources_keeps_livermax_and_bad_ones_are_refused():
    old = {"reject_confident": 0.5, "relabel_margin": 1.0, "accept_suspicious": 1.0}  # written before the field
    assert DecisionRule.from_json(old).patient_from_plus == ()
    assert DecisionRule.from_json({**old, "patient_from_plus": ["tumor", "malignant"]}).patient_from_plus == \
        ("malignant", "tumor")
    for bad in ("tumor", [1], [""], None):
        with pytest.raises(ValueError, match="patient_from_plus"):
            DecisionRule.from_json({**old, "patient_from_plus": bad})
