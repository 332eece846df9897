"""``nnunet_plus_make_phantom``: success path with a preview, one-line errors with a non-zero exit code."""
from __future__ import annotations

import json

import pytest

from nnunet_plus.phantom.cli import build_parser, main

SMALL = ["--shape", "16", "48", "48", "--spacing", "7", "4", "4", "-np", "1", "--quiet"]


def test_cli_writes_dataset_and_preview(tmp_path, capsys):
    png = tmp_path / "preview" / "phantom.png"
    code = main(["-d", "990", "-n", "5", "--n-test", "1", "--seed", "2", "--out", str(tmp_path / "raw"),
                 "--lesion-types", "hcc", "hemangioma", "cyst", "--healthy-fraction", "0.2", "--preview", str(png),
                 *SMALL])
    assert code == 0
    folder = tmp_path / "raw" / "Dataset990_LiverPhantom"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "hcc": 2, "hemangioma": 3, "cyst": 4}
    assert meta["numTraining"] == 5 and meta["phantom"]["seed"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert f"wrote {folder}" in out and f"wrote {png}" in out


@pytest.mark.parametrize("args,message", [
    (["-n", "0"], "n_train must be an integer >= 1"),
    (["-n", "2", "--lesion-types", "hcc", "adenoma"], "unknown lesion type(s) ['adenoma']"),
    (["-n", "2", "--shape", "6", "20", "20"], "too small for a liver"),
])
def test_cli_bad_arguments(tmp_path, capsys, args, message):
    code = main(["-d", "990", "--out", str(tmp_path), "--quiet", *args])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("nnunet_plus_make_phantom: error: ") and message in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_case_prefix(tmp_path, capsys):
    code = main(["-d", "991", "-n", "1", "--n-test", "1", "--case-prefix", "extra", "--out", str(tmp_path), *SMALL])
    assert code == 0
    folder = tmp_path / "Dataset991_LiverPhantom"
    assert [p.name for p in (folder / "imagesTr").iterdir()] == ["extra_0000_0000.nii.gz"]
    assert [p.name for p in (folder / "labelsTs").iterdir()] == ["extra_0001.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["phantom"]["case_prefix"] == "extra"


def test_cli_case_prefix_defaults_to_case():
    assert build_parser().parse_args(["-d", "1", "-n", "1"]).case_prefix == "case"


@pytest.mark.parametrize("prefix", ["a_b", "", "x/y"])
def test_cli_bad_case_prefix(tmp_path, capsys, prefix):
    code = main(["-d", "990", "-n", "2", "--out", str(tmp_path), "--case-prefix", prefix, *SMALL])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet_plus_make_phantom: error: case prefix must be 1 to 32 ASCII letters or digits")
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_without_output_folder(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["-d", "990", "-n", "2", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "no output folder" in err and "nnUNet_raw" in err and err.count("\n") == 1
