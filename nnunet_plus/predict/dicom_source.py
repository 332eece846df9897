"""The source series a DICOM SEG references: the instances of a case's DICOM folder matched to the predicted grid.

The source instances are read with pydicom and matched to the predicted grid by position: slice ``z`` of
``<case>.nii.gz`` is the instance whose ImagePositionPatient is the grid's slice ``z`` (origin, spacing and
direction of the NIfTI output) with the same orientation, rows and columns. When a slice of the grid has no such
instance (a volume the reader resampled or completed), :class:`~nnunet_plus.predict.errors.DicomOutputError` is
raised: never a SEG on the wrong slices.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_plus.files.image_io import Geometry
from nnunet_plus.predict.dicom_scan import scan_folder
from nnunet_plus.predict.errors import DicomOutputError

_POSITION_TOLERANCE_MM = 1e-2
_ORIENTATION_TOLERANCE = 1e-4


def read_source_series(folder: str | Path, geometry: Geometry, *, series_uids: Sequence[str] = ()) -> list:
    """The pydicom datasets (no pixel data) of ``folder`` that are the slices of ``geometry``, in the volume's
    slice order (index z of the ``(Z, Y, X)`` label map).

    The folder's files and subfolders are searched by the input reader's scan
    (:func:`nnunet_plus.predict.dicom_scan.scan_folder`). An instance is slice z when its
    SeriesInstanceUID is one of ``series_uids`` (if given: ``--series-uid``), its orientation, rows and columns
    are the grid's and its ImagePositionPatient is the grid's slice z (within 0.01 mm); other files (localizers,
    other series, non-DICOM files) are ignored. :class:`DicomOutputError` when a slice has no instance, when
    several series fit the grid (give ``--series-uid``) or the instances lack a frame of reference."""
    import pydicom

    folder = Path(folder)
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(geometry.origin, dtype=np.float64)
    spacing_z = float(geometry.spacing[2])
    n_z, rows, columns = geometry.shape_zyx
    by_series: dict[str, dict[int, Path]] = {}
    for uid, instances in scan_folder(folder).items():
        if series_uids and uid not in series_uids:
            continue
        for instance in instances:
            if instance.position is None or instance.orientation is None:
                continue
            if instance.rows != rows or instance.columns != columns:
                continue
            orientation = np.asarray(instance.orientation)
            if not (np.allclose(orientation[:3], direction[:, 0], atol=_ORIENTATION_TOLERANCE)
                    and np.allclose(orientation[3:], direction[:, 1], atol=_ORIENTATION_TOLERANCE)):
                continue
            offset = np.asarray(instance.position) - origin
            in_plane = offset @ direction[:, :2]
            k = float(offset @ direction[:, 2]) / spacing_z
            z = int(round(k))
            if np.abs(in_plane).max() > _POSITION_TOLERANCE_MM or abs(k - z) * spacing_z > _POSITION_TOLERANCE_MM \
                    or not 0 <= z < n_z:
                continue
            by_series.setdefault(uid, {}).setdefault(z, instance.path)
    complete = [uid for uid, slices in sorted(by_series.items()) if len(slices) == n_z]
    if not complete:
        found = max((len(s) for s in by_series.values()), default=0)
        raise DicomOutputError(
            f"{folder}: only {found} of the {n_z} slices of the predicted grid are DICOM instances of one series at "
            "the grid's positions (orientation, rows, columns); the volume was resampled or completed: no DICOM "
            "SEG / SR written")
    if len(complete) > 1:
        raise DicomOutputError(f"{folder}: {len(complete)} series fit the predicted grid ({', '.join(complete)}); "
                               "name the one to reference with --series-uid: no DICOM SEG / SR written")
    slices = by_series[complete[0]]
    datasets = [pydicom.dcmread(slices[z], stop_before_pixels=True, force=True) for z in range(n_z)]
    frames = {ds.get("FrameOfReferenceUID") for ds in datasets}
    if None in frames or len(frames) != 1:
        raise DicomOutputError(f"{folder}: the slices have no single FrameOfReferenceUID ({sorted(map(str, frames))}); "
                               "a DICOM SEG needs one: no DICOM SEG / SR written")
    return datasets
