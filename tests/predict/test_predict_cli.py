"""nnunet_plus_predict end to end on the tiny trained model (CPU, no TTA): mixed inputs, exact geometry,
JSON / CSV against the label maps, parts + merge, --continue_prediction, bad inputs, missing model parts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnunet_plus.postprocessing.classify import classify_patient
from nnunet_plus.predict.outputs import write_tables
from nnunet_plus.schema import LesionSchema

from helpers import write_image

CASES = ("dicom_case", "nn_case", "plain_case")


def _input_file(folder: Path, case: str) -> Path:
    return {"nn_case": folder / "nn_case_0000.nii.gz", "plain_case": folder / "plain_case.mha",
            "dicom_case": folder / "dicom_case"}[case]


def _schema(model) -> LesionSchema:
    return LesionSchema.from_dataset_json(model.model_folder / "dataset.json")


def test_outputs_exist_and_keep_the_input_geometry(full_run, mixed_inputs):
    names = {p.name for p in full_run.iterdir()}
    for case in CASES:
        assert {f"{case}.nii.gz", f"{case}_instances.nii.gz", f"{case}.json", f"{case}.npz", f"{case}.pkl",
                f"{case}_overlay.png"} <= names
    assert {"lesions.csv", "patients.csv", "labels_itksnap.txt", "labels_slicer.ctbl"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temp file left
    from nnunet_plus.predict.inputs import read_sitk

    for case in CASES:
        source = read_sitk(_input_file(mixed_inputs, case))
        for suffix in (".nii.gz", "_instances.nii.gz"):
            out = sitk.ReadImage(str(full_run / f"{case}{suffix}"))
            assert out.GetSize() == source.GetSize()
            if case == "nn_case":  # NIfTI in, NIfTI out: bit-identical origin / spacing
                assert out.GetOrigin() == source.GetOrigin() and out.GetSpacing() == source.GetSpacing()
            # otherwise NIfTI's float32 header is the only loss
            np.testing.assert_allclose(out.GetOrigin(), source.GetOrigin(), rtol=1e-6, atol=0)
            np.testing.assert_allclose(out.GetSpacing(), source.GetSpacing(), rtol=1e-6, atol=0)
            np.testing.assert_allclose(out.GetDirection(), source.GetDirection(), rtol=0, atol=1e-6)
    assert sitk.ReadImage(str(full_run / "nn_case.nii.gz")).GetDirection() == \
        pytest.approx((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), abs=1e-7)


def test_json_and_csv_agree_with_the_label_maps(full_run, tiny_trained_model):
    schema = _schema(tiny_trained_model)
    lesion_labels = set(schema.lesion_labels)
    lesions_csv = pd.read_csv(full_run / "lesions.csv")
    patients_csv = pd.read_csv(full_run / "patients.csv").set_index("case")
    assert sorted(patients_csv.index) == sorted(CASES)
    for case in CASES:
        record = json.loads((full_run / f"{case}.json").read_text())
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(full_run / f"{case}.nii.gz")))
        instances = sitk.GetArrayFromImage(sitk.ReadImage(str(full_run / f"{case}_instances.nii.gz")))
        spacing = record["spacing"]
        voxel_mm3 = spacing[0] * spacing[1] * spacing[2]
        lesions = record["lesions"]
        assert record["case"] == case and record["classifier"] is False
        assert set(np.unique(labels)) <= set(schema.labels.values())
        # lesion voxels of the label map are exactly the instance voxels
        np.testing.assert_array_equal(np.isin(labels, list(lesion_labels)), instances > 0)
        ids, counts = np.unique(instances[instances > 0], return_counts=True)
        assert list(ids) == [r["id"] for r in lesions] == list(range(1, len(lesions) + 1))
        for lesion, count in zip(lesions, counts):
            assert lesion["n_voxels"] == count
            assert lesion["volume_mm3"] == pytest.approx(count * voxel_mm3)
            assert set(np.unique(labels[instances == lesion["id"]])) == {lesion["label"]}
            assert schema.labels[lesion["class"]] == lesion["label"]
            assert lesion["tier"] == "confident"
            assert lesion["probability"] == pytest.approx(lesion["prior"][lesion["class"]])
        rows = lesions_csv[lesions_csv["case"] == case]
        assert list(rows["id"]) == [r["id"] for r in lesions]
        assert list(rows["class"]) == [r["class"] for r in lesions]
        np.testing.assert_allclose(rows["volume_cm3"], [r["volume_cm3"] for r in lesions])
        expected_class = classify_patient([r["label"] for r in lesions], schema.priority_labels)
        patient = record["patient"]
        assert patient["class"] == ("normal" if expected_class == 0 else schema.label_name(expected_class))
        assert patients_csv.loc[case, "class"] == patient["class"]
        assert patients_csv.loc[case, "n_lesions"] == len(lesions)
        assert patient["probabilities"]["tumor"] == pytest.approx(max(patient["livermax"].values()))


def test_saved_probabilities_are_nnunet_format(full_run, tiny_trained_model):
    import pickle

    from nnunet_plus.postprocessing.liver_component import keep_largest_liver_component

    with np.load(full_run / "nn_case.npz") as data:
        probabilities = data["probabilities"]
    assert probabilities.shape == (4, 24, 64, 64) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    with open(full_run / "nn_case.pkl", "rb") as fh:
        properties = pickle.load(fh)
    assert properties["sitk_stuff"]["origin"] == pytest.approx((-123.456, 78.9012, -345.678), abs=1e-4)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(full_run / "nn_case.nii.gz")))
    schema = _schema(tiny_trained_model)
    argmax = probabilities.argmax(axis=0)
    # away from lesions the label map is nnU-Net's argmax with the liver kept as one connected region
    expected = keep_largest_liver_component(argmax[None], schema.liver_labels, schema.lesion_labels)[0]
    away = np.isin(labels, [0, 1]) & (argmax <= 1)
    np.testing.assert_array_equal(labels[away], expected[away])


def test_parts_then_merge_equal_a_single_run(cli, full_run, mixed_inputs, tmp_path):
    for part in (0, 1):
        code, _, err = cli("-i", str(mixed_inputs), "-o", str(tmp_path / f"part{part}"), "-num_parts", "2",
                           "-part_id", str(part))
        assert code == 0, err
    part0 = sorted(p.name for p in (tmp_path / "part0").glob("*.json") if p.name != "nnunet_plus_predict.json")
    part1 = sorted(p.name for p in (tmp_path / "part1").glob("*.json") if p.name != "nnunet_plus_predict.json")
    assert part0 == ["dicom_case.json", "plain_case.json"] and part1 == ["nn_case.json"]  # cases[part_id::2]
    merged = tmp_path / "merged"
    merged.mkdir()
    for part in ("part0", "part1"):
        for path in (tmp_path / part).iterdir():
            if path.name.split(".")[0].removesuffix("_instances") in CASES:
                shutil.copy(path, merged / path.name)
    write_tables(merged)
    for table in ("lesions.csv", "patients.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(merged / table), pd.read_csv(full_run / table), rtol=1e-5)
    for case in CASES:
        for suffix in (".nii.gz", "_instances.nii.gz"):
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(merged / f"{case}{suffix}"))),
                                          sitk.GetArrayFromImage(sitk.ReadImage(str(full_run / f"{case}{suffix}"))))


def test_continue_prediction_only_redoes_unfinished_cases(cli, full_run, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    # a run killed while writing plain_case: label map half written, no instances / JSON yet
    (out / "plain_case.json").unlink()
    (out / "plain_case_instances.nii.gz").unlink()
    (out / "plain_case.nii.gz").write_bytes(b"half a file")
    done = [out / f"{case}{suffix}" for case in ("dicom_case", "nn_case")
            for suffix in (".nii.gz", "_instances.nii.gz", ".json")]
    before = {p: p.stat().st_mtime_ns for p in done}
    code, out_text, err = cli("-i", str(mixed_inputs), "-o", str(out), "--continue_prediction")
    assert code == 0, err
    assert "1 case(s) written, 2 already done" in out_text
    assert {p: p.stat().st_mtime_ns for p in done} == before
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "plain_case.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(full_run / "plain_case.nii.gz"))))
    report = json.loads((out / "nnunet_plus_predict.json").read_text())["report"]
    assert report["done"] == ["plain_case"] and report["skipped"] == ["dicom_case", "nn_case"]
    assert len(pd.read_csv(out / "patients.csv")) == 3


def test_bad_cases_fail_alone_with_the_file_named(cli, tmp_path, make_tiny_case):
    inputs = tmp_path / "in"
    good = make_tiny_case(30)[0]
    write_image(good, inputs / "good.nii.gz")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 broken")
    nan = good.copy()
    nan[3, 4, 5] = np.nan
    write_image(nan, inputs / "nan.nrrd")
    write_image(good[0], inputs / "flat.nii.gz")
    write_image(good, inputs / "extra_0000.nii.gz")
    write_image(good, inputs / "extra_0001.nii.gz")
    write_image(good, inputs / "missing_0001.nii.gz")
    code, out, err = cli("-i", str(inputs), "-o", str(tmp_path / "out"))
    assert code == 1
    assert "1 case(s) written, 0 already done, 6 failed" in out
    expected = {"notes.txt": "notes.txt is not an image file", "corrupt": "corrupt.nii.gz cannot be read",
                "nan": "nan.nrrd has 1 NaN", "flat": "flat.nii.gz is a 2D image",
                "extra": "unexpected channel file(s) extra_0001.nii.gz",
                "missing": "missing channel file(s) missing_0000.*"}
    for case, message in expected.items():
        line = next((l for l in err.splitlines() if l.strip().startswith(f"{case}:")), "")
        assert message in line, (case, err)
    patients = pd.read_csv(tmp_path / "out" / "patients.csv")
    assert list(patients["case"]) == ["good"]


def test_empty_input_folder(cli, tmp_path):
    (tmp_path / "in").mkdir()
    code, _, err = cli("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert code == 1 and "is empty" in err


@pytest.mark.parametrize("extra, message", [
    (["-tr", "nnUNetTrainerNope"], "trained model"),
    (["-f", "3"], "fold 3 of"),
    (["-f", "0", "-chk", "checkpoint_nope.pth"], "fold_0/checkpoint_nope.pth not found; checkpoints in that fold"),
    (["-chk", "checkpoint_nope.pth"], "has checkpoint_nope.pth; train it"),
])
def test_missing_model_fold_checkpoint(cli, mixed_inputs, tmp_path, extra, message):
    code, _, err = cli("-i", str(mixed_inputs), "-o", str(tmp_path / "out"), *extra)
    assert code == 1 and message in err, err
