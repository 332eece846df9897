"""``progress.png`` of a classifier training: losses and validation F1 per epoch (matplotlib Agg canvas)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_plus.evaluation.plots import save_figure

__all__ = ["plot_progress"]

_LOSSES = (("train_total", "train total", "-"), ("val_total", "validation total", "-"),
           ("train_lesion", "train L_L (focal)", ":"), ("train_patient", "train L_P", ":"),
           ("train_screening", "train L_S", ":"))
_METRICS = (("lesion_f1", "lesion F1"), ("malignant_f1", "patient malignant F1"),
            ("benign_f1", "patient benign F1"), ("patient_f1", "patient F1 (mean)"))


def _values(history: Sequence[Mapping], key: str) -> list[float]:
    return [float("nan") if h.get(key) is None else float(h[key]) for h in history]


def plot_progress(history: Sequence[Mapping], path: str | os.PathLike, *, title: str = "",
                  best_epoch: int | None = None, baseline_lesion_f1: float | None = None) -> Path:
    """Draw the per-epoch ``history`` records (keys ``epoch``, the loss and metric names above, ``lr``) into
    ``path`` (PNG, written through a temp file + rename); ``baseline_lesion_f1`` (nnU-Net alone) is drawn as a
    dotted line."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(12.0, 4.2), dpi=100, layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    epochs = [int(h["epoch"]) for h in history]
    for key, label, style in _LOSSES:
        ax_loss.plot(epochs, _values(history, key), style, label=label, marker="." if len(epochs) < 3 else None)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    lr = ax_loss.twinx()
    lr.plot(epochs, _values(history, "lr"), color="grey", alpha=0.4, linewidth=1)
    lr.set_ylabel("learning rate", color="grey")
    for key, label in _METRICS:
        ax_metric.plot(epochs, _values(history, key), label=label, marker="." if len(epochs) < 3 else None)
    if baseline_lesion_f1 is not None:
        ax_metric.axhline(baseline_lesion_f1, color="C0", linestyle=":", label="lesion F1, nnU-Net alone")
    if best_epoch is not None:
        ax_metric.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
    ax_metric.set_ylim(-0.02, 1.02)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation (nnU-Net + PLUS)")
    ax_metric.legend(fontsize=8)
    ax_metric.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
