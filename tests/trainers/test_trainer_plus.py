"""nnUNetTrainerPLUS with the real nnU-Net commands (the shared ``tiny_trained_model`` fixture trains two folds
with ``nnUNetv2_train ... -tr nnUNetTrainerPLUS_cpuTiny_2epochs -device cpu``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from nnunet_plus.evaluation.folder import evaluate_folders
from nnunet_plus.postprocessing.liver_component import keep_largest_liver_component
from nnunet_plus.schema import LesionSchema, SchemaError
from nnunet_plus.nnunet_validation import ALL_TIERS, CONFIDENT, CASE_SUFFIX, SUMMARY_FILE

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"lesion_level", "per_class", "malignant_group", "benign_group", "patient_level", "froc", "dice",
                "volume_bins", "radius_bins", "meta"}


def _fold_validation(model, fold: int) -> Path:
    return model.model_folder / f"fold_{fold}" / "validation"


@pytest.mark.parametrize("fold", [0, 1])
def test_plus_summary_is_complete(tiny_trained_model, fold):
    folder = _fold_validation(tiny_trained_model, fold)
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    assert set(summary["sensitivities"]) == {"f=1", "f=4"}
    assert set(summary["tiers"]) == {CONFIDENT, ALL_TIERS}
    for block in [*summary["sensitivities"].values(), *summary["tiers"].values()]:
        assert SUMMARY_KEYS <= set(block)
        assert set(block["per_class"]) == {"hcc", "cyst"}
        assert set(block["patient_level"]["auc"]) >= {"tumor", "malignant", "benign"}
    cases = sorted(p.name[: -len(".npz")] for p in folder.glob("*.npz"))
    assert cases and summary["meta"]["n_cases"] == len(cases)
    assert sorted(c["case"] for c in summary["per_case"]) == cases
    for case in cases:
        case_json = json.loads((folder / f"{case}{CASE_SUFFIX}").read_text())
        assert {"lesions", "patient", "spacing"} <= set(case_json)
        assert all(lesion["tier"] in ("confident", "suspicious") for lesion in case_json["lesions"])
    suspicious = summary["suspicious_tier"]
    assert suspicious["n"] == suspicious["tp"] + suspicious["fl"] + suspicious["fp"] + suspicious.get("ignored", 0)


@pytest.mark.parametrize("fold", [0, 1])
def test_plus_summary_agrees_with_evaluation_of_nnunet_segmentation(tiny_trained_model, fold, tmp_path):
    """f=1 must be nnU-Net's own segmentation: evaluating the exported ``<case>.nii.gz`` gives the same counts
    (after the one post-processing step we add to it: the liver kept as one connected region)."""
    model = tiny_trained_model
    folder = _fold_validation(model, fold)
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    schema = LesionSchema.from_dataset_json(model.raw_folder / "dataset.json")
    assert schema.liver_largest_component
    gt = Path(model.env["nnUNet_preprocessed"]) / model.dataset_name / "gt_segmentations"
    cases = sorted(p.name[: -len(".npz")] for p in folder.glob("*.npz"))
    for case in cases:
        exported = sitk.ReadImage(str(folder / f"{case}.nii.gz"))
        labels = sitk.GetArrayFromImage(exported)[None]
        one_liver = sitk.GetImageFromArray(
            keep_largest_liver_component(labels, schema.liver_labels, schema.lesion_labels)[0])
        one_liver.CopyInformation(exported)
        sitk.WriteImage(one_liver, str(tmp_path / f"{case}.nii.gz"))
    recomputed = evaluate_folders(gt, tmp_path, schema, cases=cases, min_volume_cm3=0.0, num_processes=1)
    ours = summary["sensitivities"]["f=1"]
    for key in ("tp", "fl", "fp", "fn"):
        assert ours["lesion_level"][key] == recomputed["lesion_level"][key]
    for name in schema.lesions:
        assert ours["per_class"][name] == recomputed["per_class"][name]
    assert ours["patient_level"]["confusion_matrix"] == recomputed["patient_level"]["confusion_matrix"]
    assert ours["dice"] == recomputed["dice"]


def test_training_log_shows_the_lesion_table(tiny_trained_model):
    logs = sorted((tiny_trained_model.model_folder / "fold_0").glob("training_log_*.txt"))
    text = "".join(p.read_text() for p in logs)
    assert "nnunet_plus lesion/patient validation" in text
    assert "nnU-Net f=1" in text and "tier confident" in text


def test_dataset_without_schema_fails_at_initialisation(tiny_trained_model, tmp_path, monkeypatch):
    import torch
    from nnunet_plus.trainers.nnUNetTrainerPLUS import nnUNetTrainerPLUS

    model = tiny_trained_model
    for key, value in model.env.items():
        monkeypatch.setenv(key, value)
    plans = json.loads((Path(model.env["nnUNet_preprocessed"]) / model.dataset_name / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((model.raw_folder / "dataset.json").read_text())
    dataset_json.pop("plus")
    plans["continue_training"] = False  # what nnUNetv2_train adds before instantiating the trainer
    with pytest.raises(SchemaError, match="nnunet_plus_configure -d Dataset901_TinyLiver"):
        nnUNetTrainerPLUS(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))


def test_nnunetv2_predict_finds_trainer_from_regular_install(tiny_trained_model, tmp_path):
    """``pip install .`` (not editable) layout: trainers live in site-packages/nnunet_plus/trainers and
    nnUNetv2_predict finds them through nnUNet_extTrainer."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True)
    assert (target / "nnunet_plus" / "trainers" / "nnUNetTrainerPLUS.py").is_file()
    assert not (target / "trainers").exists() and not (target / "postprocessing").exists()
    env = {**os.environ, **tiny_trained_model.env, "PYTHONPATH": str(target), "nnUNet_def_n_proc": "1"}
    trainers = subprocess.run([sys.executable, "-c", "import nnunet_plus; print(nnunet_plus.trainers_path())"],
                              env=env, cwd=tmp_path, check=True, capture_output=True, encoding="utf-8", errors="replace").stdout.strip()
    assert Path(trainers) == (target / "nnunet_plus" / "trainers").resolve()
    env["nnUNet_extTrainer"] = trainers
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = next(tiny_trained_model.images_folder.glob("*_0000.nii.gz"))
    (inputs / image.name).symlink_to(image)
    out = tmp_path / "out"
    done = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(inputs), "-o", str(out),
                           "-d", str(tiny_trained_model.dataset_id), "-c", "3d_fullres", "-f", "0",
                           "-tr", tiny_trained_model.trainer, "-device", "cpu", "--disable_tta",
                           "--save_probabilities", "-npp", "1", "-nps", "1"],
                          env=env, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"Using trainer '{tiny_trained_model.trainer}' from: {trainers}" in done.stdout
    case = image.name[: -len("_0000.nii.gz")]
    assert (out / f"{case}.nii.gz").is_file() and (out / f"{case}.npz").is_file()
