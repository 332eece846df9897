"""Helpers for the reliability tests: a small CT + label map on disk, a plug-and-play run without nnU-Net, and
fault injection (a file-size limit in a subprocess, a truncating SimpleITK writer, a truncated copy)."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

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
    """``cohort.case(name, folder, seg_folder)`` writes ``<name>.nii.gz`` CT + label map (8 x 32 x 32 voxels);
    ``cohort.run`` is :func:`from_segmentation`, ``cohort.write`` :func:`write_nifti`."""
    image, labels = make_tiny_case(3, shape=(8, 32, 32))

    def case(name: str, images: Path, segmentations: Path) -> tuple[Path, Path]:
        return (write_nifti(image.astype(np.int16), images / f"{name}.nii.gz"),
                write_nifti(labels, segmentations / f"{name}.nii.gz"))
    return SimpleNamespace(case=case, root=tmp_path, run=from_segmentation, write=write_nifti, schema=SCHEMA)


def run_with_file_size_limit(code: str, max_file_bytes: int, *, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in ``cwd`` where no file may grow past ``max_file_bytes`` (RLIMIT_FSIZE, SIGXFSZ
    ignored): a write past the limit then fails with EFBIG, the way a write to a full disk fails with ENOSPC."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-c", code], cwd=cwd, preexec_fn=limit, capture_output=True, text=True,
                          timeout=300)


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its bytes (an interrupted copy or download) and return it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def faults(monkeypatch) -> Iterator[SimpleNamespace]:
    """Fault injection: ``faults.truncate(path, keep=0.5)``, ``faults.file_size_limit(code, max_bytes, cwd=...)``
    (:func:`run_with_file_size_limit`), ``faults.truncating_writer()``, which makes ``sitk.WriteImage``
    behave as on a full disk: it writes half the file and returns normally; ``faults.immutable(path)``: the
    immutable flag (``chattr +i``, root only; the test is skipped where it is refused), ``faults.read_only(path)``:
    mode 0555 / 0444, plus the immutable flag for root (who writes through any mode)."""
    write = sitk.WriteImage
    frozen: list[Path] = []

    def half_written(image, path, *args, **kwargs):
        write(image, path, *args, **kwargs)
        truncate(Path(path))

    def immutable(path: Path) -> Path:
        if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i (the immutable flag) is not permitted here")
        frozen.append(path)
        return path

    def read_only(path: Path) -> Path:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return immutable(path) if os.geteuid() == 0 else path  # root writes through any mode

    yield SimpleNamespace(truncate=truncate, file_size_limit=run_with_file_size_limit, read_only=read_only,
                          immutable=immutable,
                          truncating_writer=lambda: monkeypatch.setattr(sitk, "WriteImage", half_written))
    for path in frozen:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def model_grid() -> SimpleNamespace:
    """``model_grid.predictor``: what :meth:`PLUSPredictor.check_resampling` reads of a loaded model (target
    spacing 4 x 1.5 x 1.5 mm, z-y-x); ``model_grid.geometry(spacing_xyz)``: a 16 x 16 x 8 (x, y, z) image."""
    from nnunet_plus.predict.inputs import Geometry

    predictor = SimpleNamespace(nnunet=SimpleNamespace(
        plans_manager=SimpleNamespace(transpose_forward=[0, 1, 2]),
        configuration_manager=SimpleNamespace(spacing=[4.0, 1.5, 1.5])))
    return SimpleNamespace(predictor=predictor, geometry=lambda spacing_xyz: Geometry(
        (16, 16, 8), tuple(spacing_xyz), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))
