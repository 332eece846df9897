"""Plug-and-play: run the nnunet_plus stages on another model's output (PLUS: "arbitrary 3D segmentation models").

``--from-probabilities DIR`` reads, per case, either

* nnU-Net's ``<case>.npz`` (key ``probabilities``, (K, Z, Y, X) in the original geometry) + ``<case>.pkl``
  (its properties: geometry in ``sitk_stuff``), as written by ``nnUNetv2_predict --save_probabilities`` with
  any nnU-Net model (when DIR holds ``.npz`` files, only those are used). The pickle is never run: with the
  CT images (``-i``) the geometry is taken from the image and the ``.pkl`` is not opened; without them it is
  read as plain data (:func:`nnunet_plus.safe_load.load_properties`). ``trust_pickle`` (``--trust-pickle``)
  unpickles it with ``pickle.load`` (a warning is logged), as nnU-Net does; or
* per-class probability images named like multi-channel inputs: ``<case>_XXXX.nii.gz`` = probability of
  label value XXXX, one file for each of the K labels of the dataset (any SimpleITK format).

``--from-segmentation DIR`` reads label maps ``<case>.nii.gz`` (any SimpleITK format; values = the dataset's
label values); the prior becomes one-hot (probability 1 for the predicted label), so lesion probabilities
without the classifier are 1 and LiverMax is 0/1.

K must equal the number of labels of the dataset given with ``-d`` (whose lesion schema is used). The CT
images (``-i``, same naming as for prediction) are optional; they give the HU statistics, the overlays and
the classifier's crops (the classifier needs them) and must share the probabilities' voxel grid. Files with
unknown extensions (nnU-Net's dataset.json, plans.json, ...) are ignored in DIR.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_plus.image_io import Geometry
from nnunet_plus.predict.inputs import (CaseInput, InputError, check_output_folder, discover_cases, image_to_array,
                                        prepare_output_folder, read_case, read_sitk)
from nnunet_plus.refine import CaseRefiner
from nnunet_plus.predict.runner import (RunReport, finish_run, run_pipeline, select_cases, write_case_outputs)
from nnunet_plus.safe_load import load_properties

_PROBABILITY_TOLERANCE = 1e-3
_SUM_TOLERANCE = 1e-2  # float16 exports


@dataclass(frozen=True)
class Source:
    """One case of a plug-and-play folder: an nnU-Net .npz (+ .pkl) or image files (per class / label map)."""

    kind: str  # "npz", "class_images" or "segmentation"
    case: CaseInput


def discover_sources(folder: str | Path, *, mode: str, num_classes: int,
                     exclude: str | Path | None = None) -> dict[str, Source]:
    """Cases of a ``--from-probabilities`` (``mode="probabilities"``) or ``--from-segmentation`` folder
    (``exclude``: the output folder, see :func:`~nnunet_plus.predict.inputs.discover_cases`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} does not exist or is not a folder")
    if mode == "probabilities":
        npz = sorted(p for p in folder.glob("*.npz") if not p.name.startswith("."))
        if npz:
            sources = {}
            for path in npz:
                case = path.name[: -len(".npz")]
                pkl = path.with_suffix(".pkl")
                error = None if pkl.is_file() else f"{pkl} not found: nnU-Net writes <case>.pkl beside <case>.npz"
                sources[case] = Source("npz", CaseInput(case, (path, pkl), error))
            return sources
        cases = discover_cases(folder, num_channels=num_classes, ignore_unknown=True, allow_folders=False,
                               exclude=exclude)
        kind = "class_images"
    elif mode == "segmentation":
        cases = discover_cases(folder, num_channels=1, ignore_unknown=True, exclude=exclude)
        kind = "segmentation"
    else:
        raise ValueError(f"mode must be 'probabilities' or 'segmentation', got {mode!r}")
    if not cases:
        raise InputError(f"{folder} holds no {'probability' if kind == 'class_images' else 'label map'} files")
    return {c.case: Source(kind, c) for c in cases}


