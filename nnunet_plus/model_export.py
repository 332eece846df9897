"""Share a trained model as one zip: pack it (``nnunet_plus_export_model``), unpack it (``nnunet_plus_install_model``).

The zip holds, with paths relative to ``$nnUNet_results`` (like nnU-Net's ``nnUNetv2_export_model_to_zip``):

* the nnU-Net model folder ``DatasetXXX_Name/<trainer>__<plans>__<configuration>``: ``dataset.json`` (with the
  ``"plus"`` schema), ``plans.json``, ``dataset_fingerprint.json``, and per fold ``checkpoint_final.pth``,
  ``progress.png``, ``validation/plus_summary.json`` and ``validation/summary.json`` (those present); never
  ``checkpoint_latest`` / ``checkpoint_best`` nor the validation softmax exports;
* the PLUS classifier folder ``DatasetXXX_Name/PLUSClassifier__<trainer>__<plans>__<configuration>`` when it
  exists: per fold ``checkpoint_final.pth``, ``operating_point.json``, ``validation/summary.json``, the pooled
  ``operating_point.json`` (what ``nnunet_plus_predict`` applies) and ``candidate_bank/bank.json`` (the bank's
  settings and cases; not its ``<case>.npz`` crops);
* a model card in the nnU-Net model folder: ``model_card.json`` (:data:`CARD_FORMAT`; dataset, labels, schema,
  training cohort, folds, validation figures, operating point, software versions, intended use, and the
  SHA-256 of every other file of the zip) and ``MODEL_CARD.md`` (the same, for people).

Installing checks the zip before it writes anything: every member must be a regular file with a relative name
inside one of the card's model folders (no absolute path, no ``..``, no symlink), listed in the card with its
hash; a model folder already installed with other content is replaced only with ``force``. The files are
written into a hidden temporary folder inside ``$nnUNet_results/DatasetXXX_Name`` and each model folder is
renamed into place whole, so an interrupted install leaves no half-written model folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import stat
import sys
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

from nnunet_plus.atomic import atomic_path
from nnunet_plus.integrity import IncompleteFileError
from nnunet_plus.paths import PathError, dataset_name, nnunet_folder, trained_folds

__all__ = ["CARD_FORMAT", "CARD_JSON", "CARD_MARKDOWN", "ExportError", "InstallResult", "export_model",
           "export_main", "install_main", "install_model", "model_card", "model_card_markdown"]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
CARD_FORMAT = "nnunet_plus.model_card"
INTENDED_USE = "research only, not for clinical use"
SYNTHETIC_NOTE = "trained on synthetic data only (nnunet_plus phantom generator); not validated on patient CT"
#: files of the nnU-Net model folder, and of each of its folds, that are packed when present
NNUNET_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
NNUNET_FOLD_FILES = (CHECKPOINT, "progress.png", "validation/plus_summary.json", "validation/summary.json")
#: the same for the PLUS classifier folder
CLASSIFIER_FILES = ("operating_point.json", "candidate_bank/bank.json")
CLASSIFIER_FOLD_FILES = (CHECKPOINT, "operating_point.json", "validation/summary.json")
_DATASET_NAME = re.compile(r"Dataset\d{3,}_[A-Za-z0-9][A-Za-z0-9_.\-]*")
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_CHUNK = 1 << 20


class ExportError(RuntimeError):
    """A model that cannot be packed or a zip that cannot be installed; the message is one line saying why and
    what to do."""


# ---- export -------------------------------------------------------------------------------------------------------
def _fold_name(fold: int | str) -> str:
    return f"fold_{fold}"


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
        if not (folder / _fold_name(fold) / CHECKPOINT).is_file():
            raise ExportError(f"fold {fold} of {folder} has no {CHECKPOINT} ({folder / _fold_name(fold) / CHECKPOINT}"
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
        files += [folder / _fold_name(fold) / f for f in NNUNET_FOLD_FILES
                  if (folder / _fold_name(fold) / f).is_file()]
    if clf_folder is not None:
        files += [clf_folder / f for f in CLASSIFIER_FILES if (clf_folder / f).is_file()]
        for fold in clf_folds:
            files += [clf_folder / _fold_name(fold) / f for f in CLASSIFIER_FOLD_FILES
                      if (clf_folder / _fold_name(fold) / f).is_file()]
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict | None:
    """A JSON object file, or None (with a warning) when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s cannot be read (%s): left out of the model card's figures", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _dig(data, *keys):
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _figures(summary) -> dict:
    """Lesion F1 and malignant / benign patient F1 of one :func:`~nnunet_plus.evaluation.summary.summarize` dict."""
    return {"lesion_f1": _dig(summary, "lesion_level", "f1"),
            "malignant_patient_f1": _dig(summary, "patient_level", "malignant", "f1"),
            "benign_patient_f1": _dig(summary, "patient_level", "benign", "f1"),
            "n_cases": _dig(summary, "meta", "n_cases")}


