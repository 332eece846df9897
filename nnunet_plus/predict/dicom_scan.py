"""Steps 1 and 2 of reading a DICOM folder (:mod:`nnunet_plus.predict.dicom_series`): the header of every file,
grouped by series, and the choice of the series to read.

1. **Headers.** Every non-hidden file of the folder and of its subfolders is read with pydicom
   (``stop_before_pixels``); files that are not DICOM images (DICOMDIR, reports, text files, files without
   ``Rows`` / ``Columns``) are skipped. Images are grouped by ``SeriesInstanceUID``.
2. **Series choice** (:func:`choose_series`). With ``series_uids`` (the CLI's ``--series-uid``) the series
   named there is read; a folder holding none of them is an error listing its series (UID, description,
   number of images). Otherwise the largest CT series is read: localizer / scout images (``ImageType``
   containing ``LOCALIZER``) do not count, series of 1-3 images are passed over when a larger one exists, a
   non-CT series is taken only when the folder holds no CT series (with a warning), a tie for the largest
   and series of several patients are errors. The choice and its reason are logged.

Errors are :class:`~nnunet_plus.predict.errors.InputError` with a one-line message naming the folder.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nnunet_plus.predict.errors import InputError

logger = logging.getLogger(__name__)

#: series of at most this many images are passed over when the folder holds a larger series
SMALL_SERIES_MAX_IMAGES = 3
_ORIENTATION_DECIMALS = 4


@dataclass(frozen=True)
class DicomInstance:
    """The header fields of one DICOM image file that series choice and slice checks need."""

    path: Path
    series_uid: str
    sop_uid: str | None
    patient_id: str | None
    modality: str
    description: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    frames: int
    pixel_spacing: tuple[float, float] | None
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    gantry_tilt: float
    transfer_syntax: str

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    def plane_key(self) -> tuple:
        """Orientation (rounded), size and pixel spacing: the images of one volume share it."""
        orientation = None if self.orientation is None else \
            tuple(round(v, _ORIENTATION_DECIMALS) + 0.0 for v in self.orientation)
        spacing = None if self.pixel_spacing is None else tuple(round(v, _ORIENTATION_DECIMALS) for v in
                                                                 self.pixel_spacing)
        return orientation, self.rows, self.columns, spacing



# ---- step 1: headers ------------------------------------------------------------------------------------------
def _floats(value, count: int) -> tuple[float, ...] | None:
    try:
        result = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return result if len(result) == count and all(math.isfinite(v) for v in result) else None


def _looks_like_dicom(path: Path) -> bool:
    """A ``DICM`` preamble, or (files written without one) a first tag of group 0002 / 0008."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")


