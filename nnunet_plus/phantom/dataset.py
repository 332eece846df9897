"""Write a phantom cohort as an nnU-Net v2 raw dataset (atomically, in parallel, deterministically).

Layout of ``<out>/DatasetXXX_LiverPhantom/``::

    imagesTr/case_0000_0000.nii.gz   int16 HU, channel "CT"
    labelsTr/case_0000.nii.gz        uint8: 0 background, 1 liver, 2.. lesion types
    imagesTs/, labelsTs/             the test cases (numbered after the training cases)
    dataset.json                     nnU-Net keys + the "plus" lesion schema + the generator settings
    cases.json                       ground truth per case: liver condition, patient class, lesions, hard negatives
    patients.csv                     one row per case (the patient-level part of cases.json)

Default case: (Z, Y, X) = (32, 96, 96) voxels of (5.0, 3.5, 3.5) mm, i.e. a 160 x 336 x 336 mm liver-centred
abdomen (dome to below the liver tip) with clinical-like thick slices; ~0.3 M voxels, so that a tiny nnU-Net
trains on it on a CPU, while the smallest lesions (7 mm, two in-plane voxels) still show.

Geometry: identity direction (axial, LPS), spacing as asked, origin = the world position of voxel (0, 0, 0),
by default chosen so that the volume is centred on (0, 0, 0). The dataset is generated in a hidden temporary
folder next to the target and renamed into place at the end: an interrupted run never leaves a
``DatasetXXX_...`` folder behind.

Case ids are ``<case_prefix>_0000`` onwards, ``case_0000`` by default. A second cohort meant to be predicted
by models trained on the first (an "extra cohort") takes another prefix (``case_prefix="extra"`` or
``--case-prefix extra``) so that its ids never collide with the first cohort's; the prefix only names the cases
and never changes the random draws (same seed and index give the same image whatever the prefix).
"""
from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_plus.files.image_io import write_image
from nnunet_plus.phantom.anatomy import MIN_FOV_MM, MIN_SHAPE
from nnunet_plus.phantom.case import render_case
from nnunet_plus.phantom.cohort import CaseSpec, plan_cohort
from nnunet_plus.phantom.lesions import LESION_TYPES
from nnunet_plus.schema import SCHEMA_KEY, build_schema
from nnunet_plus.files.atomic import remove_stale_temp_files, replace_folder, write_json_atomic

logger = logging.getLogger(__name__)

DATASET_NAME = "LiverPhantom"
DEFAULT_SHAPE: tuple[int, int, int] = (32, 96, 96)
#: peak memory of rendering one case, per voxel (measured: ~124 bytes at the default shape)
BYTES_PER_VOXEL = 128
DEFAULT_SPACING: tuple[float, float, float] = (5.0, 3.5, 3.5)
#: Largest accepted ``conspicuity`` (lesion contrast x c, noise / c).
MAX_CONSPICUITY = 5.0
#: Default case-id prefix: cases are ``case_0000``, ``case_0001``, ...
DEFAULT_CASE_PREFIX = "case"
#: Longest accepted case-id prefix.
MAX_CASE_PREFIX_LENGTH = 32
_CASE_PREFIX = re.compile(f"[A-Za-z0-9]{{1,{MAX_CASE_PREFIX_LENGTH}}}")
PATIENT_COLUMNS = ("case_id", "split", "liver_condition", "patient_class", "patient_category", "n_lesions",
                   "lesion_types", "largest_diameter_mm", "total_lesion_volume_cm3", "liver_volume_cm3",
                   "spleen_volume_cm3", "ascites", "noise_sigma_hu")


def phantom_labels(lesion_types: Sequence[str] = LESION_TYPES) -> dict[str, int]:
    """nnU-Net labels: background 0, liver 1, then the selected lesion types in priority order."""
    selected = [k for k in LESION_TYPES if k in lesion_types]
    return {"background": 0, "liver": 1, **{k: i + 2 for i, k in enumerate(selected)}}


def default_origin(shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float]:
    """Origin (z, y, x) mm that centres the volume on (0, 0, 0)."""
    return tuple(-(n - 1) / 2.0 * s for n, s in zip(shape, spacing))


