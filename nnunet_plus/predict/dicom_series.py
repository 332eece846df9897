"""Read a folder of real-world DICOM files as one CT volume, or refuse it with a one-line reason.

A folder given as a case (see :mod:`nnunet_plus.predict.inputs`) is read in four steps:

1. **Headers.** Every non-hidden file of the folder and of its subfolders is read with pydicom
   (``stop_before_pixels``); files that are not DICOM images (DICOMDIR, reports, text files, files without
   ``Rows`` / ``Columns``) are skipped. Images are grouped by ``SeriesInstanceUID``.
2. **Series choice** (:func:`choose_series`). With ``series_uids`` (the CLI's ``--series-uid``) the series
   named there is read; a folder holding none of them is an error listing its series (UID, description,
   number of images). Otherwise the largest CT series is read: localizer / scout images (``ImageType``
   containing ``LOCALIZER``) do not count, series of 1-3 images are passed over when a larger one exists, a
   non-CT series is taken only when the folder holds no CT series (with a warning), a tie for the largest
   and series of several patients are errors. The choice and its reason are logged.
3. **Slice checks** (:func:`prepare_series`). Exact copies of an image (same ``SOPInstanceUID``) and
   localizer images are dropped, then images whose orientation, size or pixel spacing differ from the
   majority of the series (a scout or a reformat filed in the series), each with a warning. The slices are
   sorted along the normal of the image plane (as GDCM sorts them) and must form the grid SimpleITK builds
   (origin at the first slice, spacing = (last - first) / (n - 1), axes row, column, normal): every slice must
   lie within ``max(1 % of the median slice spacing, 0.01 mm)`` (:data:`POSITION_RTOL`,
   :data:`POSITION_ATOL_MM`) of its grid position. Otherwise, one-line errors: duplicate positions (two
   different images at one position: mixed acquisitions), missing slices (a gap above 1.5 x the median
   spacing, :data:`MISSING_SLICE_FACTOR`, named by its two positions), non-uniform spacing, gantry tilt
   (slices shifted within the image plane: a sheared grid). These volumes are refused, not resampled: the
   prediction must stay on the source slices (one label slice per DICOM image, what a DICOM SEG
   references); dcm2niix writes resampled NIfTI files for such series (``_Eq`` for uneven spacing, ``_Tilt``
   for gantry tilt), which nnunet_plus reads like any other image. A ``GantryDetectorTilt`` that is not
   zero while the positions form an orthogonal grid is a warning: the positions are trusted.
4. **Pixels** (:func:`read_series`). SimpleITK's ``ImageSeriesReader`` reads the sorted files; its geometry
   is checked against the one computed from the headers. When SimpleITK cannot decode the transfer syntax
   (e.g. High-Throughput JPEG 2000), pydicom decodes the pixels if a decoder plugin is installed (rescale
   slope / intercept applied, the geometry set from the headers); otherwise the error names the transfer
   syntax, the Python package that decodes it and the command that decompresses the files
   (``gdcmconv --raw``, ``dcmdjpeg``).

Errors are :class:`~nnunet_plus.predict.inputs.InputError` with a one-line message naming the folder.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_plus.predict.inputs import InputError

logger = logging.getLogger(__name__)

#: a slice may lie this fraction of the median slice spacing off its position on the uniform grid ...
POSITION_RTOL = 0.01
#: ... or this many mm, whichever is larger (positions are often written with 2-3 decimals)
POSITION_ATOL_MM = 0.01
#: a gap between neighbouring slices above this many median spacings is a missing slice
MISSING_SLICE_FACTOR = 1.5
#: series of at most this many images are passed over when the folder holds a larger series
SMALL_SERIES_MAX_IMAGES = 3
#: the geometry SimpleITK reads must agree with the headers' to this many mm (and 1e-4 for directions)
_GEOMETRY_ATOL_MM = 1e-3
_ORIENTATION_DECIMALS = 4

_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
#: (transfer syntax UID prefix or UID, pip packages whose pydicom plugin decodes it)
_DECODERS = (
    ("1.2.840.10008.1.2.4.9", "pylibjpeg pylibjpeg-openjpeg"),     # JPEG 2000 (4.90-4.93)
    ("1.2.840.10008.1.2.4.20", "pylibjpeg pylibjpeg-openjpeg"),    # High-Throughput JPEG 2000 (4.201-4.203)
    ("1.2.840.10008.1.2.4.8", "pyjpegls"),                          # JPEG-LS (4.80, 4.81)
    ("1.2.840.10008.1.2.4.5", "pylibjpeg pylibjpeg-libjpeg"),      # JPEG baseline / extended / lossless
    ("1.2.840.10008.1.2.4.70", "pylibjpeg pylibjpeg-libjpeg"),     # JPEG lossless SV1
    ("1.2.840.10008.1.2.5", "numpy (pydicom's own RLE decoder)"),  # RLE lossless
)


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


@dataclass(frozen=True)
class DicomSeries:
    """A checked series: its slices sorted along the normal and the geometry SimpleITK gives them."""

    folder: Path
    series_uid: str
    description: str
    modality: str
    instances: tuple[DicomInstance, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(i.path for i in self.instances)


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


# ---- step 3: slice checks -------------------------------------------------------------------------------------
def _names(instances: Sequence[DicomInstance], limit: int = 3) -> str:
    names = [i.path.name for i in instances[:limit]]
    return ", ".join(names) + (f" and {len(instances) - limit} more" if len(instances) > limit else "")


def _axis_name(normal: np.ndarray) -> str:
    return "z" if abs(abs(normal[2]) - 1.0) < 1e-3 else "position along the slice normal"


def prepare_series(folder: Path, uid: str, instances: Sequence[DicomInstance]) -> DicomSeries:
    """Drop copies, localizers and odd images, sort the slices and check that they form a uniform,
    orthogonal grid (see the module docstring); :class:`InputError` otherwise."""
    kept: list[DicomInstance] = []
    seen: set[str] = set()
    copies = []
    for instance in instances:
        if instance.sop_uid is not None and instance.sop_uid in seen:
            copies.append(instance)
            continue
        if instance.sop_uid is not None:
            seen.add(instance.sop_uid)
        kept.append(instance)
    if copies:
        logger.warning("%s: %d file(s) repeat an image of the series (same SOPInstanceUID), ignored: %s", folder,
                       len(copies), _names(copies))
    localizers = [i for i in kept if i.is_localizer]
    if localizers:
        logger.warning("%s: %d localizer / scout image(s) in series %s dropped: %s", folder, len(localizers), uid,
                       _names(localizers))
    kept = [i for i in kept if not i.is_localizer]
    if any(i.frames > 1 for i in kept):
        raise InputError(f"{folder}: series {uid} holds multi-frame (enhanced) DICOM images, which nnunet_plus does "
                         "not read; convert the series to NIfTI first (e.g. dcm2niix) and give the .nii.gz")
    placed = [i for i in kept if i.orientation is not None and i.position is not None]
    if not placed:
        raise InputError(f"{folder}: series {uid} has no ImagePositionPatient / ImageOrientationPatient, the "
                         "slices cannot be placed in space; export the original CT images")
    if len(placed) < len(kept):
        missing = [i for i in kept if i not in placed]
        logger.warning("%s: %d image(s) without ImagePositionPatient / ImageOrientationPatient dropped: %s",
                       folder, len(missing), _names(missing))
    planes = Counter(i.plane_key() for i in placed)
    (plane, count), *rest = planes.most_common()
    if rest and rest[0][1] == count:
        raise InputError(f"{folder}: series {uid} mixes {len(planes)} image orientations / sizes with {count} "
                         "images each; put each volume in its own series or folder")
    odd = [i for i in placed if i.plane_key() != plane]
    if odd:
        logger.warning("%s: %d image(s) of series %s have another orientation, size or pixel spacing than the "
                       "other %d (e.g. a localizer or a reformat) and are dropped: %s", folder, len(odd), uid,
                       count, _names(odd))
    slices = [i for i in placed if i.plane_key() == plane]
    if len(slices) < 2:
        raise InputError(f"{folder}: series {uid} has {len(slices)} image(s) left after dropping localizers and "
                         "odd images; nnunet_plus needs a 3D volume (at least 2 slices)")
    row = np.asarray(slices[0].orientation[:3], dtype=float)
    col = np.asarray(slices[0].orientation[3:], dtype=float)
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"{folder}: series {uid} has an invalid ImageOrientationPatient {slices[0].orientation} "
                         "(row and column must be orthogonal unit vectors)")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = np.asarray([i.position for i in slices], dtype=float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[k] for k in order]
    positions, along = positions[order], along[order]
    axis = _axis_name(normal)
    gaps = np.diff(along)
    median = float(np.median(gaps))
    tolerance = max(POSITION_RTOL * median, POSITION_ATOL_MM)
    duplicate = np.flatnonzero(gaps <= tolerance)
    if duplicate.size:
        k = int(duplicate[0])
        raise InputError(f"{folder}: series {uid} has {duplicate.size} duplicate slice position(s), e.g. {axis} = "
                         f"{along[k]:.2f} mm in {slices[k].path.name} and {slices[k + 1].path.name} (several "
                         "acquisitions or reconstructions in one series); put each in its own folder")
    missing = np.flatnonzero(gaps > MISSING_SLICE_FACTOR * median)
    if missing.size:
        k = int(missing[0])
        more = f" and {missing.size - 1} more gap(s)" if missing.size > 1 else ""
        raise InputError(f"{folder}: series {uid} is missing slice(s) between {axis} = {along[k]:.2f} and "
                         f"{along[k + 1]:.2f} mm (gap {gaps[k]:.2f} mm, median spacing {median:.3g} mm){more}; "
                         "export the complete series again")
    spacing_z = float((along[-1] - along[0]) / (len(slices) - 1))
    grid = along[0] + spacing_z * np.arange(len(slices))
    off = np.abs(along - grid)
    if off.max() > tolerance:
        k = int(np.argmax(off))
        raise InputError(f"{folder}: series {uid} has non-uniform slice spacing (gaps {gaps.min():.3g} to "
                         f"{gaps.max():.3g} mm; the slice at {axis} = {along[k]:.2f} mm is {off[k]:.3g} mm off a "
                         f"uniform grid, tolerance {tolerance:.3g} mm); resample it first, e.g. with dcm2niix "
                         "(writes an equalised _Eq NIfTI), and give the NIfTI")
    shift = positions - positions[0] - np.outer(along - along[0], normal)
    lateral = np.linalg.norm(shift, axis=1)
    if lateral.max() > tolerance:
        angle = math.degrees(math.atan2(float(lateral[-1]), float(along[-1] - along[0])))
        header = {round(i.gantry_tilt, 3) for i in slices}
        raise InputError(f"{folder}: series {uid} has gantry tilt (the slices are shifted within the image plane "
                         f"by up to {lateral.max():.3g} mm, {angle:.2f} degrees; GantryDetectorTilt "
                         f"{'/'.join(f'{t:g}' for t in sorted(header))}): the volume would be sheared; correct it "
                         "first, e.g. with dcm2niix (writes a tilt-corrected _Tilt NIfTI), and give the NIfTI")
    tilts = {i.gantry_tilt for i in slices if abs(i.gantry_tilt) > 1e-6}
    if tilts:
        logger.warning("%s: GantryDetectorTilt = %s degrees but the slice positions form an orthogonal grid: read "
                       "as that grid", folder, "/".join(f"{t:g}" for t in sorted(tilts)))
    spacing_xy = slices[0].pixel_spacing
    spacing = (float(spacing_xy[1]), float(spacing_xy[0]), spacing_z) if spacing_xy is not None else \
        (float("nan"), float("nan"), spacing_z)
    direction = tuple(float(v) for v in np.column_stack([row, col, normal]).ravel())
    first = slices[0]
    return DicomSeries(folder=folder, series_uid=uid, description=first.description, modality=first.modality,
                       instances=tuple(slices), spacing=spacing,
                       origin=tuple(float(v) for v in positions[0]), direction=direction)


def load_series(folder: str | Path, *, series_uids: Sequence[str] = ()) -> DicomSeries:
    """Steps 1-3 of the module docstring: the checked series of ``folder`` (pixels not read)."""
    folder = Path(folder)
    groups = scan_folder(folder)
    uid = choose_series(folder, groups, series_uids)
    return prepare_series(folder, uid, groups[uid])


# ---- step 4: pixels -------------------------------------------------------------------------------------------
def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _decoder_hint(uid: str) -> str:
    for prefix, packages in _DECODERS:
        if uid.startswith(prefix):
            return packages
    return "pylibjpeg with its plugins, or python-gdcm"


def _geometry_problem(image: sitk.Image, series: DicomSeries) -> str | None:
    if image.GetDimension() != 3 or image.GetSize()[2] != len(series.instances):
        return f"size {image.GetSize()}"
    known = [k for k, s in enumerate(series.spacing) if math.isfinite(s)]  # x, y unknown without PixelSpacing
    if not np.allclose(np.asarray(image.GetSpacing())[known], np.asarray(series.spacing)[known], rtol=0,
                       atol=_GEOMETRY_ATOL_MM):
        return f"spacing {image.GetSpacing()} != {series.spacing}"
    if not np.allclose(image.GetOrigin(), series.origin, rtol=0, atol=_GEOMETRY_ATOL_MM):
        return f"origin {image.GetOrigin()} != {series.origin}"
    if not np.allclose(image.GetDirection(), series.direction, rtol=0, atol=1e-4):
        return f"direction {image.GetDirection()} != {series.direction}"
    return None


def _read_with_pydicom(series: DicomSeries, syntaxes: set[str], sitk_error: str) -> sitk.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    slices = []
    for instance in series.instances:
        try:
            ds = pydicom.dcmread(instance.path)
            slices.append(np.asarray(apply_modality_lut(ds.pixel_array, ds)))
        except Exception as exc:  # noqa: BLE001 - any decoder failure becomes the one-line error below
            syntax = instance.transfer_syntax
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{series.folder}: the DICOM series is compressed with {_syntax_name(syntax)}, which "
                             f"SimpleITK cannot decode ({sitk_error}) and pydicom could not either ({reason}); "
                             f"install the decoder (pip install {_decoder_hint(syntax)}) or decompress the files "
                             "first (gdcmconv --raw IN OUT, or dcmdjpeg IN OUT for JPEG)") from exc
    if any(s.shape != slices[0].shape or s.ndim != 2 for s in slices):
        raise InputError(f"{series.folder}: the decoded images of series {series.series_uid} are not one 2D "
                         "grey-value image each (colour or multi-frame data)")
    volume = np.stack(slices)
    if np.issubdtype(volume.dtype, np.floating) and np.array_equal(volume, np.round(volume)) \
            and np.abs(volume).max(initial=0) < 2 ** 31:
        volume = volume.astype(np.int32)
    image = sitk.GetImageFromArray(volume)
    spacing = tuple(s if math.isfinite(s) else 1.0 for s in series.spacing)
    image.SetSpacing(spacing)
    image.SetOrigin(series.origin)
    image.SetDirection(series.direction)
    logger.info("%s: %s decoded with pydicom (SimpleITK cannot decode it)", series.folder,
                " / ".join(_syntax_name(s) for s in sorted(syntaxes)))
    return image


def read_series(series: DicomSeries) -> sitk.Image:
    """The pixels of a checked series in SimpleITK's geometry (SimpleITK first, pydicom for transfer syntaxes
    SimpleITK cannot decode); :class:`InputError` naming the folder and what to do otherwise."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        message = (str(exc).strip().splitlines() or ["unknown error"])[-1].strip()
        syntaxes = {i.transfer_syntax for i in series.instances}
        if syntaxes <= _UNCOMPRESSED:
            raise InputError(f"{series.folder}: the DICOM series cannot be read ({message})") from exc
        return _read_with_pydicom(series, syntaxes - _UNCOMPRESSED or syntaxes, message)
    problem = _geometry_problem(image, series)
    if problem is not None:
        raise InputError(f"{series.folder}: SimpleITK's geometry of series {series.series_uid} disagrees with the "
                         f"DICOM headers ({problem}); convert the series with dcm2niix and give the NIfTI")
    return image


def read_dicom_folder(folder: str | Path, *, series_uids: Sequence[str] = ()) -> sitk.Image:
    """The CT volume of a DICOM folder (all four steps of the module docstring)."""
    series = load_series(folder, series_uids=series_uids)
    logger.debug("%s: %d slices, spacing %s, origin %s", series.folder, len(series.instances), series.spacing,
                 series.origin)
    return read_series(series)
