"""Helpers for the reliability tests: a small CT + label map on disk, a plug-and-play run without nnU-Net, and
fault injection (a file-size limit in a subprocess, a truncating SimpleITK writer, a truncated copy, SIGKILL of a
command at a chosen point: :func:`kill_when`, then :func:`assert_complete_files` on what it left)."""
from __future__ import annotations

import csv
import importlib.util
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

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
    from nnunet_plus.refine import CaseRefiner

    return run_plug_and_play(source, output, mode="segmentation", refiner=CaseRefiner(SCHEMA), images_folder=images,
                             num_processes=0, progress=False, **options)


class Cohort:
    """A tiny cohort in ``root``: :meth:`case` writes one case; ``run`` is :func:`from_segmentation`, ``write``
    :func:`write_nifti`, ``schema`` the tests' lesion schema."""

    run = staticmethod(from_segmentation)
    write = staticmethod(write_nifti)
    schema = SCHEMA

    def __init__(self, root: Path, image: np.ndarray, labels: np.ndarray) -> None:
        self.root, self._image, self._labels = root, image, labels

    def case(self, name: str, images: Path, segmentations: Path) -> tuple[Path, Path]:
        """``<name>.nii.gz`` CT in ``images`` and label map in ``segmentations`` (8 x 32 x 32 voxels)."""
        return (write_nifti(self._image.astype(np.int16), images / f"{name}.nii.gz"),
                write_nifti(self._labels, segmentations / f"{name}.nii.gz"))


@pytest.fixture
def cohort(tmp_path, make_tiny_case) -> Cohort:
    """:class:`Cohort` in the test's tmp_path."""
    return Cohort(tmp_path, *make_tiny_case(3, shape=(8, 32, 32)))


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


class Faults:
    """Fault injection: :meth:`truncate`, :meth:`file_size_limit` (:func:`run_with_file_size_limit`),
    :meth:`truncating_writer`, :meth:`immutable`, :meth:`read_only`; the immutable flags are lifted by the fixture."""

    truncate = staticmethod(truncate)
    file_size_limit = staticmethod(run_with_file_size_limit)

    def __init__(self, monkeypatch) -> None:
        self._monkeypatch = monkeypatch
        self.frozen: list[Path] = []

    def truncating_writer(self) -> None:
        """Make ``sitk.WriteImage`` behave as on a full disk: it writes half the file and returns normally."""
        write = sitk.WriteImage

        def half_written(image, path, *args, **kwargs):
            write(image, path, *args, **kwargs)
            truncate(Path(path))
        self._monkeypatch.setattr(sitk, "WriteImage", half_written)

    def immutable(self, path: Path) -> Path:
        """The immutable flag (``chattr +i``, root only; the test is skipped where it is refused)."""
        if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i (the immutable flag) is not permitted here")
        self.frozen.append(path)
        return path

    def read_only(self, path: Path) -> Path:
        """Mode 0555 / 0444, plus the immutable flag for root (who writes through any mode)."""
        path.chmod(0o555 if path.is_dir() else 0o444)
        return self.immutable(path) if os.geteuid() == 0 else path


@pytest.fixture
def faults(monkeypatch) -> Iterator[Faults]:
    """:class:`Faults`; every file it made immutable is made writable again afterwards."""
    injected = Faults(monkeypatch)
    yield injected
    for path in injected.frozen:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def model_grid() -> SimpleNamespace:
    """``model_grid.predictor``: what :meth:`PLUSPredictor.check_resampling` reads of a loaded model (target
    spacing 4 x 1.5 x 1.5 mm, z-y-x); ``model_grid.geometry(spacing_xyz)``: a 16 x 16 x 8 (x, y, z) image."""
    from nnunet_plus.files.image_io import Geometry

    predictor = SimpleNamespace(nnunet=SimpleNamespace(
        plans_manager=SimpleNamespace(transpose_forward=[0, 1, 2]),
        configuration_manager=SimpleNamespace(spacing=[4.0, 1.5, 1.5])))
    return SimpleNamespace(predictor=predictor, geometry=lambda spacing_xyz: Geometry(
        (16, 16, 8), tuple(spacing_xyz), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))


