"""Evaluate one case: lesion matching, per-class counts, lesion records, patient truth / prediction, Dice.

Works on in-memory arrays, so the trainer's validation and the classifier's validation call it directly;
:mod:`nnunet_plus.evaluation.folder` adds the file reading. The result is a JSON-able dict (the
``per_case`` entries of ``summary.json``, documented in docs/evaluation.md).
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.evaluation.conventions import GROUP_KEYS, patient_group
from nnunet_plus.evaluation.metrics import dice_from_counts, overlap_counts
from nnunet_plus.postprocessing.classify import classify_patient
from nnunet_plus.postprocessing.match import match_lesions
from nnunet_plus.postprocessing.seg2det import Detections, label_mask, seg2det
from nnunet_plus.schema import MIN_REFERENCE_VOLUME_CM3, LesionSchema

logger = logging.getLogger(__name__)


def group_counts(pairs: Sequence[tuple[int, int]], fp: Sequence[int], fn: Sequence[int],
                 reference_labels: Mapping[int, int], predicted_labels: Mapping[int, int],
                 group: Sequence[int]) -> dict[str, int]:
    """Counts ``{"tp", "fl_ref", "fl_pred", "fp", "fn"}`` of a group of lesion labels.

    A matched pair is a TP of the group when both labels are in the group (so a type error inside the
    malignant group is a TP of that group); ``fl_ref`` = group reference matched outside the group,
    ``fl_pred`` = group prediction matched to a reference outside the group. For a single label this is
    the per-class count of the cascaded paper.
    """
    g = {int(v) for v in group}
    out = dict.fromkeys(GROUP_KEYS, 0)
    for ref_id, pred_id in pairs:
        ref_in = reference_labels[ref_id] in g
        pred_in = predicted_labels[pred_id] in g
        if ref_in and pred_in:
            out["tp"] += 1
        elif ref_in:
            out["fl_ref"] += 1
        elif pred_in:
            out["fl_pred"] += 1
    out["fp"] = sum(1 for i in fp if predicted_labels[i] in g)
    out["fn"] = sum(1 for i in fn if reference_labels[i] in g)
    return out


def _check_label_values(label_map: np.ndarray, schema: LesionSchema, what: str) -> None:
    """ValueError unless every value is a label of the schema (nnU-Net labels are 0..N-1)."""
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"{what} must hold integer labels, got dtype {label_map.dtype}")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= schema.num_classes):
        values = np.unique(label_map)
        unknown = sorted(int(v) for v in values if not 0 <= v < schema.num_classes)
        raise ValueError(f"{what} holds label value(s) {unknown} that the dataset labels "
                         f"{dict(schema.labels)} do not define; is it the right dataset.json?")


def _json_lesion_label(record: Mapping, schema: LesionSchema) -> int:
    if "label" in record and record["label"] is not None:
        label = int(record["label"])
    elif record.get("class") in schema.labels:
        label = int(schema.labels[record["class"]])
    else:
        raise ValueError(f"lesion {record.get('id')} of the case JSON has neither a 'label' nor a known "
                         f"'class' (got {record.get('class')!r})")
    if label not in schema.lesion_labels:
        raise ValueError(f"lesion {record.get('id')} of the case JSON has label {label}, which is not a lesion "
                         f"label of the schema {dict(zip(schema.lesions, schema.lesion_labels))}")
    return label


def _json_probability(record: Mapping) -> float | None:
    p = record.get("probability")
    return None if p is None else float(p)


def _predicted_lesions(prediction: np.ndarray, schema: LesionSchema, *, spacing: Sequence[float],
                       predicted_json: Mapping | None, predicted_instances: np.ndarray | None,
                       connectivity: str | int) -> tuple[np.ndarray, dict[int, int], dict[int, float],
                                                         dict[int, float | None]]:
    """Instances, id -> label, id -> volume (cm3) and id -> score of the predicted lesions."""
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    if predicted_instances is not None:
        if predicted_json is None:
            raise ValueError("predicted_instances needs predicted_json (the lesion labels live in the case JSON)")
        records = {int(r["id"]): r for r in predicted_json.get("lesions", [])}
        instances = np.asarray(predicted_instances)
        ids, sizes = np.unique(instances[instances > 0], return_counts=True)
        size_of = dict(zip(ids.tolist(), sizes.tolist()))
        missing = sorted(set(records) - set(size_of))
        if missing:
            raise ValueError(f"case JSON lesion id(s) {missing} do not occur in the instance map")
        unreported = sorted(set(size_of) - set(records))
        if unreported:
            logger.debug("instance id(s) %s are not reported in the case JSON; ignored", unreported)
            instances = np.where(np.isin(instances, unreported), 0, instances)
        labels = {i: _json_lesion_label(r, schema) for i, r in records.items()}
        volumes = {i: size_of[i] * voxel_cm3 for i in records}
        scores = {i: _json_probability(r) for i, r in records.items()}
        return instances, labels, volumes, scores
    det = seg2det(prediction, schema.lesion_labels, priority=schema.priority_labels, spacing=tuple(spacing),
                  connectivity=connectivity)
    labels = {int(k): int(v) for k, v in det.labels().items()}
    volumes = {int(r["id"]): float(r["volume_cm3"]) for r in det.lesions}
    scores: dict[int, float | None] = dict.fromkeys(labels)
    if predicted_json is not None:
        # No instance map: attach the JSON probabilities to the label map's lesions by bounding box.
        by_bbox = {tuple(int(v) for v in r["bbox"]): _json_probability(r)
                   for r in predicted_json.get("lesions", []) if r.get("bbox") is not None}
        for r in det.lesions:
            scores[int(r["id"])] = by_bbox.get(tuple(int(v) for v in r["bbox"]))
        unscored = [i for i, s in scores.items() if s is None]
        if unscored:
            logger.warning("case %s: %d predicted lesion(s) have no probability in the case JSON",
                           predicted_json.get("case", "?"), len(unscored))
    return det.instances, labels, volumes, scores


def _presence(labels: set[int], schema: LesionSchema) -> dict[str, bool]:
    """Which lesion types, and whether malignant / benign / any lesion, occur among ``labels``."""
    out = {name: int(schema.labels[name]) in labels for name in schema.lesions}
    out["malignant"] = bool(labels & set(schema.malignant_labels))
    out["benign"] = bool(labels & set(schema.benign_labels))
    out["tumor"] = bool(labels)
    return out


def _patient_probabilities(present: set[int], schema: LesionSchema, predicted_json: Mapping | None
                           ) -> tuple[dict[str, float], str]:
    """Patient probabilities: the case JSON's where given, else 0/1 from the predicted lesions."""
    derived = {k: float(v) for k, v in _presence(present, schema).items()}
    given = {}
    if predicted_json is not None:
        given = (predicted_json.get("patient") or {}).get("probabilities") or {}
    if not given:
        return derived, "label_map"
    return {k: float(given[k]) if given.get(k) is not None else v for k, v in derived.items()}, "json"


