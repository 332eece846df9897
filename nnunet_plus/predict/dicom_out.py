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
grid has no such instance (a volume the reader resampled or completed), :class:`DicomOutputError` is raised and
no DICOM file is written: never a SEG on the wrong slices. A non-DICOM input (NIfTI, NRRD, ...) gets a one-line
warning per case (:data:`NEEDS_DICOM`); its other outputs are written as usual.

Segments (choice)
-----------------
One segment per *structure instance*, so that every lesion of the SR can reference its own segment:

* one segment per non-lesion label present in the label map (normally the liver; other organ labels of a
  dataset likewise), in label order: category Anatomical Structure (or Tissue for unknown names);
* one segment per reported lesion of ``<case>.json``, in lesion id order: label ``"lesion <id>: <class>"``,
  Tracking ID ``"lesion <id>"`` (the SR's tracking identifier, with the same Tracking UID), category
  Morphologically Abnormal Structure, type = the lesion type's code, anatomic region Liver; its voxels are
  those of ``<case>_instances.nii.gz`` == id (where the label map holds the lesion's class);
* a lesion-label voxel that no reported lesion covers (not expected) goes to a segment ``"<class>
  (unlisted)"`` per label, so that nothing of the label map is lost.

Segments never overlap, so the label map is rebuilt exactly (:func:`label_map_from_seg`): every segment's
Segmented Property Type code maps back to one label value of the dataset's schema (the table below,
:func:`label_concepts`; a code is given to at most one label, later duplicates get a local code), and each
voxel takes the value of the segment that holds it (0 where none does). The instances map is rebuilt from
the lesion segments' Tracking IDs. A case with no liver and no lesion voxel has no SEG (nothing to segment):
the SR is still written, with the patient class and no lesion group.

Codes (Segmented Property Type; lesion segments: category SCT 49755003 "Morphologically Abnormal Structure",
anatomic region SCT 10200004 "Liver"; liver: category SCT 91723000 "Anatomical Structure")

=================  ===========================================================  ======  ==============================
label name(s)      code (meaning)                                               scheme  checked against
=================  ===========================================================  ======  ==============================
liver              10200004 Liver                                               SCT     pydicom codes (Liver)
hcc                25370001 Hepatocellular carcinoma                            SCT     not in pydicom/highdicom tables;
                                                                                        SNOMED CT concept (morphology)
icc, cca           70179006 Cholangiocarcinoma                                  SCT     not in pydicom/highdicom tables;
                                                                                        SNOMED CT concept (morphology);
                                                                                        "intrahepatic" = region Liver
metastasis         14799000 Neoplasm, metastatic                                SCT     pydicom (NeoplasmSecondary)
hemangioma         400210000 Hemangioma                                         SCT     pydicom codes (Hemangioma)
cyst               367643001 Cyst                                               SCT     pydicom codes (Cyst, CID 7159);
                                                                                        "of liver" = region Liver
calcification      18115005 Pathologic calcification                            SCT     pydicom codes
fnh                fnh (Focal nodular hyperplasia)                              local   99NNUNETPLUS: no verified code
other_malignant    other_malignant (Other malignant liver lesion)               local   99NNUNETPLUS
other_benign       other_benign (Other benign liver lesion)                     local   99NNUNETPLUS
any other label    its name (or ``L<value>``), meaning = the name               local   99NNUNETPLUS
=================  ===========================================================  ======  ==============================

SR content (TID 1500; one TID 1411 volumetric group per lesion, referencing its SEG segment)

=============================  =====================================================  ========  ==================
item                           concept name                                            scheme    value / unit
=============================  =====================================================  ========  ==================
Tracking Identifier / UID      "lesion <id>" (same as the segment's Tracking ID/UID)   DCM       text / UID
Finding (lesion type)          121071 Finding (row "Finding" of TID 1411)              DCM       type code above
type (qualitative evaluation)  278201002 Classification                                SCT       type code above
volume                         118565006 Volume                                        SCT       UCUM mm3
longest axial diameter         103339001 Long axis                                     SCT       UCUM mm
probability                    122157 Probability                                      DCM       UCUM 1 (no units)
tier                           tier (Detection tier)                                   local     confident/suspicious
patient class (own group,      121073 Impression                                       DCM       type code of the
Tracking Identifier "patient")                                                                   class, or SCT
                                                                                                 17621005 Normal
=============================  =====================================================  ========  ==================

Algorithm identification (SEG segments and SR groups): name ``nnunet_plus``, family DCM 123110 "Artificial
Intelligence", version :data:`nnunet_plus.__version__`, source = the model id (``<Dataset>/<trainer>__<plans>
__<configuration>``, the model folder).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.atomic import atomic_path
from nnunet_plus.integrity import IncompleteFileError
from nnunet_plus.image_io import Geometry
from nnunet_plus.schema import LesionSchema

logger = logging.getLogger(__name__)

#: private coding scheme designator for concepts without a verified standard code (DICOM: "99" prefix)
LOCAL_SCHEME = "99NNUNETPLUS"
ALGORITHM_NAME = "nnunet_plus"
SEG_SUFFIX = "_seg.dcm"
SR_SUFFIX = "_sr.dcm"
SEG_SERIES_NUMBER = 901
SR_SERIES_NUMBER = 902
#: the warning for a non-DICOM input (one line, per case)
NEEDS_DICOM = ("case {case}: DICOM SEG needs a DICOM source series (a folder of DICOM slices in -i); {source} is "
               "not one: no {case}_seg.dcm / {case}_sr.dcm written, the other outputs are")

_POSITION_TOLERANCE_MM = 1e-2
_ORIENTATION_TOLERANCE = 1e-4

# (code value, scheme, meaning) of the segmented property types, by (normalised) label name
_SCT = "SCT"
_LIVER = ("10200004", _SCT, "Liver")
_TYPE_CODES: dict[str, tuple[str, str, str]] = {
    "liver": _LIVER,
    "hcc": ("25370001", _SCT, "Hepatocellular carcinoma"),
    "hepatocellular_carcinoma": ("25370001", _SCT, "Hepatocellular carcinoma"),
    "icc": ("70179006", _SCT, "Cholangiocarcinoma"),
    "cca": ("70179006", _SCT, "Cholangiocarcinoma"),
    "cholangiocarcinoma": ("70179006", _SCT, "Cholangiocarcinoma"),
    "metastasis": ("14799000", _SCT, "Neoplasm, metastatic"),
    "metastases": ("14799000", _SCT, "Neoplasm, metastatic"),
    "meta": ("14799000", _SCT, "Neoplasm, metastatic"),
    "hemangioma": ("400210000", _SCT, "Hemangioma"),
    "haemangioma": ("400210000", _SCT, "Hemangioma"),
    "cyst": ("367643001", _SCT, "Cyst"),
    "calcification": ("18115005", _SCT, "Pathologic calcification"),
    "fnh": ("fnh", LOCAL_SCHEME, "Focal nodular hyperplasia"),
    "other_malignant": ("other_malignant", LOCAL_SCHEME, "Other malignant liver lesion"),
    "other_benign": ("other_benign", LOCAL_SCHEME, "Other benign liver lesion"),
}
_ANATOMICAL_STRUCTURE = ("91723000", _SCT, "Anatomical Structure")
_TISSUE = ("85756007", _SCT, "Tissue")
_ABNORMAL = ("49755003", _SCT, "Morphologically Abnormal Structure")
_NORMAL = ("17621005", _SCT, "Normal")
_FINDING = ("121071", "DCM", "Finding")
_CLASSIFICATION = ("278201002", _SCT, "Classification")
_VOLUME = ("118565006", _SCT, "Volume")
_LONG_AXIS = ("103339001", _SCT, "Long axis")
_PROBABILITY = ("122157", "DCM", "Probability")
_IMPRESSION = ("121073", "DCM", "Impression")
_TIER = ("tier", LOCAL_SCHEME, "Detection tier")
_TIERS = {"confident": ("confident", LOCAL_SCHEME, "Confident (first sensitivity)"),
          "suspicious": ("suspicious", LOCAL_SCHEME, "Suspicious (higher sensitivity only)")}
_UNITS = {"mm3": ("mm3", "UCUM", "cubic millimeter"), "mm": ("mm", "UCUM", "millimeter"),
          "1": ("1", "UCUM", "no units")}
_LESION_TRACKING = re.compile(r"^lesion (\d+)$")


class DicomOutputError(ValueError):
    """The DICOM outputs of a case cannot be made (source series missing, not matching the grid, ...)."""


def _concept(triple: tuple[str, str, str]):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=triple[0], scheme_designator=triple[1], meaning=triple[2])


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class LabelConcept:
    """Codes of one label value: segmented property category and type (``(value, scheme, meaning)``)."""

    value: int
    name: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    is_lesion: bool


