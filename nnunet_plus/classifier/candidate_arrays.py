"""One case's candidate-bank arrays, from its image, reference labels and nnU-Net softmax (no files).

Lesion candidates are seg2det on the label map of the schema's highest sensitivity (so they include nnU-Net's
misses at f=1 and its false positives); each is matched one-to-one to the reference lesions
(:func:`~nnunet_plus.postprocessing.match.match_lesions`, overlap criterion by default): its target is the
matched reference lesion's class index in ``schema.lesions`` order, or ``len(schema.lesions)`` =
"not a lesion". The crops and the liver input are made by :mod:`nnunet_plus.classifier.crops` (its
docstring documents the ROI, large-lesion, padding, liver and intensity rules); the keys, dtypes and shapes
of the arrays are the file format's, :mod:`nnunet_plus.classifier.bank_io`.

:func:`classifier_inputs` (crops + liver input of a case's candidates) is shared by the bank build and by
inference; :func:`build_case_candidates` adds the targets, nnU-Net's own answers and the patient labels.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.case_analysis import analyse_case
from nnunet_plus.classifier.bank_io import ARRAY_SPEC, PATIENT_KEYS, TIERS
from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.crops import candidate_rois, liver_input, normalise_intensity
from nnunet_plus.postprocessing.classify import classify_patient
from nnunet_plus.postprocessing.match import match_lesions, overlap_table
from nnunet_plus.postprocessing.seg2det import Detections, seg2det
from nnunet_plus.schema import LesionSchema

__all__ = ["build_case_candidates", "classifier_inputs"]

logger = logging.getLogger(__name__)


def _overlap_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(M, 3) int64 rows [id in first, id in second, shared voxels] of every pair of non-zero ids sharing
    voxels, sorted by the first id then the second (:func:`~nnunet_plus.postprocessing.match.overlap_table`)."""
    return np.stack(overlap_table(first, second), axis=1).astype(np.int64)


def _best_partner(pairs: np.ndarray, n: int) -> np.ndarray:
    """For ids 1..n in column 0 of ``pairs``: the column-1 id sharing the most voxels (0 if none)."""
    best = np.zeros(n, dtype=np.int64)
    most = np.zeros(n, dtype=np.int64)
    for first, second, count in pairs:
        if count > most[first - 1]:
            best[first - 1], most[first - 1] = second, count
    return best


def _matched_ids(pairs, n: int) -> np.ndarray:
    """(n,) int32: the reference id matched one-to-one to each detection id 1..n, 0 = none."""
    ids = np.zeros(n, dtype=np.int32)
    for reference_id, detection_id in pairs:
        ids[detection_id - 1] = reference_id
    return ids


def _classes(ids: np.ndarray, labels: Mapping[int, int], index: Mapping[int, int], none: int) -> np.ndarray:
    """(len(ids),) int64 class index of each lesion id (its label value through ``index``), ``none`` for id 0."""
    return np.array([index[labels[int(i)]] if i > 0 else none for i in ids], dtype=np.int64)


