"""``--overlays``: one PNG per case, each reported lesion on its own axial slice with contour, type, probability.

Panels are the axial slice (numpy axis 0) where the lesion has its largest area, the CT shown in an
abdominal window (W 400, L 50 HU; rendered with matplotlib's Agg canvas directly, no pyplot state, so it is
safe in worker threads), the lesion contour in its label colour, the liver contour in brown.
A case without lesions gets one panel (the slice with the most liver) titled "no lesion". Slices thinner than
2 voxels (a 1 x 1 x 1 image, a single row) are outlined too (:func:`_contour`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.predict.outputs import label_colors
from nnunet_plus.schema import LesionSchema

#: at most this many panels (largest lesions first); the title says how many were left out
MAX_PANELS = 12
CT_WINDOW = (-150.0, 250.0)


def _largest_slice(mask: np.ndarray) -> int:
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    return int(np.argmax(areas))


def _contour(ax, mask: np.ndarray, color, linewidth: float) -> None:
    """Outline the 2D ``mask`` in ``color``. matplotlib's contour needs at least 2 x 2 values: a thinner slice
    (an image of 1 x 1 x 1 voxels, a single row) is outlined on a copy padded with one background voxel on each
    side, drawn at the same voxel positions, and the panel keeps the image's extent."""
    if min(mask.shape) >= 2:
        ax.contour(mask, levels=[0.5], colors=[color], linewidths=linewidth)
        return
    limits = ax.get_xlim(), ax.get_ylim()
    ax.contour(np.arange(-1, mask.shape[1] + 1), np.arange(-1, mask.shape[0] + 1), np.pad(mask, 1).astype(np.uint8),
               levels=[0.5], colors=[color], linewidths=linewidth)
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])


def _panel_title(ax, text: str) -> None:
    ax.text(0.5, 1.01, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=9)


def write_overlay(path: str | Path, image: np.ndarray, label_map: np.ndarray, instances: np.ndarray,
                  lesions: Sequence[dict], schema: LesionSchema, *, title: str = "",
                  aspect: float = 1.0) -> None:
    """Render the overlay PNG.

    image : (C, Z, Y, X) or (Z, Y, X) CT in HU (channel 0 is shown); label_map, instances : (Z, Y, X);
    lesions : the JSON lesion records (``id``, ``class``, ``probability``); aspect : y/x pixel spacing ratio.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ct = image[0] if image.ndim == 4 else image
    colors = {name: np.asarray(rgb) / 255.0 for name, rgb in label_colors(schema).values()}
    liver = np.isin(label_map, schema.liver_region_labels)
    ordered = sorted(lesions, key=lambda r: -float(r.get("volume_mm3", 0.0)))
    shown = ordered[:MAX_PANELS]
    panels = [(int(r["id"]), r) for r in shown] or [(0, None)]
    cols = min(4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows + 0.4))
    FigureCanvasAgg(fig)
    top = 1.0 - 0.4 / (3.4 * rows + 0.4)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top - 0.02, wspace=0.04, hspace=0.12)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()  # no ticks: titles are plain text, no tight_layout (both cost seconds per figure)
    for ax, (lesion_id, rec) in zip(axes.ravel(), panels):
        mask = instances == lesion_id if rec is not None else liver
        z = _largest_slice(mask) if mask.any() else ct.shape[0] // 2
        ax.imshow(ct[z], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=aspect,
                  interpolation="nearest")
        if liver[z].any():
            _contour(ax, liver[z], colors[schema.liver[0]], 0.6)
        if rec is None:
            _panel_title(ax, f"no lesion (slice {z})")
            continue
        _contour(ax, mask[z], colors.get(rec["class"], (1.0, 1.0, 0.0)), 1.2)
        _panel_title(ax, f"#{lesion_id} {rec['class']} p={float(rec['probability']):.2f} (z={z})")
    left_out = len(ordered) - len(shown)
    fig.text(0.5, 1.0 - 0.1 / (3.4 * rows + 0.4), title + (f" (+{left_out} smaller lesions not shown)" if left_out
                                                        else ""), ha="center", va="top", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
