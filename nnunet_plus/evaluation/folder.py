"""Evaluate a folder of predictions against a folder of reference label maps (file layer + multiprocessing).

Layout (nnU-Net's): ``REF/<case><ending>`` and ``PRED/<case><ending>`` label maps, optionally
``PRED/<case>.json`` (the per-case result JSON of nnunet_plus) and ``PRED/<case>_instances<ending>`` (its
lesion-id map, read only together with the JSON). Cases are those of the reference folder.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_plus.evaluation.case import evaluate_case
from nnunet_plus.evaluation.summary import summarize
from nnunet_plus.files.image_io import Geometry, read_image
from nnunet_plus.schema import MIN_REFERENCE_VOLUME_CM3, LesionSchema

logger = logging.getLogger(__name__)

INSTANCES_SUFFIX = "_instances"


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """A label image as a (Z, Y, X) int array plus its :class:`~nnunet_plus.files.image_io.Geometry`; ValueError
    naming the file if it is truncated, corrupt (:func:`nnunet_plus.files.image_io.read_image`) or not
    integer-valued."""
    path = Path(path)
    image = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise ValueError(f"{path} is not a 3D single-channel label map")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"{path} holds non-integer values; is it a probability map instead of a label map?")
        array = array.astype(np.int32)
    return array, Geometry.of(image)


def list_cases(reference_dir: str | os.PathLike, file_ending: str = ".nii.gz") -> list[str]:
    """Case identifiers of the reference folder (files ``<case><file_ending>``), sorted."""
    folder = Path(reference_dir)
    if not folder.is_dir():
        raise ValueError(f"reference folder {folder} does not exist")
    cases = sorted(p.name[: -len(file_ending)] for p in folder.iterdir()
                   if p.is_file() and p.name.endswith(file_ending)
                   and not p.name[: -len(file_ending)].endswith(INSTANCES_SUFFIX))
    if not cases:
        raise ValueError(f"no *{file_ending} label maps in the reference folder {folder}")
    return cases


def _read_case_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc


def evaluate_case_files(reference_file: str | os.PathLike, prediction_file: str | os.PathLike | None,
                        schema: LesionSchema, *, criterion: str = "overlap",
                        min_volume_cm3: float = MIN_REFERENCE_VOLUME_CM3,
                        file_ending: str = ".nii.gz", connectivity: str | int = "paper") -> dict:
    """:func:`evaluate_case` on files ``<case><file_ending>``.

    ``prediction_file=None`` means a missing prediction: every reference lesion is a false negative and the
    patient is predicted normal (the result has ``missing: true``). ``<case>.json`` and
    ``<case>_instances<file_ending>`` beside the prediction are used when present.
    """
    reference_file = Path(reference_file)
    if not reference_file.name.endswith(file_ending):
        raise ValueError(f"{reference_file} does not end with {file_ending}")
    case = reference_file.name[: -len(file_ending)]
    reference, ref_geometry = read_label_map(reference_file)
    options = {"spacing": ref_geometry.spacing_zyx, "criterion": criterion, "min_volume_cm3": min_volume_cm3,
               "case": case, "connectivity": connectivity}
    if prediction_file is None:
        try:
            result = evaluate_case(reference, np.zeros_like(reference), schema, **options)
        except ValueError as exc:
            raise ValueError(f"case {case}: {exc}") from exc
        result["missing"] = True
        return result
    prediction_file = Path(prediction_file)
    prediction, pred_geometry = read_label_map(prediction_file)
    mismatch = ref_geometry.mismatch(pred_geometry)
    if mismatch:
        raise ValueError(f"case {case}: geometry of {prediction_file} differs from the reference ({mismatch})")
    case_json = _read_case_json(prediction_file.with_name(f"{case}.json"))
    instances = None
    instances_file = prediction_file.with_name(f"{case}{INSTANCES_SUFFIX}{file_ending}")
    if instances_file.is_file():
        if case_json is None:
            logger.warning("%s has no %s.json beside it; its lesion ids cannot be labelled, ignoring it",
                           instances_file, case)
        else:
            instances, inst_geometry = read_label_map(instances_file)
            mismatch = ref_geometry.mismatch(inst_geometry)
            if mismatch:
                raise ValueError(f"case {case}: geometry of {instances_file} differs from the reference ({mismatch})")
    try:
        return evaluate_case(reference, prediction, schema, predicted_json=case_json,
                             predicted_instances=instances, **options)
    except ValueError as exc:
        raise ValueError(f"case {case}: {exc}") from exc


def _worker(args: tuple) -> dict:
    reference_file, prediction_file, schema, options = args
    return evaluate_case_files(reference_file, prediction_file, schema, **options)


def default_num_processes() -> int:
    """nnU-Net's default worker count (``nnUNet_def_n_proc``, default 8), capped by the CPU count."""
    from nnunetv2.configuration import default_num_processes as nnunet_default

    return max(1, min(int(nnunet_default), os.cpu_count() or 1))


