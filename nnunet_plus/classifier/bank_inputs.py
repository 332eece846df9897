"""The input files of the candidate bank: where each case's raw images, label and softmax export are, and
reading one case from them.

A case of the raw dataset has its images and label in nnU-Net's naming (``imagesTr/<case>_<cccc><ending>``,
``labelsTr/<case><ending>``) or in dataset.json's ``"dataset"`` list; an extra case (``extra_dir``) uses
nnU-Net's naming in its own folder. Its softmax export is ``<case>.npz`` (key ``probabilities``, read by
:func:`nnunet_plus.files.safe_load.load_softmax`) with ``<case>.pkl`` (nnU-Net's properties) beside it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.classifier.bank_io import CandidateBankError
from nnunet_plus.files.integrity import check_complete
from nnunet_plus.files.safe_load import load_properties, load_softmax

__all__ = ["CaseInputs", "bank_case_files", "case_files", "extra_case_files", "read_case_inputs", "softmax_files"]


def case_files(raw_dataset_dir: Path, dataset_json: Mapping, case_id: str) -> tuple[list[Path], Path]:
    """Image files (one per channel) and label file of a case, as nnU-Net finds them."""
    ending = dataset_json["file_ending"]
    if "dataset" in dataset_json:
        entry = dataset_json["dataset"].get(case_id)
        if entry is None:
            return [], raw_dataset_dir / "labelsTr" / f"{case_id}{ending}"
        images = [raw_dataset_dir / os.path.expandvars(p) for p in entry["images"]]  # absolute paths stay absolute
        return images, raw_dataset_dir / os.path.expandvars(entry["label"])
    images = [raw_dataset_dir / "imagesTr" / f"{case_id}_{c:04d}{ending}"
              for c in range(len(dataset_json["channel_names"]))]
    return images, raw_dataset_dir / "labelsTr" / f"{case_id}{ending}"


def extra_case_files(extra_dir: Path, dataset_json: Mapping, case_id: str) -> tuple[list[Path], Path]:
    """Image files and label file of an extra case (``extra_dir/imagesTr``, ``extra_dir/labelsTr``, nnU-Net's
    naming with the raw dataset's file ending and channels)."""
    return case_files(extra_dir, {k: v for k, v in dataset_json.items() if k != "dataset"}, case_id)


def bank_case_files(raw_dataset_dir: Path, dataset_json: Mapping, case_id: str,
                    entry: Mapping) -> tuple[list[Path], Path]:
    """Image and label files of a bank case from its ``bank.json`` entry (an extra case's own folder, else the
    raw dataset)."""
    if entry.get("extra"):
        return extra_case_files(Path(entry["raw_dir"]), dataset_json, case_id)
    return case_files(raw_dataset_dir, dataset_json, case_id)


def softmax_files(softmax_dirs: Sequence[Path]) -> dict[str, Path]:
    """Case id -> its ``<case>.npz`` softmax export in ``softmax_dirs``; :class:`CandidateBankError` when a folder
    is missing or a case has an export in two of them."""
    found: dict[str, Path] = {}
    for folder in softmax_dirs:
        if not folder.is_dir():
            raise CandidateBankError(f"softmax folder {folder} not found")
        for file in sorted(folder.glob("*.npz")):
            if file.stem in found:
                raise CandidateBankError(f"case {file.stem} has a softmax export in two folders ({found[file.stem]} "
                                         f"and {file}); pass each case's out-of-fold folder once")
            found[file.stem] = file
    return found


@dataclass(frozen=True)
class CaseInputs:
    """One case read from its files (:func:`read_case_inputs`).

    Attributes
    ----------
    image : (C, Z, Y, X) raw intensities (HU for CT).
    reference : (Z, Y, X) int16 reference label map.
    probabilities : (K, Z, Y, X) nnU-Net softmax in the raw image geometry.
    spacing : raw voxel spacing (z, y, x) mm.
    origin, direction : the image geometry from nnU-Net's reader (``sitk_stuff``), None when it has none.
    """

    image: np.ndarray
    reference: np.ndarray
    probabilities: np.ndarray
    spacing: tuple[float, ...]
    origin: Sequence[float] | None
    direction: Sequence[float] | None


def read_case_inputs(image_files: Sequence[str | os.PathLike], label_file: str | os.PathLike,
                     softmax_file: str | os.PathLike, reader: type) -> CaseInputs:
    """Read one case with nnU-Net's reader class ``reader`` and its softmax export, and check that they belong
    together (shape, spacing of the ``.pkl`` beside the export, integer labels); ValueError naming the file
    otherwise, :class:`~nnunet_plus.files.integrity.IncompleteFileError` for a truncated image or label."""
    softmax = Path(softmax_file)
    for path in (*image_files, label_file):  # nnU-Net's reader takes a cut .nii.gz for zeros
        check_complete(path)
    reader = reader()
    image, properties = reader.read_images([str(p) for p in image_files])
    label, _ = reader.read_seg(str(label_file))
    probabilities = load_softmax(softmax)
    spacing = tuple(float(s) for s in properties["spacing"])
    pkl_file = softmax.with_suffix(".pkl")
    exported = load_properties(pkl_file) if pkl_file.is_file() else None
    if exported is not None and not np.allclose(exported["spacing"], spacing, rtol=1e-4):
        raise ValueError(f"{pkl_file} has spacing {list(exported['spacing'])} but the raw image has {list(spacing)}; "
                         "the softmax belongs to another image")
    if probabilities.shape[1:] != image.shape[1:]:
        raise ValueError(f"{softmax} probabilities have shape {probabilities.shape} but the image "
                         f"{image_files[0]} has {image.shape[1:]}")
    reference = np.rint(label[0])
    if not np.array_equal(reference, label[0]):
        raise ValueError(f"{label_file} holds non-integer label values")
    sitk = properties.get("sitk_stuff", {})
    return CaseInputs(image=image, reference=reference.astype(np.int16), probabilities=probabilities,
                      spacing=spacing, origin=sitk.get("origin"), direction=sitk.get("direction"))
