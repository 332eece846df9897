"""The second stage's decision rule (operating point), fitted on out-of-fold validation.

The rule itself (:class:`~nnunet_plus.decision_rule.DecisionRule`: which candidates are reported, with which
type; the identity reports exactly nnU-Net's f = 1 lesions) is in :mod:`nnunet_plus.decision_rule`.
:func:`fit_rule` searches a fixed grid of the three
numbers for the best ``objective`` (default lesion F1) on the classifier folds' validation cases, where the
network never saw the patients, the way nnU-Net chooses its post-processing from cross-validation. The network
must earn the change: a rule is kept only when it beats **strictly** both the identity and nnU-Net's own f = 4
answer (every suspicious candidate reported with nnU-Net's class: a change of sensitivity, which needs no
network; it sets the bar even where the guards below would refuse it, which keeps marginal rules out:
benchmarks/RESULTS.md, "The f = 4 bar"), so a network that adds nothing (a constant output, for instance) leaves
nnU-Net alone in place;
otherwise the identity is stored, and the log and reports say so. Ties between rules go to the one closest to
the identity (the most conservative). A rule is also only eligible when, on the same cases, it worsens none of
:data:`GUARDED_SCORES`: a lesion-level gain must not be paid for with the malignant diagnosis (the malignant
patient F1, and the malignant patients' recall: no malignant patient that nnU-Net found may be lost, even when
a cyst patient no longer called malignant would even out the F1), with false positives (no more reported
candidates that match no lesion than nnU-Net's) nor with lesions (no fewer reported candidates that match a
reference lesion, whatever their type, than nnU-Net's: the lesion F1 counts a lesion of the wrong type in both
its precision and its recall, so rejecting a real lesion that nnU-Net typed wrongly raises the F1 while the
lesion is no longer reported; benchmarks/RESULTS.md, "No lesion nnU-Net found may be lost"). The benign
patient F1 is reported, not guarded: with a handful of benign patients among the validation cases it moves by
one patient's call, and guarding it vetoed rules that raised lesion, malignant and benign F1 on the test cases
(benchmarks/RESULTS.md, "The patient-level guard").
Why the recall and false-positive guards: benchmarks/RESULTS.md, "Guards against malignant patients lost and
false positives added".

Type changes must earn their place one by one. nnU-Net's class ``k`` of a candidate and the PLUS type ``j`` are
each right on some candidates; a rule that changes ``k`` into ``j`` gains only when ``j`` is right more often than
``k`` on the candidates it changes. Pooling all changes lets a few well-learned ones (on the phantom, "hcc" ->
"cyst") carry many that are worse than nnU-Net, and those cost lesions and malignant patients on the test cases
(benchmarks/RESULTS.md, "Type changes one by one"). So for each relabel margin the allowed changes
(:attr:`DecisionRule.relabel_pairs`) are those ``(k, j)`` whose changed candidates, on the cases the rule is
fitted on, are of type ``j`` significantly more often than they are right as nnU-Net called them: a one-sided
exact sign test (McNemar's test on the candidates where the two answers differ and one is right) at
:data:`RELABEL_ALPHA`. nnU-Net's answer is right when the candidate is of type ``k``, and, for a change that
crosses between the malignant and the benign group, when it is of any type of ``k``'s group: such a change
also turns the malignant / benign call the diagnosis rests on, so an "hcc" called "icc" by nnU-Net and "cyst"
by PLUS counts against "icc" -> "cyst" (a malignant lesion made benign). Candidates right under neither answer
(another type, or no lesion) count for neither. A change from a malignant to a benign type takes a malignant
diagnosis away, which costs a patient more than the reverse, so it must pass the stricter level
:data:`RELABEL_ALPHA_MALIGNANT_TO_BENIGN` (seven right changes of seven, where five pass :data:`RELABEL_ALPHA`;
benchmarks/RESULTS.md, "Malignant to benign type changes at α = 0.01").

No held-out check of the pooled rule. Until 2026-12-07 the rule was refitted on all folds but one and used only
when those refits never lost on their held-out fold. With the guards above that check only ever removed gains:
its refits see half the cases, so their sign tests have half the power, and on 12 stored benchmark cohorts it
made stage two step aside on four where the pooled rule gained on the test cases (one by +20.4 pp lesion F1 and
+50 pp malignant patient F1) while preventing no loss (benchmarks/RESULTS.md, "Guards against malignant patients
lost and false positives added").

The fitted rule is stored as JSON (:func:`save_rule`): ``fold_k/operating_point.json`` (fitted on that fold's
validation cases) and ``operating_point.json`` in the classifier folder (fitted on the union of the folds'
validation cases; what ``nnunet_plus_predict`` uses).
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.classifier.patient_sources import fit_patient_sources
from nnunet_plus.decision_rule import DecisionRule, apply_rule

__all__ = ["DEFAULT_GRID", "GUARDED_SCORES", "OBJECTIVES", "OPERATING_POINT_FILE", "RELABEL_ALPHA",
           "RELABEL_ALPHA_MALIGNANT_TO_BENIGN", "SCORE_DIRECTIONS", "FittedRule", "allowed_relabels", "fit_rule",
           "load_rule", "save_rule"]

OPERATING_POINT_FILE = "operating_point.json"
OPERATING_POINT_FORMAT = "nnunet_plus.operating_point"
#: the quantities fit_rule can maximise (keys of rule_scores.score_cases)
OBJECTIVES = ("lesion_f1", "malignant_f1", "benign_f1", "patient_f1")
#: the scores a fitted rule stores (beside nnU-Net alone's) and that may be guarded, each with the direction that
#: is better (+1: higher, -1: lower) (keys of rule_scores.score_cases)
SCORE_DIRECTIONS: dict[str, int] = {"lesion_f1": 1, "malignant_f1": 1, "benign_f1": 1, "patient_f1": 1,
                                    "malignant_recall": 1, "false_positives": -1, "lesions_found": 1}
#: scores a rule may not worsen on the validation cases, whatever the objective; an undefined score (None) counts
#: as the worst
GUARDED_SCORES: dict[str, int] = {name: SCORE_DIRECTIONS[name] for name in ("malignant_f1", "malignant_recall",
                                                                           "false_positives", "lesions_found")}
#: significance level of the sign test a type change (nnU-Net class -> PLUS type) must pass (module docstring)
RELABEL_ALPHA = 0.05
#: the stricter level for a change from a malignant to a benign type (module docstring)
RELABEL_ALPHA_MALIGNANT_TO_BENIGN = 0.01
#: the search grid of each threshold (1.0 = the identity's value)
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "reject_confident": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    "relabel_margin": (0.0, 0.1, 0.2, 0.3, 0.5, 1.0),
    "accept_suspicious": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
}


@dataclass
class FittedRule:
    """A rule fitted on validation cases and the figures it was chosen on (``None``: undefined)."""

    rule: DecisionRule
    objective: str
    score: float | None
    identity_score: float | None
    network_free_score: float | None
    n_cases: int
    folds: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    identity_scores: dict = field(default_factory=dict)
    #: the lesion types in schema order (names the allowed type changes in :meth:`describe`)
    class_names: tuple = field(default=(), compare=False)
    #: per patient probability, its validation AUC ``[LiverMax, PLUS]`` (None: undefined), which chose
    #: ``rule.patient_from_plus`` (:mod:`nnunet_plus.classifier.patient_sources`)
    patient_auc: dict = field(default_factory=dict)

    def describe(self) -> str:
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.1f} %"

        head = (f"operating point on {self.n_cases} validation cases (objective {self.objective}: nnU-Net alone "
                f"{pct(self.identity_score)}, nnU-Net's f=4 answer {pct(self.network_free_score)}, best rule with "
                f"the classifier {pct(self.score)}): ")
        rule_text = self.rule.describe(self.class_names or None)
        if self.rule.is_identity:
            return (head + "the classifier does not beat nnU-Net on its own, so stage two steps aside on the lesions: "
                    + rule_text)
        return head + rule_text

    def describe_patient_auc(self) -> str:
        """The validation AUCs that chose the patient probabilities' sources, one line."""
        def number(v):
            return "n/a" if v is None else f"{v:.3f}"

        cells = [f"{key} {number(lm)} / {number(plus)}" for key, (lm, plus) in self.patient_auc.items()]
        return ("patient probability AUC on the validation cases, LiverMax / PLUS (PLUS only where higher): "
                + ", ".join(cells))

    def to_json(self) -> dict:
        return {"format": OPERATING_POINT_FORMAT, "version": 1, "rule": self.rule.to_json(),
                "identity": self.rule.is_identity, "objective": self.objective, "score": self.score,
                "identity_score": self.identity_score, "network_free_score": self.network_free_score,
                "n_cases": self.n_cases, "folds": list(self.folds),
                "scores": self.scores, "identity_scores": self.identity_scores, "patient_auc": self.patient_auc,
                "description": self.describe()}


