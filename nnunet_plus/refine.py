"""From nnU-Net probabilities (original geometry) to the refined lesions, label maps and per-case JSON.

How the reported lesions are decided
------------------------------------
``analyse_case`` (multi-sensitivity, seg2det, LiverMax) runs on the softmax; then

* **without the PLUS classifier** (``--no-classifier``, or no classifier trained): the lesions are the
  detections at the *first* (confident) sensitivity, normally f = 1, i.e. nnU-Net's own argmax. Each keeps
  nnU-Net's class (seg2det's voxel vote); its ``probability`` is the nnU-Net prior of that class (mean softmax
  over the lesion). Tier ``"confident"``.
* **with the classifier**: the candidates are nnU-Net's f = 1 lesions (tier ``"confident"``) and the lesions
  of the *highest* sensitivity that touch none of them (``"suspicious"``; ``analyse_case``). Their PLUS
  probabilities (lesion types + ``not_a_lesion``, fold ensemble) go through the classifier's fitted decision
  rule (:func:`nnunet_plus.decision_rule.apply_rule`: which confident lesions are rejected or
  retyped, which suspicious ones are reported). Its ``probability`` is the PLUS probability of its class.
  With the identity rule (no rule beat nnU-Net alone on validation, or none was fitted) the reported lesions,
  their classes and the label map are exactly nnU-Net alone's.
* In both modes a lesion whose ``probability`` is below ``min_probability`` (``--min-probability``, default 0:
  off) is rejected as well.

The final label map is nnU-Net's label map at the first sensitivity in which every voxel nnU-Net called a
lesion is first given its best non-lesion label (argmax over the background / liver / other channels), and
then every reported lesion is painted with its class: rejected and dropped candidates disappear, reported
ones carry one (refined) type each. ``<case>_instances.nii.gz`` holds the reported lesions with ids 1..N
(the ids of the JSON). Patient class = classifyPatient over the reported lesions; each patient probability
comes from LiverMax unless the classifier's rule takes it from PLUS (``DecisionRule.patient_from_plus``: those
whose validation AUC was above LiverMax's; :mod:`nnunet_plus.classifier.patient_sources`); the LiverMax ones are
kept in the JSON either way. ``patient.liver_found`` /
``liver_volume_ml`` say whether the final label map holds any liver (liver + lesion labels): a case without
liver is "normal" only in the sense that nothing was seen. ``patient.liver_hu_median`` is the median of the
image's first channel over that region: outside :data:`LIVER_HU_RANGE` the "liver" is not liver tissue (a model
that paints liver into air, a scan that is not a CT in HU), which ``nnunet_plus_predict`` logs as a warning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.decision_rule import apply_rule
from nnunet_plus.files.image_io import Geometry
from nnunet_plus.schema import LesionSchema

NOT_A_LESION = "not_a_lesion"
#: plausible median HU of the liver region on CT: parenchyma is ~55 HU unenhanced, down to about -40 HU when
#: very fatty and up to ~150 HU in the portal venous phase; air is -1000 HU, lung about -800 HU, bone > 300 HU
LIVER_HU_RANGE = (-100.0, 200.0)


@dataclass
class CaseResult:
    """Everything written for one case.

    label_map : (Z, Y, X) uint8, final labels (liver + refined lesion types).
    instances : (Z, Y, X) int32, reported lesion ids 1..N (0 = none).
    record : the per-case JSON (see docs/case_json.md), JSON-able.
    geometry : the input image geometry, written unchanged into the label maps.
    """

    case: str
    label_map: np.ndarray
    instances: np.ndarray
    record: dict
    geometry: Geometry


def jsonable(value):
    """``value`` with numpy scalars / arrays turned into Python numbers / lists (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _median_hu(image: np.ndarray | None, region: np.ndarray) -> float | None:
    """Median of the first channel of ``image`` ((C, Z, Y, X) or (Z, Y, X)) over the finite voxels of ``region``
    ((Z, Y, X) bool); None without image or without such voxels."""
    if image is None:
        return None
    values = np.asarray(image if np.ndim(image) == 3 else image[0])[region]
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


class CaseRefiner:
    """Turns one case's softmax into a :class:`CaseResult` (post-processing + optional PLUS classifier).

    Parameters
    ----------
    schema : the dataset's lesion schema (its ``sensitivities`` are the multi-sensitivity factors).
    classifier : a ``PLUSInference`` (nnunet_plus.classifier.inference) or None for nnU-Net-only output.
    min_probability : reject reported lesions whose probability is below this value (0 = off); the probability
        is PLUS's for its class, or nnU-Net's prior when the decision rule is the identity.
    connectivity, dilate_mm : passed to ``analyse_case`` (seg2det connectivity, LiverMax liver dilation).
    """

    def __init__(self, schema: LesionSchema, *, classifier=None, min_probability: float = 0.0,
                 connectivity: str | int = "paper", dilate_mm: float = 0.0):
        if not 0.0 <= float(min_probability) <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability}")
        self.schema = schema
        self.classifier = classifier
        self.min_probability = float(min_probability)
        self.connectivity = connectivity
        self.dilate_mm = float(dilate_mm)

    def refine(self, case: str, image: np.ndarray | None, probabilities: np.ndarray,
               geometry: Geometry) -> CaseResult:
        """Post-process one case.

        image : (C, Z, Y, X) float32 in the original geometry (HU for CT) or None (no HU statistics; the
            classifier then cannot run and raises).
        probabilities : (K, Z, Y, X) float softmax in the original geometry, K = schema.num_classes.
        """
        from nnunet_plus.case_analysis import analyse_case

        schema = self.schema
        if probabilities.ndim != 4 or probabilities.shape[0] != schema.num_classes:
            raise ValueError(f"{case}: probabilities must have shape (K={schema.num_classes}, Z, Y, X), got "
                             f"{probabilities.shape}")
        if tuple(probabilities.shape[1:]) != geometry.shape_zyx:
            raise ValueError(f"{case}: probabilities shape {probabilities.shape[1:]} does not match the image "
                             f"grid {geometry.shape_zyx}")
        analysis = analyse_case(probabilities, schema, image=image, spacing=geometry.spacing_zyx,
                                origin=geometry.origin, direction=geometry.direction,
                                connectivity=self.connectivity, dilate_mm=self.dilate_mm)
        plus = None
        if self.classifier is not None:
            if image is None:
                raise ValueError(f"{case}: the PLUS classifier needs the CT image; give -i or use --no-classifier")
            plus = self.classifier.predict_case(image, probabilities, analysis, spacing=geometry.spacing_zyx)
        return self._assemble(case, analysis, plus, probabilities, geometry, image)

    # ---- decision -----------------------------------------------------------------------------------
    def _decide(self, analysis, plus) -> tuple[object, list[dict], list[dict]]:
        """(detections used, reported lesion records, rejected candidate records)."""
        schema = self.schema
        names = list(schema.lesions)
        labels = list(schema.lesion_labels)
        detections = analysis.base_detections if plus is None else analysis.detections
        table = None if plus is None else np.asarray(plus.lesion_probabilities, dtype=np.float64)
        flags = classes = None
        if table is not None:
            class_of = {label: i for i, label in enumerate(labels)}
            tiers = [0 if rec.get("tier", "confident") == "confident" else 1 for rec in detections.lesions]
            groups = [[names.index(n) for n in schema.malignant], [names.index(n) for n in schema.benign]]
            flags, classes = apply_rule(self.classifier.rule, table, tier=np.asarray(tiers, dtype=np.int64),
                                        nnunet_class=[class_of[int(rec["label"])] for rec in detections.lesions],
                                        groups=groups)
        reported, rejected = [], []
        for index, rec in enumerate(detections.lesions):
            prior_by_name = {n: float(p) for n, p in zip(names, rec["prior"])}
            out = dict(rec)
            out["candidate_id"] = int(rec["id"])
            out["nnunet_class"] = schema.label_name(int(rec["label"]))
            out["prior"] = prior_by_name
            if plus is None:
                label = int(rec["label"])
                out["tier"] = "confident"
                probability = prior_by_name[schema.label_name(label)]
                is_lesion = True
            else:
                row = table[index]
                out["tier"] = rec.get("tier", "confident")
                out["plus"] = {n: float(p) for n, p in zip([*names, NOT_A_LESION], row)}
                is_lesion, best = bool(flags[index]), int(classes[index])
                label = labels[best] if is_lesion else int(rec["label"])
                if self.classifier.rule.is_identity:  # nnU-Net decided: its own probability, as without PLUS
                    probability = prior_by_name[schema.label_name(label)]
                else:
                    probability = float(row[best]) if is_lesion else 1.0 - float(row[-1])
            out["label"] = label
            out["class"] = schema.label_name(label)
            out["probability"] = float(probability)
            if is_lesion and probability >= self.min_probability:
                reported.append(out)
            else:
                out["rejected_by"] = NOT_A_LESION if not is_lesion else "min_probability"
                rejected.append(out)
        return detections, reported, rejected

    def _assemble(self, case, analysis, plus, probabilities, geometry, image) -> CaseResult:
        schema = self.schema
        detections, reported, rejected = self._decide(analysis, plus)
        lut = np.zeros(len(detections.lesions) + 1, dtype=np.int32)
        for new_id, rec in enumerate(reported, start=1):
            lut[rec["candidate_id"]] = new_id
            rec["id"] = new_id
        instances = lut[detections.instances]
        label_map = self._label_map(analysis.label_maps[0], probabilities, instances,
                                    [rec["label"] for rec in reported])

        from nnunet_plus.postprocessing.classify import classify_patient
        from nnunet_plus.postprocessing.seg2det import label_mask

        patient_label = classify_patient([rec["label"] for rec in reported], schema.priority_labels)
        livermax = {schema.label_name(int(k)): float(v) for k, v in analysis.livermax.items()}
        livermax_probabilities = {**{k: float(v) for k, v in analysis.patient.items()}, **livermax}
        from_plus = set() if plus is None else set(self.classifier.rule.patient_from_plus) & set(plus.patient)
        probabilities = {k: float(plus.patient[k]) if k in from_plus else v for k, v in livermax_probabilities.items()}
        sources = {k: "plus" if k in from_plus else "livermax" for k in probabilities}
        used = set(sources.values())
        liver_region = label_mask(label_map, schema.liver_region_labels)
        liver_voxels = int(liver_region.sum())
        liver_hu_median = _median_hu(image, liver_region)
        patient = {
            "class": "normal" if patient_label == 0 else schema.label_name(patient_label),
            "n_lesions": len(reported),
            "liver_found": liver_voxels > 0,
            "liver_volume_ml": liver_voxels * float(np.prod(geometry.spacing_zyx)) / 1000.0,
            "liver_hu_median": liver_hu_median,
            "livermax": livermax,
            "probabilities": probabilities,
            "probability_source": used.pop() if len(used) == 1 else "mixed",
            "probability_sources": sources,
            "livermax_probabilities": livermax_probabilities,
        }
        record = {
            "case": case,
            "spacing": list(geometry.spacing_zyx),
            "shape": list(geometry.shape_zyx),
            "origin": list(geometry.origin),
            "direction": list(geometry.direction),
            "sensitivities": [float(f) for f in schema.sensitivities],
            "classifier": plus is not None,
            "operating_point": None if plus is None else self.classifier.rule.describe(self.schema.lesions),
            "lesions": reported,
            "rejected": rejected,
            "patient": patient,
        }
        return CaseResult(case, label_map, instances, jsonable(record), geometry)

    def _label_map(self, base: np.ndarray, probabilities: np.ndarray, instances: np.ndarray,
                   reported_labels: Sequence[int]) -> np.ndarray:
        """nnU-Net's base label map, lesion voxels relabelled by the best non-lesion channel, then the
        reported lesions painted with their classes."""
        lesion_labels = set(self.schema.lesion_labels)
        is_lesion = np.zeros(max(256, probabilities.shape[0]), dtype=bool)
        is_lesion[list(lesion_labels)] = True
        final = np.array(base, dtype=np.uint8, copy=True)
        mask = is_lesion[final]
        if mask.any():
            others = [c for c in range(probabilities.shape[0]) if c not in lesion_labels]
            scores = np.stack([probabilities[c][mask] for c in others])
            final[mask] = np.asarray(others, dtype=np.uint8)[np.argmax(scores, axis=0)]
        if reported_labels:
            paint = np.zeros(len(reported_labels) + 1, dtype=np.uint8)
            paint[1:] = reported_labels
            inside = instances > 0
            final[inside] = paint[instances[inside]]
        return final