def _nnunet_figures(folder: Path, folds: Sequence[int | str]) -> dict:
    out = {}
    for fold in folds:
        data = _read_json(folder / _fold_name(fold) / "validation" / "plus_summary.json")
        if data is None:
            continue
        tier = _dig(data, "tiers", "confident")
        if tier is None:
            first = next(iter((data.get("sensitivities") or {}).values()), None)
            tier = first
        out[_fold_name(fold)] = _figures(tier)
    return out


def _classifier_figures(folder: Path | None, folds: Sequence[int | str]) -> dict:
    from nnunet_plus.classifier.fold_validation import NNUNET_KEY, PLUS_KEY

    out = {}
    for fold in folds if folder is not None else ():
        data = _read_json(folder / _fold_name(fold) / "validation" / "summary.json")
        if data is not None:
            out[_fold_name(fold)] = {"nnunet_alone": _figures(data.get(NNUNET_KEY)),
                                     "nnunet_plus": _figures(data.get(PLUS_KEY))}
    return out


def _operating_point(folder: Path | None, folds: Sequence[int | str]) -> dict | None:
    """The rule ``nnunet_plus_predict`` applies with these folds (pooled, else a single fold's own, else none)."""
    if folder is None:
        return None
    candidates = [folder / "operating_point.json"]
    if len(folds) == 1:
        candidates.append(folder / _fold_name(folds[0]) / "operating_point.json")
    for path in candidates:
        data = _read_json(path)
        if data is not None:
            return {"file": path.relative_to(folder).as_posix(), "description": data.get("description"),
                    "identity": data.get("identity"), "objective": data.get("objective"),
                    "rule": data.get("rule"), "n_cases": data.get("n_cases")}
    return {"file": None, "description": "identity (no operating point in the classifier folder): nnU-Net alone",
            "identity": True, "objective": None, "rule": None, "n_cases": None}


