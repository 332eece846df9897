"""The candidate bank from nnU-Net's folders: the raw dataset (``nnUNet_raw``), the plans
(``nnUNet_preprocessed`` or the model folder) and the folds' ``validation/`` softmax exports (``nnUNet_results``).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_plus.classifier.bank import build_candidate_bank
from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.paths import PathError, dataset_name, nnunet_folder
from nnunet_plus.schema import LesionSchema

__all__ = ["bank_from_nnunet_results", "target_spacing_from_plans"]

logger = logging.getLogger(__name__)


def target_spacing_from_plans(plans: Mapping, configuration: str) -> tuple[float, ...]:
    """nnU-Net's target spacing (numpy order, mm) of ``configuration`` in a plans dict (``inherits_from``
    resolved)."""
    configurations = plans.get("configurations", {})
    seen: list[str] = []
    name = configuration
    while name not in seen:
        if name not in configurations:
            raise ValueError(f"configuration {name!r} not in the plans (available: {sorted(configurations)})")
        seen.append(name)
        if "spacing" in configurations[name]:
            return tuple(float(v) for v in configurations[name]["spacing"])
        name = configurations[name].get("inherits_from", name)
    raise ValueError(f"configuration {configuration!r} has no spacing in the plans (inheritance {seen})")


def bank_from_nnunet_results(dataset: str | int, configuration: str, *, trainer: str = "nnUNetTrainerPLUS",
                             plans: str = "nnUNetPlans", folds: Sequence[int] | None = None,
                             out_dir: str | os.PathLike | None = None, settings: BankSettings | None = None,
                             num_processes: int = 2, overwrite: bool = False, quiet: bool = False,
                             lesion_shuffles: int = 0, extra_dir: str | os.PathLike | None = None) -> list[Path]:
    """Build the bank from nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``).

    Uses the ``validation/`` softmax of the folds present (``folds=None``: every ``fold_<k>`` with exported
    probabilities), the raw dataset's images and labels, its dataset.json schema and the configuration's
    target spacing from the plans. ``out_dir`` defaults to
    ``$nnUNet_results/DatasetXXX/PLUSClassifier__<trainer>__<plans>__<configuration>/candidate_bank``.
    ``lesion_shuffles``: shuffled copies per case, ``extra_dir``: extra cases (:func:`build_candidate_bank`).
    """
    name = dataset_name(dataset)
    results = nnunet_folder("nnUNet_results") / name
    model_dir = results / f"{trainer}__{plans}__{configuration}"
    if not model_dir.is_dir():
        raise PathError(f"{model_dir} not found; train it first (nnUNetv2_train {dataset} {configuration} FOLD "
                        f"-tr {trainer} -p {plans})")
    if folds is None:
        fold_dirs = sorted((p for p in model_dir.glob("fold_*") if re.fullmatch(r"fold_\d+", p.name)
                            and any((p / "validation").glob("*.npz"))), key=lambda p: int(p.name[5:]))
        if not fold_dirs:
            raise PathError(f"no fold of {model_dir} has softmax exports in validation/; run the validation with "
                            f"probabilities (nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer} --val --npz)")
    else:
        fold_dirs = [model_dir / f"fold_{int(k)}" for k in folds]
        lacking = [str(p / "validation") for p in fold_dirs if not any((p / "validation").glob("*.npz"))]
        if lacking:
            raise PathError(f"no softmax export in {lacking}; run nnUNetv2_train {dataset} {configuration} FOLD "
                            f"-tr {trainer} --val --npz for those folds")
    raw = nnunet_folder("nnUNet_raw") / name
    schema = LesionSchema.from_dataset_json(raw / "dataset.json", dataset_id=dataset)
    plans_file = model_dir / "plans.json"
    if not plans_file.is_file():
        plans_file = nnunet_folder("nnUNet_preprocessed") / name / f"{plans}.json"
    if not plans_file.is_file():
        raise PathError(f"plans {plans_file} not found; run nnUNetv2_plan_and_preprocess -d {dataset}")
    target_spacing = target_spacing_from_plans(json.loads(plans_file.read_text()), configuration)
    if out_dir is None:
        out_dir = results / f"PLUSClassifier__{trainer}__{plans}__{configuration}" / "candidate_bank"
    logger.info("building the candidate bank of %s %s from folds %s", name, configuration,
                [p.name for p in fold_dirs])
    return build_candidate_bank(raw, [p / "validation" for p in fold_dirs], out_dir, schema,
                                target_spacing=target_spacing, settings=settings, num_processes=num_processes,
                                overwrite=overwrite, quiet=quiet, lesion_shuffles=lesion_shuffles,
                                extra_dir=extra_dir)