def check_case_prefix(case_prefix) -> str:
    """Return ``case_prefix`` if it is 1 to :data:`MAX_CASE_PREFIX_LENGTH` ASCII letters or digits, else raise
    ValueError (one line). No underscores or other characters, so that every id is unambiguously
    ``<prefix>_<4 digits>`` and safe in file names."""
    if not isinstance(case_prefix, str) or not _CASE_PREFIX.fullmatch(case_prefix):
        shown = repr(case_prefix)
        shown = shown if len(shown) <= 50 else shown[:47] + "..."
        raise ValueError(f"case prefix must be 1 to {MAX_CASE_PREFIX_LENGTH} ASCII letters or digits "
                         f"(e.g. 'extra'), got {shown}")
    return case_prefix


def _check_arguments(dataset_id, n_train, n_test, seed, shape, spacing, origin, healthy_fraction, lesion_types,
                     num_processes, conspicuity, case_prefix=DEFAULT_CASE_PREFIX) -> tuple:
    """Validate and normalise the arguments of :func:`make_phantom_dataset`; ValueError on bad input."""
    check_case_prefix(case_prefix)
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    for name, value, least in (("n_train", n_train, 1), ("n_test", n_test, 0), ("seed", seed, 0),
                               ("num_processes", num_processes, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if not 0.0 <= float(healthy_fraction) <= 1.0:
        raise ValueError(f"healthy fraction must be between 0 and 1, got {healthy_fraction!r}")
    if not np.isfinite(float(conspicuity)) or not 1.0 <= float(conspicuity) <= MAX_CONSPICUITY:
        raise ValueError(f"conspicuity must be between 1 (realistic) and {MAX_CONSPICUITY:g}, got {conspicuity!r}")
    if lesion_types is None:
        lesion_types = LESION_TYPES
    elif isinstance(lesion_types, str):
        lesion_types = [lesion_types]
    lesion_types = [str(k).lower() for k in lesion_types]
    unknown = [k for k in lesion_types if k not in LESION_TYPES]
    if unknown:
        raise ValueError(f"unknown lesion type(s) {unknown}; choose from {', '.join(LESION_TYPES)}")
    if not lesion_types:
        raise ValueError(f"select at least one lesion type from {', '.join(LESION_TYPES)}")
    if len(set(lesion_types)) != len(lesion_types):
        raise ValueError(f"lesion types listed twice: {lesion_types}")
    if len(shape) != 3 or len(spacing) != 3 or (origin is not None and len(origin) != 3):
        raise ValueError("shape, spacing and origin take three values each, in (z, y, x) order")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive (mm), got {spacing}")
    fov = tuple(n * s for n, s in zip(shape, spacing))
    if any(n < m for n, m in zip(shape, MIN_SHAPE)) or any(f < m for f, m in zip(fov, MIN_FOV_MM)):
        raise ValueError(
            f"shape {shape} with spacing {spacing} mm (field of view {fov[0]:g} x {fov[1]:g} x {fov[2]:g} mm) "
            f"is too small for a liver; need at least {MIN_SHAPE} voxels and "
            f"{MIN_FOV_MM[0]:g} x {MIN_FOV_MM[1]:g} x {MIN_FOV_MM[2]:g} mm (z, y, x)")
    needed, available = float(np.prod(shape, dtype=float)) * BYTES_PER_VOXEL, _physical_memory()
    if available and needed > available:
        raise ValueError(f"shape {shape} needs about {needed / 2 ** 30:.3g} GiB of memory per case, more than this "
                         f"machine's {available / 2 ** 30:.3g} GiB; choose a smaller --shape")
    origin = default_origin(shape, spacing) if origin is None else tuple(float(o) for o in origin)
    selected = tuple(k for k in LESION_TYPES if k in lesion_types)
    return shape, spacing, origin, float(healthy_fraction), selected


def _physical_memory() -> int:
    """Bytes of RAM of this machine (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _output_root(out_dir: str | os.PathLike | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("no output folder: pass out_dir (--out DIR) or set the nnUNet_raw environment variable")
    return Path(raw)


def write_nifti(array: np.ndarray, path: Path, spacing: Sequence[float], origin: Sequence[float]) -> None:
    """Write a (Z, Y, X) array as compressed NIfTI with ``spacing`` and ``origin`` given in (z, y, x) order
    (SimpleITK wants (x, y, z)) and an identity direction."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in origin[::-1]))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    write_image(image, path)


def _write_case(job: tuple) -> dict:
    """Render one case and write its image and label into ``folder`` (runs in a worker process)."""
    spec, shape, spacing, origin, labels, conspicuity, folder = job
    case = render_case(spec, shape=shape, spacing=spacing, origin=origin, labels=labels, conspicuity=conspicuity)
    suffix = "Tr" if spec.split == "train" else "Ts"
    image_path = Path(folder) / f"images{suffix}" / f"{spec.case_id}_0000.nii.gz"
    label_path = Path(folder) / f"labels{suffix}" / f"{spec.case_id}.nii.gz"
    write_nifti(case.image, image_path, spacing, origin)
    write_nifti(case.label, label_path, spacing, origin)
    record = dict(case.record)
    record["image"] = str(image_path.relative_to(folder))
    record["label"] = str(label_path.relative_to(folder))
    return record


def _patients_csv(records: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PATIENT_COLUMNS)
    for r in records:
        lesions = r["lesions"]
        writer.writerow([
            r["case_id"], r["split"], r["liver_condition"], r["patient_class"], r["patient_category"],
            r["n_lesions"], ";".join(sorted({les["type"] for les in lesions})),
            max((les["diameter_mm"] for les in lesions), default=0.0),
            round(sum(les["volume_cm3"] for les in lesions), 4), r["liver_volume_cm3"], r["spleen_volume_cm3"],
            int(r["ascites"]), r["noise_sigma_hu"],
        ])
    return out.getvalue()


def _existing_dataset(root: Path, dataset_id: int) -> list[Path]:
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(p for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []


def make_phantom_dataset(dataset_id: int, n_train: int, *, n_test: int = 20, seed: int = 0,
                         shape: Sequence[int] = DEFAULT_SHAPE, spacing: Sequence[float] = DEFAULT_SPACING,
                         origin: Sequence[float] | None = None, healthy_fraction: float = 0.3,
                         lesion_types: Sequence[str] | None = None, out_dir: str | os.PathLike | None = None,
                         overwrite: bool = False, num_processes: int | None = None, quiet: bool = False,
                         conspicuity: float = 1.0, case_prefix: str = DEFAULT_CASE_PREFIX) -> Path:
    """Generate a synthetic non-contrast liver CT cohort in nnU-Net raw format; return the dataset folder.

    Parameters
    ----------
    dataset_id : nnU-Net dataset id (1-999); the folder is ``DatasetXXX_LiverPhantom``.
    n_train, n_test : number of training (imagesTr/labelsTr) and test (imagesTs/labelsTs) cases.
    seed : cohort seed; the same arguments give bit-identical files, whatever ``num_processes``.
    shape : (Z, Y, X) voxels. spacing : (z, y, x) mm. origin : (z, y, x) mm world position of voxel
        (0, 0, 0); default centres the volume. The direction is always the identity (axial, LPS).
    healthy_fraction : share of lesion-free subjects, exactly ``round(healthy_fraction * n)`` per split.
    lesion_types : subset of ``hcc icc metastasis hemangioma calcification cyst`` (default: all); labels are
        numbered consecutively from 2 in that order.
    out_dir : parent folder; default ``$nnUNet_raw``.
    overwrite : replace an existing ``DatasetXXX_LiverPhantom`` folder.
    num_processes : worker processes (default: CPU count, at most 8). Workers are spawned: in a script,
        call this under ``if __name__ == "__main__":``.
    quiet : no progress bar.
    conspicuity : 1 (default) gives realistic, subtle NCCT lesions; c > 1 multiplies every non-calcified
        lesion's contrast against the liver by c and divides the CT noise by c (the demo's short CPU
        training learns lesions only then). Recorded in cases.json.
    case_prefix : case ids are ``f"{case_prefix}_{index:04d}"`` (default ``case_0000`` onwards); 1 to 32 ASCII
        letters or digits. Give a second cohort (e.g. an extra cohort predicted by models trained on the
        first) another prefix so that its case ids do not collide; the prefix never changes the images or
        labels. Recorded in dataset.json and cases.json.

    Raises ValueError (one-line message) on bad arguments, a missing output folder, an existing dataset
    folder without ``overwrite`` or another dataset with the same id.
    """
    num_processes = min(os.cpu_count() or 1, 8) if num_processes is None else num_processes
    shape, spacing, origin, healthy_fraction, selected = _check_arguments(
        dataset_id, n_train, n_test, seed, shape, spacing, origin, healthy_fraction, lesion_types, num_processes,
        conspicuity, case_prefix)
    root = _output_root(out_dir)
    target = _check_target(root, int(dataset_id), overwrite)
    labels = phantom_labels(selected)
    specs = plan_cohort(int(n_train), int(n_test), seed=int(seed), healthy_fraction=healthy_fraction,
                        lesion_types=selected, case_prefix=case_prefix)
    settings = dict(seed=int(seed), shape=list(shape), spacing=list(spacing), origin=list(origin),
                    healthy_fraction=healthy_fraction, lesion_types=list(selected), n_train=int(n_train),
                    n_test=int(n_test), conspicuity=float(conspicuity), case_prefix=case_prefix)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(root, staging_of=target.name)  # a killed run's staging folder
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        _make_subfolders(staging)
        records = _generate(specs, shape, spacing, origin, labels, float(conspicuity), staging,
                            int(num_processes), quiet)
        _write_metadata(staging, target.name, labels, records, settings)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d cases to %s", len(specs), target)
    return target


def _make_subfolders(staging: Path) -> None:
    """Open the staging folder to the usual 0755 (mkdtemp makes it 0700) and create the image / label folders."""
    staging.chmod(0o755)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (staging / sub).mkdir()


def _check_target(root: Path, dataset_id: int, overwrite: bool) -> Path:
    """The dataset folder ``root/DatasetXXX_LiverPhantom``; ValueError when another dataset has the id or the
    folder exists without ``overwrite``."""
    name = f"Dataset{dataset_id:03d}_{DATASET_NAME}"
    target = root / name
    others = [p for p in _existing_dataset(root, dataset_id) if p.name != name]
    if others:
        raise ValueError(f"{others[0]} already uses dataset id {dataset_id}; nnU-Net needs unique ids, "
                         "pick another id or remove that folder")
    if target.exists() and not overwrite:
        raise ValueError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    return target


def _generate(specs: list[CaseSpec], shape, spacing, origin, labels, conspicuity: float, folder: Path,
              num_processes: int, quiet: bool) -> list[dict]:
    jobs = [(spec, shape, spacing, origin, labels, conspicuity, str(folder)) for spec in specs]
    progress = dict(total=len(jobs), desc="phantom cases", unit="case", disable=quiet)
    if num_processes == 1 or len(jobs) == 1:
        return [_write_case(job) for job in tqdm(jobs, **progress)]
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        return list(tqdm(pool.imap(_write_case, jobs), **progress))


#: dataset.json "release" of the generated phantoms; 1.1: amplified hypodense lesions bend towards -50 HU
#: (:func:`~nnunet_plus.phantom.lesions.amplified_hu`) instead of being cut at -20 HU, so images at conspicuity
#: > 1 differ from 1.0
PHANTOM_RELEASE = "1.1"


def _write_metadata(folder: Path, name: str, labels: dict, records: list[dict], settings: dict) -> None:
    schema = build_schema(labels)
    dataset_json = {
        "name": name,
        "description": "Synthetic non-contrast liver CT phantoms (nnunet_plus.phantom): liver, lesion types "
                       "with NCCT appearance, liver conditions (normal, fatty, cirrhotic) and context rule.",
        "reference": "nnunet_plus", "licence": "CC0", "release": PHANTOM_RELEASE,
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": sum(r["split"] == "train" for r in records),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        SCHEMA_KEY: schema.to_block(),
        "phantom": settings,
    }
    write_json_atomic(folder / "dataset.json", dataset_json)
    write_json_atomic(folder / "cases.json", {"dataset": name, "labels": labels, "generator": settings,
                                               "cases": records})
    (folder / "patients.csv").write_text(_patients_csv(records))
    for path in ("dataset.json", "cases.json", "patients.csv"):
        (folder / path).chmod(0o644)

