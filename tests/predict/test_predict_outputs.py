"""Output files of nnunet_plus_predict: atomic writes, geometry, cohort tables, label description files."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnunet_plus.files.atomic import atomic_path, write_json_atomic
from nnunet_plus.files.image_io import Geometry
from nnunet_plus.predict.outputs import (build_tables, is_case_done, label_colors, write_image,
                                         write_label_descriptions, write_tables)
from nnunet_plus.schema import build_schema

from helpers import ODD_ORIGIN, ROTATED_DIRECTION
from helpers import write_image as write_source_image

SCHEMA = build_schema({"background": 0, "liver": 1, "hcc": 2, "cyst": 3})


def _record(case, lesions, patient_class="normal"):
    return {"case": case, "spacing": [4.0, 1.5, 1.5], "sensitivities": [1.0, 4.0], "classifier": False,
            "lesions": lesions, "rejected": [{"candidate_id": 9}],
            "patient": {"class": patient_class, "n_lesions": len(lesions), "livermax": {"hcc": 0.5, "cyst": 0.25},
                        "probabilities": {"tumor": 0.5, "malignant": 0.5, "benign": 0.25}}}


def _lesion(i, cls, volume):
    return {"id": i, "class": cls, "label": SCHEMA.labels[cls], "probability": 0.75, "tier": "confident",
            "volume_cm3": volume, "centroid_world": [1.0, 2.0, 3.0], "bbox": [0, 1, 2, 3, 4, 5],
            "prior": {"hcc": 0.75, "cyst": 0.125}}


def test_write_image_keeps_geometry(tmp_path):
    source = tmp_path / "in.nii.gz"
    write_source_image(np.zeros((3, 4, 5), np.int16), source, spacing=(0.7, 0.8, 2.5), origin=ODD_ORIGIN,
                       direction=ROTATED_DIRECTION)
    geometry = Geometry.of(sitk.ReadImage(str(source)))
    labels = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    write_image(labels, geometry, tmp_path / "out.nii.gz")
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), labels)
    assert out.GetSize() == geometry.size and out.GetOrigin() == geometry.origin
    assert out.GetSpacing() == geometry.spacing
    np.testing.assert_allclose(out.GetDirection(), geometry.direction, rtol=0, atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.nii.gz"]  # no temp file left


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".json") and tmp.parent == tmp_path
        tmp.write_text('"whole"')  # checked before the rename: it must be valid JSON
    assert target.read_text() == '"whole"' and list(tmp_path.iterdir()) == [target]


def test_tables_flatten_lesions_and_patients():
    records = [_record("b", [_lesion(1, "hcc", 2.5), _lesion(2, "cyst", 0.5)], "hcc"), _record("a", [])]
    lesions, patients = build_tables(records)
    assert list(lesions["case"]) == ["b", "b"] and list(lesions["id"]) == [1, 2]
    assert list(lesions["class"]) == ["hcc", "cyst"]
    assert lesions.loc[0, "centroid_world_x"] == 1.0 and lesions.loc[0, "centroid_world_z"] == 3.0
    assert lesions.loc[1, "bbox_z1"] == 3 and lesions.loc[1, "prior_cyst"] == 0.125
    assert list(patients["case"]) == ["b", "a"]
    assert list(patients["class"]) == ["hcc", "normal"] and list(patients["n_lesions"]) == [2, 0]
    assert list(patients["n_rejected"]) == [1, 1]
    assert patients.loc[0, "livermax_cyst"] == 0.25 and patients.loc[1, "probabilities_tumor"] == 0.5


def test_write_tables_reads_only_case_json(tmp_path):
    write_json_atomic(tmp_path / "c2.json", _record("c2", [_lesion(1, "cyst", 1.0)], "cyst"))
    write_json_atomic(tmp_path / "c1.json", _record("c1", []))
    write_json_atomic(tmp_path / "nnunet_plus_predict.json", {"folds": [0]})
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    lesions, patients = write_tables(tmp_path)
    assert list(patients["case"]) == ["c1", "c2"] and len(lesions) == 1
    on_disk = pd.read_csv(tmp_path / "patients.csv")
    assert list(on_disk["case"]) == ["c1", "c2"] and list(on_disk["class"]) == ["normal", "cyst"]
    assert pd.read_csv(tmp_path / "lesions.csv")["class"].tolist() == ["cyst"]


def test_empty_tables_still_have_headers(tmp_path):
    write_tables(tmp_path)
    assert (tmp_path / "lesions.csv").read_text().startswith("case,id,class,probability")
    assert (tmp_path / "patients.csv").read_text().startswith("case,class")


def test_label_description_files(tmp_path):
    write_label_descriptions(tmp_path, SCHEMA)
    text = (tmp_path / "labels_itksnap.txt").read_text()
    snap = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert [int(row[0]) for row in snap] == [0, 1, 2, 3]
    assert re.findall(r'"([^"]*)"', text) == ["Clear Label", "liver", "hcc", "cyst"]
    assert snap[1][1:7] == ["221", "130", "101", "1.00", "1", "1"]  # liver brown, opaque, visible
    assert snap[0][4:7] == ["0.00", "0", "0"]  # clear label invisible
    slicer = [line.split() for line in (tmp_path / "labels_slicer.ctbl").read_text().splitlines()
              if not line.startswith("#")]
    assert [(int(r[0]), r[1]) for r in slicer] == [(0, "background"), (1, "liver"), (2, "hcc"), (3, "cyst")]
    assert all(len(r) == 6 for r in slicer)
    colors = label_colors(SCHEMA)
    assert colors[2][1] != colors[3][1]  # malignant and benign lesions differ


def test_is_case_done_needs_every_requested_file(tmp_path):
    for name in ("c.nii.gz", "c_instances.nii.gz", "c.json"):
        (tmp_path / name).write_text("x")
    assert is_case_done(tmp_path, "c")
    assert not is_case_done(tmp_path, "c", save_probabilities=True)
    assert not is_case_done(tmp_path, "c", overlays=True)
    (tmp_path / "c.json").unlink()
    assert not is_case_done(tmp_path, "c")


def test_dicom_case_with_dicom_seg_is_done_only_with_its_sr(tmp_path):
    out, series, nifti = tmp_path / "out", tmp_path / "series", tmp_path / "c_0000.nii.gz"
    series.mkdir()
    for name in ("c.nii.gz", "c_instances.nii.gz", "c.json"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("x")
    assert is_case_done(out, "c")  # without --dicom-seg
    assert is_case_done(out, "c", dicom_seg_input=(nifti,))  # not a DICOM series: no SEG / SR expected
    assert not is_case_done(out, "c", dicom_seg_input=(series,))
    (out / "c_sr.dcm").write_text("x")
    assert is_case_done(out, "c", dicom_seg_input=(series,))


@pytest.mark.parametrize("n_lesions", [0, 1, 14])
def test_overlay_png(tmp_path, n_lesions):
    from nnunet_plus.predict.overlays import MAX_PANELS, write_overlay

    image = np.full((1, 6, 40, 40), 60.0, np.float32)
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[:, 5:35, 5:35] = 1
    instances = np.zeros((6, 40, 40), np.int32)
    lesions = []
    for i in range(n_lesions):
        y, x = 6 + 2 * (i // 7) * 4, 6 + (i % 7) * 4
        instances[2, y:y + 3, x:x + 3] = i + 1
        labels[2, y:y + 3, x:x + 3] = 2
        lesions.append({"id": i + 1, "class": "hcc", "probability": 0.5, "volume_mm3": 9.0 - i * 0.1})
    path = tmp_path / "case_overlay.png"
    write_overlay(path, image, labels, instances, lesions, SCHEMA, title="case")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    panels = max(1, min(n_lesions, MAX_PANELS))
    cols = min(4, panels)
    assert width == int(3.2 * cols * 90) and height == int((3.4 * -(-panels // cols) + 0.4) * 90)
    assert [p.name for p in tmp_path.iterdir()] == ["case_overlay.png"]
