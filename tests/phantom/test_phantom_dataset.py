"""Writing the nnU-Net raw dataset: layout, geometry, metadata, determinism, atomicity, argument errors."""
from __future__ import annotations

import csv
import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.phantom import dataset as dataset_module
from nnunet_plus.phantom.dataset import make_phantom_dataset, phantom_labels
from nnunet_plus.schema import LesionSchema

SMALL = dict(shape=(16, 48, 48), spacing=(7.0, 4.0, 4.0))   # field of view 112 x 192 x 192 mm
ORIGIN = (-30.0, 12.5, -100.0)                             # (z, y, x) mm


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    folder = make_phantom_dataset(990, 6, n_test=2, seed=4, origin=ORIGIN, healthy_fraction=0.34, out_dir=root,
                                  num_processes=2, quiet=True, **SMALL)
    return folder


def test_layout(written):
    assert written.name == "Dataset990_LiverPhantom"
    assert sorted(p.name for p in written.iterdir()) == [
        "cases.json", "dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs", "patients.csv"]
    assert sorted(p.name for p in (written / "imagesTr").iterdir()) == [f"case_{i:04d}_0000.nii.gz" for i in range(6)]
    assert sorted(p.name for p in (written / "labelsTr").iterdir()) == [f"case_{i:04d}.nii.gz" for i in range(6)]
    assert sorted(p.name for p in (written / "imagesTs").iterdir()) == [
        "case_0006_0000.nii.gz", "case_0007_0000.nii.gz"]
    assert sorted(p.name for p in (written / "labelsTs").iterdir()) == ["case_0006.nii.gz", "case_0007.nii.gz"]
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")]   # no staging left behind


def test_geometry_written_as_asked(written):
    for sub in ("imagesTr/case_0003_0000.nii.gz", "labelsTr/case_0003.nii.gz", "imagesTs/case_0006_0000.nii.gz"):
        image = sitk.ReadImage(str(written / sub))
        assert image.GetSize() == (48, 48, 16)                      # ITK order (x, y, z)
        assert image.GetSpacing() == pytest.approx((4.0, 4.0, 7.0))
        assert image.GetOrigin() == pytest.approx((-100.0, 12.5, -30.0))
        assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert sitk.ReadImage(str(written / "imagesTr/case_0003_0000.nii.gz")).GetPixelID() == sitk.sitkInt16
    assert sitk.ReadImage(str(written / "labelsTr/case_0003.nii.gz")).GetPixelID() == sitk.sitkUInt8


def test_default_origin_centres_the_volume(tmp_path):
    folder = make_phantom_dataset(12, 1, n_test=0, out_dir=tmp_path, num_processes=1, quiet=True, **SMALL)
    image = sitk.ReadImage(str(folder / "imagesTr/case_0000_0000.nii.gz"))
    assert image.GetOrigin() == pytest.approx((-94.0, -94.0, -52.5))   # -(n - 1) / 2 * spacing


def test_dataset_json(written):
    meta = json.loads((written / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 6
    assert meta["labels"] == {"background": 0, "liver": 1, "hcc": 2, "icc": 3, "metastasis": 4, "hemangioma": 5,
                              "calcification": 6, "cyst": 7}
    schema = LesionSchema.from_dataset_json(meta)
    assert schema.liver == ("liver",)
    assert set(schema.malignant) == {"hcc", "icc", "metastasis"}
    assert set(schema.benign) == {"hemangioma", "calcification", "cyst"}
    assert schema.priority == ("hcc", "icc", "metastasis", "hemangioma", "calcification", "cyst")
    assert meta["phantom"]["shape"] == [16, 48, 48] and meta["phantom"]["origin"] == list(ORIGIN)


def test_cases_json_and_patients_csv_match_files(written):
    cases = json.loads((written / "cases.json").read_text())["cases"]
    assert [c["case_id"] for c in cases] == [f"case_{i:04d}" for i in range(8)]
    rows = list(csv.DictReader((written / "patients.csv").open()))
    assert [r["case_id"] for r in rows] == [c["case_id"] for c in cases]
    for case, row in zip(cases, rows):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(written / case["label"])))
        assert row["patient_class"] == case["patient_class"] and int(row["n_lesions"]) == case["n_lesions"]
        assert row["lesion_types"] == ";".join(sorted({les["type"] for les in case["lesions"]}))
        assert (label >= 2).sum() == sum(les["n_voxels"] for les in case["lesions"])
        for les in case["lesions"]:
            # world centre = origin + index * spacing, in ITK (x, y, z) order
            z, y, x = les["centre_voxel_zyx"]
            assert les["centre_world_xyz_mm"] == pytest.approx([-100 + 4 * x, 12.5 + 4 * y, -30 + 7 * z], abs=0.05)


