"""PLUSClassifierTrainer: trains one fold of the PLUS classifier on the candidate bank (PLUS §2.2, Impl. Details).

Recipe (paper defaults, all in :class:`TrainerSettings`): AdamW, learning rate 1e-4, weight decay 0.05, cosine
annealing over the epochs (stepped once per epoch, from 1e-4 towards 0), 100 epochs, batches of 2 patients
(with all their candidates), loss ``0.5 L_L + 0.3 L_P + 0.2 L_S`` with focal gamma 2 and class weights
``z_c`` = inverse frequency of the training candidates' targets. Mixed precision (float16 autocast +
GradScaler) on CUDA only; CPU and MPS train in float32.

One epoch = every training patient once, in an order drawn from ``(seed, epoch)``; crop augmentation draws
depend on ``(seed, epoch, patient)`` (:mod:`nnunet_plus.classifier.data`), so resuming from
``checkpoint_latest.pth`` (which also holds the optimizer, scheduler, scaler and RNG states) continues exactly
as the uninterrupted run would (bitwise on CPU).

After each epoch the validation patients are scored (loss, and on the bank arrays: lesion F1 and patient
malignant / benign F1 of the refinement rule, :mod:`nnunet_plus.classifier.rule_scores`).
``checkpoint_best.pth`` keeps the epoch with the best validation **lesion F1** (``best_metric``; ties keep the
earlier epoch): lesion F1 is the headline PLUS is meant to raise, and it moves with every candidate decision,
whereas patient F1 on a few dozen validation patients changes in steps of one patient. ``patient_f1`` can be
chosen instead. At the end ``checkpoint_final.pth`` is written (what inference uses by default, like nnU-Net;
a new training always replaces it), the decision rule is fitted on the validation cases
(:mod:`nnunet_plus.classifier.operating_point`: ``fold_k/operating_point.json`` for this fold and
``operating_point.json`` beside the folds, pooled over every finished fold's validation cases) and the final
model is evaluated end to end with the fold's rule (:mod:`nnunet_plus.classifier.fold_validation`):
``validation/summary.json`` compares nnU-Net alone with nnU-Net + PLUS on the validation cases. The rule was
chosen on these same cases, so that comparison is in-sample for the rule's three thresholds (out-of-sample for
the network); held-out figures come from ``nnunet_plus_evaluate`` on test cases (benchmarks/bench_efficacy.py).

Output folder (``fold_k``): ``training_log_<time>.txt``, ``progress.png``, ``checkpoint_{latest,best,final}.pth``
(:mod:`nnunet_plus.classifier.checkpoint`), ``operating_point.json``, ``validation/`` (with
``candidate_probabilities.npz``).
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_plus.classifier.bank_io import BankSettings, read_bank_metadata
from nnunet_plus.classifier.rule_scores import NETWORK_RULE, nnunet_lesion_metrics, score_cases
from nnunet_plus.classifier.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from nnunet_plus.classifier.data import Augmentation, CandidateDataset, PatientBatch, collate_patients
from nnunet_plus.classifier.loss import DEFAULT_DISTILL_WEIGHT, inverse_frequency_weights, plus_loss
from nnunet_plus.classifier.model import PLUSClassifier, prior_distribution
from nnunet_plus.classifier.operating_point import OBJECTIVES, OPERATING_POINT_FILE, FittedRule, fit_rule, save_rule
from nnunet_plus.classifier.warm_start import DEFAULT_L2, fit_description_term
from nnunet_plus.decision_rule import DecisionRule
from nnunet_plus.paths import resolve_device
from nnunet_plus.schema import LesionSchema

__all__ = ["BEST_METRICS", "CANDIDATE_TABLES_FILE", "PLUSClassifierTrainer", "TrainerSettings",
           "load_candidate_tables", "save_candidate_tables"]

logger = logging.getLogger(__name__)

BEST_METRICS = ("lesion_f1", "patient_f1")
LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"
LOSS_KEYS = ("total", "lesion", "patient", "screening", "distill")
#: the fold model's PLUS probabilities of its validation candidates (pooled into the folder's operating point)
CANDIDATE_TABLES_FILE = "candidate_probabilities.npz"
#: start of the error raised when a fold's training cases hold no candidate (the demo recognises it)
NO_CANDIDATE_ERROR = "nnU-Net found no lesion candidate in the"


@dataclass(frozen=True)
class TrainerSettings:
    """Training options (stored in every checkpoint; a resumed run must use the same).

    Attributes
    ----------
    epochs, batch_patients : epochs; patients per batch (paper: 100, 2).
    learning_rate, weight_decay : AdamW (paper: 1e-4, 0.05); cosine annealing over ``epochs``.
    correction_lr_factor : the image head and the description embedding learn this many times faster (ours: they
        start from zero and are small; 1 = the paper's single learning rate).
    warm_start_l2 : L2 penalty of the warm start that fits the network's linear description term before the first
        epoch (:mod:`nnunet_plus.classifier.warm_start`); 0 = no warm start (the paper's recipe).
    alpha, beta, gamma : loss weights of L_L and L_P (paper 0.5, 0.3) and the focal exponent.
    class_weight_power : z_c = count_c ** -power (1 = inverse frequency, 0 = uniform).
    preset, fusion, dropout : the network (:class:`~nnunet_plus.classifier.model.PLUSClassifier`).
    seed : seeds the network initialisation, the epoch order and the augmentation.
    flip_p, intensity_scale, intensity_shift : crop augmentation (:class:`~nnunet_plus.classifier.data.Augmentation`).
    best_metric : ``"lesion_f1"`` (default) or ``"patient_f1"`` for checkpoint_best (scored with the network's own
        answer, :data:`~nnunet_plus.classifier.rule_scores.NETWORK_RULE`).
    objective : what the operating point maximises on the validation cases (``"lesion_f1"``, ``"malignant_f1"``,
        ``"benign_f1"``, ``"patient_f1"``).
    save_every : write checkpoint_latest every this many epochs.
    """

    epochs: int = 100
    batch_patients: int = 2
    learning_rate: float = 1e-4
    correction_lr_factor: float = 10.0
    warm_start_l2: float = DEFAULT_L2
    weight_decay: float = 0.05
    alpha: float = 0.5
    beta: float = 0.3
    gamma: float = 2.0
    class_weight_power: float = 1.0
    preset: str = "paper"
    fusion: str = "gpr"
    dropout: float = 0.0
    seed: int = 12345
    flip_p: float = 0.5
    intensity_scale: float = 0.05
    intensity_shift: float = 0.02
    best_metric: str = "lesion_f1"
    objective: str = "lesion_f1"
    save_every: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_patients < 1 or self.save_every < 1:
            raise ValueError("epochs, batch_patients and save_every must be >= 1")
        if not self.learning_rate > 0 or not self.correction_lr_factor > 0 or not self.weight_decay >= 0 \
                or not self.warm_start_l2 >= 0:
            raise ValueError(f"need learning_rate > 0, correction_lr_factor > 0, weight_decay >= 0 and warm_start_l2 "
                             f">= 0, got {self.learning_rate}, {self.correction_lr_factor}, {self.weight_decay}, "
                             f"{self.warm_start_l2}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {BEST_METRICS}, got {self.best_metric!r}")
        if not 0 <= self.class_weight_power <= 2:
            raise ValueError(f"class_weight_power must be in [0, 2] (1 = inverse frequency), got "
                             f"{self.class_weight_power}")
        Augmentation(self.flip_p, self.intensity_scale, self.intensity_shift)

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.flip_p, self.intensity_scale, self.intensity_shift)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, block: Mapping) -> "TrainerSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in block.items() if k in known})


def save_candidate_tables(path: Path, cases: Sequence[str], tables: Sequence[np.ndarray]) -> None:
    """Write per-case ``(N_i, L + 1)`` probability tables as an npz (``cases`` + ``table_<i>``; atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, cases=np.array([str(c) for c in cases]),
                 **{f"table_{i}": np.asarray(t, dtype=np.float32) for i, t in enumerate(tables)})
    os.replace(tmp, path)


def load_candidate_tables(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """``(cases, tables)`` of :func:`save_candidate_tables` (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        cases = [str(c) for c in data["cases"]]
        return cases, [np.asarray(data[f"table_{i}"]) for i in range(len(cases))]


def _rng_state() -> dict:
    """Python, numpy and torch (and CUDA) random states as plain values (``weights_only`` loadable)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    settings : :class:`TrainerSettings`.
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
        """Seed everything, load the datasets and build the network, optimizer, scheduler, scaler, class weights."""
        s = self.settings
        random.seed(s.seed)
        np.random.seed(s.seed % 2 ** 32)
        torch.manual_seed(s.seed)
        self.train_data = CandidateDataset(self.bank_dir, self.train_cases, metadata=self.metadata,
                                           augmentation=s.augmentation, seed=s.seed)
        self.val_data = CandidateDataset(self.bank_dir, self.val_cases, metadata=self.metadata)
        counts = self.train_data.class_counts()
        if counts.sum() == 0:
            factor = max(self.schema.sensitivities)
            raise ValueError(f"{NO_CANDIDATE_ERROR} {len(self.train_cases)} training cases of fold "
                             f"{self.fold}, even at the highest sensitivity (f={factor:g}): the classifier has nothing "
                             "to learn. Check the nnU-Net folds' validation/plus_summary.json; nnU-Net needs to detect "
                             "lesions first (train it longer, or raise the schema's highest sensitivity)")
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
            stamp = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
            self.log_file = self.output_folder / f"training_log_{stamp}.txt"
            session = 1
            while self.log_file.exists():  # a session resumed within the same second still gets its own log
                session += 1
                self.log_file = self.output_folder / f"training_log_{stamp}_{session}.txt"

    def log(self, message: str) -> None:
        """Append a timestamped line to the training log (and to the module logger)."""
        logger.info(message)
        if self.log_file is not None:
            with open(self.log_file, "a") as fh:
                fh.write(f"{datetime.now()}: {message}\n")

    # ---- checkpoints ------------------------------------------------------------------------------------
    def checkpoint_payload(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_config": self.model.to_config(), "state_dict": self.model.state_dict(),
            "dataset_name": self.dataset_name, "labels": dict(self.schema.labels), "schema": self.schema.to_block(),
            "bank": {"settings": self.metadata["settings"], "target_spacing": self.metadata["target_spacing"],
                     "channel_names": self.metadata["channel_names"]},
            "fold": self.fold, "epoch": self.epoch, "trainer": self.settings.to_json(),
            "train_cases": self.train_cases, "val_cases": self.val_cases,
            "class_weights": self.class_weights, "class_counts": self.class_counts.tolist(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": _rng_state(), "history": self.history, "best": self.best,
        }

    def save(self, name: str) -> Path:
        return save_checkpoint(self.checkpoint_payload(), self.output_folder / name)

    def load(self, path: str | os.PathLike) -> None:
        """Restore the full training state of a checkpoint of this fold (ValueError if it belongs elsewhere)."""
        ckpt = load_checkpoint(path)  # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest
        problems = []
        if ckpt["dataset_name"] != self.dataset_name or int(ckpt["fold"]) != self.fold:
            problems.append(f"it is {ckpt['dataset_name']} fold {ckpt['fold']}")
        trained = dict(ckpt.get("trainer") or {})
        changed = [f"{k}={trained.get(k)!r}" for k, v in self.settings.to_json().items() if trained.get(k) != v]
        if changed:
            problems.append(f"it was trained with other settings ({', '.join(changed)})")
        if ckpt["bank"]["settings"] != self.metadata["settings"] or \
                list(ckpt["train_cases"]) != self.train_cases or list(ckpt["val_cases"]) != self.val_cases:
            problems.append("the candidate bank or the split changed since")
        if problems:
            raise ValueError(f"cannot continue from {path}: {'; '.join(problems)}; rerun with the original options "
                             "or start again without --c")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        self.epoch = int(ckpt["epoch"])
        _set_rng_state(ckpt["rng"])

    # ---- one epoch --------------------------------------------------------------------------------------
    def _loss(self, batch: PatientBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
            _, losses = self._loss(batch)
            self.scaler.scale(losses["total"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for key in LOSS_KEYS:
                sums[key] += float(losses[key].detach())
            steps += 1
        return {key: value / max(steps, 1) for key, value in sums.items()}

    @torch.no_grad()
    def validate(self) -> tuple[dict, list[np.ndarray]]:
        """Validation losses and scores; returns ``(record, per-case probability tables)``."""
        self.model.eval()
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        steps = 0
        tables: list[np.ndarray] = []
        step = self.settings.batch_patients
        for start in range(0, len(self.val_data), step):
            batch = collate_patients([self.val_data[i] for i in range(start, min(start + step, len(self.val_data)))])
            batch = batch.to(self.device)
            logits, losses = self._loss(batch)
            probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
            index = batch.lesion_to_patient.cpu().numpy()
            tables.extend(probabilities[index == j] for j in range(batch.num_patients))
            if batch.num_candidates:
                for key in LOSS_KEYS:
                    sums[key] += float(losses[key])
                steps += 1
        scores = score_cases([self.val_data.bank(i) for i in range(len(self.val_data))], tables, rule=NETWORK_RULE,
                             malignant_classes=self.malignant_classes, benign_classes=self.benign_classes,
                             min_volume_mm3=self.schema.min_lesion_volume_mm3)
        record = {f"val_{key}": value / max(steps, 1) for key, value in sums.items()}
        lesion = scores["lesion"]
        record.update({k: scores[k] for k in ("lesion_f1", "malignant_f1", "benign_f1", "patient_f1")},
                      lesion_counts={k: lesion[k] for k in ("tp", "fl", "fp", "fn")})
        return record, tables

    # ---- the run ----------------------------------------------------------------------------------------
    def run_training(self, *, continue_training: bool = False, validate: bool = True) -> dict | None:
        """Train (or continue) to ``settings.epochs`` epochs, write checkpoint_final, then the final validation
        (``validate``); returns the validation summary (None without validation)."""
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
        self._log_start()
        if self.epoch == 0 and not finished_before and self.settings.warm_start_l2 > 0:
            self.warm_start()
        s = self.settings
        while self.epoch < s.epochs:
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
            self._plot()
        if not finished_before:  # a new training replaces an earlier final checkpoint
            self.save(FINAL)
            latest.unlink(missing_ok=True)
        self.fit_operating_point()
        if not validate:
            return None
        return self.final_validation()

    def warm_start(self) -> None:
        """Fit the network's linear description term on the un-augmented training candidates (before epoch 0)."""
        patients = (self.train_data.item(i, augment=False) for i in range(len(self.train_data)))
        fitted = fit_description_term(self.model, patients, l2=self.settings.warm_start_l2)
        self.log(fitted.describe())

    # ---- operating point ------------------------------------------------------------------------------
    def fit_operating_point(self) -> FittedRule:
        """Fit the decision rule on this fold's validation cases (``fold_k/operating_point.json``, the tables in
        ``fold_k/validation/candidate_probabilities.npz``), then the classifier folder's rule on every fold's
        validation cases found there (``operating_point.json`` beside the folds: what prediction uses), with the
        held-out check across those folds (:func:`~nnunet_plus.classifier.operating_point.fit_rule`)."""
        _, tables = self.validate()
        banks = [self.val_data.bank(i) for i in range(len(self.val_data))]
        validation = self.output_folder / "validation"
        validation.mkdir(parents=True, exist_ok=True)
        save_candidate_tables(validation / CANDIDATE_TABLES_FILE, self.val_cases, tables)
        options = dict(malignant_classes=self.malignant_classes, benign_classes=self.benign_classes,
                       objective=self.settings.objective, min_volume_mm3=self.schema.min_lesion_volume_mm3)
        fitted = fit_rule(banks, tables, folds=[self.fold], **options)
        save_rule(fitted, self.output_folder / OPERATING_POINT_FILE)
        self.log(f"fold {self.fold} " + fitted.describe())
        pooled_banks, pooled_tables, folds, case_folds = [], [], [], []
        for fold_dir in sorted(self.output_folder.parent.glob("fold_*")):
            source = fold_dir / "validation" / CANDIDATE_TABLES_FILE
            if not (fold_dir / FINAL).is_file() or not source.is_file():
                continue
            cases, fold_tables = load_candidate_tables(source)
            if not set(cases) <= set(self.metadata["cases"]):
                self.log(f"{source} holds cases that are not in the candidate bank; not pooled")
                continue
            data = CandidateDataset(self.bank_dir, cases, metadata=self.metadata)
            pooled_banks += [data.bank(i) for i in range(len(data))]
            pooled_tables += fold_tables
            folds.append(fold_dir.name[len("fold_"):])
            case_folds += [folds[-1]] * len(cases)
        pooled = fit_rule(pooled_banks, pooled_tables, folds=folds, case_folds=case_folds, **options)
        save_rule(pooled, self.output_folder.parent / OPERATING_POINT_FILE)
        self.log(f"classifier (folds {', '.join(folds)}) " + pooled.describe())
        self.rule = fitted.rule
        return pooled

    def final_validation(self) -> dict:
        """Evaluate the current (final) model end to end on the validation cases: ``validation/summary.json``."""
        from nnunet_plus.classifier.inference import PLUSInference
        from nnunet_plus.classifier.fold_validation import NNUNET_KEY, PLUS_KEY, evaluate_classifier
        from nnunet_plus.evaluation.summary import format_comparison

        inference = PLUSInference([self.model], schema=self.schema,
                                  settings=BankSettings.from_json(self.metadata["settings"]),
                                  target_spacing=self.metadata["target_spacing"],
                                  channel_names=self.metadata["channel_names"], rule=self.rule, device=self.device)
        bank_level = self.history[-1]["lesion_f1"] if self.history else None
        summary = evaluate_classifier(
            inference, self.val_cases, bank_metadata=self.metadata, raw_dataset_dir=self.raw_dataset_dir,
            schema=self.schema, output_folder=self.output_folder / "validation", quiet=self.quiet,
            meta={"dataset": self.dataset_name, "fold": self.fold, "checkpoint": FINAL, "epoch": self.epoch,
                  "best": self.best, "bank_level_lesion_f1": bank_level, "trainer": self.settings.to_json()})
        self.log("validation (" + str(self.output_folder / "validation" / "summary.json") + "):\n"
                 + format_comparison(summary[NNUNET_KEY], summary[PLUS_KEY], names=("nnU-Net", "nnU-Net + PLUS")))
        return summary

    # ---- reporting --------------------------------------------------------------------------------------
    def _log_start(self) -> None:
        names = [*self.schema.lesions, "not_a_lesion"]
        counts = ", ".join(f"{n} {int(c)}" for n, c in zip(names, self.class_counts))
        weights = ", ".join(f"{n} {float(w):.3f}" for n, w in zip(names, self.class_weights))
        self.log(f"PLUS classifier {self.dataset_name} fold {self.fold} on {self.device} (AMP {self.amp}): "
                 f"{len(self.train_cases)} training / {len(self.val_cases)} validation patients; training "
                 f"candidates {counts}; class weights {weights}; nnU-Net alone on the validation patients: lesion "
                 f"F1 {self._fmt(self.nnunet_val['f1'])}; settings {self.settings.to_json()}")

    @staticmethod
    def _fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    def _log_epoch(self, record: Mapping, improved: bool) -> None:
        fmt = self._fmt
        counts = record["lesion_counts"]
        self.log(f"epoch {record['epoch']}: lr {record['lr']:.2e}, train loss {record['train_total']:.4f} "
                 f"(L_L {record['train_lesion']:.4f}, L_P {record['train_patient']:.4f}, L_S "
                 f"{record['train_screening']:.4f}), val loss {record['val_total']:.4f}, lesion F1 "
                 f"{fmt(record['lesion_f1'])} (TP {counts['tp']} FL {counts['fl']} FP {counts['fp']} FN "
                 f"{counts['fn']}), patient F1 malignant {fmt(record['malignant_f1'])} benign "
                 f"{fmt(record['benign_f1'])}{' [best]' if improved else ''}, {record['seconds']:.1f} s")

    def _plot(self) -> None:
        if not self.history:
            return
        from nnunet_plus.classifier.progress import plot_progress

        plot_progress(self.history, self.output_folder / "progress.png", best_epoch=self.best["epoch"],
                      baseline_lesion_f1=self.nnunet_val["f1"],
                      title=f"PLUS classifier {self.dataset_name} fold {self.fold} ({self.settings.preset}, "
                            f"{self.settings.fusion})")
