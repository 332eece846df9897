"""``nnunet_plus_make_phantom``: write a synthetic non-contrast liver CT cohort in nnU-Net raw format."""
from __future__ import annotations

import argparse
import logging
import sys

from nnunet_plus.phantom.dataset import DEFAULT_CASE_PREFIX, DEFAULT_SHAPE, DEFAULT_SPACING, make_phantom_dataset
from nnunet_plus.phantom.lesions import LESION_TYPES
from nnunet_plus.phantom.preview import write_preview


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_plus_make_phantom",
        description="Generate a deterministic synthetic non-contrast liver CT cohort (body, organs, liver "
                    "conditions, focal liver lesions) as an nnU-Net v2 raw dataset DatasetXXX_LiverPhantom.")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    parser.add_argument("-n", "--n-train", type=int, required=True, help="number of training cases")
    parser.add_argument("--n-test", type=int, default=20, help="number of test cases (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default: 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(DEFAULT_SHAPE),
                        help="voxels per case (default: %(default)s)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("z", "y", "x"), default=list(DEFAULT_SPACING),
                        help="voxel spacing in mm (default: %(default)s)")
    parser.add_argument("--origin", type=float, nargs=3, metavar=("z", "y", "x"),
                        help="world position (mm) of voxel (0, 0, 0) (default: volume centred on 0)")
    parser.add_argument("--healthy-fraction", type=float, default=0.3,
                        help="share of lesion-free subjects per split (default: 0.3)")
    parser.add_argument("--lesion-types", nargs="+", metavar="TYPE",
                        help=f"lesion types to include (default: all of {' '.join(LESION_TYPES)})")
    parser.add_argument("--conspicuity", type=float, default=1.0,
                        help="lesion-to-liver contrast x C and CT noise / C; 1 = realistic subtle NCCT lesions "
                             "(default), the demo uses a higher value so a short CPU training learns them")
    parser.add_argument("--case-prefix", default=DEFAULT_CASE_PREFIX, metavar="PREFIX",
                        help="case ids are PREFIX_0000, PREFIX_0001, ... (1 to 32 ASCII letters or digits; default: "
                             "%(default)s); give a second cohort, e.g. an extra cohort to be predicted by models "
                             "trained on the first, another prefix so that its case ids do not collide. The prefix "
                             "does not change the images")
    parser.add_argument("--out", help="parent folder of the dataset (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.add_argument("-np", "--num-processes", type=int, help="worker processes (default: CPU count, max 8)")
    parser.add_argument("--preview", metavar="PNG", help="also draw a few cases' axial slices with label contours")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        folder = make_phantom_dataset(
            args.dataset_id, args.n_train, n_test=args.n_test, seed=args.seed, shape=args.shape,
            spacing=args.spacing, origin=args.origin, healthy_fraction=args.healthy_fraction,
            lesion_types=args.lesion_types, out_dir=args.out, overwrite=args.overwrite,
            num_processes=args.num_processes, quiet=args.quiet, conspicuity=args.conspicuity,
            case_prefix=args.case_prefix)
        if args.preview:
            png = write_preview(folder, args.preview)
    except (ValueError, OSError) as exc:
        print(f"nnunet_plus_make_phantom: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"nnunet_plus_make_phantom: error: out of memory ({exc}); choose a smaller --shape or fewer "
              "processes (-np)", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    if args.preview:
        print(f"wrote {png}")
    return 0