def classifier_inputs(image: np.ndarray, analysis, schema: LesionSchema, *, spacing: Sequence[float],
                      target_spacing: Sequence[float], settings: BankSettings,
                      channel_names: Sequence[str] | None = None, case_id: str = ""
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The classifier inputs of the candidates of one case (used by the bank build and by inference).

    Parameters
    ----------
    image : (C, Z, Y, X) raw intensities (HU for CT), every channel.
    analysis : :func:`~nnunet_plus.case_analysis.analyse_case` of the case's softmax; the candidates are
        ``analysis.detections``, the liver region is the liver + lesion labels of ``analysis.label_maps[0]``.
    spacing, target_spacing : raw and ROI voxel spacing (z, y, x) mm.
    settings : crop options; ``channel_names`` feed ``normalisation="auto"``.

    Returns
    -------
    ``(crops, roi_scale, liver, liver_found)``: float32 ``(N, C + 1, *roi_shape)`` normalised image channels +
    the candidate's mask, float32 ``(N,)`` field-of-view zoom, float32 ``(C, *liver_shape)`` liver input (the
    padding value everywhere when nnU-Net found no liver region) and whether it found one.
    """
    base_map = analysis.label_maps[0]
    liver_region = np.isin(base_map, schema.liver_region_labels)
    liver_found = bool(liver_region.any())
    schemes = settings.schemes(image.shape[0], channel_names)
    normalised = normalise_intensity(image, scheme=schemes, ct_window=settings.ct_window,
                                     mask=liver_region if liver_found else None)
    pads = [float(normalised[c].min()) for c in range(normalised.shape[0])]
    candidates = analysis.detections
    ids = [int(r["id"]) for r in candidates.lesions]
    crops, scales = candidate_rois(normalised, candidates.instances, ids, [r["bbox"] for r in candidates.lesions],
                                   spacing=spacing, target_spacing=target_spacing, pad_value=pads,
                                   **settings.crop_options())
    if liver_found:
        liver = liver_input(normalised, liver_region, spacing=spacing, shape=settings.liver_shape,
                            mode=settings.liver_mode, margin=settings.liver_margin, fill_value=pads)
    else:
        logger.warning("case %s: nnU-Net predicted no liver region; its liver input is blank", case_id)
        liver = np.broadcast_to(np.asarray(pads, np.float32)[:, None, None, None],
                                (image.shape[0], *settings.liver_shape))
    return crops, scales, liver, liver_found


def _check_case(case_id: str, image: np.ndarray, reference_label_map: np.ndarray, probabilities: np.ndarray,
                schema: LesionSchema) -> None:
    """ValueError naming the case when the shapes, channels or values of its arrays do not fit together."""
    if image.ndim != 4:
        raise ValueError(f"case {case_id}: image must be (C, Z, Y, X), got shape {image.shape}")
    if reference_label_map.shape != image.shape[1:]:
        raise ValueError(f"case {case_id}: reference label map shape {reference_label_map.shape} does not match "
                         f"the image {image.shape[1:]}")
    if probabilities.ndim != 4 or probabilities.shape[1:] != image.shape[1:]:
        raise ValueError(f"case {case_id}: probabilities shape {probabilities.shape} does not match the image "
                         f"{image.shape[1:]}; export the softmax in the raw image geometry (nnU-Net's "
                         "validation/ folder or nnUNetv2_predict --save_probabilities)")
    if probabilities.shape[0] != schema.num_classes:
        raise ValueError(f"case {case_id}: {probabilities.shape[0]} probability channels but the schema has "
                         f"{schema.num_classes} labels")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(f"case {case_id}: the probabilities contain NaN or inf; re-export the softmax")
    if reference_label_map.min() < 0 or reference_label_map.max() >= schema.num_classes:
        raise ValueError(f"case {case_id}: reference labels span {reference_label_map.min()}.."
                         f"{reference_label_map.max()}, outside the schema's 0..{schema.num_classes - 1}")


def _match_arrays(candidates: Detections, base: Detections, reference: Detections, schema: LesionSchema,
                  criterion: str) -> dict[str, np.ndarray]:
    """The arrays that compare the candidates (N) and nnU-Net's f=1 lesions (B) with the reference (R)."""
    num_classes, index = len(schema.lesions), {label: i for i, label in enumerate(schema.lesion_labels)}
    n, n_ref, n_base = len(candidates.lesions), len(reference.lesions), len(base.lesions)
    ref_labels, cand_labels, base_labels = reference.labels(), candidates.labels(), base.labels()
    match = match_lesions(reference.instances, ref_labels, candidates.instances, cand_labels, criterion=criterion)
    ref_id = _matched_ids(match.pairs, n)
    overlap = _overlap_rows(candidates.instances, reference.instances)
    base_overlap = _overlap_rows(candidates.instances, base.instances)
    base_match = match_lesions(reference.instances, ref_labels, base.instances, base_labels, criterion=criterion)
    ref_covered = np.zeros(n_ref, dtype=bool)
    ref_covered[overlap[:, 1] - 1] = True
    ref_class = _classes(np.arange(1, n_ref + 1), ref_labels, index, num_classes)
    ids = np.array([int(r["id"]) for r in candidates.lesions], dtype=np.int64)
    return {
        "target": _classes(ref_id, ref_labels, index, num_classes),
        "overlap_target": _classes(_best_partner(overlap, n), ref_labels, index, num_classes),
        "ref_id": ref_id,
        "nnunet_class": _classes(ids, cand_labels, index, num_classes),
        "base_class": _classes(_best_partner(base_overlap, n), base_labels, index, num_classes),
        "ref_class": ref_class,
        "ref_volume_mm3": np.array([r["volume_mm3"] for r in reference.lesions], dtype=np.float32),
        "ref_covered": ref_covered,
        "missed_per_class": np.bincount(ref_class[~ref_covered], minlength=num_classes + 1)[:num_classes]
        .astype(np.int64),
        "base_det_class": _classes(np.arange(1, n_base + 1), base_labels, index, num_classes),
        "base_det_ref_id": _matched_ids(base_match.pairs, n_base),
        "base_det_volume_mm3": np.array([r["volume_mm3"] for r in base.lesions], dtype=np.float32),
        "overlap": overlap,
    }


