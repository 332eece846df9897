"""Lesion- and patient-level validation of an nnU-Net fold (what nnUNetTrainerPLUS runs after nnU-Net's own).

Reads the fold's exported validation softmax (``validation/<case>.npz`` + ``.pkl``), runs the post-processing
at every sensitivity of the schema, matches against nnU-Net's ``gt_segmentations`` and writes
``validation/<case>_lesions.json`` (one per case, docs/case_json.md) and ``validation/plus_summary.json``::

    {"meta": {...},
     "sensitivities": {"f=1": <summary>, "f=4": <summary>},   # the label map at each factor
     "tiers": {"confident": <summary>,                         # highest factor, suspicious lesions removed
               "confident+suspicious": <summary>},             # all candidates at the highest factor
     "suspicious_tier": {"n", "tp", "fl", "fp"},               # what the suspicious tier adds
     "per_case": [...]}                                        # evaluate_case results at the first factor

Each ``<summary>`` has the keys of :func:`nnunet_plus.evaluation.summary.summarize` without its bulky
``per_case`` list. Patient probabilities (AUCs) are LiverMax's.
"""
from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_plus.case_analysis import analyse_case
from nnunet_plus.evaluation.case import evaluate_case
from nnunet_plus.evaluation.summary import format_patient_table, summarize
from nnunet_plus.files.image_io import read_image
from nnunet_plus.postprocessing.seg2det import seg2det
from nnunet_plus.files.safe_load import load_properties, load_softmax
from nnunet_plus.schema import LesionSchema
from nnunet_plus.files.atomic import write_json_atomic

logger = logging.getLogger(__name__)

SUMMARY_FILE = "plus_summary.json"
CASE_SUFFIX = "_lesions.json"
CONFIDENT, ALL_TIERS = "confident", "confident+suspicious"


def sensitivity_key(factor: float) -> str:
    """``4.0 -> 'f=4'``."""
    return f"f={factor:g}"


def load_softmax_export(npz_file: Path) -> tuple[np.ndarray, dict]:
    """nnU-Net's exported probabilities (C, Z, Y, X) in the raw image's geometry and its ``.pkl`` properties
    (read as plain data, never unpickled with code: :func:`nnunet_plus.files.safe_load.load_properties`)."""
    pkl_file = npz_file.with_suffix(".pkl")
    if not pkl_file.is_file():
        raise FileNotFoundError(f"{pkl_file} is missing (nnU-Net writes it beside {npz_file.name}); rerun the "
                                "validation with `nnUNetv2_train ... --val --npz`")
    return load_softmax(npz_file), load_properties(pkl_file)


def confident_label_map(label_maps: np.ndarray, instances: np.ndarray, suspicious_ids: Sequence[int]) -> np.ndarray:
    """The highest-factor label map with its suspicious lesions removed.

    ``label_maps`` (k, Z, Y, X); ``instances`` (Z, Y, X) lesion ids of the highest factor. A suspicious lesion
    does not overlap any lesion at the first factor, so its voxels take the first factor's (liver or
    background) labels.
    """
    removed = np.isin(instances, np.asarray(suspicious_ids, dtype=instances.dtype))
    return np.where(removed, label_maps[0], label_maps[-1])


def _read_image(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(path)).astype(np.float32)


