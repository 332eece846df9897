"""Patient dataset / collate over the candidate bank, crop augmentation, bank-level scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_plus.classifier.bank_io import load_case_bank, read_bank_metadata
from nnunet_plus.classifier.rule_scores import NETWORK_RULE, case_lesion_counts, nnunet_lesion_metrics, score_cases
from nnunet_plus.classifier.data import Augmentation, CandidateDataset, augment_patient, collate_patients

HCC, CYST, NOT = 0, 1, 2


@pytest.fixture(scope="module")
def dataset(cls_project):
    return CandidateDataset(cls_project.bank, cls_project.cases, metadata=read_bank_metadata(cls_project.bank))


def test_items_and_collate_with_variable_lesion_counts(dataset, cls_project):
    # cls_000 full (4 candidates), cls_001 single (1), cls_002 empty (0)
    items = [dataset[i] for i in range(3)]
    assert [item["target"].shape[0] for item in items] == [4, 1, 0]
    np.testing.assert_array_equal(items[0]["target"], [HCC, NOT, CYST, HCC])
    batch = collate_patients(items)
    assert batch.crops.shape == (5, 2, 16, 32, 32) and batch.crops.dtype == torch.float32
    assert batch.priors.shape == (5, 2) and batch.liver.shape == (3, 1, 16, 32, 32)
    assert batch.features.shape == (5, 3 + 2)
    assert batch.lesion_to_patient.tolist() == [0, 0, 0, 0, 1]
    assert batch.targets.tolist() == [HCC, NOT, CYST, HCC, HCC]
    assert batch.patient_malignant.tolist() == [1.0, 1.0, 0.0]
    assert batch.patient_tumor.tolist() == [1.0, 1.0, 0.0]
    assert batch.case_ids == ["cls_000", "cls_001", "cls_002"]
    empty = collate_patients([items[2]])
    assert empty.num_candidates == 0 and empty.crops.shape == (0, 2, 16, 32, 32)
    assert dataset.class_counts().tolist() == [6, 2, 2]  # 2 full (hcc, -, cyst, hcc) + 2 single (hcc)


def test_augmentation_is_seeded_per_epoch_and_patient(cls_project):
    meta = read_bank_metadata(cls_project.bank)
    data = CandidateDataset(cls_project.bank, cls_project.cases, metadata=meta, augmentation=Augmentation(), seed=3)
    data.set_epoch(5)
    first = data[0]["crops"]
    data.set_epoch(6)
    other_epoch = data[0]["crops"]
    data.set_epoch(5)
    np.testing.assert_array_equal(data[0]["crops"], first)  # same (seed, epoch, patient): same draws
    assert not np.array_equal(first, other_epoch)
    plain = CandidateDataset(cls_project.bank, cls_project.cases, metadata=meta)[0]
    np.testing.assert_array_equal(plain["crops"], load_case_bank(cls_project.bank / "cls_000.npz").crops)


def test_augment_patient_flips_all_alike_and_keeps_the_mask_values():
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(2, 2, 4, 6, 8)).astype(np.float32)
    crops[:, 1] = (crops[:, 1] > 0).astype(np.float32)
    liver = rng.normal(size=(1, 4, 6, 8)).astype(np.float32)
    out_crops, out_liver = augment_patient(crops, liver, np.random.default_rng(1),
                                           Augmentation(flip_p=1.0, scale=0.0, shift=0.0))
    np.testing.assert_array_equal(out_crops, crops[:, :, ::-1, ::-1, ::-1])
    np.testing.assert_array_equal(out_liver, liver[:, ::-1, ::-1, ::-1])
    out_crops, out_liver = augment_patient(crops, liver, np.random.default_rng(1),
                                           Augmentation(flip_p=0.0, scale=0.1, shift=0.05))
    draws = np.random.default_rng(1)
    draws.random(3)
    scale, shift = 1.0 + draws.uniform(-0.1, 0.1), draws.uniform(-0.05, 0.05)
    np.testing.assert_allclose(out_crops[:, 0], crops[:, 0] * scale + shift, rtol=1e-6)
    np.testing.assert_array_equal(out_crops[:, 1], crops[:, 1])  # the mask channel is not touched
    np.testing.assert_allclose(out_liver, liver * scale + shift, rtol=1e-6)
    with pytest.raises(ValueError, match="augmentation needs"):
        Augmentation(flip_p=2.0)


def test_case_counts_by_hand(cls_project):
    bank = load_case_bank(cls_project.bank / "cls_000.npz")  # candidates: hcc TP, FP, hcc-on-cyst, weak hcc
    reported = np.array([True, False, True, True])
    classes = np.array([HCC, NOT, CYST, HCC])
    # all three reported ones match their reference with the right class; the missed cyst D is a FN
    assert case_lesion_counts(bank, reported, classes) == {"tp": 3, "fl": 0, "fp": 0, "fn": 1}
    # nnU-Net's own candidate classes, all reported: the FP stays, B is a false label
    counts = case_lesion_counts(bank, np.ones(4, bool), bank.nnunet_class)
    assert counts == {"tp": 2, "fl": 1, "fp": 1, "fn": 1}
    # ignoring reference lesions under 100 mm3 drops D (64 mm3) from the FN
    assert case_lesion_counts(bank, reported, classes, min_volume_mm3=100.0)["fn"] == 0
    # f=1 lesions of nnU-Net alone: A (hcc TP), FP, B (hcc on a cyst: FL); C and D are missed
    alone = nnunet_lesion_metrics([bank])
    assert (alone["tp"], alone["fl"], alone["fp"], alone["fn"]) == (1, 1, 1, 2)


def test_score_cases_patient_level(cls_project):
    banks = [load_case_bank(cls_project.bank / f"{c}.npz") for c in ("cls_000", "cls_001", "cls_002")]
    everything_not_lesion = [np.tile([0.0, 0.0, 1.0], (b.num_candidates, 1)) for b in banks]
    scores = score_cases(banks, everything_not_lesion, rule=NETWORK_RULE, malignant_classes=[HCC],
                         benign_classes=[CYST])
    assert scores["lesion"]["tp"] == 0 and scores["lesion"]["fn"] == 4 + 1 and scores["lesions_found"] == 0
    assert scores["malignant"]["fn"] == 2 and scores["benign"]["fn"] == 1 and scores["malignant"]["tn"] == 1
    # no patient predicted positive: precision and F1 undefined (None), as in nnunet_plus.evaluation
    assert scores["malignant_f1"] is None and scores["benign_f1"] is None and scores["patient_f1"] is None
    perfect = [np.eye(3)[b.target] for b in banks]
    scores = score_cases(banks, perfect, rule=NETWORK_RULE, malignant_classes=[HCC], benign_classes=[CYST])
    assert scores["lesion"]["tp"] == 4 and scores["lesion"]["fp"] == 0 and scores["lesion"]["fn"] == 1
    assert scores["lesions_found"] == 4   # tp + fl, whatever the type
    assert scores["malignant_f1"] == 1.0 and scores["benign_f1"] == 1.0 and scores["patient_f1"] == 1.0
    wrong_type = [np.eye(3)[np.where(b.target == HCC, CYST, np.where(b.target == CYST, HCC, b.target))] for b in banks]
    scores = score_cases(banks, wrong_type, rule=NETWORK_RULE, malignant_classes=[HCC], benign_classes=[CYST])
    assert scores["lesion"]["tp"] == 0 and scores["lesion"]["fl"] == 4 and scores["lesions_found"] == 4


def test_patient_targets_are_what_the_candidates_can_reach(tmp_path, cls_project):
    """A malignant patient whose lesions no candidate matched is no malignant target: L_P / L_S must not push its
    false candidates towards "malignant"."""
    import shutil

    from nnunet_plus.classifier.bank_io import save_case_bank

    bank_dir = tmp_path / "bank"
    shutil.copytree(cls_project.bank, bank_dir)
    with np.load(bank_dir / "cls_000.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    assert arrays["patient"].tolist() == [1, 1, 1]  # the reference has hcc and cyst lesions
    arrays["target"] = np.full_like(arrays["target"], NOT)  # ... but no candidate matches one
    save_case_bank(arrays, bank_dir / "cls_000.npz")
    meta = read_bank_metadata(bank_dir)
    item = CandidateDataset(bank_dir, ["cls_000", "cls_001"], metadata=meta)
    assert (float(item[0]["malignant"]), float(item[0]["tumor"])) == (0.0, 0.0)
    assert (float(item[1]["malignant"]), float(item[1]["tumor"])) == (1.0, 1.0)  # its hcc candidate is matched