def load_source(source: Source, *, num_classes: int, image_geometry: Geometry | None = None,
                trust_pickle: bool = False) -> tuple[np.ndarray, Geometry, dict]:
    """``(probabilities (K, Z, Y, X) float32, geometry, nnU-Net properties)`` of one case.

    For an nnU-Net ``.npz`` the geometry comes from ``image_geometry`` (the case's CT) when given, and the
    ``.pkl`` is not read (unless ``trust_pickle``); otherwise from the ``.pkl`` read as plain data, or with
    ``pickle.load`` when ``trust_pickle``."""
    source.case.check()
    if source.kind == "npz":
        npz_path, pkl_path = source.case.files
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                probabilities = np.asarray(data["probabilities"], dtype=np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{npz_path} cannot be read as nnU-Net probabilities (truncated or corrupt file, or no "
                             f"'probabilities' array: {exc}); export it again") from exc
        if probabilities.ndim != 4:
            raise InputError(f"{npz_path}: 'probabilities' must be (K, Z, Y, X), got shape {probabilities.shape}")
        if image_geometry is not None and not trust_pickle:
            if tuple(probabilities.shape[1:]) != image_geometry.shape_zyx:
                raise InputError(f"{npz_path}: probabilities of shape {probabilities.shape[1:]} are not on the voxel "
                                 f"grid of the case's image (shape {image_geometry.shape_zyx})")
            geometry, properties = image_geometry, image_geometry.nnunet_properties()
        else:
            try:
                properties = load_properties(pkl_path, trust_pickle=trust_pickle)
                geometry = Geometry.from_nnunet_properties(properties, probabilities.shape[1:])
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(str(exc) if isinstance(exc, ValueError) else
                                 f"{pkl_path} holds no nnU-Net geometry ({type(exc).__name__}: {exc}); give the "
                                 "CT images with -i") from exc
        name = npz_path
    elif source.kind == "class_images":
        probabilities, geometry = read_case(source.case)
        properties = geometry.nnunet_properties()
        name = source.case.files[0]
    else:
        path = source.case.files[0]
        image = read_sitk(path)
        geometry = Geometry.of(image)
        labels = image_to_array(image, path)
        del image
        values = np.unique(labels)
        bad = [float(v) for v in values if v != int(v) or not 0 <= v < num_classes]
        if bad:
            raise InputError(f"{path}: label values {bad[:10]} are not labels of the dataset (0..{num_classes - 1})")
        probabilities = np.zeros((num_classes, *labels.shape), dtype=np.float32)
        for value in values.astype(int):
            probabilities[value][labels == value] = 1.0
        return probabilities, geometry, geometry.nnunet_properties()
    if probabilities.shape[0] != num_classes:
        raise InputError(f"{name}: {probabilities.shape[0]} probability channels, the dataset has {num_classes} "
                         "labels")
    low, high = float(probabilities.min()), float(probabilities.max())
    if not np.isfinite(low + high) or low < -_PROBABILITY_TOLERANCE or high > 1 + _PROBABILITY_TOLERANCE:
        raise InputError(f"{name}: values range from {low} to {high}; probabilities in [0, 1] are needed (logits "
                         "must go through a softmax first)")
    total = probabilities.sum(axis=0)
    low, high = float(total.min()), float(total.max())
    if low < 1 - _SUM_TOLERANCE or high > 1 + _SUM_TOLERANCE:
        raise InputError(f"{name}: the {num_classes} class probabilities sum to {low:.3g}..{high:.3g} per voxel; "
                         "they must sum to 1 (a softmax over all labels, background included); export them again")
    return probabilities, geometry, properties


def run_plug_and_play(source_folder: str | Path, output_folder: str | Path, *, mode: str, refiner: CaseRefiner,
                      images_folder: str | Path | None = None, num_channels: int = 1,
                      save_probabilities: bool = False, continue_prediction: bool = False, num_parts: int = 1,
                      part_id: int = 0, overlays: bool = False, num_processes: int = 2, progress: bool = True,
                      run_info: dict | None = None, trust_pickle: bool = False, dicom_seg: bool = False,
                      dicom_series_uids: tuple[str, ...] = (), model_id: str = "") -> RunReport:
    """Post-process (and classify) another model's output folder into ``output_folder`` (same files as a
    normal prediction). Cases come from ``source_folder``; ``images_folder`` must hold each of them.
    ``trust_pickle``: unpickle nnU-Net's ``.pkl`` files with ``pickle.load`` (see the module docstring).
    ``dicom_seg``: also the DICOM SEG + SR of cases whose image (``images_folder``) is a DICOM series folder."""
    schema = refiner.schema
    output_folder = Path(output_folder)
    sources = discover_sources(source_folder, mode=mode, num_classes=schema.num_classes, exclude=output_folder)
    images = {} if images_folder is None else \
        {c.case: c for c in discover_cases(images_folder, num_channels=num_channels, exclude=output_folder)}
    check_output_folder(output_folder, {f"--from-{mode}": source_folder, "-i": images_folder},
                        [*(s.case for s in sources.values()), *images.values()])
    todo, skipped = select_cases(list(sources), output_folder, num_parts=num_parts, part_id=part_id,
                                 continue_prediction=continue_prediction, save_probabilities=save_probabilities,
                                 overlays=overlays,
                                 dicom_inputs={c: i.files for c, i in images.items()} if dicom_seg else None)
    prepare_output_folder(output_folder)

    def prepare(case: str):
        image = image_geometry = None
        if images_folder is not None:
            if case not in images:
                raise InputError(f"case {case!r}: no image for it in {images_folder}")
            image, image_geometry = read_case(images[case])
        probabilities, geometry, properties = load_source(sources[case], num_classes=schema.num_classes,
                                                          image_geometry=image_geometry, trust_pickle=trust_pickle)
        if image_geometry is not None:
            problem = image_geometry.mismatch(geometry)
            if problem is not None:
                raise InputError(f"case {case!r}: {sources[case].case.files[0]} is not on the voxel grid of "
                                 f"{images[case].files[0]} ({problem})")
            geometry = image_geometry
        return image, probabilities, geometry, properties

    def finish(case: str, item) -> None:
        image, probabilities, geometry, properties = item
        result = refiner.refine(case, image, probabilities, geometry)
        dicom = None
        if dicom_seg:
            from nnunet_plus.predict.dicom_out import DicomRequest

            dicom = DicomRequest(images[case].files if case in images else (), model_id, tuple(dicom_series_uids))
        write_case_outputs(output_folder, result, schema=schema, image=image,
                           probabilities=probabilities if save_probabilities else None, properties=properties,
                           overlays=overlays, dicom=dicom)

    report = RunReport(skipped=skipped)
    run_pipeline(todo, prepare=prepare, compute=lambda case, item: item, finish=finish, num_prepare=num_processes,
                 num_finish=0, progress=progress, report=report)
    finish_run(output_folder, schema, report, {**(run_info or {}), "mode": f"from-{mode}",
                                               "source_folder": str(source_folder),
                                               "images_folder": None if images_folder is None else str(images_folder),
                                               "num_parts": num_parts, "part_id": part_id,
                                               "schema": schema.to_block()})
    return report
