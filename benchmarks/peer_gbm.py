"""The peer second stage of ``bench_efficacy.py``: gradient boosting on per-candidate numbers.

What a practitioner would try before a two-encoder 3D network: a
:class:`~sklearn.ensemble.HistGradientBoostingClassifier` on a handful of numbers per candidate of the PLUS
candidate bank, under the same guard and operating point as PLUS
(:mod:`nnunet_plus.classifier.operating_point`), so that the efficacy table shows what the PLUS network adds
over it.

Inputs per candidate (:func:`candidate_features`; never the reference: ``target`` is only the label):

* nnU-Net: ``prior`` (mean softmax per lesion class, L), ``tier``, ``max_probability``, log volume,
  ``roi_scale``, one-hot ``nnunet_class`` and ``base_class`` (L + 1 each), and the case's LiverMax
  (``nnunet_patient`` (3) and ``nnunet_livermax`` (L));
* intensity, from the stored crops (``crops[:, 0]`` the first normalised image channel, ``crops[:, -1]`` the
  candidate's soft mask, thresholded at half its maximum): mean and standard deviation inside the mask, mean of
  a 2-voxel ring around it, lesion - ring contrast, the ROI mean, the mask's share of the ROI;
* the liver input's mean and standard deviation (voxels above the padding value).

Procedure (:func:`run_peer`): cross-fit on the bank along nnU-Net's split (the model of fold k trains on fold
k's training cases, lesion-shuffled copies included, and predicts fold k's validation cases), giving
out-of-fold probability tables ``(N_i, L + 1)``; the decision rule is fitted on them with
:func:`~nnunet_plus.classifier.operating_point.fit_rule` (the identity unless a rule strictly beats nnU-Net
alone without worsening a guarded score, the PLUS classifier's guard); then a model trained on every bank case is
applied with that rule to the test cases.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["PeerResult", "candidate_features", "fit_predict", "run_peer"]

logger = logging.getLogger(__name__)

#: gradient boosting options (small data: a few hundred candidates per fold; one thread, see fit_predict)
#: (no early stopping: its stratified hold-out fails on classes with a single candidate, which are common here)
GBM_OPTIONS = dict(learning_rate=0.1, max_iter=100, max_leaf_nodes=15, l2_regularization=1.0, early_stopping=False,
                   random_state=0)


def _one_hot(values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((values.shape[0], n), dtype=np.float32)
    out[np.arange(values.shape[0]), np.clip(values, 0, n - 1)] = 1.0
    return out


def _crop_statistics(crops: np.ndarray) -> np.ndarray:
    """(N, 6) intensity statistics of the candidates' crops (NaN where a mask is empty)."""
    from scipy.ndimage import maximum_filter

    out = np.full((crops.shape[0], 6), np.nan, dtype=np.float32)
    for i, crop in enumerate(crops):
        image = crop[0].astype(np.float32)
        soft = crop[-1].astype(np.float32)
        out[i, 4] = image.mean()
        peak = float(soft.max())
        if peak <= 0:
            continue
        mask = soft >= 0.5 * peak
        ring = maximum_filter(mask.view(np.uint8), size=5, mode="constant").astype(bool) & ~mask  # 2-voxel ring
        inside = image[mask]
        out[i, 0], out[i, 1] = inside.mean(), inside.std()
        if ring.any():
            out[i, 2] = image[ring].mean()
            out[i, 3] = out[i, 0] - out[i, 2]
        out[i, 5] = mask.mean()
    return out


def candidate_features(bank) -> np.ndarray:
    """``(N, F)`` float32 features of one :class:`~nnunet_plus.classifier.bank_io.CaseBank`'s candidates."""
    n = bank.num_candidates
    n_classes = bank.prior.shape[1]
    liver = bank.liver[0].astype(np.float32)
    inside = liver[liver > liver.min() + 1e-3] if bank.liver_found else np.zeros(0, np.float32)
    liver_stats = [float(inside.mean()), float(inside.std())] if inside.size else [np.nan, np.nan]
    case_level = np.concatenate([bank.nnunet_patient, bank.nnunet_livermax, liver_stats]).astype(np.float32)
    if n == 0:
        return np.zeros((0, 2 * n_classes + 2 + n_classes + 4 + 6 + case_level.size), dtype=np.float32)
    return np.concatenate([
        bank.prior.astype(np.float32),
        _one_hot(bank.nnunet_class, n_classes + 1),
        _one_hot(bank.base_class, n_classes + 1),
        np.stack([bank.tier.astype(np.float32), bank.max_probability.astype(np.float32),
                  np.log1p(bank.volume_mm3.astype(np.float32)), bank.roi_scale.astype(np.float32)], axis=1),
        _crop_statistics(bank.crops),
        np.broadcast_to(case_level, (n, case_level.size)),
    ], axis=1).astype(np.float32)


