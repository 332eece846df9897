"""The DICOM measurement report (SR) of a case: TID 1500 with one volumetric group per lesion, and reading it back.

SR content (TID 1500; one TID 1411 volumetric group per lesion, referencing its SEG segment)

=============================  =====================================================  ========  ==================
item                           concept name                                            scheme    value / unit
=============================  =====================================================  ========  ==================
Tracking Identifier / UID      "lesion <id>" (same as the segment's Tracking ID/UID)   DCM       text / UID
Finding (lesion type)          121071 Finding (row "Finding" of TID 1411)              DCM       type code
type (qualitative evaluation)  278201002 Classification                                SCT       type code
volume                         118565006 Volume                                        SCT       UCUM mm3
longest axial diameter         103339001 Long axis                                     SCT       UCUM mm
probability                    122157 Probability                                      DCM       UCUM 1 (no units)
tier                           tier (Detection tier)                                   local     confident/suspicious
patient class (own group,      121073 Impression                                       DCM       type code of the
Tracking Identifier "patient")                                                                   class, or SCT
                                                                                                 17621005 Normal
liver volume (patient group)   118565006 Volume, finding site Liver                    SCT       UCUM ml (0: no
                                                                                                 liver found)
=============================  =====================================================  ========  ==================

Type codes: :mod:`nnunet_plus.predict.dicom_codes`; the segments the groups reference:
:mod:`nnunet_plus.predict.dicom_seg`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from nnunet_plus.predict.dicom_codes import (ABNORMAL, ALGORITHM_NAME, CLASSIFICATION, IMPRESSION, LESION_TRACKING,
                                             LIVER, LOCAL_SCHEME, LONG_AXIS, NORMAL, PROBABILITY, TIER, TIERS, UNITS,
                                             VOLUME, LabelConcept, coded_concept, label_concepts)
from nnunet_plus.predict.dicom_seg import SegmentSpec
from nnunet_plus.predict.errors import DicomOutputError
from nnunet_plus.schema import LesionSchema

SR_SERIES_NUMBER = 902


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _lesion_group(lesion: Mapping, spec: SegmentSpec, seg, concepts: Mapping[int, LabelConcept], algorithm,
                  finding_sites: list):
    """The TID 1411 volumetric group of one lesion of the per-case JSON, referencing its segment ``spec``."""
    from highdicom.sr import (Measurement, QualitativeEvaluation, ReferencedSegment, TrackingIdentifier,
                              VolumetricROIMeasurementsAndQualitativeEvaluations)

    type_code = coded_concept(concepts[spec.label_value].type)
    measurements = []
    for key, name, unit in (("volume_mm3", VOLUME, "mm3"), ("axial_diameter_mm", LONG_AXIS, "mm"),
                            ("probability", PROBABILITY, "1")):
        value = _number(lesion.get(key))
        if value is not None:
            measurements.append(Measurement(name=coded_concept(name), value=value, unit=coded_concept(UNITS[unit]),
                                            algorithm_id=algorithm))
    evaluations = [QualitativeEvaluation(name=coded_concept(CLASSIFICATION), value=type_code)]
    tier = lesion.get("tier")
    if tier is not None:
        evaluations.append(QualitativeEvaluation(
            name=coded_concept(TIER), value=coded_concept(TIERS.get(tier, (str(tier)[:16], LOCAL_SCHEME, str(tier))))))
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=spec.tracking_uid, identifier=spec.tracking_id),
        referenced_segment=ReferencedSegment.from_segmentation(seg, segment_number=spec.number),
        finding_type=type_code, finding_category=coded_concept(ABNORMAL), finding_sites=finding_sites,
        algorithm_id=algorithm, measurements=measurements or None, qualitative_evaluations=evaluations)


def _patient_group(record: Mapping, schema: LesionSchema, concepts: Mapping[int, LabelConcept], algorithm,
                   finding_sites: list):
    """The group ``"patient"`` whose Impression is the patient class of the per-case JSON, with the volume of the
    liver found (``patient.liver_volume_ml``; 0 ml tells a reader that "normal" means nothing was seen)."""
    import highdicom as hd
    from highdicom.sr import (Measurement, MeasurementsAndQualitativeEvaluations, QualitativeEvaluation,
                              TrackingIdentifier)

    patient = record.get("patient", {})
    patient_class = str(patient.get("class", "normal"))
    if patient_class in schema.labels and int(schema.labels[patient_class]) in concepts:
        class_code = coded_concept(concepts[int(schema.labels[patient_class])].type)
    elif patient_class == "normal":
        class_code = coded_concept(NORMAL)
    else:
        class_code = coded_concept((patient_class[:16], LOCAL_SCHEME, patient_class[:64]))
    liver_volume = _number(patient.get("liver_volume_ml"))
    measurements = None if liver_volume is None else [
        Measurement(name=coded_concept(VOLUME), value=liver_volume, unit=coded_concept(UNITS["ml"]),
                    algorithm_id=algorithm)]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="patient"), finding_sites=finding_sites,
        algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(name=coded_concept(IMPRESSION), value=class_code)])


def make_sr(seg, specs: Sequence[SegmentSpec], source: Sequence, record: Mapping, schema: LesionSchema, *,
            model_id: str):
    """Comprehensive 3D SR (TID 1500) for ``record`` (the per-case JSON): one volumetric group per lesion that
    references its segment of ``seg`` (the segment whose Tracking ID is ``"lesion <id>"``), and a group with the
    patient class. ``seg`` may be None (no lesion: the SR then holds the patient class only)."""
    import highdicom as hd
    from highdicom.sr import (Comprehensive3DSR, DeviceObserverIdentifyingAttributes, FindingSite,
                              MeasurementReport, ObservationContext, ObserverContext)
    from highdicom.sr.templates import AlgorithmIdentification
    from pydicom.sr.codedict import codes

    from nnunet_plus import __version__

    concepts = label_concepts(schema)
    by_lesion = {spec.lesion_id: spec for spec in specs if spec.lesion_id is not None}
    algorithm = AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__)
    liver_site = [FindingSite(anatomic_location=coded_concept(LIVER))]
    groups = []
    for lesion in sorted(record.get("lesions", []), key=lambda r: int(r["id"])):
        lesion_id = int(lesion["id"])
        spec = by_lesion.get(lesion_id)
        if spec is None or seg is None:
            raise DicomOutputError(f"lesion {lesion_id} of case {record.get('case')} has no voxel in the label map: "
                                   "it has no segment to reference")
        groups.append(_lesion_group(lesion, spec, seg, concepts, algorithm, liver_site))
    groups.append(_patient_group(record, schema, concepts, algorithm, liver_site))
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


def read_sr_report(sr, schema: LesionSchema | None = None) -> dict:
    """``{"lesions": [{"id", "class", "volume_mm3", "axial_diameter_mm", "probability", "tier",
    "referenced_segment"}], "patient": {"class"[, "liver_volume_ml"]}}`` read back from an SR written here (a highdicom
    Comprehensive3DSR, e.g. ``highdicom.sr.srread(path)``); classes are label names when ``schema`` is given
    (else the codes' meanings)."""
    from highdicom.sr import CodedConcept

    names = {}
    if schema is not None:
        names = {(c.type[0], c.type[1]): c.name for c in label_concepts(schema).values()}
        names[(NORMAL[0], NORMAL[1])] = "normal"

    def name_of(code) -> str:
        return names.get((str(code.value), str(code.scheme_designator)), str(code.meaning))

    def numeric(group, triple):
        found = group.get_measurements(name=coded_concept(triple))
        return float(found[0].value) if found else None

    def evaluation(group, triple):
        found = group.get_qualitative_evaluations(name=coded_concept(triple))
        return CodedConcept.from_dataset(found[0].value) if found else None

    lesions = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        match = LESION_TRACKING.match(str(group.tracking_identifier))
        tier = evaluation(group, TIER)
        lesions.append({
            "id": int(match.group(1)) if match else None,
            "class": name_of(evaluation(group, CLASSIFICATION) or group.finding_type),
            "volume_mm3": numeric(group, VOLUME), "axial_diameter_mm": numeric(group, LONG_AXIS),
            "probability": numeric(group, PROBABILITY), "tier": None if tier is None else str(tier.value),
            "referenced_segment": int(group.referenced_segment.referenced_segment_numbers[0])
            if group.referenced_segment is not None else None})
    patient = {}
    for group in sr.content.get_image_measurement_groups():
        if str(group.tracking_identifier) == "patient":
            value = evaluation(group, IMPRESSION)
            patient["class"] = None if value is None else name_of(value)
            liver_volume = numeric(group, VOLUME)
            if liver_volume is not None:
                patient["liver_volume_ml"] = liver_volume
    return {"lesions": lesions, "patient": patient}
