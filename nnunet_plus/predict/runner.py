"""Running many cases: part selection, --continue_prediction, a three-stage pipeline, per-case failures.

The pipeline overlaps the stages the way nnU-Net's ``predict_from_files`` does, with threads instead of
spawned processes (no pickling of full-size arrays, no per-worker torch import; numpy, SimpleITK, scipy and
torch release the GIL in their heavy loops)::

    prepare(case)  -> read + validate + preprocess     thread pool (-npp workers), a few cases ahead
    compute(case)  -> network forward pass             calling thread, in case order (the GPU stays busy)
    finish(case)   -> resample, post-process, write    thread pool (-nps workers), bounded queue

``num_prepare = 0`` / ``num_finish = 0`` run that stage in the calling thread (fully sequential, like
``nnUNetv2_predict -npp 0 -nps 0``). An exception in any stage fails that case only: it is logged with its
traceback and listed in the :class:`RunReport`.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_plus.files.atomic import write_json_atomic
from nnunet_plus.predict.outputs import (RUN_INFO, case_paths, check_output_names, is_case_done, write_case,
                                         write_label_descriptions, write_probabilities, write_tables)
from nnunet_plus.refine import LIVER_HU_RANGE, CaseResult
from nnunet_plus.schema import LesionSchema

logger = logging.getLogger(__name__)


@dataclass
class CaseFailure:
    case: str
    error: str


@dataclass
class RunReport:
    """What a run did: cases written, cases skipped (already done), cases that failed (with the reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def select_cases(cases: Sequence[str], output_folder: str | Path, *, num_parts: int = 1, part_id: int = 0,
                 continue_prediction: bool = False, save_probabilities: bool = False,
                 overlays: bool = False, dicom_inputs: Mapping[str, Sequence[Path]] | None = None
                 ) -> tuple[list[str], list[str]]:
    """``(to_do, skipped)``: this part's share of the sorted cases (nnU-Net's ``cases[part_id::num_parts]``),
    minus the finished ones when ``continue_prediction`` (:func:`~nnunet_plus.predict.outputs.is_case_done`).
    ``cases`` are all the cases of the input: names whose outputs would collide are refused first
    (:func:`~nnunet_plus.predict.outputs.check_output_names`). ``dicom_inputs`` (with ``--dicom-seg``: each
    case's input files): a DICOM series case is finished only when its ``<case>_sr.dcm`` exists too."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"-part_id must be in 0..num_parts-1 (counting starts at 0), got -num_parts {num_parts} "
                         f"-part_id {part_id}")
    check_output_names(cases, output_folder, save_probabilities=save_probabilities, overlays=overlays)
    mine = sorted(cases)[part_id::num_parts]
    if not continue_prediction:
        return mine, []
    done = [c for c in mine if is_case_done(output_folder, c, save_probabilities=save_probabilities,
                                            overlays=overlays,
                                            dicom_seg_input=None if dicom_inputs is None else dicom_inputs.get(c, ()))]
    finished = set(done)
    return [c for c in mine if c not in finished], done


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ValueError, OSError)) else str(exc)


def run_pipeline(cases: Sequence[str], *, prepare: Callable[[str], object], compute: Callable[[str, object], object],
                 finish: Callable[[str, object], None], num_prepare: int = 1, num_finish: int = 1,
                 progress: bool = True, report: RunReport | None = None) -> RunReport:
    """Run ``finish(case, compute(case, prepare(case)))`` for every case (see the module docstring)."""
    report = report if report is not None else RunReport()
    prep_pool = ThreadPoolExecutor(num_prepare, thread_name_prefix="plus-prepare") if num_prepare > 0 else None
    fin_pool = ThreadPoolExecutor(num_finish, thread_name_prefix="plus-finish") if num_finish > 0 else None
    prepared: deque[tuple[str, Future | None]] = deque()
    finishing: deque[tuple[str, Future]] = deque()
    upcoming = iter(cases)
    bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress)

    def fail(case: str, exc: BaseException) -> None:
        logger.error("case %s failed: %s", case, _error_text(exc), exc_info=logger.isEnabledFor(logging.DEBUG))
        report.failures.append(CaseFailure(case, _error_text(exc)))
        bar.update()

    def collect(case: str, future: Future) -> None:
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the others
            fail(case, exc)
            return
        report.done.append(case)
        bar.update()

    def refill() -> None:
        while len(prepared) < max(1, num_prepare) + 1:
            case = next(upcoming, None)
            if case is None:
                return
            prepared.append((case, prep_pool.submit(prepare, case) if prep_pool else None))

    try:
        refill()
        while prepared:
            case, future = prepared.popleft()
            refill()
            try:
                item = future.result() if future is not None else prepare(case)
                item = compute(case, item)
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the others
                fail(case, exc)
                continue
            if fin_pool is None:
                collect(case, _run_now(finish, case, item))
                continue
            while len(finishing) > num_finish:
                collect(*finishing.popleft())
            finishing.append((case, fin_pool.submit(finish, case, item)))
            del item
        while finishing:
            collect(*finishing.popleft())
    finally:
        for pool in (prep_pool, fin_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return report


def _run_now(function: Callable, *args) -> Future:
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except Exception as exc:  # noqa: BLE001 - handed to collect(), which records the failure
        future.set_exception(exc)
    return future


def write_case_outputs(output_folder: str | Path, result: CaseResult, *, schema: LesionSchema,
                       image: np.ndarray | None, probabilities: np.ndarray | None = None,
                       properties: dict | None = None, overlays: bool = False, dicom=None) -> None:
    """Every per-case file: probabilities (if given), overlay (if asked), DICOM SEG + SR (``dicom``: a
    :class:`~nnunet_plus.predict.dicom_out.DicomRequest`, ``--dicom-seg``), label maps, JSON last;
    a case without liver, or whose liver region is not liver tissue (:data:`~nnunet_plus.refine.LIVER_HU_RANGE`),
    is logged as a warning."""
    patient = result.record["patient"]
    if not patient["liver_found"]:
        logger.warning("case %s: no liver found; its patient class %r means that nothing was seen, not a healthy "
                       "liver (check that the image is an abdominal CT covering the liver)", result.case,
                       patient["class"])
    elif patient.get("liver_hu_median") is not None and not (
            LIVER_HU_RANGE[0] <= patient["liver_hu_median"] <= LIVER_HU_RANGE[1]):
        logger.warning("case %s: the liver found has a median of %.0f HU, outside the %g to %g HU of liver tissue; "
                       "its lesions and patient class %r are not trustworthy (check that the image is an abdominal "
                       "CT in HU covering the liver)", result.case, patient["liver_hu_median"], *LIVER_HU_RANGE,
                       patient["class"])
    if probabilities is not None:
        write_probabilities(probabilities, properties, output_folder, result.case)
    if overlays:
        from nnunet_plus.predict.overlays import write_overlay

        spacing = result.geometry.spacing_zyx
        write_overlay(case_paths(output_folder, result.case)["overlay"],
                      image if image is not None else np.zeros((1, *result.label_map.shape), np.float32),
                      result.label_map, result.instances, result.record["lesions"], schema,
                      title=f"{result.case}: {result.record['patient']['class']}", aspect=spacing[1] / spacing[2])
    if dicom is not None:
        from nnunet_plus.predict.dicom_out import write_case_dicom

        write_case_dicom(output_folder, result, schema, dicom)
    write_case(output_folder, result)


def finish_run(output_folder: str | Path, schema: LesionSchema, report: RunReport, run_info: dict) -> None:
    """Run-level files: label descriptions, the run's settings + report (the last run's at the top level, and
    every part's report under ``"parts"``: ``{"<part_id>/<num_parts>": report}``), the cohort tables (all
    cases)."""
    write_label_descriptions(output_folder, schema)
    info = dict(run_info)
    info["report"] = {"done": report.done, "skipped": report.skipped,
                      "failures": [{"case": f.case, "error": f.error} for f in report.failures]}
    num_parts = info.get("num_parts", 1)
    path = Path(output_folder) / RUN_INFO
    info["parts"] = {**_previous_parts(path, num_parts), f"{info.get('part_id', 0)}/{num_parts}": info["report"]}
    write_json_atomic(path, info)
    write_tables(output_folder)


def _previous_parts(path: Path, num_parts: int) -> dict:
    """The ``"parts"`` reports of the run-info file ``path`` from a split into ``num_parts`` parts; ``{}`` when
    there is none, or (with a warning) when the file cannot be read."""
    try:
        parts = json.loads(path.read_text(encoding="utf-8")).get("parts", {})
        if not isinstance(parts, dict):
            raise ValueError(f'"parts" is a JSON {type(parts).__name__}, not an object')
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:  # AttributeError: not a JSON object
        logger.warning("%s cannot be read (%s); the reports of earlier parts in it are not kept", path, exc)
        return {}
    return {key: value for key, value in parts.items() if key.endswith(f"/{num_parts}")}

