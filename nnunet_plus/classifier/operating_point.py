"""The second stage's decision rule (operating point), fitted on out-of-fold validation.

Guard: the second stage only helps or steps aside. Its candidates are nnU-Net's own f = 1 lesions (tier
``"confident"``) and the f = 4 lesions touching none of them (``"suspicious"``, see
:func:`nnunet_plus.case_analysis.merge_candidates`). From the PLUS probabilities ``p`` of a candidate
(``(L + 1,)``: the lesion types in ``schema.lesions`` order, then "not a lesion") and nnU-Net's class ``k``
of it, a :class:`DecisionRule` decides:

* a confident candidate is **rejected** when ``p[not a lesion] > reject_confident``;
* a kept confident candidate takes the PLUS type ``j`` instead of ``k`` only when PLUS leads by more than
  ``relabel_margin``: ``p[j] - p[k]`` when ``j`` and ``k`` are in the same group, else the group masses'
  difference ``P(group of j) - P(group of k)``;
* a suspicious candidate is **reported** when ``1 - p[not a lesion] > accept_suspicious``, with type ``j``.

The PLUS type ``j`` is decided group first (``groups``: the malignant and the benign class indices; a type in
neither is a group of its own): the group with the largest summed probability, then its most probable type.
Whether a lesion is malignant is the decision the diagnosis rests on, so it is taken on the whole malignant
mass: a candidate with hcc 0.19, icc 0.25, metastasis 0.12 (malignant 0.56) and cyst 0.30 is malignant, where
the plain ``argmax`` would call it a cyst and the patient benign. Without ``groups`` ``j = argmax p[:L]``.

The identity rule (every threshold 1: nothing rejected, relabelled or added) reports exactly nnU-Net's f = 1
lesions with nnU-Net's classes, whatever the network says. :func:`fit_rule` searches a fixed grid of the three
numbers for the best ``objective`` (default lesion F1) on the classifier folds' validation cases, where the
network never saw the patients, the way nnU-Net chooses its post-processing from cross-validation. The network
must earn the change: a rule is kept only when it beats **strictly** both the identity and nnU-Net's own f = 4
answer (every suspicious candidate reported with nnU-Net's class: a change of sensitivity, which needs no
network), so a network that adds nothing (a constant output, for instance) leaves nnU-Net alone in place;
otherwise the identity is stored, and the log and reports say so. Ties between rules go to the one closest to
the identity (the most conservative). A rule is also only eligible when it lowers none of the patient-level
F1 scores (:data:`GUARDED_SCORES`: malignant, benign) on the same cases: a lesion-level gain must not be paid
for with the diagnosis.

Held-out check (``case_folds``, one fold label per case): with some 20-50 validation patients the best rule on
all of them is partly fitted to noise, so the search itself must generalise. For each fold ``k`` the rule is
fitted again (same grid, same bar) on the other folds' cases only and scored on fold ``k``'s; the pooled rule is
kept only when these held-out rules are never worse than nnU-Net alone on their fold and strictly better on at
least one, otherwise the identity is stored (the analogue of nested cross-validation: a rule that only helps
the cases it was fitted on is not used).

The fitted rule is stored as JSON (:func:`save_rule`): ``fold_k/operating_point.json`` (fitted on that fold's
validation cases) and ``operating_point.json`` in the classifier folder (fitted on the union of the folds'
validation cases; what ``nnunet_plus_predict`` uses).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_GRID", "GUARDED_SCORES", "OBJECTIVES", "OPERATING_POINT_FILE", "DecisionRule", "FittedRule",
           "apply_rule", "fit_rule", "group_first_type", "load_rule", "save_rule"]

logger = logging.getLogger(__name__)

OPERATING_POINT_FILE = "operating_point.json"
OPERATING_POINT_FORMAT = "nnunet_plus.operating_point"
#: the quantities fit_rule can maximise (keys of bank_metrics.score_cases)
OBJECTIVES = ("lesion_f1", "malignant_f1", "benign_f1", "patient_f1")
#: scores a rule may not lower on the validation cases, whatever the objective (n/a counts as lowest)
GUARDED_SCORES = ("malignant_f1", "benign_f1")
#: the search grid of each threshold (1.0 = the identity's value)
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "reject_confident": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    "relabel_margin": (0.0, 0.1, 0.2, 0.3, 0.5, 1.0),
    "accept_suspicious": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
}


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds of the decision rule (module docstring); the defaults are the identity."""

    reject_confident: float = 1.0
    relabel_margin: float = 1.0
    accept_suspicious: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"decision rule: {name} must be a number in [0, 1], got {value!r}")

    @property
    def is_identity(self) -> bool:
        """True when the rule reports exactly nnU-Net's f = 1 lesions with nnU-Net's classes."""
        return self.reject_confident >= 1.0 and self.relabel_margin >= 1.0 and self.accept_suspicious >= 1.0

    def describe(self) -> str:
        if self.is_identity:
            return "identity (nnU-Net alone: every f=1 lesion kept with nnU-Net's class, no suspicious candidate)"
        return (f"reject a confident candidate when p(not a lesion) > {self.reject_confident:g}; change its type "
                f"when the PLUS type leads nnU-Net's by > {self.relabel_margin:g}; report a suspicious candidate "
                f"when p(lesion) > {self.accept_suspicious:g}")


