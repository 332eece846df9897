"""PLUSClassifierTrainer: set-up, the epoch loop and the run of one classifier fold (the package docstring of
:mod:`nnunet_plus.classifier.trainer` gives the recipe and the outputs)."""
from __future__ import annotations

import logging
import os
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_plus.classifier.bank_io import read_bank_metadata
from nnunet_plus.classifier.data import CandidateDataset, PatientBatch, collate_patients
from nnunet_plus.classifier.loss import DEFAULT_DISTILL_WEIGHT, inverse_frequency_weights, plus_loss
from nnunet_plus.classifier.model import PLUSClassifier, prior_distribution
from nnunet_plus.classifier.operating_point import FittedRule
from nnunet_plus.classifier.rule_scores import nnunet_lesion_metrics
from nnunet_plus.classifier.trainer import scoring, training_state
from nnunet_plus.classifier.trainer.fold_files import BEST, FINAL, LATEST, NoCandidateError, write_history
from nnunet_plus.classifier.trainer.settings import TrainerSettings
from nnunet_plus.classifier.trainer.scoring import LOSS_KEYS
from nnunet_plus.classifier.warm_start import fit_description_term
from nnunet_plus.decision_rule import DecisionRule
from nnunet_plus.paths import resolve_device
from nnunet_plus.schema import LesionSchema

__all__ = ["PLUSClassifierTrainer"]

logger = logging.getLogger(__name__)


