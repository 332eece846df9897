"""Which bank cases the classifier of fold k trains and validates on (nnU-Net's ``splits_final.json``).

Fold k of the classifier trains on the candidates of nnU-Net fold k's **training** cases and validates on
fold k's **validation** cases. Every bank case must come from an *out-of-fold* softmax: the ``validation/``
export of an nnU-Net fold that did not train on it. So a training case of fold k needs the validation
export of another fold j (the one whose validation set holds it), and the classifier of fold k never sees a
candidate of its own validation cases nor one made by a network that trained on that case.

:func:`fold_cases` reads the split, :func:`check_bank_for_fold` checks that the bank holds every case the
fold needs and that none of them leaks (a case exported by a fold that trained on it, a case in both
sets); errors name the cases and the nnU-Net folds to train or validate.

Lesion-shuffled copies (``bank.json`` entries with ``"shuffle_of": <original>``, see
:mod:`nnunet_plus.classifier.shuffle`) are not in nnU-Net's split: a copy is a training case of fold k exactly
when its original is, and never a validation case (a copy of a validation case would show the fold its own
validation lesions).

Extra cases (``"extra": true``, see :mod:`nnunet_plus.classifier.bank`: labelled cases no nnU-Net fold trained
on, predicted by the trained folds) are not in the split either. They must not be named by it (a case nnU-Net
trained on would leak). In sorted order, extra case ``i`` validates fold ``i % n_folds`` and trains every other
fold, so each classifier fold gets more lesions to learn from and more patients to fit its operating point on;
their shuffled copies follow them like any training case's.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["FoldCases", "SplitError", "check_bank_for_fold", "fold_cases", "load_splits", "softmax_fold",
           "two_fold_split"]

_FOLD_DIR = re.compile(r"fold_(\d+)")


class SplitError(ValueError):
    """The split file is missing or malformed, or the bank does not fit the split; the message says why."""


@dataclass(frozen=True)
class FoldCases:
    """The case identifiers of one fold (sorted)."""

    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]


def two_fold_split(case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """A 2-fold ``splits_final.json`` content over the sorted ``case_ids`` (alternate cases): the validations of
    folds 0 and 1 give every case an out-of-fold softmax from only two trainings."""
    cases = sorted(case_ids)
    return [{"train": cases[1::2], "val": cases[0::2]}, {"train": cases[0::2], "val": cases[1::2]}]


def load_splits(path: str | os.PathLike) -> list[dict[str, list[str]]]:
    """Read nnU-Net's ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``, one per fold."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path} not found; nnUNetv2_train writes it on its first run (or write your own "
                         "splits_final.json into the preprocessed dataset folder)")
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SplitError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(splits, list) or not splits or any(
            not isinstance(s, Mapping) or not isinstance(s.get("train"), list) or not isinstance(s.get("val"), list)
            for s in splits):
        raise SplitError(f"{path} must be a non-empty list of {{'train': [...], 'val': [...]}} entries")
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def fold_cases(splits: Sequence[Mapping[str, Sequence[str]]], fold: int) -> FoldCases:
    """The training and validation cases of ``fold``; :class:`SplitError` if the fold does not exist or its two
    sets overlap."""
    if not 0 <= int(fold) < len(splits):
        raise SplitError(f"fold {fold} is not in the split (folds 0..{len(splits) - 1})")
    train, val = sorted(set(splits[fold]["train"])), sorted(set(splits[fold]["val"]))
    both = sorted(set(train) & set(val))
    if both:
        raise SplitError(f"fold {fold} has case(s) in both its training and validation sets: {both[:5]}")
    if not train or not val:
        raise SplitError(f"fold {fold} has an empty training or validation set")
    return FoldCases(int(fold), tuple(train), tuple(val))


def softmax_fold(softmax_path: str | os.PathLike) -> int | None:
    """The nnU-Net fold whose ``validation/`` export a softmax file is (``.../fold_3/validation/x.npz`` -> 3);
    None for other folders (e.g. a ``--save_probabilities`` prediction folder)."""
    path = Path(softmax_path)
    if path.parent.name != "validation":
        return None
    match = _FOLD_DIR.fullmatch(path.parent.parent.name)
    return int(match.group(1)) if match else None


