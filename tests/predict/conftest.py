"""Helpers for the nnunet_plus_predict tests: image writers (NIfTI, NRRD, DICOM series) and CLI runs."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

#: a proper rotation (det +1) and an odd origin, to catch any geometry shortcut
ROTATED_DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
ODD_ORIGIN = (-123.456, 78.9012, -345.678)


def to_sitk(array: np.ndarray, *, spacing=(1.5, 1.5, 4.0), origin=(0.0, 0.0, 0.0),
            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if array.ndim != 3:  # 2D / 4D test images keep SimpleITK's default geometry
        return image
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    return image


def write_image(array: np.ndarray, path: Path, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk(array, **geometry), str(path), True)
    return path


def write_dicom_series(array: np.ndarray, folder: Path, *, spacing=(1.5, 1.5, 4.0), origin=(0.0, 0.0, 0.0),
                       series_uid: str = "1.2.826.0.1.3680043.2.1125.424242") -> Path:
    """One CT slice file per z (int16 HU, axial, identity orientation) with the tags GDCM needs."""
    folder.mkdir(parents=True, exist_ok=True)
    image = to_sitk(np.round(array).astype(np.int16), spacing=spacing, origin=origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0010|0010": "TEST^PATIENT",
                "0020|000d": series_uid + ".0", "0020|000e": series_uid, "0020|0052": series_uid + ".9",
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": "\\".join(f"{p:.6f}" for p in position), "0020|0013": str(z + 1),
                "0018|0050": str(spacing[2]), "0008|0018": f"{series_uid}.{z + 1}"}
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid.rsplit('.', 1)[-1]}_{z:03d}.dcm"))
        writer.Execute(slice_)
    return folder


@pytest.fixture(scope="session")
def writers() -> SimpleNamespace:
    """The writer helpers (test files cannot import each other): ``writers.image``, ``writers.dicom``, ..."""
    return SimpleNamespace(image=write_image, dicom=write_dicom_series, to_sitk=to_sitk,
                           rotated_direction=ROTATED_DIRECTION, odd_origin=ODD_ORIGIN)


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
