"""The classifier inference contract: PLUSInference.from_folder(...).predict_case(...) -> ClassifierOutput."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from nnunet_plus.case_analysis import analyse_case
from nnunet_plus.classifier.bank_io import load_case_bank
from nnunet_plus.classifier.inference import ClassifierOutput, PLUSInference, classifier_folder
from nnunet_plus.classifier.model import candidate_features
from nnunet_plus.classifier.patient_sources import plus_patient_probabilities
from nnunet_plus.schema import build_schema

from classifier_project import synthetic_case


@pytest.fixture(scope="module")
def ensemble(trained_folds):
    return PLUSInference.from_folder(trained_folds.classifier, schema=trained_folds.schema)


def _case(project, kind):
    image, _, probabilities = synthetic_case(kind)
    analysis = analyse_case(probabilities, project.schema, image=image, spacing=project.spacing)
    return image, probabilities, analysis


@pytest.mark.parametrize("kind, n", [("full", 4), ("single", 1), ("empty", 0)])
def test_predict_case_shapes(ensemble, trained_folds, kind, n):
    image, probabilities, analysis = _case(trained_folds, kind)
    out = ensemble.predict_case(image, probabilities, analysis, spacing=trained_folds.spacing)
    assert isinstance(out, ClassifierOutput)
    assert out.lesion_probabilities.shape == (n, 3) and out.lesion_probabilities.dtype == np.float32
    np.testing.assert_allclose(out.lesion_probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert set(out.patient) == {"tumor", "malignant", "benign", "hcc", "cyst"}
    if n == 0:
        assert out.patient == dict.fromkeys(out.patient, 0.0)
    else:
        p = out.lesion_probabilities
        assert out.patient["malignant"] == pytest.approx(p[:, 0].max()) == out.patient["hcc"]
        assert out.patient["tumor"] == pytest.approx((p[:, 0] + p[:, 1]).max())


def test_ensemble_averages_the_folds(ensemble, trained_folds):
    assert ensemble.folds == [0, 1]
    image, probabilities, analysis = _case(trained_folds, "full")
    rows = [PLUSInference.from_folder(trained_folds.classifier, folds=[k], schema=trained_folds.schema)
            .predict_case(image, probabilities, analysis, spacing=trained_folds.spacing).lesion_probabilities
            for k in (0, 1)]
    assert not np.allclose(rows[0], rows[1])  # two different models
    both = ensemble.predict_case(image, probabilities, analysis, spacing=trained_folds.spacing)
    np.testing.assert_allclose(both.lesion_probabilities, (rows[0] + rows[1]) / 2, atol=1e-6)


def test_inference_builds_the_inputs_of_the_bank(trained_folds):
    """predict_case on a case = the network on that case's candidate bank arrays (same crops, same rounding)."""
    fold0 = PLUSInference.from_folder(trained_folds.classifier, folds=[0], schema=trained_folds.schema)
    # the bank's cls_000 was built from these arrays (softmax exported as float16, image read back from NIfTI)
    image, _, probabilities = synthetic_case("full", seed=0)
    probabilities = probabilities.astype(np.float16)
    analysis = analyse_case(probabilities, trained_folds.schema, image=image, spacing=trained_folds.spacing)
    out = fold0.predict_case(image, probabilities, analysis, spacing=trained_folds.spacing)
    bank = load_case_bank(trained_folds.bank / "cls_000.npz")
    features = candidate_features(bank.tier, bank.max_probability, bank.volume_mm3, bank.nnunet_class, 2)
    np.testing.assert_allclose(out.lesion_probabilities,
                               fold0.predict_inputs(bank.crops, bank.prior, features, bank.liver), atol=1e-6)


def test_channel_names_reach_the_normalisation(trained_folds):
    """A channel not named CT is z-scored by "auto" normalisation at prediction exactly as in the bank build."""
    fold0 = PLUSInference.from_folder(trained_folds.classifier, folds=[0], schema=trained_folds.schema)
    image, _, probabilities = synthetic_case("full", seed=0)
    analysis = analyse_case(probabilities, trained_folds.schema, image=image, spacing=trained_folds.spacing)

    def rows(normalisation, channel_names=None):
        inference = PLUSInference(fold0.models, schema=trained_folds.schema,
                                  settings=dataclasses.replace(fold0.settings, normalisation=normalisation),
                                  target_spacing=fold0.target_spacing, channel_names=channel_names)
        return inference.predict_case(image, probabilities, analysis, spacing=trained_folds.spacing).lesion_probabilities

    named_mr = rows("auto", ["MR"])
    np.testing.assert_array_equal(named_mr, rows("zscore"))
    assert not np.array_equal(named_mr, rows("ct"))
    np.testing.assert_array_equal(rows("auto", ["CT"]), rows("ct"))


