"""Candidate bank: case arrays (targets, tiers, patient labels), storage and validation, folder build."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.classifier import bank as bank_module
from nnunet_plus.classifier.bank import build_candidate_bank
from nnunet_plus.classifier.bank_inputs import bank_case_files
from nnunet_plus.classifier.bank_io import (ARRAY_SPEC, CandidateBankError, load_case_bank, read_bank_metadata,
                                            save_case_bank)
from nnunet_plus.classifier.bank_nnunet import bank_from_nnunet_results, target_spacing_from_plans
from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.candidate_arrays import build_case_candidates
from nnunet_plus.schema import build_schema

from classifier_project import write_softmax_export

LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}
SCHEMA = build_schema(LABELS, liver=("liver",), lesions=("hcc", "cyst"), sensitivities=(1.0, 4.0))
SPACING = (2.0, 1.0, 1.0)
SMALL = BankSettings(roi_fov="fixed", roi_shape=(8, 16, 16), liver_shape=(4, 16, 16))
HCC, CYST, NOT_A_LESION = 0, 1, 2

# lesion boxes (z, y, x slices); ids follow the raster order of each lesion's first voxel
A = np.s_[4:7, 10:16, 10:16]    # reference hcc, nnU-Net hcc            -> candidate 1, reference 1
FP = np.s_[4:7, 10:16, 30:36]   # reference liver, nnU-Net cyst         -> candidate 2
B = np.s_[4:7, 30:36, 10:16]    # reference cyst, nnU-Net hcc           -> candidate 3, reference 2
C = np.s_[4:7, 30:36, 30:36]    # reference hcc, weak: lesion only at f=4 -> candidate 4, reference 3
D = np.s_[8:10, 20:24, 20:24]   # reference cyst, nnU-Net liver (missed) -> reference 4


def synthetic_case(channels: int = 1):
    """(image (C, 12, 48, 48) HU, reference (12, 48, 48), probabilities (4, 12, 48, 48) float32)."""
    shape = (12, 48, 48)
    reference = np.zeros(shape, np.uint8)
    reference[1:11, 4:44, 4:44] = 1
    reference[A] = 2
    reference[B] = 3
    reference[C] = 2
    reference[D] = 3
    probabilities = np.empty((4, *shape), np.float32)
    probabilities[:] = np.array([0.9, 0.05, 0.025, 0.025])[:, None, None, None]
    probabilities[:, 1:11, 4:44, 4:44] = np.array([0.04, 0.9, 0.03, 0.03])[:, None, None, None]
    for box, p in ((A, [0.05, 0.1, 0.8, 0.05]), (FP, [0.05, 0.2, 0.05, 0.7]), (B, [0.05, 0.15, 0.7, 0.1]),
                   (C, [0.05, 0.6, 0.3, 0.05])):
        probabilities[(slice(None), *box)] = np.array(p)[:, None, None, None]
    image = np.full((channels, *shape), -1000.0, np.float32)
    image[:, 1:11, 4:44, 4:44] = 60.0
    for box in (A, FP, B, C, D):
        image[(slice(None), *box)] = 20.0
    image += 100.0 * np.arange(channels, dtype=np.float32)[:, None, None, None]  # channels differ
    return image, reference, probabilities


@pytest.fixture(scope="module")
def case_arrays():
    image, reference, probabilities = synthetic_case()
    return build_case_candidates("case_0", image, reference, probabilities, SCHEMA, spacing=SPACING,
                                 target_spacing=SPACING, settings=SMALL)


# ---- case level -----------------------------------------------------------------------------------------------
def test_case_keys_dtypes_and_shapes(case_arrays):
    assert set(case_arrays) == set(ARRAY_SPEC)
    assert case_arrays["crops"].shape == (4, 2, 8, 16, 16) and case_arrays["crops"].dtype == np.float16
    assert case_arrays["liver"].shape == (1, 4, 16, 16)
    assert case_arrays["prior"].shape == (4, 2)
    np.testing.assert_array_equal(case_arrays["bbox"][0], [4, 10, 10, 7, 16, 16])


def test_targets_from_matching(case_arrays):
    # A: true hcc; FP: nnU-Net cyst on liver -> not a lesion; B: nnU-Net hcc on a cyst -> reference class cyst;
    # C: the weak hcc found only at f=4
    np.testing.assert_array_equal(case_arrays["target"], [HCC, NOT_A_LESION, CYST, HCC])
    np.testing.assert_array_equal(case_arrays["overlap_target"], [HCC, NOT_A_LESION, CYST, HCC])
    np.testing.assert_array_equal(case_arrays["ref_id"], [1, 0, 2, 3])
    np.testing.assert_array_equal(case_arrays["nnunet_class"], [HCC, CYST, HCC, HCC])


def test_tiers_and_nnunet_f1_answer(case_arrays):
    np.testing.assert_array_equal(case_arrays["tier"], [0, 0, 0, 1])  # C only at f=4 -> suspicious
    np.testing.assert_array_equal(case_arrays["base_class"], [HCC, CYST, HCC, NOT_A_LESION])
    np.testing.assert_array_equal(case_arrays["base_det_class"], [HCC, CYST, HCC])
    np.testing.assert_array_equal(case_arrays["base_det_ref_id"], [1, 0, 2])
    np.testing.assert_allclose(case_arrays["base_det_volume_mm3"], [216.0] * 3)


def test_prior_volume_and_probabilities(case_arrays):
    np.testing.assert_allclose(case_arrays["prior"], [[0.8, 0.05], [0.05, 0.7], [0.7, 0.1], [0.3, 0.05]],
                               atol=1e-6)
    np.testing.assert_allclose(case_arrays["volume_mm3"], [3 * 6 * 6 * 2.0] * 4)
    np.testing.assert_allclose(case_arrays["max_probability"], [0.85, 0.75, 0.8, 0.35], atol=1e-6)
    np.testing.assert_array_equal(case_arrays["roi_scale"], [1.0] * 4)


def test_reference_lists_and_missed_lesions(case_arrays):
    np.testing.assert_array_equal(case_arrays["ref_class"], [HCC, CYST, HCC, CYST])
    np.testing.assert_allclose(case_arrays["ref_volume_mm3"], [216.0, 216.0, 216.0, 2 * 4 * 4 * 2.0])
    np.testing.assert_array_equal(case_arrays["ref_covered"], [True, True, True, False])
    np.testing.assert_array_equal(case_arrays["missed_per_class"], [0, 1])  # D, a cyst, never a candidate
    np.testing.assert_array_equal(case_arrays["overlap"], [[1, 1, 108], [3, 2, 108], [4, 3, 108]])


def test_patient_labels(case_arrays):
    np.testing.assert_array_equal(case_arrays["patient"], [1, 1, 1])  # tumor, malignant, benign
    np.testing.assert_array_equal(case_arrays["patient_types"], [1, 1])
    assert int(case_arrays["patient_class"]) == HCC  # priority hcc > cyst
    assert int(case_arrays["nnunet_patient_class"]) == HCC
    np.testing.assert_allclose(case_arrays["nnunet_livermax"], [0.8, 0.7], atol=1e-6)
    np.testing.assert_allclose(case_arrays["nnunet_patient"], [0.8, 0.8, 0.7], atol=1e-6)


def test_crops_hold_normalised_image_and_own_mask(case_arrays):
    crops = case_arrays["crops"].astype(np.float32)
    # CT window: lesion 20 HU -> (20 - 50) / 250 = -0.12, liver 60 HU -> 0.04, air -> -1
    # candidate 1 = box A, centre (5, 12.5, 12.5): the ROI starts at voxel (2, 5, 5) (snapped), so the lesion
    # occupies output slices 2..4, rows and columns 5..10
    np.testing.assert_allclose(crops[0, 0, 3:5, 7:9, 7:9], -0.12, atol=1e-3)
    np.testing.assert_allclose(crops[0, 0, 0, 0, 0], 0.04, atol=1e-3)  # liver around it
    np.testing.assert_array_equal(np.argwhere(crops[0, 1] > 0.5).min(0), [2, 5, 5])
    np.testing.assert_array_equal(np.argwhere(crops[0, 1] > 0.5).max(0), [4, 10, 10])
    assert crops[0, 1].sum() == 108  # its own 3 x 6 x 6 voxels, no neighbour
    liver = case_arrays["liver"].astype(np.float32)
    assert bool(case_arrays["liver_found"])
    assert liver.min() == pytest.approx(-1.0, abs=0.01) and -0.5 < liver.max() <= 0.04 + 1e-3


def test_no_lesion_case_has_empty_candidate_arrays():
    image, reference, probabilities = synthetic_case()
    reference[reference > 1] = 1
    probabilities[:, 1:11, 4:44, 4:44] = np.array([0.04, 0.9, 0.03, 0.03])[:, None, None, None]
    arrays = build_case_candidates("case_x", image, reference, probabilities, SCHEMA, spacing=SPACING,
                                   target_spacing=SPACING, settings=SMALL)
    assert arrays["crops"].shape == (0, 2, 8, 16, 16) and arrays["prior"].shape == (0, 2)
    np.testing.assert_array_equal(arrays["patient"], [0, 0, 0])
    assert int(arrays["patient_class"]) == NOT_A_LESION == int(arrays["nnunet_patient_class"])


def test_multichannel_case_keeps_all_channels():
    image, reference, probabilities = synthetic_case(channels=3)
    arrays = build_case_candidates("case_m", image, reference, probabilities, SCHEMA, spacing=SPACING,
                                   target_spacing=SPACING, settings=replace_settings(normalisation="none"))
    assert arrays["crops"].shape == (4, 4, 8, 16, 16) and arrays["liver"].shape == (3, 4, 16, 16)
    crop = arrays["crops"][0].astype(np.float32)
    np.testing.assert_allclose(crop[1, 3:5, 7:9, 7:9], 120.0)  # lesion 20 HU + 100 (channel 1)
    np.testing.assert_allclose(crop[2, 3:5, 7:9, 7:9], 220.0)


def replace_settings(**changes) -> BankSettings:
    return BankSettings.from_json({**SMALL.to_json(), **changes})


def test_case_rejects_bad_inputs():
    image, reference, probabilities = synthetic_case()
    with pytest.raises(ValueError, match="does not match the image"):
        build_case_candidates("c", image, reference, probabilities[:, :-1], SCHEMA, spacing=SPACING,
                              target_spacing=SPACING, settings=SMALL)
    bad = probabilities.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_case_candidates("c", image, reference, bad, SCHEMA, spacing=SPACING, target_spacing=SPACING,
                              settings=SMALL)


# ---- storage --------------------------------------------------------------------------------------------------
def test_round_trip_save_load(case_arrays, tmp_path):
    path = save_case_bank(case_arrays, tmp_path / "case_0.npz")
    loaded = load_case_bank(path)
    assert loaded.case_id == "case_0" and loaded.num_candidates == 4 and loaded.patient_class == HCC
    for key in ARRAY_SPEC:
        if key not in ("case_id", "patient_class", "nnunet_patient_class", "liver_found"):
            np.testing.assert_array_equal(getattr(loaded, key), case_arrays[key])
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_load_rejects_corrupt_file(tmp_path):
    path = tmp_path / "case_0.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(CandidateBankError, match=r"case_0\.npz: unreadable.*rerun build_candidate_bank"):
        load_case_bank(path)


def test_load_rejects_wrong_keys(case_arrays, tmp_path):
    path = tmp_path / "case_0.npz"
    np.savez_compressed(path, **{k: v for k, v in case_arrays.items() if k != "prior"})
    with pytest.raises(CandidateBankError, match=r"wrong keys \(missing \['prior'\]"):
        load_case_bank(path)


def test_load_rejects_nan_and_bad_shapes(case_arrays, tmp_path):
    path = tmp_path / "case_0.npz"
    prior = case_arrays["prior"].copy()
    prior[1, 0] = np.nan
    save_case_bank({**case_arrays, "prior": prior}, path)
    with pytest.raises(CandidateBankError, match="'prior' contains NaN"):
        load_case_bank(path)
    save_case_bank({**case_arrays, "target": case_arrays["target"][:3]}, path)
    with pytest.raises(CandidateBankError, match=r"'crops' has shape \(4, 2, 8, 16, 16\), expected \(3, 2,"):
        load_case_bank(path)
    save_case_bank({**case_arrays, "tier": case_arrays["tier"].astype(np.int64)}, path)
    with pytest.raises(CandidateBankError, match="'tier' has dtype int64"):
        load_case_bank(path)
    save_case_bank(case_arrays, tmp_path / "other.npz")
    with pytest.raises(CandidateBankError, match="holds case 'case_0'"):
        load_case_bank(tmp_path / "other.npz")


def test_load_checks_metadata_agreement(case_arrays, tmp_path):
    path = save_case_bank(case_arrays, tmp_path / "case_0.npz")
    meta = {"num_lesion_classes": 2, "channels": 1, "settings": {"roi_shape": [16, 64, 64], "liver_shape": [4, 16, 16]}}
    with pytest.raises(CandidateBankError, match="disagrees with bank.json"):
        load_case_bank(path, metadata=meta)


# ---- folder level ---------------------------------------------------------------------------------------------
def _write_nifti(array: np.ndarray, path, spacing_zyx=SPACING) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(img, str(path))


def write_nnunet_case(raw, softmax_dir, case_id, *, channels=1, probabilities=None):
    image, reference, probs = synthetic_case(channels)
    for c in range(channels):
        _write_nifti(image[c], raw / "imagesTr" / f"{case_id}_{c:04d}.nii.gz")
    _write_nifti(reference, raw / "labelsTr" / f"{case_id}.nii.gz")
    write_softmax_export(softmax_dir, case_id, probs if probabilities is None else probabilities, SPACING)


def make_raw_dataset(root, *, channels=1):
    raw = root / "raw" / "Dataset999_Bank"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    dataset_json = {"channel_names": {str(c): "CT" for c in range(channels)}, "labels": LABELS,
                    "numTraining": 0, "file_ending": ".nii.gz", "plus": SCHEMA.to_block()}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    return raw


@pytest.fixture()
def folder_layout(tmp_path):
    raw = make_raw_dataset(tmp_path)
    folds = [tmp_path / "results" / f"fold_{k}" / "validation" for k in (0, 1)]
    for folder in folds:
        folder.mkdir(parents=True)
    write_nnunet_case(raw, folds[0], "liver_000")
    write_nnunet_case(raw, folds[1], "liver_001")
    return raw, folds, tmp_path / "bank"


def test_folder_build_and_resume(folder_layout, monkeypatch):
    raw, folds, out = folder_layout
    paths = build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL,
                                 num_processes=2, quiet=True)
    assert [p.name for p in paths] == ["liver_000.npz", "liver_001.npz"]
    meta = read_bank_metadata(out)
    assert meta["lesions"] == ["hcc", "cyst"] and meta["not_a_lesion_index"] == 2
    assert meta["settings"]["normalisation"] == ["ct"] and meta["settings"]["roi_shape"] == [8, 16, 16]
    assert meta["cases"]["liver_001"]["num_candidates"] == 4
    loaded = load_case_bank(paths[1])
    np.testing.assert_array_equal(loaded.target, [HCC, NOT_A_LESION, CYST, HCC])
    np.testing.assert_array_equal(loaded.tier, [0, 0, 0, 1])

    # second run: everything valid is skipped (a build would raise here)
    def no_build(job):
        raise AssertionError(f"{job.case_id} rebuilt")

    monkeypatch.setattr(bank_module, "_build_case_job", no_build)
    assert build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL,
                                num_processes=1, quiet=True) == paths
    # a corrupt file is rebuilt, the valid one kept
    monkeypatch.undo()
    paths[0].write_bytes(b"truncated")
    mtime = paths[1].stat().st_mtime_ns
    build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1,
                         quiet=True)
    assert load_case_bank(paths[0]).num_candidates == 4 and paths[1].stat().st_mtime_ns == mtime
    # other settings on the same folder: refused unless overwrite
    with pytest.raises(CandidateBankError, match=r"different \['settings'\]"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING,
                             settings=replace_settings(margin=0.5), num_processes=1, quiet=True)


def test_folder_build_multichannel(tmp_path):
    raw = make_raw_dataset(tmp_path, channels=2)
    softmax = tmp_path / "validation"
    softmax.mkdir()
    write_nnunet_case(raw, softmax, "mc_000", channels=2)
    [path] = build_candidate_bank(raw, [softmax], tmp_path / "bank", SCHEMA, target_spacing=SPACING,
                                  settings=SMALL, num_processes=1, quiet=True)
    loaded = load_case_bank(path)
    assert loaded.crops.shape == (4, 3, 8, 16, 16) and loaded.liver.shape == (2, 4, 16, 16)
    assert read_bank_metadata(tmp_path / "bank")["channels"] == 2


def test_folder_build_errors(folder_layout):
    raw, folds, out = folder_layout
    (raw / "labelsTr" / "liver_001.nii.gz").unlink()
    with pytest.raises(CandidateBankError, match=r"liver_001: missing \[.*labelsTr/liver_001\.nii\.gz"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1)
    write_nnunet_case(raw, folds[1], "liver_001")

    _, _, probs = synthetic_case()
    probs[1, 5, 5, 5] = np.nan
    write_nnunet_case(raw, folds[1], "liver_001", probabilities=probs)
    with pytest.raises(CandidateBankError, match=r"case liver_001 .*NaN"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1,
                             quiet=True)
    write_nnunet_case(raw, folds[1], "liver_001", probabilities=synthetic_case()[2][..., :-2])
    with pytest.raises(CandidateBankError, match=r"case liver_001 .*probabilities have shape \(4, 12, 48, 46\)"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1,
                             quiet=True)
    write_nnunet_case(raw, folds[1], "liver_001")
    with open(folds[1] / "liver_001.pkl", "wb") as fh:
        pickle.dump({"spacing": [3.0, 1.0, 1.0], "sitk_stuff": {"spacing": (1.0, 1.0, 3.0)}}, fh)
    with pytest.raises(CandidateBankError, match=r"spacing \[3.0, 1.0, 1.0\] but the raw image has \[2.0, 1.0, 1.0\]"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1,
                             quiet=True)
    write_nnunet_case(raw, folds[0], "liver_001")
    with pytest.raises(CandidateBankError, match="softmax export in two folders"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1)


def test_bank_from_nnunet_results(tmp_path, monkeypatch):
    raw = make_raw_dataset(tmp_path)
    results = tmp_path / "results"
    model = results / "Dataset999_Bank" / "nnUNetTrainerPLUS__nnUNetPlans__3d_fullres"
    for k, case_id in ((0, "liver_000"), (1, "liver_001")):
        validation = model / f"fold_{k}" / "validation"
        validation.mkdir(parents=True)
        write_nnunet_case(raw, validation, case_id)
    plans = {"configurations": {"3d_fullres": {"spacing": list(SPACING)},
                                "3d_lowres": {"inherits_from": "3d_fullres", "spacing": [4.0, 2.0, 2.0]},
                                "3d_other": {"inherits_from": "3d_fullres"}}}
    (model / "plans.json").write_text(json.dumps(plans))
    for var, folder in (("nnUNet_raw", tmp_path / "raw"), ("nnUNet_results", results),
                        ("nnUNet_preprocessed", tmp_path / "preprocessed")):
        monkeypatch.setenv(var, str(folder))
    assert target_spacing_from_plans(plans, "3d_other") == SPACING
    assert target_spacing_from_plans(plans, "3d_lowres") == (4.0, 2.0, 2.0)
    paths = bank_from_nnunet_results("Dataset999_Bank", "3d_fullres", folds=[1], settings=SMALL, num_processes=1,
                                     quiet=True)
    expected = results / "Dataset999_Bank" / "PLUSClassifier__nnUNetTrainerPLUS__nnUNetPlans__3d_fullres" / \
        "candidate_bank"
    assert paths == [expected / "liver_001.npz"]
    paths = bank_from_nnunet_results("Dataset999_Bank", "3d_fullres", settings=SMALL, num_processes=1, quiet=True)
    assert [p.name for p in paths] == ["liver_000.npz", "liver_001.npz"]
    with pytest.raises(RuntimeError, match="fold_3/validation"):
        bank_from_nnunet_results("Dataset999_Bank", "3d_fullres", folds=[3], settings=SMALL, num_processes=1)


def test_folder_build_with_extra_cases(folder_layout):
    """Extra cases come from their own folder (imagesTr, labelsTr, predictions), are marked in bank.json with
    that folder, and must not reuse a raw case's id; the bank remembers whether it was built with them."""
    raw, folds, out = folder_layout
    extra = raw.parent.parent / "extra"
    for sub in ("imagesTr", "labelsTr", "predictions"):
        (extra / sub).mkdir(parents=True)
    write_nnunet_case(extra, extra / "predictions", "more_000")
    paths = build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL,
                                 num_processes=1, quiet=True, extra_dir=extra)
    assert [p.name for p in paths] == ["liver_000.npz", "liver_001.npz", "more_000.npz"]
    meta = read_bank_metadata(out)
    assert meta["cases"]["more_000"]["extra"] is True and meta["cases"]["more_000"]["raw_dir"] == str(extra)
    assert not meta["cases"]["liver_000"].get("extra")
    assert load_case_bank(paths[2]).num_candidates == 4  # the same case as liver_001, from the extra folder
    images, label = bank_case_files(raw, json.loads((raw / "dataset.json").read_text()), "more_000",
                                                meta["cases"]["more_000"])
    assert images == [extra / "imagesTr" / "more_000_0000.nii.gz"] and label == extra / "labelsTr" / "more_000.nii.gz"
    with pytest.raises(CandidateBankError, match=r"different \['extra_dir \(--extra-cases\)'\]"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1,
                             quiet=True)
    write_nnunet_case(extra, extra / "predictions", "liver_000")  # an id of the raw dataset
    with pytest.raises(CandidateBankError, match=r"extra cases \['liver_000'\] .* have the ids of raw dataset cases"):
        build_candidate_bank(raw, folds, out, SCHEMA, target_spacing=SPACING, settings=SMALL, num_processes=1,
                             quiet=True, extra_dir=extra)
