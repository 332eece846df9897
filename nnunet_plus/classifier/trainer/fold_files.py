"""The files of a classifier fold folder (``fold_k``) that scripts read instead of the training log.

==================  =========================================================================================
``history.json``    ``{"fold", "epochs", "best", "history": [per-epoch record, ...], "done"}``, rewritten
                    (atomically) when a run starts, after every epoch and once more when the fold is complete:
                    ``"done": true`` is the last write of a run that trained, fitted the operating points and
                    wrote ``validation/``; every other write says ``false``. A record holds ``epoch``, ``lr``,
                    ``train_<loss>`` / ``val_<loss>`` (``total``, ``lesion``, ``patient``, ``screening``,
                    ``distill``), ``lesion_f1``, ``malignant_f1``, ``benign_f1``, ``patient_f1`` (None when
                    undefined), ``lesion_counts`` (``tp``, ``fl``, ``fp``, ``fn``) and ``seconds``.
``skipped.json``    ``{"reason": ...}``: written by ``nnunet_plus_train_classifier`` when the fold's training
                    cases hold no lesion candidate (:class:`NoCandidateError`; the command exits 1), removed when
                    the command trains the fold again.
==================  =========================================================================================

This module imports neither torch nor numpy: the demo and its report read these files cheaply.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_plus.files.atomic import write_json_atomic

__all__ = ["BEST", "FINAL", "HISTORY_FILE", "LATEST", "NoCandidateError", "SKIPPED_FILE", "clear_skipped",
           "fold_complete", "read_history", "read_skipped", "write_history", "write_skipped"]

LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"
HISTORY_FILE = "history.json"
SKIPPED_FILE = "skipped.json"


class NoCandidateError(ValueError):
    """The fold's training cases hold no lesion candidate, even at nnU-Net's highest sensitivity: the classifier
    has nothing to learn (stage one must detect lesions first)."""


def _plain(value):
    """``value`` as standard JSON: non-finite floats -> None, numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_history(fold_folder: str | os.PathLike, *, fold: int, epochs: int, best: Mapping,
                  history: Sequence[Mapping], done: bool = False) -> Path:
    """Write ``fold_folder/history.json`` (atomic); see the module docstring for its fields."""
    path = Path(fold_folder) / HISTORY_FILE
    write_json_atomic(path, {"fold": int(fold), "epochs": int(epochs), "best": _plain(best),
                             "history": _plain(list(history)), "done": bool(done)})
    return path


def read_history(fold_folder: str | os.PathLike) -> dict | None:
    """The fold's ``history.json`` as a dict, or None when it does not exist."""
    path = Path(fold_folder) / HISTORY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def fold_complete(fold_folder: str | os.PathLike) -> bool:
    """The fold's last run finished everything (``history.json`` says ``"done": true``)."""
    history = read_history(fold_folder)
    return bool(history and history.get("done") is True)


def write_skipped(fold_folder: str | os.PathLike, reason: str) -> Path:
    """Record why the fold was not trained: ``fold_folder/skipped.json`` = ``{"reason": reason}`` (atomic)."""
    path = Path(fold_folder) / SKIPPED_FILE
    write_json_atomic(path, {"reason": str(reason)})
    return path


def read_skipped(fold_folder: str | os.PathLike) -> str | None:
    """The reason in the fold's ``skipped.json``, or None when the fold was not skipped."""
    path = Path(fold_folder) / SKIPPED_FILE
    return str(json.loads(path.read_text(encoding="utf-8"))["reason"]) if path.is_file() else None


def clear_skipped(fold_folder: str | os.PathLike) -> None:
    """Remove the fold's ``skipped.json`` (before the fold is trained again)."""
    (Path(fold_folder) / SKIPPED_FILE).unlink(missing_ok=True)