def test_patient_probabilities_by_hand():
    schema = build_schema({"background": 0, "liver": 1, "hcc": 2, "metastasis": 3, "cyst": 4})
    rows = np.array([[0.5, 0.1, 0.2, 0.2], [0.1, 0.2, 0.6, 0.1]])
    p = plus_patient_probabilities(rows, schema)
    assert p == pytest.approx({"tumor": 0.9, "malignant": 0.6, "benign": 0.6, "hcc": 0.5, "metastasis": 0.2,
                               "cyst": 0.6})


def test_missing_folder_fold_and_checkpoint(trained_folds, tmp_path):
    schema = trained_folds.schema
    with pytest.raises(FileNotFoundError, match="PLUS classifier folder .*nope not found; train it"):
        PLUSInference.from_folder(tmp_path / "nope", schema=schema)
    with pytest.raises(FileNotFoundError, match=r"fold 5 of the PLUS classifier not found .*\['fold_0', 'fold_1'\]"):
        PLUSInference.from_folder(trained_folds.classifier, folds=[5], schema=schema)
    with pytest.raises(FileNotFoundError, match=r"fold_1/checkpoint_nope.pth not found; checkpoints in .*"
                                                r"checkpoint_best.pth', 'checkpoint_final.pth'"):
        PLUSInference.from_folder(trained_folds.classifier, folds=[1], checkpoint="checkpoint_nope.pth", schema=schema)
    with pytest.raises(FileNotFoundError, match="no fold of .* has checkpoint_latest.pth"):
        PLUSInference.from_folder(trained_folds.classifier, checkpoint="checkpoint_latest.pth", schema=schema)
    broken = tmp_path / "broken"
    (broken / "fold_0").mkdir(parents=True)
    (broken / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint_final.pth is not a readable checkpoint"):
        PLUSInference.from_folder(broken, schema=schema)
    torch.save({"network_weights": {}}, broken / "fold_0" / "checkpoint_final.pth")  # an nnU-Net checkpoint
    with pytest.raises(ValueError, match="is not a PLUS classifier checkpoint"):
        PLUSInference.from_folder(broken, schema=schema)


def test_schema_or_dataset_mismatch_is_refused(trained_folds):
    labels = dict(trained_folds.schema.labels)
    swapped = build_schema(labels, lesions=("cyst", "hcc"))
    with pytest.raises(ValueError, match=r"fold_0/checkpoint_final.pth was trained for another lesion schema "
                                         r"\(lesions differ: trained lesions \['hcc', 'cyst'\]"):
        PLUSInference.from_folder(trained_folds.classifier, schema=swapped)
    more = build_schema({**labels, "metastasis": 4})
    with pytest.raises(ValueError, match=r"another lesion schema \(labels, lesions, malignant differ"):
        PLUSInference.from_folder(trained_folds.classifier, schema=more)
    other = dataclasses.replace(trained_folds.schema, dataset_id=997)
    with pytest.raises(ValueError, match="was trained on Dataset998_ClsTrainer, not on dataset 997"):
        PLUSInference.from_folder(trained_folds.classifier, schema=other)
    same = dataclasses.replace(trained_folds.schema, dataset_id="Dataset998_ClsTrainer")
    assert PLUSInference.from_folder(trained_folds.classifier, folds=[0], schema=same).folds == [0]


def test_dataset_from_the_results_folder_name(trained_folds, tmp_path):
    """A classifier folder copied under another dataset's results folder is refused."""
    target = tmp_path / "Dataset997_Other" / trained_folds.classifier.name
    shutil.copytree(trained_folds.classifier / "fold_0", target / "fold_0")
    with pytest.raises(ValueError, match="was trained on Dataset998_ClsTrainer, not on dataset Dataset997_Other"):
        PLUSInference.from_folder(target, schema=trained_folds.schema)


def test_classifier_folder_and_device_errors(trained_folds, monkeypatch):
    monkeypatch.setenv("nnUNet_results", "/some/results")
    assert str(classifier_folder("Dataset998_ClsTrainer", "3d_fullres", trainer="T")) == \
        "/some/results/Dataset998_ClsTrainer/PLUSClassifier__T__nnUNetPlans__3d_fullres"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU; use -device cpu"):
            PLUSInference.from_folder(trained_folds.classifier, schema=trained_folds.schema, device="cuda")
    image, probabilities, analysis = _case(trained_folds, "single")
    inference = PLUSInference.from_folder(trained_folds.classifier, folds=[0], schema=trained_folds.schema)
    with pytest.raises(ValueError, match=r"image must be \(1, Z, Y, X\)"):
        inference.predict_case(np.concatenate([image, image]), probabilities, analysis, spacing=trained_folds.spacing)