def _class_name(label: int, schema: LesionSchema) -> str:
    return "normal" if label == 0 else schema.label_name(label)


def _reference_records(lesions: Sequence[Mapping], ref_labels: Mapping[int, int], pred_labels: Mapping[int, int],
                       ref_match: Mapping[int, int], ignored: set[int], schema: LesionSchema) -> list[dict]:
    """One record per reference lesion: class, size, outcome (tp / fl / fn / ignored), matched id."""
    out = []
    for r in lesions:
        i = int(r["id"])
        if i in ignored:
            outcome = "ignored"
        elif i in ref_match:
            outcome = "tp" if pred_labels[ref_match[i]] == ref_labels[i] else "fl"
        else:
            outcome = "fn"
        out.append({"id": i, "class": schema.label_name(ref_labels[i]), "volume_cm3": float(r["volume_cm3"]),
                    "radius_mm": float(r["sphere_diameter_mm"]) / 2.0, "outcome": outcome,
                    "matched_id": ref_match.get(i)})
    return out


def _predicted_records(pred_labels: Mapping[int, int], volumes: Mapping[int, float],
                       scores: Mapping[int, float | None], ref_labels: Mapping[int, int],
                       pred_match: Mapping[int, int], fp: set[int], schema: LesionSchema) -> list[dict]:
    """One record per predicted lesion: class, volume, outcome (tp / fl / fp / ignored), matched id, score."""
    out = []
    for i in sorted(pred_labels):
        if i in pred_match:
            outcome = "tp" if ref_labels[pred_match[i]] == pred_labels[i] else "fl"
        else:
            outcome = "fp" if i in fp else "ignored"
        out.append({"id": i, "class": schema.label_name(pred_labels[i]), "volume_cm3": float(volumes[i]),
                    "outcome": outcome, "matched_id": pred_match.get(i), "score": scores.get(i)})
    return out


