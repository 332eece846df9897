"""Files written by nnunet_plus_predict, all atomically (temp file in the same folder, then rename).

Per case (``<case>`` = the input case id)::

    <case>.nii.gz             final label map (liver + refined lesion types), the input's exact voxel grid
    <case>_instances.nii.gz   reported lesion ids 1..N (the ids of the JSON)
    <case>.json               lesions + patient block (docs/case_json.md); written LAST: its presence marks
                              the case as done for --continue_prediction
    <case>.npz / <case>.pkl   only with --save_probabilities: nnU-Net's format ("probabilities" (K, Z, Y, X)
                              float32 in the original geometry + the properties pickle)
    <case>_overlay.png        only with --overlays
    <case>_seg.dcm / _sr.dcm  only with --dicom-seg, for a DICOM series input (:mod:`nnunet_plus.predict.dicom_out`)

Per run: ``lesions.csv`` and ``patients.csv`` (rebuilt from every ``<case>.json`` of the folder, so parts
of a split run merge by themselves, see :func:`write_tables`), ``labels_itksnap.txt`` (ITK-SNAP label
description file), ``labels_slicer.ctbl`` (3D Slicer color table) and ``nnunet_plus_predict.json`` (the
run's settings and report). Names that would collide are refused before a run starts (:func:`check_output_names`).
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnunet_plus.files import image_io
from nnunet_plus.files.atomic import atomic_path, write_json_atomic
from nnunet_plus.files.image_io import Geometry
from nnunet_plus.predict.errors import InputError
from nnunet_plus.predict.inputs import is_dicom_source
from nnunet_plus.refine import CaseResult
from nnunet_plus.schema import LesionSchema

logger = logging.getLogger(__name__)

LESIONS_CSV = "lesions.csv"
PATIENTS_CSV = "patients.csv"
ITKSNAP_LABELS = "labels_itksnap.txt"
SLICER_COLORS = "labels_slicer.ctbl"
RUN_INFO = "nnunet_plus_predict.json"
#: Files written once per run; no case may write a file of the same name (:func:`check_output_names`).
RUN_FILES = (LESIONS_CSV, PATIENTS_CSV, ITKSNAP_LABELS, SLICER_COLORS, RUN_INFO)
SEG_SUFFIX = "_seg.dcm"
SR_SUFFIX = "_sr.dcm"

_LIVER_RGB = (221, 130, 101)
_MALIGNANT_RGB = ((230, 25, 75), (245, 130, 48), (240, 50, 230), (128, 0, 0), (255, 225, 25))
_BENIGN_RGB = ((0, 130, 200), (60, 180, 75), (70, 240, 240), (0, 128, 128), (145, 30, 180))
_OTHER_RGB = ((170, 170, 170), (128, 128, 0), (170, 110, 40), (210, 245, 60), (0, 0, 128))
_LIST_SUFFIXES = {"centroid_world": ("x", "y", "z"), "centroid_voxel": ("z", "y", "x"),
                  "bbox": ("z0", "y0", "x0", "z1", "y1", "x1")}


def case_paths(output_folder: str | Path, case: str) -> dict[str, Path]:
    """Paths of every per-case output (keys: label_map, instances, json, npz, pkl, overlay)."""
    folder = Path(output_folder)
    return {"label_map": folder / f"{case}.nii.gz", "instances": folder / f"{case}_instances.nii.gz",
            "json": folder / f"{case}.json", "npz": folder / f"{case}.npz", "pkl": folder / f"{case}.pkl",
            "overlay": folder / f"{case}_overlay.png"}


def case_outputs(*, save_probabilities: bool = False, overlays: bool = False) -> list[str]:
    """Keys of :func:`case_paths` that a run with these options writes for every case."""
    return ["label_map", "instances", "json"] + (["npz", "pkl"] if save_probabilities else []) + \
        (["overlay"] if overlays else [])


def dicom_paths(output_folder: str | Path, case: str) -> dict[str, Path]:
    """``{"seg": <case>_seg.dcm, "sr": <case>_sr.dcm}`` in ``output_folder`` (``--dicom-seg``)."""
    folder = Path(output_folder)
    return {"seg": folder / f"{case}{SEG_SUFFIX}", "sr": folder / f"{case}{SR_SUFFIX}"}


def is_case_done(output_folder: str | Path, case: str, *, save_probabilities: bool = False,
                 overlays: bool = False, dicom_seg_input: Sequence[str | Path] | None = None) -> bool:
    """True when every output this run would write for ``case`` exists (the JSON is written last).

    ``dicom_seg_input`` (with ``--dicom-seg``: the case's input files): a case whose input is a DICOM series is
    done only when its ``<case>_sr.dcm`` exists too (written after the SEG, before the JSON), so that a run
    with ``--dicom-seg`` continuing a run without it writes the DICOM outputs."""
    paths = case_paths(output_folder, case)
    if not all(paths[k].is_file() for k in case_outputs(save_probabilities=save_probabilities, overlays=overlays)):
        return False
    return dicom_seg_input is None or not is_dicom_source(dicom_seg_input) or \
        dicom_paths(output_folder, case)["sr"].is_file()


def check_output_names(cases: Sequence[str], output_folder: str | Path, *, save_probabilities: bool = False,
                       overlays: bool = False) -> None:
    """Raise :class:`InputError` naming the cases when two files of the run would share a name: a case output
    and a run-level file (case ``nnunet_plus_predict``), or outputs of two cases (``foo`` and ``foo_instances``).
    Give every case of the input, not one part's share, so that all parts of a split run agree."""
    owners: dict[str, str | None] = {name: None for name in RUN_FILES}
    keys = case_outputs(save_probabilities=save_probabilities, overlays=overlays)
    for case in sorted(cases):
        paths = case_paths(output_folder, case)
        for key in keys:
            path = paths[key]
            if path.name not in owners:
                owners[path.name] = case
                continue
            other = owners[path.name]
            if other is None:
                raise InputError(f"case {case!r} would write {path}, the name of the run's own {path.name}; "
                                 "rename that case's input file(s)")
            raise InputError(f"cases {other!r} and {case!r} would both write {path}; rename the input file(s) of "
                             "one of them")


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a (Z, Y, X) array with ``geometry`` (origin, spacing, direction copied unchanged), compressed and
    verified (:func:`nnunet_plus.files.image_io.write_image`: a failed write raises and leaves no file behind)."""
    image_io.write_image(geometry.apply(sitk.GetImageFromArray(array)), path)


def write_probabilities(probabilities: np.ndarray, properties: dict, output_folder: str | Path,
                        case: str) -> None:
    """nnU-Net's ``--save_probabilities`` files: ``<case>.npz`` (key "probabilities") + ``<case>.pkl``."""
    paths = case_paths(output_folder, case)
    with atomic_path(paths["npz"]) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probabilities=probabilities)
    with atomic_path(paths["pkl"]) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(properties, fh)