def label_concepts(schema: LesionSchema) -> dict[int, LabelConcept]:
    """label value -> :class:`LabelConcept` for every non-background label of ``schema`` (module table).

    Each type code is given to one label only (the first in label order), so that a segment's type maps back
    to one label value; later labels with the same code, and unknown names, get a local code (their name, or
    ``L<value>`` when the name is longer than 16 characters)."""
    lesions = set(schema.lesions)
    taken: set[tuple[str, str]] = set()
    out: dict[int, LabelConcept] = {}
    for name, value in sorted(schema.labels.items(), key=lambda kv: int(kv[1])):
        value = int(value)
        if value == 0:
            continue
        triple = _TYPE_CODES.get(_normalise(name))
        if triple is None or (triple[0], triple[1]) in taken:
            code = name if len(name) <= 16 and re.fullmatch(r"[A-Za-z0-9_.\- ]+", name) else f"L{value}"
            triple = (code, LOCAL_SCHEME, name[:64])
        taken.add((triple[0], triple[1]))
        is_lesion = name in lesions
        if is_lesion:
            category = _ABNORMAL
        elif name in schema.liver or triple[1] == _SCT:
            category = _ANATOMICAL_STRUCTURE
        else:
            category = _TISSUE
        out[value] = LabelConcept(value, name, category, triple, is_lesion)
    return out