def _value(scores: Mapping, objective: str) -> float:
    value = scores[objective]
    return -1.0 if value is None else float(value)


def _worsens(scores: Mapping, reference: Mapping, guards: Mapping[str, int] | None = None) -> bool:
    """True when ``scores`` is worse than ``reference`` in one of ``guards`` (default :data:`GUARDED_SCORES`)."""
    def guarded(values: Mapping, name: str, better: int) -> float:
        return -np.inf if values[name] is None else better * float(values[name])

    guards = GUARDED_SCORES if guards is None else guards
    return any(guarded(scores, name, better) < guarded(reference, name, better) for name, better in guards.items())


def allowed_relabels(banks: Sequence, tables: Sequence[np.ndarray], *, relabel_margin: float,
                     malignant_classes: Sequence[int], benign_classes: Sequence[int], alpha: float | None = None,
                     alpha_malignant_to_benign: float | None = None) -> tuple[tuple[int, int], ...]:
    """The type changes ``(nnU-Net class k, PLUS type j)`` that pass the sign test on ``banks`` / ``tables``
    (module docstring): among the confident candidates that ``relabel_margin`` would change from ``k`` to ``j``,
    ``n_j`` are of type ``j`` (the reference) and ``n_k`` are right as nnU-Net called them (of type ``k``; of any
    type of ``k``'s group when ``k`` and ``j`` are one malignant and one benign type); kept when ``n_j > n_k`` and
    ``P(X >= n_j) < alpha`` (default :data:`RELABEL_ALPHA`; ``alpha_malignant_to_benign``, default
    :data:`RELABEL_ALPHA_MALIGNANT_TO_BENIGN`, when ``k`` is malignant and ``j`` benign) for
    ``X ~ Binomial(n_j + n_k, 1/2)``. Sorted; empty when none passes."""
    from scipy.stats import binomtest

    alpha = RELABEL_ALPHA if alpha is None else alpha
    alpha_down = RELABEL_ALPHA_MALIGNANT_TO_BENIGN if alpha_malignant_to_benign is None else alpha_malignant_to_benign
    rule = DecisionRule(relabel_margin=relabel_margin)
    if not rule.relabels:
        return ()
    malignant, benign = {int(c) for c in malignant_classes}, {int(c) for c in benign_classes}

    def right_as_called(k: int, j: int) -> set[int]:
        """The reference types under which nnU-Net's class ``k`` is the right answer against the change to ``j``."""
        for group, other in ((malignant, benign), (benign, malignant)):
            if k in group and j in other:
                return group
        return {k}

    counts: dict[tuple[int, int], list[int]] = {}
    for bank, table in zip(banks, tables):
        if bank.num_candidates == 0:
            continue
        reported, classes = apply_rule(rule, table, tier=bank.tier, nnunet_class=bank.base_class,
                                       groups=(malignant_classes, benign_classes))
        for i in np.flatnonzero(reported & (classes != bank.base_class) & (bank.base_class < table.shape[1] - 1)):
            k, j, target = int(bank.base_class[i]), int(classes[i]), int(bank.target[i])
            tally = counts.setdefault((k, j), [0, 0])
            tally[0] += target == j
            tally[1] += target in right_as_called(k, j)

    def level(k: int, j: int) -> float:
        return alpha_down if k in malignant and j in benign else alpha

    return tuple(sorted(pair for pair, (n_j, n_k) in counts.items()
                        if n_j > n_k and binomtest(n_j, n_j + n_k, 0.5, alternative="greater").pvalue < level(*pair)))


