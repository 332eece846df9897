"""Read a folder of real-world DICOM files as one CT volume, or refuse it with a one-line reason.

A folder given as a case (see :mod:`nnunet_plus.predict.inputs`) is read in four steps:

1. **Headers** (:func:`~nnunet_plus.predict.dicom_scan.scan_folder`). Every non-hidden file of the folder and
   of its subfolders is read with pydicom (``stop_before_pixels``); files that are not DICOM images (DICOMDIR,
   reports, text files, files without ``Rows`` / ``Columns``) are skipped. Images are grouped by
   ``SeriesInstanceUID``.
2. **Series choice** (:func:`~nnunet_plus.predict.dicom_scan.choose_series`). With ``series_uids`` (the CLI's
   ``--series-uid``) the series named there is read; a folder holding none of them is an error listing its
   series (UID, description, number of images). Otherwise the largest CT series is read: localizer / scout
   images (``ImageType`` containing ``LOCALIZER``) do not count, series of 1-3 images are passed over when a
   larger one exists, a non-CT series is taken only when the folder holds no CT series (with a warning), a tie
   for the largest and series of several patients are errors. The choice and its reason are logged.
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

Errors are :class:`~nnunet_plus.predict.errors.InputError` with a one-line message naming the folder.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_plus.predict.dicom_scan import DicomInstance, choose_series, scan_folder
from nnunet_plus.predict.errors import InputError

logger = logging.getLogger(__name__)

#: a slice may lie this fraction of the median slice spacing off its position on the uniform grid ...
POSITION_RTOL = 0.01
#: ... or this many mm, whichever is larger (positions are often written with 2-3 decimals)
POSITION_ATOL_MM = 0.01
#: a gap between neighbouring slices above this many median spacings is a missing slice
MISSING_SLICE_FACTOR = 1.5
#: the geometry SimpleITK reads must agree with the headers' to this many mm (and 1e-4 for directions)
_GEOMETRY_ATOL_MM = 1e-3

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


# ---- step 3: slice checks -------------------------------------------------------------------------------------
def _names(instances: Sequence[DicomInstance], limit: int = 3) -> str:
    names = [i.path.name for i in instances[:limit]]
    return ", ".join(names) + (f" and {len(instances) - limit} more" if len(instances) > limit else "")


def _axis_name(normal: np.ndarray) -> str:
    return "z" if abs(abs(normal[2]) - 1.0) < 1e-3 else "position along the slice normal"


def _drop_repeats_and_localizers(folder: Path, uid: str, instances: Sequence[DicomInstance]) -> list[DicomInstance]:
    """The images of the series without exact copies (same ``SOPInstanceUID``) and localizers, each with a
    warning; :class:`InputError` for multi-frame images."""
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
    return kept


def _volume_slices(folder: Path, uid: str, kept: Sequence[DicomInstance]) -> list[DicomInstance]:
    """The images that can be placed in space and share the majority's orientation, size and pixel spacing
    (the others dropped with a warning); :class:`InputError` when fewer than 2 are left or no majority exists."""
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
    return slices


def _image_axes(folder: Path, uid: str, first: DicomInstance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, column, normal)`` unit vectors of the image plane; :class:`InputError` for an invalid one."""
    row = np.asarray(first.orientation[:3], dtype=float)
    col = np.asarray(first.orientation[3:], dtype=float)
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"{folder}: series {uid} has an invalid ImageOrientationPatient {first.orientation} "
                         "(row and column must be orthogonal unit vectors)")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _check_uniform_spacing(folder: Path, uid: str, slices: Sequence[DicomInstance], along: np.ndarray,
                           axis: str) -> tuple[float, float]:
    """``(slice spacing, position tolerance)`` of slices sorted by their position ``along`` the normal;
    :class:`InputError` for duplicate positions, missing slices or non-uniform spacing."""
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
    return spacing_z, tolerance


def _check_no_tilt(folder: Path, uid: str, slices: Sequence[DicomInstance], positions: np.ndarray,
                   along: np.ndarray, normal: np.ndarray, tolerance: float) -> None:
    """:class:`InputError` when the slices are shifted within the image plane (gantry tilt: a sheared grid); a
    warning when only the GantryDetectorTilt tag says tilt."""
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


def prepare_series(folder: Path, uid: str, instances: Sequence[DicomInstance]) -> DicomSeries:
    """Drop copies, localizers and odd images, sort the slices and check that they form a uniform,
    orthogonal grid (see the module docstring); :class:`InputError` otherwise."""
    slices = _volume_slices(folder, uid, _drop_repeats_and_localizers(folder, uid, instances))
    row, col, normal = _image_axes(folder, uid, slices[0])
    positions = np.asarray([i.position for i in slices], dtype=float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[k] for k in order]
    positions, along = positions[order], along[order]
    spacing_z, tolerance = _check_uniform_spacing(folder, uid, slices, along, _axis_name(normal))
    _check_no_tilt(folder, uid, slices, positions, along, normal, tolerance)
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
