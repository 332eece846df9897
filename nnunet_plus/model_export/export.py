"""Pack a trained model (nnU-Net folds, PLUS classifier with its operating point, model card) into one zip."""
from __future__ import annotations

import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.files.integrity import IncompleteFileError
from nnunet_plus.model_export.card import model_card, model_card_markdown
from nnunet_plus.model_export.layout import (
    CARD_JSON, CARD_MARKDOWN, CHECKPOINT, CLASSIFIER_FILES, CLASSIFIER_FOLD_FILES, NNUNET_FILES, NNUNET_FOLD_FILES,
    ExportError, fold_name,
)
from nnunet_plus.paths import dataset_name, nnunet_folder, trained_folds

__all__ = ["export_model"]

logger = logging.getLogger(__name__)


def _train_hint(dataset: str, configuration: str, trainer: str, plans: str, fold: int | str = "FOLD") -> str:
    return f"nnUNetv2_train {dataset} {configuration} {fold} -tr {trainer} -p {plans}"


def _present(folder: Path) -> str:
    folds = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
    return ", ".join(folds) or "none"


def _collect(dataset: str, configuration: str, *, trainer: str, plans: str, folds: Sequence[int | str] | None,
             classifier: bool) -> tuple[Path, Path, list[int | str], Path | None, list[int | str]]:
    """``(results, nnU-Net model folder, its folds, classifier folder or None, its trained folds)``; ExportError
    for a missing folder / fold / file."""
    results = nnunet_folder("nnUNet_results")
    try:
        name = dataset_name(dataset)
    except ValueError:  # nnU-Net's message for a name that is neither a number nor DatasetXXX_Name
        raise ExportError(f"dataset {dataset!r} is neither a dataset id (a number) nor a name DatasetXXX_Name") \
            from None
    folder = results / name / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        raise ExportError(f"{folder} not found: no trained model for -tr {trainer} -p {plans} -c {configuration}; "
                          f"train it with `{_train_hint(name, configuration, trainer, plans)}`")
    for file in ("dataset.json", "plans.json"):
        if not (folder / file).is_file():
            raise ExportError(f"{folder / file} not found; {folder} is not a complete nnU-Net model folder "
                              f"(train it with `{_train_hint(name, configuration, trainer, plans)}`)")
    if folds is None:
        folds = trained_folds(folder, CHECKPOINT)
        if not folds:
            raise ExportError(f"no fold of {folder} has {CHECKPOINT} (folds present: {_present(folder)}); finish "
                              f"training with `{_train_hint(name, configuration, trainer, plans)}`")
    folds = list(dict.fromkeys(folds))
    for fold in folds:
        if not (folder / fold_name(fold) / CHECKPOINT).is_file():
            raise ExportError(f"fold {fold} of {folder} has no {CHECKPOINT} ({folder / fold_name(fold) / CHECKPOINT}"
                              f" not found; folds present: {_present(folder)}); train it with "
                              f"`{_train_hint(name, configuration, trainer, plans, fold)}` or leave it out of -f")
    from nnunet_plus.schema import LesionSchema

    try:
        LesionSchema.from_dataset_json(folder / "dataset.json", dataset_id=name)
    except ValueError as exc:  # SchemaError
        raise ExportError(f"{folder / 'dataset.json'}: {exc}") from None

    clf_folder = results / name / f"PLUSClassifier__{trainer}__{plans}__{configuration}"
    if not classifier or not clf_folder.is_dir():
        if classifier:
            logger.warning("no PLUS classifier folder %s: exporting the nnU-Net model alone", clf_folder)
        return results, folder, folds, None, []
    train = f"nnunet_plus_train_classifier {name} {configuration} FOLD -tr {trainer} -p {plans}"
    clf_available = trained_folds(clf_folder, CHECKPOINT)
    if not clf_available:
        raise ExportError(f"the PLUS classifier folder {clf_folder} has no fold with {CHECKPOINT}; train it with "
                          f"`{train}`, or pass --no-classifier to export nnU-Net alone")
    return results, folder, folds, clf_folder, clf_available


