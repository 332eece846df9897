"""Export -> install into an empty nnUNet_results -> predict gives what the original folders give (issue 15)."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from nnunet_plus.model_export import export_model, install_model


def _outputs(folder):
    """Label maps (arrays) and lesion tables of every case of a prediction folder."""
    maps = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}
    lesions = {p.name: json.loads(p.read_text())["lesions"] for p in sorted(folder.glob("*.json"))
               if "lesions" in json.loads(p.read_text())}
    return maps, lesions


def test_installed_model_predicts_like_the_original(cli, tiny_trained_model, full_run, mixed_inputs, tmp_path,
                                                    monkeypatch):
    zip_file = tmp_path / "model.zip"
    export_model(tiny_trained_model.dataset_id, tiny_trained_model.configuration, zip_file,
                 trainer=tiny_trained_model.trainer)
    installed = tmp_path / "installed_results"
    installed.mkdir()
    monkeypatch.setenv("nnUNet_results", str(installed))
    install_model(zip_file)
    out = tmp_path / "predicted"
    code, _, err = cli("-i", str(mixed_inputs), "-o", str(out), "--save_probabilities", "--overlays")
    assert code == 0, err
    original_maps, original_lesions = _outputs(full_run)
    maps, lesions = _outputs(out)
    assert original_maps and maps.keys() == original_maps.keys()
    for name, array in original_maps.items():
        np.testing.assert_array_equal(maps[name], array, err_msg=name)
    assert lesions == original_lesions
