"""nnunet_plus_predict with the (tiny) nnU-Net model and --dicom-seg on a DICOM series folder: the SEG read back
gives <case>.nii.gz voxel for voxel on the source slices and the SR lists <case>.json's lesions (issue 15).

``--min-probability 0.9`` keeps the tiny 2-epoch model's hundreds of noise lesions out: one SEG segment per
lesion makes highdicom's encoding take minutes for them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")


def test_predicted_dicom_case_gets_a_matching_seg_and_sr(cli, tiny_trained_model, mixed_inputs, tmp_path):
    from nnunet_plus.predict.dicom_seg import label_map_from_seg
    from nnunet_plus.predict.dicom_sr import read_sr_report
    from nnunet_plus.schema import LesionSchema

    out = tmp_path / "out"
    code, _, err = cli("-i", str(mixed_inputs), "-o", str(out), "--dicom-seg", "--min-probability", "0.9")
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.dcm")) == ["dicom_case_seg.dcm", "dicom_case_sr.dcm"]
    schema = LesionSchema.from_dataset_json(tiny_trained_model.raw_folder / "dataset.json")
    source = sorted((pydicom.dcmread(p) for p in (mixed_inputs / "dicom_case").glob("*.dcm")),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    seg = hd.seg.segread(out / "dicom_case_seg.dcm")
    rebuilt, _ = label_map_from_seg(seg, schema, [ds.SOPInstanceUID for ds in source])
    label_map = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "dicom_case.nii.gz")))
    assert label_map.any()  # the tiny model segments the liver at least
    np.testing.assert_array_equal(rebuilt, label_map)
    record = json.loads((out / "dicom_case.json").read_text())
    report = read_sr_report(hd.sr.srread(out / "dicom_case_sr.dcm"), schema)
    assert report["patient"]["class"] == record["patient"]["class"]
    assert [(r["id"], r["class"], r["tier"]) for r in report["lesions"]] == \
        [(r["id"], r["class"], r["tier"]) for r in record["lesions"]]
    for got, want in zip(report["lesions"], record["lesions"]):
        assert got["volume_mm3"] == pytest.approx(want["volume_mm3"], rel=1e-9)