def read_instance(path: Path) -> DicomInstance | None:
    """Header of ``path`` as a :class:`DicomInstance`; None when it is not a DICOM image (an unreadable
    DICOM file is skipped with a warning: a slice it held is then reported as missing)."""
    import pydicom

    if not _looks_like_dicom(path):
        logger.debug("%s: not a DICOM file, skipped", path)
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        rows, columns = ds.get("Rows"), ds.get("Columns")
        if not series_uid or rows is None or columns is None:
            logger.debug("%s: not a DICOM image (no SeriesInstanceUID / Rows / Columns), skipped", path)
            return None
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or "1.2.840.10008.1.2"
        raw_type = ds.get("ImageType") or ()
        raw_type = (raw_type,) if isinstance(raw_type, str) else raw_type
        try:
            tilt = float(ds.get("GantryDetectorTilt") or 0.0)
        except (TypeError, ValueError):
            tilt = 0.0
        return DicomInstance(
            path=path, series_uid=series_uid, sop_uid=str(ds.get("SOPInstanceUID", "") or "") or None,
            patient_id=str(ds.get("PatientID", "") or "") or None, modality=str(ds.get("Modality", "") or "?"),
            description=str(ds.get("SeriesDescription", "") or ""),
            image_type=tuple(str(v).strip().upper() for v in raw_type), rows=int(rows), columns=int(columns),
            frames=int(ds.get("NumberOfFrames") or 1), pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            position=_floats(ds.get("ImagePositionPatient"), 3), gantry_tilt=tilt, transfer_syntax=syntax)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a damaged file; it is reported
        logger.warning("%s: unreadable DICOM file skipped (%s)", path,
                       (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        return None


def scan_folder(folder: str | Path) -> dict[str, list[DicomInstance]]:
    """The DICOM images of ``folder`` and its subfolders (hidden entries skipped), by series UID."""
    folder = Path(folder)
    groups: dict[str, list[DicomInstance]] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            instance = read_instance(Path(root) / name)
            if instance is not None:
                groups.setdefault(instance.series_uid, []).append(instance)
    return groups


# ---- step 2: which series -------------------------------------------------------------------------------------
def _describe(uid: str, instances: Sequence[DicomInstance]) -> str:
    first = instances[0]
    localizers = sum(i.is_localizer for i in instances)
    extra = f", {localizers} localizer" if localizers else ""
    count = f"{len(instances)} image{'s' if len(instances) != 1 else ''}"
    return f"{uid} ({first.modality} '{first.description}', {count}{extra})"


def _listing(groups: dict[str, list[DicomInstance]]) -> str:
    return "; ".join(_describe(uid, instances) for uid, instances in groups.items())


def choose_series(folder: Path, groups: dict[str, list[DicomInstance]],
                  series_uids: Sequence[str] = ()) -> str:
    """The series UID to read from ``groups`` (:func:`scan_folder`), by the rule of the module docstring."""
    if not groups:
        raise InputError(f"{folder} is a folder but holds no DICOM series (a folder is read as one DICOM "
                         "series; its files and subfolders are searched)")
    if series_uids:
        present = [uid for uid in dict.fromkeys(series_uids) if uid in groups]
        if len(present) > 1:
            raise InputError(f"{folder} holds several of the --series-uid series ({', '.join(present)}); give one "
                             "per case folder")
        if not present:
            raise InputError(f"{folder}: no series with --series-uid {' / '.join(series_uids)}; the folder holds "
                             f"{len(groups)} series: {_listing(groups)}")
        logger.info("%s: reading series %s, named by --series-uid", folder, _describe(present[0], groups[present[0]]))
        return present[0]
    usable = {uid: sum(not i.is_localizer for i in instances) for uid, instances in groups.items()}
    candidates = [uid for uid, count in usable.items() if count > 0]
    if not candidates:
        raise InputError(f"{folder} holds only localizer / scout images ({_listing(groups)}); it needs the CT "
                         "series itself")
    if len(groups) == 1:
        return candidates[0]
    large = [uid for uid in candidates if usable[uid] > SMALL_SERIES_MAX_IMAGES]
    candidates = large or candidates
    ct = [uid for uid in candidates if groups[uid][0].modality.upper() == "CT"]
    candidates = ct or candidates
    patients = {i.patient_id for uid in candidates for i in groups[uid]}
    if len(patients) > 1:
        raise InputError(f"{folder} holds series of {len(patients)} different patients (PatientID differs); put "
                         "one patient per folder, or name the series with --series-uid")
    most = max(usable[uid] for uid in candidates)
    best = [uid for uid in candidates if usable[uid] == most]
    if len(best) > 1:
        raise InputError(f"{folder} holds {len(groups)} DICOM series and {len(best)} of them tie as the largest "
                         f"{'CT ' if ct else ''}series ({most} image(s) each); choose one with --series-uid: "
                         f"{_listing(groups)}")
    if not ct:
        logger.warning("%s holds no CT series: reading its largest series, a %s series", folder,
                       groups[best[0]][0].modality)
    others = [uid for uid in groups if uid != best[0]]
    logger.info("%s: reading series %s, the largest %sseries (localizers and series of <= %d images passed over); "
                "not read: %s", folder, _describe(best[0], groups[best[0]]), "CT " if ct else "",
                SMALL_SERIES_MAX_IMAGES, _listing({uid: groups[uid] for uid in others}))
    return best[0]