def _search(banks: Sequence, tables: Sequence[np.ndarray], *, objective: str, grid: Mapping, options: Mapping,
            guards: Mapping[str, int] | None) -> tuple[DecisionRule, dict, dict, dict]:
    """``(rule, its scores, identity scores, network-free scores)``: the grid rule with the best ``objective``
    among those that worsen none of ``guards``, its type changes restricted to :func:`allowed_relabels`
    on the same cases; the identity unless it beats strictly both the identity and nnU-Net's f=4 answer."""
    from nnunet_plus.classifier.rule_scores import score_cases

    identity = DecisionRule()
    identity_scores = score_cases(banks, tables, rule=identity, **options)
    num_classes = max([np.shape(t)[1] for t in tables if np.ndim(t) == 2] or [2])
    nnunet_answers = [np.eye(num_classes)[np.minimum(b.nnunet_class, num_classes - 1)] for b in banks]
    network_free = score_cases(banks, nnunet_answers, rule=DecisionRule(1.0, 1.0, 0.0), **options)
    bar = max(_value(identity_scores, objective), _value(network_free, objective))
    best_rule, best_scores = identity, identity_scores
    best_key = (bar, 3.0)
    groups = {"malignant_classes": options["malignant_classes"], "benign_classes": options["benign_classes"]}
    pairs = {margin: allowed_relabels(banks, tables, relabel_margin=margin, **groups)
             for margin in grid["relabel_margin"]}
    for values in itertools.product(grid["reject_confident"], grid["relabel_margin"], grid["accept_suspicious"]):
        rule = DecisionRule(*values, relabel_pairs=pairs[values[1]])
        if rule.is_identity:
            continue
        scores = score_cases(banks, tables, rule=rule, **options)
        if _worsens(scores, identity_scores, guards):
            continue
        # higher objective first; among equals, the rule closest to the identity (largest thresholds)
        key = (_value(scores, objective), sum(values))
        if key[0] > best_key[0] or (key[0] == best_key[0] and best_rule is not identity and key[1] > best_key[1]):
            best_rule, best_scores, best_key = rule, scores, key
    return best_rule, best_scores, identity_scores, network_free


