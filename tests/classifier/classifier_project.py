"""A small synthetic nnU-Net project for the classifier tests (the fixtures in conftest.py build it once per
session; a test that needs its own copy calls :func:`write_project`).

``cls_project`` (session) writes ``Dataset998_ClsTrainer``: six 12 x 48 x 48 cases (spacing 2 x 1 x 1 mm,
labels background / liver / hcc / cyst) with hand-made nnU-Net softmax exports in
``results/.../nnUNetTrainerPLUS__nnUNetPlans__3d_fullres/fold_{0,1}/validation`` (each case in the fold
whose validation set holds it), ``splits_final.json`` (fold 0 validates cases 0-2, fold 1 cases 3-5) and a
candidate bank with small crops (ROI 16 x 32 x 32, liver 16 x 32 x 32).

Cases (``KINDS``): ``full`` has 4 candidates (hcc TP, cyst FP on liver, hcc-on-cyst, weak hcc found only at
f=4) and a missed cyst; ``single`` has one hcc candidate; ``empty`` has none (healthy liver).
``trained_folds`` (session) trains the tiny classifier on both folds for one epoch.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_plus.schema import build_schema

CLS_LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}
CLS_SCHEMA = build_schema(CLS_LABELS, liver=("liver",), lesions=("hcc", "cyst"), sensitivities=(1.0, 4.0))
CLS_SPACING = (2.0, 1.0, 1.0)
CLS_DATASET = "Dataset998_ClsTrainer"
CLS_MODEL = "nnUNetTrainerPLUS__nnUNetPlans__3d_fullres"
CLS_FOLDER = "PLUSClassifier__nnUNetTrainerPLUS__nnUNetPlans__3d_fullres"
KINDS = ("full", "single", "empty", "full", "empty", "single")
CASES = tuple(f"cls_{i:03d}" for i in range(len(KINDS)))
SPLITS = [{"train": list(CASES[3:]), "val": list(CASES[:3])}, {"train": list(CASES[:3]), "val": list(CASES[3:])}]

A = np.s_[4:7, 10:16, 10:16]
FP = np.s_[4:7, 10:16, 30:36]
B = np.s_[4:7, 30:36, 10:16]
C = np.s_[4:7, 30:36, 30:36]
D = np.s_[8:10, 20:24, 20:24]


def synthetic_case(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (1, 12, 48, 48) HU, reference (12, 48, 48) uint8, probabilities (4, 12, 48, 48) float32)."""
    shape = (12, 48, 48)
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, np.uint8)
    reference[1:11, 4:44, 4:44] = 1
    probabilities = np.empty((4, *shape), np.float32)
    probabilities[:] = np.array([0.9, 0.05, 0.025, 0.025])[:, None, None, None]
    probabilities[:, 1:11, 4:44, 4:44] = np.array([0.04, 0.9, 0.03, 0.03])[:, None, None, None]
    image = np.full((1, *shape), -1000.0, np.float32)
    image[:, 1:11, 4:44, 4:44] = 60.0
    boxes = {"full": ((A, 2, [0.05, 0.1, 0.8, 0.05], 30.0), (FP, 1, [0.05, 0.2, 0.05, 0.7], 50.0),
                      (B, 3, [0.05, 0.15, 0.7, 0.1], 5.0), (C, 2, [0.05, 0.6, 0.3, 0.05], 30.0),
                      (D, 3, None, 5.0)),
             "single": ((A, 2, [0.05, 0.1, 0.8, 0.05], 30.0),),
             "empty": ()}[kind]
    for box, label, p, hu in boxes:
        reference[box] = label
        image[(slice(None), *box)] = hu
        if p is not None:
            probabilities[(slice(None), *box)] = np.array(p)[:, None, None, None]
    image += rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)
    return image, reference, probabilities


def _write_nifti(array: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in CLS_SPACING[::-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def write_softmax_export(folder: Path, case: str, probabilities: np.ndarray, spacing: tuple) -> None:
    """nnU-Net's ``--npz`` export of one case in ``folder``: ``<case>.npz`` (float16 softmax) and ``<case>.pkl``
    (the properties nnU-Net's SimpleITK reader gives: identity direction, ``spacing`` in (z, y, x) mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities.astype(np.float16))
    properties = {"sitk_stuff": {"spacing": tuple(spacing)[::-1], "origin": (0.0, 0.0, 0.0),
                                 "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)},
                  "spacing": list(spacing)}
    with open(folder / f"{case}.pkl", "wb") as fh:
        pickle.dump(properties, fh)


@dataclass
class ClassifierProject:
    """The folders of a project written by :func:`write_project`; ``settings`` / ``bank`` / ``summaries`` are set
    by the fixtures that build the candidate bank and train the folds."""

    root: Path
    raw: Path
    model: Path
    classifier: Path
    env: dict
    dataset: str = CLS_DATASET
    schema: object = CLS_SCHEMA
    cases: tuple = CASES
    kinds: tuple = KINDS
    splits: list = field(default_factory=lambda: SPLITS)
    spacing: tuple = CLS_SPACING
    settings: object = None
    bank: Path | None = None
    summaries: dict = field(default_factory=dict)


def write_project(root: Path) -> ClassifierProject:
    """The raw dataset, the fold softmax exports, plans.json and splits_final.json under ``root``."""
    raw = root / "raw" / CLS_DATASET
    model = root / "results" / CLS_DATASET / CLS_MODEL
    for i, (case, kind) in enumerate(zip(CASES, KINDS)):
        image, reference, probabilities = synthetic_case(kind, seed=i)
        _write_nifti(image[0], raw / "imagesTr" / f"{case}_0000.nii.gz")
        _write_nifti(reference, raw / "labelsTr" / f"{case}.nii.gz")
        fold = next(k for k, s in enumerate(SPLITS) if case in s["val"])
        write_softmax_export(model / f"fold_{fold}" / "validation", case, probabilities, CLS_SPACING)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": CLS_LABELS, "numTraining": len(CASES), "file_ending": ".nii.gz",
        "plus": CLS_SCHEMA.to_block()}))
    (model / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {"spacing": list(CLS_SPACING)}}}))
    preprocessed = root / "preprocessed" / CLS_DATASET
    preprocessed.mkdir(parents=True)
    (preprocessed / "splits_final.json").write_text(json.dumps(SPLITS))
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results")}
    return ClassifierProject(root=root, raw=raw, model=model, classifier=root / "results" / CLS_DATASET / CLS_FOLDER,
                             env=env)


def make_trainer(project: ClassifierProject, output: Path, fold: int, **settings):
    """A tiny-preset trainer of ``fold`` writing into ``output``."""
    from nnunet_plus.classifier.trainer.fold_trainer import PLUSClassifierTrainer
    from nnunet_plus.classifier.trainer.settings import TrainerSettings

    options = {"epochs": 1, "preset": "tiny", **settings}
    return PLUSClassifierTrainer(project.bank, output, fold=fold, train_cases=project.splits[fold]["train"],
                                 val_cases=project.splits[fold]["val"], raw_dataset_dir=project.raw,
                                 dataset_name=project.dataset, settings=TrainerSettings(**options), quiet=True)
