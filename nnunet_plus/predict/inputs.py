"""Find the cases of an input folder and read them as nnU-Net does, with clear errors naming the file.

The naming rule (one rule for every input folder)
-------------------------------------------------
Every non-hidden entry of the folder (not its subfolders' contents) is looked at:

* a **file** whose name without its image extension ends in ``_XXXX`` (4 digits) is channel ``XXXX`` of case
  ``<name without _XXXX>`` (nnU-Net's naming: ``case_0000.nii.gz``, ``case_0001.nii.gz``, ...);
* any **other image file** is a single-channel case named by its file name without extension
  (``liver_ct.nrrd`` -> case ``liver_ct``); allowed only for single-channel models;
* a **folder** is a DICOM case, a single-channel case named by the folder: its files and subfolders are
  searched, one series is chosen (the largest CT series, or the one named by ``series_uids`` of
  :func:`read_case`, the CLI's ``--series-uid``), localizers and stray images are dropped with a warning, and
  series whose slices do not form one uniform, orthogonal grid (missing slices, non-uniform spacing, gantry
  tilt, duplicate positions) or whose compression neither SimpleITK nor pydicom can decode are refused with a
  one-line error; see :mod:`nnunet_plus.predict.dicom_series` for the rules and tolerances;
* a file with an unknown extension is reported as a failed case (not silently skipped), the data files of
  header formats (``.raw``, ``.zraw``, ``.img``) are skipped.

Image extensions: every format SimpleITK reads, see :data:`IMAGE_EXTENSIONS`. Arrays are returned as nnU-Net's
``SimpleITKIO`` returns them: ``(C, Z, Y, X)`` float32 with the spacing reversed to (z, y, x).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_plus.files.atomic import remove_stale_temp_files
from nnunet_plus.files.image_io import Geometry, ImageReadError, read_image
from nnunet_plus.predict.errors import InputError

#: File extensions read as images (longest first so that ``.nii.gz`` wins over ``.gz``-less variants).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".nii.gz", ".gipl.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".hdr", ".dcm", ".tif", ".tiff",
    ".vtk", ".pic", ".lsm", ".png", ".jpg", ".jpeg", ".bmp",
)
#: Data files of header + data formats (read through their header), skipped during discovery.
COMPANION_EXTENSIONS: tuple[str, ...] = (".raw", ".zraw", ".img", ".img.gz")


_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseInput:
    """One case of an input folder: a file (or DICOM folder) per channel, or the discovery problem."""

    case: str
    files: tuple[Path, ...] = ()
    error: str | None = field(default=None, compare=False)

    def check(self) -> None:
        """Raise :class:`InputError` if discovery already found this case unusable."""
        if self.error is not None:
            raise InputError(self.error)


def split_image_name(name: str) -> tuple[str, str] | None:
    """``(stem, extension)`` for a file name with an image extension, None otherwise (case-insensitive)."""
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    return None


def discover_cases(folder: str | Path, *, num_channels: int, ignore_unknown: bool = False,
                   allow_folders: bool = True, exclude: str | Path | None = None) -> list[CaseInput]:
    """The cases of ``folder`` by the module's naming rule, sorted by case id.

    Problems that concern one case (missing / extra channel files, a plain name for a multi-channel model,
    two files claiming the same case, unknown extensions) are stored in :attr:`CaseInput.error` so that the
    other cases still run; a missing or empty folder raises :class:`InputError`. ``ignore_unknown`` skips
    files with unknown extensions instead (for other tools' output folders, which hold .json / .pkl files);
    ``allow_folders=False`` ignores subfolders. ``exclude`` (the output folder) is not a case when it lies
    inside ``folder``, nor is the subfolder of ``folder`` that holds it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"input folder {folder} does not exist or is not a folder")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if exclude is not None:
        excluded = Path(exclude).resolve()
        entries = [p for p in entries if not (p.is_dir() and _is_within(excluded, p.resolve()))]
    if not entries:
        raise InputError(f"input folder {folder} is empty: put the images there ({_rule_hint(num_channels)})")
    channels: dict[str, dict[int, list[Path]]] = {}
    errors: dict[str, str] = {}
    for path in entries:
        if path.is_dir():
            if not allow_folders:
                continue
            channels.setdefault(path.name, {}).setdefault(-1, []).append(path)
            continue
        if path.name.lower().endswith(COMPANION_EXTENSIONS):
            continue
        split = split_image_name(path.name)
        if split is None:
            if ignore_unknown:
                continue
            errors[path.name] = (f"{path} is not an image file (unknown extension); SimpleITK formats are "
                                 f"{', '.join(IMAGE_EXTENSIONS)}, or a folder holding one DICOM series")
            continue
        match = _CHANNEL.match(split[0])
        if match:
            channels.setdefault(match["case"], {}).setdefault(int(match["channel"]), []).append(path)
        else:
            channels.setdefault(split[0], {}).setdefault(-1, []).append(path)
    cases = [CaseInput(case, (), error) for case, error in errors.items() if case not in channels]
    for case, found in channels.items():
        cases.append(_make_case(case, found, num_channels))
    return sorted(cases, key=lambda c: c.case)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(output_folder: str | Path, input_folders: Mapping[str, str | Path | None],
                        cases: Iterable[CaseInput] = ()) -> None:
    """Raise :class:`InputError` when writing into ``output_folder`` could overwrite an input: it is one of
    ``input_folders`` (flag -> folder, e.g. ``{"-i": ...}``) or the folder an input file of ``cases`` lies in
    (symbolic links followed; a DICOM series: its own folder). An output folder inside an input folder is fine:
    ``discover_cases(..., exclude=output_folder)`` leaves it out."""
    out = Path(output_folder).resolve()
    for flag, folder in input_folders.items():
        if folder is not None and Path(folder).resolve() == out:
            raise InputError(f"-o {output_folder} is the input folder {flag} {folder}: the outputs would overwrite "
                             "the inputs; choose another output folder (a new folder inside it is fine)")
    for case in cases:
        for path in case.files:
            real = path.resolve()
            if (real if real.is_dir() else real.parent) == out:
                raise InputError(f"-o {output_folder} holds the input {real} (read through {path}): the outputs "
                                 "could overwrite it; choose an output folder that holds no input")


