"""Candidate bank from a real nnUNetTrainerPLUS run (the shared ``tiny_trained_model`` fixture)."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from nnunet_plus.classifier.bank_nnunet import bank_from_nnunet_results
from nnunet_plus.classifier.bank_io import load_case_bank, read_bank_metadata


def test_bank_from_tiny_nnunet_validation(tiny_model_env, tmp_path):
    model = tiny_model_env
    paths = bank_from_nnunet_results(model.dataset_id, model.configuration, trainer=model.trainer,
                                     plans=model.plans, out_dir=tmp_path / "bank", num_processes=1, quiet=True)
    validation_cases = sorted(p.stem for f in model.folds
                              for p in (model.model_folder / f"fold_{f}" / "validation").glob("*.npz"))
    assert validation_cases and [p.stem for p in paths] == validation_cases
    meta = read_bank_metadata(tmp_path / "bank")
    assert meta["lesions"] == ["hcc", "cyst"] and meta["settings"]["normalisation"] == ["ct"]
    # the default bank: lesion-scale crops (16 x 32 x 32) and the liver at 32 x 64 x 64
    assert meta["settings"]["roi_fov"] == "lesion" and meta["settings"]["roi_shape"] == [16, 32, 32]
    plans = json.loads((model.model_folder / "plans.json").read_text())
    assert meta["target_spacing"] == plans["configurations"]["3d_fullres"]["spacing"]
    for path in paths:
        bank = load_case_bank(path)
        assert bank.crops.shape[1:] == (2, 16, 32, 32) and bank.liver.shape == (1, 32, 64, 64)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(model.labels_folder / f"{bank.case_id}.nii.gz")))
        present = [int(np.any(labels == v)) for v in (2, 3)]
        np.testing.assert_array_equal(bank.patient_types, present)
        assert bank.patient[0] == int(any(present))
        # every reference lesion is either covered by a candidate or counted as missed
        assert int(bank.missed_per_class.sum()) == int((~bank.ref_covered).sum())
        matched = bank.target < 2
        np.testing.assert_array_equal(bank.ref_id > 0, matched)
        np.testing.assert_array_equal(bank.target[matched], bank.ref_class[bank.ref_id[matched] - 1])
