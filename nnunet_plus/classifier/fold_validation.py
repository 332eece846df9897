"""``validation/summary.json`` of a classifier fold: nnU-Net alone vs nnU-Net + PLUS on the same cases.

For every validation case the raw image and reference labels (nnU-Net raw dataset) and the case's
out-of-fold softmax (the file the candidate bank was built from) are read again, and the refinement rule of
:mod:`nnunet_plus.refine` (:class:`~nnunet_plus.refine.CaseRefiner`, the code of
``nnunet_plus_predict``) produces the two predictions:

* **nnU-Net alone** (``"nnunet"``): the lesions at the first (confident, f=1) sensitivity with nnU-Net's
  class, patient probabilities from LiverMax (``nnunet_plus_predict --no-classifier``);
* **nnU-Net + PLUS** (``"nnunet+plus"``): the candidates (nnU-Net's f = 1 lesions and the new f = 4 ones)
  decided by the classifier's operating point (:mod:`nnunet_plus.classifier.operating_point`), patient
  probabilities from PLUS where the operating point says so (``patient_from_plus``), else LiverMax.

Both are scored with :func:`~nnunet_plus.evaluation.case.evaluate_case` and aggregated with
:func:`~nnunet_plus.evaluation.summary.summarize` (the metric set of ``plus_summary.json``)::

    {"meta": {...}, "nnunet": <summary>, "nnunet+plus": <summary>,
     "comparison": compare_summaries(nnunet, nnunet+plus),
     "per_case": {"nnunet": [...], "nnunet+plus": [...]}}

beside ``comparison.txt`` (PLUS Table 1 layout with deltas) and ``overview.png`` (per-class precision /
recall, FROC and the patient confusion matrix of both).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_plus.files.integrity import check_complete
from nnunet_plus.schema import LesionSchema
from nnunet_plus.files.atomic import atomic_path, write_json_atomic

__all__ = ["NNUNET_KEY", "PLUS_KEY", "SUMMARY_FILE", "evaluate_classifier"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
COMPARISON_FILE = "comparison.txt"
OVERVIEW_FILE = "overview.png"
NNUNET_KEY, PLUS_KEY = "nnunet", "nnunet+plus"


def _load_case(case: str, raw_dataset_dir: Path, dataset_json: Mapping, entry: Mapping):
    """(image (C, Z, Y, X) float32, reference (Z, Y, X) int16, probabilities, Geometry) of a bank case
    (``entry``: its ``bank.json`` entry)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_plus.classifier.bank_inputs import bank_case_files
    from nnunet_plus.files.image_io import Geometry

    softmax_file = Path(entry["softmax"])
    images, label = bank_case_files(raw_dataset_dir, dataset_json, case, entry)
    missing = [str(p) for p in [*images, label] if not p.is_file()] if images else [f"images of {case}"]
    if missing:
        raise FileNotFoundError(f"validation case {case}: missing {missing} in "
                                f"{entry.get('raw_dir', raw_dataset_dir)}")
    if not softmax_file.is_file():
        raise FileNotFoundError(f"validation case {case}: softmax export {softmax_file} (the candidate bank's "
                                "source) no longer exists; rerun the nnU-Net validation with --npz")
    for path in (*images, label):
        check_complete(path)  # nnU-Net's reader takes the missing part of a cut .nii.gz for zeros
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(images[0]), verbose=False)()
    image, properties = reader.read_images([str(p) for p in images])
    reference, _ = reader.read_seg(str(label))
    with np.load(softmax_file, allow_pickle=False) as data:
        probabilities = data["probabilities"]
    if probabilities.shape[1:] != image.shape[1:]:
        raise ValueError(f"validation case {case}: softmax {softmax_file} has shape {probabilities.shape} but the "
                         f"image has {image.shape[1:]}")
    geometry = Geometry.from_nnunet_properties(properties, image.shape[1:])
    return image.astype(np.float32), np.rint(reference[0]).astype(np.int16), probabilities, geometry


