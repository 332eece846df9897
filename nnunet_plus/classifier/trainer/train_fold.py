"""The Python API of ``nnunet_plus_train_classifier``: build the candidate bank of a trained nnU-Net model and train
one PLUS classifier fold on nnU-Net's split (the command parses its flags and calls :func:`train_classifier_fold`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.trainer.settings import TrainerSettings
from nnunet_plus.files.atomic import remove_stale_temp_files

__all__ = ["FoldTrainingResult", "build_classifier_bank", "train_classifier_fold"]


@dataclass(frozen=True)
class FoldTrainingResult:
    """What :func:`train_classifier_fold` produced.

    Attributes
    ----------
    summary : the fold's validation summary (``fold_k/validation/summary.json``: nnU-Net alone vs nnU-Net + PLUS).
    fold_folder : ``.../PLUSClassifier__<trainer>__<plans>__<configuration>/fold_k`` (checkpoints, history.json,
        operating_point.json); its parent holds the pooled ``operating_point.json`` that prediction applies.
    bank_dir : the candidate bank folder.
    bank_files : the bank's case files (shuffled copies included).
    """

    summary: dict
    fold_folder: Path
    bank_dir: Path
    bank_files: tuple[Path, ...]


def build_classifier_bank(dataset: str | int, configuration: str, *, trainer: str = "nnUNetTrainerPLUS",
                          plans: str = "nnUNetPlans", bank_settings: BankSettings | None = None,
                          num_processes: int = 2, overwrite_bank: bool = False, lesion_shuffles: int = 0,
                          extra_cases: str | os.PathLike | None = None,
                          quiet: bool = False) -> tuple[Path, list[Path]]:
    """Build (or complete) the candidate bank ``<classifier folder>/candidate_bank`` from the nnU-Net folds'
    ``validation/`` softmax exports; returns ``(bank folder, case files)``. The parameters are those of
    :func:`train_classifier_fold`."""
    from nnunet_plus.classifier.bank_nnunet import bank_from_nnunet_results
    from nnunet_plus.classifier.inference import classifier_folder

    bank_dir = classifier_folder(dataset, configuration, trainer=trainer, plans=plans) / "candidate_bank"
    files = bank_from_nnunet_results(dataset, configuration, trainer=trainer, plans=plans, out_dir=bank_dir,
                                     settings=bank_settings, num_processes=num_processes, overwrite=overwrite_bank,
                                     quiet=quiet, lesion_shuffles=lesion_shuffles, extra_dir=extra_cases)
    return bank_dir, files


def train_classifier_fold(dataset: str | int, configuration: str, fold: int, *, trainer: str = "nnUNetTrainerPLUS",
                          plans: str = "nnUNetPlans", settings: TrainerSettings | None = None,
                          bank_settings: BankSettings | None = None, device: str | torch.device | None = None,
                          continue_training: bool = False, num_processes: int = 2, overwrite_bank: bool = False,
                          lesion_shuffles: int = 0, extra_cases: str | os.PathLike | None = None,
                          quiet: bool = False) -> FoldTrainingResult:
    """Build the candidate bank, check it against nnU-Net's split and train, fit and validate one classifier fold.

    Parameters
    ----------
    dataset : nnU-Net dataset id or name (``DatasetXXX_Name``); nnUNet_raw, nnUNet_preprocessed and
        nnUNet_results must be set.
    configuration : nnU-Net configuration of the model, e.g. ``"3d_fullres"``.
    fold : fold of nnU-Net's ``splits_final.json``: the classifier trains on its training cases' out-of-fold
        candidates and validates on its validation cases.
    trainer, plans : nnU-Net trainer and plans identifier of the model (the ``-tr`` / ``-p`` of nnU-Net).
    settings : :class:`~nnunet_plus.classifier.trainer.settings.TrainerSettings` (default: the paper's recipe).
    bank_settings : crop settings of the candidate bank (:class:`~nnunet_plus.classifier.bank_settings.BankSettings`;
        default: its defaults); a bank built with others is refused unless ``overwrite_bank``.
    device : ``"cpu"``, ``"cuda"``, ``"mps"`` or None (CUDA when available); ValueError when unavailable.
    continue_training : continue from ``checkpoint_latest.pth`` of the fold (the CLI's ``--c``).
    num_processes : processes of the bank build.
    overwrite_bank : rebuild every case of the bank.
    lesion_shuffles : lesion-shuffled copies of every case in the bank (training cases only; 0 = off).
    extra_cases : folder of extra labelled patients no nnU-Net fold trained on (``imagesTr``, ``labelsTr``,
        ``predictions``), spread over the classifier folds (:mod:`nnunet_plus.classifier.splits`).
    quiet : no progress bars.

    Returns
    -------
    :class:`FoldTrainingResult`: the validation summary, the fold folder and the bank.

    Raises
    ------
    NoCandidateError
        (:mod:`~nnunet_plus.classifier.trainer.fold_files`, a ValueError) the fold's training cases hold no lesion
        candidate: stage one must detect lesions first.
    ValueError, OSError, PathError
        a bad setting, bank, split or checkpoint; a missing folder or file.
    """
    from nnunet_plus.classifier.trainer.fold_trainer import PLUSClassifierTrainer
    from nnunet_plus.paths import dataset_name, nnunet_folder, resolve_device

    device = resolve_device(device)
    name = dataset_name(dataset)
    bank_dir, files = build_classifier_bank(dataset, configuration, trainer=trainer, plans=plans,
                                            bank_settings=bank_settings, num_processes=num_processes,
                                            overwrite_bank=overwrite_bank, lesion_shuffles=lesion_shuffles,
                                            extra_cases=extra_cases, quiet=quiet)
    fold_folder = bank_dir.parent / f"fold_{fold}"
    _remove_stale_temp_files(bank_dir, fold_folder)
    cases = _fold_cases(bank_dir, name, fold, train_command=f"nnUNetv2_train {dataset} {configuration} FOLD "
                                                            f"-tr {trainer} -p {plans}")
    fold_trainer = PLUSClassifierTrainer(bank_dir, fold_folder, fold=fold,
                                         train_cases=cases.train, val_cases=cases.val,
                                         raw_dataset_dir=nnunet_folder("nnUNet_raw") / name, dataset_name=name,
                                         settings=settings, device=device, quiet=quiet)
    summary = fold_trainer.run_training(continue_training=continue_training)
    return FoldTrainingResult(summary=summary, fold_folder=fold_trainer.output_folder, bank_dir=bank_dir,
                              bank_files=tuple(files))


def _remove_stale_temp_files(bank_dir: Path, fold_folder: Path) -> None:
    """Remove what a killed run left half-written in the bank, the fold and its validation folder."""
    for folder in (bank_dir, fold_folder, fold_folder / "validation"):
        remove_stale_temp_files(folder)


def _fold_cases(bank_dir: Path, name: str, fold: int, *, train_command: str):
    """The fold's training and validation cases of nnU-Net's ``splits_final.json``, each checked to be in the bank
    (:func:`~nnunet_plus.classifier.splits.check_bank_for_fold`; ``train_command`` is named when one is not)."""
    from nnunet_plus.classifier.bank_io import read_bank_metadata
    from nnunet_plus.classifier.splits import check_bank_for_fold, load_splits
    from nnunet_plus.paths import nnunet_folder

    splits = load_splits(nnunet_folder("nnUNet_preprocessed") / name / "splits_final.json")
    return check_bank_for_fold(read_bank_metadata(bank_dir)["cases"], splits, fold, train_command=train_command)
