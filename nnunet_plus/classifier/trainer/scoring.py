"""Scoring a fold's validation cases: after every epoch (on the bank arrays), the operating points fitted at the
end, and the final end-to-end evaluation (``validation/summary.json``).

* :func:`score_validation`: validation losses and the network's own answer scored on the bank arrays
  (:data:`~nnunet_plus.classifier.rule_scores.NETWORK_RULE`; lesion F1 chooses checkpoint_best).
* :func:`fit_operating_points`: the decision rule fitted on this fold's validation cases
  (``fold_k/operating_point.json``; the probabilities in ``fold_k/validation/candidate_probabilities.npz``), then
  the classifier folder's rule pooled over every finished fold's validation cases (``operating_point.json`` beside
  the folds: what prediction uses) (:func:`~nnunet_plus.classifier.operating_point.fit_rule`).
* :func:`final_validation`: nnU-Net alone vs nnU-Net + PLUS end to end with the fold's rule
  (:mod:`nnunet_plus.classifier.fold_validation`).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.classifier.data import CandidateDataset, collate_patients
from nnunet_plus.classifier.operating_point import OPERATING_POINT_FILE, FittedRule, fit_rule, save_rule
from nnunet_plus.classifier.rule_scores import NETWORK_RULE, score_cases
from nnunet_plus.classifier.trainer.fold_files import FINAL

if TYPE_CHECKING:
    from nnunet_plus.classifier.trainer.fold_trainer import PLUSClassifierTrainer

__all__ = ["CANDIDATE_TABLES_FILE", "LOSS_KEYS", "final_validation", "fit_operating_points",
           "load_candidate_tables", "save_candidate_tables", "score_validation"]

#: the loss terms of :func:`~nnunet_plus.classifier.loss.plus_loss` recorded per epoch
LOSS_KEYS = ("total", "lesion", "patient", "screening", "distill")
#: the fold model's PLUS probabilities of its validation candidates (pooled into the folder's operating point)
CANDIDATE_TABLES_FILE = "candidate_probabilities.npz"


def save_candidate_tables(path: str | os.PathLike, cases: Sequence[str], tables: Sequence[np.ndarray]) -> None:
    """Write per-case ``(N_i, L + 1)`` probability tables as an npz (``cases`` + ``table_<i>``; atomic)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, cases=np.array([str(c) for c in cases]),
                 **{f"table_{i}": np.asarray(t, dtype=np.float32) for i, t in enumerate(tables)})


def load_candidate_tables(path: str | os.PathLike) -> tuple[list[str], list[np.ndarray]]:
    """``(cases, tables)`` of :func:`save_candidate_tables` (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        cases = [str(c) for c in data["cases"]]
        return cases, [np.asarray(data[f"table_{i}"]) for i in range(len(cases))]


@torch.no_grad()
def score_validation(trainer: PLUSClassifierTrainer) -> tuple[dict, list[np.ndarray]]:
    """Validation losses and scores of ``trainer``'s model; returns ``(record, per-case probability tables)``."""
    trainer.model.eval()
    val_data = trainer.val_data
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    steps = 0
    tables: list[np.ndarray] = []
    step = trainer.settings.batch_patients
    for start in range(0, len(val_data), step):
        batch = collate_patients([val_data[i] for i in range(start, min(start + step, len(val_data)))])
        batch = batch.to(trainer.device)
        logits, losses = trainer.batch_loss(batch)
        probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
        index = batch.lesion_to_patient.cpu().numpy()
        tables.extend(probabilities[index == j] for j in range(batch.num_patients))
        if batch.num_candidates:
            for key in LOSS_KEYS:
                sums[key] += float(losses[key])
            steps += 1
    scores = score_cases([val_data.bank(i) for i in range(len(val_data))], tables, rule=NETWORK_RULE,
                         malignant_classes=trainer.malignant_classes, benign_classes=trainer.benign_classes,
                         min_volume_mm3=trainer.schema.min_lesion_volume_mm3)
    record = {f"val_{key}": value / max(steps, 1) for key, value in sums.items()}
    lesion = scores["lesion"]
    record.update({k: scores[k] for k in ("lesion_f1", "malignant_f1", "benign_f1", "patient_f1")},
                  lesion_counts={k: lesion[k] for k in ("tp", "fl", "fp", "fn")})
    return record, tables


