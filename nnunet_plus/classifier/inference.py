"""Apply a trained PLUS classifier to one case (the classifier inference contract of nnunet_plus_predict).

:class:`PLUSInference` loads the fold models of a classifier folder (``fold_k/checkpoint_final.pth``) and its
fitted decision rule (``operating_point.json`` beside the folds; a single fold's own one when the folder has
none; the identity rule, i.e. nnU-Net alone, when neither exists), builds a case's candidate inputs with the
candidate bank's own function (:func:`~nnunet_plus.classifier.candidate_arrays.classifier_inputs`, the settings, target
spacing and channel names stored in the checkpoint, inputs rounded to float16 as the bank stores them) and
averages the fold models' softmax.

Per case the result is a :class:`ClassifierOutput`: an ``(N, L + 1)`` probability table for the ``N``
candidates of ``analysis.detections`` (columns: ``schema.lesions`` then ``"not_a_lesion"``) and patient
probabilities: ``malignant`` = max over the candidates of the summed malignant columns, ``benign`` the same
for benign, ``tumor`` = max of malignant + benign (the quantities of the loss's L_P and L_S), and per
lesion type the max of its column; all 0.0 for a case without candidates.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.checkpoint import check_compatible, load_checkpoint
from nnunet_plus.classifier.model import PLUSClassifier, candidate_features
from nnunet_plus.classifier.operating_point import OPERATING_POINT_FILE, load_rule
from nnunet_plus.classifier.patient_sources import plus_patient_probabilities
from nnunet_plus.decision_rule import DecisionRule
from nnunet_plus.paths import resolve_device, trained_folds
from nnunet_plus.schema import LesionSchema

__all__ = ["ClassifierOutput", "PLUSInference", "classifier_folder"]

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "checkpoint_final.pth"
#: candidates per forward pass (bounds memory on cases with many candidates)
DEFAULT_CHUNK = 32


def classifier_folder(dataset: str | int, configuration: str, *, trainer: str = "nnUNetTrainerPLUS",
                      plans: str = "nnUNetPlans") -> Path:
    """``$nnUNet_results/DatasetXXX_Name/PLUSClassifier__<trainer>__<plans>__<configuration>`` (``fold_k/`` and
    ``candidate_bank/`` inside)."""
    from nnunet_plus.paths import dataset_name, nnunet_folder

    return nnunet_folder("nnUNet_results") / dataset_name(dataset) / \
        f"PLUSClassifier__{trainer}__{plans}__{configuration}"


@dataclass
class ClassifierOutput:
    """PLUS probabilities of one case.

    lesion_probabilities : (N, L + 1) float32, one row per candidate of ``analysis.detections`` (id order),
        columns ``schema.lesions`` + ``"not_a_lesion"``.
    patient : ``{"tumor", "malignant", "benign", <lesion name>: p}`` (max over the candidates; 0.0 without).
    """

    lesion_probabilities: np.ndarray
    patient: dict[str, float]


def _operating_point(folder: Path, folds: Sequence[int | str]) -> tuple[DecisionRule, str]:
    """The decision rule of a classifier folder and where it came from (see the module docstring)."""
    pooled = folder / OPERATING_POINT_FILE
    if pooled.is_file():
        return load_rule(pooled), str(pooled)
    if len(folds) == 1 and (folder / f"fold_{folds[0]}" / OPERATING_POINT_FILE).is_file():
        path = folder / f"fold_{folds[0]}" / OPERATING_POINT_FILE
        return load_rule(path), str(path)
    logger.warning("%s has no %s (train the classifier to fit one): stage two steps aside (nnU-Net alone)",
                   folder, OPERATING_POINT_FILE)
    return DecisionRule(), "identity (no operating point in the classifier folder)"


class PLUSInference:
    """An ensemble of trained PLUS classifiers (one per fold) and how to build their inputs.

    Parameters
    ----------
    models : the networks (probabilities are averaged over them).
    schema : the dataset's lesion schema (class order = ``schema.lesions``).
    settings, target_spacing : the candidate bank's crop settings and ROI spacing (z, y, x) mm.
    channel_names : the dataset's channel names the bank was built with (``normalisation="auto"``).
    rule : the decision rule applied to the probabilities (:mod:`nnunet_plus.classifier.operating_point`;
        default: the identity, i.e. nnU-Net alone).
    device : where the networks run; AMP (float16 autocast) on CUDA.
    chunk : candidates per forward pass.
    """

    def __init__(self, models: Sequence[PLUSClassifier], *, schema: LesionSchema, settings: BankSettings,
                 target_spacing: Sequence[float], channel_names: Sequence[str] | None = None,
                 rule: DecisionRule | None = None, device: str | torch.device = "cpu",
                 chunk: int = DEFAULT_CHUNK) -> None:
        if not models:
            raise ValueError("PLUSInference needs at least one model")
        self.device = resolve_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        self.schema = schema
        self.settings = settings
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.channel_names = None if channel_names is None else [str(n) for n in channel_names]
        self.rule = rule or DecisionRule()
        self.chunk = int(chunk)
        channels = {m.in_channels for m in self.models}
        classes = {m.num_lesion_classes for m in self.models}
        if len(channels) != 1 or classes != {len(schema.lesions)}:
            raise ValueError(f"the models disagree with each other or with the schema: input channels {channels}, "
                             f"lesion classes {classes} (schema: {len(schema.lesions)})")
        self.in_channels = channels.pop()
        self.folds: list[int | str] = []

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, folds: Sequence[int | str] | None = None,
                    checkpoint: str = DEFAULT_CHECKPOINT, device: str | torch.device = "cpu",
                    schema: LesionSchema) -> "PLUSInference":
        """Load the fold models of a classifier folder (``folds=None``: every ``fold_k`` with ``checkpoint``).

        FileNotFoundError names a missing folder / fold / checkpoint; ValueError a checkpoint trained for
        another dataset or lesion schema, or folds trained with different crop settings.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"PLUS classifier folder {folder} not found; train it with "
                                    "nnunet_plus_train_classifier DATASET CONFIG FOLD")
        if folds is None:
            folds = trained_folds(folder, checkpoint)
            if not folds:
                raise FileNotFoundError(f"no fold of {folder} (folders fold_<k>) has {checkpoint}; train one with "
                                        "nnunet_plus_train_classifier (or choose another checkpoint)")
        folds = [int(f) if str(f).isdigit() else str(f) for f in folds]
        device = resolve_device(device)
        dataset = schema.dataset_id
        if dataset is None and re.fullmatch(r"Dataset\d+_.+", folder.resolve().parent.name):
            dataset = folder.resolve().parent.name
        models, reference = [], None
        for fold in folds:
            fold_dir = folder / f"fold_{fold}"
            if not fold_dir.is_dir():
                present = sorted(p.name for p in folder.glob("fold_*"))
                raise FileNotFoundError(f"fold {fold} of the PLUS classifier not found ({fold_dir}); folds present: "
                                        f"{present or 'none'}")
            path = fold_dir / checkpoint
            ckpt = load_checkpoint(path)
            check_compatible(ckpt, schema, path=path, dataset=dataset)
            crop_inputs = (ckpt["bank"]["settings"], list(ckpt["bank"]["target_spacing"]),
                           list(ckpt["bank"].get("channel_names") or []) or None)
            if reference is not None and crop_inputs != reference:
                raise ValueError(f"{path} was trained on crops made with other settings than fold {folds[0]}; "
                                 "ensemble only folds trained on the same candidate bank")
            reference = crop_inputs
            model = PLUSClassifier.from_config(ckpt["model_config"])
            model.load_state_dict(ckpt["state_dict"])
            models.append(model)
            logger.info("PLUS classifier fold %s: %s (epoch %d)", fold, path, ckpt["epoch"])
        settings = BankSettings.from_json(reference[0])
        rule, source = _operating_point(folder, folds)
        inference = cls(models, schema=schema, settings=settings, target_spacing=reference[1],
                        channel_names=reference[2], rule=rule, device=device)
        inference.folds = list(folds)
        logger.info("PLUS decision rule from %s: %s", source, rule.describe(schema.lesions))
        return inference

    @torch.no_grad()
    def predict_inputs(self, crops: np.ndarray | torch.Tensor, priors: np.ndarray | torch.Tensor,
                       features: np.ndarray | torch.Tensor, liver: np.ndarray | torch.Tensor) -> np.ndarray:
        """Ensemble probabilities ``(N, L + 1)`` of one patient's prepared inputs: crops (N, C + 1, *roi),
        priors (N, L), candidate features (N, 3 + L), liver (C, *liver) (float arrays as in the candidate bank)."""
        crops = torch.as_tensor(np.asarray(crops, dtype=np.float32))
        priors = torch.as_tensor(np.asarray(priors, dtype=np.float32))
        features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        liver = torch.as_tensor(np.asarray(liver, dtype=np.float32))[None].to(self.device)
        n = crops.shape[0]
        total = torch.zeros((n, len(self.schema.lesions) + 1), dtype=torch.float32)
        if n == 0:
            return total.numpy()
        amp = self.device.type == "cuda"
        for model in self.models:
            for start in range(0, n, self.chunk):
                stop = min(start + self.chunk, n)
                index = torch.zeros(stop - start, dtype=torch.long, device=self.device)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
                    logits = model(crops[start:stop].to(self.device), priors[start:stop].to(self.device),
                                   features[start:stop].to(self.device), liver, index)
                total[start:stop] += torch.softmax(logits.float(), dim=1).cpu()
        return (total / len(self.models)).numpy()

    def predict_case(self, image: np.ndarray, probabilities: np.ndarray, analysis, *,
                     spacing: Sequence[float]) -> ClassifierOutput:
        """PLUS probabilities of the candidates of one case.

        Parameters
        ----------
        image : (C, Z, Y, X) image in the original geometry (HU for CT).
        probabilities : (K, Z, Y, X) nnU-Net softmax of the case (same grid).
        analysis : :func:`~nnunet_plus.case_analysis.analyse_case` of ``probabilities``.
        spacing : voxel spacing (z, y, x) mm.
        """
        from nnunet_plus.classifier.candidate_arrays import classifier_inputs

        image = np.asarray(image)
        if image.ndim != 4 or image.shape[0] != self.in_channels:
            raise ValueError(f"image must be ({self.in_channels}, Z, Y, X) (the classifier's channels), got shape "
                             f"{image.shape}")
        if tuple(np.shape(probabilities)[1:]) != image.shape[1:]:
            raise ValueError(f"probabilities shape {np.shape(probabilities)} does not match the image grid "
                             f"{image.shape[1:]}")
        records = analysis.detections.lesions
        num_classes = len(self.schema.lesions)
        if not records:
            empty = np.zeros((0, num_classes + 1), dtype=np.float32)
            return ClassifierOutput(empty, plus_patient_probabilities(empty, self.schema))
        if any(r.get("prior") is None for r in records):
            raise ValueError("analysis.detections lack the 'prior' of their candidates; run analyse_case with the "
                             "probabilities")
        crops, _, liver, _ = classifier_inputs(image, analysis, self.schema, spacing=spacing,
                                               target_spacing=self.target_spacing, settings=self.settings,
                                               channel_names=self.channel_names)
        priors = np.array([r["prior"] for r in records], dtype=np.float32).reshape(len(records), num_classes)
        index = {label: i for i, label in enumerate(self.schema.lesion_labels)}
        features = candidate_features([0 if r.get("tier", "confident") == "confident" else 1 for r in records],
                                      [r["max_probability"] for r in records], [r["volume_mm3"] for r in records],
                                      [index[int(r["label"])] for r in records], num_classes)
        # the bank stores crops and livers as float16: round the same way
        rows = self.predict_inputs(crops.astype(np.float16), priors, features, np.asarray(liver).astype(np.float16))
        return ClassifierOutput(rows, plus_patient_probabilities(rows, self.schema))
