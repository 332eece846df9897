"""nnU-Net accepts a generated cohort: ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` passes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nnunet_plus.phantom.dataset import make_phantom_dataset


def _console_script(name: str) -> str:
    """The console script installed next to this interpreter (found first on PATH)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    assert found, f"{name} not found next to {sys.executable}; is nnunetv2 installed?"
    return found


def test_plan_and_preprocess_verifies_the_dataset(tmp_path, monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    folder = make_phantom_dataset(990, 3, n_test=1, shape=(16, 48, 48), spacing=(7.0, 4.0, 4.0), num_processes=1,
                                  quiet=True)
    assert folder.parent == tmp_path / "nnUNet_raw"
    env = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_n_proc_DA="1")
    result = subprocess.run(
        [_console_script("nnUNetv2_plan_and_preprocess"), "-d", "990", "-c", "3d_fullres",
         "--verify_dataset_integrity", "-np", "1", "-npfp", "1"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verify_dataset_integrity Done" in result.stdout
    preprocessed = tmp_path / "nnUNet_preprocessed" / "Dataset990_LiverPhantom"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [7.0, 4.0, 4.0]
    assert json.loads((preprocessed / "dataset.json").read_text())["plus"]["lesions"] == [
        "hcc", "icc", "metastasis", "hemangioma", "calcification", "cyst"]
    assert len(list((preprocessed / "nnUNetPlans_3d_fullres").glob("*.b2nd"))) >= 3
