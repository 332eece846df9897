"""Lesion schema: defaults, validation errors with a fix hint, dataset.json round trip, nnunet_plus_configure."""
from __future__ import annotations

import json

import pytest

from nnunet_plus.schema import SchemaError, LesionSchema, build_schema, write_schema
from nnunet_plus.schema_cli import main

LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3, "hemangioma": 4}
HINT = "nnunet_plus_configure"


def test_defaults_follow_the_plus_lesion_types():
    schema = build_schema(LABELS, dataset_id=501)
    assert schema.lesions == ("hcc", "cyst", "hemangioma")          # label-value order
    assert schema.malignant == ("hcc",) and schema.benign == ("cyst", "hemangioma")
    assert schema.priority == ("hcc", "hemangioma", "cyst")          # malignant first, cyst last
    assert schema.lesion_labels == (2, 3, 4) and schema.priority_labels == (2, 4, 3)
    assert schema.liver_labels == (1,) and schema.num_classes == 5
    assert schema.sensitivities == (1.0, 4.0) and schema.min_lesion_volume_mm3 == 0.0
    assert schema.max_suspicious_per_case == 50


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lesions": ["hcc", "icc"]}, "unknown label"),
        ({"liver": ["livre"], "lesions": ["hcc", "cyst", "hemangioma"]}, "unknown label"),
        ({"malignant": ["hcc", "cyst"], "benign": ["cyst", "hemangioma"]}, "both malignant and benign"),
        ({"lesions": ["background", "hcc"], "malignant": ["hcc"], "benign": ["background"]}, "background"),
        ({"lesions": ["liver", "hcc"], "malignant": ["hcc"], "benign": ["liver"]}, "both liver and lesion"),
        ({"malignant": ["hcc"], "benign": ["cyst"]}, "neither malignant nor benign"),
        ({"priority": ["hcc", "cyst"]}, "priority"),
        ({"sensitivities": [4.0, 1.0]}, "ascending"),
        ({"sensitivities": [0.0, 1.0]}, "positive"),
        ({"min_lesion_volume_mm3": -1.0}, "min_lesion_volume_mm3"),
        ({"max_suspicious_per_case": -1}, "max_suspicious_per_case"),
        ({"max_suspicious_per_case": 2.5}, "max_suspicious_per_case"),
        ({"liver_largest_component": "yes"}, "liver_largest_component"),
    ],
)
def test_inconsistent_schema_raises_with_fix_hint(options, message):
    with pytest.raises(SchemaError, match=message) as info:
        build_schema(LABELS, dataset_id=501, **options)
    if "neither" not in message:
        assert HINT in str(info.value) or "renumber" in str(info.value)


def test_non_consecutive_labels():
    with pytest.raises(SchemaError, match="consecutive"):
        build_schema({"background": 0, "liver": 1, "hcc": 3})


def test_dataset_json_round_trip_keeps_other_keys(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "CT"}, "numTraining": 3}))
    schema = build_schema(LABELS, sensitivities=[1, 2, 4], min_lesion_volume_mm3=10)
    write_schema(path, schema)
    data = json.loads(path.read_text())
    assert data["channel_names"] == {"0": "CT"} and data["numTraining"] == 3
    assert LesionSchema.from_dataset_json(path) == schema
    assert LesionSchema.from_dataset_json(data) == schema


@pytest.mark.parametrize(
    "dataset_json, message",
    [
        ({"labels": LABELS}, "no 'plus' lesion schema"),
        ({"labels": LABELS, "plus": {"liver": ["liver"], "lesions": ["hcc"]}}, "lacks"),
        ({"plus": {}}, "no 'labels' block"),
        ({"labels": {"background": 0, "liver": [1, 2]}, "plus": {}}, "region-based"),
    ],
)
def test_missing_or_broken_block(dataset_json, message):
    with pytest.raises(SchemaError, match=message) as info:
        LesionSchema.from_dataset_json(dataset_json, dataset_id=501)
    if "region" not in message:
        assert f"{HINT} -d 501" in str(info.value) or "nnU-Net format" in str(info.value)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(SchemaError, match="not found"):
        LesionSchema.from_dataset_json(tmp_path / "dataset.json")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        LesionSchema.from_dataset_json(tmp_path / "dataset.json")


def test_configure_cli_on_a_dataset_json(tmp_path, capsys):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    code = main(["--dataset-json", str(path), "--lesions", "hcc", "hemangioma", "cyst", "--malignant", "hcc",
                 "--benign", "hemangioma", "cyst", "--sensitivities", "1", "3", "--min-volume-mm3", "5", "--max-suspicious", "7",
                 "--keep-all-liver-components"])
    assert code == 0
    data = json.loads(path.read_text())
    assert data["file_ending"] == ".nii.gz"
    assert data["plus"] == {"liver": ["liver"], "lesions": ["hcc", "hemangioma", "cyst"], "malignant": ["hcc"],
                            "benign": ["hemangioma", "cyst"], "priority": ["hcc", "hemangioma", "cyst"],
                            "sensitivities": [1.0, 3.0], "min_lesion_volume_mm3": 5.0,
                            "max_suspicious_per_case": 7, "liver_largest_component": False}
    assert "wrote the 'plus' block" in capsys.readouterr().out


def test_configure_cli_reports_errors(tmp_path, capsys):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": LABELS}))
    assert main(["--dataset-json", str(path), "--lesions", "hcc", "icc"]) == 1
    assert "unknown label" in capsys.readouterr().err
    assert "plus" not in json.loads(path.read_text())
    assert main(["--dataset-json", str(tmp_path / "missing.json")]) == 1
    assert "not found" in capsys.readouterr().err


def test_configure_cli_by_dataset_id(tmp_path, monkeypatch):
    raw = tmp_path / "raw" / "Dataset501_Liver"
    pre = tmp_path / "pre" / "Dataset501_Liver"
    for folder in (raw, pre):
        folder.mkdir(parents=True)
        (folder / "dataset.json").write_text(json.dumps({"labels": LABELS}))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.delenv("nnUNet_results", raising=False)
    assert main(["-d", "501"]) == 0
    for folder in (raw, pre):
        schema = LesionSchema.from_dataset_json(folder / "dataset.json")
        assert schema.lesions == ("hcc", "cyst", "hemangioma")
