"""nnunet_plus_evaluate end to end on folders of tiny NIfTI files, and the folder layer's errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.evaluation.cli import main
from nnunet_plus.evaluation.folder import evaluate_folders
from nnunet_plus.schema import build_schema, write_schema

LABELS = {"background": 0, "liver": 1, "hcc": 2, "metastasis": 3, "hemangioma": 4, "cyst": 5}
SCHEMA = build_schema(LABELS)
HCC, META, HEM, CYST = 2, 3, 4, 5
SHAPE = (6, 24, 24)
SPACING_XYZ = (1.0, 1.0, 2.0)  # SimpleITK order; numpy (z, y, x) spacing is (2, 1, 1)


def write(path: Path, array: np.ndarray, spacing=SPACING_XYZ) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -5.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def liver() -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[:, 2:22, 2:22] = 1
    return a


def lesion(a: np.ndarray, label: int, y: int, x: int, z=slice(1, 5), size: int = 4) -> np.ndarray:
    a[z, y:y + size, x:x + size] = label
    return a


@pytest.fixture
def dataset(tmp_path):
    """Three cases. Reference: c1 hcc + cyst, c2 cyst, c3 normal. 'ours' finds everything right except an
    FP in c3; 'base' misses c1's cyst and calls c2's cyst a hemangioma."""
    ref, ours, base = tmp_path / "labelsTs", tmp_path / "ours", tmp_path / "base"
    r1 = lesion(lesion(liver(), HCC, 3, 3), CYST, 12, 12)
    r2 = lesion(liver(), CYST, 5, 14)
    r3 = liver()
    for name, arr in (("c1", r1), ("c2", r2), ("c3", r3)):
        write(ref / f"{name}.nii.gz", arr)
    write(ours / "c1.nii.gz", r1)
    write(ours / "c2.nii.gz", r2)
    write(ours / "c3.nii.gz", lesion(liver(), META, 15, 4, size=3))
    write(base / "c1.nii.gz", lesion(liver(), HCC, 3, 3))
    write(base / "c2.nii.gz", lesion(liver(), HEM, 5, 14))
    write(base / "c3.nii.gz", liver())
    ds_json = tmp_path / "dataset.json"
    ds_json.write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "CT"}, "numTraining": 3,
                                   "file_ending": ".nii.gz"}))
    write_schema(ds_json, SCHEMA)
    return {"ref": ref, "ours": ours, "base": base, "json": ds_json, "tmp": tmp_path}


def test_cli_end_to_end_with_baseline_and_plots(dataset, capsys):
    out = dataset["tmp"] / "eval" / "summary.json"
    plots = dataset["tmp"] / "plots"
    rc = main(["-ref", str(dataset["ref"]), "-pred", str(dataset["ours"]), "--schema", str(dataset["json"]),
               "--min-volume", "0", "--baseline", str(dataset["base"]), "-o", str(out), "--plots", str(plots),
               "-np", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    s = json.loads(out.read_text())
    ll = s["lesion_level"]
    assert (ll["tp"], ll["fl"], ll["fp"], ll["fn"]) == (3, 0, 1, 0)
    assert s["patient_level"]["malignant"]["fp"] == 1  # c3 predicted metastasis
    assert s["patient_level"]["three_class_accuracy"] == pytest.approx(2 / 3)
    assert [c["case"] for c in s["per_case"]] == ["c1", "c2", "c3"]
    b = json.loads((out.parent / "summary_baseline.json").read_text())
    bl = b["lesion_level"]
    assert (bl["tp"], bl["fl"], bl["fp"], bl["fn"]) == (1, 1, 0, 1)
    cmp = json.loads((out.parent / "summary_comparison.json").read_text())
    assert cmp["lesion recall"]["baseline"] == pytest.approx(1 / 3)
    assert cmp["lesion recall"]["ours"] == pytest.approx(1.0)
    for name in ("confusion_matrix.png", "froc.png", "per_class.png", "overview.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Comparison: baseline vs ours" in captured.out
    assert "Recall-rough" in captured.out


def test_cli_default_output_and_schema_from_raw_layout(dataset, capsys):
    # dataset.json beside labelsTs (nnU-Net raw layout) is found without -d / --schema
    rc = main(["-ref", str(dataset["ref"]), "-pred", str(dataset["ours"]), "--quiet", "-np", "1"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((dataset["ours"] / "nnunet_plus_summary.json").read_text())
    assert s["meta"]["min_volume_cm3"] == 0.5 and s["meta"]["criterion"] == "overlap"
    # 4x4x4 voxels of 2 mm3 = 0.128 cm3 < 0.5: every reference lesion is ignored at the default min volume
    assert s["lesion_level"]["ignored_reference"] == 3 and s["lesion_level"]["fn"] == 0
    assert capsys.readouterr().out == ""


def test_cli_dataset_id_resolves_nnunet_raw(dataset, tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    (raw / "Dataset123_Liver").mkdir(parents=True)
    (raw / "Dataset123_Liver" / "dataset.json").write_text(dataset["json"].read_text())
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(raw if var == "nnUNet_raw" else tmp_path / var))
    rc = main(["-ref", str(dataset["ref"]), "-pred", str(dataset["ours"]), "-d", "123", "--quiet", "-np", "1",
               "-o", str(tmp_path / "s.json"), "--match", "dice:0.2", "--min-volume", "0"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "s.json").read_text())["meta"]["criterion"] == "dice:0.2"


def test_missing_case_is_an_error_naming_it(dataset, capsys):
    (dataset["ours"] / "c2.nii.gz").unlink()
    rc = main(["-ref", str(dataset["ref"]), "-pred", str(dataset["ours"]), "--schema", str(dataset["json"]),
               "--quiet", "-np", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert len(err.strip().splitlines()) == 1
    assert "c2" in err and "--allow-missing" in err and err.startswith("nnunet_plus_evaluate: error:")


def test_allow_missing_counts_the_case_as_all_fn(dataset):
    (dataset["ours"] / "c1.nii.gz").unlink()
    s = evaluate_folders(dataset["ref"], dataset["ours"], SCHEMA, min_volume_cm3=0.0, allow_missing=True,
                         num_processes=1, quiet=True)
    ll = s["lesion_level"]
    assert (ll["tp"], ll["fl"], ll["fp"], ll["fn"]) == (1, 0, 1, 2)
    assert s["meta"]["missing_cases"] == ["c1"] and s["per_case"][0]["missing"] is True
    assert s["per_case"][0]["patient"]["predicted_class"] == "normal"


def test_geometry_mismatch_is_an_error(dataset, capsys):
    write(dataset["ours"] / "c2.nii.gz", lesion(liver(), CYST, 5, 14), spacing=(1.0, 1.0, 3.0))
    with pytest.raises(ValueError, match="case c2: geometry"):
        evaluate_folders(dataset["ref"], dataset["ours"], SCHEMA, num_processes=1, quiet=True)
    rc = main(["-ref", str(dataset["ref"]), "-pred", str(dataset["ours"]), "--schema", str(dataset["json"]),
               "--quiet", "-np", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "geometry" in err and "spacing" in err  # what differs is named


def test_case_json_and_instances_are_read(dataset):
    # c1: the case JSON reports the hcc with probability 0.9 and relabels the cyst as hemangioma (FL)
    inst = np.zeros(SHAPE, np.uint8)
    lesion(inst, 1, 3, 3)
    lesion(inst, 2, 12, 12)
    write(dataset["ours"] / "c1_instances.nii.gz", inst)
    (dataset["ours"] / "c1.json").write_text(json.dumps({
        "case": "c1", "lesions": [{"id": 1, "class": "hcc", "probability": 0.9},
                                  {"id": 2, "class": "hemangioma", "probability": 0.7}],
        "patient": {"class": "hcc", "probabilities": {"tumor": 0.95, "malignant": 0.9, "benign": 0.7}}}))
    s = evaluate_folders(dataset["ref"], dataset["ours"], SCHEMA, min_volume_cm3=0.0, num_processes=1, quiet=True)
    c1 = s["per_case"][0]
    assert (c1["counts"]["tp"], c1["counts"]["fl"]) == (1, 1)
    assert c1["patient"]["probability_source"] == "json"
    assert s["meta"]["probability_source"] == "mixed"
    assert s["froc"] is None  # c3's FP has no probability


def test_parallel_equals_sequential(dataset):
    a = evaluate_folders(dataset["ref"], dataset["ours"], SCHEMA, min_volume_cm3=0.0, num_processes=1, quiet=True)
    b = evaluate_folders(dataset["ref"], dataset["ours"], SCHEMA, min_volume_cm3=0.0, num_processes=2, quiet=True)
    assert a == b


@pytest.mark.parametrize("argv, message", [
    (["--match", "dice:1.5"], "dice:T"),
    (["--min-volume", "-1"], ">= 0"),
    (["-np", "0"], ">= 1"),
])
def test_cli_rejects_bad_options(dataset, capsys, argv, message):
    rc = main(["-ref", str(dataset["ref"]), "-pred", str(dataset["ours"]), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_without_schema_is_a_one_line_error(tmp_path, capsys):
    ref, pred = tmp_path / "r", tmp_path / "p"
    write(ref / "a.nii.gz", liver())
    write(pred / "a.nii.gz", liver())
    rc = main(["-ref", str(ref), "-pred", str(pred), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "-d DATASET or --schema" in err and len(err.strip().splitlines()) == 1
    # it names where it looked: the dataset.json nnU-Net copies beside predictions, and the raw layout's
    assert str((pred / "dataset.json").resolve()) in err and str((tmp_path / "dataset.json").resolve()) in err
