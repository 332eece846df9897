"""Plug-and-play: --from-probabilities (nnU-Net .npz + .pkl, per-class images) and --from-segmentation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.postprocessing.seg2det import seg2det

from helpers import write_image

CASES = ("dicom_case", "nn_case", "plain_case")


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _lesions(path):
    return json.loads(path.read_text())["lesions"]


def test_from_nnunet_probabilities_reproduces_the_prediction(cli, full_run, mixed_inputs, tmp_path):
    # full_run holds nnU-Net's files (.npz + .pkl) beside our .nii.gz / .json: only the .npz files are read
    code, out, err = cli("--from-probabilities", str(full_run), "-i", str(mixed_inputs), "-o", str(tmp_path))
    assert code == 0, err
    assert "3 case(s) written" in out
    for case in CASES:
        np.testing.assert_array_equal(_array(tmp_path / f"{case}.nii.gz"), _array(full_run / f"{case}.nii.gz"))
        np.testing.assert_array_equal(_array(tmp_path / f"{case}_instances.nii.gz"),
                                      _array(full_run / f"{case}_instances.nii.gz"))
        assert _lesions(tmp_path / f"{case}.json") == _lesions(full_run / f"{case}.json")
    info = json.loads((tmp_path / "nnunet_plus_predict.json").read_text())
    assert info["mode"] == "from-probabilities"


def test_from_class_images_without_ct(cli, full_run, tmp_path):
    source = tmp_path / "probabilities"
    with np.load(full_run / "nn_case.npz") as data:
        probabilities = data["probabilities"]
    reference = sitk.ReadImage(str(full_run / "nn_case.nii.gz"))
    for c, channel in enumerate(probabilities):
        image = sitk.GetImageFromArray(channel)
        image.CopyInformation(reference)
        source.mkdir(exist_ok=True)
        sitk.WriteImage(image, str(source / f"nn_case_{c:04d}.nii.gz"))
    (source / "model_info.json").write_text("{}")  # another tool's side file: ignored
    code, _, err = cli("--from-probabilities", str(source), "-o", str(tmp_path / "out"))
    assert code == 0, err
    np.testing.assert_array_equal(_array(tmp_path / "out" / "nn_case.nii.gz"), _array(full_run / "nn_case.nii.gz"))
    lesions = _lesions(tmp_path / "out" / "nn_case.json")
    assert [r["probability"] for r in lesions] == pytest.approx(
        [r["probability"] for r in _lesions(full_run / "nn_case.json")], rel=1e-5)
    assert all(r["hu_mean"] is None for r in lesions)  # no CT given


def test_from_segmentation_uses_a_one_hot_prior(cli, tiny_model_env, tmp_path):
    source = tmp_path / "labels"
    source.mkdir()
    for case in ("tiny_001", "tiny_002"):
        shutil.copy(tiny_model_env.labels_folder / f"{case}.nii.gz", source / f"{case}.nii.gz")
    code, _, err = cli("--from-segmentation", str(source), "-i", str(tiny_model_env.images_folder), "-o",
                       str(tmp_path / "out"))
    assert code == 0, err
    for case in ("tiny_001", "tiny_002"):
        truth = _array(source / f"{case}.nii.gz")
        expected = seg2det(truth, [2, 3], spacing=(4.0, 1.5, 1.5))
        lesions = _lesions(tmp_path / "out" / f"{case}.json")
        assert [(r["label"], r["n_voxels"]) for r in lesions] == \
            [(r["label"], r["n_voxels"]) for r in expected.lesions]
        assert all(r["probability"] == 1.0 and r["hu_mean"] is not None for r in lesions)
        np.testing.assert_array_equal(_array(tmp_path / "out" / f"{case}.nii.gz"), truth)
        patient = json.loads((tmp_path / "out" / f"{case}.json").read_text())["patient"]
        present = {r["class"] for r in lesions}
        assert patient["livermax"] == {name: float(name in present) for name in ("hcc", "cyst")}


def test_plug_and_play_errors_name_the_file(cli, tiny_model_env, tmp_path):
    probabilities = tmp_path / "probabilities"
    grid = np.full((4, 6, 8, 8), 0.25, np.float32)
    for c in range(3):  # the dataset has 4 labels
        write_image(grid[c], probabilities / f"three_{c:04d}.nii.gz")
    for c in range(4):
        write_image(np.full((6, 8, 8), 2.0 * c - 1.0, np.float32), probabilities / f"logits_{c:04d}.nii.gz")
    code, _, err = cli("--from-probabilities", str(probabilities), "-o", str(tmp_path / "out"))
    assert code == 1
    assert "three: case 'three': wrong channel count" in err and "missing channel file(s) three_0003.*" in err
    assert "logits_0000.nii.gz: values range from -1.0 to 5.0" in err

    labels = tmp_path / "labels"
    write_image(np.full((6, 8, 8), 7, np.uint8), labels / "seven.nii.gz")
    write_image(np.zeros((6, 8, 8), np.uint8), labels / "no_image.nii.gz")
    images = tmp_path / "images"
    write_image(np.zeros((6, 8, 8), np.int16), images / "seven.nii.gz")
    code, _, err = cli("--from-segmentation", str(labels), "-i", str(images), "-o", str(tmp_path / "out2"))
    assert code == 1
    assert "seven.nii.gz: label values [7.0] are not labels of the dataset (0..3)" in err
    assert "no_image: case 'no_image': no image for it in" in err
