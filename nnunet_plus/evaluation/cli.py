"""``nnunet_plus_evaluate``: the papers' lesion- and patient-level metrics for a folder of predictions."""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from nnunet_plus.cli_types import float_at_least, int_at_least
from nnunet_plus.paths import PathError, dataset_name, nnunet_folder
from nnunet_plus.schema import MIN_REFERENCE_VOLUME_CM3, LesionSchema, SchemaError
from nnunet_plus.files.atomic import write_json_atomic

PROG = "nnunet_plus_evaluate"
DEFAULT_SUMMARY_NAME = "nnunet_plus_summary.json"


def match_criterion(text: str) -> str:
    """argparse type: ``overlap`` or ``dice:T`` with 0 <= T < 1."""
    if text == "overlap":
        return text
    m = re.fullmatch(r"dice:([0-9]*\.?[0-9]+)", text)
    if m and 0.0 <= float(m.group(1)) < 1.0:
        return f"dice:{float(m.group(1)):g}"
    raise argparse.ArgumentTypeError(f"{text!r} is not 'overlap' or 'dice:T' with 0 <= T < 1 (e.g. dice:0.2)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Lesion-level (cascaded paper: TP / FL / FP / FN, precision, recall, recall-rough, volume "
                    "and radius bins) and patient-level (PLUS Table 1: malignant / benign / screening, "
                    "three-class accuracy, AUCs, FROC, Dice) evaluation of a prediction folder.")
    p.add_argument("-ref", required=True, type=Path, help="folder of reference label maps <case>.nii.gz")
    p.add_argument("-pred", required=True, type=Path,
                   help="folder of predicted label maps (<case>.json and <case>_instances.nii.gz used when present)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-d", dest="dataset", help="dataset id or name: reads $nnUNet_raw/DatasetXXX_Name/dataset.json")
    src.add_argument("--schema", type=Path, help="a dataset.json holding the 'plus' lesion schema")
    p.add_argument("--match", type=match_criterion, default="overlap",
                   help="lesion match criterion: 'overlap' (any shared voxel, the cascaded paper) or 'dice:T' "
                        "(Dice > T, PLAN uses dice:0.2); default overlap")
    p.add_argument("--min-volume", type=float_at_least(0.0), default=MIN_REFERENCE_VOLUME_CM3, metavar="CM3",
                   help="reference lesions smaller than this (cm3) are ignored; default "
                        f"{MIN_REFERENCE_VOLUME_CM3:g} (the cascaded paper)")
    p.add_argument("--baseline", type=Path, metavar="OTHER_PRED_DIR",
                   help="a second prediction folder (e.g. nnU-Net alone) to print side by side with deltas")
    p.add_argument("-o", dest="output", type=Path,
                   help=f"summary JSON to write; default PRED/{DEFAULT_SUMMARY_NAME} (with --baseline also "
                        "<name>_baseline.json and <name>_comparison.json beside it)")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots into this folder")
    p.add_argument("--allow-missing", action="store_true",
                   help="count reference cases without a prediction as all false negatives instead of failing")
    p.add_argument("-np", dest="num_processes", type=int_at_least(1), default=None,
                   help="worker processes (default: nnU-Net's default_num_processes)")
    p.add_argument("--connectivity", default="paper", choices=["paper", "6", "18", "26"],
                   help="lesion connectivity of seg2det (default 'paper': 2D components linked across slices)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no tables")
    return p


def resolve_schema(dataset: str | None, schema_path: Path | None, reference_dir: Path,
                   prediction_dir: Path) -> LesionSchema:
    """Schema from ``--schema``, ``-d`` or, failing both, a dataset.json in PRED (nnU-Net copies it there) or
    beside REF (nnU-Net raw layout)."""
    if schema_path is not None:
        return LesionSchema.from_dataset_json(schema_path)
    if dataset is not None:
        name = dataset_name(dataset)
        return LesionSchema.from_dataset_json(nnunet_folder("nnUNet_raw") / name / "dataset.json", dataset_id=dataset)
    for candidate in (prediction_dir / "dataset.json", reference_dir.parent / "dataset.json"):
        if candidate.is_file():
            logging.getLogger(__name__).info("lesion schema from %s", candidate)
            return LesionSchema.from_dataset_json(candidate)
    raise SchemaError(f"no lesion schema: neither {(prediction_dir / 'dataset.json').resolve()} nor "
                      f"{(reference_dir.parent / 'dataset.json').resolve()} exists; pass -d DATASET or --schema "
                      "path/to/dataset.json")


