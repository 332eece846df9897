"""Patients of the candidate bank as a torch Dataset, crop augmentation, and the patient-batch collate.

One item is one patient (a bank case): its candidates' crops, priors and targets, its liver input and its
reference patient labels. :func:`collate_patients` concatenates the candidates of a list of patients (each
may have none) and records each candidate's patient in ``lesion_to_patient``, the layout
:class:`~nnunet_plus.classifier.model.PLUSClassifier` and :func:`~nnunet_plus.classifier.loss.plus_loss` take.

Augmentation (training only; our choice, the paper names none): per patient, with probability ``flip_p``
each, a flip along z, y and x applied to all of its crops and its liver input alike; an intensity change
``x * (1 + s) + b`` of the image channels (not the mask), ``s ~ U(-scale, scale)``, ``b ~ U(-shift, shift)``
in normalised units (the CT window maps 250 HU to 1, so the default shift 0.02 is 5 HU), the same for the
patient's crops and liver so the lesion-to-liver contrast is kept. The random numbers of a patient depend
only on ``(seed, epoch, case index)`` (:meth:`CandidateDataset.set_epoch`), so an epoch is reproducible
whatever happened before it (the property a resumed training needs).

Patient targets are what the candidates can reach: a patient is a malignant (tumour) target of L_P (L_S) only
when one of its candidates is matched to a malignant (any) reference lesion. A patient whose lesion nnU-Net
missed entirely has no candidate that should be called malignant, and its false candidates must not be pushed
towards "malignant" (they are false positives).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from nnunet_plus.classifier.bank_io import CaseBank, load_case_bank
from nnunet_plus.classifier.model import candidate_features

__all__ = ["Augmentation", "CandidateDataset", "PatientBatch", "augment_patient", "collate_patients"]


@dataclass(frozen=True)
class Augmentation:
    """Crop augmentation settings (see the module docstring); ``flip_p=0, scale=0, shift=0`` = none."""

    flip_p: float = 0.5
    scale: float = 0.05
    shift: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_p <= 1.0 or self.scale < 0 or self.shift < 0 or self.scale >= 1:
            raise ValueError(f"augmentation needs 0 <= flip_p <= 1, 0 <= scale < 1 and shift >= 0, got {self}")


def augment_patient(crops: np.ndarray, liver: np.ndarray, rng: np.random.Generator,
                    augmentation: Augmentation) -> tuple[np.ndarray, np.ndarray]:
    """Augment one patient: ``crops`` (N, C + 1, Z, Y, X) (mask last), ``liver`` (C, Z, Y, X); new float32 arrays.

    The random draws are always made (flip z, y, x, scale, shift) so their number does not depend on the data.
    """
    flips = rng.random(3) < augmentation.flip_p
    scale = 1.0 + rng.uniform(-augmentation.scale, augmentation.scale)
    shift = rng.uniform(-augmentation.shift, augmentation.shift)
    crops = np.array(crops, dtype=np.float32)
    liver = np.array(liver, dtype=np.float32)
    crops[:, :-1] = crops[:, :-1] * scale + shift
    liver = liver * scale + shift
    axes = tuple(axis for axis, flip in enumerate(flips) if flip)
    if axes:
        crops = np.ascontiguousarray(np.flip(crops, axis=tuple(a + 2 for a in axes)))
        liver = np.ascontiguousarray(np.flip(liver, axis=tuple(a + 1 for a in axes)))
    return crops, liver


class CandidateDataset(torch.utils.data.Dataset):
    """The patients ``case_ids`` of a candidate bank folder; item ``i`` is a dict of numpy arrays.

    Parameters
    ----------
    bank_dir : the bank folder (``<case>.npz`` files + ``bank.json``).
    case_ids : the patients, in item order.
    metadata : ``bank.json`` content (files are validated against it).
    augmentation : crop augmentation (None = none, e.g. validation).
    seed : augmentation seed.
    cache : keep the loaded case files in memory (each is read once; the bank of a few hundred patients fits
        easily at the default sizes: about 256 kB per candidate).

    Item keys: ``case_id`` (str), ``crops`` float32 (N, C + 1, *roi), ``prior`` float32 (N, L), ``features``
    float32 (N, 3 + L) (:func:`~nnunet_plus.classifier.model.candidate_features`), ``target`` int64 (N,),
    ``liver`` float32 (C, *liver), ``malignant`` / ``tumor`` float32 scalars (reachable reference labels, see
    the module docstring).
    """

    def __init__(self, bank_dir: str | os.PathLike, case_ids: Sequence[str], *, metadata: Mapping,
                 augmentation: Augmentation | None = None, seed: int = 0, cache: bool = True) -> None:
        self.bank_dir = Path(bank_dir)
        self.case_ids = [str(c) for c in case_ids]
        self.metadata = metadata
        self.augmentation = augmentation
        self.seed = int(seed)
        self.cache = cache
        self.epoch = 0
        self._banks: dict[str, CaseBank] = {}
        lesions = list(metadata["schema"]["lesions"])
        self.malignant_classes = np.array([lesions.index(n) for n in metadata["schema"]["malignant"]], dtype=np.int64)
        self.num_lesion_classes = len(lesions)

    def __len__(self) -> int:
        return len(self.case_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = int(epoch)

    def bank(self, index: int) -> CaseBank:
        """The validated bank file of patient ``index``."""
        case_id = self.case_ids[index]
        if case_id in self._banks:
            return self._banks[case_id]
        bank = load_case_bank(self.bank_dir / f"{case_id}.npz", metadata=self.metadata)
        if self.cache:
            self._banks[case_id] = bank
        return bank

    def class_counts(self) -> np.ndarray:
        """Number of candidates of each target class (L lesion classes + "not a lesion") over all patients."""
        num_classes = int(self.metadata["num_lesion_classes"]) + 1
        counts = np.zeros(num_classes, dtype=np.int64)
        for i in range(len(self)):
            counts += np.bincount(self.bank(i).target, minlength=num_classes)
        return counts

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, *, augment: bool = True) -> dict:
        """Patient ``index`` (see the class docstring); ``augment=False`` skips the augmentation (the warm start
        reads the training patients as they are, from the same cache)."""
        bank = self.bank(index)
        crops = bank.crops.astype(np.float32)
        liver = bank.liver.astype(np.float32)
        if augment and self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            crops, liver = augment_patient(crops, liver, rng, self.augmentation)
        target = bank.target.astype(np.int64)
        return {"case_id": bank.case_id, "crops": crops, "prior": bank.prior.astype(np.float32),
                "features": candidate_features(bank.tier, bank.max_probability, bank.volume_mm3, bank.nnunet_class,
                                               self.num_lesion_classes),
                "target": target, "liver": liver,
                "malignant": np.float32(np.isin(target, self.malignant_classes).any()),
                "tumor": np.float32((target < self.num_lesion_classes).any())}


@dataclass
class PatientBatch:
    """A batch of ``B`` patients with ``N`` candidates in all (see the module docstring).

    crops (N, C + 1, *roi) float32; priors (N, L) float32; features (N, 3 + L) float32; liver (B, C, *liver)
    float32; lesion_to_patient
    (N,) long; targets (N,) long; patient_malignant / patient_tumor (B,) float32; case_ids (B,).
    """

    crops: torch.Tensor
    priors: torch.Tensor
    features: torch.Tensor
    liver: torch.Tensor
    lesion_to_patient: torch.Tensor
    targets: torch.Tensor
    patient_malignant: torch.Tensor
    patient_tumor: torch.Tensor
    case_ids: list[str]

    @property
    def num_patients(self) -> int:
        return len(self.case_ids)

    @property
    def num_candidates(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device | str) -> "PatientBatch":
        """The batch on ``device`` (a new object)."""
        move = {k: getattr(self, k).to(device, non_blocking=True) for k in
                ("crops", "priors", "features", "liver", "lesion_to_patient", "targets", "patient_malignant",
                 "patient_tumor")}
        return PatientBatch(**move, case_ids=list(self.case_ids))


def collate_patients(items: Sequence[Mapping]) -> PatientBatch:
    """Concatenate patients' candidates (numpy items of :class:`CandidateDataset`) into a :class:`PatientBatch`."""
    if not items:
        raise ValueError("cannot collate an empty list of patients")
    counts = [int(item["target"].shape[0]) for item in items]
    return PatientBatch(
        crops=torch.from_numpy(np.concatenate([item["crops"] for item in items])),
        priors=torch.from_numpy(np.concatenate([item["prior"] for item in items])),
        features=torch.from_numpy(np.concatenate([item["features"] for item in items])),
        liver=torch.from_numpy(np.stack([item["liver"] for item in items])),
        lesion_to_patient=torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
        targets=torch.from_numpy(np.concatenate([item["target"] for item in items])),
        patient_malignant=torch.tensor([float(item["malignant"]) for item in items]),
        patient_tumor=torch.tensor([float(item["tumor"]) for item in items]),
        case_ids=[str(item["case_id"]) for item in items],
    )