def validate_case(npz_file: Path, reference_file: Path, schema: LesionSchema, *,
                  image_file: Path | None = None, criterion: str = "overlap",
                  min_volume_cm3: float = 0.0) -> dict:
    """Post-process one validation case, write ``<case>_lesions.json`` beside the ``.npz``, evaluate it.

    Returns ``{"case", "by_key": {summary key: evaluate_case result}, "suspicious": {tp, fl, fp, n}}``.
    """
    case = npz_file.name[: -len(".npz")]
    probabilities, properties = load_softmax_export(npz_file)
    reference = sitk.GetArrayFromImage(read_image(reference_file))
    if reference.shape != probabilities.shape[1:]:
        raise ValueError(f"{npz_file} has shape {probabilities.shape[1:]} but {reference_file} has "
                         f"{reference.shape}; the export and the reference do not belong together")
    spacing = tuple(float(s) for s in properties["sitk_stuff"]["spacing"][::-1])
    image = _read_image(image_file) if image_file is not None and image_file.is_file() else None
    analysis = analyse_case(probabilities, schema, image=image, spacing=spacing,
                            origin=properties["sitk_stuff"]["origin"],
                            direction=properties["sitk_stuff"]["direction"])
    case_json = analysis.to_json(schema)
    case_json["case"] = case
    write_json_atomic(npz_file.with_name(case + CASE_SUFFIX), case_json)

    patient = {"probabilities": {k: float(v) for k, v in case_json["patient"]["probabilities"].items()}}

    def evaluate(prediction: np.ndarray, instances: np.ndarray, records: Sequence[dict]) -> dict:
        lesions = [{"id": r["id"], "label": r["label"], "probability": _class_probability(r, schema)}
                   for r in records]
        return evaluate_case(reference, prediction, schema, spacing=spacing, criterion=criterion,
                             min_volume_cm3=min_volume_cm3, case=case,
                             predicted_json={"case": case, "lesions": lesions, "patient": patient},
                             predicted_instances=instances)

    first, last = sensitivity_key(schema.sensitivities[0]), sensitivity_key(schema.sensitivities[-1])
    by_key = {first: evaluate(analysis.label_maps[0], analysis.base_detections.instances,
                              analysis.base_detections.lesions)}
    candidates = analysis.detections
    if len(schema.sensitivities) > 1:
        for i, f in enumerate(schema.sensitivities[1:-1], start=1):
            det = seg2det(analysis.label_maps[i], schema.lesion_labels, priority=schema.priority_labels,
                          probabilities=probabilities, spacing=spacing,
                          min_volume_mm3=schema.min_lesion_volume_mm3)
            by_key[sensitivity_key(f)] = evaluate(analysis.label_maps[i], det.instances, det.lesions)
        by_key[last] = evaluate(analysis.label_maps[-1], candidates.instances, candidates.lesions)
    suspicious_ids = [r["id"] for r in candidates.lesions if r["tier"] != CONFIDENT]
    by_key[CONFIDENT] = evaluate(confident_label_map(analysis.label_maps, candidates.instances, suspicious_ids),
                                 candidates.instances, [r for r in candidates.lesions if r["tier"] == CONFIDENT])
    by_key[ALL_TIERS] = by_key[last]
    outcomes = [r["outcome"] for r in by_key[last]["predicted_lesions"] if r["id"] in set(suspicious_ids)]
    suspicious = {"n": len(outcomes), **{k: outcomes.count(k) for k in ("tp", "fl", "fp")}}
    return {"case": case, "by_key": by_key, "suspicious": suspicious}


def _class_probability(record: dict, schema: LesionSchema) -> float | None:
    """nnU-Net's confidence in a lesion: the mean softmax (prior) of its own class over its voxels."""
    prior = record.get("prior")
    if prior is None:
        return None
    return float(prior[schema.lesion_labels.index(int(record["label"]))])


def _validate_case_star(args: tuple) -> dict:
    npz_file, reference_file, schema, kwargs = args
    return validate_case(npz_file, reference_file, schema, **kwargs)


