"""PNG plots of evaluation summaries: patient confusion matrix, FROC curve, per-class precision / recall.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no backend switch on import). Each
function takes ``runs``: an ordered mapping run name -> summary dict (one run, or baseline and ours).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from nnunet_plus.files.atomic import atomic_path

RUN_COLOURS = ("#8c8c8c", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
FROC_X_MIN = 1 / 16


def _colours(n: int) -> tuple[str, ...]:
    """Blue for a single run; grey (baseline), blue (ours), then others for several."""
    return (RUN_COLOURS[1],) if n == 1 else tuple(RUN_COLOURS[i % len(RUN_COLOURS)] for i in range(n))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write the figure as PNG through a verified temp file + rename (:func:`nnunet_plus.files.atomic.atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def draw_confusion_matrix(ax, summary: Mapping, *, title: str = "Patient class (classify_patient)") -> None:
    """Counts of reference (rows) vs predicted (columns) patient class, colour = row-normalised fraction."""
    cm = summary["patient_level"]["confusion_matrix"]
    matrix = np.asarray(cm["matrix"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = cm["labels"]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if fraction[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)


def draw_froc(ax, runs: Mapping[str, Mapping]) -> bool:
    """FROC curves of the runs that have one, with the operating points marked; False if none has one."""
    drawn = False
    for (name, summary), colour in zip(runs.items(), _colours(len(runs))):
        fr = summary.get("froc")
        if fr is None:
            continue
        # log2 axis: operating points with fewer FPs than 1/16 per patient are drawn at its left edge
        fps = np.maximum([0.0, *fr["curve"]["fp_per_patient"]], FROC_X_MIN)
        sens = [0.0, *fr["curve"]["sensitivity"]]
        ax.step(fps, sens, where="post", color=colour,
                label=f"{name} (mean sens. {100 * fr['mean_sensitivity']:.1f}%)")
        ax.plot(fr["fp_rates"], fr["sensitivity"], "o", color=colour, markersize=4)
        drawn = True
    ax.set_xscale("log", base=2)
    ax.set_xticks([0.125, 0.25, 0.5, 1, 2, 4, 8], ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.minorticks_off()
    ax.set_xlim(FROC_X_MIN, 10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per patient")
    ax.set_ylabel("lesion sensitivity")
    ax.grid(alpha=0.3)
    ax.set_title("FROC")
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no lesion probabilities\n(no <case>.json)", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    return drawn


def draw_per_class(ax_precision, ax_recall, runs: Mapping[str, Mapping]) -> None:
    """Grouped bars: per-class (plus All and Malig) lesion precision and recall, one bar per run."""
    first = next(iter(runs.values()))
    names = [*first["per_class"], "All", "Malig"]
    width = 0.8 / len(runs)
    x = np.arange(len(names))
    for ax, key in ((ax_precision, "precision"), (ax_recall, "recall")):
        for k, ((run, summary), colour) in enumerate(zip(runs.items(), _colours(len(runs)))):
            rows = [*summary["per_class"].values(), summary["lesion_level"], summary["malignant_group"]]
            values = [np.nan if r[key] is None else 100 * r[key] for r in rows]
            bars = ax.bar(x + (k - (len(runs) - 1) / 2) * width, np.nan_to_num(values), width, color=colour,
                          label=run)
            for bar, v in zip(bars, values):  # undefined (0/0) values are marked with a dash
                ax.text(bar.get_x() + bar.get_width() / 2, (0 if np.isnan(v) else v) + 1,
                        "\u2013" if np.isnan(v) else f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylim(0, 125 if len(runs) > 1 else 112)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel(f"lesion {key} (%)")
        ax.set_title(f"Lesion {key} per type (\u2013: undefined)")
        ax.grid(axis="y", alpha=0.3)
    if len(runs) > 1:
        ax_precision.legend(fontsize=8, loc="upper left", ncol=len(runs))


def plot_confusion_matrix(summary: Mapping, path: str | os.PathLike) -> Path:
    """``path``: PNG of the patient confusion matrix of one summary."""
    fig = _figure(5.2, 4.6)
    draw_confusion_matrix(fig.add_subplot(), summary)
    return save_figure(fig, path)


def plot_froc(runs: Mapping[str, Mapping], path: str | os.PathLike) -> Path:
    """``path``: PNG of the FROC curves (a note instead when no run has lesion probabilities)."""
    fig = _figure(5.6, 4.2)
    draw_froc(fig.add_subplot(), runs)
    return save_figure(fig, path)


def plot_per_class(runs: Mapping[str, Mapping], path: str | os.PathLike) -> Path:
    """``path``: PNG of per-class lesion precision and recall bars."""
    fig = _figure(10.0, 4.0)
    ax1, ax2 = fig.subplots(1, 2)
    draw_per_class(ax1, ax2, runs)
    return save_figure(fig, path)


def plot_overview(runs: Mapping[str, Mapping], path: str | os.PathLike) -> Path:
    """``path``: one figure with per-class precision and recall, FROC and the last run's confusion matrix."""
    fig = _figure(16.0, 4.4)
    axes = fig.subplots(1, 4, width_ratios=[1.15, 1.15, 1.0, 0.95])
    draw_per_class(axes[0], axes[1], runs)
    draw_froc(axes[2], runs)
    name, last = list(runs.items())[-1]
    draw_confusion_matrix(axes[3], last, title=f"Patient class: {name}")
    return save_figure(fig, path)


def save_plots(runs: Mapping[str, Mapping], folder: str | os.PathLike) -> list[Path]:
    """Write confusion_matrix.png (of the last run), froc.png, per_class.png and overview.png into
    ``folder``; returns their paths."""
    if not runs:
        raise ValueError("save_plots needs at least one summary")
    folder = Path(folder)
    last = list(runs.values())[-1]
    return [plot_confusion_matrix(last, folder / "confusion_matrix.png"), plot_froc(runs, folder / "froc.png"),
            plot_per_class(runs, folder / "per_class.png"), plot_overview(runs, folder / "overview.png")]
