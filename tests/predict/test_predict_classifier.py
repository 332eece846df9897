"""nnunet_plus_predict with a PLUS classifier folder: the guard (an untrained classifier, or one whose fitted rule
is the identity, gives exactly nnU-Net alone), the classifier path (random tiny weights and a given rule: the
rule and the files are checked, not the accuracy), a classifier really trained with nnunet_plus_train_classifier on the
mixed input folder, and the refusal of a classifier trained for another dataset / schema."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import pandas as pd
import torch

from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from nnunet_plus.classifier.model import PLUSClassifier
from nnunet_plus.decision_rule import DecisionRule, apply_rule
from nnunet_plus.classifier.operating_point import OPERATING_POINT_FILE, FittedRule, load_rule, save_rule
from nnunet_plus.schema import LesionSchema, build_schema


#: the network's own answer: reject on a "not a lesion" majority, take the PLUS type when it leads, and every
#: patient probability from PLUS
MAJORITY = DecisionRule(reject_confident=0.5, relabel_margin=0.0, accept_suspicious=0.5,
                        patient_from_plus=("tumor", "malignant", "benign", "hcc", "cyst"))


def _write_classifier(folder, schema: LesionSchema, dataset_name: str, *, trained_looking: bool = True,
                      rule: DecisionRule | None = MAJORITY) -> None:
    """Two folds of a tiny classifier: untrained (zero correction head) or with a random head; ``rule`` is written
    as the folder's operating point (None: no operating_point.json)."""
    torch.manual_seed(0)
    model = PLUSClassifier(1, len(schema.lesions), preset="tiny", hda_scales=2)
    if trained_looking:
        torch.nn.init.normal_(model.head[-1].weight, std=1.0)
        torch.nn.init.normal_(model.head[-1].bias, std=1.0)
    if rule is not None:
        fitted = FittedRule(rule=rule, objective="lesion_f1", score=None, identity_score=None,
                            network_free_score=None, n_cases=0)
        save_rule(fitted, folder / OPERATING_POINT_FILE)
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

    def make(schema: LesionSchema | None = None, dataset_name: str | None = None, **options):
        results = tmp_path / "results" / model.dataset_name
        results.mkdir(parents=True)
        (results / model.model_folder.name).symlink_to(model.model_folder)
        folder = results / f"PLUSClassifier__{model.trainer}__{model.plans}__{model.configuration}"
        own = LesionSchema.from_dataset_json(model.model_folder / "dataset.json")
        _write_classifier(folder, schema or own, dataset_name or model.dataset_name, **options)
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
    for lesion in record["lesions"]:  # the majority rule: "not a lesion" <= 0.5, class = the leading PLUS type
        types = {k: v for k, v in lesion["plus"].items() if k != "not_a_lesion"}
        assert lesion["plus"]["not_a_lesion"] <= 0.5
        assert lesion["class"] == max(types, key=types.get)
        assert lesion["probability"] == pytest.approx(types[lesion["class"]])
    for lesion in record["rejected"]:
        assert lesion["plus"]["not_a_lesion"] > 0.5
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


@pytest.mark.parametrize("source", ["nnunet", "segmentation"])
@pytest.mark.parametrize("options", [{"trained_looking": False, "rule": None},    # untrained, no operating point
                                     {"trained_looking": True, "rule": DecisionRule()}])  # fitted rule = identity
def test_guarded_classifier_gives_exactly_nnunet_alone(with_classifier, tiny_model_env, tmp_path, capsys, source,
                                                        options):
    """The guard, through nnunet_plus_predict: same label maps, same lesions, same classes as --no-classifier."""
    from nnunet_plus.predict.cli import main

    with_classifier(**options)
    images = tmp_path / "images"
    images.mkdir()
    extra = []
    for case in ("tiny_003", "tiny_005"):
        (images / f"{case}_0000.nii.gz").symlink_to(tiny_model_env.images_folder / f"{case}_0000.nii.gz")
    if source == "segmentation":  # the reference as nnU-Net's answer: certain lesions, one per reference lesion
        labels = tmp_path / "labels"
        labels.mkdir()
        for case in ("tiny_003", "tiny_005"):
            (labels / f"{case}.nii.gz").symlink_to(tiny_model_env.labels_folder / f"{case}.nii.gz")
        extra = ["--from-segmentation", str(labels)]
    flags = ["-i", str(images), "-d", str(tiny_model_env.dataset_id), "-c", tiny_model_env.configuration, "-tr",
             tiny_model_env.trainer, "-f", "0", "1", "-device", "cpu", "--disable_progress_bar", *extra]
    assert main([*flags, "-o", str(tmp_path / "alone"), "--no-classifier"]) == 0, capsys.readouterr().err
    assert main([*flags, "-o", str(tmp_path / "guarded")]) == 0, capsys.readouterr().err
    n_lesions = 0
    for case in ("tiny_003", "tiny_005"):
        for suffix in (".nii.gz", "_instances.nii.gz"):
            alone, guarded = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / run / f"{case}{suffix}")))
                              for run in ("alone", "guarded"))
            np.testing.assert_array_equal(guarded, alone)
        alone, guarded = (json.loads((tmp_path / run / f"{case}.json").read_text()) for run in ("alone", "guarded"))
        assert guarded["classifier"] is True and guarded["operating_point"].startswith("identity")
        assert [(r["id"], r["class"], r["volume_mm3"]) for r in guarded["lesions"]] == \
            [(r["id"], r["class"], r["volume_mm3"]) for r in alone["lesions"]]
        assert guarded["patient"]["class"] == alone["patient"]["class"]
        assert guarded["patient"]["probabilities"] == alone["patient"]["probabilities"]  # no key taken from PLUS
        n_lesions += len(alone["lesions"])
    if source == "segmentation":
        assert n_lesions >= 2  # the comparison covered real lesions


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
    rule = load_rule(trained_classifier / OPERATING_POINT_FILE)  # fitted by the training on fold 0's validation
    names = list(schema.lesions)
    for case, source_file in sources.items():
        source = read_sitk(source_file)
        record = json.loads((out / f"{case}.json").read_text())
        assert record["classifier"] is True and record["operating_point"] == rule.describe()
        sources = record["patient"]["probability_sources"]
        assert sources == {k: "plus" if k in rule.patient_from_plus else "livermax" for k in sources}
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
        candidates = record["lesions"] + record["rejected"]
        table = np.array([[c["plus"][n] for n in [*names, "not_a_lesion"]] for c in candidates]).reshape(-1, 3)
        reported, classes = apply_rule(rule, table, tier=[int(c["tier"] == "suspicious") for c in candidates],
                                       nnunet_class=[names.index(c["nnunet_class"]) for c in candidates],
                                       groups=[[names.index(n) for n in schema.malignant],
                                               [names.index(n) for n in schema.benign]])
        assert reported.tolist() == [True] * len(record["lesions"]) + [False] * len(record["rejected"])
        assert [names[k] for k in classes[reported]] == [r["class"] for r in record["lesions"]]
        rows = lesions_csv[lesions_csv["case"] == case]
        assert len(rows) == len(record["lesions"])
        assert sorted(rows["class"]) == sorted(r["class"] for r in record["lesions"])
