"""Classifier folds from nnU-Net's splits_final.json: no leakage, clear errors for missing exports."""
from __future__ import annotations

import json

import pytest

from nnunet_plus.classifier.splits import (SplitError, check_bank_for_fold, fold_cases, load_splits, softmax_fold,
                                          two_fold_split)

# 3 folds of 6 cases; each case's softmax comes from the fold that validates it
SPLITS = [{"train": ["c2", "c3", "c4", "c5"], "val": ["c0", "c1"]},
          {"train": ["c0", "c1", "c4", "c5"], "val": ["c2", "c3"]},
          {"train": ["c0", "c1", "c2", "c3"], "val": ["c4", "c5"]}]


def bank_cases(splits=SPLITS, root="/r/Dataset1_X/nnUNetTrainerPLUS__nnUNetPlans__3d_fullres"):
    return {case: {"file": f"{case}.npz", "softmax": f"{root}/fold_{k}/validation/{case}.npz"}
            for k, s in enumerate(splits) for case in s["val"]}


def test_every_fold_trains_on_out_of_fold_cases_only():
    bank = bank_cases()
    for fold in range(3):
        cases = check_bank_for_fold(bank, SPLITS, fold)
        assert set(cases.train).isdisjoint(cases.val)
        assert set(cases.train) | set(cases.val) == set(bank)
        assert cases.val == tuple(sorted(SPLITS[fold]["val"]))
        for case in cases.train:
            # the candidates of a training case come from another nnU-Net fold, one that did not train on it
            source = softmax_fold(bank[case]["softmax"])
            assert source != fold and case not in SPLITS[source]["train"]
    assert check_bank_for_fold(bank, SPLITS, 1).train == ("c0", "c1", "c4", "c5")


def test_missing_export_names_cases_and_folds_to_train():
    bank = bank_cases()
    del bank["c4"], bank["c5"]  # nnU-Net fold 2 never validated with --npz
    with pytest.raises(SplitError, match=r"fold 0 needs 2 case\(s\) .*\(c4, c5\).*not exported.*nnU-Net fold\(s\) "
                                         r"\[2\].*nnUNetv2_train 5 3d_fullres 2 -tr T --npz"):
        check_bank_for_fold(bank, SPLITS, 0, train_command="nnUNetv2_train 5 3d_fullres FOLD -tr T")
    with pytest.raises(SplitError, match=r"fold 2 needs"):  # validation cases are needed as well
        check_bank_for_fold(bank, SPLITS, 2)


def test_in_fold_softmax_is_leakage():
    bank = bank_cases()
    # c0 exported by fold 1, which trained on c0 (e.g. a bank built with other splits)
    bank["c0"]["softmax"] = "/r/x/fold_1/validation/c0.npz"
    for fold in (0, 1):
        with pytest.raises(SplitError, match=r"not out-of-fold: c0 \(exported by fold 1, which trained on it\)"):
            check_bank_for_fold(bank, SPLITS, fold)


def test_softmax_from_other_folders_is_accepted():
    bank = bank_cases()
    bank["c2"]["softmax"] = "/predictions/c2.npz"  # a --save_probabilities folder: fold unknown
    assert softmax_fold(bank["c2"]["softmax"]) is None
    assert softmax_fold("/a/fold_12/validation/x.npz") == 12
    assert softmax_fold("/a/fold_all/validation/x.npz") is None
    assert "c2" in check_bank_for_fold(bank, SPLITS, 0).train


def test_fold_cases_errors():
    with pytest.raises(SplitError, match=r"fold 3 is not in the split \(folds 0..2\)"):
        fold_cases(SPLITS, 3)
    with pytest.raises(SplitError, match=r"both its training and validation sets: \['c1'\]"):
        fold_cases([{"train": ["c1", "c2"], "val": ["c1"]}], 0)


def test_load_splits(tmp_path):
    with pytest.raises(SplitError, match="not found; nnUNetv2_train writes it"):
        load_splits(tmp_path / "splits_final.json")
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(SplitError, match="must be a non-empty list"):
        load_splits(path)
    path.write_text(json.dumps(SPLITS))
    assert load_splits(path) == SPLITS


def test_two_fold_split_alternates_the_sorted_cases():
    splits = two_fold_split(["c3", "c0", "c2", "c1", "c4"])
    assert splits == [{"train": ["c1", "c3"], "val": ["c0", "c2", "c4"]},
                      {"train": ["c0", "c2", "c4"], "val": ["c1", "c3"]}]
    assert fold_cases(splits, 1).val == ("c1", "c3")


def test_extra_cases_are_spread_over_the_folds():
    """Extra cases (no nnU-Net fold trained on them): extra case i validates fold i % n and trains the others;
    their shuffled copies follow them into training only."""
    bank = bank_cases()
    extra = [f"e{i}" for i in range(5)]
    for case in extra:
        bank[case] = {"file": f"{case}.npz", "softmax": f"/extra/predictions/{case}.npz", "extra": True}
    bank["e0__shuffle1"] = {"file": "e0__shuffle1.npz", "softmax": "/extra/predictions/e0.npz", "extra": True,
                            "shuffle_of": "e0"}
    validated = []
    for fold in range(3):
        cases = check_bank_for_fold(bank, SPLITS, fold)
        assert set(cases.train).isdisjoint(cases.val)
        fold_extra = [c for c in cases.val if c.startswith("e")]
        assert fold_extra == [c for i, c in enumerate(extra) if i % 3 == fold]
        assert set(extra) - set(fold_extra) <= set(cases.train)
        assert ("e0__shuffle1" in cases.train) == ("e0" in cases.train)
        assert "e0__shuffle1" not in cases.val
        validated += fold_extra
    assert sorted(validated) == extra  # each extra case validates exactly one fold


def test_extra_case_named_by_the_split_is_leakage():
    bank = bank_cases()
    bank["c0"]["extra"] = True  # a case nnU-Net trained on (folds 1, 2) must not come in as an extra case
    with pytest.raises(SplitError, match=r"extra bank cases \['c0'\] are named by the nnU-Net split"):
        check_bank_for_fold(bank, SPLITS, 0)