#: temp files older than this (seconds) are left by a killed run, not by a running part of this one


def prepare_output_folder(output_folder: str | Path) -> Path:
    """Create ``output_folder`` and check that files can be created in it (a temp file is created and removed),
    before any case is computed; :class:`InputError` naming the folder otherwise. Temp files of a killed run
    are removed (:func:`~nnunet_plus.files.atomic.remove_stale_temp_files`)."""
    folder = Path(output_folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnunet_plus_write_test.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise InputError(f"-o {folder} is not a writable folder ({exc.strerror or exc}); choose another output "
                         "folder or fix its permissions") from exc
    remove_stale_temp_files(folder)
    return folder


def _rule_hint(num_channels: int) -> str:
    if num_channels == 1:
        return "one file per case (any SimpleITK format, e.g. case.nii.gz or case_0000.nii.gz) or a DICOM folder"
    names = ", ".join(f"case_{i:04d}.nii.gz" for i in range(num_channels))
    return f"the model has {num_channels} channels: name the files {names}"


def _make_case(case: str, found: dict[int, list[Path]], num_channels: int) -> CaseInput:
    clashes = [p for paths in found.values() for p in paths]
    if len(clashes) != len(found) or (-1 in found and len(found) > 1):
        names = ", ".join(p.name for p in clashes)
        return CaseInput(case, (), f"case {case!r}: several inputs claim it ({names}); keep one file per channel")
    if -1 in found:
        path = found[-1][0]
        if num_channels != 1:
            return CaseInput(case, (), f"{path} has no _XXXX channel suffix but the model needs {num_channels} "
                                       f"channels; {_rule_hint(num_channels)}")
        return CaseInput(case, (path,))
    present = sorted(found)
    expected = list(range(num_channels))
    if present != expected:
        missing = [c for c in expected if c not in found]
        extra = [c for c in present if c not in expected]
        parts = []
        if missing:
            parts.append("missing channel file(s) " + ", ".join(f"{case}_{c:04d}.*" for c in missing))
        if extra:
            parts.append("unexpected channel file(s) " + ", ".join(found[c][0].name for c in extra))
        return CaseInput(case, (), f"case {case!r}: wrong channel count (found channels {present}, the model "
                                   f"expects {num_channels}): {'; '.join(parts)}")
    return CaseInput(case, tuple(found[c][0] for c in expected))


def is_dicom_source(files: Sequence[str | Path]) -> bool:
    """True when a case's input is one DICOM series folder (the only input a DICOM SEG can reference)."""
    return len(files) == 1 and Path(files[0]).is_dir()


def read_sitk(path: str | Path, *, series_uids: Sequence[str] = ()) -> sitk.Image:
    """Read one image file (:func:`nnunet_plus.files.image_io.read_image`: truncated / corrupt files refused) or a
    DICOM folder (:mod:`nnunet_plus.predict.dicom_series`; ``series_uids``: the SeriesInstanceUIDs to read, the
    CLI's ``--series-uid``, one per case folder; empty: the largest CT series); :class:`InputError` naming the
    path."""
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path, tuple(series_uids or ()))
    try:
        return read_image(path)
    except ImageReadError as exc:
        raise InputError(str(exc)) from exc


def _read_dicom_series(folder: Path, series_uids: Sequence[str] = ()) -> sitk.Image:
    try:
        from nnunet_plus.predict.dicom_series import read_dicom_folder
    except ImportError as exc:  # pydicom is an install requirement; a broken environment gets a clear message
        raise InputError(f"{folder}: reading a DICOM folder needs pydicom ({exc}); pip install pydicom") from exc
    return read_dicom_folder(folder, series_uids=series_uids)


def image_to_array(image: sitk.Image, path: str | Path) -> np.ndarray:
    """``(Z, Y, X)`` float32 array of a 3D scalar image; :class:`InputError` for 2D, 4D, vector or NaN data."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or "
                         "vector image); nnunet_plus needs one scalar 3D image per channel file")
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D image of size {image.GetSize()}; nnunet_plus needs "
                         "3D volumes")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(f"{path} has {int(array.size - finite.sum())} NaN / infinite voxels; fix the image "
                         "(e.g. replace them by the background value)")
    return array


def read_case(case: CaseInput, *, series_uids: Sequence[str] = ()) -> tuple[np.ndarray, Geometry]:
    """Read and validate a case: ``(C, Z, Y, X)`` float32 image and the geometry of channel 0.

    Raises :class:`InputError` naming the file for unreadable, 2D, vector, NaN-containing images and for
    channels whose geometry (size, spacing, origin, direction) differs from channel 0. ``series_uids``: see
    :func:`read_sitk`.
    """
    case.check()
    arrays = []
    geometry = None
    for path in case.files:
        image = read_sitk(path, series_uids=series_uids)
        this = Geometry.of(image)
        arrays.append(image_to_array(image, path))
        del image
        if geometry is None:
            geometry = this
            continue
        problem = geometry.mismatch(this)
        if problem is not None:
            raise InputError(f"{path} does not have the geometry of {case.files[0].name} ({problem}); all "
                             "channels of a case must share one voxel grid")
    return (np.stack(arrays) if len(arrays) > 1 else arrays[0][None]), geometry
