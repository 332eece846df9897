"""DICOM SEG + SR outputs (nnunet_plus.predict.dicom_out and its dicom_seg, dicom_sr, dicom_codes): a
pydicom-written CT series, synthetic label maps and case records (no nnU-Net), read back with highdicom (and
dciodvfy / dcmqi where installed)."""
from __future__ import annotations

import datetime
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from nnunet_plus.files.image_io import Geometry  # noqa: E402
from nnunet_plus.predict import dicom_out  # noqa: E402
from nnunet_plus.predict.dicom_codes import LOCAL_SCHEME, label_concepts  # noqa: E402
from nnunet_plus.predict.dicom_seg import label_map_from_seg  # noqa: E402
from nnunet_plus.predict.dicom_sr import read_sr_report  # noqa: E402
from nnunet_plus.predict.errors import DicomOutputError  # noqa: E402
from nnunet_plus.predict.inputs import read_sitk  # noqa: E402
from nnunet_plus.refine import CaseResult  # noqa: E402
from nnunet_plus.schema import build_schema  # noqa: E402

SHAPE = (8, 16, 16)  # z, y, x
SPACING = (0.8, 0.7, 2.5)  # x, y, z (SimpleITK order)
ORIGIN = (-100.25, -80.5, 310.0)
LABELS = {"background": 0, "liver": 1, "hcc": 2, "icc": 3, "metastasis": 4, "hemangioma": 5, "fnh": 6,
          "calcification": 7, "cyst": 8}


@pytest.fixture(scope="module")
def schema():
    names = [n for n in LABELS if n not in ("background", "liver")]
    return build_schema(LABELS, liver=("liver",), lesions=names, malignant=("hcc", "icc", "metastasis"),
                        benign=("hemangioma", "fnh", "calcification", "cyst"))


def write_ct_series(folder: Path, *, shape=SHAPE, spacing=SPACING, origin=ORIGIN, shuffle_names=True,
                    extra_localizer=False) -> Path:
    """A CT Image Storage series, one file per slice, proper UIDs / positions / orientation / spacing (file names
    in an order unrelated to the slice order, to check the sorting)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    order = rng.permutation(shape[0]) if shuffle_names else np.arange(shape[0])
    now = datetime.datetime(2024, 1, 2, 3, 4, 5)

    def base(sop_uid: str, series_uid: str, number: int) -> FileDataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "TEST^LIVER", "P001", "19600101", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "A1", "1", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "test", 3, number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP, ds.AcquisitionNumber = 120, 1
        return ds

    for z in range(shape[0]):
        ds = base(generate_uid(), series, z + 1)
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = spacing[2]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + z * spacing[2]]
        ds.SliceLocation = origin[2] + z * spacing[2]
        ds.PixelData = (np.full(shape[1:], 40, np.int16) + z).tobytes()
        ds.save_as(folder / f"slice_{int(order[z]):03d}.dcm", enforce_file_format=True)
    if extra_localizer:  # a scout image of another series in the same folder, to be ignored
        ds = base(generate_uid(), generate_uid(), 1)
        ds.Rows, ds.Columns, ds.PixelSpacing, ds.SliceThickness = 20, 12, [2.0, 2.0], 1.0
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 0, -1], [-100, 0, 400]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.PixelData = np.zeros((20, 12), np.int16).tobytes()
        ds.save_as(folder / "scout.dcm", enforce_file_format=True)
    return folder


def synthetic_case(schema, geometry: Geometry, case: str = "ct_001") -> CaseResult:
    """Liver + four lesions (two hcc, one cyst, one metastasis touching the border) and their record."""
    label_map = np.zeros(SHAPE, np.uint8)
    instances = np.zeros(SHAPE, np.int32)
    label_map[1:7, 2:14, 2:14] = 1
    boxes = [(2, (slice(1, 4), slice(3, 6), slice(3, 7))), (2, (slice(4, 6), slice(9, 12), slice(9, 12))),
             (8, (slice(2, 5), slice(10, 13), slice(3, 5))), (4, (slice(5, 7), slice(2, 4), slice(11, 14)))]
    lesions = []
    voxel = float(np.prod(SPACING))
    tiers = ["confident", "confident", "suspicious", "confident"]
    for i, (label, box) in enumerate(boxes, start=1):
        label_map[box] = label
        instances[box] = i
        n = int((instances == i).sum())
        name = schema.label_name(label)
        lesions.append({"id": i, "label": label, "class": name, "n_voxels": n, "volume_mm3": n * voxel,
                        "volume_cm3": n * voxel / 1000.0, "axial_diameter_mm": 3.1 + i / 3.0,
                        "probability": 0.5 + i / 10.0 + 1 / 3.0 / 100, "tier": tiers[i - 1]})
    record = {"case": case, "lesions": lesions, "rejected": [],
              "patient": {"class": "hcc", "n_lesions": 4, "liver_found": True, "liver_volume_ml": 1523.25}}
    return CaseResult(case, label_map, instances, record, geometry)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return write_ct_series(tmp_path_factory.mktemp("dicom_in") / "ct_001", extra_localizer=True)


@pytest.fixture(scope="module")
def written(series, schema, tmp_path_factory):
    geometry = Geometry.of(read_sitk(series))
    result = synthetic_case(schema, geometry)
    out = tmp_path_factory.mktemp("dicom_out")
    paths = dicom_out.write_dicom_outputs(out, result.case, result.label_map, result.instances, result.record,
                                          geometry, schema, source_files=(series,),
                                          model_id="Dataset501_Liver/nnUNetTrainerPLUS__nnUNetPlans__3d_fullres")
    return result, paths, geometry


def _sorted_source(series: Path) -> list:
    datasets = [pydicom.dcmread(p) for p in sorted(series.glob("slice_*.dcm"))]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_geometry_of_test_series(series):
    geometry = Geometry.of(read_sitk(series))  # SimpleITK (GDCM) reads the series that pydicom wrote
    assert geometry.shape_zyx == SHAPE
    np.testing.assert_allclose(geometry.spacing, SPACING)
    np.testing.assert_allclose(geometry.origin, ORIGIN)


def test_seg_round_trip(written, series, schema):
    result, paths, _ = written
    assert set(paths) == {"seg", "sr"} and paths["seg"].name == "ct_001_seg.dcm"
    seg = hd.seg.segread(paths["seg"])
    source = _sorted_source(series)
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for item in s.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in source}  # the scout is not referenced
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    label_map, instances = label_map_from_seg(seg, schema, [ds.SOPInstanceUID for ds in source])
    np.testing.assert_array_equal(label_map, result.label_map)
    np.testing.assert_array_equal(instances, result.instances)
    # same patient space: each frame lies on its source slice
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ds = next(d for d in source if d.SOPInstanceUID == uid)
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in ds.ImagePositionPatient])


def test_seg_segments_and_codes(written):
    _, paths, _ = written
    seg = hd.seg.segread(paths["seg"])
    described = [seg.get_segment_description(n) for n in seg.get_segment_numbers()]
    assert [d.segment_label for d in described] == ["liver", "lesion 1: hcc", "lesion 2: hcc", "lesion 3: cyst",
                                                    "lesion 4: metastasis"]
    types = [(d.segmented_property_type.value, d.segmented_property_type.scheme_designator) for d in described]
    assert types == [("10200004", "SCT"), ("25370001", "SCT"), ("25370001", "SCT"), ("367643001", "SCT"),
                     ("14799000", "SCT")]
    assert described[0].segmented_property_category.value == "91723000"
    assert all(d.segmented_property_category.value == "49755003" for d in described[1:])
    assert [d.get("TrackingID") for d in described[1:]] == [f"lesion {i}" for i in range(1, 5)]
    algorithm = described[1].SegmentationAlgorithmIdentificationSequence[0]
    from nnunet_plus import __version__

    assert algorithm.AlgorithmName == "nnunet_plus" and algorithm.AlgorithmVersion == __version__
    assert "nnUNetTrainerPLUS__nnUNetPlans__3d_fullres" in algorithm.AlgorithmSource
    assert seg.SegmentationType == "BINARY"


def test_sr_lists_the_record(written, schema):
    result, paths, _ = written
    sr = hd.sr.srread(paths["sr"])
    seg = hd.seg.segread(paths["seg"])
    report = read_sr_report(sr, schema)
    assert report["patient"] == {"class": "hcc", "liver_volume_ml": pytest.approx(1523.25)}
    assert [r["id"] for r in report["lesions"]] == [1, 2, 3, 4]
    tracking = {seg.get_segment_description(n).get("TrackingID"): n for n in seg.get_segment_numbers()}
    for got, want in zip(report["lesions"], result.record["lesions"]):
        assert got["class"] == want["class"] and got["tier"] == want["tier"]
        for key in ("volume_mm3", "axial_diameter_mm", "probability"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
        assert got["referenced_segment"] == tracking[f"lesion {want['id']}"]
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert str(sr.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == seg.StudyInstanceUID


def test_no_lesion_case_writes_sr_only_when_nothing_segmented(series, schema, tmp_path):
    geometry = Geometry.of(read_sitk(series))
    empty = np.zeros(SHAPE, np.uint8)
    record = {"case": "empty", "lesions": [], "patient": {"class": "normal", "liver_found": False,
                                                           "liver_volume_ml": 0.0}}
    paths = dicom_out.write_dicom_outputs(tmp_path, "empty", empty, empty.astype(np.int32), record, geometry,
                                          schema, source_files=(series,))
    assert set(paths) == {"sr"}
    report = read_sr_report(hd.sr.srread(paths["sr"]), schema)
    # "normal" with a liver of 0 ml: a PACS reader sees that nothing was seen, not a healthy liver
    assert report == {"lesions": [], "patient": {"class": "normal", "liver_volume_ml": 0.0}}


def test_nifti_input_gets_a_message(schema, tmp_path, caplog):
    geometry = Geometry(SHAPE[::-1], SPACING, ORIGIN, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    result = synthetic_case(schema, geometry)
    nifti = tmp_path / "ct_001_0000.nii.gz"
    nifti.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.dicom_out"):
        dicom_out.write_case_dicom(tmp_path, result, schema, dicom_out.DicomRequest((nifti,)))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "DICOM SEG needs a DICOM source series" in messages[0]
    assert "\n" not in messages[0]
    assert not list(tmp_path.glob("*.dcm"))


def test_grid_not_on_the_slices_is_refused(series, schema, tmp_path, caplog):
    geometry = Geometry.of(read_sitk(series))
    shifted = Geometry(geometry.size, geometry.spacing, (geometry.origin[0], geometry.origin[1],
                                                         geometry.origin[2] + 1.0), geometry.direction)
    result = synthetic_case(schema, shifted)
    with pytest.raises(DicomOutputError, match="slices of the predicted grid"):
        dicom_out.write_dicom_outputs(tmp_path, "x", result.label_map, result.instances, result.record, shifted,
                                      schema, source_files=(series,))
    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.dicom_out"):
        dicom_out.write_case_dicom(tmp_path, result, schema, dicom_out.DicomRequest((series,)))
    assert any("no DICOM SEG / SR written" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob("*.dcm"))


def test_label_concepts_are_unique(schema):
    concepts = label_concepts(schema)
    keys = [(c.type[0], c.type[1]) for c in concepts.values()]
    assert len(keys) == len(set(keys))
    assert concepts[LABELS["fnh"]].type[1] == LOCAL_SCHEME
    duplicate = build_schema({"background": 0, "liver": 1, "cyst": 2, "Cyst": 3}, liver=("liver",),
                             lesions=("cyst", "Cyst"), malignant=(), benign=("cyst", "Cyst"))
    concepts = label_concepts(duplicate)
    assert concepts[2].type[0] == "367643001" and concepts[3].type == ("Cyst", LOCAL_SCHEME, "Cyst")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not on PATH")
def test_dciodvfy_reports_no_error(written):
    _, paths, _ = written
    for path in paths.values():
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n" + "\n".join(errors)


@pytest.mark.skipif(shutil.which("segimage2itkimage") is None,
                    reason="segimage2itkimage (dcmqi, pip install dcmqi) is not on PATH")
def test_dcmqi_reads_the_seg(written, schema, tmp_path):
    """An independent reader: dcmqi writes one image per segment; resampled (nearest) onto the NIfTI grid and
    mapped to label values by the segments' type codes, they give the label map voxel for voxel."""
    import SimpleITK as sitk

    result, paths, geometry = written
    run = subprocess.run(["segimage2itkimage", "--inputDICOM", str(paths["seg"]), "--outputDirectory",
                          str(tmp_path), "-t", "nrrd", "-p", "seg"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    seg = hd.seg.segread(paths["seg"])
    value_of = {(c.type[0], c.type[1]): v for v, c in label_concepts(schema).items()}
    reference = geometry.apply(sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8)))
    rebuilt = np.zeros(SHAPE, np.uint8)
    for number in seg.get_segment_numbers():
        image = sitk.ReadImage(str(tmp_path / f"seg-{number}.nrrd"))
        resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        code = seg.get_segment_description(number).segmented_property_type
        mask = sitk.GetArrayFromImage(resampled) > 0
        assert not (mask & (rebuilt > 0)).any(), f"segment {number} overlaps another"
        rebuilt[mask] = value_of[(code.value, code.scheme_designator)]
    np.testing.assert_array_equal(rebuilt, result.label_map)


def _plug_and_play_project(schema, tmp_path, monkeypatch) -> tuple[Path, Path, Path, Path]:
    """nnU-Net folders with dataset 501 (the schema in its dataset.json), ``images/`` with a DICOM series case
    ``ct_001`` and a NIfTI case ``ct_002``, ``segs/`` with a label map of each; ``(images, segs, out, series)``."""
    import json

    import SimpleITK as sitk

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    dataset = tmp_path / "nnUNet_raw" / "Dataset501_Liver"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "CT"},
                                                       "file_ending": ".nii.gz", "numTraining": 0,
                                                       "plus": schema.to_block()}))
    images, segmentations, out = tmp_path / "images", tmp_path / "segs", tmp_path / "out"
    series = write_ct_series(images / "ct_001")
    geometry = Geometry.of(read_sitk(series))
    case = synthetic_case(schema, geometry)
    segmentations.mkdir()
    for name in ("ct_001", "ct_002"):
        sitk.WriteImage(geometry.apply(sitk.GetImageFromArray(case.label_map)), str(segmentations / f"{name}.nii.gz"))
    sitk.WriteImage(geometry.apply(sitk.GetImageFromArray(np.zeros(SHAPE, np.int16))), str(images / "ct_002.nii.gz"))
    return images, segmentations, out, series


def test_cli_dicom_seg_end_to_end(schema, tmp_path, monkeypatch, caplog):
    """nnunet_plus_predict --from-segmentation ... --dicom-seg (no network to train): a DICOM case gets a SEG whose
    label map equals <case>.nii.gz voxel for voxel and an SR listing <case>.json's lesions; a NIfTI case gets the
    one-line message and its other outputs."""
    import json

    import SimpleITK as sitk

    from nnunet_plus.predict import cli

    images, segmentations, out, series = _plug_and_play_project(schema, tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING):
        code = cli.main(["-i", str(images), "-o", str(out), "-d", "501", "-c", "3d_fullres", "--from-segmentation",
                         str(segmentations), "--no-classifier", "--dicom-seg", "-npp", "0", "--disable_progress_bar"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.dcm")) == ["ct_001_seg.dcm", "ct_001_sr.dcm"]
    assert (out / "ct_002.json").is_file()
    assert [r for r in caplog.records if "DICOM SEG needs a DICOM source series" in r.getMessage()
            and "ct_002" in r.getMessage()]
    label_map = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct_001.nii.gz")))
    record = json.loads((out / "ct_001.json").read_text())
    assert len(record["lesions"]) == 4
    source = _sorted_source(series)
    seg = hd.seg.segread(out / "ct_001_seg.dcm")
    rebuilt, _ = label_map_from_seg(seg, schema, [ds.SOPInstanceUID for ds in source])
    np.testing.assert_array_equal(rebuilt, label_map)
    report = read_sr_report(hd.sr.srread(out / "ct_001_sr.dcm"), schema)
    assert report["patient"]["class"] == record["patient"]["class"]
    assert [(r["id"], r["class"], r["tier"]) for r in report["lesions"]] == \
        [(r["id"], r["class"], r["tier"]) for r in record["lesions"]]
    for got, want in zip(report["lesions"], record["lesions"]):
        for key in ("volume_mm3", "axial_diameter_mm", "probability"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), key


def test_continue_with_dicom_seg_writes_what_an_earlier_run_without_it_left_out(schema, tmp_path, monkeypatch):
    """A run without --dicom-seg, then --dicom-seg --continue_prediction: the DICOM case is redone (it lacks its
    SEG / SR), the NIfTI case (nothing DICOM to write) is skipped; a third run skips both."""
    import json

    from nnunet_plus.predict import cli

    images, segmentations, out, _ = _plug_and_play_project(schema, tmp_path, monkeypatch)
    base = ["-i", str(images), "-o", str(out), "-d", "501", "-c", "3d_fullres", "--from-segmentation",
            str(segmentations), "--no-classifier", "-npp", "0", "--disable_progress_bar"]

    def run(*extra: str) -> dict:
        assert cli.main([*base, *extra]) == 0
        return json.loads((out / "nnunet_plus_predict.json").read_text())["report"]

    run()
    assert not list(out.glob("*.dcm"))
    report = run("--dicom-seg", "--continue_prediction")
    assert report["skipped"] == ["ct_002"] and report["done"] == ["ct_001"]
    assert sorted(p.name for p in out.glob("*.dcm")) == ["ct_001_seg.dcm", "ct_001_sr.dcm"]
    report = run("--dicom-seg", "--continue_prediction")
    assert report["skipped"] == ["ct_001", "ct_002"] and report["done"] == []
