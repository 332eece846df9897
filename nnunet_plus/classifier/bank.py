"""The candidate bank: the PLUS classifier's training data, built from nnU-Net's out-of-fold softmax.

Per case, lesion candidates are seg2det on the label map of the schema's highest sensitivity (so they include
nnU-Net's misses at f=1 and its false positives); each is matched one-to-one to the reference lesions
(:func:`~nnunet_plus.postprocessing.match.match_lesions`, overlap criterion by default): its target is the
matched reference lesion's class index in ``schema.lesions`` order, or ``len(schema.lesions)`` =
"not a lesion". The crops and the liver input are made by :mod:`nnunet_plus.classifier.crops` (its
docstring documents the ROI, large-lesion, padding, liver and intensity rules).

The file format (keys, dtypes, shapes, meaning) is documented in :mod:`nnunet_plus.classifier.bank_io`.

Layers: :func:`build_case_candidates` (arrays) -> :func:`save_case_bank` / :func:`load_case_bank` (one file)
-> :func:`build_candidate_bank` (folder, multiprocessing, resumable) -> :func:`bank_from_nnunet_results`
(nnU-Net's folders from the environment variables).

Lesion shuffle (``lesion_shuffles=K``, cascaded paper §III-B eq. 9; :mod:`nnunet_plus.classifier.shuffle`): every
case also gets K shuffled copies ``<case>__shuffle1..K`` (its lesions and nnU-Net's candidates moved within its
liver, image + reference + softmax together), analysed by :func:`build_case_candidates` like any case. A copy's
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
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_plus.classifier.bank_io import (METADATA_FILE, PATIENT_KEYS, TIERS, BankSettings, CandidateBankError,
                                            CaseBank, bank_metadata, load_case_bank, read_bank_metadata,
                                            save_case_bank)
from nnunet_plus.classifier.crops import candidate_rois, liver_input, normalise_intensity
from nnunet_plus.classifier.shuffle import shuffle_case, shuffled_case_id
from nnunet_plus.integrity import check_complete
from nnunet_plus.safe_load import load_properties
from nnunet_plus.schema import LesionSchema
from nnunet_plus.atomic import write_json_atomic

__all__ = ["BankSettings", "CandidateBankError", "CaseBank", "bank_case_files", "bank_from_nnunet_results",
           "build_candidate_bank", "build_case_candidates", "case_files", "classifier_inputs", "extra_case_files",
           "load_case_bank", "read_bank_metadata", "save_case_bank", "target_spacing_from_plans"]

logger = logging.getLogger(__name__)


# ---- case level -------------------------------------------------------------------------------------------
def _class_index(schema: LesionSchema) -> dict[int, int]:
    """Lesion label value -> class index in schema.lesions order."""
    return {label: i for i, label in enumerate(schema.lesion_labels)}


def _overlap_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 3) int64 rows [id in a, id in b, shared voxels] for every pair of non-zero ids sharing voxels."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 3), dtype=np.int64)
    pairs, counts = np.unique(np.stack([a[both], b[both]]).astype(np.int64), axis=1, return_counts=True)
    return np.concatenate([pairs.T, counts[:, None]], axis=1).astype(np.int64)


def _best_partner(pairs: np.ndarray, n: int) -> np.ndarray:
    """For ids 1..n in column 0 of ``pairs``: the column-1 id sharing the most voxels (0 if none)."""
    best = np.zeros(n, dtype=np.int64)
    most = np.zeros(n, dtype=np.int64)
    for first, second, count in pairs:
        if count > most[first - 1]:
            best[first - 1], most[first - 1] = second, count
    return best


def _classes(ids: np.ndarray, labels: Mapping[int, int], index: Mapping[int, int], none: int) -> np.ndarray:
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
    liver_region = np.isin(base_map, schema.liver_labels + schema.lesion_labels)
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


def build_case_candidates(case_id: str, image: np.ndarray, reference_label_map: np.ndarray,
                          probabilities: np.ndarray, schema: LesionSchema, *, spacing: Sequence[float],
                          target_spacing: Sequence[float], settings: BankSettings | None = None,
                          channel_names: Sequence[str] | None = None, origin: Sequence[float] | None = None,
                          direction: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """All bank arrays of one case (keys and meaning: the module docstring's table).

    Parameters
    ----------
    image : (C, Z, Y, X) raw intensities (HU for CT), every channel.
    reference_label_map : (Z, Y, X) integer reference labels (schema label values).
    probabilities : (K, Z, Y, X) nnU-Net softmax in the raw image geometry, K = ``schema.num_classes``.
    spacing : raw voxel spacing (z, y, x) mm; ``target_spacing``: ROI voxel spacing (nnU-Net's).
    settings : crop / matching options (default :class:`BankSettings`).
    channel_names : dataset.json channel names, used by ``normalisation="auto"``.
    """
    from nnunet_plus.case_analysis import analyse_case
    from nnunet_plus.postprocessing.classify import classify_patient
    from nnunet_plus.postprocessing.match import match_lesions
    from nnunet_plus.postprocessing.seg2det import seg2det

    settings = settings or BankSettings()
    image = np.asarray(image)
    reference_label_map = np.asarray(reference_label_map)
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

    num_classes = len(schema.lesions)
    index = _class_index(schema)
    lesion_labels = schema.lesion_labels

    analysis = analyse_case(probabilities, schema, spacing=spacing, origin=origin, direction=direction,
                            connectivity=settings.connectivity)
    candidates = analysis.detections
    base = analysis.base_detections
    reference = seg2det(reference_label_map, lesion_labels, priority=schema.priority_labels, spacing=spacing,
                        connectivity=settings.connectivity)
    n, n_ref, n_base = len(candidates.lesions), len(reference.lesions), len(base.lesions)
    ref_labels, cand_labels, base_labels = reference.labels(), candidates.labels(), base.labels()

    # targets: one-to-one match of candidates to the reference
    match = match_lesions(reference.instances, ref_labels, candidates.instances, cand_labels,
                          criterion=settings.criterion)
    ref_id = np.zeros(n, dtype=np.int32)
    for r, c in match.pairs:
        ref_id[c - 1] = r
    overlap = _overlap_pairs(candidates.instances, reference.instances)
    base_overlap = _overlap_pairs(candidates.instances, base.instances)
    base_match = match_lesions(reference.instances, ref_labels, base.instances, base_labels,
                               criterion=settings.criterion)
    base_det_ref_id = np.zeros(n_base, dtype=np.int32)
    for r, b in base_match.pairs:
        base_det_ref_id[b - 1] = r
    ref_covered = np.zeros(n_ref, dtype=bool)
    ref_covered[overlap[:, 1] - 1] = True
    ref_class = _classes(np.arange(1, n_ref + 1), ref_labels, index, num_classes)

    crops, scales, liver, liver_found = classifier_inputs(image, analysis, schema, spacing=spacing,
                                                          target_spacing=target_spacing, settings=settings,
                                                          channel_names=channel_names, case_id=case_id)
    ids = [int(r["id"]) for r in candidates.lesions]
    present = [v for v in lesion_labels if np.any(reference_label_map == v)]
    ref_patient_label = classify_patient(present, schema.priority_labels)
    nnunet_patient_label = int(analysis.patient_class)
    missing_prior = [r["id"] for r in candidates.lesions if r.get("prior") is None]
    if missing_prior:
        raise ValueError(f"case {case_id}: analyse_case gave candidates without a prior ({missing_prior})")
    return {
        "case_id": np.array(str(case_id)),
        "crops": crops.astype(np.float16),
        "prior": np.array([r["prior"] for r in candidates.lesions], dtype=np.float32).reshape(n, num_classes),
        "target": _classes(ref_id, ref_labels, index, num_classes),
        "overlap_target": _classes(_best_partner(overlap, n), ref_labels, index, num_classes),
        "ref_id": ref_id,
        "tier": np.array([TIERS.index(r["tier"]) for r in candidates.lesions], dtype=np.int8),
        "nnunet_class": _classes(np.array(ids, dtype=np.int64), cand_labels, index, num_classes),
        "base_class": _classes(_best_partner(base_overlap, n), base_labels, index, num_classes),
        "volume_mm3": np.array([r["volume_mm3"] for r in candidates.lesions], dtype=np.float32),
        "max_probability": np.array([r["max_probability"] for r in candidates.lesions], dtype=np.float32),
        "bbox": np.array([r["bbox"] for r in candidates.lesions], dtype=np.int32).reshape(n, 6),
        "roi_scale": scales.astype(np.float32),
        "liver": np.ascontiguousarray(liver, dtype=np.float16),
        "liver_found": np.array(liver_found),
        "patient": np.array([bool(present),
                             any(v in schema.malignant_labels for v in present),
                             any(v in schema.benign_labels for v in present)], dtype=np.uint8),
        "patient_types": np.array([v in present for v in lesion_labels], dtype=np.uint8),
        "patient_class": np.array(index[ref_patient_label] if ref_patient_label else num_classes, dtype=np.int64),
        "nnunet_patient": np.array([analysis.patient[k] for k in PATIENT_KEYS], dtype=np.float32),
        "nnunet_livermax": np.array([analysis.livermax[v] for v in lesion_labels], dtype=np.float32),
        "nnunet_patient_class": np.array(index[nnunet_patient_label] if nnunet_patient_label else num_classes,
                                         dtype=np.int64),
        "ref_class": ref_class,
        "ref_volume_mm3": np.array([r["volume_mm3"] for r in reference.lesions], dtype=np.float32),
        "ref_covered": ref_covered,
        "missed_per_class": np.bincount(ref_class[~ref_covered], minlength=num_classes + 1)[:num_classes]
        .astype(np.int64),
        "base_det_class": _classes(np.arange(1, n_base + 1), base_labels, index, num_classes),
        "base_det_ref_id": base_det_ref_id,
        "base_det_volume_mm3": np.array([r["volume_mm3"] for r in base.lesions], dtype=np.float32),
        "overlap": overlap,
        "spacing": np.asarray(spacing, dtype=np.float64),
    }

# ---- folder level -------------------------------------------------------------------------------------------
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


def _read_properties(pkl_file: Path) -> dict | None:
    if not pkl_file.is_file():
        return None
    return load_properties(pkl_file)


def _shuffle_rng(case_id: str, copy: int) -> np.random.Generator:
    """The generator of shuffled copy ``copy`` of ``case_id`` (reproducible across builds and processes)."""
    return np.random.default_rng([zlib.crc32(case_id.encode("utf-8")), int(copy)])


def _build_case_job(job: _CaseJob) -> list[tuple[str, int, dict]]:
    """Worker: build and save one case and / or its shuffled copies; returns ``(case id, number of candidates,
    bank.json extras)`` per file written."""
    softmax = Path(job.softmax_file)
    try:
        for path in (*job.image_files, job.label_file):  # nnU-Net's reader takes a cut .nii.gz for zeros
            check_complete(path)
        reader = job.reader()
        image, properties = reader.read_images(list(job.image_files))
        label, _ = reader.read_seg(job.label_file)
        with np.load(softmax, allow_pickle=False) as data:
            if "probabilities" not in data.files:
                raise ValueError(f"{softmax} has no 'probabilities' array (keys {data.files})")
            probabilities = data["probabilities"]
        spacing = tuple(float(s) for s in properties["spacing"])
        exported = _read_properties(softmax.with_suffix(".pkl"))
        if exported is not None and not np.allclose(exported["spacing"], spacing, rtol=1e-4):
            raise ValueError(f"{softmax.with_suffix('.pkl')} has spacing {list(exported['spacing'])} but the raw "
                             f"image has {list(spacing)}; the softmax belongs to another image")
        if probabilities.shape[1:] != image.shape[1:]:
            raise ValueError(f"{softmax} probabilities have shape {probabilities.shape} but the image "
                             f"{job.image_files[0]} has {image.shape[1:]}")
        reference = np.rint(label[0])
        if not np.array_equal(reference, label[0]):
            raise ValueError(f"{job.label_file} holds non-integer label values")
        sitk = properties.get("sitk_stuff", {})
        reference = reference.astype(np.int16)

        def build(case_id: str, image_: np.ndarray, reference_: np.ndarray, probabilities_: np.ndarray) -> dict:
            return build_case_candidates(case_id, image_, reference_, probabilities_, job.schema, spacing=spacing,
                                         target_spacing=job.target_spacing, settings=job.settings,
                                         channel_names=job.channel_names, origin=sitk.get("origin"),
                                         direction=sitk.get("direction"))

        written = []
        if job.build_original:
            arrays = build(job.case_id, image, reference, probabilities)
            save_case_bank(arrays, job.out_file)
            written.append((job.case_id, int(arrays["target"].shape[0]), {}))
        for copy in job.shuffles:
            copy_id = shuffled_case_id(job.case_id, copy)
            shuffled = shuffle_case(image, reference, probabilities, job.schema, rng=_shuffle_rng(job.case_id, copy))
            arrays = build(copy_id, shuffled.image, shuffled.reference, shuffled.probabilities)
            save_case_bank(arrays, Path(job.out_file).with_name(f"{copy_id}.npz"))
            logger.debug("case %s: %d of %d object(s) moved", copy_id, shuffled.num_moved, shuffled.num_objects)
            written.append((copy_id, int(arrays["target"].shape[0]),
                            {"shuffle_of": job.case_id, "objects": shuffled.num_objects,
                             "objects_moved": shuffled.num_moved}))
    except (OSError, ValueError, RuntimeError, KeyError, zipfile.BadZipFile) as exc:
        raise CandidateBankError(f"case {job.case_id} ({softmax}): {exc}") from exc
    return written


def case_files(raw_dataset_dir: Path, dataset_json: Mapping, case_id: str) -> tuple[list[Path], Path]:
    """Image files (one per channel) and label file of a case, as nnU-Net finds them."""
    ending = dataset_json["file_ending"]
    if "dataset" in dataset_json:
        entry = dataset_json["dataset"].get(case_id)
        if entry is None:
            return [], raw_dataset_dir / "labelsTr" / f"{case_id}{ending}"
        images = [raw_dataset_dir / os.path.expandvars(p) for p in entry["images"]]  # absolute paths stay absolute
        return images, raw_dataset_dir / os.path.expandvars(entry["label"])
    images = [raw_dataset_dir / "imagesTr" / f"{case_id}_{c:04d}{ending}"
              for c in range(len(dataset_json["channel_names"]))]
    return images, raw_dataset_dir / "labelsTr" / f"{case_id}{ending}"


def extra_case_files(extra_dir: Path, dataset_json: Mapping, case_id: str) -> tuple[list[Path], Path]:
    """Image files and label file of an extra case (``extra_dir/imagesTr``, ``extra_dir/labelsTr``, nnU-Net's
    naming with the raw dataset's file ending and channels)."""
    return case_files(extra_dir, {k: v for k, v in dataset_json.items() if k != "dataset"}, case_id)


def bank_case_files(raw_dataset_dir: Path, dataset_json: Mapping, case_id: str,
                    entry: Mapping) -> tuple[list[Path], Path]:
    """Image and label files of a bank case from its ``bank.json`` entry (an extra case's own folder, else the
    raw dataset)."""
    if entry.get("extra"):
        return extra_case_files(Path(entry["raw_dir"]), dataset_json, case_id)
    return case_files(raw_dataset_dir, dataset_json, case_id)


def _softmax_files(softmax_dirs: Sequence[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in softmax_dirs:
        if not folder.is_dir():
            raise CandidateBankError(f"softmax folder {folder} not found")
        for file in sorted(folder.glob("*.npz")):
            if file.stem in found:
                raise CandidateBankError(f"case {file.stem} has a softmax export in two folders ({found[file.stem]} "
                                         f"and {file}); pass each case's out-of-fold folder once")
            found[file.stem] = file
    return found


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
        raise CandidateBankError(f"the bank in {out_dir} was built with different {diff}; pass overwrite=True to "
                                 "rebuild it, or choose another out_dir")


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
    settings = settings or BankSettings()
    if int(lesion_shuffles) != lesion_shuffles or lesion_shuffles < 0:
        raise ValueError(f"lesion_shuffles must be an integer >= 0, got {lesion_shuffles!r}")
    lesion_shuffles = int(lesion_shuffles)
    dataset_json_file = raw_dataset_dir / "dataset.json"
    if not dataset_json_file.is_file():
        raise CandidateBankError(f"{dataset_json_file} not found; raw_dataset_dir must be an nnU-Net raw dataset")
    dataset_json = json.loads(dataset_json_file.read_text())
    channel_names = [str(dataset_json["channel_names"][k]) for k in sorted(dataset_json["channel_names"], key=int)]
    metadata = bank_metadata(schema, settings, target_spacing=target_spacing, channel_names=channel_names)
    metadata["lesion_shuffles"] = lesion_shuffles
    metadata["extra_dir"] = None if extra_dir is None else str(Path(extra_dir).resolve())
    resolved = BankSettings.from_json(metadata["settings"])

    softmax = _softmax_files([Path(d) for d in softmax_dirs])
    if not softmax:
        raise CandidateBankError(f"no <case>.npz softmax export in {[str(d) for d in softmax_dirs]}; export "
                                 "probabilities (nnUNetTrainerPLUS does it in validation, or nnUNetv2_train --val "
                                 "--npz / nnUNetv2_predict --save_probabilities)")
    extra: set[str] = set()
    if extra_dir is not None:
        extra_dir = Path(extra_dir).resolve()
        predictions = extra_dir / "predictions"
        extra_softmax = _softmax_files([predictions])
        if not extra_softmax:
            raise CandidateBankError(f"no <case>.npz softmax export in {predictions}; predict "
                                     f"{extra_dir / 'imagesTr'} with nnUNetv2_predict -o {predictions} "
                                     "--save_probabilities")
        clash = sorted(set(extra_softmax) & set(softmax))
        if clash:
            raise CandidateBankError(f"extra cases {clash[:5]} in {extra_dir} have the ids of raw dataset cases; "
                                     "give the extra cohort its own case ids")
        softmax.update(extra_softmax)
        extra = set(extra_softmax)
    problems = []
    inputs: dict[str, tuple[list[Path], Path]] = {}
    for case_id in sorted(softmax):
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

    out_dir.mkdir(parents=True, exist_ok=True)
    previous: dict = {}
    if (out_dir / METADATA_FILE).is_file() and not overwrite:
        _check_existing_metadata(out_dir, metadata)
        previous = read_bank_metadata(out_dir).get("cases") or {}
    write_json_atomic(out_dir / METADATA_FILE, metadata)

    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    first_images = inputs[min(inputs)][0]
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(first_images[0]), verbose=False)
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
        out_file = out_dir / f"{case_id}.npz"
        build_original = not kept(case_id)
        shuffles = []
        for copy in range(1, lesion_shuffles + 1):
            copy_id = shuffled_case_id(case_id, copy)
            if kept(copy_id):
                extras[copy_id] = {**{k: v for k, v in previous.get(copy_id, {}).items()
                                      if k in ("objects", "objects_moved")}, "shuffle_of": case_id}
            else:
                shuffles.append(copy)
        if not build_original and not shuffles:
            continue
        jobs.append(_CaseJob(case_id=case_id, image_files=tuple(str(p) for p in images), label_file=str(label),
                             softmax_file=str(softmax[case_id]), out_file=str(out_file), schema=schema,
                             settings=resolved, target_spacing=tuple(float(v) for v in target_spacing),
                             channel_names=tuple(channel_names), reader=reader, build_original=build_original,
                             shuffles=tuple(shuffles)))
    logger.info("candidate bank %s: %d case(s) to build, %d already built", out_dir, len(jobs), len(counts))
    progress = tqdm(total=len(jobs), desc="candidate bank", unit="case", disable=quiet or not jobs)
    try:
        def record(written: list[tuple[str, int, dict]]) -> None:
            for bank_case, count, entry in written:
                counts[bank_case] = count
                if entry:
                    extras[bank_case] = entry
            progress.update()

        if num_processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                record(_build_case_job(job))
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(num_processes, len(jobs))) as pool:
                for written in pool.imap_unordered(_build_case_job, jobs):
                    record(written)
    finally:
        progress.close()
    original = {bank_case: extras.get(bank_case, {}).get("shuffle_of", bank_case) for bank_case in counts}
    from_extra = {"extra": True, "raw_dir": str(extra_dir)}
    metadata["cases"] = {bank_case: {"file": f"{bank_case}.npz", "num_candidates": counts[bank_case],
                                     "softmax": str(softmax[original[bank_case]]), **extras.get(bank_case, {}),
                                     **(from_extra if original[bank_case] in extra else {})}
                         for bank_case in sorted(counts)}
    write_json_atomic(out_dir / METADATA_FILE, metadata)
    return [out_dir / f"{case_id}.npz" for case_id in sorted(counts)]


def target_spacing_from_plans(plans: Mapping, configuration: str) -> tuple[float, ...]:
    """nnU-Net's target spacing (numpy order, mm) of ``configuration`` in a plans dict (``inherits_from``
    resolved)."""
    configurations = plans.get("configurations", {})
    seen: list[str] = []
    name = configuration
    while name not in seen:
        if name not in configurations:
            raise ValueError(f"configuration {name!r} not in the plans (available: {sorted(configurations)})")
        seen.append(name)
        if "spacing" in configurations[name]:
            return tuple(float(v) for v in configurations[name]["spacing"])
        name = configurations[name].get("inherits_from", name)
    raise ValueError(f"configuration {configuration!r} has no spacing in the plans (inheritance {seen})")


def bank_from_nnunet_results(dataset: str | int, configuration: str, *, trainer: str = "nnUNetTrainerPLUS",
                             plans: str = "nnUNetPlans", folds: Sequence[int] | None = None,
                             out_dir: str | os.PathLike | None = None, settings: BankSettings | None = None,
                             num_processes: int = 2, overwrite: bool = False, quiet: bool = False,
                             lesion_shuffles: int = 0, extra_dir: str | os.PathLike | None = None) -> list[Path]:
    """Build the bank from nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``).

    Uses the ``validation/`` softmax of the folds present (``folds=None``: every ``fold_<k>`` with exported
    probabilities), the raw dataset's images and labels, its dataset.json schema and the configuration's
    target spacing from the plans. ``out_dir`` defaults to
    ``$nnUNet_results/DatasetXXX/PLUSClassifier__<trainer>__<plans>__<configuration>/candidate_bank``.
    ``lesion_shuffles``: shuffled copies per case, ``extra_dir``: extra cases (:func:`build_candidate_bank`).
    """
    from nnunet_plus.paths import PathError, dataset_name, nnunet_folder

    name = dataset_name(dataset)
    results = nnunet_folder("nnUNet_results") / name
    model_dir = results / f"{trainer}__{plans}__{configuration}"
    if not model_dir.is_dir():
        raise PathError(f"{model_dir} not found; train it first (nnUNetv2_train {dataset} {configuration} FOLD "
                        f"-tr {trainer} -p {plans})")
    if folds is None:
        fold_dirs = sorted((p for p in model_dir.glob("fold_*") if re.fullmatch(r"fold_\d+", p.name)
                            and any((p / "validation").glob("*.npz"))), key=lambda p: int(p.name[5:]))
        if not fold_dirs:
            raise PathError(f"no fold of {model_dir} has softmax exports in validation/; run the validation with "
                            f"probabilities (nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer} --val --npz)")
    else:
        fold_dirs = [model_dir / f"fold_{int(k)}" for k in folds]
        lacking = [str(p / "validation") for p in fold_dirs if not any((p / "validation").glob("*.npz"))]
        if lacking:
            raise PathError(f"no softmax export in {lacking}; run nnUNetv2_train {dataset} {configuration} FOLD "
                            f"-tr {trainer} --val --npz for those folds")
    raw = nnunet_folder("nnUNet_raw") / name
    schema = LesionSchema.from_dataset_json(raw / "dataset.json", dataset_id=dataset)
    plans_file = model_dir / "plans.json"
    if not plans_file.is_file():
        plans_file = nnunet_folder("nnUNet_preprocessed") / name / f"{plans}.json"
    if not plans_file.is_file():
        raise PathError(f"plans {plans_file} not found; run nnUNetv2_plan_and_preprocess -d {dataset}")
    target_spacing = target_spacing_from_plans(json.loads(plans_file.read_text()), configuration)
    if out_dir is None:
        out_dir = results / f"PLUSClassifier__{trainer}__{plans}__{configuration}" / "candidate_bank"
    logger.info("building the candidate bank of %s %s from folds %s", name, configuration,
                [p.name for p in fold_dirs])
    return build_candidate_bank(raw, [p / "validation" for p in fold_dirs], out_dir, schema,
                                target_spacing=target_spacing, settings=settings, num_processes=num_processes,
                                overwrite=overwrite, quiet=quiet, lesion_shuffles=lesion_shuffles,
                                extra_dir=extra_dir)
