"""The decision rule of stage two (nnunet_plus.classifier.operating_point): apply, fit on validation, store."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_plus.classifier.bank_io import load_case_bank
from nnunet_plus.classifier.rule_scores import score_cases
from nnunet_plus.decision_rule import DecisionRule, apply_rule
from nnunet_plus.classifier.operating_point import fit_rule, load_rule, save_rule

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
    assert not fitted.rule.is_identity
    path = save_rule(fitted, tmp_path / "operating_point.json")
    assert load_rule(path) == fitted.rule
    data = json.loads(path.read_text())
    assert data["folds"] == [0, 1] and data["objective"] == "lesion_f1" and data["identity"] is False
    assert data["description"] == fitted.describe()
    assert data["scores"]["false_positives"] <= data["identity_scores"]["false_positives"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: cannot read the operating point"):
        load_rule(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="objective must be one of"):
        fit_rule(banks, [np.eye(3)[b.target] for b in banks], objective="accuracy", **CLASSES)


FOLDS = [0, 0, 0, 1, 1, 1]  # the fixture's splits: fold 0 validates cases 0-2, fold 1 cases 3-5


def _oracle(banks):
    return [np.eye(3)[b.target] * 0.9 + 0.1 / 3 for b in banks]


def _every_change(*args, **kwargs):
    """Stands in for allowed_relabels: every type change allowed (the rules of the grid before the sign test)."""
    return None


def _half_inverted(banks):
    """Informative on fold 0, inverted on fold 1 (true lesions called "not a lesion", false ones lesions).

    The fixture's type changes (one right, one on a false candidate) can never pass the sign test of
    allowed_relabels, which needs five; the tests of the other guards on these tables switch it off
    (:func:`_every_change`)."""
    oracle = _oracle(banks)
    inverted = [np.eye(3)[np.where(b.target == NOT, HCC, NOT)] * 0.9 + 0.1 / 3 for b in banks]
    return [oracle[i] if k == 0 else inverted[i] for i, k in enumerate(FOLDS)]


def test_a_rule_may_not_lower_the_malignant_patient_f1(cls_project, monkeypatch):
    """The pooled best lesion-F1 rule on the half-inverted tables lowers the F1 of the cyst patients. With cysts
    as the malignant group it is not eligible and the identity is stored; without the guard the same search
    would have kept it."""
    from nnunet_plus.classifier import operating_point

    monkeypatch.setattr(operating_point, "allowed_relabels", _every_change)  # see _half_inverted
    banks = _banks(cls_project)
    tables = _half_inverted(banks)
    cyst_malignant = {"malignant_classes": [CYST], "benign_classes": [HCC]}
    guarded = fit_rule(banks, tables, **cyst_malignant)
    assert guarded.rule.is_identity
    unguarded = fit_rule(banks, tables, **cyst_malignant, guards={})
    assert not unguarded.rule.is_identity and unguarded.score > unguarded.identity_score
    assert (unguarded.scores["malignant_f1"] or -1) < (unguarded.identity_scores["malignant_f1"] or -1)


@pytest.mark.parametrize("rule, worse", [
    ({"malignant_f1": 0.75, "malignant_recall": 1.0, "false_positives": 3, "lesions_found": 9}, False),  # the same
    ({"malignant_f1": 0.8, "malignant_recall": 1.0, "false_positives": 2, "lesions_found": 10}, False),  # better
    # a malignant patient lost, the F1 evened out by two false malignant calls removed (3/5 -> 2/2 of 3)
    ({"malignant_f1": 0.8, "malignant_recall": 2 / 3, "false_positives": 3, "lesions_found": 9}, True),
    ({"malignant_f1": 0.75, "malignant_recall": 1.0, "false_positives": 4, "lesions_found": 9}, True),  # FP added
    ({"malignant_f1": 0.75, "malignant_recall": 1.0, "false_positives": 2, "lesions_found": 8}, True),  # lesion lost
    ({"malignant_f1": None, "malignant_recall": None, "false_positives": 0, "lesions_found": 9}, True),  # undefined
])
def test_the_guards_refuse_a_lost_malignant_patient_an_added_false_positive_and_a_lost_lesion(rule, worse):
    from nnunet_plus.classifier.operating_point import _worsens

    identity = {"malignant_f1": 0.75, "malignant_recall": 1.0, "false_positives": 3, "lesions_found": 9}
    assert _worsens(rule, identity) is worse


def test_unknown_guards_are_refused(cls_project):
    banks = _banks(cls_project)
    with pytest.raises(ValueError, match="guards must be among"):
        fit_rule(banks, [np.full((b.num_candidates, 3), 1 / 3) for b in banks], **CLASSES, guards={"recall": 1})


def _suspicious_made_false(bank):
    """``bank`` with its suspicious (f = 4) candidates made false ones: target "not a lesion", no reference overlap."""
    import dataclasses

    suspicious = np.flatnonzero(bank.tier == 1)
    target = bank.target.copy()
    target[suspicious] = NOT
    overlap = np.asarray(bank.overlap).reshape(-1, 3)   # [candidate id, reference id, shared voxels]
    overlap = overlap[~np.isin(overlap[:, 0], suspicious + 1)]
    return dataclasses.replace(bank, target=target, overlap=overlap)


def test_a_rule_may_not_add_false_positives(cls_project, monkeypatch):
    """One suspicious candidate made a false one (cls_003's). Tables that type the confident lesions right but keep
    the confident false candidates, and call every suspicious candidate a sure hcc: reporting the suspicious ones
    gains one lesion on cls_000 and adds one false positive, which raises the lesion F1. The guard refuses it (the
    type changes stay); without the false-positive guard the same search reports them."""
    from nnunet_plus.classifier import operating_point

    monkeypatch.setattr(operating_point, "allowed_relabels", _every_change)  # see _half_inverted
    banks = _banks(cls_project)
    index = cls_project.cases.index("cls_003")
    banks[index] = _suspicious_made_false(banks[index])
    tables = [np.eye(3)[np.where(b.tier == 1, HCC, np.where(b.target == NOT, b.base_class, b.target))] * 0.9
              + 0.1 / 3 for b in banks]
    guarded = fit_rule(banks, tables, **CLASSES)
    assert not guarded.rule.is_identity and guarded.score > guarded.identity_score
    assert guarded.scores["false_positives"] <= guarded.identity_scores["false_positives"]
    unguarded = fit_rule(banks, tables, **CLASSES, guards={"malignant_f1": 1, "malignant_recall": 1})
    assert unguarded.score > unguarded.identity_score
    assert unguarded.scores["false_positives"] > unguarded.identity_scores["false_positives"]
    assert unguarded.rule.accept_suspicious < 1.0 and guarded.rule.accept_suspicious == 1.0


def test_a_rule_may_not_reject_a_lesion_nnunet_found(cls_project):
    """The suspicious candidates made false ones (so nnU-Net's f = 4 answer sets no higher bar), and tables that
    agree with nnU-Net's class everywhere but call the real cysts nnU-Net typed "hcc" (cls_000's and cls_003's
    third candidate) "not a lesion": rejecting them raises the lesion F1 (a wrong-type lesion counts in both its
    precision and its recall) while the two lesions are no longer reported. The default guards refuse it; without
    the lesions_found guard the same search rejects them."""
    banks = [_suspicious_made_false(bank) for bank in _banks(cls_project)]
    wrong_type = [(b.tier == 0) & (b.target != NOT) & (b.target != b.base_class) for b in banks]
    assert sum(int(w.sum()) for w in wrong_type) == 2
    tables = [np.eye(3)[np.where(w | (b.tier == 1), NOT, b.base_class)] * 0.9 + 0.1 / 3
              for b, w in zip(banks, wrong_type)]
    guarded = fit_rule(banks, tables, **CLASSES)
    assert guarded.rule.is_identity
    unguarded = fit_rule(banks, tables, **CLASSES, guards={"malignant_f1": 1, "malignant_recall": 1,
                                                            "false_positives": -1})
    assert unguarded.rule.reject_confident < 1.0 and unguarded.score > unguarded.identity_score
    assert unguarded.scores["lesions_found"] == unguarded.identity_scores["lesions_found"] - 2


def test_the_benign_patient_f1_is_reported_not_guarded(cls_project, monkeypatch):
    """The same tables with cysts benign: the rule that lowers the benign F1 is kept, and its benign F1 is
    stored beside nnU-Net alone's."""
    from nnunet_plus.classifier import operating_point

    monkeypatch.setattr(operating_point, "allowed_relabels", _every_change)  # see _half_inverted
    banks = _banks(cls_project)
    fitted = fit_rule(banks, _half_inverted(banks), **CLASSES)
    assert not fitted.rule.is_identity and fitted.score > fitted.identity_score
    assert (fitted.scores["benign_f1"] or -1) < (fitted.identity_scores["benign_f1"] or -1)
    assert (fitted.scores["malignant_f1"] or -1) >= (fitted.identity_scores["malignant_f1"] or -1)


def test_type_is_decided_group_first():
    """Malignant vs benign is decided on the summed group probability, then the type inside the group."""
    from nnunet_plus.decision_rule import group_first_type

    # types: hcc, icc, metastasis (malignant), hemangioma, cyst (benign), calcification (no group); then "not"
    groups = [[0, 1, 2], [3, 4]]
    table = np.array([
        [0.19, 0.25, 0.12, 0.12, 0.30, 0.00, 0.02],  # malignant 0.56 > benign 0.42: icc, not the argmax cyst
        [0.05, 0.28, 0.12, 0.34, 0.20, 0.00, 0.01],  # benign 0.54 > malignant 0.45: hemangioma
        [0.10, 0.10, 0.10, 0.05, 0.05, 0.55, 0.05],  # calcification alone 0.55 > malignant 0.30 > benign 0.10
    ])
    types, mass = group_first_type(table, groups)
    assert types.tolist() == [1, 3, 5]
    np.testing.assert_allclose(mass[0], [0.56, 0.56, 0.56, 0.42, 0.42, 0.0])
    assert group_first_type(table)[0].tolist() == [4, 3, 5]  # without groups: the plain argmax
    rule = DecisionRule(reject_confident=0.9, relabel_margin=0.1, accept_suspicious=0.9)
    # confident hcc, PLUS icc: same group, icc leads hcc by 0.06 <= 0.1, so hcc stays;
    # confident cyst, PLUS icc: other group, malignant leads benign by 0.14 > 0.1, so icc;
    # confident hcc, PLUS hemangioma: benign leads malignant by 0.09 <= 0.1, so hcc stays
    _, classes = apply_rule(rule, table[[0, 0, 1]], tier=[0, 0, 0], nnunet_class=[0, 4, 0], groups=groups)
    assert classes.tolist() == [0, 1, 0]
    # a suspicious candidate takes the group-first type
    reported, classes = apply_rule(rule, table[:1], tier=[1], nnunet_class=[4], groups=groups)
    assert reported.tolist() == [True] and classes.tolist() == [1]


def test_a_rule_changes_only_the_allowed_types():
    """relabel_pairs: hcc -> cyst is allowed, cyst -> hcc is not; a rule allowing no change and adding nothing is
    the identity."""
    table = np.array([[0.1, 0.8, 0.1],   # confident hcc, PLUS cyst: allowed
                      [0.8, 0.1, 0.1]])  # confident cyst, PLUS hcc: not allowed
    rule = DecisionRule(relabel_margin=0.0, relabel_pairs=[(HCC, CYST)])
    reported, classes = apply_rule(rule, table, tier=[0, 0], nnunet_class=[HCC, CYST])
    assert reported.tolist() == [True, True] and classes.tolist() == [CYST, CYST]
    assert DecisionRule(relabel_margin=0.0).relabels
    assert apply_rule(DecisionRule(relabel_margin=0.0), table, tier=[0, 0], nnunet_class=[HCC, CYST])[1].tolist() \
        == [CYST, HCC]
    assert DecisionRule(relabel_margin=0.0, relabel_pairs=()).is_identity
    assert "only hcc -> cyst" in rule.describe(["hcc", "cyst"])
    assert DecisionRule.from_json(rule.to_json()) == rule and rule.relabel_pairs == ((HCC, CYST),)
    with pytest.raises(ValueError, match="relabel_pairs"):
        DecisionRule(relabel_pairs=[(HCC, HCC)])


def _relabel_bank(base_class, target):
    """The fields allowed_relabels reads, for confident candidates."""
    from types import SimpleNamespace

    base_class = np.asarray(base_class)
    return SimpleNamespace(num_candidates=len(base_class), tier=np.zeros(len(base_class), dtype=np.int64),
                           base_class=base_class, target=np.asarray(target))


def test_a_type_change_must_beat_nnunet_by_a_sign_test():
    """cyst -> hcc (benign to malignant, level 0.05) right 6 times and never wrong (p = 1/64): allowed; hcc -> cyst
    right 4 times, wrong 2 (p = 0.34): refused. Candidates of neither type (false candidates) count for
    neither."""
    from nnunet_plus.classifier.operating_point import allowed_relabels

    to_cyst, to_hcc = [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]
    banks = [_relabel_bank([CYST] * 6 + [CYST] * 3, [HCC] * 6 + [NOT] * 3),
             _relabel_bank([HCC] * 6, [CYST] * 4 + [HCC] * 2)]
    tables = [np.array([to_hcc] * 9), np.array([to_cyst] * 6)]
    assert allowed_relabels(banks, tables, relabel_margin=0.0, **CLASSES) == ((CYST, HCC),)
    # five right of five still passes at 0.05 (p = 1/32), four of four does not (p = 1/16)
    five = [_relabel_bank([CYST] * 5, [HCC] * 5)]
    assert allowed_relabels(five, [np.array([to_hcc] * 5)], relabel_margin=0.0, **CLASSES) == ((CYST, HCC),)
    four = [_relabel_bank([CYST] * 4, [HCC] * 4)]
    assert allowed_relabels(four, [np.array([to_hcc] * 4)], relabel_margin=0.0, **CLASSES) == ()
    # a margin the PLUS lead does not pass changes nothing, so nothing is allowed
    assert allowed_relabels(banks, tables, relabel_margin=0.8, **CLASSES) == ()


def test_a_change_from_malignant_to_benign_needs_the_stricter_level():
    """hcc -> cyst takes a malignant call away: it must pass RELABEL_ALPHA_MALIGNANT_TO_BENIGN (0.01), so six right
    of six (p = 1/64) are refused where they pass 0.05, and seven of seven (p = 1/128) are allowed."""
    from nnunet_plus.classifier.operating_point import RELABEL_ALPHA_MALIGNANT_TO_BENIGN, allowed_relabels

    assert RELABEL_ALPHA_MALIGNANT_TO_BENIGN == 0.01
    to_cyst = [0.1, 0.8, 0.1]
    six = [_relabel_bank([HCC] * 6, [CYST] * 6)]
    assert allowed_relabels(six, [np.array([to_cyst] * 6)], relabel_margin=0.0, **CLASSES) == ()
    assert allowed_relabels(six, [np.array([to_cyst] * 6)], relabel_margin=0.0, alpha_malignant_to_benign=0.05,
                            **CLASSES) == ((HCC, CYST),)
    seven = [_relabel_bank([HCC] * 7, [CYST] * 7)]
    assert allowed_relabels(seven, [np.array([to_cyst] * 7)], relabel_margin=0.0, **CLASSES) == ((HCC, CYST),)


def test_a_change_from_malignant_to_benign_counts_every_malignant_lesion_against_it():
    """icc -> cyst turns the malignant call: the 8 cysts it gets right weigh against the 2 hcc it makes benign
    (nnU-Net's "icc" was right about malignancy; p = 0.055): refused. The same 2 + 8 candidates under icc ->
    hcc, a change inside the malignant group: the cysts count for neither side, 8 of 8 right: allowed."""
    from nnunet_plus.classifier.operating_point import allowed_relabels

    hcc, icc, cyst, not_a_lesion = 0, 1, 2, 3
    groups = {"malignant_classes": [hcc, icc], "benign_classes": [cyst]}
    to_cyst, to_hcc = [0.05, 0.15, 0.7, 0.1], [0.7, 0.15, 0.05, 0.1]
    bank = _relabel_bank([icc] * 11, [cyst] * 8 + [hcc] * 2 + [not_a_lesion])
    assert allowed_relabels([bank], [np.array([to_cyst] * 11)], relabel_margin=0.0, **groups) == ()
    assert allowed_relabels([bank], [np.array([to_cyst] * 11)], relabel_margin=0.0, alpha_malignant_to_benign=0.05,
                            **groups) == ()  # refused at the looser level too: the two hcc count against it
    # without the two hcc the change passes (8 of 8, p = 1/256)
    no_hcc = _relabel_bank([icc] * 9, [cyst] * 8 + [not_a_lesion])
    assert allowed_relabels([no_hcc], [np.array([to_cyst] * 9)], relabel_margin=0.0, **groups) == ((icc, cyst),)
    inside = _relabel_bank([icc] * 10, [hcc] * 8 + [cyst] * 2)
    assert allowed_relabels([inside], [np.array([to_hcc] * 10)], relabel_margin=0.0, **groups) == ((icc, hcc),)


def test_the_fitted_rule_stores_its_allowed_type_changes(tmp_path, cls_project):
    """The pooled rule's type changes are those allowed_relabels finds on the same cases for its margin, and
    they survive the JSON round trip."""
    from nnunet_plus.classifier.operating_point import allowed_relabels

    banks = _banks(cls_project)
    oracle = _oracle(banks)
    fitted = fit_rule(banks, oracle, class_names=["hcc", "cyst"], **CLASSES)
    assert fitted.rule.relabel_pairs == allowed_relabels(banks, oracle, relabel_margin=fitted.rule.relabel_margin,
                                                         **CLASSES)
    assert load_rule(save_rule(fitted, tmp_path / "operating_point.json")) == fitted.rule
