"""``nnunet_plus_train_classifier``: build the candidate bank of a trained nnU-Net model and train one PLUS fold.

    nnunet_plus_train_classifier DATASET CONFIG FOLD [-tr nnUNetTrainerPLUS] [-p nnUNetPlans]
        [-device cuda|cpu|mps] [--c] [--epochs N] [--fusion gpr] [--preset paper|tiny] [--build-bank-only] [-np N]
        [--roi-fov lesion|fixed] [--roi-shape Z Y X] [--roi-context 2] [--roi-min-mm 32] [--overwrite-bank]
        [--lesion-shuffles K] [--extra-cases FOLDER]

1. The candidate bank (``$nnUNet_results/DatasetXXX/PLUSClassifier__<tr>__<p>__<CONFIG>/candidate_bank``) is
   built from the ``validation/`` softmax exports of the nnU-Net folds (resumable: cases already built are
   kept, new folds' cases are added). The crop flags (``--roi-*``) are candidate-bank settings: a bank built
   with others is refused until it is rebuilt (``--overwrite-bank``).
2. nnU-Net's ``splits_final.json`` decides the cases: fold FOLD trains on its training cases' out-of-fold
   candidates and validates on its validation cases (every case needs its own fold's validation export:
   train / validate all nnU-Net folds first). ``--extra-cases FOLDER`` adds labelled patients that no nnU-Net
   fold trained on (``FOLDER/imagesTr``, ``FOLDER/labelsTr``, and ``FOLDER/predictions`` from
   ``nnUNetv2_predict -i FOLDER/imagesTr -o FOLDER/predictions --save_probabilities`` with the trained folds),
   spread over the classifier folds' training and validation sets (:mod:`nnunet_plus.classifier.splits`).
3. The fold is trained into ``.../PLUSClassifier__<tr>__<p>__<CONFIG>/fold_FOLD`` (log, progress.png,
   checkpoints, validation/summary.json: nnU-Net alone vs nnU-Net + PLUS).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

PROG = "nnunet_plus_train_classifier"


def build_parser() -> argparse.ArgumentParser:
    from nnunet_plus.classifier.crops import (DEFAULT_LESION_ROI_SHAPE, DEFAULT_ROI_CONTEXT, DEFAULT_ROI_MIN_MM,
                                              DEFAULT_ROI_SHAPE, ROI_FOV_RULES)
    from nnunet_plus.classifier.encoders import ENCODER_PRESETS
    from nnunet_plus.classifier.fusion import FUSION_MODES
    from nnunet_plus.classifier.operating_point import OBJECTIVES
    from nnunet_plus.classifier.trainer import BEST_METRICS, TrainerSettings

    defaults = TrainerSettings()
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train one fold of the PLUS lesion classifier on the out-of-fold candidates of a "
                               "trained nnU-Net model (builds the candidate bank first when needed).")
    parser.add_argument("dataset", help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("configuration", help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("fold", type=int, help="fold of nnU-Net's splits_final.json")
    parser.add_argument("-tr", default="nnUNetTrainerPLUS", help="nnU-Net trainer of the model (default: %(default)s)")
    parser.add_argument("-p", default="nnUNetPlans", help="nnU-Net plans identifier (default: %(default)s)")
    parser.add_argument("-device", choices=("cuda", "cpu", "mps"), default=None,
                        help="device (default: cuda if available, else cpu); AMP is used on cuda")
    parser.add_argument("--c", action="store_true", help="continue from checkpoint_latest.pth of this fold")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs (default: %(default)s)")
    parser.add_argument("--fusion", choices=FUSION_MODES, default=defaults.fusion,
                        help="prior fusion (default: %(default)s; the others are the ablations of PLUS Table 1)")
    parser.add_argument("--preset", choices=sorted(ENCODER_PRESETS), default=defaults.preset,
                        help="encoder size: paper = 3D ResNet-18, tiny = CPU-sized (default: %(default)s)")
    parser.add_argument("--batch-patients", type=int, default=defaults.batch_patients,
                        help="patients per batch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="AdamW learning rate "
                        "(default: %(default)s)")
    parser.add_argument("--class-weight-power", type=float, default=defaults.class_weight_power,
                        help="lesion-loss class weights = count ** -power (1 = inverse frequency, 0 = uniform; "
                             "default: %(default)s)")
    parser.add_argument("--warm-start-l2", type=float, default=defaults.warm_start_l2,
                        help="L2 penalty of the warm start that fits the network's linear description term before "
                             "the first epoch; 0 = none, the paper's recipe (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--best-metric", choices=BEST_METRICS, default=defaults.best_metric,
                        help="validation metric of checkpoint_best.pth (default: %(default)s)")
    parser.add_argument("--objective", choices=OBJECTIVES, default=defaults.objective,
                        help="what the operating point (the decision rule fitted on the validation cases) maximises "
                             "(default: %(default)s)")
    parser.add_argument("--build-bank-only", action="store_true", help="build / complete the candidate bank and stop")
    parser.add_argument("--lesion-shuffles", type=_non_negative_int, default=0, metavar="K",
                        help="candidate bank: K lesion-shuffled copies of every case (its lesions and nnU-Net's "
                             "candidates moved within its liver; training cases only; stored in bank.json, a bank "
                             "built with another K needs --overwrite-bank; default: %(default)s = off)")
    parser.add_argument("--extra-cases", metavar="FOLDER", default=None,
                        help="candidate bank: extra labelled patients no nnU-Net fold trained on: FOLDER/imagesTr, "
                             "FOLDER/labelsTr (the dataset's naming) and FOLDER/predictions (nnUNetv2_predict "
                             "--save_probabilities of imagesTr with the trained folds); they add lesions to learn "
                             "from and validation patients for the operating point")
    crops = parser.add_argument_group("lesion crops (candidate bank settings, stored in bank.json)")
    crops.add_argument("--roi-fov", choices=ROI_FOV_RULES, default="lesion",
                       help="field of view of a candidate's crop: 'lesion' = a cube of max(--roi-min-mm, "
                            "--roi-context x the lesion's longest bounding-box side) mm resampled to --roi-shape; "
                            "'fixed' = --roi-shape voxels at nnU-Net's target spacing, zoomed out only for large "
                            "lesions (the rule of banks made before this flag; default: %(default)s)")
    crops.add_argument("--roi-shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                       help=f"crop voxels (default: {' '.join(map(str, DEFAULT_LESION_ROI_SHAPE))} for lesion, "
                            f"{' '.join(map(str, DEFAULT_ROI_SHAPE))} for fixed; the encoders' total stride is "
                            "8 x 16 x 16, other sizes are zero-padded up to a multiple)")
    crops.add_argument("--roi-context", type=float, default=None,
                       help=f"--roi-fov lesion: field of view / lesion extent, >= 1 (default: {DEFAULT_ROI_CONTEXT:g}"
                            ", i.e. half the lesion's extent of tissue on each side)")
    crops.add_argument("--roi-min-mm", type=float, default=None,
                       help=f"--roi-fov lesion: smallest field of view in mm, for small lesions (default: "
                            f"{DEFAULT_ROI_MIN_MM:g})")
    crops.add_argument("--overwrite-bank", action="store_true",
                       help="rebuild every case of the candidate bank (needed after changing the crop flags)")
    parser.add_argument("-np", type=int, default=2,
                        help="processes for the candidate bank build (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def bank_settings(args: argparse.Namespace):
    """The :class:`~nnunet_plus.classifier.bank_io.BankSettings` of the crop flags (unset flags: defaults)."""
    from nnunet_plus.classifier.bank_io import BankSettings

    given = {"roi_shape": args.roi_shape, "roi_context": args.roi_context, "roi_min_mm": args.roi_min_mm}
    return BankSettings(roi_fov=args.roi_fov, **{k: v for k, v in given.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # -h or a usage error: already printed
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from nnunet_plus.classifier.bank import bank_from_nnunet_results
    from nnunet_plus.classifier.bank_io import read_bank_metadata
    from nnunet_plus.classifier.inference import classifier_folder
    from nnunet_plus.classifier.splits import check_bank_for_fold, load_splits
    from nnunet_plus.classifier.operating_point import OPERATING_POINT_FILE
    from nnunet_plus.classifier.trainer import PLUSClassifierTrainer, TrainerSettings
    from nnunet_plus.classifier.fold_validation import NNUNET_KEY, PLUS_KEY
    from nnunet_plus.paths import PathError, dataset_name, nnunet_folder, resolve_device

    try:
        device = resolve_device(args.device)
        settings = TrainerSettings(epochs=args.epochs, batch_patients=args.batch_patients, learning_rate=args.lr,
                                   class_weight_power=args.class_weight_power, warm_start_l2=args.warm_start_l2,
                                   preset=args.preset, fusion=args.fusion, seed=args.seed,
                                   best_metric=args.best_metric, objective=args.objective)
        crop_settings = bank_settings(args)
        name = dataset_name(args.dataset)
        folder = classifier_folder(args.dataset, args.configuration, trainer=args.tr, plans=args.p)
        bank_dir = folder / "candidate_bank"
        paths = bank_from_nnunet_results(args.dataset, args.configuration, trainer=args.tr, plans=args.p,
                                         out_dir=bank_dir, settings=crop_settings, num_processes=args.np,
                                         overwrite=args.overwrite_bank, quiet=args.quiet,
                                         lesion_shuffles=args.lesion_shuffles, extra_dir=args.extra_cases)
        print(f"candidate bank: {len(paths)} case(s) in {bank_dir}")
        if args.build_bank_only:
            return 0
        splits = load_splits(nnunet_folder("nnUNet_preprocessed") / name / "splits_final.json")
        cases = check_bank_for_fold(read_bank_metadata(bank_dir)["cases"], splits, args.fold,
                                    train_command=f"nnUNetv2_train {args.dataset} {args.configuration} FOLD "
                                                  f"-tr {args.tr} -p {args.p}")
        trainer = PLUSClassifierTrainer(bank_dir, folder / f"fold_{args.fold}", fold=args.fold,
                                        train_cases=cases.train, val_cases=cases.val,
                                        raw_dataset_dir=nnunet_folder("nnUNet_raw") / name, dataset_name=name,
                                        settings=settings, device=device, quiet=args.quiet)
        summary = trainer.run_training(continue_training=args.c)
    except (ValueError, OSError, PathError) as exc:  # CandidateBankError, SplitError, SchemaError: ValueError
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    rows = []
    for key, label in ((NNUNET_KEY, "nnU-Net alone"), (PLUS_KEY, "nnU-Net + PLUS")):
        s = summary[key]
        rows.append(f"{label:15s} lesion F1 {_pct(s['lesion_level']['f1'])}, patient F1 malignant "
                    f"{_pct(s['patient_level']['malignant']['f1'])}, benign {_pct(s['patient_level']['benign']['f1'])}")
    print("\n".join(rows))
    for path in (trainer.output_folder / OPERATING_POINT_FILE, folder / OPERATING_POINT_FILE):
        print(f"{path}: {json.loads(path.read_text(encoding='utf-8'))['description']}")
    print(f"written to {trainer.output_folder} (validation/summary.json)")
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
