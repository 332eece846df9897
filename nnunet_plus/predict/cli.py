"""``nnunet_plus_predict``: nnU-Net prediction + multi-sensitivity, seg2det, LiverMax and the PLUS classifier.

Flags are nnU-Net's (``nnUNetv2_predict``) wherever nnU-Net has one; see docs/predict.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import sys
from pathlib import Path

from nnunet_plus.paths import PathError, dataset_name, ensure_ext_trainer_env, nnunet_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_plus_predict",
        description="Predict a folder of CTs with a trained nnunet_plus model: nnU-Net segmentation, multi-"
                    "sensitivity lesion candidates, seg2det, LiverMax and the PLUS classifier. Writes per case "
                    "<case>.nii.gz (label map), <case>_instances.nii.gz, <case>.json; per run lesions.csv, "
                    "patients.csv and label colour tables for ITK-SNAP / 3D Slicer.")
    parser.add_argument("-i", help="input folder: nnU-Net naming (case_0000.nii.gz, ...), plain single-file names "
                                   "for single-channel models, any SimpleITK format, DICOM series folders "
                                   "(optional with --from-probabilities / --from-segmentation)")
    parser.add_argument("--series-uid", dest="series_uid", action="append", default=None, metavar="UID",
                        help="DICOM folder inputs: read the series with this SeriesInstanceUID instead of the largest "
                             "CT series (repeat it for several case folders; a folder holding none of them fails "
                             "with a list of its series)")
    parser.add_argument("-o", required=True, help="output folder (created if missing; not an input folder, a new "
                                                  "folder inside -i is fine)")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-f", nargs="+", default=None,
                        help="folds to ensemble (default: every fold that has the checkpoint)")
    parser.add_argument("-tr", default="nnUNetTrainerPLUS", help="trainer class (default: nnUNetTrainerPLUS)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default: checkpoint_final.pth)")
    parser.add_argument("-device", choices=("cuda", "cpu", "mps"), default=None,
                        help="device (default: cuda if available, else cpu)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step size (default: 0.5)")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (faster)")
    parser.add_argument("-npp", type=int, default=2, help="preprocessing threads (0: in the main thread; default 2)")
    parser.add_argument("-nps", type=int, default=2,
                        help="post-processing / export threads (0: in the main thread; default 2)")
    parser.add_argument("--continue_prediction", action="store_true",
                        help="skip cases whose outputs are complete (<case>.json written last)")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (default 1)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this call predicts (0..num_parts-1)")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write nnU-Net's <case>.npz + <case>.pkl (softmax in the original geometry)")
    parser.add_argument("--sensitivities", nargs="+", type=float, default=None,
                        help="multi-sensitivity factors, ascending (default: the dataset schema's, e.g. 1 4)")
    parser.add_argument("--no-classifier", dest="no_classifier", action="store_true",
                        help="skip the PLUS classifier: report nnU-Net's lesions with the nnU-Net prior")
    parser.add_argument("--min-probability", dest="min_probability", type=float, default=0.0,
                        help="reject lesions whose probability is below this value (default 0: off)")
    parser.add_argument("--overlays", action="store_true", help="one PNG per case with every lesion outlined")
    parser.add_argument("--dicom-seg", dest="dicom_seg", action="store_true",
                        help="for DICOM series inputs also write <case>_seg.dcm (DICOM SEG: liver + one segment per "
                             "lesion) and <case>_sr.dcm (TID 1500 SR: the lesion table); other inputs get a warning")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-probabilities", dest="from_probabilities", type=Path, default=None,
                        help="post-process another model's probabilities: nnU-Net .npz + .pkl, or per-class "
                             "probability images <case>_XXXX.nii.gz")
    source.add_argument("--from-segmentation", dest="from_segmentation", type=Path, default=None,
                        help="post-process another model's label maps (one-hot prior)")
    parser.add_argument("--trust-pickle", dest="trust_pickle", action="store_true",
                        help="with --from-probabilities: unpickle nnU-Net's <case>.pkl with pickle.load (runs any code "
                             "the file holds; only for files you produced). Default: the .pkl is read as plain data, "
                             "or not at all when -i gives the images")
    parser.add_argument("--verbose", action="store_true", help="nnU-Net's verbose output and debug logging")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no progress bars (HPC jobs)")
    return parser


def _device(name: str | None):
    """:func:`nnunet_plus.paths.resolve_device`; on the CPU, every core for torch's threads."""
    import torch

    from nnunet_plus.paths import resolve_device

    device = resolve_device(name)
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    return device


def _series_uids(args) -> tuple[str, ...]:
    """The ``--series-uid`` values (blanks stripped, empty ones dropped): the series DICOM folder inputs read."""
    return tuple(str(u).strip() for u in (getattr(args, "series_uid", None) or ()) if str(u).strip())


