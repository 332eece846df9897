"""Patient probabilities from PLUS, and which of them may replace nnU-Net's LiverMax (fitted on validation).

Each patient gets probabilities for ``tumor``, ``malignant``, ``benign`` and each lesion type. nnU-Net alone
gives LiverMax (the highest summed softmax over the liver; :mod:`nnunet_plus.postprocessing`); PLUS gives, from its
``(N, L + 1)`` candidate table, the highest over the candidates of the summed malignant columns (``malignant``),
of the benign ones (``benign``), of both (``tumor``, the quantities of the loss's L_P and L_S) and of each type's
column; 0.0 for a case without candidates (:func:`plus_patient_probabilities`).

They are scores for ranking patients (the AUCs of the evaluation), and stage two must earn each of them as it
earns its lesion decisions: :func:`fit_patient_sources` keeps PLUS for a key only when, on the classifier folds'
out-of-fold validation cases, its AUC against the reference is **strictly** above LiverMax's; LiverMax stays
otherwise, and where the AUC is undefined (all validation patients positive or all negative). The keys that
come from PLUS are stored with the decision rule (:attr:`~nnunet_plus.decision_rule.DecisionRule.patient_from_plus`).
Why: until 2026-12-07 PLUS replaced every patient probability whenever the lesion rule was not the identity,
and on 30 stored benchmark cohorts that lowered the tumour AUC on 14 and the malignant AUC on 5 (down to
-0.141); chosen by validation AUC the losses were 2 and 2 (benchmarks/RESULTS.md, "Patient probabilities chosen
on validation").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nnunet_plus.classifier.bank_io import PATIENT_KEYS

__all__ = ["fit_patient_sources", "patient_probabilities", "plus_patient_probabilities"]


def patient_probabilities(table: np.ndarray, *, malignant_classes: Sequence[int], benign_classes: Sequence[int],
                          class_names: Sequence[str] = ()) -> dict[str, float]:
    """PLUS patient probabilities of one case from its ``(N, L + 1)`` candidate table (module docstring):
    ``tumor``, ``malignant``, ``benign`` and, per name of ``class_names`` (column order), that type's."""
    p = np.asarray(table, dtype=np.float64)
    if p.size == 0:  # a case without candidates
        return dict.fromkeys([*PATIENT_KEYS, *class_names], 0.0)
    if p.ndim != 2:
        raise ValueError(f"a candidate table must be (N, L + 1), got shape {p.shape}")
    malignant = p[:, list(malignant_classes)].sum(axis=1)
    benign = p[:, list(benign_classes)].sum(axis=1)
    out = {"tumor": float((malignant + benign).max()), "malignant": float(malignant.max()),
           "benign": float(benign.max())}
    out.update({name: float(p[:, i].max()) for i, name in enumerate(class_names)})
    return out


def plus_patient_probabilities(table: np.ndarray, schema) -> dict[str, float]:
    """:func:`patient_probabilities` with the classes of a :class:`~nnunet_plus.schema.LesionSchema`."""
    names = list(schema.lesions)
    return patient_probabilities(table, malignant_classes=[names.index(n) for n in schema.malignant],
                                 benign_classes=[names.index(n) for n in schema.benign], class_names=names)


def fit_patient_sources(banks: Sequence, tables: Sequence[np.ndarray], *, malignant_classes: Sequence[int],
                        benign_classes: Sequence[int], class_names: Sequence[str] = ()
                        ) -> tuple[tuple[str, ...], dict[str, list]]:
    """``(keys from PLUS, {key: [LiverMax AUC, PLUS AUC]})`` on candidate-bank cases ``banks`` and their PLUS
    ``tables``: a key comes from PLUS when its validation AUC is strictly above LiverMax's (module docstring).
    Keys: the bank's :data:`~nnunet_plus.classifier.bank_io.PATIENT_KEYS` (the order of its ``patient`` and
    ``nnunet_patient`` arrays), then ``class_names`` (the lesion types in column order; none when empty). An AUC
    is None where undefined."""
    from nnunet_plus.evaluation.metrics import auc

    keys = [*PATIENT_KEYS, *class_names]
    truth = {key: [] for key in keys}
    livermax = {key: [] for key in keys}
    plus = {key: [] for key in keys}
    for bank, table in zip(banks, tables):
        scores = patient_probabilities(table, malignant_classes=malignant_classes, benign_classes=benign_classes,
                                       class_names=class_names)
        for i, key in enumerate(PATIENT_KEYS):
            truth[key].append(bool(bank.patient[i]))
            livermax[key].append(float(bank.nnunet_patient[i]))
        for i, key in enumerate(class_names):
            truth[key].append(bool(bank.patient_types[i]))
            livermax[key].append(float(bank.nnunet_livermax[i]))
        for key in keys:
            plus[key].append(scores[key])

    def checked_auc(labels: list, scores: list) -> float | None:
        return auc(labels, scores) if np.isfinite(scores).all() else None  # a diverged network ranks nothing

    aucs = {key: [checked_auc(truth[key], livermax[key]), checked_auc(truth[key], plus[key])] for key in keys}
    chosen = tuple(key for key in keys if None not in aucs[key] and aucs[key][1] > aucs[key][0])
    return chosen, aucs