# ---- source series ----------------------------------------------------------------------------------------
def is_dicom_source(files: Sequence[str | Path]) -> bool:
    """True when a case's input is one DICOM series folder (the only input a SEG can reference)."""
    return len(files) == 1 and Path(files[0]).is_dir()


def read_source_series(folder: str | Path, geometry: Geometry, *, series_uids: Sequence[str] = ()) -> list:
    """The pydicom datasets (no pixel data) of ``folder`` that are the slices of ``geometry``, in the volume's
    slice order (index z of the ``(Z, Y, X)`` label map).

    The folder's files and subfolders are searched by the input reader's scan
    (:func:`nnunet_plus.predict.dicom_series.scan_folder`). An instance is slice z when its
    SeriesInstanceUID is one of ``series_uids`` (if given: ``--series-uid``), its orientation, rows and columns
    are the grid's and its ImagePositionPatient is the grid's slice z (within 0.01 mm); other files (localizers,
    other series, non-DICOM files) are ignored. :class:`DicomOutputError` when a slice has no instance, when
    several series fit the grid (give ``--series-uid``) or the instances lack a frame of reference."""
    import pydicom

    from nnunet_plus.predict.dicom_series import scan_folder

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


# ---- segments -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentSpec:
    """One SEG segment: its number, the label value it stands for and, for a lesion, its id (else None)."""

    number: int
    label_value: int
    lesion_id: int | None
    label: str
    tracking_uid: str | None = None

    @property
    def tracking_id(self) -> str | None:
        return None if self.lesion_id is None else f"lesion {self.lesion_id}"


