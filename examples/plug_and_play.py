"""Plug-and-play: run nnunet_plus's stages on ANOTHER model's output (probability maps or label maps).

What it does
    1. (``write_probability_maps``) the few lines to add to your own model's inference so that nnunet_plus can
       read its softmax: one image per label value, ``<case>_XXXX.nii.gz`` = probability of label XXXX, on the
       CT's voxel grid, summing to 1 per voxel (background included);
    2. runs ``nnunet_plus_predict --from-probabilities DIR`` (or ``--from-segmentation DIR`` for plain label
       maps, whose prior becomes one-hot): multi-sensitivity, seg2det, LiverMax and, with ``--classifier``,
       the PLUS classifier trained for the dataset; writes ``<case>.nii.gz``, ``<case>_instances.nii.gz``,
       ``<case>.json`` (docs/case_json.md) and ``lesions.csv`` / ``patients.csv`` into ``-o``;
    3. prints the lesion table.

How to run it
    export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...   # nnU-Net's folders
    # the dataset (-d) gives the labels and the lesion schema (nnunet_plus_configure, examples/configure_dataset.sh)
    python examples/plug_and_play.py --from-probabilities my_model_probs/ -o out/ -d 501 [-i cts/]
    python examples/plug_and_play.py --from-segmentation my_model_labels/ -o out/ -d 501 [-i cts/]
    # nnU-Net's own exports work too: --from-probabilities a folder of nnUNetv2_predict --save_probabilities

``-i`` (the CTs, nnU-Net naming or plain ``<case>.nii.gz``) is optional: it adds the HU statistics of each
lesion and is required by the PLUS classifier (``--classifier``). Flags and input rules: docs/predict.md,
"Plug-and-play on another model's output".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_probability_maps(probabilities: np.ndarray, ct_path: str | Path, folder: str | Path, case: str) -> None:
    """Write a (K, Z, Y, X) softmax (K = the dataset's labels, channel k = label value k) as K images
    ``<case>_XXXX.nii.gz`` with the geometry (spacing, origin, direction) of the CT at ``ct_path``.

    The maps must be probabilities (a softmax over all labels, background included, summing to 1 per voxel)
    on the CT's own voxel grid: resample your model's output back to the CT before calling this.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    ct = sitk.ReadImage(str(ct_path))
    if probabilities.ndim != 4 or probabilities.shape[1:] != sitk.GetArrayViewFromImage(ct).shape:
        raise ValueError(f"probabilities must be (K, Z, Y, X) on the grid of {ct_path} "
                         f"{sitk.GetArrayViewFromImage(ct).shape}, got {probabilities.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for value, channel in enumerate(probabilities):
        image = sitk.GetImageFromArray(channel)
        image.CopyInformation(ct)
        sitk.WriteImage(image, str(folder / f"{case}_{value:04d}.nii.gz"), True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nnunet_plus on another model's probability or label maps")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-probabilities", type=Path, help="folder of <case>_XXXX.nii.gz probability maps "
                                                                "(or nnU-Net's <case>.npz + <case>.pkl)")
    source.add_argument("--from-segmentation", type=Path, help="folder of <case>.nii.gz label maps")
    parser.add_argument("-o", type=Path, required=True, help="output folder")
    parser.add_argument("-d", required=True, help="dataset id or name (its dataset.json holds the labels + schema)")
    parser.add_argument("-i", type=Path, default=None, help="optional folder of the CTs (HU statistics, classifier)")
    parser.add_argument("-c", default="3d_fullres", help="configuration of the PLUS classifier to use (--classifier)")
    parser.add_argument("-tr", default="nnUNetTrainerPLUS", help="trainer of the PLUS classifier (--classifier)")
    parser.add_argument("--classifier", action="store_true",
                        help="also run the PLUS classifier trained for -d / -c / -tr (needs -i)")
    args = parser.parse_args(argv)

    # 2. the command line tool, called in-process (the same as running `nnunet_plus_predict ...` in a shell)
    from nnunet_plus.predict.cli import main as nnunet_plus_predict

    command = ["--from-probabilities", str(args.from_probabilities)] if args.from_probabilities is not None \
        else ["--from-segmentation", str(args.from_segmentation)]
    command += ["-o", str(args.o), "-d", str(args.d), "-c", args.c, "-tr", args.tr, "--disable_progress_bar"]
    if args.i is not None:
        command += ["-i", str(args.i)]
    if not args.classifier:
        command.append("--no-classifier")
    code = nnunet_plus_predict(command)
    if code != 0:
        return code

    # 3. the cohort lesion table (one row per reported lesion, nested JSON keys flattened)
    import pandas as pd

    lesions = pd.read_csv(args.o / "lesions.csv")
    patients = pd.read_csv(args.o / "patients.csv")
    columns = [c for c in ("case", "id", "class", "volume_cm3", "axial_diameter_mm", "probability", "tier")
               if c in lesions.columns]
    print(f"{len(lesions)} lesion(s) in {len(patients)} case(s):")
    if len(lesions):
        print(lesions[columns].to_string(index=False))
    print(patients[["case", "class", "n_lesions"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