def _patient_block(ref_present: set[int], pred_present: set[int], schema: LesionSchema,
                   predicted_json: Mapping | None) -> dict:
    """Patient truth and prediction: classify_patient classes and groups, type presence, probabilities."""
    ref_class = _class_name(classify_patient(ref_present, schema.priority_labels), schema)
    json_class = ((predicted_json or {}).get("patient") or {}).get("class")
    if json_class is not None and json_class != "normal" and json_class not in schema.lesions:
        raise ValueError(f"case JSON patient class {json_class!r} is neither 'normal' nor a lesion of the schema")
    pred_class = json_class or _class_name(classify_patient(pred_present, schema.priority_labels), schema)
    probabilities, source = _patient_probabilities(pred_present, schema, predicted_json)
    return {
        "reference_class": ref_class, "predicted_class": pred_class,
        "reference_group": patient_group(ref_class, schema), "predicted_group": patient_group(pred_class, schema),
        "reference": _presence(ref_present, schema), "predicted": _presence(pred_present, schema),
        "probabilities": probabilities, "probability_source": source,
    }


def evaluate_case(reference: np.ndarray, prediction: np.ndarray, schema: LesionSchema, *,
                  spacing: Sequence[float], criterion: str = "overlap",
                  min_volume_cm3: float = MIN_REFERENCE_VOLUME_CM3, predicted_json: Mapping | None = None,
                  predicted_instances: np.ndarray | None = None, case: str | None = None,
                  connectivity: str | int = "paper") -> dict:
    """Lesion-, patient- and voxel-level evaluation of one case.

    Parameters
    ----------
    reference, prediction : (Z, Y, X) integer label maps (nnU-Net labels of ``schema``), same shape.
    schema : the dataset's lesion schema.
    spacing : (z, y, x) voxel spacing in mm.
    criterion : lesion match criterion, ``"overlap"`` (any shared voxel) or ``"dice:T"`` (Dice > T).
    min_volume_cm3 : reference lesions smaller than this are ignored (neither TP nor FN); an unmatched
        prediction overlapping an ignored lesion is not a false positive either. Default
        :data:`~nnunet_plus.schema.MIN_REFERENCE_VOLUME_CM3` (0.5, the cascaded paper).
    predicted_json : the case JSON (docs/case_json.md) of the prediction, if any: its lesion probabilities feed
        the FROC, its patient probabilities the AUCs, its patient class the confusion matrix.
    predicted_instances : (Z, Y, X) instance map whose ids are the JSON's lesion ids (needs
        ``predicted_json``); without it the predicted lesions are seg2det's components of ``prediction``.
    case : case identifier stored in the result.
    connectivity : seg2det connectivity for both sides (``"paper"``, 6, 18 or 26).

    Returns
    -------
    dict with ``case``, ``counts`` {tp, fl, fp, fn, ignored_reference, ignored_predicted}, ``per_class``
    {name: {tp, fl_ref, fl_pred, fp, fn}}, ``malignant_group``, ``benign_group``, ``reference_lesions``
    and ``predicted_lesions`` (one record each), ``patient`` and ``dice`` (see docs/evaluation.md).
    """
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    _check_case_inputs(reference, prediction, schema, spacing=spacing, min_volume_cm3=min_volume_cm3,
                       predicted_instances=predicted_instances)
    ref_det = seg2det(reference, schema.lesion_labels, priority=schema.priority_labels, spacing=tuple(spacing),
                      connectivity=connectivity)
    pred_instances, pred_labels, pred_volumes, scores = _predicted_lesions(
        prediction, schema, spacing=spacing, predicted_json=predicted_json,
        predicted_instances=predicted_instances, connectivity=connectivity)
    lesions = _lesion_results(ref_det, pred_instances, pred_labels, pred_volumes, scores, schema,
                              criterion=criterion, min_volume_cm3=min_volume_cm3)
    ref_present = {int(v) for v in ref_det.labels().values()}
    voxels, dice = _voxel_overlap(reference, prediction, schema)
    return {
        "case": case,
        "missing": False,
        **lesions,
        "patient": _patient_block(ref_present, set(pred_labels.values()), schema, predicted_json),
        "dice": dice,
        "voxels": voxels,
    }


