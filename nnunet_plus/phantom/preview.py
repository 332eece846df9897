"""``--preview``: a PNG of mid-lesion axial slices with label contours for a few cases of a phantom dataset."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib.style
import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

#: Liver window (level, width) in HU: narrower than the usual abdominal W400 so that NCCT lesions show.
WINDOW = (50.0, 250.0)
COLOURS = {"liver": "#4cd964", "hcc": "#ff3b30", "icc": "#ff9500", "metastasis": "#ffcc00",
           "hemangioma": "#5ac8fa", "calcification": "#ffffff", "cyst": "#af52de"}
#: Patient classes shown first, then healthy subjects by liver condition.
SHOWCASE = ("hcc", "hemangioma", "metastasis", "icc", "cyst", "calcification")


def _pick_cases(records: list[dict], n_cases: int) -> list[dict]:
    """One case per patient class (HCC, hemangioma, ...), then healthy fatty / cirrhotic livers, then the rest."""
    chosen: list[dict] = []
    wanted = [("class", k) for k in SHOWCASE] + [("healthy", "fatty"), ("healthy", "cirrhotic")]
    for kind, value in wanted:
        for r in records:
            hit = (r["patient_class"] == value) if kind == "class" else \
                (r["patient_class"] == "normal" and r["liver_condition"] == value)
            if hit and r not in chosen:
                chosen.append(r)
                break
    chosen += [r for r in records if r not in chosen]
    return chosen[:n_cases]


def _slice_of(record: dict, label: np.ndarray) -> tuple[int, str]:
    """Axial slice through the largest lesion (or a fat-sparing area, or the liver's widest slice) + caption."""
    if record["lesions"]:
        big = max(record["lesions"], key=lambda les: les["volume_cm3"])
        more = len(record["lesions"]) - 1
        extra = f" (+{more} more)" if more else ""
        return int(round(big["centre_voxel_zyx"][0])), f"{big['type']} {big['diameter_mm']:.0f} mm{extra}"
    if record["hard_negatives"]:
        spare = record["hard_negatives"][0]
        return int(round(spare["centre_voxel_zyx"][0])), "healthy; focal fat sparing (not a lesion)"
    return int(np.argmax((label > 0).sum(axis=(1, 2)))), "healthy"


def write_preview(dataset_folder: str | os.PathLike, png_path: str | os.PathLike, *, n_cases: int = 8) -> Path:
    """Draw up to ``n_cases`` cases of a phantom dataset (axial slice, abdominal window, label contours).

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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _draw(folder: Path, meta: dict, chosen: list[dict]) -> Figure:
    """The preview figure (matplotlib's object API: no pyplot, no global backend change)."""
    labels = meta["labels"]
    cols = min(4, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    fig = Figure(figsize=(3.4 * cols, 3.7 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    level, width = WINDOW
    for ax in axes.ravel():
        ax.axis("off")
    for ax, record in zip(axes.ravel(), chosen):
        image_itk = sitk.ReadImage(str(folder / record["image"]))
        image = sitk.GetArrayFromImage(image_itk)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / record["label"])))
        z, caption = _slice_of(record, label)
        z = int(np.clip(z, 0, image.shape[0] - 1))
        sx, sy = image_itk.GetSpacing()[:2]
        ax.imshow(image[z], cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=sy / sx,
                  interpolation="nearest")
        for name, value in labels.items():
            if name == "background":
                continue
            mask = (label[z] >= 1) if name == "liver" else (label[z] == value)
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=COLOURS.get(name, "#ffffff"),
                           linewidths=0.7 if name == "liver" else 1.1)
        ax.set_title(f"{record['case_id']} · {record['liver_condition']} liver\n{caption}", fontsize=9)
    handles = [Line2D([], [], color=COLOURS.get(n, "#ffffff"), label=n) for n in labels if n != "background"]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{meta['dataset']}: axial slices, window L{level:g}/W{width:g} HU", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig
