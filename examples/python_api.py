"""The Python API: predict a folder of CTs, read the lesion table into pandas, evaluate against references.

What it does
    1. loads a trained model from $nnUNet_results (nnU-Net folds + the PLUS classifier when one is trained)
       with ``PLUSPredictor.from_dataset`` and predicts every CT of ``--images`` into ``--output``
       (the same files as ``nnunet_plus_predict``: per case ``<case>.nii.gz``, ``<case>_instances.nii.gz``,
       ``<case>.json``; per run ``lesions.csv``, ``patients.csv``);
    2. reads ``lesions.csv`` and ``patients.csv`` into pandas and prints a few views of them;
    3. with ``--labels``, evaluates the predictions against the reference label maps
       (``nnunet_plus.evaluation.folder.evaluate_folders``: the papers' lesion- and patient-level metrics) and
       writes the summary to ``<output>/nnunet_plus_summary.json`` (as ``nnunet_plus_evaluate`` does).

How to run it
    export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...
    python examples/python_api.py -d 501 -c 3d_fullres -tr nnUNetTrainerPLUS -f 0 1 2 3 4 \
        --images imagesTs/ --output predictions/ [--labels labelsTs/] [--device cuda] [--no-classifier]

Inputs follow nnunet_plus_predict's naming rule (nnU-Net's ``<case>_0000.nii.gz``, plain ``<case>.nii.gz``,
DICOM series folders); references are ``<case>.nii.gz`` label maps with the dataset's label values.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nnunet_plus Python API: predict, read the tables, evaluate")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="nnU-Net configuration")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerPLUS", help="nnU-Net trainer of the model")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: every trained fold)")
    parser.add_argument("--images", type=Path, required=True, help="folder of CTs to predict")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--labels", type=Path, default=None, help="folder of reference label maps (evaluation)")
    parser.add_argument("--device", default=None, help="cuda, cpu or mps (default: cuda when available)")
    parser.add_argument("--no-classifier", action="store_true", help="nnU-Net alone (skip the PLUS classifier)")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (faster)")
    parser.add_argument("--workers", type=int, default=2,
                        help="preprocessing / export threads and evaluation processes (default 2)")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from nnunet_plus.evaluation.folder import evaluate_folders
    from nnunet_plus.evaluation.summary import format_summary
    from nnunet_plus.predict.predictor import PLUSPredictor

    # 1. predict a folder ------------------------------------------------------------------------------------
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    folds = None if args.folds is None else [int(f) if f.isdigit() else f for f in args.folds]
    predictor = PLUSPredictor.from_dataset(args.dataset, args.configuration, trainer=args.trainer, folds=folds,
                                           device=device, use_mirroring=not args.disable_tta,
                                           use_classifier=not args.no_classifier, allow_tqdm=False)
    report = predictor.predict_folder(args.images, args.output, num_processes_preprocessing=args.workers,
                                      num_processes_export=args.workers)
    print(f"predicted {len(report.done)} case(s), {len(report.failures)} failed -> {args.output}")
    for failure in report.failures:
        print(f"  {failure.case}: {failure.error}", file=sys.stderr)
    if not report.ok:
        return 1

    # 2. the lesion table (one row per reported lesion) and the patient table (one row per case) -------------
    lesions = pd.read_csv(args.output / "lesions.csv")
    patients = pd.read_csv(args.output / "patients.csv")
    print(f"\n{len(lesions)} lesion(s) in {len(patients)} case(s)")
    if len(lesions):
        largest = lesions.sort_values("volume_cm3", ascending=False)
        print(largest[["case", "id", "class", "volume_cm3", "axial_diameter_mm", "probability", "tier"]].head(20)
              .to_string(index=False) + (f"\n... and {len(lesions) - 20} smaller" if len(lesions) > 20 else ""))
        print("\nlesions per class:\n" + lesions["class"].value_counts().to_string())
        big = lesions[lesions["volume_cm3"] >= 1.0]
        print("\nlesions of 1 cm3 or more, per case and class:\n" +
              (big.groupby(["case", "class"]).size().to_string() if len(big) else "none"))
    print("\npatients:\n" + patients[["case", "class", "n_lesions", "probabilities_tumor",
                                       "probabilities_malignant"]].to_string(index=False))

    # 3. evaluate against reference label maps ------------------------------------------------------------------
    if args.labels is not None:
        summary = evaluate_folders(args.labels, args.output, predictor.schema, num_processes=args.workers,
                                   quiet=True)
        (args.output / "nnunet_plus_summary.json").write_text(json.dumps(summary, indent=2))
        print("\n" + format_summary(summary, title=f"Predictions: {args.output}"))

        def show(value):  # undefined ratios are None (e.g. no reference lesion at all)
            return "n/a" if value is None else f"{value:.3f}"

        print(f"\nlesion F1 {show(summary['lesion_level']['f1'])}, liver Dice {show(summary['dice']['liver']['mean'])}"
              f", screening accuracy {show(summary['patient_level']['screening']['accuracy'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
