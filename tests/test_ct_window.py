"""``nnunet_plus_ct_window``: nnU-Net's pooled-foreground CT window widened to every label class's own range."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_plus.ct_window import PLANS_KEY, main

from helpers import write_image

NAME = "Dataset977_Window"
LABELS = {"background": 0, "liver": 1, "calcification": 2}


def _plans(window=(-20.0, 70.0), schemes=("CTNormalization",)):
    return {"foreground_intensity_properties_per_channel": {
                "0": {"mean": 50.0, "std": 20.0, "percentile_00_5": window[0], "percentile_99_5": window[1]}},
            "configurations": {"3d_fullres": {"normalization_schemes": list(schemes)}}}


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """Two cases: liver at 40-60 HU holding a small calcification at 400-500 HU (2 % of the foreground)."""
    raw, pre = tmp_path / "raw" / NAME, tmp_path / "pre" / NAME
    rng = np.random.default_rng(0)
    for case in ("c0", "c1"):
        label = np.zeros((10, 20, 20), np.uint8)
        label[2:8, 2:18, 2:18] = 1
        label[4:6, 8:10, 8:10] = 2
        image = np.full(label.shape, -100.0, np.float32)
        image[label == 1] = rng.uniform(40, 60, int((label == 1).sum()))
        image[label == 2] = rng.uniform(400, 500, int((label == 2).sum()))
        write_image(label, raw / "labelsTr" / f"{case}.nii.gz")
        write_image(image, raw / "imagesTr" / f"{case}_0000.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                  "numTraining": 2, "file_ending": ".nii.gz"}))
    pre.mkdir(parents=True)
    (pre / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    return raw, pre / "nnUNetPlans.json"


def _window(plans_file):
    properties = json.loads(plans_file.read_text())["foreground_intensity_properties_per_channel"]["0"]
    return properties["percentile_00_5"], properties["percentile_99_5"]


def test_the_window_covers_the_bright_class_and_never_narrows(dataset, capsys):
    _, plans_file = dataset
    assert main(["-d", "977"]) == 0
    low, high = _window(plans_file)
    assert low == -20.0  # nnU-Net's lower bound is below every class's: kept
    plans = json.loads(plans_file.read_text())
    calcification = plans[PLANS_KEY]["class_percentiles"]["0"]["calcification"]
    assert 400.0 <= calcification[0] < calcification[1] <= 500.0
    assert high == calcification[1]  # the calcification's 99.5th percentile, far above nnU-Net's 70 HU
    assert plans[PLANS_KEY]["nnunet_window"] == {"0": [-20.0, 70.0]}
    assert plans[PLANS_KEY]["class_percentiles"]["0"]["liver"][1] == pytest.approx(60.0, abs=0.5)
    assert plans["foreground_intensity_properties_per_channel"]["0"]["mean"] == 50.0  # z-scoring untouched
    assert f"[-20.0, 70.0] -> [-20.0, {high:.1f}] HU" in capsys.readouterr().out


def test_a_second_run_starts_from_nnunets_window(dataset):
    _, plans_file = dataset
    assert main(["-d", "977"]) == 0
    first = plans_file.read_text()
    assert main(["-d", "977"]) == 0
    assert plans_file.read_text() == first


def test_channels_not_normalised_as_ct_are_left_alone(dataset, capsys):
    _, plans_file = dataset
    plans_file.write_text(json.dumps(_plans(schemes=("ZScoreNormalization",))))
    assert main(["-d", "977"]) == 0
    assert _window(plans_file) == (-20.0, 70.0)
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("damage, named", [
    ("missing_image", "c1_0000.nii.gz"),
    ("corrupt_plans", "nnUNetPlans.json"),
    ("not_plans", "nnUNetPlans.json"),
    ("region_labels", "dataset.json"),
])
def test_bad_input_is_one_line_naming_the_file_and_the_plans_stay(dataset, capsys, damage, named):
    raw, plans_file = dataset
    before = plans_file.read_text()
    if damage == "missing_image":
        (raw / "imagesTr" / "c1_0000.nii.gz").unlink()
    elif damage == "corrupt_plans":
        plans_file.write_text("{not json")
        before = plans_file.read_text()
    elif damage == "not_plans":
        plans_file.write_text(json.dumps({"configurations": {}}))
        before = plans_file.read_text()
    else:
        (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": [1, 2]},
                                                      "file_ending": ".nii.gz"}))
    assert main(["-d", "977"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nnunet_plus_ct_window: error: ") and named in err
    assert plans_file.read_text() == before