def validate_folder(validation_folder: str | Path, reference_folder: str | Path, schema: LesionSchema, *,
                    image_folder: str | Path | None = None, file_ending: str = ".nii.gz",
                    criterion: str = "overlap", min_volume_cm3: float = 0.0, num_processes: int = 1,
                    quiet: bool = False) -> dict:
    """Validate every ``<case>.npz`` of ``validation_folder``; write and return ``plus_summary.json``.

    ``reference_folder`` holds ``<case><file_ending>`` label maps (nnU-Net's ``gt_segmentations``);
    ``image_folder`` (optional, nnU-Net raw ``imagesTr``) gives HU statistics from ``<case>_0000<file_ending>``.
    """
    validation_folder, reference_folder = Path(validation_folder), Path(reference_folder)
    npz_files = sorted(validation_folder.glob("*.npz"))
    if not npz_files:
        raise FileNotFoundError(f"no <case>.npz softmax export in {validation_folder}; run the validation with "
                                "`nnUNetv2_train ... --val --npz`")
    jobs = []
    for npz_file in npz_files:
        case = npz_file.name[: -len(".npz")]
        reference_file = reference_folder / f"{case}{file_ending}"
        if not reference_file.is_file():
            raise FileNotFoundError(f"reference {reference_file} for {npz_file.name} is missing")
        image_file = Path(image_folder) / f"{case}_0000{file_ending}" if image_folder else None
        jobs.append((npz_file, reference_file, schema,
                     {"image_file": image_file, "criterion": criterion, "min_volume_cm3": min_volume_cm3}))
    progress = dict(total=len(jobs), desc="lesion validation", disable=quiet)
    if num_processes > 1:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = list(tqdm(pool.imap(_validate_case_star, jobs), **progress))
    else:
        results = [_validate_case_star(job) for job in tqdm(jobs, **progress)]

    def aggregate(key: str) -> dict:
        summary = summarize([r["by_key"][key] for r in results], schema, criterion=criterion,
                            min_volume_cm3=min_volume_cm3)
        summary.pop("per_case")
        return summary

    keys = [sensitivity_key(f) for f in schema.sensitivities]
    suspicious = {k: sum(r["suspicious"][k] for r in results) for k in ("n", "tp", "fl", "fp")}
    summary = {
        "meta": {"n_cases": len(results), "sensitivities": list(schema.sensitivities), "criterion": criterion,
                 "min_volume_cm3": min_volume_cm3, "patient_probabilities": "livermax"},
        "sensitivities": {k: aggregate(k) for k in keys},
        "tiers": {CONFIDENT: aggregate(CONFIDENT), ALL_TIERS: aggregate(ALL_TIERS)},
        "suspicious_tier": suspicious,
        "per_case": [r["by_key"][keys[0]] for r in results],
    }
    write_json_atomic(validation_folder / SUMMARY_FILE, summary)
    return summary


def format_validation_table(summary: dict) -> str:
    """The compact table printed to the training log: one row per sensitivity and tier."""
    rows = {**{f"nnU-Net {k}": s for k, s in summary["sensitivities"].items()},
            **{f"tier {k}": s for k, s in summary["tiers"].items()}}
    s = summary["suspicious_tier"]
    return (format_patient_table(rows)
            + f"\nsuspicious tier adds {s['n']} lesions: {s['tp']} TP, {s['fl']} FL, {s['fp']} FP")


def run_lesion_validation(trainer) -> dict:
    """Entry point used by nnUNetTrainerPLUS after nnU-Net's own validation."""
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.paths import nnUNet_raw

    folder = Path(trainer.output_folder) / "validation"
    references = Path(trainer.preprocessed_dataset_folder_base) / "gt_segmentations"
    images = Path(nnUNet_raw) / trainer.plans_manager.dataset_name / "imagesTr" if nnUNet_raw else None
    summary = validate_folder(folder, references, trainer.lesion_schema, image_folder=images,
                              file_ending=trainer.dataset_json["file_ending"],
                              min_volume_cm3=trainer.lesion_schema.min_lesion_volume_mm3 / 1000.0,
                              num_processes=min(default_num_processes, 4), quiet=True)
    trainer.print_to_log_file(f"nnunet_plus lesion/patient validation ({folder / SUMMARY_FILE}):\n"
                              + format_validation_table(summary), add_timestamp=False)
    return summary