def _group_of(num_types: int, groups: Sequence[Sequence[int]] | None) -> np.ndarray:
    """(L,) group number of each type: ``groups`` (malignant, benign class indices) first, any other type alone."""
    group_of = np.arange(num_types)
    for number, members in enumerate(groups or ()):
        for t in members:
            if 0 <= int(t) < num_types:
                group_of[int(t)] = num_types + number
    return group_of


def group_first_type(probabilities: np.ndarray, groups: Sequence[Sequence[int]] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(type (N,) int64, group mass (N, L) float64)`` of PLUS ``probabilities`` ((N, L + 1)): the most probable
    type inside the group with the largest summed probability (module docstring); ``mass[:, t]`` is the summed
    probability of the group of type ``t``. Types in no group, and all of them without ``groups``, are their
    own group. Ties go to the lowest index."""
    p = np.asarray(probabilities, dtype=np.float64)[:, :-1]
    group_of = _group_of(p.shape[1], groups)
    mass = np.zeros_like(p)
    for g in np.unique(group_of):
        inside = group_of == g
        mass[:, inside] = p[:, inside].sum(axis=1, keepdims=True)
    chosen_group = group_of[np.argmax(mass, axis=1)]  # the largest group mass (its lowest type on ties)
    inside_chosen = np.where(group_of[None, :] == chosen_group[:, None], p, -np.inf)
    return np.argmax(inside_chosen, axis=1).astype(np.int64), mass


def apply_rule(rule: DecisionRule, probabilities: np.ndarray, *, tier: np.ndarray,
               nnunet_class: np.ndarray, groups: Sequence[Sequence[int]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(reported (N,) bool, class (N,) int64)`` of one case's candidates.

    Parameters
    ----------
    probabilities : (N, L + 1) PLUS probabilities (lesion types, then "not a lesion").
    tier : (N,) 0 = confident (an f = 1 lesion), 1 = suspicious.
    nnunet_class : (N,) nnU-Net's class index of each candidate (in ``[0, L]``; used for confident ones).
    groups : the malignant and the benign class indices (the PLUS type is decided group first; module
        docstring), or None (plain argmax).

    A rejected candidate gets class ``L``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, L + 1), got shape {p.shape}")
    n, not_a_lesion = p.shape[0], p.shape[1] - 1
    tier = np.asarray(tier).reshape(-1)
    nnunet_class = np.asarray(nnunet_class, dtype=np.int64).reshape(-1)
    if tier.shape != (n,) or nnunet_class.shape != (n,):
        raise ValueError(f"need one tier and one nnU-Net class per candidate ({n}), got {tier.shape} and "
                         f"{nnunet_class.shape}")
    confident = tier == 0
    if rule.is_identity:  # exact, whatever the probabilities (NaN included)
        return confident.copy(), np.where(confident, nnunet_class, not_a_lesion).astype(np.int64)
    best, mass = group_first_type(p, groups)
    own = np.clip(nnunet_class, 0, not_a_lesion - 1)
    rows = np.arange(n)
    group_of = _group_of(not_a_lesion, groups)
    lead = np.where(group_of[best] == group_of[own], p[rows, best] - p[rows, own], mass[rows, best] - mass[rows, own])
    relabel = (nnunet_class >= not_a_lesion) | (lead > rule.relabel_margin)
    confident_class = np.where(relabel, best, nnunet_class)
    reported = np.where(confident, ~(p[:, not_a_lesion] > rule.reject_confident),
                        (1.0 - p[:, not_a_lesion]) > rule.accept_suspicious)
    classes = np.where(confident, confident_class, best)
    return reported, np.where(reported, classes, not_a_lesion).astype(np.int64)


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
    #: held-out check per fold label: {"identity", "rule": objective on that fold, "fitted_rule": rule of the others}
    held_out: dict = field(default_factory=dict)
    #: True / False: the check passed / failed (then ``rule`` is the identity); None: not run
    held_out_passed: bool | None = None
    #: the distinct fold labels of ``case_folds`` (empty when none were given)
    held_out_folds: list = field(default_factory=list, compare=False)

    def describe(self) -> str:
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.1f} %"

        head = (f"operating point on {self.n_cases} validation cases (objective {self.objective}: nnU-Net alone "
                f"{pct(self.identity_score)}, nnU-Net's f=4 answer {pct(self.network_free_score)}, best rule with "
                f"the classifier {pct(self.score)}): ")
        per_fold = ", ".join(f"fold {k}: {pct(v['identity'])} -> {pct(v['rule'])}" for k, v in self.held_out.items())
        if self.held_out_passed is False:
            return head + (f"the rule fitted on the other folds did not beat nnU-Net alone on every held-out fold "
                           f"({per_fold}), so stage two steps aside: " + self.rule.describe())
        if self.rule.is_identity:
            text = head + ("the classifier does not beat nnU-Net on its own, so stage two steps aside: "
                           + self.rule.describe())
        else:
            text = head + self.rule.describe()
        if self.held_out_passed:
            text += f"; held-out check passed ({per_fold})"
        elif len(self.held_out_folds) == 1:
            text += "; held-out check: needs validation cases of 2 or more folds"
        return text

    def to_json(self) -> dict:
        return {"format": OPERATING_POINT_FORMAT, "version": 1, "rule": asdict(self.rule),
                "identity": self.rule.is_identity, "objective": self.objective, "score": self.score,
                "identity_score": self.identity_score, "network_free_score": self.network_free_score,
                "n_cases": self.n_cases, "folds": list(self.folds),
                "scores": self.scores, "identity_scores": self.identity_scores,
                "held_out": self.held_out, "held_out_passed": self.held_out_passed, "description": self.describe()}


def _value(scores: Mapping, objective: str) -> float:
    value = scores[objective]
    return -1.0 if value is None else float(value)


def _search(banks: Sequence, tables: Sequence[np.ndarray], *, objective: str, grid: Mapping, options: Mapping
            ) -> tuple[DecisionRule, dict, dict, dict]:
    """``(rule, its scores, identity scores, network-free scores)``: the grid rule with the best ``objective``
    among those that lower no :data:`GUARDED_SCORES`; the identity unless it beats strictly both the identity
    and nnU-Net's f=4 answer."""
    from nnunet_plus.classifier.bank_metrics import score_cases

    identity = DecisionRule()
    identity_scores = score_cases(banks, tables, rule=identity, **options)
    num_classes = max([np.shape(t)[1] for t in tables if np.ndim(t) == 2] or [2])
    nnunet_answers = [np.eye(num_classes)[np.minimum(b.nnunet_class, num_classes - 1)] for b in banks]
    network_free = score_cases(banks, nnunet_answers, rule=DecisionRule(1.0, 1.0, 0.0), **options)
    bar = max(_value(identity_scores, objective), _value(network_free, objective))
    best_rule, best_scores = identity, identity_scores
    best_key = (bar, 3.0)
    for values in itertools.product(grid["reject_confident"], grid["relabel_margin"], grid["accept_suspicious"]):
        rule = DecisionRule(*values)
        if rule.is_identity:
            continue
        scores = score_cases(banks, tables, rule=rule, **options)
        if any(_value(scores, name) < _value(identity_scores, name) for name in GUARDED_SCORES):
            continue
        # higher objective first; among equals, the rule closest to the identity (largest thresholds)
        key = (_value(scores, objective), sum(values))
        if key[0] > best_key[0] or (key[0] == best_key[0] and best_rule is not identity and key[1] > best_key[1]):
            best_rule, best_scores, best_key = rule, scores, key
    return best_rule, best_scores, identity_scores, network_free


def _held_out(banks: Sequence, tables: Sequence[np.ndarray], case_folds: Sequence, labels: Sequence, *,
              objective: str, grid: Mapping, options: Mapping) -> dict:
    """Per fold label: the rule fitted on the other folds' cases and its / the identity's objective on this fold."""
    from nnunet_plus.classifier.bank_metrics import score_cases

    result = {}
    for label in labels:
        inside = [i for i, k in enumerate(case_folds) if k == label]
        outside = [i for i, k in enumerate(case_folds) if k != label]
        rule = _search([banks[i] for i in outside], [tables[i] for i in outside], objective=objective, grid=grid,
                       options=options)[0]
        fold_banks, fold_tables = [banks[i] for i in inside], [tables[i] for i in inside]
        result[str(label)] = {
            "identity": score_cases(fold_banks, fold_tables, rule=DecisionRule(), **options)[objective],
            "rule": score_cases(fold_banks, fold_tables, rule=rule, **options)[objective],
            "fitted_rule": asdict(rule)}
    return result


def fit_rule(banks: Sequence, tables: Sequence[np.ndarray], *, malignant_classes: Sequence[int],
             benign_classes: Sequence[int], objective: str = "lesion_f1", min_volume_mm3: float = 0.0,
             grid: Mapping[str, Sequence[float]] | None = None, folds: Sequence = (),
             case_folds: Sequence | None = None) -> FittedRule:
    """The grid rule with the best ``objective`` on ``banks`` (candidate-bank cases) and their PLUS
    probability ``tables`` ((N_i, L + 1) each); the identity unless some rule beats it strictly and, given
    ``case_folds`` (one fold label per case) of 2 or more folds, passes the held-out check (module docstring)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if len(banks) != len(tables):
        raise ValueError(f"{len(banks)} cases but {len(tables)} probability tables")
    if case_folds is not None and len(case_folds) != len(banks):
        raise ValueError(f"{len(banks)} cases but {len(case_folds)} fold labels")
    grid = {**DEFAULT_GRID, **dict(grid or {})}
    options = dict(malignant_classes=malignant_classes, benign_classes=benign_classes, min_volume_mm3=min_volume_mm3)
    best_rule, best_scores, identity_scores, network_free = _search(banks, tables, objective=objective, grid=grid,
                                                                    options=options)
    labels = list(dict.fromkeys(case_folds)) if case_folds is not None else []
    try:
        labels = sorted(labels)
    except TypeError:  # mixed label types: keep the order of first appearance
        pass
    held_out, passed = {}, None
    if len(labels) >= 2 and not best_rule.is_identity:
        held_out = _held_out(banks, tables, list(case_folds), labels, objective=objective, grid=grid,
                             options=options)
        gains = [_value(v, "rule") - _value(v, "identity") for v in held_out.values()]
        passed = all(g >= 0 for g in gains) and any(g > 0 for g in gains)
        if not passed:
            best_rule, best_scores = DecisionRule(), identity_scores
            logger.info("operating point: the rule fitted on the other folds does not beat nnU-Net alone on every "
                        "held-out fold; the identity is used")
    keep = ("lesion_f1", "malignant_f1", "benign_f1", "patient_f1")
    return FittedRule(rule=best_rule, objective=objective, score=best_scores[objective],
                      identity_score=identity_scores[objective], network_free_score=network_free[objective],
                      n_cases=len(banks), folds=list(folds),
                      scores={k: best_scores[k] for k in keep}, identity_scores={k: identity_scores[k] for k in keep},
                      held_out=held_out, held_out_passed=passed, held_out_folds=[str(k) for k in labels])


def save_rule(fitted: FittedRule, path: str | os.PathLike) -> Path:
    """Write the fitted rule as JSON (atomic)."""
    from nnunet_plus.schema import write_json_atomic

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
        return DecisionRule(**{k: float(v) for k, v in dict(data["rule"]).items()})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the operating point ({error}); delete it and rerun "
                         "nnunet_plus_train_classifier to fit it again") from None
