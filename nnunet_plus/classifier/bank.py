"""The candidate bank build: a folder of per-case bank files (the PLUS classifier's training data) from
nnU-Net's out-of-fold softmax exports, one worker process per case, resumable.

Layers: :func:`~nnunet_plus.classifier.candidate_arrays.build_case_candidates` (one case's arrays) ->
:func:`~nnunet_plus.classifier.bank_io.save_case_bank` / :func:`~nnunet_plus.classifier.bank_io.load_case_bank`
(one file) -> :func:`build_candidate_bank` (folder, multiprocessing, resumable: valid files are kept) ->
:func:`~nnunet_plus.classifier.bank_nnunet.bank_from_nnunet_results` (nnU-Net's folders from the environment
variables). The input files are found and read by :mod:`nnunet_plus.classifier.bank_inputs`.

Lesion shuffle (``lesion_shuffles=K``, cascaded paper §III-B eq. 9; :mod:`nnunet_plus.classifier.shuffle`): every
case also gets K shuffled copies ``<case>__shuffle1..K`` (its lesions and nnU-Net's candidates moved within its
liver, image + reference + softmax together), analysed by ``build_case_candidates`` like any case. A copy's
``bank.json`` entry names its original (``"shuffle_of"``) and the original's softmax file;
:func:`~nnunet_plus.classifier.splits.check_bank_for_fold` makes it a training case of exactly the folds that
train on the original, and never a validation case. Copy ``k`` of a case is drawn with the seed
``[crc32(case id), k]``, so a rebuild or a resumed build makes the same copy.

Extra cases (``extra_dir``, issue 13 point 5): labelled cases that no nnU-Net fold trained on, predicted by the
trained folds (``nnUNetv2_predict --save_probabilities``), add lesions to learn from and validation patients to
fit the operating point on, without more stage-one training. The folder holds ``imagesTr/`` and ``labelsTr/`` in
the raw dataset's naming (same file ending and channels) and ``predictions/`` (``<case>.npz`` + ``<case>.pkl``).
Their ``bank.json`` entries say ``"extra": true`` and name the folder (``"raw_dir"``);
:func:`~nnunet_plus.classifier.splits.check_bank_for_fold` spreads them over the classifier folds.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_plus.files.atomic import write_json_atomic
from nnunet_plus.classifier.bank_inputs import (CaseInputs, case_files, extra_case_files, read_case_inputs,
                                                softmax_files)
from nnunet_plus.classifier.bank_io import (METADATA_FILE, CandidateBankError, bank_metadata, load_case_bank,
                                            read_bank_metadata, save_case_bank)
from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.candidate_arrays import build_case_candidates
from nnunet_plus.classifier.shuffle import shuffle_case, shuffled_case_id
from nnunet_plus.schema import LesionSchema

__all__ = ["build_candidate_bank"]

logger = logging.getLogger(__name__)


# ---- one case, in a worker process ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _CaseJob:
    """Everything a worker process needs for one case (picklable)."""

    case_id: str
    image_files: tuple[str, ...]
    label_file: str
    softmax_file: str
    out_file: str
    schema: LesionSchema
    settings: BankSettings
    target_spacing: tuple[float, ...]
    channel_names: tuple[str, ...]
    reader: type
    build_original: bool = True
    shuffles: tuple[int, ...] = ()


def _shuffle_rng(case_id: str, copy: int) -> np.random.Generator:
    """The generator of shuffled copy ``copy`` of ``case_id`` (reproducible across builds and processes)."""
    return np.random.default_rng([zlib.crc32(case_id.encode("utf-8")), int(copy)])


def _save_case(job: _CaseJob, case: CaseInputs, bank_case: str, image: np.ndarray, reference: np.ndarray,
               probabilities: np.ndarray) -> int:
    """Build and save the bank file of ``bank_case`` (the case or a shuffled copy); returns its candidate count."""
    arrays = build_case_candidates(bank_case, image, reference, probabilities, job.schema, spacing=case.spacing,
                                   target_spacing=job.target_spacing, settings=job.settings,
                                   channel_names=job.channel_names, origin=case.origin, direction=case.direction)
    save_case_bank(arrays, Path(job.out_file).with_name(f"{bank_case}.npz"))
    return int(arrays["target"].shape[0])


def _build_case_job(job: _CaseJob) -> list[tuple[str, int, dict]]:
    """Worker: build and save one case and / or its shuffled copies; returns ``(case id, number of candidates,
    bank.json extras)`` per file written. Any failure is a one-line :class:`CandidateBankError` naming the case."""
    try:
        case = read_case_inputs(job.image_files, job.label_file, job.softmax_file, job.reader)
        written = []
        if job.build_original:
            count = _save_case(job, case, job.case_id, case.image, case.reference, case.probabilities)
            written.append((job.case_id, count, {}))
        for copy in job.shuffles:
            copy_id = shuffled_case_id(job.case_id, copy)
            shuffled = shuffle_case(case.image, case.reference, case.probabilities, job.schema,
                                    rng=_shuffle_rng(job.case_id, copy))
            count = _save_case(job, case, copy_id, shuffled.image, shuffled.reference, shuffled.probabilities)
            logger.debug("case %s: %d of %d object(s) moved", copy_id, shuffled.num_moved, shuffled.num_objects)
            written.append((copy_id, count, {"shuffle_of": job.case_id, "objects": shuffled.num_objects,
                                             "objects_moved": shuffled.num_moved}))
    except (OSError, ValueError, RuntimeError, KeyError, zipfile.BadZipFile) as exc:
        raise CandidateBankError(f"case {job.case_id} ({Path(job.softmax_file)}): {exc}") from exc
    return written


# ---- the folder ----------------------------------------------------------------------------------------------
def _read_dataset_json(raw_dataset_dir: Path) -> dict:
    dataset_json_file = raw_dataset_dir / "dataset.json"
    if not dataset_json_file.is_file():
        raise CandidateBankError(f"{dataset_json_file} not found; raw_dataset_dir must be an nnU-Net raw dataset")
    return json.loads(dataset_json_file.read_text())


def _all_softmax_files(softmax_dirs: Sequence[str | os.PathLike], extra_dir: Path | None
                       ) -> tuple[dict[str, Path], set[str]]:
    """Case id -> softmax export of the raw dataset's cases and the extra cases, and the extra cases' ids."""
    softmax = softmax_files([Path(d) for d in softmax_dirs])
    if not softmax:
        raise CandidateBankError(f"no <case>.npz softmax export in {[str(d) for d in softmax_dirs]}; export "
                                 "probabilities (nnUNetTrainerPLUS does it in validation, or nnUNetv2_train --val "
                                 "--npz / nnUNetv2_predict --save_probabilities)")
    if extra_dir is None:
        return softmax, set()
    predictions = extra_dir / "predictions"
    extra_softmax = softmax_files([predictions])
    if not extra_softmax:
        raise CandidateBankError(f"no <case>.npz softmax export in {predictions}; predict "
                                 f"{extra_dir / 'imagesTr'} with nnUNetv2_predict -o {predictions} "
                                 "--save_probabilities")
    clash = sorted(set(extra_softmax) & set(softmax))
    if clash:
        raise CandidateBankError(f"extra cases {clash[:5]} in {extra_dir} have the ids of raw dataset cases; "
                                 "give the extra cohort its own case ids")
    softmax.update(extra_softmax)
    return softmax, set(extra_softmax)


def _raw_files(raw_dataset_dir: Path, dataset_json: Mapping, case_ids: Sequence[str], extra: set[str],
               extra_dir: Path | None) -> dict[str, tuple[list[Path], Path]]:
    """Case id -> (image files, label file), all present (:class:`CandidateBankError` listing the missing)."""
    problems = []
    inputs: dict[str, tuple[list[Path], Path]] = {}
    for case_id in sorted(case_ids):
        images, label = (extra_case_files(extra_dir, dataset_json, case_id) if case_id in extra
                         else case_files(raw_dataset_dir, dataset_json, case_id))
        missing = [str(p) for p in images if not p.is_file()] if images else [f"images of {case_id}"]
        if not label.is_file():
            missing.append(str(label))
        if missing:
            problems.append(f"{case_id}: missing {missing}")
        inputs[case_id] = (images, label)
    if problems:
        raise CandidateBankError(f"{len(problems)} case(s) with a softmax export lack raw image or label files "
                                 f"in {raw_dataset_dir}{f' or {extra_dir}' if extra else ''}: "
                                 + "; ".join(problems[:5])
                                 + (" ..." if len(problems) > 5 else ""))
    return inputs


def _check_existing_metadata(out_dir: Path, metadata: Mapping) -> None:
    """A resumed build must use the bank's settings; raise naming the differences otherwise."""
    old = read_bank_metadata(out_dir)
    keys = ("lesions", "labels", "schema", "channels", "target_spacing", "settings")
    diff = [k for k in keys if json.loads(json.dumps(old.get(k))) != json.loads(json.dumps(metadata[k]))]
    if int(old.get("lesion_shuffles", 0)) != int(metadata.get("lesion_shuffles", 0)):  # absent = built without
        diff.append("lesion_shuffles")
    if old.get("extra_dir") != metadata.get("extra_dir"):  # absent = built without extra cases
        diff.append("extra_dir (--extra-cases)")
    if diff:
        raise CandidateBankError(f"the bank in {out_dir} was built with different {diff}; to rebuild it, rerun with "
                                 "--overwrite-bank (nnunet_plus_train_classifier) or overwrite=True "
                                 "(build_candidate_bank / bank_from_nnunet_results), or choose another out_dir")


