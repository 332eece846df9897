"""A running training's checkpoint: what it holds beyond the weights, and resuming from one.

The payload (format: :mod:`nnunet_plus.classifier.checkpoint`) holds the network, the optimizer, scheduler and
GradScaler states, the history, the best epoch and the Python / numpy / torch (/ CUDA) random states as plain
values (loadable with ``weights_only=True``), so that a run resumed from ``checkpoint_latest.pth`` continues
exactly as the uninterrupted run would.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from nnunet_plus.classifier.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from nnunet_plus.classifier.trainer.fold_trainer import PLUSClassifierTrainer

__all__ = ["checkpoint_payload", "restore_training_state", "rng_state", "save_training_state", "set_rng_state"]


def rng_state() -> dict:
    """Python, numpy and torch (and CUDA) random states as plain values (``weights_only`` loadable)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore the random states of :func:`rng_state`."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_payload(trainer: PLUSClassifierTrainer) -> dict:
    """The checkpoint of ``trainer`` now (an initialised trainer; the random states are read here)."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": trainer.model.to_config(), "state_dict": trainer.model.state_dict(),
        "dataset_name": trainer.dataset_name, "labels": dict(trainer.schema.labels),
        "schema": trainer.schema.to_block(),
        "bank": {"settings": trainer.metadata["settings"], "target_spacing": trainer.metadata["target_spacing"],
                 "channel_names": trainer.metadata["channel_names"]},
        "fold": trainer.fold, "epoch": trainer.epoch, "trainer": trainer.settings.to_json(),
        "train_cases": trainer.train_cases, "val_cases": trainer.val_cases,
        "class_weights": trainer.class_weights, "class_counts": trainer.class_counts.tolist(),
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(), "rng": rng_state(), "history": trainer.history, "best": trainer.best,
    }


def save_training_state(trainer: PLUSClassifierTrainer, name: str) -> Path:
    """Write ``trainer``'s checkpoint as ``name`` into its output folder (atomic)."""
    return save_checkpoint(checkpoint_payload(trainer), trainer.output_folder / name)


def _problems(checkpoint: Mapping, trainer: PLUSClassifierTrainer) -> list[str]:
    """Why ``checkpoint`` is not a state of ``trainer``'s fold, settings, bank and split (empty: it is)."""
    problems = []
    if checkpoint["dataset_name"] != trainer.dataset_name or int(checkpoint["fold"]) != trainer.fold:
        problems.append(f"it is {checkpoint['dataset_name']} fold {checkpoint['fold']}")
    trained = dict(checkpoint.get("trainer") or {})
    changed = [f"{k}={trained.get(k)!r}" for k, v in trainer.settings.to_json().items() if trained.get(k) != v]
    if changed:
        problems.append(f"it was trained with other settings ({', '.join(changed)})")
    if checkpoint["bank"]["settings"] != trainer.metadata["settings"] or \
            list(checkpoint["train_cases"]) != trainer.train_cases or \
            list(checkpoint["val_cases"]) != trainer.val_cases:
        problems.append("the candidate bank or the split changed since")
    return problems


def restore_training_state(trainer: PLUSClassifierTrainer, path: str | os.PathLike) -> None:
    """Restore the full training state of a checkpoint of ``trainer``'s fold into it (an initialised trainer);
    ValueError when the checkpoint belongs to another fold, settings, bank or split."""
    checkpoint = load_checkpoint(path)  # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest
    problems = _problems(checkpoint, trainer)
    if problems:
        raise ValueError(f"cannot continue from {path}: {'; '.join(problems)}; rerun with the original options "
                         "or start again without --c")
    trainer.model.load_state_dict(checkpoint["state_dict"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    trainer.history = list(checkpoint["history"])
    trainer.best = dict(checkpoint["best"])
    trainer.epoch = int(checkpoint["epoch"])
    set_rng_state(checkpoint["rng"])