def _validation_fold(splits: Sequence[Mapping[str, Sequence[str]]], case: str) -> list[int]:
    return [k for k, s in enumerate(splits) if case in s["val"]]


def check_bank_for_fold(bank_cases: Mapping[str, Mapping], splits: Sequence[Mapping[str, Sequence[str]]],
                        fold: int, *, train_command: str = "nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER"
                        ) -> FoldCases:
    """Check that the bank serves ``fold`` without leakage; return its cases.

    Parameters
    ----------
    bank_cases : ``bank.json``'s ``"cases"`` block: case id -> ``{"softmax": path, ...}``.
    splits : nnU-Net's split (:func:`load_splits`).
    fold : the classifier fold.
    train_command : shown in the error message, how to make the missing exports (``FOLD`` is replaced).

    Returns the split's cases plus the fold's share of the extra cases (module docstring); ``train`` also holds
    the lesion-shuffled copies (``"shuffle_of"`` in their ``bank.json`` entry) of the training cases, sorted with
    them. Copies of validation cases are left out.

    Raises :class:`SplitError` when a needed case has no bank file (its out-of-fold softmax was not exported:
    the message names the nnU-Net folds to train / validate), when a case's softmax was exported by an
    nnU-Net fold that trained on it, or when the split names a shuffled copy.
    """
    cases = fold_cases(splits, fold)
    named_copies = [c for c in cases.train + cases.val if bank_cases.get(c, {}).get("shuffle_of") is not None]
    if named_copies:
        raise SplitError(f"the split of fold {fold} names lesion-shuffled bank copies {named_copies[:5]}; the split "
                         "must list original cases only (copies follow their original)")
    missing = [c for c in cases.train + cases.val if c not in bank_cases]
    if missing:
        folds = sorted({k for c in missing for k in _validation_fold(splits, c)})
        commands = "; ".join(train_command.replace("FOLD", str(k)) + " --npz" for k in folds)
        raise SplitError(
            f"classifier fold {fold} needs {len(missing)} case(s) that are not in the candidate bank "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): their out-of-fold softmax was not "
            f"exported. Train / validate the nnU-Net fold(s) {folds} whose validation sets hold them ({commands}; "
            "add --val to only rerun a finished fold's validation), then rerun this command")
    extra = sorted(c for c, entry in bank_cases.items() if entry.get("extra") and entry.get("shuffle_of") is None)
    in_split = sorted({c for s in splits for c in (*s["train"], *s["val"])} & set(extra))
    if in_split:
        raise SplitError(f"extra bank cases {in_split[:5]} are named by the nnU-Net split, so an nnU-Net fold may "
                         "have trained on them; extra cases must be patients no fold trained on (give them their "
                         "own ids, or remove them from splits_final.json)")
    extra_val = tuple(c for i, c in enumerate(extra) if i % len(splits) == fold)
    extra_train = tuple(c for c in extra if c not in extra_val)
    train = set(cases.train) | set(extra_train)
    copies = tuple(c for c, entry in bank_cases.items() if entry.get("shuffle_of") in train)
    cases = FoldCases(cases.fold, tuple(sorted(cases.train + extra_train + copies)),
                      tuple(sorted(cases.val + extra_val)))
    leaking = []
    for case in cases.train + cases.val:
        source = softmax_fold(bank_cases[case].get("softmax", ""))
        original = bank_cases[case].get("shuffle_of") or case
        if source is not None and source < len(splits) and original in splits[source]["train"]:
            leaking.append(f"{case} (exported by fold {source}, which trained on it)")
    if leaking:
        raise SplitError(f"candidate bank cases whose softmax is not out-of-fold: {'; '.join(leaking[:5])}; the "
                         "bank must be built from each case's own validation fold (rebuild it with the splits "
                         "the nnU-Net folds were trained with)")
    return cases
