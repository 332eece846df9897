"""``--preview``: a PNG of mid-lesion axial slices with label contours for a few cases of a phantom dataset."""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.style
import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.files.image_io import read_image

#: (level, width) HU of the whole-slice panel (abdominal window) and of the zoomed panel (liver window,
#: where the subtle NCCT lesions show).
ABDOMEN_WINDOW = (40.0, 350.0)
LIVER_WINDOW = (45.0, 150.0)
ZOOM_MM = 90.0
COLOURS = {"liver": "#4cd964", "hcc": "#ff3b30", "icc": "#ff9500", "metastasis": "#f5f500",
           "hemangioma": "#5ac8fa", "calcification": "#ffffff", "cyst": "#af52de"}
#: Patient classes shown first, then healthy subjects by liver condition.
SHOWCASE = ("hcc", "hemangioma", "metastasis", "icc", "cyst", "calcification")


def _pick_cases(records: list[dict], n_cases: int) -> list[dict]:
    """One case per patient class (HCC, hemangioma, ...), then healthy fatty / cirrhotic livers, then the rest."""
    chosen: list[dict] = []
    wanted = [("class", k) for k in SHOWCASE] + [("healthy", "fatty"), ("healthy", "cirrhotic")]
    # among healthy fatty livers, prefer one with focal fat sparing (the hard negative worth showing)
    ordered = sorted(records, key=lambda r: not r["hard_negatives"])
    for kind, value in wanted:
        for r in ordered:
            hit = (r["patient_class"] == value) if kind == "class" else \
                (r["patient_class"] == "normal" and r["liver_condition"] == value)
            if hit and r not in chosen:
                chosen.append(r)
                break
    chosen += [r for r in records if r not in chosen]
    return chosen[:n_cases]


def _focus(record: dict, label: np.ndarray) -> tuple[tuple[float, float, float], str]:
    """Voxel (z, y, x) to show: the largest lesion of the patient's class (its highest-priority type), else a
    fat-sparing area, else the liver's widest slice."""
    if record["lesions"]:
        main = [les for les in record["lesions"] if les["type"] == record["patient_class"]] or record["lesions"]
        big = max(main, key=lambda les: les["volume_cm3"])
        more = len(record["lesions"]) - 1
        extra = f" (+{more} more)" if more else ""
        return tuple(big["centre_voxel_zyx"]), f"{big['type']} {big['diameter_mm']:.0f} mm{extra}"
    if record["hard_negatives"]:
        return tuple(record["hard_negatives"][0]["centre_voxel_zyx"]), "healthy, focal fat sparing (no label)"
    z = int(np.argmax((label > 0).sum(axis=(1, 2))))
    y, x = np.argwhere(label[z] > 0).mean(axis=0)
    return (z, y, x), "healthy"


def write_preview(dataset_folder: str | os.PathLike, png_path: str | os.PathLike, *, n_cases: int = 8) -> Path:
    """Draw up to ``n_cases`` cases of a phantom dataset: axial slice through the largest lesion with label
    contours, and a zoom on the lesion in a liver window.

    Reads ``cases.json`` and the NIfTI files of ``dataset_folder``; writes ``png_path`` atomically.
    """
    folder = Path(dataset_folder)
    cases_json = folder / "cases.json"
    if not cases_json.is_file():
        raise ValueError(f"{cases_json} not found; point to a dataset written by nnunet_plus_make_phantom")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    meta = json.loads(cases_json.read_text())
    chosen = _pick_cases(meta["cases"], n_cases)
    with matplotlib.style.context("dark_background"):
        fig = _draw(folder, meta, chosen)
    out = Path(png_path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out


def _draw(folder: Path, meta: dict, chosen: list[dict]) -> Figure:
    """Two panels per case: the axial slice with label contours, and a zoom on the lesion in a liver window
    (matplotlib's object API: no pyplot, no global backend change)."""
    labels = meta["labels"]
    per_row = 2
    rows = int(np.ceil(len(chosen) / per_row))
    fig = Figure(figsize=(3.0 * 2 * per_row, 3.25 * rows + 0.6))
    axes = fig.subplots(rows, 2 * per_row, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, record in enumerate(chosen):
        ax_full, ax_zoom = axes[k // per_row, 2 * (k % per_row)], axes[k // per_row, 2 * (k % per_row) + 1]
        image_itk = read_image(folder / record["image"])
        image = sitk.GetArrayFromImage(image_itk)
        label = sitk.GetArrayFromImage(read_image(folder / record["label"]))
        (z, y, x), caption = _focus(record, label)
        z = int(np.clip(round(z), 0, image.shape[0] - 1))
        sx, sy = image_itk.GetSpacing()[:2]
        level, width = ABDOMEN_WINDOW
        ax_full.imshow(image[z], cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=sy / sx,
                       interpolation="nearest")
        for name, value in labels.items():
            mask = (label[z] >= 1) if name == "liver" else (label[z] == value)
            if name != "background" and mask.any():
                ax_full.contour(mask.astype(float), levels=[0.5], colors=COLOURS.get(name, "#ffffff"),
                                linewidths=0.7 if name == "liver" else 1.1)
        ax_full.set_title(f"{record['case_id']}: {record['liver_condition']} liver\n{caption}", fontsize=9)
        half_y, half_x = ZOOM_MM / 2 / sy, ZOOM_MM / 2 / sx
        y0, x0 = int(np.clip(y - half_y, 0, max(image.shape[1] - 2 * half_y, 0))), \
            int(np.clip(x - half_x, 0, max(image.shape[2] - 2 * half_x, 0)))
        crop = image[z, y0:y0 + int(2 * half_y), x0:x0 + int(2 * half_x)]
        level, width = LIVER_WINDOW
        ax_zoom.imshow(crop, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=sy / sx,
                       interpolation="nearest")
        ax_zoom.set_title(f"zoom {ZOOM_MM:g} mm, L{level:g}/W{width:g}", fontsize=8)
        ax_full.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), crop.shape[1], crop.shape[0], fill=False,
                                    edgecolor="#aaaaaa", linewidth=0.6, linestyle=":"))
    handles = [Line2D([], [], color=COLOURS.get(n, "#ffffff"), label=n) for n in labels if n != "background"]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    level, width = ABDOMEN_WINDOW
    fig.suptitle(f"{meta['dataset']}: axial slices (L{level:g}/W{width:g} HU) with label contours, "
                 "and lesion zooms without contours", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return fig
