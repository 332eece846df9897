"""The one image reader and the one image writer of nnunet_plus (SimpleITK), never silently wrong.

:func:`read_image` checks that the file is complete before SimpleITK reads it (SimpleITK reads a truncated
``.nii.gz`` or ``.nii`` as an image whose missing part is zeros, without a word); :func:`write_image` writes a
temp file, checks it (complete, and its header reads back with the image's size and pixel type: SimpleITK's
NIfTI writer does not raise on a write error) and only then renames it onto the target
(:func:`nnunet_plus.files.atomic.atomic_path`). Errors are one line naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.files.integrity import IncompleteFileError, check_complete


_GEOMETRY_ATOL_MM = 1e-4
_DIRECTION_ATOL = 1e-5


@dataclass(frozen=True)
class Geometry:
    """Physical geometry of an image as SimpleITK gives it (all tuples in SimpleITK's x, y, z order)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Spacing in numpy axis order (z, y, x), nnU-Net's convention."""
        return tuple(abs(s) for s in self.spacing[::-1])

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(self.size[::-1])

    def nnunet_properties(self) -> dict:
        """The properties dict nnU-Net's ``SimpleITKIO.read_images`` returns for this geometry."""
        return {"sitk_stuff": {"spacing": self.spacing, "origin": self.origin, "direction": self.direction},
                "spacing": list(self.spacing_zyx)}

    @classmethod
    def from_nnunet_properties(cls, properties: dict, shape_zyx: Sequence[int]) -> "Geometry":
        """Inverse of :meth:`nnunet_properties` (``shape_zyx`` = the array's spatial shape)."""
        stuff = properties.get("sitk_stuff")
        if stuff is None:
            spacing = tuple(float(s) for s in properties["spacing"][::-1])
            return cls(tuple(int(s) for s in shape_zyx[::-1]), spacing, (0.0,) * len(spacing),
                       tuple(np.eye(len(spacing)).ravel().tolist()))
        return cls(tuple(int(s) for s in shape_zyx[::-1]), tuple(float(s) for s in stuff["spacing"]),
                   tuple(float(o) for o in stuff["origin"]), tuple(float(d) for d in stuff["direction"]))

    def mismatch(self, other: "Geometry") -> str | None:
        """A readable description of how ``other`` differs from this geometry, or None when they agree."""
        if self.size != other.size:
            return f"size {other.size} != {self.size}"
        if not np.allclose(self.spacing, other.spacing, rtol=0, atol=_GEOMETRY_ATOL_MM):
            return f"spacing {other.spacing} != {self.spacing}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=_GEOMETRY_ATOL_MM):
            return f"origin {other.origin} != {self.origin}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=_DIRECTION_ATOL):
            return f"direction {other.direction} != {self.direction}"
        return None

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry on ``image`` (same size required) and return it."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"array size {image.GetSize()} does not match the geometry's size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


class ImageReadError(ValueError):
    """An image file that cannot be read, or is truncated / corrupt; the message names it."""


def read_image(path: str | os.PathLike) -> sitk.Image:
    """``sitk.ReadImage(path)`` after :func:`~nnunet_plus.files.integrity.check_complete`; :class:`ImageReadError`."""
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
    raises :class:`~nnunet_plus.files.atomic.IncompleteWriteError` and leaves ``path`` as it was."""
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
