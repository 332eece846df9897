"""nnunet_plus_predict with a PLUS classifier folder: the classifier path (random tiny weights: the rule and
the files are checked, not the accuracy), a classifier really trained with nnunet_plus_train_classifier on the
mixed input folder, and the refusal of a classifier trained for another dataset / schema."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import pandas as pd
import torch

from nnunet_plus.classifier.bank_io import BankSettings
from nnunet_plus.classifier.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from nnunet_plus.classifier.model import PLUSClassifier
from nnunet_plus.schema import LesionSchema, build_schema


def _write_classifier(folder, schema: LesionSchema, dataset_name: str) -> None:
    torch.manual_seed(0)
    model = PLUSClassifier(1, len(schema.lesions), preset="tiny", hda_scales=2)
    settings = BankSettings(roi_shape=(16, 32, 32), liver_shape=(16, 32, 32))
    for fold in (0, 1):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                         "model_config": model.to_config(), "state_dict": model.state_dict(),
                         "dataset_name": dataset_name, "labels": dict(schema.labels), "schema": schema.to_block(),
                         "bank": {"settings": settings.to_json(), "target_spacing": [4.0, 3.0, 3.0],
                                  "channel_names": {"0": "CT"}},
                         "fold": fold, "epoch": 1}, folder / f"fold_{fold}" / "checkpoint_final.pth")


@pytest.fixture
def with_classifier(tiny_model_env, tmp_path, monkeypatch):
    """``with_classifier(schema=None, dataset_name=None)``: a results folder holding the tiny model (linked)
    and a 2-fold PLUS classifier with random weights; nnUNet_results points at it."""
    model = tiny_model_env

    def make(schema: LesionSchema | None = None, dataset_name: str | None = None):
        results = tmp_path / "results" / model.dataset_name
        results.mkdir(parents=True)
        (results / model.model_folder.name).symlink_to(model.model_folder)
        folder = results / f"PLUSClassifier__{model.trainer}__{model.plans}__{model.configuration}"
        own = LesionSchema.from_dataset_json(model.model_folder / "dataset.json")
        _write_classifier(folder, schema or own, dataset_name or model.dataset_name)
        monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
        return folder
    return make


def test_classifier_refines_the_candidates(with_classifier, tiny_model_env, tmp_path, capsys):
    from nnunet_plus.predict.cli import main

    with_classifier()
    labels = tmp_path / "labels"
    labels.mkdir()
    truth = sitk.ReadImage(str(tiny_model_env.labels_folder / "tiny_003.nii.gz"))
    sitk.WriteImage(truth, str(labels / "tiny_003.nii.gz"))
    flags = ["-d", str(tiny_model_env.dataset_id), "-c", tiny_model_env.configuration, "-tr",
             tiny_model_env.trainer, "-device", "cpu", "--disable_progress_bar"]
    code = main([*flags, "--from-segmentation", str(labels), "-i", str(tiny_model_env.images_folder),
                 "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "tiny_003.json").read_text())
    candidates = record["lesions"] + record["rejected"]
    assert record["classifier"] is True and len(candidates) == 2  # tiny_003 has an hcc and a cyst
    for lesion in candidates:
        assert set(lesion["plus"]) == {"hcc", "cyst", "not_a_lesion"}
        assert sum(lesion["plus"].values()) == pytest.approx(1.0, abs=1e-5)
    for lesion in record["lesions"]:  # reported: the lesion types outweigh "not a lesion"; class = best type
        types = {k: v for k, v in lesion["plus"].items() if k != "not_a_lesion"}
        assert sum(types.values()) > lesion["plus"]["not_a_lesion"]
        assert lesion["class"] == max(types, key=types.get)
        assert lesion["probability"] == pytest.approx(types[lesion["class"]])
    for lesion in record["rejected"]:
        plus = lesion["plus"]
        assert plus["not_a_lesion"] >= sum(v for k, v in plus.items() if k != "not_a_lesion")
    patient = record["patient"]
    assert patient["probability_source"] == "plus"
    assert patient["probabilities"]["tumor"] == pytest.approx(
        max(c["plus"]["hcc"] + c["plus"]["cyst"] for c in candidates), abs=1e-5)
    label_map = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "tiny_003.nii.gz")))
    instances = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "tiny_003_instances.nii.gz")))
    np.testing.assert_array_equal(np.isin(label_map, [2, 3]), instances > 0)
    assert int(instances.max()) == len(record["lesions"])
    info = json.loads((tmp_path / "out" / "nnunet_plus_predict.json").read_text())
    assert info["classifier_folder"].endswith("PLUSClassifier__nnUNetTrainerPLUS_cpuTiny_2epochs__nnUNetPlans__3d_fullres")


@pytest.mark.parametrize("kind, message", [
    ("dataset", "was trained on Dataset902_Other, not on dataset"),
    ("schema", "was trained for another lesion schema (lesions differ"),
])
def test_classifier_for_another_dataset_or_schema_is_refused(with_classifier, tiny_model_env, mixed_inputs, kind,
                                                            message, tmp_path, capsys):
    from nnunet_plus.predict.cli import main

    if kind == "dataset":
        folder = with_classifier(dataset_name="Dataset902_Other")
    else:
        labels = LesionSchema.from_dataset_json(tiny_model_env.model_folder / "dataset.json").labels
        folder = with_classifier(schema=build_schema(labels, lesions=["cyst", "hcc"]))
    flags = ["-d", str(tiny_model_env.dataset_id), "-c", tiny_model_env.configuration, "-tr",
             tiny_model_env.trainer, "-device", "cpu", "--disable_tta", "--disable_progress_bar"]
    code = main([*flags, "-i", str(mixed_inputs), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert str(folder / "fold_0" / "checkpoint_final.pth") in err and message in err
    assert not (tmp_path / "out" / "nn_case.json").exists()



@pytest.fixture
def trained_classifier(tiny_model_env, tmp_path, monkeypatch):
    """Fold 0 of a PLUS classifier trained for one epoch (tiny preset) by nnunet_plus_train_classifier on the tiny
    model's out-of-fold candidates, in this test's results folder (2-fold split of the two trained nnU-Net folds)."""
    from nnunet_plus.classifier.cli import main

    model = tiny_model_env
    results = tmp_path / "results" / model.dataset_name
    results.mkdir(parents=True)
    (results / model.model_folder.name).symlink_to(model.model_folder)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    splits = json.loads((Path(model.env["nnUNet_preprocessed"]) / model.dataset_name / "splits_final.json").read_text())
    preprocessed = tmp_path / "preprocessed" / model.dataset_name
    preprocessed.mkdir(parents=True)
    (preprocessed / "splits_final.json").write_text(json.dumps(
        [{"train": splits[1]["val"], "val": splits[0]["val"]}, {"train": splits[0]["val"], "val": splits[1]["val"]}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    assert main([model.dataset_name, model.configuration, "0", "-tr", model.trainer, "-device", "cpu", "--epochs", "1",
                 "--preset", "tiny", "-np", "1", "--quiet"]) == 0
    return results / f"PLUSClassifier__{model.trainer}__{model.plans}__{model.configuration}"


def test_trained_classifier_predicts_the_mixed_folder(trained_classifier, tiny_model_env, mixed_inputs, tmp_path,
                                                      capsys):
    """nnU-Net naming, a plain .mha and a DICOM series through nnU-Net + the trained classifier: the input's
    geometry, and JSON / CSV that agree with the written label and instance maps."""
    from nnunet_plus.predict.cli import main
    from nnunet_plus.predict.inputs import read_sitk

    out = tmp_path / "out"
    flags = ["-d", str(tiny_model_env.dataset_id), "-c", tiny_model_env.configuration, "-tr", tiny_model_env.trainer,
             "-f", "0", "-device", "cpu", "--disable_tta", "--disable_progress_bar", "-npp", "1", "-nps", "1"]
    assert main([*flags, "-i", str(mixed_inputs), "-o", str(out)]) == 0, capsys.readouterr().err
    schema = LesionSchema.from_dataset_json(tiny_model_env.model_folder / "dataset.json")
    lesions_csv = pd.read_csv(out / "lesions.csv")
    sources = {"nn_case": mixed_inputs / "nn_case_0000.nii.gz", "plain_case": mixed_inputs / "plain_case.mha",
               "dicom_case": mixed_inputs / "dicom_case"}
    for case, source_file in sources.items():
        source = read_sitk(source_file)
        record = json.loads((out / f"{case}.json").read_text())
        assert record["classifier"] is True and record["patient"]["probability_source"] == "plus"
        label_image = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        instance_image = sitk.ReadImage(str(out / f"{case}_instances.nii.gz"))
        for image in (label_image, instance_image):
            assert image.GetSize() == source.GetSize()
            np.testing.assert_allclose(image.GetOrigin(), source.GetOrigin(), rtol=1e-6, atol=0)
            np.testing.assert_allclose(image.GetSpacing(), source.GetSpacing(), rtol=1e-6, atol=0)
            np.testing.assert_allclose(image.GetDirection(), source.GetDirection(), rtol=0, atol=1e-6)
        label_map, instances = sitk.GetArrayFromImage(label_image), sitk.GetArrayFromImage(instance_image)
        np.testing.assert_array_equal(np.isin(label_map, schema.lesion_labels), instances > 0)
        assert sorted(np.unique(instances[instances > 0]).tolist()) == [r["id"] for r in record["lesions"]]
        for lesion in record["lesions"]:
            voxels = label_map[instances == lesion["id"]]
            assert set(np.unique(voxels).tolist()) == {schema.labels[lesion["class"]]}
            assert lesion["class"] == max((k for k in lesion["plus"] if k != "not_a_lesion"), key=lesion["plus"].get)
        rows = lesions_csv[lesions_csv["case"] == case]
        assert len(rows) == len(record["lesions"])
        assert sorted(rows["class"]) == sorted(r["class"] for r in record["lesions"])
