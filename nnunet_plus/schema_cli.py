"""``nnunet_plus_configure``: write the ``"plus"`` lesion schema into a dataset's dataset.json."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nnunet_plus.files.atomic import check_replaceable
from nnunet_plus.paths import PathError, dataset_name, nnunet_folder
from nnunet_plus.schema import (DEFAULT_MAX_SUSPICIOUS, DEFAULT_MIN_LESION_VOLUME_MM3, SchemaError, build_schema,
                                 read_dataset_json, write_schema)


def dataset_json_paths(dataset: str | int) -> list[Path]:
    """The dataset.json files of a dataset in nnUNet_raw (required) and nnUNet_preprocessed (if present)."""
    name = dataset_name(dataset)
    raw = nnunet_folder("nnUNet_raw") / name / "dataset.json"
    if not raw.is_file():
        raise PathError(f"{raw} not found; create the raw dataset first (nnU-Net format)")
    paths = [raw]
    try:
        pre = nnunet_folder("nnUNet_preprocessed") / name / "dataset.json"
    except PathError:
        return paths
    if pre.is_file():
        paths.append(pre)
    return paths


def configure(dataset_json_files: list[Path], *, dataset_id=None, **schema_options) -> dict:
    """Build the schema against the first file's labels and write it into every file (through symbolic links);
    returns the block. Nothing is written when one of the files is read-only (:class:`PermissionError`)."""
    for path in dataset_json_files:
        check_replaceable(os.path.realpath(path))
    labels = read_dataset_json(dataset_json_files[0]).get("labels")
    if not isinstance(labels, dict):
        raise SchemaError(f"{dataset_json_files[0]} has no 'labels' block; it is not an nnU-Net dataset.json")
    schema = build_schema(labels, dataset_id=dataset_id, **schema_options)
    for path in dataset_json_files:
        write_schema(path, schema)
    return schema.to_block()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the nnunet_plus lesion schema (the 'plus' block) into a dataset's dataset.json. "
                    "Defaults: every non-background, non-liver label is a lesion; malignant/benign and "
                    "priority follow the nine PLUS lesion types.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-d", dest="dataset", help="dataset id or name (uses nnUNet_raw, and nnUNet_preprocessed "
                                                   "when the dataset is already preprocessed)")
    target.add_argument("--dataset-json", type=Path, help="a dataset.json file to edit instead")
    parser.add_argument("--liver", nargs="+", default=["liver"], help="liver label name(s)")
    parser.add_argument("--lesions", nargs="+", help="lesion label names, in the classifier's class order")
    parser.add_argument("--malignant", nargs="+", help="malignant lesion label names")
    parser.add_argument("--benign", nargs="+", help="benign lesion label names")
    parser.add_argument("--priority", nargs="+", help="classifyPatient priority, highest first")
    parser.add_argument("--sensitivities", nargs="+", type=float, default=[1.0, 4.0],
                        help="multi-sensitivity factors (default: 1 4)")
    parser.add_argument("--min-volume-mm3", type=float, default=DEFAULT_MIN_LESION_VOLUME_MM3,
                        help="drop smaller detections (default: %(default)s)")
    parser.add_argument("--max-suspicious", type=int, default=DEFAULT_MAX_SUSPICIOUS,
                        help="suspicious candidates kept per case, most probable first; 0 = all "
                             f"(default {DEFAULT_MAX_SUSPICIOUS})")
    parser.add_argument("--keep-all-liver-components", action="store_true",
                        help="keep every predicted liver region (default: only the largest connected one; liver "
                             "voxels elsewhere become background, lesions are never removed)")
    args = parser.parse_args(argv)
    try:
        files = [args.dataset_json] if args.dataset_json else dataset_json_paths(args.dataset)
        if not files[0].is_file():
            raise PathError(f"{files[0]} not found")
        block = configure(files, dataset_id=args.dataset, liver=args.liver, lesions=args.lesions,
                          malignant=args.malignant, benign=args.benign, priority=args.priority,
                          sensitivities=args.sensitivities, min_lesion_volume_mm3=args.min_volume_mm3,
                          max_suspicious_per_case=args.max_suspicious,
                          liver_largest_component=not args.keep_all_liver_components)
    except (SchemaError, PathError, OSError) as exc:
        print(f"nnunet_plus_configure: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(block, indent=2))
    for path in files:
        print(f"wrote the 'plus' block to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
