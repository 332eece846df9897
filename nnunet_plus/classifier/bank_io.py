"""The candidate bank's files: one compressed ``.npz`` per case and ``bank.json`` (writing, reading, checking).

Storage: one ``<case>.npz`` (compressed npz as ``np.savez_compressed`` writes it, zlib level 1, written through a
temp file + rename, :func:`nnunet_plus.files.atomic.atomic_path`; :func:`save_case_bank`) per case and a
``bank.json`` with the metadata (format version, schema, settings, channels, target spacing, case index); the
settings are :class:`~nnunet_plus.classifier.bank_settings.BankSettings`.
Array keys of a case file (N candidates, L lesion classes, C image channels, R reference lesions,
B nnU-Net f=1 lesions, M candidate/reference overlaps; class indices follow ``schema.lesions``):

==========================  ===========  ==================  ====================================================
key                         dtype        shape               meaning
==========================  ===========  ==================  ====================================================
case_id                     str          ()                  the case identifier (= file stem)
crops                       float16      (N, C+1, *roi)      normalised image channels + the candidate's mask
prior                       float32      (N, L)              mean nnU-Net softmax of each lesion class over the
                                                             candidate's voxels (not renormalised)
target                      int64        (N,)                one-to-one matched reference class, L = not a lesion
overlap_target              int64        (N,)                class of the reference lesion sharing the most voxels
                                                             (ignores one-to-one: split lesions keep their class)
ref_id                      int32        (N,)                matched reference lesion id (1..R), 0 = none
tier                        int8         (N,)                0 confident (overlaps an f=1 lesion), 1 suspicious
nnunet_class                int64        (N,)                voxel-vote class at the highest sensitivity
base_class                  int64        (N,)                class of the f=1 lesion overlapping it most, L = none
                                                             (nnU-Net alone's answer for this candidate)
volume_mm3                  float32      (N,)                candidate volume
max_probability             float32      (N,)                max summed lesion probability over its voxels
bbox                        int32        (N, 6)              [z0, y0, x0, z1, y1, x1] in the raw image, end excl.
roi_scale                   float32      (N,)                field-of-view zoom of the crop (1 = no zoom)
liver                       float16      (C, *liver)         the liver input
liver_found                 bool         ()                  False when nnU-Net predicted no liver region
patient                     uint8        (3,)                reference [tumor, malignant, benign] (0/1)
patient_types               uint8        (L,)                reference lesion classes present (0/1)
patient_class               int64        ()                  classifyPatient on the reference, L = normal
nnunet_patient              float32      (3,)                nnU-Net LiverMax [tumor, malignant, benign]
nnunet_livermax             float32      (L,)                nnU-Net LiverMax per lesion class
nnunet_patient_class        int64        ()                  classifyPatient on nnU-Net's f=1 map, L = normal
ref_class                   int64        (R,)                reference lesion classes (ids 1..R)
ref_volume_mm3              float32      (R,)                reference lesion volumes
ref_covered                 bool         (R,)                reference lesion overlaps some candidate
missed_per_class            int64        (L,)                reference lesions overlapping no candidate, per
                                                             class (FN neither nnU-Net nor PLUS can recover)
base_det_class              int64        (B,)                nnU-Net f=1 lesion classes (its own output)
base_det_ref_id             int32        (B,)                one-to-one matched reference id, 0 = false positive
base_det_volume_mm3         float32      (B,)                nnU-Net f=1 lesion volumes
overlap                     int64        (M, 3)              [candidate id, reference id, shared voxels]
spacing                     float64      (3,)                raw voxel spacing (z, y, x) mm
==========================  ===========  ==================  ====================================================
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.schema import LesionSchema

BANK_FORMAT = "nnunet_plus.candidate_bank"
BANK_VERSION = 1
METADATA_FILE = "bank.json"
TIERS: tuple[str, ...] = ("confident", "suspicious")
PATIENT_KEYS: tuple[str, ...] = ("tumor", "malignant", "benign")

#: key -> (dtype, shape); shape symbols: N, L, C, C1 (= C + 1), R, B, M, *roi, *liver, or an int.
ARRAY_SPEC: dict[str, tuple[str, tuple]] = {
    "case_id": ("str", ()),
    "crops": ("float16", ("N", "C1", "*roi")),
    "prior": ("float32", ("N", "L")),
    "target": ("int64", ("N",)),
    "overlap_target": ("int64", ("N",)),
    "ref_id": ("int32", ("N",)),
    "tier": ("int8", ("N",)),
    "nnunet_class": ("int64", ("N",)),
    "base_class": ("int64", ("N",)),
    "volume_mm3": ("float32", ("N",)),
    "max_probability": ("float32", ("N",)),
    "bbox": ("int32", ("N", 6)),
    "roi_scale": ("float32", ("N",)),
    "liver": ("float16", ("C", "*liver")),
    "liver_found": ("bool", ()),
    "patient": ("uint8", (3,)),
    "patient_types": ("uint8", ("L",)),
    "patient_class": ("int64", ()),
    "nnunet_patient": ("float32", (3,)),
    "nnunet_livermax": ("float32", ("L",)),
    "nnunet_patient_class": ("int64", ()),
    "ref_class": ("int64", ("R",)),
    "ref_volume_mm3": ("float32", ("R",)),
    "ref_covered": ("bool", ("R",)),
    "missed_per_class": ("int64", ("L",)),
    "base_det_class": ("int64", ("B",)),
    "base_det_ref_id": ("int32", ("B",)),
    "base_det_volume_mm3": ("float32", ("B",)),
    "overlap": ("int64", ("M", 3)),
    "spacing": ("float64", (3,)),
}


class CandidateBankError(ValueError):
    """A bank file or an input of the bank build is missing, corrupt or inconsistent; the message says why."""


# ---- one file -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseBank:
    """The validated arrays of one bank file (see the module docstring for each key), plus its path."""

    path: Path
    case_id: str
    crops: np.ndarray
    prior: np.ndarray
    target: np.ndarray
    overlap_target: np.ndarray
    ref_id: np.ndarray
    tier: np.ndarray
    nnunet_class: np.ndarray
    base_class: np.ndarray
    volume_mm3: np.ndarray
    max_probability: np.ndarray
    bbox: np.ndarray
    roi_scale: np.ndarray
    liver: np.ndarray
    liver_found: bool
    patient: np.ndarray
    patient_types: np.ndarray
    patient_class: int
    nnunet_patient: np.ndarray
    nnunet_livermax: np.ndarray
    nnunet_patient_class: int
    ref_class: np.ndarray
    ref_volume_mm3: np.ndarray
    ref_covered: np.ndarray
    missed_per_class: np.ndarray
    base_det_class: np.ndarray
    base_det_ref_id: np.ndarray
    base_det_volume_mm3: np.ndarray
    overlap: np.ndarray
    spacing: np.ndarray

    @property
    def num_candidates(self) -> int:
        return int(self.target.shape[0])


def save_case_bank(arrays: Mapping[str, np.ndarray], path: str | os.PathLike, *, compresslevel: int = 1) -> Path:
    """Write one case's arrays (keys of :data:`ARRAY_SPEC`) to ``path`` through a checked temp file + rename
    (:func:`~nnunet_plus.files.atomic.atomic_path`).

    The file is a standard compressed ``.npz`` (what ``np.savez_compressed`` writes, readable with ``np.load``)
    at zlib level ``compresslevel`` (default 1: several times faster than savez_compressed's level 6 for a
    few percent more bytes on noisy float16 crops).
    """
    path = Path(path)
    missing = sorted(set(ARRAY_SPEC) - set(arrays))
    if missing:
        raise ValueError(f"cannot save {path.name}: missing array(s) {missing}")
    with atomic_path(path) as tmp:  # the temp file keeps the .npz suffix: its zip members are checked
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
            for key in ARRAY_SPEC:
                with archive.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
    return path


class _InvalidFile(Exception):
    """One check of a bank file failed; the message is the reason (:func:`load_case_bank` adds file and fix)."""


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the npz ``path`` (read without pickle)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _InvalidFile(f"unreadable ({type(exc).__name__}: {exc})") from exc


def _check_keys_and_dtypes(arrays: Mapping[str, np.ndarray]) -> None:
    """The keys of :data:`ARRAY_SPEC`, each with its dtype and number of dimensions."""
    missing = sorted(set(ARRAY_SPEC) - set(arrays))
    extra = sorted(set(arrays) - set(ARRAY_SPEC))
    if missing or extra:
        raise _InvalidFile(f"wrong keys (missing {missing}, unexpected {extra})")
    for key, (dtype, template) in ARRAY_SPEC.items():
        value = arrays[key]
        ok = value.dtype.kind == "U" if dtype == "str" else value.dtype == np.dtype(dtype)
        if not ok:
            raise _InvalidFile(f"array {key!r} has dtype {value.dtype}, expected {dtype}")
        ndim = sum(3 if isinstance(item, str) and item.startswith("*") else 1 for item in template)
        if value.ndim != ndim:
            raise _InvalidFile(f"array {key!r} has shape {value.shape}, expected {ndim} dimensions")


def _dimensions(arrays: Mapping[str, np.ndarray], metadata: Mapping | None) -> dict[str, object]:
    """The values of the shape symbols of :data:`ARRAY_SPEC` in this file, checked against ``metadata``."""
    liver = arrays["liver"]
    dims = {"N": arrays["target"].shape[0], "L": arrays["patient_types"].shape[0], "C": liver.shape[0],
            "C1": liver.shape[0] + 1, "R": arrays["ref_class"].shape[0], "B": arrays["base_det_class"].shape[0],
            "M": arrays["overlap"].shape[0], "roi": arrays["crops"].shape[2:], "liver": liver.shape[1:]}
    if metadata is not None:
        settings = metadata["settings"]
        expected = {"L": int(metadata["num_lesion_classes"]), "C": int(metadata["channels"]),
                    "roi": tuple(settings["roi_shape"]), "liver": tuple(settings["liver_shape"])}
        for key, value in expected.items():
            if dims[key] != value:
                raise _InvalidFile(f"{key} = {dims[key]} disagrees with {METADATA_FILE} ({value}); the bank folder "
                                   "mixes files built with different settings")
        dims["C1"] = dims["C"] + 1
    return dims


def _expected_shape(template: tuple, dims: Mapping[str, object]) -> tuple[int, ...]:
    shape: list[int] = []
    for item in template:
        if isinstance(item, int):
            shape.append(item)
        elif item.startswith("*"):
            shape.extend(dims[item[1:]])
        else:
            shape.append(dims[item])
    return tuple(shape)


def _check_shapes_and_values(arrays: Mapping[str, np.ndarray], dims: Mapping[str, object], stem: str) -> None:
    """Every shape, finite floats, the case id (= ``stem``) and the index ranges (classes, tiers, ids)."""
    for key, (_, template) in ARRAY_SPEC.items():
        expected_shape = _expected_shape(template, dims)
        if arrays[key].shape != expected_shape:
            raise _InvalidFile(f"array {key!r} has shape {arrays[key].shape}, expected {expected_shape}")
        if arrays[key].dtype.kind == "f" and not np.all(np.isfinite(arrays[key])):
            raise _InvalidFile(f"array {key!r} contains NaN or inf")
    case_id = str(arrays["case_id"])
    if case_id != stem:
        raise _InvalidFile(f"holds case {case_id!r}, not {stem!r}")
    n_classes, n_ref = dims["L"], dims["R"]
    for key in ("target", "overlap_target", "nnunet_class", "base_class", "ref_class", "base_det_class",
                "patient_class", "nnunet_patient_class"):
        if arrays[key].size and (arrays[key].min() < 0 or arrays[key].max() > n_classes):
            raise _InvalidFile(f"array {key!r} has class indices outside 0..{n_classes}")
    if arrays["tier"].size and (arrays["tier"].min() < 0 or arrays["tier"].max() >= len(TIERS)):
        raise _InvalidFile("array 'tier' has values outside 0..1")
    for key in ("ref_id", "base_det_ref_id"):
        if arrays[key].size and (arrays[key].min() < 0 or arrays[key].max() > n_ref):
            raise _InvalidFile(f"array {key!r} refers to reference lesions outside 1..{n_ref}")


def load_case_bank(path: str | os.PathLike, *, metadata: Mapping | None = None) -> CaseBank:
    """Load and validate one bank file.

    Checks the keys, dtypes and shapes (against ``metadata``, default: the ``bank.json`` beside the file when
    there is one), the case id, value ranges and NaN / inf. Raises :class:`CandidateBankError` naming the
    file and the fix (rebuild the case).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise _InvalidFile("not found")
        if metadata is None and (path.parent / METADATA_FILE).is_file():
            metadata = read_bank_metadata(path.parent)
        arrays = _read_arrays(path)
        _check_keys_and_dtypes(arrays)
        _check_shapes_and_values(arrays, _dimensions(arrays, metadata), path.stem)
    except _InvalidFile as exc:
        raise CandidateBankError(f"candidate bank file {path}: {exc}; delete {path} and rerun build_candidate_bank "
                                 "/ bank_from_nnunet_results (the build resumes), or rebuild with overwrite=True"
                                 ) from exc.__cause__
    scalars = {"case_id": str(arrays["case_id"]), "liver_found": bool(arrays["liver_found"]),
               "patient_class": int(arrays["patient_class"]),
               "nnunet_patient_class": int(arrays["nnunet_patient_class"])}
    return CaseBank(path=path, **{**arrays, **scalars})