def evaluate_folders(reference_dir: str | os.PathLike, prediction_dir: str | os.PathLike, schema: LesionSchema, *,
                     criterion: str = "overlap", min_volume_cm3: float = MIN_REFERENCE_VOLUME_CM3,
                     allow_missing: bool = False, num_processes: int | None = None, file_ending: str = ".nii.gz",
                     connectivity: str | int = "paper", cases: Sequence[str] | None = None,
                     quiet: bool = False) -> dict:
    """Evaluate every reference case and return the summary dict (see :mod:`nnunet_plus.evaluation.summary`).

    A case without ``PRED/<case><file_ending>`` raises ValueError naming it, or with ``allow_missing`` counts
    as all false negatives. ``cases`` restricts the evaluation to those case ids. ``num_processes``
    defaults to :func:`default_num_processes`; 1 runs in this process.
    """
    prediction_dir = Path(prediction_dir)
    if not prediction_dir.is_dir():
        raise ValueError(f"prediction folder {prediction_dir} does not exist")
    all_cases = list_cases(reference_dir, file_ending)
    if cases is not None:
        unknown = sorted(set(cases) - set(all_cases))
        if unknown:
            raise ValueError(f"case(s) {unknown} are not in the reference folder {reference_dir}")
        all_cases = [c for c in all_cases if c in set(cases)]
    missing = [c for c in all_cases if not (prediction_dir / f"{c}{file_ending}").is_file()]
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} case(s) missing from the prediction folder {prediction_dir}: {shown} "
                         f"(expected <case>{file_ending}); use --allow-missing to count them as all false negatives")
    if missing:
        logger.warning("%d case(s) missing from %s, counted as all false negatives: %s", len(missing),
                       prediction_dir, ", ".join(missing))
    options = {"criterion": criterion, "min_volume_cm3": min_volume_cm3, "file_ending": file_ending,
               "connectivity": connectivity}
    jobs = [(Path(reference_dir) / f"{c}{file_ending}",
             None if c in set(missing) else prediction_dir / f"{c}{file_ending}",
             schema, options) for c in all_cases]
    n_proc = default_num_processes() if num_processes is None else int(num_processes)
    if n_proc < 1:
        raise ValueError(f"num_processes must be >= 1, got {n_proc}")
    progress = {"total": len(jobs), "desc": "evaluating", "unit": "case", "disable": quiet}
    if n_proc == 1 or len(jobs) == 1:
        per_case = [_worker(job) for job in tqdm(jobs, **progress)]
    else:
        with multiprocessing.get_context("spawn").Pool(min(n_proc, len(jobs))) as pool:
            per_case = list(tqdm(pool.imap(_worker, jobs), **progress))
    return summarize(per_case, schema, criterion=criterion, min_volume_cm3=min_volume_cm3)