def build_segments(label_map: np.ndarray, instances: np.ndarray, record: Mapping,
                   schema: LesionSchema) -> tuple[np.ndarray, list[SegmentSpec]]:
    """``(segment map (Z, Y, X) uint16, segments)``: the segment numbers 1..N (0 = none) of every voxel, by the
    module's segment choice; the segments partition the non-background voxels of ``label_map``."""
    from highdicom import UID

    label_map = np.asarray(label_map)
    instances = np.asarray(instances)
    if label_map.shape != instances.shape or label_map.ndim != 3:
        raise ValueError(f"label_map {label_map.shape} and instances {instances.shape} must be equal 3D shapes")
    concepts = label_concepts(schema)
    present = [int(v) for v in np.unique(label_map) if int(v) != 0]
    unknown = [v for v in present if v not in concepts]
    if unknown:
        raise ValueError(f"label values {unknown} of the label map are not labels of the schema {dict(schema.labels)}")
    segments = np.zeros(label_map.shape, dtype=np.uint16)
    specs: list[SegmentSpec] = []

    def add(mask: np.ndarray, value: int, lesion_id: int | None, label: str) -> None:
        if not mask.any():
            return
        number = len(specs) + 1
        segments[mask] = number
        specs.append(SegmentSpec(number, value, lesion_id, label, None if lesion_id is None else str(UID())))

    for value in present:
        if not concepts[value].is_lesion:
            add(label_map == value, value, None, concepts[value].name)
    for lesion in sorted(record.get("lesions", []), key=lambda r: int(r["id"])):
        value = int(lesion["label"]) if "label" in lesion else int(schema.labels[lesion["class"]])
        add((instances == int(lesion["id"])) & (label_map == value), value, int(lesion["id"]),
            f"lesion {int(lesion['id'])}: {concepts[value].name}")
    for value in present:
        if concepts[value].is_lesion:
            add((label_map == value) & (segments == 0), value, None, f"{concepts[value].name} (unlisted)")
    return segments, specs


def _algorithm(model_id: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from nnunet_plus import __version__

    return hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
                                              version=__version__, source=model_id[:64] or None)


def make_seg(source: Sequence, label_map: np.ndarray, instances: np.ndarray, record: Mapping,
             schema: LesionSchema, *, model_id: str):
    """``(highdicom Segmentation or None, segments)`` for ``source`` (pydicom datasets sorted as the volume,
    :func:`read_source_series`); None when no voxel is segmented."""
    import highdicom as hd

    from nnunet_plus import __version__
    from nnunet_plus.predict.outputs import label_colors

    segment_map, specs = build_segments(label_map, instances, record, schema)
    if len(source) != segment_map.shape[0]:
        raise ValueError(f"{len(source)} source instances for a volume of {segment_map.shape[0]} slices")
    if not specs:
        return None, specs
    concepts = label_concepts(schema)
    colors = label_colors(schema)
    algorithm = _algorithm(model_id)
    descriptions = []
    for spec in specs:
        concept = concepts[spec.label_value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=spec.number, segment_label=spec.label[:64],
            segmented_property_category=_concept(concept.category), segmented_property_type=_concept(concept.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=spec.tracking_uid, tracking_id=spec.tracking_id,
            anatomic_regions=[_concept(_LIVER)] if concept.is_lesion else None,
            display_color=hd.color.CIELabColor.from_rgb(*colors[spec.label_value][1])))
    seg = hd.seg.Segmentation(
        source_images=list(source), pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=(model_id or ALGORITHM_NAME)[:64], software_versions=__version__,
        device_serial_number=ALGORITHM_NAME, content_label="NNUNET_PLUS",
        content_description=f"liver and lesions ({record.get('case', '')})"[:64],
        series_description="nnunet_plus segmentation")
    return seg, specs


