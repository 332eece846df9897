"""Plug-and-play: run the nnunet_plus stages on another model's output (PLUS: "arbitrary 3D segmentation models").

``--from-probabilities DIR`` reads, per case, either

* nnU-Net's ``<case>.npz`` (key ``probabilities``, (K, Z, Y, X) in the original geometry) + ``<case>.pkl``
  (its properties: geometry in ``sitk_stuff``), as written by ``nnUNetv2_predict --save_probabilities`` with
  any nnU-Net model (when DIR holds ``.npz`` files, only those are used). The pickle is never run: with the
  CT images (``-i``) the geometry is taken from the image and the ``.pkl`` is not opened; without them it is
  read as plain data (:func:`nnunet_plus.files.safe_load.load_properties`). ``trust_pickle`` (``--trust-pickle``)
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

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_plus.files.image_io import Geometry
from nnunet_plus.predict.dicom_out import DicomRequest
from nnunet_plus.predict.errors import InputError
from nnunet_plus.predict.inputs import (CaseInput, check_output_folder, discover_cases, image_to_array,
                                        prepare_output_folder, read_case, read_sitk)
from nnunet_plus.predict.runner import RunReport, finish_run, run_pipeline, select_cases, write_case_outputs
from nnunet_plus.refine import CaseRefiner
from nnunet_plus.files.safe_load import load_properties, load_softmax

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


def _load_npz(npz_path: Path, pkl_path: Path, image_geometry: Geometry | None,
              trust_pickle: bool) -> tuple[np.ndarray, Geometry, dict]:
    """nnU-Net's ``.npz`` probabilities (:func:`nnunet_plus.files.safe_load.load_softmax`) and their geometry, from the
    case's image when given (the ``.pkl`` is then not read, unless ``trust_pickle``), else from the ``.pkl``."""
    try:
        probabilities = load_softmax(npz_path).astype(np.float32, copy=False)
    except ValueError as exc:  # load_softmax names the file; numpy's own errors (e.g. a pickled array) do not
        message = str(exc)
        if str(npz_path) not in message:
            message = f"{npz_path} cannot be read as nnU-Net probabilities ({message}); export it again"
        raise InputError(message) from exc
    if image_geometry is not None and not trust_pickle:
        if tuple(probabilities.shape[1:]) != image_geometry.shape_zyx:
            raise InputError(f"{npz_path}: probabilities of shape {probabilities.shape[1:]} are not on the voxel "
                             f"grid of the case's image (shape {image_geometry.shape_zyx})")
        return probabilities, image_geometry, image_geometry.nnunet_properties()
    try:
        properties = load_properties(pkl_path, trust_pickle=trust_pickle)
        geometry = Geometry.from_nnunet_properties(properties, probabilities.shape[1:])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(str(exc) if isinstance(exc, ValueError) else
                         f"{pkl_path} holds no nnU-Net geometry ({type(exc).__name__}: {exc}); give the "
                         "CT images with -i") from exc
    return probabilities, geometry, properties


def _load_segmentation(path: Path, num_classes: int, series_uids: Sequence[str]
                       ) -> tuple[np.ndarray, Geometry, dict]:
    """A label map as one-hot probabilities ``(K, Z, Y, X)``; :class:`InputError` for values that are no label."""
    image = read_sitk(path, series_uids=series_uids)
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


def _check_probabilities(name: Path, probabilities: np.ndarray, num_classes: int) -> None:
    """:class:`InputError` naming ``name`` unless ``probabilities`` are ``num_classes`` channels of a softmax."""
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


def load_source(source: Source, *, num_classes: int, image_geometry: Geometry | None = None,
                trust_pickle: bool = False, series_uids: Sequence[str] = ()) -> tuple[np.ndarray, Geometry, dict]:
    """``(probabilities (K, Z, Y, X) float32, geometry, nnU-Net properties)`` of one case.

    For an nnU-Net ``.npz`` the geometry comes from ``image_geometry`` (the case's CT) when given, and the
    ``.pkl`` is not read (unless ``trust_pickle``); otherwise from the ``.pkl`` read as plain data, or with
    ``pickle.load`` when ``trust_pickle``. ``series_uids``: the series a DICOM folder source reads (see
    :func:`~nnunet_plus.predict.inputs.read_case`)."""
    source.case.check()
    if source.kind == "npz":
        probabilities, geometry, properties = _load_npz(*source.case.files, image_geometry, trust_pickle)
    elif source.kind == "class_images":
        probabilities, geometry = read_case(source.case, series_uids=series_uids)
        properties = geometry.nnunet_properties()
    else:
        return _load_segmentation(source.case.files[0], num_classes, series_uids)
    _check_probabilities(source.case.files[0], probabilities, num_classes)
    return probabilities, geometry, properties


def _read_image(case: str, images: Mapping[str, CaseInput], images_folder: str | Path | None,
                series_uids: Sequence[str]) -> tuple[np.ndarray | None, Geometry | None]:
    """``(image, geometry)`` of ``case`` from ``-i`` (``(None, None)`` without ``-i``)."""
    if images_folder is None:
        return None, None
    if case not in images:
        raise InputError(f"case {case!r}: no image for it in {images_folder}")
    return read_case(images[case], series_uids=series_uids)


def run_plug_and_play(source_folder: str | Path, output_folder: str | Path, *, mode: str, refiner: CaseRefiner,
                      images_folder: str | Path | None = None, num_channels: int = 1,
                      save_probabilities: bool = False, continue_prediction: bool = False, num_parts: int = 1,
                      part_id: int = 0, overlays: bool = False, num_processes: int = 2, progress: bool = True,
                      run_info: dict | None = None, trust_pickle: bool = False, dicom_seg: bool = False,
                      dicom_series_uids: tuple[str, ...] = (), model_id: str = "") -> RunReport:
    """Post-process (and classify) another model's output folder into ``output_folder`` (same files as a
    normal prediction). Cases come from ``source_folder``; ``images_folder`` must hold each of them.
    ``trust_pickle``: unpickle nnU-Net's ``.pkl`` files with ``pickle.load`` (see the module docstring).
    ``dicom_seg``: also the DICOM SEG + SR of cases whose image (``images_folder``) is a DICOM series folder.
    ``dicom_series_uids`` (``--series-uid``): the series DICOM folder inputs read (and reference)."""
    schema = refiner.schema
    series_uids = tuple(dicom_series_uids or ())
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
        image, image_geometry = _read_image(case, images, images_folder, series_uids)
        probabilities, geometry, properties = load_source(sources[case], num_classes=schema.num_classes,
                                                          image_geometry=image_geometry, trust_pickle=trust_pickle,
                                                          series_uids=series_uids)
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
        dicom = DicomRequest(images[case].files if case in images else (), model_id, series_uids) if dicom_seg else None
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