def _software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("nnunet_plus", "nnunetv2", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    out["python"] = platform.python_version()
    return out


def model_card(results: str | os.PathLike, folder: str | os.PathLike, folds: Sequence[int | str],
               classifier_folder: str | os.PathLike | None, classifier_folds: Sequence[int | str],
               files: Sequence[str | os.PathLike]) -> dict:
    """The ``model_card.json`` content of a model (see the module docstring); ``files``: the packed files."""
    results, folder = Path(results), Path(folder)
    clf = Path(classifier_folder) if classifier_folder is not None else None
    dataset_json = _read_json(folder / "dataset.json") or {}
    trainer, plans, configuration = folder.name.split("__", 2)
    phantom = dataset_json.get("phantom")
    notes = [SYNTHETIC_NOTE] if phantom is not None else []
    if clf is None:
        notes.append("no PLUS classifier: nnunet_plus_predict reports nnU-Net's lesions (stage one alone)")
    return {
        "format": CARD_FORMAT, "version": 1,
        "dataset": {"name": folder.parent.name, "description": dataset_json.get("description"),
                    "reference": dataset_json.get("reference"), "licence": dataset_json.get("licence"),
                    "channel_names": dataset_json.get("channel_names"),
                    "file_ending": dataset_json.get("file_ending")},
        "labels": dataset_json.get("labels"),
        "schema": dataset_json.get("plus"),
        "training_cohort": {"num_training": dataset_json.get("numTraining"), "synthetic": phantom is not None,
                            "phantom": phantom},
        "model": {"trainer": trainer, "plans": plans, "configuration": configuration,
                  "nnunet_folder": folder.relative_to(results).as_posix(), "folds": list(folds),
                  "classifier_folder": clf.relative_to(results).as_posix() if clf is not None else None,
                  "classifier_folds": list(classifier_folds)},
        "validation": {"nnunet": _nnunet_figures(folder, folds),
                       "classifier": _classifier_figures(clf, classifier_folds)},
        "operating_point": _operating_point(clf, classifier_folds),
        "software": _software_versions(),
        "intended_use": INTENDED_USE,
        "notes": notes,
        "files": {Path(f).relative_to(results).as_posix(): {"sha256": _sha256(Path(f)), "bytes": Path(f).stat().st_size}
                  for f in files},
    }


def _pct(value) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


def model_card_markdown(card: Mapping) -> str:
    """``MODEL_CARD.md``: the card for people."""
    model, dataset = card["model"], card["dataset"]
    schema = card.get("schema") or {}
    lines = [f"# Model card: {dataset['name']} ({model['trainer']}, {model['configuration']})", "",
             f"**Intended use: {card['intended_use']}.**", ""]
    lines += [f"**{note[0].upper()}{note[1:]}.**" for note in card["notes"]] + ([""] if card["notes"] else [])
    lines += ["## Model", "",
              f"- nnU-Net: `{model['nnunet_folder']}` (trainer `{model['trainer']}`, plans `{model['plans']}`, "
              f"configuration `{model['configuration']}`), folds {', '.join(map(str, model['folds']))}",
              f"- PLUS classifier: `{model['classifier_folder']}`, folds "
              f"{', '.join(map(str, model['classifier_folds']))}" if model["classifier_folder"] else
              "- PLUS classifier: none (nnU-Net alone)"]
    op = card.get("operating_point")
    if op:
        lines.append(f"- operating point ({op['file'] or 'none'}): {op['description']}")
    lines += ["", "## Dataset and schema", "",
              f"- dataset `{dataset['name']}`: {dataset.get('description') or 'no description'}",
              f"- training cases: {card['training_cohort']['num_training']}"
              + (" (synthetic phantoms)" if card["training_cohort"]["synthetic"] else ""),
              f"- labels: {', '.join(f'{k} = {v}' for k, v in (card.get('labels') or {}).items())}",
              f"- liver: {', '.join(schema.get('liver', []))}; lesion types: {', '.join(schema.get('lesions', []))}",
              f"- malignant: {', '.join(schema.get('malignant', []))}; benign: {', '.join(schema.get('benign', []))}",
              "", "## Validation (held-out folds)", ""]
    rows = ["| model | fold | cases | lesion F1 | malignant patient F1 | benign patient F1 |",
            "| --- | --- | --- | --- | --- | --- |"]
    for fold, f in card["validation"]["nnunet"].items():
        rows.append(f"| nnU-Net (f = 1, plus_summary.json) | {fold} | {f['n_cases'] or 'n/a'} | {_pct(f['lesion_f1'])} "
                    f"| {_pct(f['malignant_patient_f1'])} | {_pct(f['benign_patient_f1'])} |")
    for fold, pair in card["validation"]["classifier"].items():
        for key, label in (("nnunet_alone", "nnU-Net alone"), ("nnunet_plus", "nnU-Net + PLUS")):
            f = pair[key]
            rows.append(f"| {label} (classifier validation) | {fold} | {f['n_cases'] or 'n/a'} | "
                        f"{_pct(f['lesion_f1'])} | {_pct(f['malignant_patient_f1'])} | "
                        f"{_pct(f['benign_patient_f1'])} |")
    lines += rows if len(rows) > 2 else ["No validation summaries were found in the model folders."]
    software = card["software"]
    lines += ["", "## Software", "", ", ".join(f"{k} {v or 'n/a'}" for k, v in software.items()), "",
              "## Files", "", f"{len(card['files'])} files (SHA-256 in `{CARD_JSON}`); install with "
              "`nnunet_plus_install_model <zip>`.", ""]
    return "\n".join(lines)


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
        missing = [f for f in folds if not (clf_folder / _fold_name(f) / CHECKPOINT).is_file()]
        if missing:
            raise ExportError(
                f"fold {missing[0]} of the PLUS classifier has no {CHECKPOINT} "
                f"({clf_folder / _fold_name(missing[0]) / CHECKPOINT} not found; classifier folds present: "
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


# ---- install ------------------------------------------------------------------------------------------------------
@dataclass
class InstallResult:
    """What :func:`install_model` did: model folders (relative to ``$nnUNet_results``) written, and those already
    installed with the same content."""

    installed: list[str]
    unchanged: list[str]
    card: dict


def _safe_name(name: str) -> PurePosixPath:
    """The relative path of a zip member; ExportError for an absolute name, ``..``, a backslash or a drive."""
    path = PurePosixPath(name)
    if (not name or name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name)
            or ".." in path.parts or "\x00" in name):
        raise ExportError(f"unsafe member name {name!r} (absolute path, '..' or a backslash); refusing to install "
                          "anything from this zip")
    return path


def _member_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "symlink" if stat.S_ISLNK(mode) else "special file"
    return "folder" if info.is_dir() else "file"


def _read_card(zf: zipfile.ZipFile, zip_file: Path,
               members: Mapping[PurePosixPath, zipfile.ZipInfo]) -> tuple[PurePosixPath, dict]:
    """The card member's path and its content, checked (ExportError when there is none or it is not a card)."""
    cards = [p for p in members if p.name == CARD_JSON and len(p.parts) == 3]
    if not cards:
        raise ExportError(f"{zip_file} has no {CARD_JSON}: it is not an nnunet_plus model (make one with "
                          "nnunet_plus_export_model; nnU-Net's own zips install with "
                          "nnUNetv2_install_pretrained_model_from_zip)")
    if len(cards) > 1:
        raise ExportError(f"{zip_file} holds {len(cards)} model cards ({', '.join(map(str, cards))}); install one "
                          "model per zip")
    try:
        card = json.loads(zf.read(members[cards[0]]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{zip_file}: {cards[0]} is not valid JSON ({exc}); export the model again") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or not isinstance(card.get("files"), dict) \
            or not isinstance(card.get("model"), dict):
        raise ExportError(f"{zip_file}: {cards[0]} is not an nnunet_plus model card (format {CARD_FORMAT}); "
                          "export the model again with nnunet_plus_export_model")
    return cards[0], card


def _card_folders(card: Mapping, card_path: PurePosixPath, zip_file: Path) -> list[PurePosixPath]:
    """The model folders of a card (nnU-Net's first): ``DatasetXXX_Name/<folder>``, checked."""
    names = [card["model"].get("classifier_folder"), card["model"].get("nnunet_folder")]
    folders = [PurePosixPath(n) for n in names if n]
    nnunet = PurePosixPath(card["model"].get("nnunet_folder") or "")
    for folder in folders:
        if (len(folder.parts) != 2 or not _DATASET_NAME.fullmatch(folder.parts[0])
                or not _FOLDER_NAME.fullmatch(folder.parts[1]) or folder.parts[0] != nnunet.parts[0]):
            raise ExportError(f"{zip_file}: the model card names the model folder {str(folder)!r}, not "
                              "DatasetXXX_Name/<folder> of one dataset; refusing to install")
    if card_path.parent != nnunet:
        raise ExportError(f"{zip_file}: the model card {card_path} is not in the model folder {nnunet} it names")
    return folders


def _folder_state(results: Path, folder: PurePosixPath, files: Mapping[str, Mapping]) -> str:
    """``"absent"``, ``"same"`` (every file of the zip present with the same SHA-256) or ``"different"``."""
    target = results / folder
    if not target.exists() and not target.is_symlink():
        return "absent"
    for name, entry in files.items():
        if PurePosixPath(name).parts[:2] != folder.parts:
            continue
        path = results / name
        if not path.is_file() or path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            return "different"
    return "same"


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, expected: str | None, zip_file: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with zf.open(info) as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    if expected is not None and digest.hexdigest() != expected:
        raise ExportError(f"{zip_file}: {info.filename} does not match the SHA-256 in the model card (altered or "
                          "corrupt); export the model again")


def _warn_same_id(results: Path, name: str) -> None:
    """nnU-Net finds a dataset id by folder name: another ``DatasetXXX_*`` with the same id makes ``-d XXX`` fail."""
    prefix = name.split("_", 1)[0] + "_"
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        base = results if var == "nnUNet_results" else (Path(os.environ[var]) if os.environ.get(var) else None)
        if base is None or not base.is_dir():
            continue
        others = sorted(p.name for p in base.glob(prefix + "*") if p.is_dir() and p.name != name)
        if others:
            logger.warning("%s also holds %s with the same dataset id: call nnunet_plus_predict with -d %s "
                           "(the full name), not the number", var, ", ".join(others), name)


def install_model(zip_file: str | os.PathLike, *, force: bool = False) -> InstallResult:
    """Unpack a zip of :func:`export_model` into ``$nnUNet_results`` (see the module docstring).

    Raises :class:`ExportError` (one line) for a corrupt zip, a zip that is not an nnunet_plus model, an unsafe
    member, or a model folder already installed with other content (unless ``force``); nothing is written then.
    """
    zip_file = Path(zip_file)
    results = nnunet_folder("nnUNet_results")
    if not zip_file.is_file():
        raise ExportError(f"{zip_file} not found (or not a file); give the .zip written by nnunet_plus_export_model")
    try:
        with zipfile.ZipFile(zip_file) as zf:
            return _install(zf, zip_file, results, force=force)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ExportError(f"{zip_file} is not a readable zip ({type(exc).__name__}: {exc}); copy or export it "
                          "again") from None


def _install(zf: zipfile.ZipFile, zip_file: Path, results: Path, *, force: bool) -> InstallResult:
    members: dict[PurePosixPath, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        path = _safe_name(info.filename)
        kind = _member_kind(info)
        if kind in ("symlink", "special file"):
            raise ExportError(f"{zip_file}: member {info.filename!r} is a {kind}; refusing to install anything from "
                              "this zip")
        if kind == "folder":
            continue
        if path in members:
            raise ExportError(f"{zip_file}: member {info.filename!r} appears twice; refusing to install")
        members[path] = info
    card_path, card = _read_card(zf, zip_file, members)
    folders = _card_folders(card, card_path, zip_file)
    files: dict = card["files"]
    card_files = {card_path, card_path.parent / CARD_MARKDOWN}
    for path in members:
        if path not in card_files and str(path) not in files:
            raise ExportError(f"{zip_file}: member {str(path)!r} is not listed in the model card; refusing to install")
        if path.parts[:2] not in [f.parts for f in folders]:
            raise ExportError(f"{zip_file}: member {str(path)!r} is outside the model folders "
                              f"{', '.join(map(str, folders))}; refusing to install")
    missing = [name for name in files if PurePosixPath(name) not in members]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ExportError(f"{zip_file} lacks {missing[0]}{more} (listed in the model card); the zip is incomplete, "
                          "copy or export it again")

    states = {folder: _folder_state(results, folder, files) for folder in folders}
    different = [f for f, s in states.items() if s == "different"]
    if different and not force:
        raise ExportError(f"{results / different[0]} already exists and holds a different model; pass --force to "
                          "replace it (its current files are removed)")
    todo = [f for f, s in states.items() if s != "same"]
    dataset_dir = results / folders[0].parts[0]
    if not todo:
        return InstallResult(installed=[], unchanged=[str(f) for f in folders], card=card)
    _warn_same_id(results, dataset_dir.name)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    need = sum(members[p].file_size for p in members if p.parts[:2] in [f.parts for f in todo])
    free = shutil.disk_usage(dataset_dir).free
    if need > free:
        raise ExportError(f"{dataset_dir} has {free / 1e9:.2f} GB free but the model needs {need / 1e9:.2f} GB; "
                          "free some space and run again")
    staging = dataset_dir / f".nnunet_plus_install.{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for path, info in members.items():
            if path.parts[:2] not in [f.parts for f in todo]:
                continue
            target = staging.joinpath(*path.parts[1:])
            if os.path.commonpath([staging, target]) != str(staging):  # belt and braces: never outside
                raise ExportError(f"{zip_file}: member {info.filename!r} resolves outside {results}; refusing")
            _extract(zf, info, target, (files.get(str(path)) or {}).get("sha256"), zip_file)
        for folder in todo:  # classifier first, nnU-Net (with the card) last: the card marks a complete install
            _move_into_place(staging / folder.parts[1], results / folder, staging)
        nnunet = folders[-1]
        if nnunet not in todo:  # the nnU-Net folder was already there: refresh its card
            for path in card_files:
                with atomic_path(results / path) as tmp:
                    tmp.write_bytes(zf.read(members[path]))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return InstallResult(installed=[str(f) for f in todo], unchanged=[str(f) for f in folders if f not in todo],
                         card=card)


def _move_into_place(new: Path, target: Path, staging: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is moved into ``staging`` first (removed with it)."""
    if target.exists() or target.is_symlink():
        old = staging / f".replaced.{target.name}"
        os.replace(target, old)
        try:
            os.replace(new, target)
        except OSError:
            os.replace(old, target)  # put the previous model back
            raise
    else:
        os.replace(new, target)


# ---- command line -------------------------------------------------------------------------------------------------
EXPORT_PROG = "nnunet_plus_export_model"
INSTALL_PROG = "nnunet_plus_install_model"


def _fold(value: str) -> int | str:
    if value == "all" or value.isdigit():
        return int(value) if value.isdigit() else value
    raise argparse.ArgumentTypeError(f"invalid fold {value!r}: a number (0, 1, ...) or 'all'")


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=EXPORT_PROG, description="Pack a trained nnunet_plus model (nnU-Net folds, PLUS classifier with its "
        "operating point, schema, model card) into one zip for nnunet_plus_install_model.")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainerPLUS", help="trainer class (default: %(default)s)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    parser.add_argument("-f", nargs="+", type=_fold, default=None,
                        help="folds to pack (default: every fold with checkpoint_final.pth)")
    parser.add_argument("-o", required=True, help="zip file to write (atomic: written fully or not at all)")
    parser.add_argument("--no-classifier", action="store_true", help="leave the PLUS classifier out (nnU-Net alone)")
    return parser


def build_install_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=INSTALL_PROG, description="Install a zip of nnunet_plus_export_model into $nnUNet_results.")
    parser.add_argument("zip", help="the model zip")
    parser.add_argument("--force", action="store_true",
                        help="replace a model folder that is already installed with other content")
    return parser


def _run(prog: str, parser: argparse.ArgumentParser, argv, body) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # -h or a usage error: already printed
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return body(args)
    except (ExportError, PathError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def export_main(argv: Sequence[str] | None = None) -> int:
    """``nnunet_plus_export_model``."""
    def body(args) -> int:
        card = export_model(args.d, args.c, args.o, trainer=args.tr, plans=args.p, folds=args.f,
                            classifier=not args.no_classifier)
        model = card["model"]
        clf = (f"; PLUS classifier folds {', '.join(map(str, model['classifier_folds']))}"
               if model["classifier_folder"] else "; no PLUS classifier")
        print(f"wrote {args.o}: {model['nnunet_folder']} folds {', '.join(map(str, model['folds']))}{clf}; "
              f"{len(card['files'])} files + model card")
        return 0

    return _run(EXPORT_PROG, build_export_parser(), argv, body)


def install_main(argv: Sequence[str] | None = None) -> int:
    """``nnunet_plus_install_model``."""
    def body(args) -> int:
        result = install_model(args.zip, force=args.force)
        model = result.card["model"]
        if not result.installed:
            print(f"already installed: {', '.join(result.unchanged)} in {nnunet_folder('nnUNet_results')} hold this "
                  "model's files")
            return 0
        print(f"installed {', '.join(result.installed)} into {nnunet_folder('nnUNet_results')}"
              + (f" ({', '.join(result.unchanged)} already up to date)" if result.unchanged else ""))
        print(f"predict with: nnunet_plus_predict -i IN -o OUT -d {model['nnunet_folder'].split('/')[0]} "
              f"-c {model['configuration']} -tr {model['trainer']} -p {model['plans']}")
        return 0

    return _run(INSTALL_PROG, build_install_parser(), argv, body)