def fit_predict(train_banks: Sequence, predict_banks: Sequence, n_outputs: int,
                features: dict | None = None) -> list[np.ndarray]:
    """Train on the candidates of ``train_banks`` (targets ``bank.target``) and return an ``(N_i, n_outputs)``
    probability table per case of ``predict_banks`` (classes the model never saw get 0; rows sum to 1).

    Fewer than two classes among the training targets: every row is the training class distribution (uniform
    without any training candidate).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    features = {} if features is None else features

    def feats(bank) -> np.ndarray:
        key = str(bank.path)  # training and test cases may share an id
        if key not in features:
            features[key] = candidate_features(bank)
        return features[key]

    x = np.concatenate([feats(b) for b in train_banks]) if train_banks else np.zeros((0, 0), np.float32)
    y = np.concatenate([b.target for b in train_banks]).astype(np.int64) if train_banks else np.zeros(0, np.int64)
    classes = np.unique(y)
    if classes.size < 2:
        constant = np.bincount(y, minlength=n_outputs)[:n_outputs].astype(np.float64) if y.size else \
            np.ones(n_outputs)
        constant /= constant.sum()
        logger.warning("peer: %d training candidate(s) of %d class(es); constant probabilities", y.size, classes.size)
        return [np.tile(constant, (b.num_candidates, 1)) for b in predict_banks]
    from threadpoolctl import threadpool_limits

    model = HistGradientBoostingClassifier(min_samples_leaf=int(min(20, max(3, y.size // 20))), **GBM_OPTIONS)
    tables = []
    # one OpenMP thread: on a few hundred rows more threads only add overhead (and contend on a shared machine)
    with threadpool_limits(limits=1):
        model.fit(x, y)
        for bank in predict_banks:
            table = np.zeros((bank.num_candidates, n_outputs), dtype=np.float64)
            if bank.num_candidates:
                table[:, model.classes_] = model.predict_proba(feats(bank))
                table /= np.maximum(table.sum(axis=1, keepdims=True), 1e-12)
            tables.append(table)
    return tables


@dataclass
class PeerResult:
    """The peer's test tables and the rule fitted on its out-of-fold tables."""

    tables: list
    fitted: object  # operating_point.FittedRule
    n_train_candidates: int
    oof_cases: int
    notes: list = field(default_factory=list)


def run_peer(banks: dict, bank_meta: dict, splits: Sequence, test_banks: Sequence, *, malignant_classes: Sequence[int],
             benign_classes: Sequence[int], objective: str = "lesion_f1", class_names: Sequence[str] = ()
             ) -> PeerResult:
    """Cross-fit on ``banks`` (case id -> CaseBank, shuffled copies included) along ``splits`` (nnU-Net's),
    fit the decision rule on the out-of-fold tables, and predict ``test_banks`` with a model trained on all.
    ``class_names`` (the lesion types) only name the rule's type changes in its description."""
    from nnunet_plus.classifier.operating_point import fit_rule
    from nnunet_plus.classifier.splits import check_bank_for_fold

    n_outputs = int(bank_meta["num_lesion_classes"]) + 1
    features: dict = {}
    oof_banks, oof_tables = [], []
    for fold in range(len(splits)):
        cases = check_bank_for_fold(bank_meta.get("cases") or {}, splits, fold)
        train = [banks[c] for c in cases.train if c in banks]
        val = [banks[c] for c in cases.val if c in banks]
        oof_banks += val
        oof_tables += fit_predict(train, val, n_outputs, features)
    fitted = fit_rule(oof_banks, oof_tables, malignant_classes=malignant_classes, benign_classes=benign_classes,
                      objective=objective, folds=list(range(len(splits))), class_names=class_names)
    all_banks = list(banks.values())
    tables = fit_predict(all_banks, test_banks, n_outputs, features)
    return PeerResult(tables=tables, fitted=fitted, n_train_candidates=sum(b.num_candidates for b in all_banks),
                      oof_cases=len(oof_banks))