def test_healthy_fraction_respected(written):
    cases = json.loads((written / "cases.json").read_text())["cases"]
    train = [c for c in cases if c["split"] == "train"]
    test = [c for c in cases if c["split"] == "test"]
    assert sum(c["n_lesions"] == 0 for c in train) == round(0.34 * 6) == 2
    assert sum(c["n_lesions"] == 0 for c in test) == round(0.34 * 2) == 1


def test_bit_identical_whatever_the_process_count(written, tmp_path):
    again = make_phantom_dataset(990, 6, n_test=2, seed=4, origin=ORIGIN, healthy_fraction=0.34, out_dir=tmp_path,
                                 num_processes=1, quiet=True, **SMALL)
    comparison = filecmp.dircmp(written, again)
    assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        names = sorted(p.name for p in (written / sub).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(written / sub, again / sub, names, shallow=False)
        assert match == names and not mismatch and not errors
    for name in ("dataset.json", "cases.json", "patients.csv"):
        assert filecmp.cmp(written / name, again / name, shallow=False)


def test_case_prefix_renames_cases_but_keeps_images(written, tmp_path):
    extra = make_phantom_dataset(991, 6, n_test=2, seed=4, origin=ORIGIN, healthy_fraction=0.34, out_dir=tmp_path,
                                 num_processes=1, quiet=True, case_prefix="extra", **SMALL)
    assert sorted(p.name for p in (extra / "imagesTr").iterdir()) == [f"extra_{i:04d}_0000.nii.gz" for i in range(6)]
    assert sorted(p.name for p in (extra / "labelsTs").iterdir()) == ["extra_0006.nii.gz", "extra_0007.nii.gz"]
    cases = json.loads((extra / "cases.json").read_text())
    plain = json.loads((written / "cases.json").read_text())
    assert [c["case_id"] for c in cases["cases"]] == [f"extra_{i:04d}" for i in range(8)]
    assert [r["case_id"] for r in csv.DictReader((extra / "patients.csv").open())] == [f"extra_{i:04d}" for i in range(8)]
    assert cases["generator"]["case_prefix"] == "extra" and plain["generator"]["case_prefix"] == "case"
    assert json.loads((extra / "dataset.json").read_text())["phantom"]["case_prefix"] == "extra"
    assert json.loads((written / "dataset.json").read_text())["phantom"]["case_prefix"] == "case"
    for mine, theirs in zip(cases["cases"], plain["cases"]):
        # same seed and index: identical content, only the names differ
        assert mine["image"] == theirs["image"].replace("case_", "extra_")
        assert mine["label"] == theirs["label"].replace("case_", "extra_")
        strip = ("case_id", "image", "label")
        assert {k: v for k, v in mine.items() if k not in strip} == {k: v for k, v in theirs.items() if k not in strip}
        for key in ("image", "label"):
            a, b = sitk.ReadImage(str(extra / mine[key])), sitk.ReadImage(str(written / theirs[key]))
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
            assert a.GetPixelID() == b.GetPixelID() and a.GetOrigin() == b.GetOrigin()
            assert a.GetSpacing() == b.GetSpacing()


@pytest.mark.parametrize("prefix", ["a_b", "", "x/y", "a" * 33, "caf\u00e9", " case", "case\n", None, 7])
def test_bad_case_prefix(tmp_path, prefix):
    with pytest.raises(ValueError) as info:
        make_phantom_dataset(990, 2, out_dir=tmp_path, quiet=True, case_prefix=prefix, **SMALL)
    message = str(info.value)
    assert message.startswith("case prefix must be 1 to 32 ASCII letters or digits") and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_longest_case_prefix_accepted():
    assert dataset_module.check_case_prefix("A1" * 16) == "A1" * 16


def test_other_seed_differs(written, tmp_path):
    other = make_phantom_dataset(990, 1, n_test=0, seed=5, origin=ORIGIN, out_dir=tmp_path, num_processes=1,
                                 quiet=True, **SMALL)
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(written / "imagesTr/case_0000_0000.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(other / "imagesTr/case_0000_0000.nii.gz")))
    assert not np.array_equal(a, b)


def test_lesion_subset_renumbered(tmp_path):
    assert phantom_labels(["cyst", "hcc"]) == {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}
    folder = make_phantom_dataset(7, 4, n_test=0, lesion_types=["cyst", "metastasis"], healthy_fraction=0.0,
                                  out_dir=tmp_path, num_processes=1, quiet=True, **SMALL)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "metastasis": 2, "cyst": 3}
    cases = json.loads((folder / "cases.json").read_text())["cases"]
    assert {les["type"] for c in cases for les in c["lesions"]} == {"cyst", "metastasis"}
    for c in cases:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / c["label"])))
        assert label.max() <= 3


