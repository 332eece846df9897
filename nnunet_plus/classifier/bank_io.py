"""The candidate bank's file format: settings, one compressed ``.npz`` per case, ``bank.json``.

Storage: one ``<case>.npz`` (compressed npz as ``np.savez_compressed`` writes it, zlib level 1, written through a
temp file + rename; :func:`save_case_bank`) per case and a
``bank.json`` with the metadata (format version, schema, settings, channels, target spacing, case index).
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
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np

from nnunet_plus.classifier.crops import (DEFAULT_CT_WINDOW, DEFAULT_LIVER_SHAPE, DEFAULT_ROI_CONTEXT,
                                          DEFAULT_ROI_MIN_MM, LARGE_LESION_RULES, LIVER_FIT_MODES, NORMALISATIONS,
                                          PAD_MODES, ROI_FOV_RULES, check_roi_context, default_roi_shape)
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

# ---- settings ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BankSettings:
    """How candidates are turned into classifier inputs (stored in ``bank.json``; a resumed build must match).

    Attributes
    ----------
    roi_shape : lesion ROI voxels (z, y, x); default (``None``) by ``roi_fov``: ``(16, 32, 32)`` for
        ``"lesion"``, ``(16, 64, 64)`` (the paper's 64x64x16 at the target spacing) for ``"fixed"``.
    liver_shape : liver input voxels (z, y, x).
    normalisation : ``"auto"`` (``"ct"`` for channels named CT in dataset.json, else ``"zscore"``), one of
        ``"ct"`` / ``"zscore"`` / ``"none"``, or one per channel.
    ct_window : HU window of ``"ct"`` normalisation, mapped to [-1, 1].
    large_lesion, margin : ``roi_fov="fixed"`` only: large-lesion rule of the ROI (``"zoom"`` / ``"crop"``)
        and its context margin.
    mask_order : 1 = soft (linear) lesion mask, 0 = binary (nearest).
    pad_mode : ``"constant"`` (the channel minimum after normalisation, i.e. air) or ``"edge"``.
    liver_mode, liver_margin : ``"fit"`` (aspect kept) or ``"stretch"``, and the liver box margin.
    criterion : candidate / reference matching criterion (``"overlap"`` or ``"dice:T"``).
    connectivity : seg2det connectivity (``"paper"``, 6, 18, 26).
    roi_fov : field-of-view rule of the lesion ROI (:mod:`nnunet_plus.classifier.crops`): ``"lesion"``
        (default: a cube of side ``max(roi_min_mm, roi_context x`` the lesion's longest bounding-box side in
        mm``)`` resampled to ``roi_shape``) or ``"fixed"`` (``roi_shape`` voxels at the target spacing).
    roi_context, roi_min_mm : ``roi_fov="lesion"`` only: field of view / lesion extent (>= 1, default 2) and
        the floor of the field of view in mm (default 32).

    Compatibility: settings stored before ``roi_fov`` existed have no ``roi_fov`` key and mean ``"fixed"``
    (:meth:`from_json`); ``"fixed"`` settings are stored in that same form (:meth:`to_json` leaves out the
    three lesion-rule keys), so old banks and checkpoints compare equal to new ``"fixed"`` ones. The options
    of the rule not chosen must keep their defaults (a ValueError otherwise: they would be ignored).
    """

    roi_shape: tuple[int, int, int] | None = None
    liver_shape: tuple[int, int, int] = DEFAULT_LIVER_SHAPE
    normalisation: str | tuple[str, ...] = "auto"
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    large_lesion: str = "zoom"
    margin: float = 0.25
    mask_order: int = 1
    pad_mode: str = "constant"
    liver_mode: str = "fit"
    liver_margin: float = 0.05
    criterion: str = "overlap"
    connectivity: str | int = "paper"
    roi_fov: str = "lesion"
    roi_context: float = DEFAULT_ROI_CONTEXT
    roi_min_mm: float = DEFAULT_ROI_MIN_MM

    #: the rule of settings stored without a ``roi_fov`` key (banks and checkpoints made before it existed)
    LEGACY_ROI_FOV: ClassVar[str] = "fixed"
    #: options of each rule, which must keep their defaults under the other rule
    RULE_OPTIONS: ClassVar[Mapping[str, tuple[str, ...]]] = {"lesion": ("roi_context", "roi_min_mm"),
                                                             "fixed": ("large_lesion", "margin")}

    def __post_init__(self) -> None:
        if self.roi_fov not in ROI_FOV_RULES:
            raise ValueError(f"roi_fov must be one of {ROI_FOV_RULES}, got {self.roi_fov!r}")
        roi_shape = default_roi_shape(self.roi_fov) if self.roi_shape is None else self.roi_shape
        object.__setattr__(self, "roi_shape", tuple(int(v) for v in roi_shape))
        object.__setattr__(self, "liver_shape", tuple(int(v) for v in self.liver_shape))
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        context, floor = check_roi_context(self.roi_context, self.roi_min_mm)
        object.__setattr__(self, "roi_context", context)
        object.__setattr__(self, "roi_min_mm", floor)
        if not isinstance(self.normalisation, str):
            object.__setattr__(self, "normalisation", tuple(str(v) for v in self.normalisation))
        for name, shape in (("roi_shape", self.roi_shape), ("liver_shape", self.liver_shape)):
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"{name} must be three positive integers (z, y, x), got {shape}")
        schemes = (self.normalisation,) if isinstance(self.normalisation, str) else self.normalisation
        unknown = sorted(set(schemes) - set(NORMALISATIONS) - {"auto"})
        if unknown or (len(schemes) > 1 and "auto" in schemes):
            raise ValueError(f"normalisation must be 'auto' or per channel one of {NORMALISATIONS}, "
                             f"got {self.normalisation!r}")
        for name, value, allowed in (("large_lesion", self.large_lesion, LARGE_LESION_RULES),
                                     ("pad_mode", self.pad_mode, PAD_MODES),
                                     ("liver_mode", self.liver_mode, LIVER_FIT_MODES),
                                     ("mask_order", self.mask_order, (0, 1))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.margin < 0 or self.liver_margin < 0:
            raise ValueError("margin and liver_margin must be >= 0")
        other = "fixed" if self.roi_fov == "lesion" else "lesion"
        defaults = {f.name: f.default for f in fields(self)}
        changed = [f"{name}={getattr(self, name)!r}" for name in self.RULE_OPTIONS[other]
                   if getattr(self, name) != defaults[name]]
        if changed:
            verb = "are" if len(changed) > 1 else "is"
            raise ValueError(f"{', '.join(changed)} {verb} only used by roi_fov={other!r} and would be ignored with "
                             f"roi_fov={self.roi_fov!r}; keep the default or choose roi_fov={other!r}")

    def crop_options(self) -> dict:
        """The lesion-ROI keyword arguments of :func:`~nnunet_plus.classifier.crops.candidate_rois`."""
        return {"roi_shape": self.roi_shape, "roi_fov": self.roi_fov, "roi_context": self.roi_context,
                "roi_min_mm": self.roi_min_mm, "large_lesion": self.large_lesion, "margin": self.margin,
                "pad_mode": self.pad_mode, "mask_order": self.mask_order}

    def schemes(self, num_channels: int, channel_names: Sequence[str] | None = None) -> tuple[str, ...]:
        """Per-channel normalisation; ``"auto"``: ``"ct"`` for channels named CT (or unnamed), else zscore."""
        if self.normalisation == "auto":
            if channel_names is None:
                return ("ct",) * num_channels
            return tuple("ct" if str(n).strip().lower() == "ct" else "zscore" for n in channel_names)
        if isinstance(self.normalisation, str):
            return (self.normalisation,) * num_channels
        if len(self.normalisation) != num_channels:
            raise ValueError(f"{len(self.normalisation)} normalisation schemes for {num_channels} channels")
        return self.normalisation

    def to_json(self) -> dict:
        """A JSON-ready dict; ``"fixed"`` settings leave out ``roi_fov`` and the lesion rule's options (the form
        stored before they existed). Read it back with :meth:`from_json` (``BankSettings(**d)`` would take the
        ``"lesion"`` default)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if self.roi_fov == self.LEGACY_ROI_FOV:
            for key in ("roi_fov", *self.RULE_OPTIONS["lesion"]):
                del out[key]
        return out

    @classmethod
    def from_json(cls, block: Mapping) -> "BankSettings":
        """Settings from :meth:`to_json`'s dict (unknown keys ignored); no ``roi_fov`` key means ``"fixed"``."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in block.items() if k in known}
        values.setdefault("roi_fov", cls.LEGACY_ROI_FOV)
        return cls(**values)

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
    """Write one case's arrays to ``path`` through a temp file + rename.

    The file is a standard compressed ``.npz`` (what ``np.savez_compressed`` writes, readable with ``np.load``)
    at zlib level ``compresslevel`` (default 1: several times faster than savez_compressed's level 6 for a
    few percent more bytes on noisy float16 crops).
    """
    path = Path(path)
    missing = sorted(set(ARRAY_SPEC) - set(arrays))
    if missing:
        raise ValueError(f"cannot save {path.name}: missing array(s) {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_DEFLATED,
                                 compresslevel=compresslevel) as archive:
                for key in ARRAY_SPEC:
                    with archive.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a bank is shared like any result file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def load_case_bank(path: str | os.PathLike, *, metadata: Mapping | None = None) -> CaseBank:
    """Load and validate one bank file.

    Checks the keys, dtypes and shapes (against ``metadata``, default: the ``bank.json`` beside the file when
    there is one), the case id, value ranges and NaN / inf. Raises :class:`CandidateBankError` naming the
    file and the fix (rebuild the case).
    """
    path = Path(path)
    hint = (f"delete {path} and rerun build_candidate_bank / bank_from_nnunet_results (the build resumes), "
            "or rebuild with overwrite=True")

    def fail(reason: str) -> CandidateBankError:
        return CandidateBankError(f"candidate bank file {path}: {reason}; {hint}")

    if not path.is_file():
        raise fail("not found")
    if metadata is None and (path.parent / METADATA_FILE).is_file():
        metadata = read_bank_metadata(path.parent)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise fail(f"unreadable ({type(exc).__name__}: {exc})") from exc
    missing = sorted(set(ARRAY_SPEC) - set(arrays))
    extra = sorted(set(arrays) - set(ARRAY_SPEC))
    if missing or extra:
        raise fail(f"wrong keys (missing {missing}, unexpected {extra})")
    for key, (dtype, template) in ARRAY_SPEC.items():
        value = arrays[key]
        ok = value.dtype.kind == "U" if dtype == "str" else value.dtype == np.dtype(dtype)
        if not ok:
            raise fail(f"array {key!r} has dtype {value.dtype}, expected {dtype}")
        ndim = sum(3 if isinstance(item, str) and item.startswith("*") else 1 for item in template)
        if value.ndim != ndim:
            raise fail(f"array {key!r} has shape {value.shape}, expected {ndim} dimensions")
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
                raise fail(f"{key} = {dims[key]} disagrees with {METADATA_FILE} ({value}); the bank folder mixes "
                           "files built with different settings")
        dims["C1"] = dims["C"] + 1
    for key, (_, template) in ARRAY_SPEC.items():
        expected_shape = _expected_shape(template, dims)
        if arrays[key].shape != expected_shape:
            raise fail(f"array {key!r} has shape {arrays[key].shape}, expected {expected_shape}")
        if arrays[key].dtype.kind == "f" and not np.all(np.isfinite(arrays[key])):
            raise fail(f"array {key!r} contains NaN or inf")
    case_id = str(arrays["case_id"])
    if case_id != path.stem:
        raise fail(f"holds case {case_id!r}, not {path.stem!r}")
    n_classes, n_ref = dims["L"], dims["R"]
    for key in ("target", "overlap_target", "nnunet_class", "base_class", "ref_class", "base_det_class",
                "patient_class", "nnunet_patient_class"):
        if arrays[key].size and (arrays[key].min() < 0 or arrays[key].max() > n_classes):
            raise fail(f"array {key!r} has class indices outside 0..{n_classes}")
    if arrays["tier"].size and (arrays["tier"].min() < 0 or arrays["tier"].max() >= len(TIERS)):
        raise fail("array 'tier' has values outside 0..1")
    for key in ("ref_id", "base_det_ref_id"):
        if arrays[key].size and (arrays[key].min() < 0 or arrays[key].max() > n_ref):
            raise fail(f"array {key!r} refers to reference lesions outside 1..{n_ref}")
    scalars = {"case_id": case_id, "liver_found": bool(arrays["liver_found"]),
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