class PLUSClassifierTrainer:
    """Train and validate one fold of the PLUS classifier.

    Parameters
    ----------
    bank_dir : the candidate bank folder (``bank.json`` + ``<case>.npz``).
    output_folder : the fold folder (``.../PLUSClassifier__<trainer>__<plans>__<config>/fold_k``).
    fold : the fold number (stored in the checkpoints).
    train_cases, val_cases : bank case ids (:func:`~nnunet_plus.classifier.splits.check_bank_for_fold`).
    raw_dataset_dir : nnU-Net raw dataset folder (images + labels for the final validation).
    dataset_name : ``DatasetXXX_Name`` (stored in the checkpoints; inference checks it).
    settings : :class:`~nnunet_plus.classifier.trainer.settings.TrainerSettings`.
    device : ``"cpu"``, ``"cuda"`` or ``"mps"`` (ValueError when unavailable).
    quiet : no progress bars.
    """

    def __init__(self, bank_dir: str | os.PathLike, output_folder: str | os.PathLike, *, fold: int,
                 train_cases: Sequence[str], val_cases: Sequence[str], raw_dataset_dir: str | os.PathLike,
                 dataset_name: str, settings: TrainerSettings | None = None, device: str | torch.device = "cpu",
                 quiet: bool = False) -> None:
        self.bank_dir = Path(bank_dir)
        self.output_folder = Path(output_folder)
        self.fold = int(fold)
        self.train_cases = [str(c) for c in train_cases]
        self.val_cases = [str(c) for c in val_cases]
        overlap = sorted(set(self.train_cases) & set(self.val_cases))
        if overlap:
            raise ValueError(f"cases in both the training and the validation set: {overlap[:5]}")
        if not self.train_cases or not self.val_cases:
            raise ValueError("need at least one training and one validation case")
        self.raw_dataset_dir = Path(raw_dataset_dir)
        self.dataset_name = str(dataset_name)
        self.settings = settings or TrainerSettings()
        self.device = resolve_device(device)
        self.amp = self.device.type == "cuda"
        self.quiet = quiet
        self.metadata = read_bank_metadata(self.bank_dir)
        self.schema = LesionSchema.from_dataset_json({"labels": self.metadata["labels"],
                                                      "plus": self.metadata["schema"]}, dataset_id=dataset_name)
        lesions = list(self.schema.lesions)
        self.malignant_classes = [lesions.index(n) for n in self.schema.malignant]
        self.benign_classes = [lesions.index(n) for n in self.schema.benign]
        self.log_file: Path | None = None
        self.history: list[dict] = []
        self.best: dict = {"epoch": None, "metric": self.settings.best_metric, "value": None}
        self.epoch = 0
        self.model: PLUSClassifier | None = None
        self.rule = DecisionRule()

    # ---- set-up -------------------------------------------------------------------------------------------
    def initialize(self) -> None:
        """Seed everything, load the datasets and build the network, optimizer, scheduler, scaler, class weights;
        :class:`~nnunet_plus.classifier.trainer.fold_files.NoCandidateError` when the training cases hold no
        candidate."""
        s = self.settings
        random.seed(s.seed)
        np.random.seed(s.seed % 2 ** 32)
        torch.manual_seed(s.seed)
        self.train_data = CandidateDataset(self.bank_dir, self.train_cases, metadata=self.metadata,
                                           augmentation=s.augmentation, seed=s.seed)
        self.val_data = CandidateDataset(self.bank_dir, self.val_cases, metadata=self.metadata)
        counts = self.train_data.class_counts()
        if counts.sum() == 0:
            raise NoCandidateError(
                f"nnU-Net found no lesion candidate in the {len(self.train_cases)} training cases of fold {self.fold}, "
                f"even at the highest sensitivity (f={max(self.schema.sensitivities):g}): the classifier has nothing "
                "to learn. Check the nnU-Net folds' validation/plus_summary.json; nnU-Net needs to detect lesions "
                "first (train it longer, or raise the schema's highest sensitivity)")
        self.class_counts = counts
        self.nnunet_val = nnunet_lesion_metrics([self.val_data.bank(i) for i in range(len(self.val_data))])
        self.class_weights = inverse_frequency_weights(counts, power=s.class_weight_power)
        self.model = PLUSClassifier(int(self.metadata["channels"]), len(self.schema.lesions), preset=s.preset,
                                    fusion=s.fusion, dropout=s.dropout).to(self.device)
        groups = self.model.parameter_groups(s.learning_rate, correction_factor=s.correction_lr_factor)
        self.optimizer = torch.optim.AdamW(groups, lr=s.learning_rate, weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=s.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        if self.log_file is None:
            self.log_file = self._new_log_file()

    def _new_log_file(self) -> Path:
        """``training_log_<time>.txt``; a session resumed within the same second still gets its own log."""
        stamp = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
        path = self.output_folder / f"training_log_{stamp}.txt"
        session = 1
        while path.exists():
            session += 1
            path = self.output_folder / f"training_log_{stamp}_{session}.txt"
        return path

    def log(self, message: str) -> None:
        """Append a timestamped line to the training log (and to the module logger)."""
        logger.info(message)
        if self.log_file is not None:
            with open(self.log_file, "a") as fh:
                fh.write(f"{datetime.now()}: {message}\n")

    # ---- checkpoints (nnunet_plus.classifier.trainer.training_state) ---------------------------------------
    def checkpoint_payload(self) -> dict:
        return training_state.checkpoint_payload(self)

    def save(self, name: str) -> Path:
        return training_state.save_training_state(self, name)

    def load(self, path: str | os.PathLike) -> None:
        """Restore the full training state of a checkpoint of this fold (ValueError if it belongs elsewhere)."""
        training_state.restore_training_state(self, path)

    def write_history(self, *, done: bool = False) -> Path:
        """``history.json`` (:mod:`~nnunet_plus.classifier.trainer.fold_files`); ``done`` only as the last write."""
        return write_history(self.output_folder, fold=self.fold, epochs=self.settings.epochs, best=self.best,
                             history=self.history, done=done)

    # ---- one epoch --------------------------------------------------------------------------------------
    def batch_loss(self, batch: PatientBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, plus_loss terms)`` of one batch (on the trainer's device)."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model(batch.crops, batch.priors, batch.features, batch.liver, batch.lesion_to_patient)
        extra = {}
        if self.model.needs_prior_target:
            extra = {"distill_targets": prior_distribution(batch.priors), "distill_weight": DEFAULT_DISTILL_WEIGHT}
        losses = plus_loss(logits, batch.targets, batch.lesion_to_patient, batch.patient_malignant,
                           batch.patient_tumor, num_patients=batch.num_patients,
                           malignant_classes=self.malignant_classes, benign_classes=self.benign_classes,
                           class_weights=self.class_weights.to(self.device), alpha=self.settings.alpha,
                           beta=self.settings.beta, gamma=self.settings.gamma, **extra)
        return logits, losses

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training patients; returns the mean losses of the batches with candidates."""
        s = self.settings
        self.model.train()
        self.train_data.set_epoch(epoch)
        order = torch.randperm(len(self.train_data), generator=torch.Generator().manual_seed(s.seed * 1009 + epoch))
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        steps = 0
        batches = [order[i:i + s.batch_patients].tolist() for i in range(0, len(order), s.batch_patients)]
        for indices in tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=self.quiet, leave=False):
            batch = collate_patients([self.train_data[i] for i in indices])
            if batch.num_candidates == 0:  # no lesion term, constant patient terms: nothing to learn
                continue
            batch = batch.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            _, losses = self.batch_loss(batch)
            self.scaler.scale(losses["total"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for key in LOSS_KEYS:
                sums[key] += float(losses[key].detach())
            steps += 1
        return {key: value / max(steps, 1) for key, value in sums.items()}

    def validate(self) -> tuple[dict, list[np.ndarray]]:
        """Validation losses and scores; returns ``(record, per-case probability tables)``."""
        return scoring.score_validation(self)

    # ---- the run ----------------------------------------------------------------------------------------
    def run_training(self, *, continue_training: bool = False, validate: bool = True) -> dict | None:
        """Train (or continue) to ``settings.epochs`` epochs, write checkpoint_final, the operating points, then the
        final validation (``validate``); returns the validation summary (None without validation).
        ``history.json`` says ``"done": true`` after the final validation, as the run's last write."""
        if self.model is None:
            self.initialize()
        final, latest = self.output_folder / FINAL, self.output_folder / LATEST
        # checkpoint_latest is removed when a training ends: beside a final checkpoint it means a newer, unfinished
        # training (one that will replace that final checkpoint), so it is continued first
        finished_before = continue_training and final.is_file() and not latest.is_file()
        if finished_before:
            self.load(final)
            self.log(f"{final} exists: training is complete (epoch {self.epoch})")
        elif continue_training and latest.is_file():
            self.load(latest)
            self.log(f"continuing from {latest} after epoch {self.epoch}")
        elif continue_training:
            self.log(f"--c: no checkpoint in {self.output_folder}; starting a new training")
        self.write_history()  # an earlier run's "done" no longer holds
        self._log_start()
        if self.epoch == 0 and not finished_before and self.settings.warm_start_l2 > 0:
            self.warm_start()
        while self.epoch < self.settings.epochs:
            self._run_epoch()
        if not finished_before:  # a new training replaces an earlier final checkpoint
            self.save(FINAL)
            latest.unlink(missing_ok=True)
        self.fit_operating_point()
        if not validate:
            return None
        summary = self.final_validation()
        self.write_history(done=True)
        return summary

    def _run_epoch(self) -> dict:
        """Train and validate epoch ``self.epoch``; record it, write the checkpoints, history.json and the plot."""
        s = self.settings
        epoch = self.epoch
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train = self.train_epoch(epoch)
        self.scheduler.step()
        val, _ = self.validate()
        record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train.items()}, **val,
                  "seconds": time.perf_counter() - start}
        self.history.append(record)
        self.epoch = epoch + 1
        value = record[s.best_metric]
        improved = value is not None and (self.best["value"] is None or value > self.best["value"])
        if improved:
            self.best = {"epoch": epoch, "metric": s.best_metric, "value": value}
            self.save(BEST)
        if self.epoch % s.save_every == 0 and self.epoch < s.epochs:
            self.save(LATEST)
        self._log_epoch(record, improved)
        self.write_history()
        self._plot()
        return record

    def warm_start(self) -> None:
        """Fit the network's linear description term on the un-augmented training candidates (before epoch 0)."""
        patients = (self.train_data.item(i, augment=False) for i in range(len(self.train_data)))
        fitted = fit_description_term(self.model, patients, l2=self.settings.warm_start_l2)
        self.log(fitted.describe())

    # ---- operating point and final validation (nnunet_plus.classifier.trainer.scoring) ----------------
    def fit_operating_point(self) -> FittedRule:
        """Fit and write the fold's and the pooled decision rule; the fold's becomes ``self.rule`` (used by the
        final validation); returns the pooled one."""
        fitted, pooled = scoring.fit_operating_points(self)
        self.rule = fitted.rule
        return pooled

    def final_validation(self) -> dict:
        """Evaluate the current (final) model end to end on the validation cases: ``validation/summary.json``."""
        return scoring.final_validation(self)

    # ---- reporting --------------------------------------------------------------------------------------
    def _log_start(self) -> None:
        names = [*self.schema.lesions, "not_a_lesion"]
        counts = ", ".join(f"{n} {int(c)}" for n, c in zip(names, self.class_counts))
        weights = ", ".join(f"{n} {float(w):.3f}" for n, w in zip(names, self.class_weights))
        self.log(f"PLUS classifier {self.dataset_name} fold {self.fold} on {self.device} (AMP {self.amp}): "
                 f"{len(self.train_cases)} training / {len(self.val_cases)} validation patients; training "
                 f"candidates {counts}; class weights {weights}; nnU-Net alone on the validation patients: lesion "
                 f"F1 {_fmt(self.nnunet_val['f1'])}; settings {self.settings.to_json()}")

    def _log_epoch(self, record: Mapping, improved: bool) -> None:
        counts = record["lesion_counts"]
        self.log(f"epoch {record['epoch']}: lr {record['lr']:.2e}, train loss {record['train_total']:.4f} "
                 f"(L_L {record['train_lesion']:.4f}, L_P {record['train_patient']:.4f}, L_S "
                 f"{record['train_screening']:.4f}), val loss {record['val_total']:.4f}, lesion F1 "
                 f"{_fmt(record['lesion_f1'])} (TP {counts['tp']} FL {counts['fl']} FP {counts['fp']} FN "
                 f"{counts['fn']}), patient F1 malignant {_fmt(record['malignant_f1'])} benign "
                 f"{_fmt(record['benign_f1'])}{' [best]' if improved else ''}, {record['seconds']:.1f} s")

    def _plot(self) -> None:
        if not self.history:
            return
        from nnunet_plus.classifier.progress import plot_progress

        plot_progress(self.history, self.output_folder / "progress.png", best_epoch=self.best["epoch"],
                      baseline_lesion_f1=self.nnunet_val["f1"],
                      title=f"PLUS classifier {self.dataset_name} fold {self.fold} ({self.settings.preset}, "
                            f"{self.settings.fusion})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
