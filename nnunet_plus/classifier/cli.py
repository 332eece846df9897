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
   checkpoints, history.json, validation/summary.json: nnU-Net alone vs nnU-Net + PLUS). When its training
   cases hold no lesion candidate the command writes ``fold_FOLD/skipped.json`` (``{"reason": ...}``) and
   exits 1.

The work is :func:`nnunet_plus.classifier.trainer.train_fold.train_classifier_fold`; this module parses the
flags and prints.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from nnunet_plus.cli_types import int_at_least

PROG = "nnunet_plus_train_classifier"


def build_parser() -> argparse.ArgumentParser:
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
    _add_training_options(parser)
    _add_bank_options(parser)
    parser.add_argument("-np", type=int, default=2,
                        help="processes for the candidate bank build (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """The trainer's flags (:class:`~nnunet_plus.classifier.trainer.settings.TrainerSettings`)."""
    from nnunet_plus.classifier.encoders import ENCODER_PRESETS
    from nnunet_plus.classifier.fusion import FUSION_MODES
    from nnunet_plus.classifier.operating_point import OBJECTIVES
    from nnunet_plus.classifier.trainer.settings import BEST_METRICS, TrainerSettings

    defaults = TrainerSettings()
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


def _add_bank_options(parser: argparse.ArgumentParser) -> None:
    """The candidate bank's flags (the crop flags in their own group)."""
    from nnunet_plus.classifier.crops import (DEFAULT_LESION_ROI_SHAPE, DEFAULT_ROI_CONTEXT, DEFAULT_ROI_MIN_MM,
                                              DEFAULT_ROI_SHAPE, ROI_FOV_RULES)

    parser.add_argument("--build-bank-only", action="store_true", help="build / complete the candidate bank and stop")
    parser.add_argument("--lesion-shuffles", type=int_at_least(0), default=0, metavar="K",
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


def bank_settings(args: argparse.Namespace):
    """The :class:`~nnunet_plus.classifier.bank_settings.BankSettings` of the crop flags (unset flags: defaults)."""
    from nnunet_plus.classifier.bank_settings import BankSettings

    given = {"roi_shape": args.roi_shape, "roi_context": args.roi_context, "roi_min_mm": args.roi_min_mm}
    return BankSettings(roi_fov=args.roi_fov, **{k: v for k, v in given.items() if v is not None})


def trainer_settings(args: argparse.Namespace):
    """The :class:`~nnunet_plus.classifier.trainer.settings.TrainerSettings` of the training flags."""
    from nnunet_plus.classifier.trainer.settings import TrainerSettings

    return TrainerSettings(epochs=args.epochs, batch_patients=args.batch_patients, learning_rate=args.lr,
                           class_weight_power=args.class_weight_power, warm_start_l2=args.warm_start_l2,
                           preset=args.preset, fusion=args.fusion, seed=args.seed, best_metric=args.best_metric,
                           objective=args.objective)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # -h or a usage error: already printed
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from nnunet_plus.classifier.inference import classifier_folder
    from nnunet_plus.classifier.trainer.fold_files import NoCandidateError, clear_skipped, write_skipped
    from nnunet_plus.classifier.trainer.train_fold import build_classifier_bank, train_classifier_fold
    from nnunet_plus.paths import PathError, resolve_device

    fold_folder = None
    try:
        device = resolve_device(args.device)
        settings = trainer_settings(args)
        options = dict(trainer=args.tr, plans=args.p, bank_settings=bank_settings(args), num_processes=args.np,
                       overwrite_bank=args.overwrite_bank, lesion_shuffles=args.lesion_shuffles,
                       extra_cases=args.extra_cases, quiet=args.quiet)
        if args.build_bank_only:
            bank_dir, files = build_classifier_bank(args.dataset, args.configuration, **options)
            print(f"candidate bank: {len(files)} case(s) in {bank_dir}")
            return 0
        fold_folder = classifier_folder(args.dataset, args.configuration, trainer=args.tr, plans=args.p) / \
            f"fold_{args.fold}"
        clear_skipped(fold_folder)
        result = train_classifier_fold(args.dataset, args.configuration, args.fold, settings=settings, device=device,
                                       continue_training=args.c, **options)
    except NoCandidateError as exc:  # stage one gave nothing to learn from: recorded for scripts (the demo)
        write_skipped(fold_folder, str(exc))
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, PathError) as exc:  # CandidateBankError, SplitError, SchemaError: ValueError
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    _print_result(result)
    return 0


def _print_result(result) -> None:
    """The bank size, both methods' validation figures, the operating points and where it all went."""
    from nnunet_plus.classifier.fold_validation import NNUNET_KEY, PLUS_KEY
    from nnunet_plus.classifier.operating_point import OPERATING_POINT_FILE

    print(f"candidate bank: {len(result.bank_files)} case(s) in {result.bank_dir}")
    rows = []
    for key, label in ((NNUNET_KEY, "nnU-Net alone"), (PLUS_KEY, "nnU-Net + PLUS")):
        s = result.summary[key]
        rows.append(f"{label:15s} lesion F1 {_pct(s['lesion_level']['f1'])}, patient F1 malignant "
                    f"{_pct(s['patient_level']['malignant']['f1'])}, benign {_pct(s['patient_level']['benign']['f1'])}")
    print("\n".join(rows))
    for path in (result.fold_folder / OPERATING_POINT_FILE, result.fold_folder.parent / OPERATING_POINT_FILE):
        print(f"{path}: {json.loads(path.read_text(encoding='utf-8'))['description']}")
    print(f"written to {result.fold_folder} (validation/summary.json)")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