# ---- metadata ---------------------------------------------------------------------------------------------
def bank_metadata(schema: LesionSchema, settings: BankSettings, *, target_spacing: Sequence[float],
                  channel_names: Sequence[str]) -> dict:
    """The ``bank.json`` content (without the case index) for a bank built with these inputs."""
    resolved = replace(settings, normalisation=settings.schemes(len(channel_names), channel_names))
    return {
        "format": BANK_FORMAT,
        "version": BANK_VERSION,
        "lesions": list(schema.lesions),
        "num_lesion_classes": len(schema.lesions),
        "not_a_lesion_index": len(schema.lesions),
        "labels": {k: int(v) for k, v in schema.labels.items()},
        "schema": schema.to_block(),
        "channels": len(channel_names),
        "channel_names": [str(n) for n in channel_names],
        "target_spacing": [float(v) for v in target_spacing],
        "settings": resolved.to_json(),
        "tiers": list(TIERS),
        "patient_keys": list(PATIENT_KEYS),
    }


def read_bank_metadata(bank_dir: str | os.PathLike) -> dict:
    """Read and check ``bank.json`` of a bank folder; :class:`CandidateBankError` if absent or foreign."""
    path = Path(bank_dir) / METADATA_FILE
    if not path.is_file():
        raise CandidateBankError(f"{path} not found; build the bank with build_candidate_bank or "
                                 "bank_from_nnunet_results")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CandidateBankError(f"{path} is not valid JSON ({exc}); delete it and rebuild the bank") from exc
    if meta.get("format") != BANK_FORMAT or meta.get("version") != BANK_VERSION:
        raise CandidateBankError(f"{path} is not a version-{BANK_VERSION} candidate bank (format "
                                 f"{meta.get('format')!r}, version {meta.get('version')!r}); rebuild it with "
                                 "overwrite=True")
    return meta

