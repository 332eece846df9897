"""The one image reader and the one image writer of nnunet_plus (SimpleITK), never silently wrong.

:func:`read_image` checks that the file is complete before SimpleITK reads it (SimpleITK reads a truncated
``.nii.gz`` or ``.nii`` as an image whose missing part is zeros, without a word); :func:`write_image` writes a
temp file, checks it (complete, and its header reads back with the image's size and pixel type: SimpleITK's
NIfTI writer does not raise on a write error) and only then renames it onto the target
(:func:`nnunet_plus.atomic.atomic_path`). Errors are one line naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from nnunet_plus.atomic import atomic_path
from nnunet_plus.integrity import IncompleteFileError, check_complete


class ImageReadError(ValueError):
    """An image file that cannot be read, or is truncated / corrupt; the message names it."""


def read_image(path: str | os.PathLike) -> sitk.Image:
    """``sitk.ReadImage(path)`` after :func:`~nnunet_plus.integrity.check_complete`; :class:`ImageReadError`."""
    path = Path(path)
    try:
        check_complete(path)
    except IncompleteFileError as exc:
        raise ImageReadError(f"{path} cannot be read as an image (corrupt or truncated file: {exc.reason}); "
                             "re-export it or copy it again") from exc
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        reason = next((line for line in lines if "rror" in line), lines[0] if lines else "")
        raise ImageReadError(f"{path} cannot be read as an image (corrupt or unsupported file): "
                             f"{reason.strip()}") from exc


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> None:
    """Write ``image`` to ``path`` (format by suffix), verified, through a temp file + rename; a failed write
    raises :class:`~nnunet_plus.atomic.IncompleteWriteError` and leaves ``path`` as it was."""
    size, pixel = tuple(image.GetSize()), image.GetPixelID()

    def reads_back(tmp: Path) -> None:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(tmp))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise IncompleteFileError(tmp, "its header cannot be read back") from exc
        if tuple(reader.GetSize()) != size or reader.GetPixelID() != pixel:
            raise IncompleteFileError(tmp, f"it reads back as size {reader.GetSize()} "
                                           f"{sitk.GetPixelIDValueAsString(reader.GetPixelID())}, not {size} "
                                           f"{image.GetPixelIDTypeAsString()}")

    with atomic_path(path, check=reads_back) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
