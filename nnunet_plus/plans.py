"""``nnunet_plus_plan_and_preprocess``: nnU-Net's planning and preprocessing, with a CT clipping window that
keeps hyperdense lesions.

nnU-Net's ``CTNormalization`` clips each CT channel to the 0.5 and 99.5 percentiles of the foreground voxels (every
labelled voxel) and then z-scores with their mean and sd. On non-contrast CT the foreground is mostly liver
(~55 HU), so the upper percentile lands near 70-80 HU and a calcified lesion (300-1,000 HU, far below 0.5 % of
the foreground voxels) is clipped to the value of bright liver: the network cannot see it (benchmarks/RESULTS.md,
"Stage one: the CT clipping window").

This command runs nnU-Net's three steps through its API (fingerprint, plans, preprocessing) and, between planning
and preprocessing, raises the upper clip of every CTNormalization channel to at least ``--ct_upper_hu`` (default
400 HU, well above the ~130 HU at which calcium is called). The mean and sd that z-score the image are nnU-Net's,
so the contrast inside the liver is what nnU-Net planned. The plans keep nnU-Net's own value under
``"nnunet_plus"``; training copies the plans into the model folder and prediction reads them there, so training
and prediction clip alike.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

from nnunet_plus.files.atomic import write_json_atomic
from nnunet_plus.paths import PathError, dataset_name, nnunet_folder

#: Default lowest upper clip (HU) of CT channels.
DEFAULT_CT_UPPER_HU = 400.0

_RECORD = "nnunet_plus"


def ct_channels(plans: dict) -> list[str]:
    """Channel indices (as the plans' string keys) that some configuration normalises with CTNormalization."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    channels = set()
    for name in plans.get("configurations", {}):
        schemes = manager.get_configuration(name).normalization_schemes
        channels.update(str(i) for i, scheme in enumerate(schemes) if scheme == "CTNormalization")
    return sorted(channels, key=int)


def raise_ct_upper_clip(plans: dict, *, upper_hu: float = DEFAULT_CT_UPPER_HU) -> dict:
    """A copy of nnU-Net ``plans`` whose CT channels clip at ``max(nnU-Net's percentile_99_5, upper_hu)`` HU.

    nnU-Net's own value is recorded in ``plans["nnunet_plus"]["ct_upper_clip_hu"][channel]["nnunet"]`` and used
    again when the function is applied a second time, so applying it twice equals applying it once with the
    second ``upper_hu``. ``plans`` is not modified. Raises ``ValueError`` for a non-finite ``upper_hu`` or a CT
    channel without foreground intensity properties.
    """
    if not math.isfinite(upper_hu):
        raise ValueError(f"upper_hu must be a finite number of HU, got {upper_hu}")
    result = copy.deepcopy(plans)
    properties = result.get("foreground_intensity_properties_per_channel", {})
    record = result.setdefault(_RECORD, {}).setdefault("ct_upper_clip_hu", {})
    for channel in ct_channels(result):
        if "percentile_99_5" not in properties.get(channel, {}):
            raise ValueError(f"the plans have no foreground intensity properties for CT channel {channel}")
        nnunet_value = float(record.get(channel, {}).get("nnunet", properties[channel]["percentile_99_5"]))
        properties[channel]["percentile_99_5"] = max(nnunet_value, float(upper_hu))
        record[channel] = {"nnunet": nnunet_value, "used": properties[channel]["percentile_99_5"]}
    return result


def ct_clip_is_raised(plans: dict) -> bool:
    """True when :func:`raise_ct_upper_clip` has been applied to ``plans`` (or it has no CT channel)."""
    record = plans.get(_RECORD, {}).get("ct_upper_clip_hu", {})
    return all(channel in record for channel in ct_channels(plans))


def raise_ct_upper_clip_file(plans_file: str | Path, *, upper_hu: float = DEFAULT_CT_UPPER_HU) -> dict:
    """Apply :func:`raise_ct_upper_clip` to a plans JSON file in place (atomically); returns the record."""
    plans_file = Path(plans_file)
    try:
        plans = json.loads(plans_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the plans {plans_file}: {exc}; run nnU-Net's planning again") from None
    try:
        plans = raise_ct_upper_clip(plans, upper_hu=upper_hu)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{plans_file}: {exc}") from None
    write_json_atomic(plans_file, plans)
    return plans[_RECORD]["ct_upper_clip_hu"]


def plan_and_preprocess(datasets: list[int], *, configurations: list[str], num_processes: list[int] | None = None,
                        fingerprint_processes: int = 8, verify_dataset_integrity: bool = False, clean: bool = False,
                        planner: str = "ExperimentPlanner", plans_name: str | None = None,
                        upper_hu: float = DEFAULT_CT_UPPER_HU, preprocess: bool = True) -> str:
    """nnU-Net's fingerprint extraction and planning, the raised CT clip, then preprocessing (nnU-Net's default
    processes per configuration when ``num_processes`` is None). Returns the plans identifier."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess as nnunet_preprocess)

    nnunet_folder("nnUNet_raw")
    preprocessed = nnunet_folder("nnUNet_preprocessed")
    names = [dataset_name(d) for d in datasets]  # clear errors for an unknown id before nnU-Net starts
    extract_fingerprints(datasets, num_processes=fingerprint_processes,
                         check_dataset_integrity=verify_dataset_integrity, clean=clean)
    plans_identifier = plan_experiments(datasets, planner, overwrite_plans_name=plans_name)
    for name in names:
        record = raise_ct_upper_clip_file(preprocessed / name / f"{plans_identifier}.json", upper_hu=upper_hu)
        for channel, clip in record.items():
            print(f"{name}: CT channel {channel} clipped at {clip['used']:g} HU (nnU-Net's 99.5th foreground "
                  f"percentile: {clip['nnunet']:g} HU)")
    if preprocess:
        default = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
        processes = num_processes or [default.get(c, 4) for c in configurations]
        nnunet_preprocess(datasets, plans_identifier, configurations, processes)
    return plans_identifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="nnUNetv2_plan_and_preprocess with a CT clipping window that keeps hyperdense lesions "
                    "(calcifications): the upper clip of CT channels is raised to at least --ct_upper_hu.")
    parser.add_argument("-d", nargs="+", type=int, required=True, help="dataset id(s)")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"],
                        help="configurations to preprocess (default: 2d 3d_fullres 3d_lowres)")
    parser.add_argument("-np", nargs="+", type=int, default=None,
                        help="processes per configuration (one number for all; default nnU-Net's)")
    parser.add_argument("-npfp", type=int, default=8, help="processes for fingerprint extraction (default: 8)")
    parser.add_argument("--verify_dataset_integrity", action="store_true", help="check the dataset first")
    parser.add_argument("--clean", action="store_true", help="extract the fingerprint again even if present")
    parser.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    parser.add_argument("-pl", default="ExperimentPlanner", help="nnU-Net experiment planner class")
    parser.add_argument("-overwrite_plans_name", default=None, help="custom plans identifier")
    parser.add_argument("--ct_upper_hu", type=float, default=DEFAULT_CT_UPPER_HU,
                        help="lowest upper clip of CT channels, HU (default: %(default)g)")
    args = parser.parse_args(argv)
    try:
        plan_and_preprocess(args.d, configurations=args.c, num_processes=args.np, fingerprint_processes=args.npfp,
                            verify_dataset_integrity=args.verify_dataset_integrity, clean=args.clean,
                            planner=args.pl, plans_name=args.overwrite_plans_name, upper_hu=args.ct_upper_hu,
                            preprocess=not args.no_pp)
    except (PathError, ValueError, OSError, RuntimeError, AssertionError) as exc:
        print(f"nnunet_plus_plan_and_preprocess: error: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