def evaluate_classifier(inference, cases: Sequence[str], *, bank_metadata: Mapping,
                        raw_dataset_dir: str | os.PathLike, schema: LesionSchema, output_folder: str | os.PathLike,
                        meta: Mapping | None = None, criterion: str = "overlap", plots: bool = True,
                        quiet: bool = False) -> dict:
    """Evaluate nnU-Net alone and nnU-Net + PLUS on ``cases``; write and return ``summary.json``.

    Parameters
    ----------
    inference : a :class:`~nnunet_plus.classifier.inference.PLUSInference` (the fold's model).
    cases : validation case ids (each in ``bank_metadata["cases"]`` with its ``softmax`` file).
    bank_metadata : the candidate bank's ``bank.json`` (softmax files, seg2det connectivity).
    raw_dataset_dir : nnU-Net raw dataset folder (images and reference labels).
    output_folder : where summary.json, comparison.txt and overview.png go (the fold's ``validation/``).
    meta : extra entries for the summary's ``meta`` block (fold, checkpoint, epoch, ...).
    criterion : lesion matching criterion of the evaluation.
    plots : also draw ``overview.png``.
    """
    from nnunet_plus.evaluation.case import evaluate_case
    from nnunet_plus.evaluation.summary import compare_summaries, summarize
    from nnunet_plus.refine import CaseRefiner

    raw_dataset_dir, output_folder = Path(raw_dataset_dir), Path(output_folder)
    dataset_json = json.loads((raw_dataset_dir / "dataset.json").read_text())
    unknown = [c for c in cases if c not in bank_metadata.get("cases", {})]
    if unknown:
        raise ValueError(f"validation case(s) {unknown[:5]} are not in the candidate bank")
    connectivity = bank_metadata["settings"]["connectivity"]
    min_volume_cm3 = schema.min_lesion_volume_mm3 / 1000.0
    refiners = {NNUNET_KEY: CaseRefiner(schema, connectivity=connectivity),
                PLUS_KEY: CaseRefiner(schema, classifier=inference, connectivity=connectivity)}
    per_case: dict[str, list[dict]] = {NNUNET_KEY: [], PLUS_KEY: []}
    for case in tqdm(list(cases), desc="classifier validation", unit="case", disable=quiet):
        image, reference, probabilities, geometry = _load_case(case, raw_dataset_dir, dataset_json,
                                                               bank_metadata["cases"][case])
        for key, refiner in refiners.items():
            result = refiner.refine(case, image, probabilities, geometry)
            per_case[key].append(evaluate_case(reference, result.label_map, schema, spacing=geometry.spacing_zyx,
                                               criterion=criterion, min_volume_cm3=min_volume_cm3, case=case,
                                               predicted_json=result.record, predicted_instances=result.instances,
                                               connectivity=connectivity))
    summaries = {}
    for key, records in per_case.items():
        summaries[key] = summarize(records, schema, criterion=criterion, min_volume_cm3=min_volume_cm3)
        summaries[key].pop("per_case")
    meta = {**dict(meta or {}), "n_cases": len(cases), "cases": list(cases), "criterion": criterion,
            "min_volume_cm3": min_volume_cm3, "sensitivities": list(schema.sensitivities),
            "methods": _methods(inference.rule.describe(schema.lesions))}
    summary = {"meta": meta, NNUNET_KEY: summaries[NNUNET_KEY], PLUS_KEY: summaries[PLUS_KEY],
               "comparison": compare_summaries(summaries[NNUNET_KEY], summaries[PLUS_KEY]), "per_case": per_case}
    _write_outputs(summary, output_folder, plots=plots)
    return summary


def _methods(rule: str) -> dict[str, str]:
    """The summary's ``meta["methods"]``: what each of the two predictions is (``rule``: the operating point)."""
    return {NNUNET_KEY: "nnU-Net alone: lesions at the first sensitivity with nnU-Net's class, patient "
                        "probabilities from LiverMax",
            PLUS_KEY: "nnU-Net + PLUS: nnU-Net's f=1 lesions and new f=4 candidates decided by the operating point "
                      f"({rule}); patient probabilities from LiverMax unless the operating point names them"}


def _write_outputs(summary: Mapping, output_folder: Path, *, plots: bool) -> None:
    """``summary.json``, ``comparison.txt`` and (``plots``) ``overview.png`` into ``output_folder`` (atomic)."""
    from nnunet_plus.evaluation.summary import format_comparison

    alone, plus = summary[NNUNET_KEY], summary[PLUS_KEY]
    output_folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_folder / SUMMARY_FILE, summary)
    text = format_comparison(alone, plus, names=("nnU-Net", "nnU-Net + PLUS"))
    with atomic_path(output_folder / COMPARISON_FILE) as tmp:
        tmp.write_text(text + "\n")
    if plots:
        from nnunet_plus.evaluation.plots import plot_overview

        plot_overview({"nnU-Net": alone, "nnU-Net + PLUS": plus}, output_folder / OVERVIEW_FILE)