def _finished_folds(trainer: PLUSClassifierTrainer) -> tuple[list, list, list[str]]:
    """``(banks, tables, folds)`` of every finished fold beside ``trainer``'s (itself included) whose
    validation probabilities are stored and whose cases are in the candidate bank."""
    banks, tables, folds = [], [], []
    for fold_dir in sorted(trainer.output_folder.parent.glob("fold_*")):
        source = fold_dir / "validation" / CANDIDATE_TABLES_FILE
        if not (fold_dir / FINAL).is_file() or not source.is_file():
            continue
        cases, fold_tables = load_candidate_tables(source)
        if not set(cases) <= set(trainer.metadata["cases"]):
            trainer.log(f"{source} holds cases that are not in the candidate bank; not pooled")
            continue
        data = CandidateDataset(trainer.bank_dir, cases, metadata=trainer.metadata)
        banks += [data.bank(i) for i in range(len(data))]
        tables += fold_tables
        folds.append(fold_dir.name[len("fold_"):])
    return banks, tables, folds


def fit_operating_points(trainer: PLUSClassifierTrainer) -> tuple[FittedRule, FittedRule]:
    """Fit the fold's and the pooled decision rule (see the module docstring) and write both; returns
    ``(fold rule, pooled rule)``."""
    _, tables = score_validation(trainer)
    banks = [trainer.val_data.bank(i) for i in range(len(trainer.val_data))]
    validation = trainer.output_folder / "validation"
    validation.mkdir(parents=True, exist_ok=True)
    save_candidate_tables(validation / CANDIDATE_TABLES_FILE, trainer.val_cases, tables)
    options = dict(malignant_classes=trainer.malignant_classes, benign_classes=trainer.benign_classes,
                   objective=trainer.settings.objective, min_volume_mm3=trainer.schema.min_lesion_volume_mm3,
                   class_names=trainer.schema.lesions)
    fitted = fit_rule(banks, tables, folds=[trainer.fold], **options)
    save_rule(fitted, trainer.output_folder / OPERATING_POINT_FILE)
    trainer.log(f"fold {trainer.fold} " + fitted.describe())
    trainer.log(f"fold {trainer.fold} " + fitted.describe_patient_auc())
    pooled_banks, pooled_tables, folds = _finished_folds(trainer)
    pooled = fit_rule(pooled_banks, pooled_tables, folds=folds, **options)
    save_rule(pooled, trainer.output_folder.parent / OPERATING_POINT_FILE)
    trainer.log(f"classifier (folds {', '.join(folds)}) " + pooled.describe())
    trainer.log(f"classifier (folds {', '.join(folds)}) " + pooled.describe_patient_auc())
    return fitted, pooled


def final_validation(trainer: PLUSClassifierTrainer) -> dict:
    """Evaluate ``trainer``'s current (final) model end to end on the validation cases with its rule:
    ``validation/summary.json`` (returned), ``comparison.txt``, ``overview.png``."""
    from nnunet_plus.classifier.bank_settings import BankSettings
    from nnunet_plus.classifier.fold_validation import NNUNET_KEY, PLUS_KEY, evaluate_classifier
    from nnunet_plus.classifier.inference import PLUSInference
    from nnunet_plus.evaluation.summary import format_comparison

    metadata = trainer.metadata
    inference = PLUSInference([trainer.model], schema=trainer.schema,
                              settings=BankSettings.from_json(metadata["settings"]),
                              target_spacing=metadata["target_spacing"], channel_names=metadata["channel_names"],
                              rule=trainer.rule, device=trainer.device)
    bank_level = trainer.history[-1]["lesion_f1"] if trainer.history else None
    folder = trainer.output_folder / "validation"
    summary = evaluate_classifier(
        inference, trainer.val_cases, bank_metadata=metadata, raw_dataset_dir=trainer.raw_dataset_dir,
        schema=trainer.schema, output_folder=folder, quiet=trainer.quiet,
        meta={"dataset": trainer.dataset_name, "fold": trainer.fold, "checkpoint": FINAL, "epoch": trainer.epoch,
              "best": trainer.best, "bank_level_lesion_f1": bank_level, "trainer": trainer.settings.to_json()})
    trainer.log(f"validation ({folder / 'summary.json'}):\n"
                + format_comparison(summary[NNUNET_KEY], summary[PLUS_KEY], names=("nnU-Net", "nnU-Net + PLUS")))
    return summary