def _model_files(results: Path, folder: Path, folds: Sequence[int | str], clf_folder: Path | None,
                 clf_folds: Sequence[int | str]) -> list[Path]:
    """The files to pack (absolute paths), in a stable order."""
    files = [folder / f for f in NNUNET_FILES if (folder / f).is_file()]
    for fold in folds:
        files += [folder / fold_name(fold) / f for f in NNUNET_FOLD_FILES
                  if (folder / fold_name(fold) / f).is_file()]
    if clf_folder is not None:
        files += [clf_folder / f for f in CLASSIFIER_FILES if (clf_folder / f).is_file()]
        for fold in clf_folds:
            files += [clf_folder / fold_name(fold) / f for f in CLASSIFIER_FOLD_FILES
                      if (clf_folder / fold_name(fold) / f).is_file()]
    return files


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
        raise IncompleteFileError(path, f"not a readable zip: {exc}") from exc
    if bad is not None:
        raise IncompleteFileError(path, f"member {bad} fails its CRC check")


def export_model(dataset: str | int, configuration: str, output_file: str | os.PathLike, *,
                 trainer: str = "nnUNetTrainerPLUS", plans: str = "nnUNetPlans",
                 folds: Sequence[int | str] | None = None, classifier: bool = True) -> dict:
    """Pack a trained model into ``output_file`` (atomic: a temp file beside it, verified, then renamed).

    Parameters
    ----------
    dataset, configuration, trainer, plans : the nnU-Net model (``$nnUNet_results/DatasetXXX_Name/
        <trainer>__<plans>__<configuration>``).
    folds : folds to pack (default: every fold with ``checkpoint_final.pth``); the classifier's folds are the
        same ones when given, else every trained classifier fold.
    classifier : pack the PLUS classifier folder when it exists (False: nnU-Net alone).

    Returns the model card (dict). Raises :class:`ExportError` / :class:`~nnunet_plus.paths.PathError` (one
    line) for a missing model folder, fold or file; nothing is written then.
    """
    output_file = Path(output_file)
    if output_file.is_dir():
        raise ExportError(f"-o {output_file} is a folder; give the zip file to write, e.g. {output_file / 'model.zip'}")
    explicit = folds is not None
    folds = None if folds is None else [int(f) if str(f).isdigit() else str(f) for f in folds]
    results, folder, folds, clf_folder, clf_folds = _collect(
        dataset, configuration, trainer=trainer, plans=plans, folds=folds, classifier=classifier)
    if clf_folder is not None and explicit:
        missing = [f for f in folds if not (clf_folder / fold_name(f) / CHECKPOINT).is_file()]
        if missing:
            raise ExportError(
                f"fold {missing[0]} of the PLUS classifier has no {CHECKPOINT} "
                f"({clf_folder / fold_name(missing[0]) / CHECKPOINT} not found; classifier folds present: "
                f"{_present(clf_folder)}); train it with `nnunet_plus_train_classifier {folder.parent.name} "
                f"{configuration} {missing[0]} -tr {trainer} -p {plans}`, leave it out of -f, or pass "
                "--no-classifier")
        clf_folds = list(folds)
    files = _model_files(results, folder, folds, clf_folder, clf_folds)
    card = model_card(results, folder, folds, clf_folder, clf_folds, files)
    card_dir = folder.relative_to(results).as_posix()
    with atomic_path(output_file, check=_check_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, path.relative_to(results).as_posix())
            zf.writestr(f"{card_dir}/{CARD_JSON}", json.dumps(card, indent=2, allow_nan=False) + "\n")
            zf.writestr(f"{card_dir}/{CARD_MARKDOWN}", model_card_markdown(card))
    logger.debug("exported %d files of %s to %s", len(files), folder, output_file)
    return card

