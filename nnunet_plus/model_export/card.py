"""The model card of an exported model: ``model_card.json`` (dataset, labels, schema, training cohort, folds,
validation figures, operating point, software versions, intended use, SHA-256 of every packed file) and
``MODEL_CARD.md``, the same for people."""
from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_plus.model_export.layout import CARD_FORMAT, CARD_JSON, fold_name, sha256

__all__ = ["INTENDED_USE", "SYNTHETIC_NOTE", "model_card", "model_card_markdown"]

logger = logging.getLogger(__name__)

INTENDED_USE = "research only, not for clinical use"
SYNTHETIC_NOTE = "trained on synthetic data only (nnunet_plus phantom generator); not validated on patient CT"


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
        data = _read_json(folder / fold_name(fold) / "validation" / "plus_summary.json")
        if data is None:
            continue
        tier = _dig(data, "tiers", "confident")
        if tier is None:
            first = next(iter((data.get("sensitivities") or {}).values()), None)
            tier = first
        out[fold_name(fold)] = _figures(tier)
    return out


def _classifier_figures(folder: Path | None, folds: Sequence[int | str]) -> dict:
    from nnunet_plus.classifier.fold_validation import NNUNET_KEY, PLUS_KEY

    out = {}
    for fold in folds if folder is not None else ():
        data = _read_json(folder / fold_name(fold) / "validation" / "summary.json")
        if data is not None:
            out[fold_name(fold)] = {"nnunet_alone": _figures(data.get(NNUNET_KEY)),
                                     "nnunet_plus": _figures(data.get(PLUS_KEY))}
    return out


def _operating_point(folder: Path | None, folds: Sequence[int | str]) -> dict | None:
    """The rule ``nnunet_plus_predict`` applies with these folds (pooled, else a single fold's own, else none)."""
    if folder is None:
        return None
    candidates = [folder / "operating_point.json"]
    if len(folds) == 1:
        candidates.append(folder / fold_name(folds[0]) / "operating_point.json")
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
        "files": {Path(f).relative_to(results).as_posix(): {"sha256": sha256(Path(f)), "bytes": Path(f).stat().st_size}
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

