"""Plain helper functions shared by test files (imported as ``from helpers import ...``: tests/ is on sys.path
through tests/conftest.py); fixtures stay in the conftest files.

Image writers: :func:`to_sitk`, :func:`write_image` (NIfTI, NRRD, MHA by suffix), :func:`write_dicom_series`, with
a rotated direction and an odd origin that catch any geometry shortcut.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: a proper rotation (det +1) and an odd origin, to catch any geometry shortcut
ROTATED_DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
ODD_ORIGIN = (-123.456, 78.9012, -345.678)


def to_sitk(array: np.ndarray, *, spacing=(1.5, 1.5, 4.0), origin=(0.0, 0.0, 0.0),
            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if array.ndim != 3:  # 2D / 4D test images keep SimpleITK's default geometry
        return image
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    return image


def write_image(array: np.ndarray, path: Path, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk(array, **geometry), str(path), True)
    return path


def write_dicom_series(array: np.ndarray, folder: Path, *, spacing=(1.5, 1.5, 4.0), origin=(0.0, 0.0, 0.0),
                       series_uid: str = "1.2.826.0.1.3680043.2.1125.424242") -> Path:
    """One CT slice file per z (int16 HU, axial, identity orientation) with the tags GDCM needs."""
    folder.mkdir(parents=True, exist_ok=True)
    image = to_sitk(np.round(array).astype(np.int16), spacing=spacing, origin=origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0010|0010": "TEST^PATIENT",
                "0020|000d": series_uid + ".0", "0020|000e": series_uid, "0020|0052": series_uid + ".9",
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": "\\".join(f"{p:.6f}" for p in position), "0020|0013": str(z + 1),
                "0018|0050": str(spacing[2]), "0008|0018": f"{series_uid}.{z + 1}"}
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid.rsplit('.', 1)[-1]}_{z:03d}.dcm"))
        writer.Execute(slice_)
    return folder