def _companion(output: Path, tag: str) -> Path:
    stem = output.name[:-5] if output.name.endswith(".json") else output.name
    return output.with_name(f"{stem}_{tag}.json")


def check_outputs(outputs: Sequence[Path], reference_dir: Path, prediction_dirs: Sequence[Path],
                  file_ending: str = ".nii.gz", schema_files: Sequence[Path] = ()) -> None:
    """Raise ValueError (one line naming both) when an output file would replace a file the evaluation reads: a
    reference label map, a prediction folder's ``<case><file_ending>``, ``<case>.json`` or
    ``<case>_instances<file_ending>`` (a case named ``nnunet_plus_summary`` meets the default ``-o``), or one of
    ``schema_files`` (the dataset.json files the schema may come from)."""
    from nnunet_plus.evaluation.folder import INSTANCES_SUFFIX, list_cases

    cases = list_cases(reference_dir, file_ending)
    inputs = {Path(p).resolve(): None for p in schema_files}
    inputs.update({(reference_dir / f"{c}{file_ending}").resolve(): c for c in cases})
    for folder in prediction_dirs:
        for case in cases:
            for name in (f"{case}{file_ending}", f"{case}.json", f"{case}{INSTANCES_SUFFIX}{file_ending}"):
                inputs[(folder / name).resolve()] = case
    for output in outputs:
        path = Path(output).resolve()
        if path in inputs:
            case = inputs[path]
            what = "the lesion schema's dataset.json" if case is None else f"a file of case {case!r}"
            raise ValueError(f"the output {output} is {what} that the evaluation reads; pass another -o (e.g. "
                             "outside the prediction folder)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # -h or a usage error: already printed
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    from nnunet_plus.evaluation.folder import evaluate_folders
    from nnunet_plus.evaluation.summary import compare_summaries, format_comparison, format_summary

    connectivity = args.connectivity if args.connectivity == "paper" else int(args.connectivity)
    options = {"criterion": args.match, "min_volume_cm3": args.min_volume, "allow_missing": args.allow_missing,
               "num_processes": args.num_processes, "connectivity": connectivity, "quiet": args.quiet}
    output = args.output or args.pred / DEFAULT_SUMMARY_NAME
    try:
        schema = resolve_schema(args.dataset, args.schema, args.ref, args.pred)
        schema_files = [args.schema or args.pred / "dataset.json", args.ref.parent / "dataset.json"]
        if args.dataset is not None:
            schema_files.append(nnunet_folder("nnUNet_raw") / dataset_name(args.dataset) / "dataset.json")
        check_outputs([output, *([_companion(output, "baseline"), _companion(output, "comparison")]
                                 if args.baseline else [])], args.ref, [args.pred, *filter(None, [args.baseline])],
                      schema_files=schema_files)
        summary = evaluate_folders(args.ref, args.pred, schema, **options)
        baseline = evaluate_folders(args.ref, args.baseline, schema, **options) if args.baseline else None
        write_json_atomic(output, summary)
        if baseline is not None:
            write_json_atomic(_companion(output, "baseline"), baseline)
            write_json_atomic(_companion(output, "comparison"), compare_summaries(baseline, summary))
        if args.plots is not None:
            from nnunet_plus.evaluation.plots import save_plots

            runs = {"baseline": baseline, "ours": summary} if baseline is not None else {"ours": summary}
            save_plots(runs, args.plots)
    except (ValueError, OSError, PathError) as exc:  # SchemaError is a ValueError
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        if baseline is not None:
            print(format_summary(baseline, title=f"Baseline: {args.baseline}"))
            print()
        print(format_summary(summary, title=f"Predictions: {args.pred}"))
        if baseline is not None:
            print()
            print(format_comparison(baseline, summary, names=("baseline", "ours")))
        print(f"\nsummary written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