def _plan_jobs(inputs: Mapping[str, tuple[list[Path], Path]], softmax: Mapping[str, Path], out_dir: Path,
               template: _CaseJob, *, metadata: Mapping, previous: Mapping, overwrite: bool, lesion_shuffles: int
               ) -> tuple[list[_CaseJob], dict[str, int], dict[str, dict]]:
    """The jobs of the cases and copies to build, and the candidate counts and ``bank.json`` extras of the valid
    files already in ``out_dir`` (kept unless ``overwrite``)."""
    counts: dict[str, int] = {}
    extras: dict[str, dict] = {}
    jobs = []

    def kept(bank_case: str) -> bool:
        """Whether a valid file of ``bank_case`` is already there (its count recorded)."""
        file = out_dir / f"{bank_case}.npz"
        if overwrite or not file.is_file():
            return False
        try:
            counts[bank_case] = load_case_bank(file, metadata=metadata).num_candidates
            return True
        except CandidateBankError as exc:
            logger.warning("rebuilding %s: %s", bank_case, exc)
            return False

    for case_id, (images, label) in inputs.items():
        build_original = not kept(case_id)
        shuffles = []
        for copy in range(1, lesion_shuffles + 1):
            copy_id = shuffled_case_id(case_id, copy)
            if kept(copy_id):
                extras[copy_id] = {**{k: v for k, v in previous.get(copy_id, {}).items()
                                      if k in ("objects", "objects_moved")}, "shuffle_of": case_id}
            else:
                shuffles.append(copy)
        if build_original or shuffles:
            jobs.append(replace(template, case_id=case_id, image_files=tuple(str(p) for p in images),
                                label_file=str(label), softmax_file=str(softmax[case_id]),
                                out_file=str(out_dir / f"{case_id}.npz"), build_original=build_original,
                                shuffles=tuple(shuffles)))
    return jobs, counts, extras