# ---- kill -9 and resume -------------------------------------------------------------------------------------------
def kill_when(command: list[str], log: Path, when: Callable[[], bool], *, delay: float = 0.0, env: dict | None = None,
              group: bool = True, timeout: float = 180.0) -> str:
    """Start ``command`` in its own session (stdout + stderr into ``log``), wait until ``when()`` is true, sleep
    ``delay`` seconds, then SIGKILL it: its whole process group (``group``, as ``kill -9 -PGID``, a batch system or a
    closed terminal do) or the process alone. Returns its output. Fails the test when the command ends by itself
    before the kill (the kill point was never reached) or ``when()`` stays false for ``timeout`` seconds."""
    with open(log, "wb") as fh:
        process = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not when():
            if process.poll() is not None:
                pytest.fail(f"{' '.join(command)} ended (exit {process.returncode}) before the kill point:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the kill point of {' '.join(command)} was not reached in {timeout} s")
            time.sleep(0.002)
        time.sleep(delay)
        (os.killpg if group else os.kill)(process.pid, signal.SIGKILL)
        code = process.wait(timeout=60)
        assert code == -signal.SIGKILL, f"{' '.join(command)} ended by itself (exit {code}) before the kill " \
                                        f"{delay:.3f} s after the kill point; shorten the delay"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return log.read_text(errors="replace")


def assert_complete_files(folder: Path) -> list[Path]:
    """Assert that every file under a final name in ``folder`` (recursively; names starting with "." are temp files
    and staging folders) is complete: :func:`~nnunet_plus.files.integrity.check_complete` by type (gzip / NIfTI, JSON,
    PNG, npz), images read back with :func:`nnunet_plus.files.image_io.read_image`, CSV rows as long as the header,
    ``.pth`` files load as PLUS classifier checkpoints. Returns the hidden entries (what a kill left behind)."""
    from nnunet_plus.files.image_io import read_image
    from nnunet_plus.files.integrity import check_complete

    hidden = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            if path.name.startswith("."):
                hidden.append(path)
            continue
        if not path.is_file():
            continue
        check_complete(path)
        name = path.name.lower()
        if name.endswith((".nii.gz", ".nii", ".mha", ".nrrd")):
            read_image(path)
        elif name.endswith(".csv"):
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows and all(len(row) == len(rows[0]) for row in rows), f"{path} is cut short"
        elif name.endswith(".pth"):
            from nnunet_plus.classifier.checkpoint import load_checkpoint

            load_checkpoint(path)
    return hidden


def _classifier_project_module():
    """tests/classifier/classifier_project.py (the classifier tests' synthetic project writer), loaded by path:
    that folder is not on sys.path while these tests run."""
    path = Path(__file__).resolve().parents[1] / "classifier" / "classifier_project.py"
    spec = importlib.util.spec_from_file_location("nnunet_plus_tests_classifier_project", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def classifier_project(root: Path, *, build_bank: bool = True):
    """The classifier tests' synthetic project (``Dataset998_ClsTrainer``, 6 cases, a 2-fold split) under ``root``;
    ``project.build_bank()`` builds its candidate bank into ``project.bank`` (the settings of the ``cls_project``
    fixture), which ``build_bank`` does right away."""
    from nnunet_plus.classifier.bank import build_candidate_bank
    from nnunet_plus.classifier.bank_settings import BankSettings

    fixtures = _classifier_project_module()
    project = fixtures.write_project(root)
    project.bank = project.classifier / "candidate_bank"
    project.build_bank = lambda: build_candidate_bank(
        project.raw, [project.model / f"fold_{k}" / "validation" for k in (0, 1)], project.bank, fixtures.CLS_SCHEMA,
        target_spacing=fixtures.CLS_SPACING, settings=BankSettings(roi_shape=(16, 32, 32), liver_shape=(16, 32, 32)),
        num_processes=1, quiet=True)
    if build_bank:
        project.build_bank()
    return project


@pytest.fixture
def classifier_files():
    """``classifier_files(root, build_bank=True)``: :func:`classifier_project`."""
    return classifier_project


class Sigkill:
    """Kill -9 and resume: :meth:`run` (:func:`kill_when`), :meth:`assert_complete` (:func:`assert_complete_files`),
    and random kill points drawn with ``seed`` (:meth:`uniform`, :meth:`randint`); ``tag`` names the seed for
    assertion messages (set ``NNUNET_PLUS_KILL_SEED`` to replay one)."""

    run = staticmethod(kill_when)
    assert_complete = staticmethod(assert_complete_files)

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.tag = f"NNUNET_PLUS_KILL_SEED={seed}"

    def uniform(self, a: float, b: float) -> float:
        return self._rng.uniform(a, b)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b)


@pytest.fixture
def sigkill() -> Sigkill:
    """:class:`Sigkill` with the seed of ``NNUNET_PLUS_KILL_SEED``, or a random one."""
    return Sigkill(int(os.environ.get("NNUNET_PLUS_KILL_SEED") or random.randrange(2 ** 32)))
