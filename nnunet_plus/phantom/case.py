"""Render one phantom case: anatomy, liver, lesions, scanner blur and correlated noise, labels and record."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from nnunet_plus.phantom.anatomy import body_shapes, paint_anatomy, sample_patient
from nnunet_plus.phantom.canvas import Canvas
from nnunet_plus.phantom.cohort import CaseSpec, patient_class
from nnunet_plus.phantom.lesions import paint_ducts, paint_lesion, place_lesions
from nnunet_plus.phantom.liver import liver_shape, paint_liver
from nnunet_plus.phantom.noise import correlated_noise
from nnunet_plus.phantom.shapes import Grid, occupancy

logger = logging.getLogger(__name__)

MALIGNANT = ("hcc", "icc", "metastasis")
#: Correlation of the CT noise (Gaussian kernel sigma, voxels, z y x).
NOISE_CORRELATION_VOX = (0.4, 0.6, 0.6)


@dataclass
class PhantomCase:
    """A rendered case. ``image`` int16 HU and ``label`` uint8, both (Z, Y, X); ``tissues`` maps tissue name
    to the boolean mask of voxels made of that tissue only (no partial volume), for checking HU statistics;
    ``record`` is the case's ground-truth entry of cases.json."""

    image: np.ndarray
    label: np.ndarray
    tissues: dict[str, np.ndarray]
    record: dict


def world_xyz(grid: Grid, origin_zyx: tuple[float, float, float], index_zyx) -> list[float]:
    """World position (x, y, z) mm, ITK order, of a voxel index (z, y, x) (identity direction)."""
    return [round(float(origin_zyx[k] + index_zyx[k] * grid.spacing[k]), 2) for k in (2, 1, 0)]


def render_case(spec: CaseSpec, *, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                origin: tuple[float, float, float], labels: dict[str, int],
                conspicuity: float = 1.0) -> PhantomCase:
    """Render ``spec`` on a grid of ``shape`` (Z, Y, X) voxels with ``spacing`` and ``origin`` (z, y, x) mm.

    ``labels`` maps "liver" and each lesion type to its label value. ``conspicuity`` (>= 1) multiplies the
    lesion-to-liver contrast and divides the CT noise: 1 (default) is realistic NCCT, larger values make
    lesions easier to learn for short CPU trainings (the demo). Deterministic in ``spec`` and ``conspicuity``.
    """
    grid = Grid(tuple(shape), tuple(float(s) for s in spacing))
    rng = spec.rng()
    patient = sample_patient(rng, grid, spec.condition)
    shapes = body_shapes(grid, patient)
    sdf = liver_shape(grid, patient, shapes, rng)
    canvas = Canvas(grid.shape, -1000.0)
    paint_anatomy(canvas, grid, patient, shapes, sdf, rng)
    liver = paint_liver(canvas, grid, patient, shapes, sdf, rng)
    lesions = place_lesions(rng, grid, liver, list(spec.lesion_types))
    if spec.lesion_types and not lesions:
        logger.warning("%s: no planned lesion fitted in the liver; the case is lesion-free", spec.case_id)
    ducts = _paint_lesions(canvas, grid, patient, shapes, liver, lesions, rng, conspicuity)

    image = canvas.image + correlated_noise(rng, grid.shape, patient.noise_sigma / conspicuity,
                                                   NOISE_CORRELATION_VOX)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    label = np.zeros(grid.shape, dtype=np.uint8)
    label[liver.mask] = labels["liver"]
    for lesion in lesions:
        label[lesion.box][lesion.mask] = labels[lesion.kind]
    record = _case_record(spec, grid, origin, patient, shapes, liver, lesions, ducts, labels, conspicuity)
    return PhantomCase(image=image, label=label, tissues=canvas.tissue_masks(), record=record)


def _paint_lesions(canvas: Canvas, grid: Grid, patient, shapes, liver, lesions: list, rng,
                   conspicuity: float) -> dict[int, int]:
    """Paint the dilated bile ducts upstream of each ICC, the lesions, then the gallbladder; return the number
    of ducts of each ICC, by lesion index."""
    ducts = {}
    hilum = np.asarray(shapes.landmarks["hilum"])
    for i, lesion in enumerate(lesions):
        if lesion.kind == "icc":
            ducts[i] = paint_ducts(canvas, grid, liver, lesion, hilum, patient.hu["bile"], rng)
    for lesion in lesions:
        paint_lesion(canvas, lesion, liver_hu=liver.mean_hu, conspicuity=conspicuity)
    if shapes.gallbladder is not None:
        canvas.paint("gallbladder", occupancy(shapes.gallbladder, grid.spacing), patient.hu["bile"])
    return ducts


def _lesion_records(grid: Grid, origin, lesions: list, ducts: dict, labels: dict[str, int]) -> list[dict]:
    """One cases.json entry per lesion: type, label, size, centre (voxel and world), dilated ducts."""
    voxel_cm3 = grid.voxel_volume_mm3 / 1000.0
    records = []
    for i, lesion in enumerate(lesions):
        index = grid.index_of(lesion.centre_mm)
        entry = {
            "lesion_id": i + 1, "type": lesion.kind, "label": labels[lesion.kind],
            "diameter_mm": round(lesion.diameter_mm, 2),
            "volume_cm3": round(int(lesion.mask.sum()) * voxel_cm3, 4), "n_voxels": int(lesion.mask.sum()),
            "centre_voxel_zyx": [round(float(v), 2) for v in index],
            "centre_world_xyz_mm": world_xyz(grid, origin, index),
        }
        if i in ducts:
            entry["dilated_ducts"] = ducts[i]
        records.append(entry)
    return records


def _hard_negative_records(grid: Grid, origin, liver) -> list[dict]:
    """The liver's lesion look-alikes with their centre as voxel index and world position."""
    out = []
    for item in liver.hard_negatives:
        index = grid.index_of(item["centre_zyx_mm"])
        rest = {k: v for k, v in item.items() if k != "centre_zyx_mm"}
        out.append({**rest, "centre_voxel_zyx": [round(float(v), 2) for v in index],
                    "centre_world_xyz_mm": world_xyz(grid, origin, index)})
    return out


def _case_record(spec: CaseSpec, grid: Grid, origin, patient, shapes, liver, lesions: list, ducts: dict,
                 labels: dict[str, int], conspicuity: float) -> dict:
    """The case's ground-truth entry of cases.json."""
    voxel_cm3 = grid.voxel_volume_mm3 / 1000.0
    cls = patient_class([lesion.kind for lesion in lesions])
    return {
        "case_id": spec.case_id, "split": spec.split, "liver_condition": spec.condition,
        "patient_class": cls,
        "patient_category": "normal" if cls == "normal" else ("malignant" if cls in MALIGNANT else "benign"),
        "n_lesions": len(lesions),
        "liver_hu": round(liver.mean_hu, 1), "spleen_hu": round(patient.hu["spleen"], 1),
        "noise_sigma_hu": round(patient.noise_sigma / conspicuity, 1),
        "liver_volume_cm3": round(int(liver.mask.sum()) * voxel_cm3, 1),
        "spleen_volume_cm3": round(int((occupancy(shapes.spleen, grid.spacing) >= 0.5).sum()) * voxel_cm3, 1),
        "ascites": patient.ascites_mm > 0, "gallbladder": patient.has_gallbladder,
        "lesions": _lesion_records(grid, origin, lesions, ducts, labels),
        "hard_negatives": _hard_negative_records(grid, origin, liver),
    }