def fit_rule(banks: Sequence, tables: Sequence[np.ndarray], *, malignant_classes: Sequence[int],
             benign_classes: Sequence[int], objective: str = "lesion_f1", min_volume_mm3: float = 0.0,
             grid: Mapping[str, Sequence[float]] | None = None, folds: Sequence = (),
             class_names: Sequence[str] = (), guards: Mapping[str, int] | None = None) -> FittedRule:
    """The grid rule with the best ``objective`` on ``banks`` (candidate-bank cases) and their PLUS
    probability ``tables`` ((N_i, L + 1) each); the identity unless some rule beats it strictly (module
    docstring). ``folds`` only records which classifier folds' validation cases these are; ``class_names`` (the
    lesion types in schema order) only name the allowed type changes in the description. ``guards``: the scores a
    rule may not worsen, each with its better direction (default :data:`GUARDED_SCORES`; other sets are for
    benchmarks/refit_operating_point.py)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if len(banks) != len(tables):
        raise ValueError(f"{len(banks)} cases but {len(tables)} probability tables")
    if guards is not None and not set(guards) <= set(SCORE_DIRECTIONS):
        raise ValueError(f"guards must be among {tuple(SCORE_DIRECTIONS)}, got {sorted(guards)}")
    grid = {**DEFAULT_GRID, **dict(grid or {})}
    options = dict(malignant_classes=malignant_classes, benign_classes=benign_classes, min_volume_mm3=min_volume_mm3)
    best_rule, best_scores, identity_scores, network_free = _search(banks, tables, objective=objective, grid=grid,
                                                                    options=options, guards=guards)
    from_plus, patient_auc = fit_patient_sources(banks, tables, malignant_classes=malignant_classes,
                                                 benign_classes=benign_classes, class_names=class_names)
    return FittedRule(rule=replace(best_rule, patient_from_plus=from_plus), objective=objective,
                      score=best_scores[objective],
                      identity_score=identity_scores[objective], network_free_score=network_free[objective],
                      n_cases=len(banks), folds=list(folds),
                      scores={k: best_scores[k] for k in SCORE_DIRECTIONS},
                      identity_scores={k: identity_scores[k] for k in SCORE_DIRECTIONS},
                      class_names=tuple(class_names), patient_auc=patient_auc)


def save_rule(fitted: FittedRule, path: str | os.PathLike) -> Path:
    """Write the fitted rule as JSON (atomic)."""
    from nnunet_plus.files.atomic import write_json_atomic

    path = Path(path)
    write_json_atomic(path, fitted.to_json())
    return path


def load_rule(path: str | os.PathLike) -> DecisionRule:
    """The rule of an ``operating_point.json``; ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != OPERATING_POINT_FORMAT:
            raise ValueError("not an nnunet_plus operating point")
        return DecisionRule.from_json(dict(data["rule"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the operating point ({error}); delete it and rerun "
                         "nnunet_plus_train_classifier to fit it again") from None
