"""DICOM outputs of ``nnunet_plus_predict --dicom-seg``: a Segmentation (SEG) and a TID 1500 measurement report (SR).

For a case whose input is a DICOM series folder, two files are written beside the NIfTI outputs (before
``<case>.json``, which is written last)::

    <case>_seg.dcm   Segmentation IOD (BINARY), one frame per source slice that holds a segment
    <case>_sr.dcm    Comprehensive 3D SR, TID 1500 "Imaging Measurement Report", one group per lesion

Both join the source study (same Study Instance UID and patient), the SEG shares the source series' frame of
reference and references its instances (``ReferencedSeriesSequence``, a source image per frame). The source
instances are read with pydicom and matched to the predicted grid by position: the SEG's frame for slice ``z``
of ``<case>.nii.gz`` references the instance whose ImagePositionPatient is the grid's slice ``z`` (origin,
spacing and direction of the NIfTI output) with the same orientation, rows and columns. When a slice of the
grid has no such instance (a volume the reader resampled or completed), a
:class:`~nnunet_plus.predict.errors.DicomOutputError` is raised and no DICOM file is written: never a SEG on
the wrong slices. A non-DICOM input (NIfTI, NRRD, ...) gets a one-line warning per case (:data:`NEEDS_DICOM`);
its other outputs are written as usual.

The parts, one module each: :mod:`~nnunet_plus.predict.dicom_source` (the source instances of the grid),
:mod:`~nnunet_plus.predict.dicom_seg` (segments and the SEG), :mod:`~nnunet_plus.predict.dicom_sr` (the SR),
:mod:`~nnunet_plus.predict.dicom_codes` (the codes of both). This module writes the two files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.files.image_io import Geometry
from nnunet_plus.files.integrity import IncompleteFileError
from nnunet_plus.predict.dicom_seg import make_seg
from nnunet_plus.predict.dicom_source import read_source_series
from nnunet_plus.predict.dicom_sr import make_sr
from nnunet_plus.predict.errors import DicomOutputError
from nnunet_plus.predict.inputs import is_dicom_source
from nnunet_plus.predict.outputs import dicom_paths
from nnunet_plus.schema import LesionSchema

logger = logging.getLogger(__name__)

#: the warning for a non-DICOM input (one line, per case)
NEEDS_DICOM = ("case {case}: DICOM SEG needs a DICOM source series (a folder of DICOM slices in -i); {source} is "
               "not one: no {case}_seg.dcm / {case}_sr.dcm written, the other outputs are")


def _check_dicom(path: Path) -> None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise IncompleteFileError(path, f"not readable DICOM: {exc}") from exc


def _save(dataset, path: Path) -> None:
    with atomic_path(path, check=_check_dicom) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)


def write_dicom_outputs(output_folder: str | Path, case: str, label_map: np.ndarray, instances: np.ndarray,
                        record: Mapping, geometry: Geometry, schema: LesionSchema, *,
                        source_files: Sequence[str | Path], model_id: str = "",
                        series_uids: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``<case>_seg.dcm`` and ``<case>_sr.dcm`` (atomically) and return their paths (``{}`` when none is
    written). ``source_files`` = the case's input (one DICOM series folder); for any other input a one-line
    warning (:data:`NEEDS_DICOM`) is logged and nothing is written. :class:`DicomOutputError` when the source
    series does not match ``geometry`` (see :func:`~nnunet_plus.predict.dicom_source.read_source_series`)."""
    if not is_dicom_source(source_files):
        shown = ", ".join(str(f) for f in source_files) or "no image (-i not given)"
        logger.warning(NEEDS_DICOM.format(case=case, source=shown))
        return {}
    source = read_source_series(source_files[0], geometry, series_uids=series_uids)
    seg, specs = make_seg(source, label_map, instances, record, schema, model_id=model_id)
    sr = make_sr(seg, specs, source, record, schema, model_id=model_id)
    paths = dicom_paths(output_folder, case)
    written = {}
    if seg is not None:
        _save(seg, paths["seg"])
        written["seg"] = paths["seg"]
    else:
        logger.warning("case %s: no liver or lesion voxel: no %s written (the SR holds the patient class)", case,
                       paths["seg"].name)
    _save(sr, paths["sr"])
    written["sr"] = paths["sr"]
    return written


@dataclass(frozen=True)
class DicomRequest:
    """What the predict runs pass to :func:`write_case_dicom`: the case's input files and the model id."""

    source_files: tuple[Path, ...]
    model_id: str = ""
    series_uids: tuple[str, ...] = ()


def write_case_dicom(output_folder: str | Path, result, schema: LesionSchema, request: DicomRequest) -> None:
    """The hook of the predict runs (a :class:`~nnunet_plus.refine.CaseResult`): DICOM outputs of one case;
    a :class:`DicomOutputError` is logged as a warning naming the case (the other outputs are still written)."""
    try:
        write_dicom_outputs(output_folder, result.case, result.label_map, result.instances, result.record,
                            result.geometry, schema, source_files=request.source_files, model_id=request.model_id,
                            series_uids=request.series_uids)
    except DicomOutputError as exc:
        logger.warning("case %s: %s", result.case, exc)


def model_id_of(model_folder: str | Path | None) -> str:
    """``<Dataset>/<trainer>__<plans>__<configuration>`` of a model folder ('' for None)."""
    if model_folder is None:
        return ""
    folder = Path(model_folder)
    return f"{folder.parent.name}/{folder.name}"