def _run_jobs(jobs: Sequence[_CaseJob], num_processes: int) -> Iterator[list[tuple[str, int, dict]]]:
    """What :func:`_build_case_job` returns for each job, in this process or a spawned pool (completion order)."""
    if num_processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _build_case_job(job)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(num_processes, len(jobs))) as pool:
        yield from pool.imap_unordered(_build_case_job, jobs)


def _job_template(dataset_json: Mapping, first_image: Path, schema: LesionSchema, settings: BankSettings,
                  target_spacing: Sequence[float], channel_names: Sequence[str]) -> _CaseJob:
    """The fields every job shares, nnU-Net's reader class of the dataset's images included."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    reader = determine_reader_writer_from_dataset_json(dataset_json, str(first_image), verbose=False)
    return _CaseJob(case_id="", image_files=(), label_file="", softmax_file="", out_file="", schema=schema,
                    settings=settings, target_spacing=tuple(float(v) for v in target_spacing),
                    channel_names=tuple(channel_names), reader=reader)


def _case_index(counts: Mapping[str, int], extras: Mapping[str, dict], softmax: Mapping[str, Path],
                extra: set[str], extra_dir: Path | None) -> dict[str, dict]:
    """The ``"cases"`` block of ``bank.json``: file, candidate count, softmax export and extras per bank case."""
    original = {bank_case: extras.get(bank_case, {}).get("shuffle_of", bank_case) for bank_case in counts}
    from_extra = {"extra": True, "raw_dir": str(extra_dir)}
    return {bank_case: {"file": f"{bank_case}.npz", "num_candidates": counts[bank_case],
                        "softmax": str(softmax[original[bank_case]]), **extras.get(bank_case, {}),
                        **(from_extra if original[bank_case] in extra else {})}
            for bank_case in sorted(counts)}


def _new_metadata(dataset_json: Mapping, schema: LesionSchema, settings: BankSettings,
                  target_spacing: Sequence[float], lesion_shuffles: int, extra_dir: Path | None) -> dict:
    """The ``bank.json`` content of this build, without the case index."""
    channel_names = [str(dataset_json["channel_names"][k]) for k in sorted(dataset_json["channel_names"], key=int)]
    metadata = bank_metadata(schema, settings, target_spacing=target_spacing, channel_names=channel_names)
    metadata["lesion_shuffles"] = lesion_shuffles
    metadata["extra_dir"] = None if extra_dir is None else str(extra_dir)
    return metadata


def _open_folder(out_dir: Path, metadata: Mapping, overwrite: bool) -> dict:
    """Create ``out_dir`` and write ``bank.json``; a bank already there must have the same settings unless
    ``overwrite``. Returns its previous case index (empty when none or ``overwrite``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    previous: dict = {}
    if (out_dir / METADATA_FILE).is_file() and not overwrite:
        _check_existing_metadata(out_dir, metadata)
        previous = read_bank_metadata(out_dir).get("cases") or {}
    write_json_atomic(out_dir / METADATA_FILE, metadata)
    return previous


def build_candidate_bank(raw_dataset_dir: str | os.PathLike, softmax_dirs: Sequence[str | os.PathLike],
                         out_dir: str | os.PathLike, schema: LesionSchema, *, target_spacing: Sequence[float],
                         settings: BankSettings | None = None, num_processes: int = 2, overwrite: bool = False,
                         quiet: bool = False, lesion_shuffles: int = 0,
                         extra_dir: str | os.PathLike | None = None) -> list[Path]:
    """Build the bank of every case that has a softmax export in ``softmax_dirs`` (and of the extra cases).

    Parameters
    ----------
    raw_dataset_dir : nnU-Net raw dataset folder (dataset.json, imagesTr/, labelsTr/).
    softmax_dirs : folders of ``<case>.npz`` (key ``probabilities``) + ``<case>.pkl``, e.g. the
        ``fold_k/validation`` folders of nnUNetTrainerPLUS; a case may appear in only one of them.
    out_dir : bank folder (``<case>.npz`` + ``bank.json``).
    target_spacing : ROI voxel spacing (z, y, x) mm, nnU-Net's target spacing of the configuration.
    settings : :class:`BankSettings` (default values when None).
    num_processes : worker processes (spawned); 1 builds in this process.
    overwrite : rebuild existing case files (otherwise valid ones are kept: the build resumes).
    lesion_shuffles : K shuffled copies ``<case>__shuffle1..K`` per case (0 = none; see the module docstring),
        stored in ``bank.json`` (``"lesion_shuffles"``; a resumed build must use the same K). Every case of the
        bank is a training case of some fold; the split maps each copy to its original's folds.
    extra_dir : a folder of extra cases (module docstring): ``imagesTr/``, ``labelsTr/`` and ``predictions/``
        with their softmax exports; their ids must differ from the raw dataset's.

    Returns the paths of all case files of the bank (shuffled copies included), sorted by case id.
    """
    raw_dataset_dir, out_dir = Path(raw_dataset_dir), Path(out_dir)
    if int(lesion_shuffles) != lesion_shuffles or lesion_shuffles < 0:
        raise ValueError(f"lesion_shuffles must be an integer >= 0, got {lesion_shuffles!r}")
    extra_dir = None if extra_dir is None else Path(extra_dir).resolve()
    dataset_json = _read_dataset_json(raw_dataset_dir)
    metadata = _new_metadata(dataset_json, schema, settings or BankSettings(), target_spacing, int(lesion_shuffles),
                             extra_dir)
    softmax, extra = _all_softmax_files(softmax_dirs, extra_dir)
    inputs = _raw_files(raw_dataset_dir, dataset_json, list(softmax), extra, extra_dir)
    previous = _open_folder(out_dir, metadata, overwrite)
    template = _job_template(dataset_json, inputs[min(inputs)][0][0], schema,
                             BankSettings.from_json(metadata["settings"]), target_spacing, metadata["channel_names"])
    jobs, counts, extras = _plan_jobs(inputs, softmax, out_dir, template, metadata=metadata, previous=previous,
                                      overwrite=overwrite, lesion_shuffles=int(lesion_shuffles))
    logger.info("candidate bank %s: %d case(s) to build, %d already built", out_dir, len(jobs), len(counts))
    with tqdm(total=len(jobs), desc="candidate bank", unit="case", disable=quiet or not jobs) as progress:
        for written in _run_jobs(jobs, num_processes):
            for bank_case, count, entry in written:
                counts[bank_case] = count
                if entry:
                    extras[bank_case] = entry
            progress.update()
    metadata["cases"] = _case_index(counts, extras, softmax, extra, extra_dir)
    write_json_atomic(out_dir / METADATA_FILE, metadata)
    return [out_dir / f"{case_id}.npz" for case_id in sorted(counts)]