def _candidate_records(case_id: str, candidates: Detections, num_classes: int) -> dict[str, np.ndarray]:
    """The (N, ...) arrays read from the candidates' seg2det records (nnU-Net's prior, tier, size)."""
    n = len(candidates.lesions)
    missing_prior = [r["id"] for r in candidates.lesions if r.get("prior") is None]
    if missing_prior:
        raise ValueError(f"case {case_id}: analyse_case gave candidates without a prior ({missing_prior})")
    return {
        "prior": np.array([r["prior"] for r in candidates.lesions], dtype=np.float32).reshape(n, num_classes),
        "tier": np.array([TIERS.index(r["tier"]) for r in candidates.lesions], dtype=np.int8),
        "volume_mm3": np.array([r["volume_mm3"] for r in candidates.lesions], dtype=np.float32),
        "max_probability": np.array([r["max_probability"] for r in candidates.lesions], dtype=np.float32),
        "bbox": np.array([r["bbox"] for r in candidates.lesions], dtype=np.int32).reshape(n, 6),
    }


def _patient_arrays(reference_label_map: np.ndarray, analysis, schema: LesionSchema) -> dict[str, np.ndarray]:
    """The patient-level arrays: the reference's labels and classifyPatient, nnU-Net's LiverMax and class."""
    num_classes, lesion_labels = len(schema.lesions), schema.lesion_labels
    index = {label: i for i, label in enumerate(lesion_labels)}
    present = [v for v in lesion_labels if np.any(reference_label_map == v)]
    ref_patient_label = classify_patient(present, schema.priority_labels)
    nnunet_patient_label = int(analysis.patient_class)
    return {
        "patient": np.array([bool(present),
                             any(v in schema.malignant_labels for v in present),
                             any(v in schema.benign_labels for v in present)], dtype=np.uint8),
        "patient_types": np.array([v in present for v in lesion_labels], dtype=np.uint8),
        "patient_class": np.array(index[ref_patient_label] if ref_patient_label else num_classes, dtype=np.int64),
        "nnunet_patient": np.array([analysis.patient[k] for k in PATIENT_KEYS], dtype=np.float32),
        "nnunet_livermax": np.array([analysis.livermax[v] for v in lesion_labels], dtype=np.float32),
        "nnunet_patient_class": np.array(index[nnunet_patient_label] if nnunet_patient_label else num_classes,
                                         dtype=np.int64),
    }


def build_case_candidates(case_id: str, image: np.ndarray, reference_label_map: np.ndarray,
                          probabilities: np.ndarray, schema: LesionSchema, *, spacing: Sequence[float],
                          target_spacing: Sequence[float], settings: BankSettings | None = None,
                          channel_names: Sequence[str] | None = None, origin: Sequence[float] | None = None,
                          direction: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """All bank arrays of one case (keys, dtypes, shapes and meaning: :mod:`nnunet_plus.classifier.bank_io`).

    Parameters
    ----------
    image : (C, Z, Y, X) raw intensities (HU for CT), every channel.
    reference_label_map : (Z, Y, X) integer reference labels (schema label values).
    probabilities : (K, Z, Y, X) nnU-Net softmax in the raw image geometry, K = ``schema.num_classes``.
    spacing : raw voxel spacing (z, y, x) mm; ``target_spacing``: ROI voxel spacing (nnU-Net's).
    settings : crop / matching options (default :class:`BankSettings`).
    channel_names : dataset.json channel names, used by ``normalisation="auto"``.
    """
    settings = settings or BankSettings()
    image = np.asarray(image)
    reference_label_map = np.asarray(reference_label_map)
    _check_case(case_id, image, reference_label_map, probabilities, schema)
    analysis = analyse_case(probabilities, schema, spacing=spacing, origin=origin, direction=direction,
                            connectivity=settings.connectivity)
    reference = seg2det(reference_label_map, schema.lesion_labels, priority=schema.priority_labels, spacing=spacing,
                        connectivity=settings.connectivity)
    matched = _match_arrays(analysis.detections, analysis.base_detections, reference, schema, settings.criterion)
    crops, scales, liver, liver_found = classifier_inputs(image, analysis, schema, spacing=spacing,
                                                          target_spacing=target_spacing, settings=settings,
                                                          channel_names=channel_names, case_id=case_id)
    arrays = {
        "case_id": np.array(str(case_id)),
        "crops": crops.astype(np.float16),
        "roi_scale": scales.astype(np.float32),
        "liver": np.ascontiguousarray(liver, dtype=np.float16),
        "liver_found": np.array(liver_found),
        "spacing": np.asarray(spacing, dtype=np.float64),
        **matched,
        **_patient_arrays(reference_label_map, analysis, schema),
        **_candidate_records(case_id, analysis.detections, len(schema.lesions)),
    }
    return {key: arrays[key] for key in ARRAY_SPEC}