def _lesion_results(ref_det: Detections, pred_instances: np.ndarray, pred_labels: Mapping[int, int],
                    pred_volumes: Mapping[int, float], scores: Mapping[int, float | None], schema: LesionSchema, *,
                    criterion: str, min_volume_cm3: float) -> dict:
    """The lesion-level part of :func:`evaluate_case`'s result: ``counts``, ``per_class``, ``malignant_group``,
    ``benign_group``, ``reference_lesions`` and ``predicted_lesions``."""
    ref_labels = {int(k): int(v) for k, v in ref_det.labels().items()}
    ignored = {int(r["id"]) for r in ref_det.lesions if float(r["volume_cm3"]) < min_volume_cm3}
    match = match_lesions(ref_det.instances, ref_labels, pred_instances, pred_labels, criterion=criterion,
                          ignored_reference_ids=sorted(ignored))
    pairs = [(int(r), int(p)) for r, p in match.pairs if int(r) not in ignored]
    fp = sorted(int(i) for i in match.fp)
    fn = sorted(int(i) for i in match.fn if int(i) not in ignored)
    ref_match = {r: p for r, p in pairs}
    pred_match = {p: r for r, p in pairs}

    n_tp = sum(1 for r, p in pairs if ref_labels[r] == pred_labels[p])
    counts = {"tp": n_tp, "fl": len(pairs) - n_tp, "fp": len(fp), "fn": len(fn),
              "ignored_reference": len(ignored),
              "ignored_predicted": len(set(pred_labels) - set(pred_match) - set(fp))}
    return {
        "counts": counts,
        "per_class": {name: group_counts(pairs, fp, fn, ref_labels, pred_labels, [schema.labels[name]])
                      for name in schema.lesions},
        "malignant_group": group_counts(pairs, fp, fn, ref_labels, pred_labels, schema.malignant_labels),
        "benign_group": group_counts(pairs, fp, fn, ref_labels, pred_labels, schema.benign_labels),
        "reference_lesions": _reference_records(ref_det.lesions, ref_labels, pred_labels, ref_match, ignored,
                                                schema),
        "predicted_lesions": _predicted_records(pred_labels, pred_volumes, scores, ref_labels, pred_match, set(fp),
                                                schema),
    }


def _check_case_inputs(reference: np.ndarray, prediction: np.ndarray, schema: LesionSchema, *,
                       spacing: Sequence[float], min_volume_cm3: float,
                       predicted_instances: np.ndarray | None) -> None:
    """ValueError (one line) for shapes, spacing, minimum volume or label values :func:`evaluate_case` cannot
    take."""
    if reference.ndim != 3:
        raise ValueError(f"reference must be a 3D (Z, Y, X) label map, got shape {reference.shape}")
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if predicted_instances is not None and np.shape(predicted_instances) != reference.shape:
        raise ValueError(f"predicted_instances shape {np.shape(predicted_instances)} differs from reference "
                         f"shape {reference.shape}")
    if len(spacing) != 3 or any(not (float(s) > 0) for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {tuple(spacing)}")
    if min_volume_cm3 < 0:
        raise ValueError(f"min_volume_cm3 must be >= 0, got {min_volume_cm3}")
    _check_label_values(reference, schema, "the reference")
    _check_label_values(prediction, schema, "the prediction")


def _voxel_overlap(reference: np.ndarray, prediction: np.ndarray, schema: LesionSchema) -> tuple[dict, dict]:
    """Voxel counts (:func:`~nnunet_plus.evaluation.metrics.overlap_counts`) and Dice of the liver (liver and
    lesion labels) and of the lesions (lesion labels)."""
    liver_and_lesions = schema.liver_region_labels
    voxels = {
        "liver": overlap_counts(label_mask(reference, liver_and_lesions), label_mask(prediction, liver_and_lesions)),
        "lesion": overlap_counts(label_mask(reference, schema.lesion_labels),
                                 label_mask(prediction, schema.lesion_labels)),
    }
    dice = {k: dice_from_counts(v["intersection"], v["reference"], v["prediction"]) for k, v in voxels.items()}
    return voxels, dice