# ---- SR -----------------------------------------------------------------------------------------------------
def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def make_sr(seg, specs: Sequence[SegmentSpec], source: Sequence, record: Mapping, schema: LesionSchema, *,
            model_id: str):
    """Comprehensive 3D SR (TID 1500) for ``record`` (the per-case JSON): one volumetric group per lesion that
    references its segment of ``seg`` (the segment whose Tracking ID is ``"lesion <id>"``), and a group with the
    patient class. ``seg`` may be None (no lesion: the SR then holds the patient class only)."""
    import highdicom as hd
    from highdicom.sr import (Comprehensive3DSR, FindingSite, Measurement, MeasurementReport,
                              MeasurementsAndQualitativeEvaluations, ObservationContext, ObserverContext,
                              DeviceObserverIdentifyingAttributes, QualitativeEvaluation, ReferencedSegment,
                              TrackingIdentifier, VolumetricROIMeasurementsAndQualitativeEvaluations)
    from highdicom.sr.templates import AlgorithmIdentification
    from pydicom.sr.codedict import codes

    from nnunet_plus import __version__

    concepts = label_concepts(schema)
    by_lesion = {spec.lesion_id: spec for spec in specs if spec.lesion_id is not None}
    algorithm = AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__)
    liver_site = [FindingSite(anatomic_location=_concept(_LIVER))]
    groups = []
    for lesion in sorted(record.get("lesions", []), key=lambda r: int(r["id"])):
        lesion_id = int(lesion["id"])
        spec = by_lesion.get(lesion_id)
        if spec is None or seg is None:
            raise DicomOutputError(f"lesion {lesion_id} of case {record.get('case')} has no voxel in the label map: "
                                   "it has no segment to reference")
        type_code = _concept(concepts[spec.label_value].type)
        measurements = []
        for key, name, unit in (("volume_mm3", _VOLUME, "mm3"), ("axial_diameter_mm", _LONG_AXIS, "mm"),
                                ("probability", _PROBABILITY, "1")):
            value = _number(lesion.get(key))
            if value is not None:
                measurements.append(Measurement(name=_concept(name), value=value, unit=_concept(_UNITS[unit]),
                                                algorithm_id=algorithm))
        evaluations = [QualitativeEvaluation(name=_concept(_CLASSIFICATION), value=type_code)]
        tier = lesion.get("tier")
        if tier is not None:
            evaluations.append(QualitativeEvaluation(
                name=_concept(_TIER), value=_concept(_TIERS.get(tier, (str(tier)[:16], LOCAL_SCHEME, str(tier))))))
        groups.append(VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=spec.tracking_uid, identifier=spec.tracking_id),
            referenced_segment=ReferencedSegment.from_segmentation(seg, segment_number=spec.number),
            finding_type=type_code, finding_category=_concept(_ABNORMAL), finding_sites=liver_site,
            algorithm_id=algorithm, measurements=measurements or None, qualitative_evaluations=evaluations))
    patient_class = str(record.get("patient", {}).get("class", "normal"))
    if patient_class in schema.labels and int(schema.labels[patient_class]) in concepts:
        class_code = _concept(concepts[int(schema.labels[patient_class])].type)
    elif patient_class == "normal":
        class_code = _concept(_NORMAL)
    else:
        class_code = _concept((patient_class[:16], LOCAL_SCHEME, patient_class[:64]))
    groups.append(MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="patient"), finding_sites=liver_site,
        algorithm_id=algorithm,
        qualitative_evaluations=[QualitativeEvaluation(name=_concept(_IMPRESSION), value=class_code)]))
    device = ObserverContext(observer_type=codes.cid270.Device,
                             observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                                 uid=hd.UID(), name=ALGORITHM_NAME, model_name=(model_id or ALGORITHM_NAME)[:64]))
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=device),
                               procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups,
                               title=codes.cid7021.ImagingMeasurementReport)
    evidence = ([seg] if seg is not None else []) + list(source)
    return Comprehensive3DSR(evidence=evidence, content=report[0], series_instance_uid=hd.UID(),
                             series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
                             manufacturer=ALGORITHM_NAME, is_complete=True,
                             series_description="nnunet_plus lesion report")


