"""``nnunet_plus_ct_window``: widen nnU-Net's CT intensity window so that no label class is clipped away.

nnU-Net's ``CTNormalization`` clips every CT channel to the 0.5th-99.5th percentiles of the *pooled* foreground
voxels (the plans' ``foreground_intensity_properties_per_channel``). In liver CT the liver fills almost all of
that foreground, so a rare, small and bright class is clipped to the top of the liver's range: on the demo's
non-contrast phantom the window is [-28, 70] HU and calcifications (100-700 HU after partial volume) become
as bright as liver noise, and stage one never finds one. This command computes the same percentiles per label
class (each class on its own voxels, up to ``SAMPLES_PER_CLASS`` per case) and widens the window to the union
of the classes' 0.5-99.5th percentile ranges; it never narrows it, and leaves the mean and std (the z-scoring)
as nnU-Net planned. On the demo's phantom (seed 0) the window becomes [-29, 684] HU and stage one found 5 of the
5 test calcifications (0 of 5 before). A narrower widening, to the nearest 0.5th percentile of a class outside
the window ([-28, 263] HU, where every calcification voxel is clipped to the top), found none of them in one
demo run, so the whole range is kept; this rests on two single runs.

Run it between planning and preprocessing::

    nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres --no_pp
    nnunet_plus_ct_window -d 501
    nnUNetv2_preprocess -d 501 -c 3d_fullres

The plans keep nnU-Net's window and the per-class figures under ``"nnunet_plus_ct_window"``, so a second run
starts again from nnU-Net's own window (same result) and a reader sees what was changed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from nnunet_plus.files.atomic import write_json_atomic
from nnunet_plus.files.image_io import ImageReadError, read_image
from nnunet_plus.paths import PathError, dataset_name, nnunet_folder

__all__ = ["PLANS_KEY", "SAMPLES_PER_CLASS", "class_percentiles", "widen_plans_window", "main"]

PLANS_KEY = "nnunet_plus_ct_window"
#: voxels drawn per class and case (nnU-Net's fingerprint draws 10000 foreground voxels per case)
SAMPLES_PER_CLASS = 10000
PERCENTILES = (0.5, 99.5)


class WindowError(RuntimeError):
    """A dataset or plans file this command cannot use (the message names the file and what to do)."""


def _ct_channels(plans: Mapping, plans_file: Path) -> list[str]:
    """The channel indices (as strings) that some configuration normalises with CTNormalization."""
    channels = set()
    for name, configuration in dict(plans.get("configurations", {})).items():
        for index, scheme in enumerate(configuration.get("normalization_schemes", []) or []):
            if scheme == "CTNormalization":
                channels.add(str(index))
    if "foreground_intensity_properties_per_channel" not in plans:
        raise WindowError(f"{plans_file} has no 'foreground_intensity_properties_per_channel'; it is not an "
                          "nnU-Net v2 plans file (run nnUNetv2_plan_and_preprocess --no_pp first)")
    return sorted(channels, key=int)


def _array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise WindowError(f"{path} not found; every training case needs its image and label (nnU-Net format)")
    try:
        return sitk.GetArrayFromImage(read_image(path))
    except ImageReadError as error:
        raise WindowError(str(error)) from None


def class_percentiles(raw_dataset: Path, channels: list[str], labels: Mapping[str, int], file_ending: str, *,
                      seed: int = 1234) -> dict[str, dict[str, list[float]]]:
    """``{channel: {class name: [p0.5, p99.5]}}`` of each label class's own voxels (up to
    :data:`SAMPLES_PER_CLASS` per case and class, drawn with a fixed seed) over ``raw_dataset``'s training cases;
    classes without a voxel are left out."""
    rng = np.random.default_rng(seed)
    label_files = sorted((raw_dataset / "labelsTr").glob(f"*{file_ending}"))
    if not label_files:
        raise WindowError(f"{raw_dataset / 'labelsTr'} holds no '*{file_ending}' label; nothing to measure")
    samples = {c: {name: [] for name in labels} for c in channels}
    for label_file in label_files:
        case = label_file.name[: -len(file_ending)]
        label = _array(label_file)
        for c in channels:
            image = _array(raw_dataset / "imagesTr" / f"{case}_{int(c):04d}{file_ending}")
            if image.shape != label.shape:
                raise WindowError(f"{label_file}: shape {label.shape} differs from its image {image.shape}; "
                                  "fix the case or remove it")
            for name, value in labels.items():
                values = image[label == value]
                if values.size > SAMPLES_PER_CLASS:
                    values = rng.choice(values, SAMPLES_PER_CLASS, replace=False)
                samples[c][name].append(values.astype(np.float64))
    return {c: {name: [float(v) for v in np.percentile(np.concatenate(parts), PERCENTILES)]
                for name, parts in per_class.items() if sum(p.size for p in parts) > 0}
            for c, per_class in samples.items()}


def widen_plans_window(plans: dict, per_class: Mapping[str, Mapping[str, list[float]]]) -> dict:
    """Widen each channel's ``percentile_00_5`` / ``percentile_99_5`` from nnU-Net's window (kept under
    :data:`PLANS_KEY`, so that repeated calls start from it) to the union with every class's range (``per_class``:
    [p0.5, p99.5] per class name); returns ``plans``."""
    properties = plans["foreground_intensity_properties_per_channel"]
    record = plans.get(PLANS_KEY, {})
    original = {c: list(v) for c, v in dict(record.get("nnunet_window", {})).items()}
    for c, classes in per_class.items():
        nnunet_window = original.setdefault(c, [properties[c]["percentile_00_5"], properties[c]["percentile_99_5"]])
        properties[c]["percentile_00_5"] = min([nnunet_window[0], *(v[0] for v in classes.values())])
        properties[c]["percentile_99_5"] = max([nnunet_window[1], *(v[1] for v in classes.values())])
    plans[PLANS_KEY] = {"nnunet_window": original, "class_percentiles": {c: dict(v) for c, v in per_class.items()},
                        "window": {c: [properties[c]["percentile_00_5"], properties[c]["percentile_99_5"]]
                                   for c in per_class}}
    return plans


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise WindowError(f"{path} not found; run nnUNetv2_plan_and_preprocess -d ID --no_pp first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WindowError(f"{path}: not a readable JSON file ({error}); plan the dataset again") from None
    if not isinstance(data, dict):
        raise WindowError(f"{path}: not a JSON object; plan the dataset again")
    return data


def _label_classes(dataset_json: Mapping, path: Path) -> dict[str, int]:
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise WindowError(f"{path} has no 'labels' block; it is not an nnU-Net dataset.json")
    classes = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise WindowError(f"{path}: label {name!r} is {value!r}; region-based labels are not supported")
        if value > 0:
            classes[name] = value
    return classes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Widen the CT intensity window of a dataset's nnU-Net plans to "
                                     "every label class's 0.5-99.5th percentile range (run between "
                                     "nnUNetv2_plan_and_preprocess --no_pp and nnUNetv2_preprocess).")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        name = dataset_name(args.dataset)
        raw = nnunet_folder("nnUNet_raw") / name
        plans_file = nnunet_folder("nnUNet_preprocessed") / name / f"{args.plans}.json"
        plans = _read_json(plans_file)
        dataset_json = _read_json(raw / "dataset.json")
        channels = _ct_channels(plans, plans_file)
        if not channels:
            print(f"nnunet_plus_ct_window: {plans_file} normalises no channel with CTNormalization; nothing to do")
            return 0
        per_class = class_percentiles(raw, channels, _label_classes(dataset_json, raw / "dataset.json"),
                                      str(dataset_json.get("file_ending", ".nii.gz")))
        widen_plans_window(plans, per_class)
        write_json_atomic(plans_file, plans)
    except (WindowError, PathError, OSError) as error:
        print(f"nnunet_plus_ct_window: error: {error}", file=sys.stderr)
        return 1
    record = plans[PLANS_KEY]
    for c in channels:
        ranges = ", ".join(f"{name} [{low:.0f}, {high:.0f}]" for name, (low, high) in per_class[c].items())
        before, after = ("[{:.1f}, {:.1f}]".format(*record[key][c]) for key in ("nnunet_window", "window"))
        print(f"channel {c}: CT window {before} -> {after} HU (0.5-99.5th percentiles per class: {ranges}); "
              f"written to {plans_file}")
    print("now run nnUNetv2_preprocess (preprocessed data made with the old window is stale)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