def test_out_dir_defaults_to_nnunet_raw(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    folder = make_phantom_dataset(13, 1, n_test=0, num_processes=1, quiet=True, **SMALL)
    assert folder == tmp_path / "Dataset013_LiverPhantom" and (folder / "dataset.json").is_file()


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_train=0), "n_train must be an integer >= 1"),
    (dict(n_test=-1), "n_test must be an integer >= 0"),
    (dict(lesion_types=["hcc", "fnh"]), "unknown lesion type(s) ['fnh']"),
    (dict(lesion_types=[]), "select at least one lesion type"),
    (dict(shape=(4, 16, 16)), "too small for a liver"),
    (dict(shape=(32, 96, 96), spacing=(1.0, 1.0, 1.0)), "too small for a liver"),
    (dict(spacing=(5.0, 0.0, 3.0)), "spacing must be positive"),
    (dict(healthy_fraction=1.5), "healthy fraction must be between 0 and 1"),
    (dict(dataset_id=0), "dataset id must be an integer from 1 to 999"),
    (dict(num_processes=0), "num_processes must be an integer >= 1"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    args = dict(dataset_id=990, n_train=2, out_dir=tmp_path, quiet=True)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        make_phantom_dataset(args.pop("dataset_id"), args.pop("n_train"), **args)
    assert message in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_no_output_folder(monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ValueError, match="no output folder"):
        make_phantom_dataset(990, 2, quiet=True)


def test_existing_dataset_and_id_clash(tmp_path):
    folder = make_phantom_dataset(21, 1, n_test=0, out_dir=tmp_path, num_processes=1, quiet=True, **SMALL)
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        make_phantom_dataset(21, 1, n_test=0, out_dir=tmp_path, num_processes=1, quiet=True, **SMALL)
    (folder / "marker.txt").write_text("old")
    make_phantom_dataset(21, 2, n_test=0, out_dir=tmp_path, num_processes=1, quiet=True, overwrite=True, **SMALL)
    assert not (folder / "marker.txt").exists()
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    (tmp_path / "Dataset022_Other").mkdir()
    with pytest.raises(ValueError, match="already uses dataset id 22"):
        make_phantom_dataset(22, 1, n_test=0, out_dir=tmp_path, quiet=True, **SMALL)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset_module, "_write_metadata", fail)
    with pytest.raises(KeyboardInterrupt):
        make_phantom_dataset(30, 2, n_test=0, out_dir=tmp_path, num_processes=1, quiet=True, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_old_dataset(tmp_path, monkeypatch):
    folder = make_phantom_dataset(31, 1, n_test=0, out_dir=tmp_path, num_processes=1, quiet=True, **SMALL)
    before = (folder / "cases.json").read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dataset_module, "_write_metadata", fail)
    with pytest.raises(RuntimeError):
        make_phantom_dataset(31, 2, n_test=0, out_dir=tmp_path, num_processes=1, quiet=True, overwrite=True, **SMALL)
    assert (folder / "cases.json").read_bytes() == before
    assert [p.name for p in Path(tmp_path).iterdir()] == [folder.name]


@pytest.mark.parametrize("value", [0.5, 6.0, float("nan")])
def test_bad_conspicuity(tmp_path, value):
    with pytest.raises(ValueError, match="conspicuity must be between 1"):
        make_phantom_dataset(990, 2, out_dir=tmp_path, quiet=True, conspicuity=value)
    assert list(tmp_path.iterdir()) == []


def test_conspicuity_recorded(tmp_path):
    folder = make_phantom_dataset(14, 1, n_test=0, num_processes=1, quiet=True, out_dir=tmp_path, conspicuity=2.0,
                                  **SMALL)
    cases = json.loads((folder / "cases.json").read_text())
    assert cases["generator"]["conspicuity"] == 2.0
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["phantom"]["conspicuity"] == 2.0
    assert dataset_json["release"] == "1.1"  # the release whose amplified lesions keep their intensity order
