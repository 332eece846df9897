"""The DICOM Segmentation (SEG) of a case: its segments, the highdicom Segmentation, and the label map read back.

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
Segmented Property Type code maps back to one label value of the dataset's schema (the table of
:mod:`nnunet_plus.predict.dicom_codes`, :func:`~nnunet_plus.predict.dicom_codes.label_concepts`; a code is
given to at most one label, later duplicates get a local code), and each voxel takes the value of the segment
that holds it (0 where none does). The instances map is rebuilt from the lesion segments' Tracking IDs. A case
with no liver and no lesion voxel has no SEG (nothing to segment): the SR is still written, with the patient
class and no lesion group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.predict.dicom_codes import ALGORITHM_NAME, LESION_TRACKING, LIVER, coded_concept, label_concepts
from nnunet_plus.predict.outputs import label_colors
from nnunet_plus.schema import LesionSchema

SEG_SERIES_NUMBER = 901


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
    :func:`~nnunet_plus.predict.dicom_source.read_source_series`); None when no voxel is segmented."""
    import highdicom as hd

    from nnunet_plus import __version__

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
        label = concepts[spec.label_value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=spec.number, segment_label=spec.label[:64],
            segmented_property_category=coded_concept(label.category),
            segmented_property_type=coded_concept(label.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=spec.tracking_uid, tracking_id=spec.tracking_id,
            anatomic_regions=[coded_concept(LIVER)] if label.is_lesion else None,
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
        match = LESION_TRACKING.match(str(description.get("TrackingID", "")))
        if match:
            ids[number] = int(match.group(1))
    segment_map = seg.get_pixels_by_source_instance(list(source_sop_instance_uids), combine_segments=True,
                                                    assert_missing_frames_are_empty=True, dtype=np.int64)
    return values[segment_map], ids[segment_map]

