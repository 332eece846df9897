"""Fixtures of the nnunet_plus_predict tests: inputs and CLI runs on the tiny model (writers: tests/helpers.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import ODD_ORIGIN, ROTATED_DIRECTION, write_dicom_series, write_image
import SimpleITK as sitk

def common_flags(model) -> list[str]:
    """CLI flags every test run uses: the tiny model, CPU, no TTA, one worker thread each, no classifier."""
    return ["-d", str(model.dataset_id), "-c", model.configuration, "-tr", model.trainer, "-device", "cpu",
            "--disable_tta", "--disable_progress_bar", "-npp", "1", "-nps", "1", "--no-classifier"]


@pytest.fixture(scope="session")
def mixed_inputs(tmp_path_factory, make_tiny_case) -> Path:
    """Cases nn_case (nnU-Net naming, rotated direction, odd origin), plain_case (.mha), dicom_case (series)."""
    folder = tmp_path_factory.mktemp("mixed_inputs")
    write_image(make_tiny_case(20)[0].astype(np.int16), folder / "nn_case_0000.nii.gz", origin=ODD_ORIGIN,
                direction=ROTATED_DIRECTION)
    write_image(make_tiny_case(21)[0], folder / "plain_case.mha", origin=(12.3456789, -98.7654321, 5.5))
    write_dicom_series(make_tiny_case(22)[0], folder / "dicom_case", origin=(-150.25, -160.5, 1000.0))
    return folder


@pytest.fixture(scope="session")
def full_run(tiny_trained_model, mixed_inputs, tmp_path_factory) -> Path:
    """One complete run on ``mixed_inputs`` (--save_probabilities, --overlays), shared by read-only tests."""
    from nnunet_plus.predict.cli import main

    out = tmp_path_factory.mktemp("full_run")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in tiny_trained_model.env.items():
            mp.setenv(key, value)
        code = main(["-i", str(mixed_inputs), "-o", str(out), *common_flags(tiny_trained_model),
                     "--save_probabilities", "--overlays"])
    assert code == 0
    return out


@pytest.fixture
def cli(tiny_model_env, capsys):
    """Run nnunet_plus_predict in-process with :func:`common_flags` first (later flags override them):
    ``code, stdout, stderr = cli("-i", ..., "-o", ...)``."""
    from nnunet_plus.predict.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*common_flags(tiny_model_env), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run
