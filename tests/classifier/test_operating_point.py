"""The decision rule of stage two (nnunet_plus.classifier.operating_point): apply, fit on validation, store."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_plus.classifier.bank_io import load_case_bank
from nnunet_plus.classifier.bank_metrics import score_cases
from nnunet_plus.classifier.operating_point import (DecisionRule, apply_rule, fit_rule, load_rule, save_rule)

HCC, CYST, NOT = 0, 1, 2
CLASSES = {"malignant_classes": [HCC], "benign_classes": [CYST]}


def test_identity_rule_keeps_exactly_the_confident_candidates_with_nnunet_classes():
    table = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.9, 0.1, 0.0], [np.nan, np.nan, np.nan]])
    reported, classes = apply_rule(DecisionRule(), table, tier=[0, 0, 1, 0], nnunet_class=[HCC, HCC, NOT, CYST])
    assert reported.tolist() == [True, True, False, True]
    assert classes.tolist() == [HCC, HCC, NOT, CYST]
    assert DecisionRule().is_identity and not DecisionRule(accept_suspicious=0.9).is_identity


@pytest.mark.parametrize("rule, reported, classes", [
    # reject confident when p(not) > 0.5; retype when the PLUS type leads by > 0.2; add suspicious at p(lesion) > 0.6
    (DecisionRule(0.5, 0.2, 0.6), [False, True, True, True, False], [NOT, CYST, HCC, CYST, NOT]),
    # stricter: nothing rejected at 0.8, no retyping at 0.5, only the surest suspicious one
    (DecisionRule(0.8, 0.5, 0.85), [True, True, True, False, False], [HCC, HCC, HCC, NOT, NOT]),
])
def test_rule_by_hand(rule, reported, classes):
    table = np.array([
        [0.2, 0.1, 0.7],    # confident hcc, "not a lesion" 0.7
        [0.3, 0.6, 0.1],    # confident hcc, PLUS says cyst by 0.3
        [0.5, 0.4, 0.1],    # confident hcc, PLUS agrees
        [0.1, 0.7, 0.2],    # suspicious, p(lesion) 0.8
        [0.3, 0.2, 0.5],    # suspicious, p(lesion) 0.5
    ])
    got = apply_rule(rule, table, tier=[0, 0, 0, 1, 1], nnunet_class=[HCC, HCC, HCC, CYST, HCC])
    assert got[0].tolist() == reported and got[1].tolist() == classes


@pytest.mark.parametrize("kwargs", [{"reject_confident": 1.5}, {"relabel_margin": -0.1},
                                    {"accept_suspicious": float("nan")}])
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be a number in"):
        DecisionRule(**kwargs)


def _banks(cls_project):
    return [load_case_bank(cls_project.bank / f"{case}.npz") for case in cls_project.cases]


def test_fit_on_useless_probabilities_is_the_identity(cls_project):
    """A classifier that knows nothing (uniform output) cannot beat nnU-Net alone: the identity is stored."""
    banks = _banks(cls_project)
    uniform = [np.full((b.num_candidates, 3), 1 / 3) for b in banks]
    fitted = fit_rule(banks, uniform, **CLASSES)
    assert fitted.rule.is_identity
    assert fitted.score == fitted.identity_score
    assert "steps aside" in fitted.describe()


def test_fit_on_informative_probabilities_beats_nnunet_alone(cls_project):
    """Probabilities that know the targets: the fitted rule must score above nnU-Net alone on these cases."""
    banks = _banks(cls_project)
    oracle = [np.eye(3)[b.target] * 0.9 + 0.1 / 3 for b in banks]
    fitted = fit_rule(banks, oracle, **CLASSES)
    assert not fitted.rule.is_identity
    assert fitted.score > fitted.identity_score
    rescored = score_cases(banks, oracle, rule=fitted.rule, **CLASSES)
    assert rescored["lesion_f1"] == pytest.approx(fitted.score)


def test_fit_compensates_a_network_biased_against_not_a_lesion(cls_project):
    """Class weights push "not a lesion" down: a fixed 0.5 threshold keeps the false candidates, the fitted one
    does not (the threshold is chosen on validation, not assumed)."""
    banks = _banks(cls_project)
    biased = []
    for bank in banks:
        table = np.where(bank.target[:, None] == np.arange(3), 0.6, 0.2)  # right answer 0.6
        table[bank.target == NOT] = [0.35, 0.3, 0.35]  # false candidates: "not a lesion" only 0.35
        biased.append(table)
    majority = score_cases(banks, biased, rule=DecisionRule(0.5, 0.0, 0.5), **CLASSES)
    fitted = fit_rule(banks, biased, **CLASSES)
    best = score_cases(banks, biased, rule=fitted.rule, **CLASSES)
    assert best["lesion"]["fp"] < majority["lesion"]["fp"]
    assert fitted.rule.reject_confident < 0.5 or fitted.rule.accept_suspicious >= 0.65


def test_rule_round_trips_through_json_and_bad_files_are_named(tmp_path, cls_project):
    banks = _banks(cls_project)
    fitted = fit_rule(banks, [np.eye(3)[b.target] for b in banks], folds=[0, 1], **CLASSES)
    path = save_rule(fitted, tmp_path / "operating_point.json")
    assert load_rule(path) == fitted.rule
    data = json.loads(path.read_text())
    assert data["folds"] == [0, 1] and data["objective"] == "lesion_f1" and "description" in data
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: cannot read the operating point"):
        load_rule(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="objective must be one of"):
        fit_rule(banks, [np.eye(3)[b.target] for b in banks], objective="accuracy", **CLASSES)