# ---- files ------------------------------------------------------------------------------------------------
def dicom_paths(output_folder: str | Path, case: str) -> dict[str, Path]:
    """``{"seg": <case>_seg.dcm, "sr": <case>_sr.dcm}`` in ``output_folder``."""
    folder = Path(output_folder)
    return {"seg": folder / f"{case}{SEG_SUFFIX}", "sr": folder / f"{case}{SR_SUFFIX}"}


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
    series does not match ``geometry`` (see :func:`read_source_series`)."""
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


# ---- reading back -----------------------------------------------------------------------------------------
def label_map_from_seg(seg, schema: LesionSchema, source_sop_instance_uids: Sequence[str]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(label map (Z, Y, X) uint8, instances (Z, Y, X) int32)`` rebuilt from a SEG written here (a highdicom
    Segmentation, e.g. ``highdicom.seg.segread(path)``), slice z = ``source_sop_instance_uids[z]`` (the source
    series sorted as the volume). Each segment's Segmented Property Type maps to its label value
    (:func:`label_concepts`), lesion segments' Tracking IDs ``"lesion <id>"`` to the instance ids."""
    inverse = {(c.type[0], c.type[1]): value for value, c in label_concepts(schema).items()}
    numbers = list(seg.get_segment_numbers())
    values = np.zeros(max(numbers, default=0) + 1, dtype=np.uint8)
    ids = np.zeros(len(values), dtype=np.int32)
    for number in numbers:
        description = seg.get_segment_description(number)
        code = description.segmented_property_type
        key = (str(code.value), str(code.scheme_designator))
        if key not in inverse:
            raise ValueError(f"segment {number} ({description.segment_label}) has type {key}, not a label of the "
                             "schema")
        values[number] = inverse[key]
        match = _LESION_TRACKING.match(str(description.get("TrackingID", "")))
        if match:
            ids[number] = int(match.group(1))
    segment_map = seg.get_pixels_by_source_instance(list(source_sop_instance_uids), combine_segments=True,
                                                    assert_missing_frames_are_empty=True, dtype=np.int64)
    return values[segment_map], ids[segment_map]


def read_sr_report(sr, schema: LesionSchema | None = None) -> dict:
    """``{"lesions": [{"id", "class", "volume_mm3", "axial_diameter_mm", "probability", "tier",
    "referenced_segment"}], "patient": {"class"}}`` read back from an SR written here (a highdicom
    Comprehensive3DSR, e.g. ``highdicom.sr.srread(path)``); classes are label names when ``schema`` is given
    (else the codes' meanings)."""
    from highdicom.sr import CodedConcept

    names = {}
    if schema is not None:
        names = {(c.type[0], c.type[1]): c.name for c in label_concepts(schema).values()}
        names[(_NORMAL[0], _NORMAL[1])] = "normal"

    def name_of(code) -> str:
        return names.get((str(code.value), str(code.scheme_designator)), str(code.meaning))

    def numeric(group, triple):
        found = group.get_measurements(name=_concept(triple))
        return float(found[0].value) if found else None

    def evaluation(group, triple):
        found = group.get_qualitative_evaluations(name=_concept(triple))
        return CodedConcept.from_dataset(found[0].value) if found else None

    lesions = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        match = _LESION_TRACKING.match(str(group.tracking_identifier))
        tier = evaluation(group, _TIER)
        lesions.append({
            "id": int(match.group(1)) if match else None,
            "class": name_of(evaluation(group, _CLASSIFICATION) or group.finding_type),
            "volume_mm3": numeric(group, _VOLUME), "axial_diameter_mm": numeric(group, _LONG_AXIS),
            "probability": numeric(group, _PROBABILITY), "tier": None if tier is None else str(tier.value),
            "referenced_segment": int(group.referenced_segment.referenced_segment_numbers[0])
            if group.referenced_segment is not None else None})
    patient = {}
    for group in sr.content.get_image_measurement_groups():
        if str(group.tracking_identifier) == "patient":
            value = evaluation(group, _IMPRESSION)
            patient["class"] = None if value is None else name_of(value)
    return {"lesions": lesions, "patient": patient}