def _schema_for_plug_and_play(args):
    """Schema + channel count: the trained model's dataset.json when it exists, else the raw dataset's."""
    from nnunet_plus.predict.predictor import model_folder
    from nnunet_plus.schema import LesionSchema, read_dataset_json

    try:
        path = model_folder(args.d, args.c, trainer=args.tr, plans=args.p) / "dataset.json"
    except FileNotFoundError:
        path = nnunet_folder("nnUNet_raw") / dataset_name(args.d) / "dataset.json"
    schema = LesionSchema.from_dataset_json(path, dataset_id=args.d)
    if args.sensitivities is not None:
        schema = dataclasses.replace(schema, sensitivities=tuple(args.sensitivities))
    dataset_json = read_dataset_json(path)
    return schema, len(dataset_json.get("channel_names", dataset_json.get("modality", {"0": "CT"})))


def _run_plug_and_play(args, device) -> object:
    from nnunet_plus.classifier.inference import classifier_folder
    from nnunet_plus.predict.plug_and_play import run_plug_and_play
    from nnunet_plus.refine import CaseRefiner

    schema, num_channels = _schema_for_plug_and_play(args)
    classifier = None
    folder = classifier_folder(args.d, args.c, trainer=args.tr, plans=args.p)
    if not args.no_classifier and folder.is_dir():
        if args.i is None:
            raise ValueError(f"the PLUS classifier ({folder}) needs the CT images: give -i, or use --no-classifier")
        from nnunet_plus.classifier.inference import PLUSInference

        classifier = PLUSInference.from_folder(folder, folds=args.f, device=device, schema=schema)
    elif not args.no_classifier:
        logging.getLogger(__name__).warning("no PLUS classifier at %s: reporting the source's lesions", folder)
    refiner = CaseRefiner(schema, classifier=classifier, min_probability=args.min_probability)
    mode, source = ("probabilities", args.from_probabilities) if args.from_probabilities is not None \
        else ("segmentation", args.from_segmentation)
    return run_plug_and_play(source, args.o, mode=mode, refiner=refiner, images_folder=args.i,
                             num_channels=num_channels, save_probabilities=args.save_probabilities,
                             continue_prediction=args.continue_prediction, num_parts=args.num_parts,
                             part_id=args.part_id, overlays=args.overlays, num_processes=args.npp,
                             progress=not args.disable_progress_bar, trust_pickle=args.trust_pickle,
                             run_info={"command": " ".join(sys.argv), "classifier_folder":
                                       str(folder) if classifier is not None else None},
                             dicom_seg=args.dicom_seg, dicom_series_uids=_series_uids(args),
                             model_id=f"plug-and-play/{args.d}")


def _run_predict(args, device) -> object:
    from nnunet_plus.predict.predictor import PLUSPredictor

    predictor = PLUSPredictor.from_dataset(
        args.d, args.c, trainer=args.tr, plans=args.p, folds=args.f, checkpoint_name=args.chk, device=device,
        use_mirroring=not args.disable_tta, tile_step_size=args.step_size, use_classifier=not args.no_classifier,
        sensitivities=args.sensitivities, min_probability=args.min_probability, verbose=args.verbose,
        allow_tqdm=not args.disable_progress_bar)
    return predictor.predict_folder(args.i, args.o, save_probabilities=args.save_probabilities,
                                    continue_prediction=args.continue_prediction, num_parts=args.num_parts,
                                    part_id=args.part_id, overlays=args.overlays,
                                    num_processes_preprocessing=args.npp, num_processes_export=args.nps,
                                    run_info={"command": " ".join(sys.argv)}, dicom_seg=args.dicom_seg,
                                    dicom_series_uids=_series_uids(args))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plug_and_play = args.from_probabilities is not None or args.from_segmentation is not None
    if args.i is None and not plug_and_play:
        parser.error("-i is required (except with --from-probabilities / --from-segmentation)")
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        parser.error(f"-part_id must be in 0..{args.num_parts - 1} (counting starts at 0)")
    if args.trust_pickle and args.from_probabilities is None:
        parser.error("--trust-pickle only applies to --from-probabilities (nnU-Net's <case>.pkl files)")
    if args.npp < 0 or args.nps < 0:
        parser.error("-npp and -nps must be >= 0")
    if not 0 < args.step_size <= 1:
        parser.error(f"-step_size must be in (0, 1] (a fraction of the patch size), got {args.step_size}")
    if args.f is not None:
        bad = [f for f in args.f if not (f.isdigit() or f == "all")]
        if bad:
            parser.error(f"-f takes fold numbers or 'all' (folders fold_<k> / fold_all), got {' '.join(bad)}")
        args.f = [int(f) if f.isdigit() else f for f in args.f]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    ensure_ext_trainer_env()
    from nnunet_plus.predict.errors import InputError
    from nnunet_plus.predict.inputs import check_output_folder

    try:
        check_output_folder(args.o, {"-i": args.i, "--from-probabilities": args.from_probabilities,
                                     "--from-segmentation": args.from_segmentation})
        device = _device(args.device)
        report = _run_plug_and_play(args, device) if plug_and_play else _run_predict(args, device)
    except (InputError, PathError, FileNotFoundError, PermissionError, ValueError, ImportError) as exc:
        print(f"nnunet_plus_predict: error: {exc}", file=sys.stderr)
        return 1
    print(f"nnunet_plus_predict: {len(report.done)} case(s) written, {len(report.skipped)} already done, "
          f"{len(report.failures)} failed -> {args.o}")
    if report.failures:
        print(f"{len(report.failures)} case(s) failed:", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure.case}: {failure.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
