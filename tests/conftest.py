"""Shared fixtures: a tiny liver-lesion dataset and a tiny nnU-Net model trained on it with the real commands.

``tiny_trained_model`` (session scope) builds ``Dataset901_TinyLiver`` (8 cases, 24 x 64 x 64 voxels,
spacing 4 x 1.5 x 1.5 mm (z, y, x): a -50 HU body, a ~60 HU liver ellipsoid with 1-2 lesion spheres, HCC
~30 HU and cyst ~5 HU; labels background / liver / hcc / cyst), writes the lesion schema with
``nnunet_plus_configure``, runs ``nnUNetv2_plan_and_preprocess`` and trains
``nnUNetTrainerPLUS_cpuTiny_2epochs`` on folds 0 and 1 with ``nnUNetv2_train ... -device cpu`` (subprocesses
with nnUNet_raw / nnUNet_preprocessed / nnUNet_results in a temp folder). About a minute on 2 CPU cores.

Set ``NNUNET_PLUS_TINY_MODEL_DIR=/some/folder`` to keep the trained model between pytest runs (it is reused
when complete, built there otherwise).

``tiny_model_env`` (function scope) points the nnU-Net environment variables of the test process at it.
``make_tiny_case(seed)`` returns ``(image (Z, Y, X) float32 HU, labels (Z, Y, X) uint8)`` of the same kind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

TINY_DATASET_ID = 901
TINY_DATASET_NAME = "Dataset901_TinyLiver"
TINY_SHAPE = (24, 64, 64)  # z, y, x
TINY_SPACING_XYZ = (1.5, 1.5, 4.0)
TINY_LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}
TINY_TRAINER = "nnUNetTrainerPLUS_cpuTiny_2epochs"
TINY_FOLDS = (0, 1)
TINY_NUM_CASES = 8


@dataclass(frozen=True)
class TinyModel:
    root: Path
    env: dict
    dataset_id: int
    dataset_name: str
    configuration: str
    trainer: str
    plans: str
    folds: tuple
    raw_folder: Path

    @property
    def model_folder(self) -> Path:
        return Path(self.env["nnUNet_results"]) / self.dataset_name / \
            f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def images_folder(self) -> Path:
        return self.raw_folder / "imagesTr"

    @property
    def labels_folder(self) -> Path:
        return self.raw_folder / "labelsTr"


def tiny_case(seed: int, shape=TINY_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A phantom-like CT (HU, float32) and its labels (uint8), (Z, Y, X)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    zc, yc, xc = [s / 2 for s in shape]
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = ((y - yc) / (0.45 * shape[1])) ** 2 + ((x - xc) / (0.47 * shape[2])) ** 2 <= 1
    image[body] = -50.0
    labels = np.zeros(shape, dtype=np.uint8)
    lc = (zc + rng.uniform(-1, 1), yc + rng.uniform(-3, 3), xc + rng.uniform(-3, 3))
    radii = (0.38 * shape[0], 0.32 * shape[1], 0.34 * shape[2])
    liver = ((z - lc[0]) / radii[0]) ** 2 + ((y - lc[1]) / radii[1]) ** 2 + ((x - lc[2]) / radii[2]) ** 2 <= 1
    image[liver] = 60.0
    labels[liver] = TINY_LABELS["liver"]
    kinds = ["hcc", "cyst"] if seed % 2 == 0 else ["cyst", "hcc"]
    for k, kind in enumerate(kinds[: 1 + seed % 2]):
        r = rng.uniform(4.0, 6.5)  # in-plane voxels (1.5 mm)
        offset = (-1) ** k * rng.uniform(5, 9)
        centre = (lc[0] + rng.uniform(-1, 1), lc[1] + offset, lc[2] + rng.uniform(-6, 6))
        sphere = ((z - centre[0]) * 4.0) ** 2 + ((y - centre[1]) * 1.5) ** 2 + ((x - centre[2]) * 1.5) ** 2 \
            <= (1.5 * r) ** 2
        sphere &= liver
        image[sphere] = 30.0 if kind == "hcc" else 5.0
        labels[sphere] = TINY_LABELS[kind]
    image += rng.normal(0.0, 8.0, size=shape).astype(np.float32)
    return image, labels


def write_nifti(array: np.ndarray, path: Path, *, spacing=TINY_SPACING_XYZ, origin=(0.0, 0.0, 0.0),
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def _make_dataset(raw: Path) -> Path:
    folder = raw / TINY_DATASET_NAME
    for i in range(TINY_NUM_CASES):
        image, labels = tiny_case(i)
        write_nifti(image.astype(np.int16), folder / "imagesTr" / f"tiny_{i:03d}_0000.nii.gz")
        write_nifti(labels, folder / "labelsTr" / f"tiny_{i:03d}.nii.gz")
    dataset_json = {"channel_names": {"0": "CT"}, "labels": TINY_LABELS, "numTraining": TINY_NUM_CASES,
                    "file_ending": ".nii.gz", "name": "TinyLiver"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    from nnunet_plus.schema_cli import main as configure

    if configure(["--dataset-json", str(folder / "dataset.json")]) != 0:
        raise RuntimeError("nnunet_plus_configure failed on the tiny dataset")
    return folder


def _run(command: list[str], env: dict, log: Path) -> None:
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(command)}\n")
        fh.flush()
        done = subprocess.run(command, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}); end of {log}:\n{tail}")


def _build_model(root: Path) -> TinyModel:
    from nnunet_plus.paths import trainers_path

    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1",
           "nnUNet_extTrainer": trainers_path(), "OMP_NUM_THREADS": "1", "nnUNet_compile": "false"}
    model = TinyModel(root, {k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                                 "nnUNet_extTrainer")},
                      TINY_DATASET_ID, TINY_DATASET_NAME, "3d_fullres", TINY_TRAINER, "nnUNetPlans", TINY_FOLDS,
                      root / "raw" / TINY_DATASET_NAME)
    if all((model.model_folder / f"fold_{f}" / "checkpoint_final.pth").is_file() for f in TINY_FOLDS):
        return model
    root.mkdir(parents=True, exist_ok=True)
    if not (model.raw_folder / "dataset.json").is_file():
        _make_dataset(root / "raw")
    bin_dir = Path(sys.executable).parent
    log = root / "build.log"
    _run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(TINY_DATASET_ID), "-c", "3d_fullres",
          "-np", "1", "--verify_dataset_integrity"], env, log)
    for fold in TINY_FOLDS:
        _run([str(bin_dir / "nnUNetv2_train"), str(TINY_DATASET_ID), "3d_fullres", str(fold), "-tr", TINY_TRAINER,
              "-device", "cpu"], env, log)
    return model


@pytest.fixture(scope="session")
def tiny_trained_model(tmp_path_factory) -> TinyModel:
    """The tiny dataset + a 2-fold nnUNetTrainerPLUS_cpuTiny_2epochs model (see the module docstring)."""
    keep = os.environ.get("NNUNET_PLUS_TINY_MODEL_DIR")
    return _build_model(Path(keep) if keep else tmp_path_factory.mktemp("tiny_nnunet"))


@pytest.fixture
def tiny_model_env(tiny_trained_model, monkeypatch) -> TinyModel:
    """``tiny_trained_model`` with the nnU-Net environment variables of this process pointing at it."""
    for key, value in tiny_trained_model.env.items():
        monkeypatch.setenv(key, value)
    return tiny_trained_model


@pytest.fixture(scope="session")
def make_tiny_case():
    """``make_tiny_case(seed, shape=(24, 64, 64)) -> (image HU float32, labels uint8)``, (Z, Y, X)."""
    return tiny_case