def write_case(output_folder: str | Path, result: CaseResult) -> None:
    """Label map, instance map, then the JSON (last, it marks the case as done)."""
    paths = case_paths(output_folder, result.case)
    write_image(result.label_map, result.geometry, paths["label_map"])
    n = int(result.instances.max(initial=0))
    write_image(result.instances.astype(np.uint16 if n < 2 ** 16 else np.int32, copy=False), result.geometry,
                paths["instances"])
    write_json_atomic(paths["json"], result.record)


# ---- cohort tables ---------------------------------------------------------------------------------------
def load_case_records(output_folder: str | Path) -> list[dict]:
    """Every per-case JSON of the folder (files with "case", "lesions" and "patient"), sorted by case."""
    records = []
    for path in sorted(Path(output_folder).glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("skipping %s: not readable JSON (%s)", path, exc)
            continue
        if isinstance(data, dict) and {"case", "lesions", "patient"} <= data.keys():
            records.append(data)
    return sorted(records, key=lambda r: r["case"])


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}_{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        names = _LIST_SUFFIXES.get(prefix, tuple(str(i) for i in range(len(value))))
        if len(names) != len(value):
            names = tuple(str(i) for i in range(len(value)))
        for name, v in zip(names, value):
            _flatten(f"{prefix}_{name}", v, out)
    else:
        out[prefix] = value


def build_tables(records: Sequence[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(lesions, patients)`` tables: one row per reported lesion / per case; nested keys are flattened
    (``prior_hcc``, ``plus_not_a_lesion``, ``centroid_world_x``, ``livermax_hcc``, ``probabilities_tumor``)."""
    lesion_rows, patient_rows = [], []
    for record in records:
        for lesion in record["lesions"]:
            row = {"case": record["case"]}
            _flatten("", lesion, row)
            lesion_rows.append(row)
        row = {"case": record["case"], "classifier": record.get("classifier"),
               "n_rejected": len(record.get("rejected", []))}
        _flatten("", record["patient"], row)
        patient_rows.append(row)
    lesions = pd.DataFrame(lesion_rows, columns=None if lesion_rows else ["case", "id", "class", "probability"])
    return lesions, pd.DataFrame(patient_rows, columns=None if patient_rows else ["case", "class"])


def write_tables(output_folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild ``lesions.csv`` and ``patients.csv`` from every ``<case>.json`` in ``output_folder``.

    This is how parts of a split run (``-num_parts`` / ``-part_id``) are merged: put every part's per-case
    files in one folder (or let all parts write to the same ``-o``) and call this function (every part also
    calls it when it ends, and ``nnunet_plus_predict ... --continue_prediction`` calls it when nothing is
    left to predict).
    """
    folder = Path(output_folder)
    lesions, patients = build_tables(load_case_records(folder))
    for table, name in ((lesions, LESIONS_CSV), (patients, PATIENTS_CSV)):
        with atomic_path(folder / name) as tmp:
            table.to_csv(tmp, index=False)
    return lesions, patients


# ---- label description files -------------------------------------------------------------------------------
def label_colors(schema: LesionSchema) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """label value -> (name, RGB): liver brown, malignant lesions warm, benign lesions cool, others grey."""
    colors = {}
    malignant, benign, other = iter(_MALIGNANT_RGB * 4), iter(_BENIGN_RGB * 4), iter(_OTHER_RGB * 52)
    for name, value in sorted(schema.labels.items(), key=lambda kv: kv[1]):
        if value == 0:
            rgb = (0, 0, 0)
        elif name in schema.liver:
            rgb = _LIVER_RGB
        elif name in schema.malignant:
            rgb = next(malignant)
        elif name in schema.benign:
            rgb = next(benign)
        else:
            rgb = next(other)
        colors[int(value)] = (name, rgb)
    return colors


def write_label_descriptions(output_folder: str | Path, schema: LesionSchema) -> None:
    """``labels_itksnap.txt`` (ITK-SNAP: Segmentation > Import Label Descriptions) and ``labels_slicer.ctbl``
    (3D Slicer: load as a color table, then pick it in the segmentation's display node)."""
    folder = Path(output_folder)
    colors = label_colors(schema)
    snap = ["################################################",
            "# ITK-SnAP Label Description File (nnunet_plus)",
            "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
            "################################################"]
    slicer = [f"# Color table file {SLICER_COLORS}", f"# {len(colors)} values"]
    for value, (name, (r, g, b)) in colors.items():
        alpha, visible = (0, 0) if value == 0 else (1, 1)
        label = "Clear Label" if value == 0 else name
        snap.append(f"{value:5d} {r:5d} {g:4d} {b:4d} {alpha:8.2f} {visible:2d} {visible:2d}    \"{label}\"")
        slicer.append(f"{value} {name.replace(' ', '_')} {r} {g} {b} {255 * alpha}")
    for lines, name in ((snap, ITKSNAP_LABELS), (slicer, SLICER_COLORS)):
        with atomic_path(folder / name) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
