"""One case from softmax to lesions and patient diagnosis, driven by the lesion schema.

multi-sensitivity label maps (liver voxels outside the largest liver region cleared, unless the schema says
otherwise) -> seg2det at the base and the highest sensitivity -> the candidates of the
second stage -> at most ``schema.max_suspicious_per_case`` suspicious candidates -> LiverMax on the base label
map -> patient probabilities and classifyPatient on the base detections (nnU-Net's own segmentation, the
cascaded paper's "Base" model).

The candidates (:func:`merge_candidates`) are nnU-Net's own lesions first: every lesion of the base (f = 1)
map is a ``"confident"`` candidate with its own voxels, class and prior (the cascaded paper's Det_same,
but not grown to its f = 4 extent); then every lesion of the highest-sensitivity map that touches no base
lesion is a ``"suspicious"`` candidate (Det_diff). So a second stage that keeps the confident candidates with
their class and drops the suspicious ones reproduces nnU-Net alone voxel for voxel (the guard of
:mod:`nnunet_plus.classifier.operating_point`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnunet_plus.postprocessing.classify import classify_patient
from nnunet_plus.postprocessing.liver_component import keep_largest_liver_component
from nnunet_plus.postprocessing.livermax import liver_max, patient_probabilities
from nnunet_plus.postprocessing.match import assign_tiers
from nnunet_plus.postprocessing.multi_sensitivity import is_torch_tensor, multi_sensitivity_labels
from nnunet_plus.postprocessing.seg2det import Detections, seg2det
from nnunet_plus.schema import LesionSchema

__all__ = ["CaseAnalysis", "analyse_case", "keep_top_suspicious", "merge_candidates"]


@dataclass
class CaseAnalysis:
    """Everything nnU-Net's softmax says about one case.

    Attributes
    ----------
    label_maps : (k, Z, Y, X) uint8, one label map per schema sensitivity (ascending).
    detections : the candidates (:func:`merge_candidates`): the base lesions (``"tier": "confident"``) then
        the highest-sensitivity lesions touching none of them (``"suspicious"``), ids 1..N in that order.
    base_detections : lesions at the first sensitivity.
    livermax : lesion label -> LiverMax probability (max softmax over the base map's liver region).
    patient : ``{"tumor", "malignant", "benign"}`` probabilities derived from ``livermax``.
    patient_class : classifyPatient on ``base_detections`` (0 = normal).
    sensitivities : the factors of ``label_maps``.
    spacing : voxel size (z, y, x) in mm.
    """

    label_maps: np.ndarray
    detections: Detections
    base_detections: Detections
    livermax: dict[int, float]
    patient: dict[str, float]
    patient_class: int
    sensitivities: tuple[float, ...]
    spacing: tuple[float, float, float]

    def to_json(self, schema: LesionSchema) -> dict:
        """JSON-able summary with lesion names (the per-case result format, without ``"case"``).

        ``"lesions"`` are the candidate records (with ``"tier"``), each with ``"class"`` (its name),
        ``"probability"`` (the prior of its own class) and ``"prior"`` as ``{name: probability}``.
        """
        names = list(schema.lesions)
        lesion_labels = list(schema.lesion_labels)
        lesions = []
        for record in self.detections.lesions:
            prior = record.get("prior")
            own = lesion_labels.index(int(record["label"]))
            lesions.append({
                **record,
                "class": names[own],
                "probability": None if prior is None else float(prior[own]),
                "prior": None if prior is None else {n: float(p) for n, p in zip(names, prior)},
            })
        livermax = {schema.label_name(label): float(p) for label, p in self.livermax.items()}
        return {
            "spacing": [float(s) for s in self.spacing],
            "sensitivities": [float(f) for f in self.sensitivities],
            "lesions": lesions,
            "patient": {
                "class": "normal" if self.patient_class == 0 else schema.label_name(self.patient_class),
                "livermax": livermax,
                "probabilities": {**{k: float(v) for k, v in self.patient.items()}, **livermax},
            },
        }


def analyse_case(probabilities, schema: LesionSchema, *, image=None, spacing: Sequence[float],
                 origin: Sequence[float] | None = None, direction: Sequence[float] | None = None,
                 connectivity: str | int = "paper", dilate_mm: float = 0.0) -> CaseAnalysis:
    """Run the post-processing chain of one case.

    Parameters
    ----------
    probabilities : (C, Z, Y, X) softmax (numpy float16/32 or torch tensor), C = ``schema.num_classes``.
    schema : the dataset's lesion schema (label roles, sensitivities, minimum lesion volume).
    image : optional (Z, Y, X) or (C, Z, Y, X) CT in HU for the lesions' HU statistics.
    spacing : voxel size (z, y, x) in mm; origin / direction: SimpleITK geometry for world centroids.
    connectivity : seg2det connectivity (``"paper"``, 6, 18, 26).
    dilate_mm : LiverMax liver-region dilation in mm.
    """
    shape = tuple(probabilities.shape)
    if len(shape) != 4 or shape[0] != schema.num_classes:
        raise ValueError(f"probabilities must have shape (C={schema.num_classes}, Z, Y, X) for this schema, "
                         f"got {shape}")
    lesion_labels = schema.lesion_labels
    label_maps = multi_sensitivity_labels(probabilities, lesion_labels, schema.sensitivities)
    if is_torch_tensor(label_maps):
        label_maps = label_maps.cpu().numpy()
    if schema.liver_largest_component:
        label_maps = keep_largest_liver_component(label_maps, schema.liver_labels, lesion_labels)
    options = dict(priority=schema.priority_labels, probabilities=probabilities, image=image, spacing=spacing,
                   origin=origin, direction=direction, connectivity=connectivity,
                   min_volume_mm3=schema.min_lesion_volume_mm3)
    base = seg2det(label_maps[0], lesion_labels, **options)
    highest = base if len(label_maps) == 1 else seg2det(label_maps[-1], lesion_labels, **options)
    detections = merge_candidates(base, highest)
    detections = keep_top_suspicious(detections, label_maps, schema.max_suspicious_per_case)
    livermax = liver_max(probabilities, label_maps[0], liver_labels=schema.liver_labels,
                         lesion_labels=lesion_labels, spacing=spacing, dilate_mm=dilate_mm)
    patient = patient_probabilities(livermax, malignant_labels=schema.malignant_labels,
                                    benign_labels=schema.benign_labels)
    patient_class = classify_patient((r["label"] for r in base.lesions), schema.priority_labels)
    return CaseAnalysis(label_maps=label_maps, detections=detections, base_detections=base,
                        livermax=livermax, patient=patient, patient_class=patient_class,
                        sensitivities=tuple(float(f) for f in schema.sensitivities),
                        spacing=tuple(float(s) for s in spacing))


def merge_candidates(base: Detections, highest: Detections) -> Detections:
    """The second stage's candidates: every ``base`` lesion (tier ``"confident"``), then every ``highest``
    lesion that shares no voxel with a base lesion (tier ``"suspicious"``), renumbered 1..N in that order.

    ``base`` / ``highest``: seg2det of the first and of the highest-sensitivity label map (same grid). The
    inputs are not modified. A base lesion keeps its own voxels, label and properties.
    """
    if base.instances.shape != highest.instances.shape:
        raise ValueError(f"instance maps differ in shape: {base.instances.shape} vs {highest.instances.shape}")
    tiers = assign_tiers(base.instances, highest.instances)
    suspicious = [r for r in highest.lesions if tiers[r["id"]] == "suspicious"]
    instances = np.array(base.instances, dtype=np.int32, copy=True)
    lesions = [{**r, "tier": "confident"} for r in base.lesions]
    lut = np.zeros(max((r["id"] for r in highest.lesions), default=0) + 1, dtype=np.int32)
    for offset, record in enumerate(suspicious, start=len(lesions) + 1):
        lut[record["id"]] = offset
        lesions.append({**record, "id": offset, "tier": "suspicious"})
    if suspicious:
        moved = lut[highest.instances]
        inside = moved > 0
        instances[inside] = moved[inside]
    return Detections(instances=instances, lesions=lesions)


def keep_top_suspicious(detections: Detections, label_maps: np.ndarray, limit: int) -> Detections:
    """Keep every confident candidate and the ``limit`` most probable suspicious ones (``limit`` 0 = all).

    Suspicious candidates are ranked by ``max_probability`` (their highest summed lesion probability), then
    volume. Dropped candidates leave the instance map and the highest-sensitivity label map (``label_maps``:
    (k, Z, Y, X), ``label_maps[-1]`` edited in place: their voxels take the base map's labels); the kept ones
    are renumbered 1..M in their original order.
    """
    suspicious = [r for r in detections.lesions if r["tier"] != "confident"]
    if limit <= 0 or len(suspicious) <= limit:
        return detections
    ranked = sorted(suspicious, key=lambda r: (-float(r.get("max_probability") or 0.0), -r["volume_mm3"], r["id"]))
    dropped = {r["id"] for r in ranked[limit:]}
    kept = [r for r in detections.lesions if r["id"] not in dropped]
    new_id = np.zeros(max(r["id"] for r in detections.lesions) + 1, dtype=detections.instances.dtype)
    for i, record in enumerate(kept, start=1):
        new_id[record["id"]] = i
    instances = new_id[detections.instances]
    removed = (detections.instances > 0) & (instances == 0)
    label_maps[-1][removed] = label_maps[0][removed]
    return Detections(instances=instances, lesions=[{**r, "id": i} for i, r in enumerate(kept, start=1)])
