"""The PLUS classifier checkpoint: what it holds, atomic saving, validated loading, compatibility checks.

A checkpoint (``fold_k/checkpoint_{latest,best,final}.pth``, ``torch.save`` of a dict of tensors and plain
Python values, loadable with ``weights_only=True``) holds:

==================  ==================================================================================
key                 meaning
==================  ==================================================================================
format, version     ``"nnunet_plus.plus_classifier"``, 2
model_config        :meth:`PLUSClassifier.to_config` (rebuild with ``from_config`` + ``load_state_dict``)
state_dict          the network weights
dataset_name        ``DatasetXXX_Name`` the classifier was trained on
labels, schema      the dataset's labels and lesion schema block (class order = ``schema["lesions"]``)
bank                the candidate bank's ``settings``, ``target_spacing``, ``channel_names`` (how inference
                    must build the crops)
fold, epoch         the classifier fold; number of finished epochs
trainer             the trainer settings (:class:`~nnunet_plus.classifier.trainer.settings.TrainerSettings`)
class_weights       the focal-loss class weights ``z_c``
optimizer, scheduler, scaler   their ``state_dict()`` (resume)
rng                 python / numpy / torch (/ cuda) random states at the end of ``epoch`` (resume)
history             per-epoch losses and validation metrics (progress.png, resume)
best                ``{"epoch", "metric", "value"}`` of checkpoint_best
==================  ==================================================================================
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Mapping

import torch

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.schema import LesionSchema

CHECKPOINT_FORMAT = "nnunet_plus.plus_classifier"
#: 2: the guarded network (log prior + correction, candidate features); 3: + the linear description term
CHECKPOINT_VERSION = 3
REQUIRED_KEYS = ("format", "version", "model_config", "state_dict", "dataset_name", "labels", "schema", "bank",
                 "fold", "epoch")

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "check_compatible", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(payload: Mapping, path: str | os.PathLike) -> Path:
    """``torch.save`` ``payload`` to ``path`` through a temp file + rename
    (:func:`nnunet_plus.files.atomic.atomic_path`: never a half-written file)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(dict(payload), fh)
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a classifier checkpoint; FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("[!.]*.pth")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"{path} not found; checkpoints in {path.parent}: {present or 'none'} (train the "
                                "fold with nnunet_plus_train_classifier, or resume it with --c)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {reason})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a PLUS classifier checkpoint (an nnU-Net checkpoint? the classifier lives "
                         "in PLUSClassifier__<trainer>__<plans>__<configuration>/fold_k)")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {checkpoint.get('version')}, this nnunet_plus reads "
                         f"version {CHECKPOINT_VERSION}; retrain the classifier")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} lacks {missing}; retrain the classifier")
    return checkpoint


def _dataset_number(name: object) -> int | None:
    """``990``, ``"990"``, ``"Dataset990_X"`` -> 990; anything else -> None."""
    if isinstance(name, int):
        return name
    text = str(name)
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"Dataset(\d+)_.*", text)
    return int(match.group(1)) if match else None


def check_compatible(checkpoint: Mapping, schema: LesionSchema, *, path: str | os.PathLike,
                     dataset: object = None) -> None:
    """ValueError when ``checkpoint`` was trained for another lesion schema or dataset.

    The labels, the lesion classes (and their order) and the malignant / benign groups must agree with
    ``schema``; ``dataset`` (an id or ``DatasetXXX_Name``; default ``schema.dataset_id``) must have the
    checkpoint's dataset id when both are known.
    """
    trained = checkpoint["schema"]
    ours = schema.to_block()
    labels = {str(k): int(v) for k, v in checkpoint["labels"].items()}
    differences = [key for key in ("lesions", "malignant", "benign") if list(trained[key]) != list(ours[key])]
    if labels != {str(k): int(v) for k, v in schema.labels.items()}:
        differences.insert(0, "labels")
    if differences:
        raise ValueError(f"{path} was trained for another lesion schema ({', '.join(differences)} differ: "
                         f"trained lesions {list(trained['lesions'])} with labels {labels}, this dataset has "
                         f"{list(ours['lesions'])} with labels {dict(schema.labels)}); retrain the classifier "
                         "for this dataset")
    dataset = schema.dataset_id if dataset is None else dataset
    want, have = _dataset_number(dataset), _dataset_number(checkpoint["dataset_name"])
    if want is not None and have is not None and want != have:
        raise ValueError(f"{path} was trained on {checkpoint['dataset_name']}, not on dataset {dataset}; use the "
                         "classifier of this dataset's model")
