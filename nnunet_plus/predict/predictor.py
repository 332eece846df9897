"""PLUSPredictor: nnU-Net's predictor + multi-sensitivity / seg2det / LiverMax + the PLUS classifier, in memory.

Python API (the CLI ``nnunet_plus_predict`` is a thin wrapper)::

    from nnunet_plus.predict.predictor import PLUSPredictor

    predictor = PLUSPredictor.from_dataset(3, "3d_fullres", folds=(0, 1, 2, 3, 4), device="cuda")
    report = predictor.predict_folder("imagesTs", "predictions")          # files, see outputs.py
    image, geometry = read_case(...)                                        # or in memory (inputs.py):
    result = predictor.predict_case(image, geometry, case="ct_001")        # CaseResult (label maps + JSON)

Per case the nnU-Net logits are resampled to the original geometry and turned into probabilities in memory
(what nnU-Net's export does), handed to :class:`~nnunet_plus.refine.CaseRefiner` (post-processing,
classifier, decision rule documented there) and written; the full-resolution softmax is written only with
``save_probabilities``. Without a classifier (``use_classifier=False`` or none trained) the nnU-Net prior
is the lesion probability.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnunet_plus.files.image_io import Geometry
from nnunet_plus.paths import dataset_name, ensure_ext_trainer_env, nnunet_folder, trained_folds
from nnunet_plus.predict.dicom_out import DicomRequest, model_id_of
from nnunet_plus.predict.errors import InputError
from nnunet_plus.predict.inputs import check_output_folder, discover_cases, prepare_output_folder, read_case
from nnunet_plus.predict.runner import RunReport, finish_run, run_pipeline, select_cases, write_case_outputs
from nnunet_plus.refine import CaseRefiner, CaseResult
from nnunet_plus.files.safe_load import check_checkpoint
from nnunet_plus.schema import LesionSchema

logger = logging.getLogger(__name__)

#: warn before resampling when the model's grid has more than this many times the image's voxels
UPSAMPLING_WARNING = 4.0

#: nnU-Net image readers whose arrays equal what nnunet_plus.predict.inputs reads (SimpleITK, z-y-x order)
SUPPORTED_READERS = ("SimpleITKIO",)


def model_folder(dataset: str | int, configuration: str, *, trainer: str = "nnUNetTrainerPLUS",
                 plans: str = "nnUNetPlans") -> Path:
    """``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>``; FileNotFoundError listing the
    trained models of the dataset when it does not exist."""
    root = nnunet_folder("nnUNet_results") / dataset_name(dataset)
    folder = root / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        available = sorted(p.name for p in root.glob("*__*__*") if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(f"trained model {folder} not found (check -tr / -p / -c); trained models of this "
                                f"dataset: {available or 'none'}")
    return folder


def check_model_folder(folder: str | Path, folds: Sequence[int | str] | None,
                       checkpoint_name: str) -> list[int | str]:
    """The folds to use (all with the checkpoint when ``folds`` is None); FileNotFoundError naming the missing
    folder / fold / checkpoint."""
    folder = Path(folder)
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found; {folder} is not a trained nnU-Net model folder")
    available = trained_folds(folder, checkpoint_name)
    if folds is None:
        if not available:
            raise FileNotFoundError(f"no fold of {folder} (folders fold_<k> or fold_all) has {checkpoint_name}; "
                                    "train it with nnUNetv2_train or pick another checkpoint with -chk")
        return [f for f in available if f != "all"] or ["all"]
    chosen = []
    for fold in folds:
        fold = int(fold) if str(fold).isdigit() else str(fold)
        fold_dir = folder / f"fold_{fold}"
        if not fold_dir.is_dir():
            raise FileNotFoundError(f"fold {fold} of {folder} not found ({fold_dir}); folds with {checkpoint_name}: "
                                    f"{available or 'none'}")
        if not (fold_dir / checkpoint_name).is_file():
            present = sorted(p.name for p in fold_dir.glob("*.pth"))
            raise FileNotFoundError(f"{fold_dir / checkpoint_name} not found; checkpoints in that fold: "
                                    f"{present or 'none'} (choose one with -chk)")
        chosen.append(fold)
    return chosen


class PLUSPredictor:
    """nnU-Net prediction followed by the nnunet_plus stages, for arrays in memory or whole folders.

    Parameters (keyword-only)
    -------------------------
    device : "cuda", "cpu", "mps" or a torch.device.
    use_mirroring : test-time mirroring (nnU-Net's TTA; ``--disable_tta`` turns it off).
    tile_step_size : sliding-window step (nnU-Net's ``-step_size``).
    use_classifier : load the PLUS classifier when one is trained for the model (``--no-classifier``: False).
    sensitivities : override the schema's multi-sensitivity factors (ascending, first = confident tier).
    min_probability : reject reported lesions below this probability (see refine.py).
    verbose, allow_tqdm : nnU-Net's verbosity and our progress bars.
    """

    def __init__(self, *, device: str | torch.device = "cuda", use_mirroring: bool = True,
                 tile_step_size: float = 0.5, use_classifier: bool = True,
                 sensitivities: Sequence[float] | None = None, min_probability: float = 0.0,
                 verbose: bool = False, allow_tqdm: bool = True):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.nnunet = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                      perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                      verbose=verbose, verbose_preprocessing=verbose, allow_tqdm=verbose and allow_tqdm)
        self.use_classifier = use_classifier
        self.sensitivities = None if sensitivities is None else tuple(float(f) for f in sensitivities)
        self.min_probability = float(min_probability)
        self.allow_tqdm = allow_tqdm
        self.refiner: CaseRefiner | None = None
        self.schema: LesionSchema | None = None
        self.num_channels = 0
        self.info: dict = {}

    # ---- set-up -------------------------------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset: str | int, configuration: str, *, trainer: str = "nnUNetTrainerPLUS",
                     plans: str = "nnUNetPlans", folds: Sequence[int | str] | None = None,
                     checkpoint_name: str = "checkpoint_final.pth", **options) -> "PLUSPredictor":
        """Predictor for a model in ``$nnUNet_results`` (and its PLUS classifier when one is trained)."""
        from nnunet_plus.classifier.inference import classifier_folder

        predictor = cls(**options)
        classifier = classifier_folder(dataset, configuration, trainer=trainer, plans=plans)
        predictor.initialize_from_trained_model_folder(
            model_folder(dataset, configuration, trainer=trainer, plans=plans), folds=folds,
            checkpoint_name=checkpoint_name, classifier_folder=classifier)
        return predictor

    def initialize_from_trained_model_folder(self, model_training_output_dir: str | Path, *,
                                             folds: Sequence[int | str] | None = None,
                                             checkpoint_name: str = "checkpoint_final.pth",
                                             classifier_folder: str | Path | None = None) -> None:
        """Load the nnU-Net folds (missing folder / fold / checkpoint: FileNotFoundError naming it), the lesion
        schema of the model's dataset.json and, if ``use_classifier`` and the folder exists, the classifier."""
        folder = Path(model_training_output_dir)
        use_folds = check_model_folder(folder, folds, checkpoint_name)
        plans = json.loads((folder / "plans.json").read_text())
        reader = plans.get("image_reader_writer", "SimpleITKIO")
        if reader not in SUPPORTED_READERS:
            raise ValueError(f"{folder / 'plans.json'}: the model was trained with the {reader} image reader; "
                             f"nnunet_plus_predict reads images with SimpleITK and supports {SUPPORTED_READERS}")
        schema = LesionSchema.from_dataset_json(folder / "dataset.json", dataset_id=plans.get("dataset_name"))
        if self.sensitivities is not None:
            schema = dataclasses.replace(schema, sensitivities=self.sensitivities)
        ensure_ext_trainer_env()
        for fold in use_folds:  # nnU-Net loads them with weights_only=False (its code): check them safely first
            check_checkpoint(folder / f"fold_{fold}" / checkpoint_name)
        try:
            self.nnunet.initialize_from_trained_model_folder(str(folder), use_folds, checkpoint_name)
        except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"cannot load {checkpoint_name} of {folder} folds {use_folds}: "
                             f"{type(exc).__name__}: {exc}") from exc
        if self.nnunet.configuration_manager.previous_stage_name is not None:
            raise ValueError(f"{folder} is a cascade stage (it needs the previous stage's segmentation); "
                             "nnunet_plus_predict supports single-stage configurations such as 3d_fullres")
        classifier = None
        if self.use_classifier and classifier_folder is not None and Path(classifier_folder).is_dir():
            from nnunet_plus.classifier.inference import PLUSInference

            classifier = PLUSInference.from_folder(classifier_folder, folds=None if folds is None else use_folds,
                                                   device=self.device, schema=schema)
        elif self.use_classifier:
            logger.warning("no PLUS classifier at %s: reporting nnU-Net's lesions (nnU-Net prior = probability); "
                           "use --no-classifier to silence this", classifier_folder)
        dataset_json = self.nnunet.dataset_json
        self.num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
        self.schema = schema
        self.refiner = CaseRefiner(schema, classifier=classifier, min_probability=self.min_probability)
        self.info = {"model_folder": str(folder), "folds": list(use_folds), "checkpoint": checkpoint_name,
                     "classifier_folder": str(classifier_folder) if classifier is not None else None,
                     "schema": schema.to_block(), "device": str(self.device),
                     "use_mirroring": bool(self.nnunet.use_mirroring),
                     "tile_step_size": float(self.nnunet.tile_step_size)}

    def _require_initialized(self) -> None:
        if self.refiner is None:
            raise RuntimeError("call initialize_from_trained_model_folder() (or use from_dataset()) first")

    # ---- one case in memory -----------------------------------------------------------------------------------
    def check_resampling(self, geometry: Geometry, name: str | Path = "image") -> tuple[int, ...]:
        """The (z, y, x) shape ``geometry`` is resampled to at the model's spacing (nnU-Net's rounding, before its
        crop to the non-zero region); :class:`InputError` naming ``name`` when an axis would have no voxel, a
        warning when the grid grows more than :data:`UPSAMPLING_WARNING` times (a wrong header spacing?)."""
        transpose = self.nnunet.plans_manager.transpose_forward
        shape = np.array([geometry.shape_zyx[i] for i in transpose], dtype=float)
        spacing = np.array([geometry.spacing_zyx[i] for i in transpose], dtype=float)
        target = self.nnunet.configuration_manager.spacing
        target = np.array(target if len(target) == len(shape) else [spacing[0], *target], dtype=float)
        new = np.round(shape * spacing / target).astype(np.int64)
        described = (f"spacing {tuple(round(float(s), 6) for s in spacing)} mm resamples {tuple(int(n) for n in shape)}"
                     f" voxels to {tuple(int(n) for n in new)} at the model's {tuple(float(t) for t in target)} mm")
        if (new < 1).any():
            raise InputError(f"{name}: {described}; the header spacing is wrong, fix it (e.g. SimpleITK SetSpacing)")
        factor = float(np.prod(new.astype(float)) / np.prod(shape))
        if factor > UPSAMPLING_WARNING:
            logger.warning("%s: %s (%.0fx the voxels, %.3g GiB per channel as float32): this may take long; check "
                           "the header spacing", name, described, factor,
                           float(np.prod(new.astype(float))) * 4 / 2 ** 30)
        return tuple(int(n) for n in new)

    def preprocess(self, image: np.ndarray, geometry: Geometry, *, name: str | Path = "image"
                   ) -> tuple[torch.Tensor, dict]:
        """nnU-Net preprocessing of a (C, Z, Y, X) image: (network input tensor, nnU-Net properties);
        ``name`` (the file) is named in errors and warnings, see :meth:`check_resampling`."""
        self._require_initialized()
        if image.ndim != 4 or image.shape[0] != self.num_channels:
            raise InputError(f"image must have shape (C={self.num_channels}, Z, Y, X), got {image.shape}")
        self.check_resampling(geometry, name)
        preprocessor = self.nnunet.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(image, None, geometry.nnunet_properties(),
                                                        self.nnunet.plans_manager,
                                                        self.nnunet.configuration_manager, self.nnunet.dataset_json)
        return torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format), properties

    def predict_logits(self, data: torch.Tensor) -> torch.Tensor:
        """Network forward pass (sliding window, fold ensemble, TTA): logits in the preprocessed geometry."""
        return self.nnunet.predict_logits_from_preprocessed_data(data).cpu()

    def logits_to_probabilities(self, logits: torch.Tensor | np.ndarray, properties: dict) -> np.ndarray:
        """(K, Z, Y, X) float32 softmax in the original geometry (what nnU-Net's export does with
        ``return_probabilities``, without computing the segmentation)."""
        plans_manager = self.nnunet.plans_manager
        configuration = self.nnunet.configuration_manager
        label_manager = self.nnunet.label_manager
        shape = properties["shape_after_cropping_and_before_resampling"]
        spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
        current = configuration.spacing if len(configuration.spacing) == len(shape) \
            else [spacing[0], *configuration.spacing]
        resampled = configuration.resampling_fn_probabilities(logits, shape, current, spacing)
        probabilities = label_manager.apply_inference_nonlin(resampled)
        del resampled
        probabilities = label_manager.revert_cropping_on_probabilities(
            probabilities, properties["bbox_used_for_cropping"], properties["shape_before_cropping"])
        if isinstance(probabilities, torch.Tensor):
            probabilities = probabilities.numpy()
        axes = [0, *[i + 1 for i in plans_manager.transpose_backward]]
        return np.ascontiguousarray(probabilities.transpose(axes), dtype=np.float32)

    def predict_probabilities(self, image: np.ndarray, geometry: Geometry) -> np.ndarray:
        """(K, Z, Y, X) float32 nnU-Net softmax of a (C, Z, Y, X) image, in its own geometry."""
        data, properties = self.preprocess(image, geometry)
        return self.logits_to_probabilities(self.predict_logits(data), properties)

    def predict_case(self, image: np.ndarray, geometry: Geometry, *, case: str = "case") -> CaseResult:
        """The whole pipeline on one image in memory; nothing is written."""
        probabilities = self.predict_probabilities(image, geometry)
        return self.refiner.refine(case, image, probabilities, geometry)

    # ---- folders ---------------------------------------------------------------------------------------------
    def predict_folder(self, input_folder: str | Path, output_folder: str | Path, *,
                       save_probabilities: bool = False, continue_prediction: bool = False, num_parts: int = 1,
                       part_id: int = 0, overlays: bool = False, num_processes_preprocessing: int = 2,
                       num_processes_export: int = 2, run_info: dict | None = None, dicom_seg: bool = False,
                       dicom_series_uids: Sequence[str] = ()) -> RunReport:
        """Predict every case of ``input_folder`` (naming rule: nnunet_plus.predict.inputs) into
        ``output_folder``; a failing case is reported in the returned :class:`RunReport`, the others go on.
        ``dicom_series_uids`` (``--series-uid``): the series DICOM folder inputs read (and reference), see
        :func:`~nnunet_plus.predict.inputs.read_case`. ``dicom_seg``: also ``<case>_seg.dcm`` + ``<case>_sr.dcm``
        for DICOM series inputs (:mod:`nnunet_plus.predict.dicom_out`)."""
        self._require_initialized()
        output_folder = Path(output_folder)
        series_uids = tuple(dicom_series_uids or ())
        inputs = {c.case: c for c in discover_cases(input_folder, num_channels=self.num_channels,
                                                     exclude=output_folder)}
        check_output_folder(output_folder, {"-i": input_folder}, inputs.values())
        todo, skipped = select_cases(list(inputs), output_folder, num_parts=num_parts, part_id=part_id,
                                     continue_prediction=continue_prediction,
                                     save_probabilities=save_probabilities, overlays=overlays,
                                     dicom_inputs={c: i.files for c, i in inputs.items()} if dicom_seg else None)
        prepare_output_folder(output_folder)
        logger.info("%d case(s) in %s; part %d/%d predicts %d, %d already done", len(inputs), input_folder,
                    part_id, num_parts, len(todo), len(skipped))
        schema = self.schema

        def prepare(case: str):
            image, geometry = read_case(inputs[case], series_uids=series_uids)
            data, properties = self.preprocess(image, geometry, name=inputs[case].files[0])
            return image, geometry, data, properties

        def compute(case: str, item):
            image, geometry, data, properties = item
            return image, geometry, self.predict_logits(data), properties

        def finish(case: str, item) -> None:
            image, geometry, logits, properties = item
            probabilities = self.logits_to_probabilities(logits, properties)
            del logits
            result = self.refiner.refine(case, image, probabilities, geometry)
            dicom = None
            if dicom_seg:
                dicom = DicomRequest(inputs[case].files, model_id_of(self.info.get("model_folder")), series_uids)
            write_case_outputs(output_folder, result, schema=schema, image=image,
                               probabilities=probabilities if save_probabilities else None,
                               properties=properties, overlays=overlays, dicom=dicom)

        report = RunReport(skipped=skipped)
        run_pipeline(todo, prepare=prepare, compute=compute, finish=finish,
                     num_prepare=num_processes_preprocessing, num_finish=num_processes_export,
                     progress=self.allow_tqdm, report=report)
        finish_run(output_folder, schema, report, {**self.info, **(run_info or {}),
                                                   "input_folder": str(input_folder), "num_parts": num_parts,
                                                   "part_id": part_id})
        return report

