"""Helpers for the reliability tests: a small CT + label map on disk, a plug-and-play run without nnU-Net."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.schema import build_schema

SCHEMA = build_schema({"background": 0, "liver": 1, "hcc": 2, "cyst": 3})


def write_nifti(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 4.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def from_segmentation(source: Path, output: Path, *, images: Path | None = None, **options):
    """``nnunet_plus_predict --from-segmentation source -o output [-i images] --no-classifier`` in-process."""
    from nnunet_plus.predict.plug_and_play import run_plug_and_play
    from nnunet_plus.predict.refine import CaseRefiner

    return run_plug_and_play(source, output, mode="segmentation", refiner=CaseRefiner(SCHEMA), images_folder=images,
                             num_processes=0, progress=False, **options)


@pytest.fixture
def cohort(tmp_path, make_tiny_case) -> SimpleNamespace:
    """``cohort.case(name, folder, seg_folder)`` writes ``<name>.nii.gz`` CT + label map (8 x 32 x 32 voxels)."""
    image, labels = make_tiny_case(3, shape=(8, 32, 32))

    def case(name: str, images: Path, segmentations: Path) -> tuple[Path, Path]:
        return (write_nifti(image.astype(np.int16), images / f"{name}.nii.gz"),
                write_nifti(labels, segmentations / f"{name}.nii.gz"))
    return SimpleNamespace(case=case, root=tmp_path, run=from_segmentation)
