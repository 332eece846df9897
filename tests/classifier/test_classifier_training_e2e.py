"""End to end on a real nnU-Net run (the shared ``tiny_trained_model``): candidate bank from its fold
validations, one epoch of classifier training with the CLI, inference with the contract API."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_plus.case_analysis import analyse_case
from nnunet_plus.classifier.bank_io import load_case_bank
from nnunet_plus.classifier.cli import main
from nnunet_plus.classifier.inference import PLUSInference, classifier_folder
from nnunet_plus.schema import LesionSchema


def test_bank_training_and_inference_on_the_tiny_nnunet(tiny_model_env, tmp_path, monkeypatch, capsys):
    model = tiny_model_env
    # our own results folder (the shared one stays untouched), holding the trained nnU-Net model
    results = tmp_path / "results" / model.dataset_name
    results.mkdir(parents=True)
    (results / model.model_folder.name).symlink_to(model.model_folder)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    args = [model.dataset_name, model.configuration, "0", "-tr", model.trainer, "-device", "cpu", "--epochs", "1",
            "--preset", "tiny", "-np", "1", "--quiet"]

    # nnU-Net's 5-fold split with only folds 0 and 1 trained: fold 0's training cases of folds 2-4 lack a bank file
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "out-of-fold softmax was not exported" in err and "nnU-Net fold(s) [2, 3, 4]" in err

    # a 2-fold split made of the validation sets of the two trained folds
    splits = json.loads((Path(model.env["nnUNet_preprocessed"]) / model.dataset_name / "splits_final.json").read_text())
    two = [{"train": splits[1]["val"], "val": splits[0]["val"]}, {"train": splits[0]["val"], "val": splits[1]["val"]}]
    preprocessed = tmp_path / "preprocessed" / model.dataset_name
    preprocessed.mkdir(parents=True)
    (preprocessed / "splits_final.json").write_text(json.dumps(two))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    assert main(args) == 0
    folder = classifier_folder(model.dataset_name, model.configuration, trainer=model.trainer)
    summary = json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())
    assert summary["meta"]["cases"] == sorted(splits[0]["val"])
    for key in ("nnunet", "nnunet+plus"):
        assert summary[key]["meta"]["n_cases"] == len(splits[0]["val"])
        assert set(summary[key]["patient_level"]) >= {"malignant", "benign", "screening"}

    schema = LesionSchema.from_dataset_json(model.model_folder / "dataset.json", dataset_id=model.dataset_id)
    inference = PLUSInference.from_folder(folder, schema=schema)
    assert inference.folds == [0]
    case = sorted(splits[0]["val"])[0]
    with np.load(model.model_folder / "fold_0" / "validation" / f"{case}.npz") as data:
        probabilities = data["probabilities"]
    image_file = sitk.ReadImage(str(model.images_folder / f"{case}_0000.nii.gz"))
    image = sitk.GetArrayFromImage(image_file).astype(np.float32)[None]
    spacing = tuple(float(s) for s in image_file.GetSpacing()[::-1])
    analysis = analyse_case(probabilities, schema, image=image, spacing=spacing)
    out = inference.predict_case(image, probabilities, analysis, spacing=spacing)
    n = load_case_bank(folder / "candidate_bank" / f"{case}.npz").num_candidates
    assert out.lesion_probabilities.shape == (n, 3) == (len(analysis.detections.lesions), 3)
    np.testing.assert_allclose(out.lesion_probabilities.sum(axis=1), 1.0, atol=1e-5)
