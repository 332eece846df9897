"""Lesion- and patient-level scores of classifier decisions computed on candidate-bank arrays (no volumes).

The trainer scores every epoch with these, cheaply, and :func:`~nnunet_plus.classifier.operating_point.fit_rule`
scores every rule of its grid: a :class:`~nnunet_plus.decision_rule.DecisionRule` (the rule of
:mod:`nnunet_plus.refine`) applied to the bank's candidates (its ``tier`` and ``base_class``), then the matching of
:func:`~nnunet_plus.postprocessing.match.match_lesions` ("overlap" criterion: one-to-one assignment
maximising the shared voxels, among the reported candidates and the reference lesions) replayed on the
bank's stored ``overlap`` table (:func:`~nnunet_plus.postprocessing.match.match_overlaps`, the core of
``match_lesions``). Reference lesions below ``min_volume_mm3`` are ignored as in
:func:`~nnunet_plus.evaluation.case.evaluate_case` (neither TP nor FN; a reported candidate overlapping only
ignored ones is no FP). So the lesion counts equal those of ``evaluate_case`` on the refined instance map
for a bank built with the overlap criterion; patient labels are the presence of malignant / benign
reported lesions vs the reference, as there.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nnunet_plus.classifier.bank_io import CaseBank
from nnunet_plus.decision_rule import DecisionRule, apply_rule
from nnunet_plus.evaluation.metrics import binary_metrics, lesion_metrics, mean_or_none
from nnunet_plus.postprocessing.match import match_overlaps

__all__ = ["NETWORK_RULE", "case_lesion_counts", "nnunet_lesion_metrics", "score_cases"]


#: the network's own answer (reject when "not a lesion" has the majority, take the PLUS type when it leads):
#: what the trainer reports per epoch, before an operating point is fitted
NETWORK_RULE = DecisionRule(reject_confident=0.5, relabel_margin=0.0, accept_suspicious=0.5)


def case_lesion_counts(bank: CaseBank, reported: np.ndarray, classes: np.ndarray, *,
                       min_volume_mm3: float = 0.0) -> dict[str, int]:
    """``{"tp", "fl", "fp", "fn"}`` of the reported candidates of one case against its reference lesions.

    reported : (N,) bool; classes : (N,) class index of each candidate (used where reported).
    """
    reported = np.asarray(reported, dtype=bool)
    if reported.shape != (bank.num_candidates,) or np.shape(classes) != (bank.num_candidates,):
        raise ValueError(f"case {bank.case_id}: need {bank.num_candidates} decisions, got {reported.shape} and "
                         f"{np.shape(classes)}")
    ignored = np.flatnonzero(bank.ref_volume_mm3.astype(np.float64) < min_volume_mm3) + 1
    overlap = np.asarray(bank.overlap, dtype=np.int64).reshape(-1, 3)  # [candidate id, reference id, shared]
    overlap = overlap[reported[overlap[:, 0] - 1]]  # the rows of reported candidates
    reported_classes = np.asarray(classes)[reported].astype(np.int64).tolist()
    match = match_overlaps(overlap[:, 1], overlap[:, 0], overlap[:, 2],
                           reference_labels=dict(enumerate(np.asarray(bank.ref_class).tolist(), start=1)),
                           predicted_labels=dict(zip((np.flatnonzero(reported) + 1).tolist(), reported_classes)),
                           ignored_reference_ids=ignored.tolist())
    return match.counts()


def score_cases(banks: Sequence[CaseBank], probabilities: Sequence[np.ndarray], *, rule: DecisionRule,
                malignant_classes: Sequence[int], benign_classes: Sequence[int],
                min_volume_mm3: float = 0.0) -> dict:
    """Scores of ``rule`` applied to the PLUS ``probabilities`` ((N_i, L + 1) per case) of ``banks``: ``lesion``
    (:func:`~nnunet_plus.evaluation.metrics.lesion_metrics` of the summed counts), ``malignant`` / ``benign``
    (:func:`~nnunet_plus.evaluation.metrics.binary_metrics` of the patient labels), and the scalars ``lesion_f1``,
    ``malignant_f1``, ``benign_f1``, ``patient_f1`` (mean of the two patient F1 that are defined; None when
    neither is), ``malignant_recall`` (malignant patients called malignant; None without malignant patients),
    ``false_positives`` (reported candidates that match no reference lesion: a count) and ``lesions_found``
    (reference lesions matched by a reported candidate, whatever its type: ``tp + fl``, a count).
    """
    if len(banks) != len(probabilities):
        raise ValueError(f"{len(banks)} cases but {len(probabilities)} probability tables")
    totals = dict.fromkeys(("tp", "fl", "fp", "fn"), 0)
    truth: dict[str, list[bool]] = {"malignant": [], "benign": []}
    predicted: dict[str, list[bool]] = {"malignant": [], "benign": []}
    for bank, table in zip(banks, probabilities):
        reported, classes = apply_rule(rule, table, tier=bank.tier, nnunet_class=bank.base_class,
                                       groups=(malignant_classes, benign_classes))
        for key, value in case_lesion_counts(bank, reported, classes, min_volume_mm3=min_volume_mm3).items():
            totals[key] += value
        present = set(classes[reported].tolist())
        truth["malignant"].append(bool(bank.patient[1]))
        truth["benign"].append(bool(bank.patient[2]))
        predicted["malignant"].append(bool(present & set(malignant_classes)))
        predicted["benign"].append(bool(present & set(benign_classes)))
    lesion = lesion_metrics(**totals)
    patient = {k: binary_metrics(truth[k], predicted[k]) for k in ("malignant", "benign")}
    return {"lesion": lesion, **patient, "lesion_f1": lesion["f1"], "malignant_f1": patient["malignant"]["f1"],
            "benign_f1": patient["benign"]["f1"],
            "patient_f1": mean_or_none([patient["malignant"]["f1"], patient["benign"]["f1"]]),
            "malignant_recall": patient["malignant"]["recall"], "false_positives": int(totals["fp"]),
            "lesions_found": int(totals["tp"] + totals["fl"])}


def nnunet_lesion_metrics(banks: Sequence[CaseBank]) -> dict:
    """Lesion metrics of nnU-Net alone (its f=1 lesions with their classes) from the bank's one-to-one match
    of those lesions (``base_det_ref_id``); all reference lesions count (exact when none is ignored by a
    minimum volume, which the final ``summary.json`` applies)."""
    totals = dict.fromkeys(("tp", "fl", "fp", "fn"), 0)
    for bank in banks:
        matched = bank.base_det_ref_id > 0
        agree = bank.base_det_class[matched] == bank.ref_class[bank.base_det_ref_id[matched] - 1]
        totals["tp"] += int(agree.sum())
        totals["fl"] += int((~agree).sum())
        totals["fp"] += int((~matched).sum())
        totals["fn"] += len(bank.ref_class) - int(matched.sum())
    return lesion_metrics(**totals)
