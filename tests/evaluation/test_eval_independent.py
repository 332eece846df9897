"""Class-agnostic TP / FP / FN of evaluate_case against an independent brute-force implementation.

panoptica (the named peer) pins numpy < 2.3, pandas < 3 and connected-components-3d < 4, so it cannot live in
this environment; the independent check here re-derives the lesions with scipy.ndimage.label (the paper's
connectivity: 8-connected in-plane, slices linked through shared pixels) and searches every one-to-one
matching of the eligible pairs exhaustively for the maximum total overlap, on random multi-lesion volumes.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnunet_plus.schema import build_schema

from nnunet_plus.evaluation.case import evaluate_case

SCHEMA = build_schema({"background": 0, "liver": 1, "hcc": 2, "metastasis": 3, "hemangioma": 4, "cyst": 5})
LESION_LABELS = (2, 3, 4, 5)
SHAPE = (10, 40, 40)

PAPER_STRUCTURE = np.zeros((3, 3, 3), bool)
PAPER_STRUCTURE[1] = True
PAPER_STRUCTURE[0, 1, 1] = PAPER_STRUCTURE[2, 1, 1] = True


def random_box(rng, a: np.ndarray, label: int, centre=None, size=None) -> tuple:
    size = size if size is not None else rng.integers((1, 2, 2), (5, 9, 9))
    centre = centre if centre is not None else rng.integers(0, SHAPE)
    lo = np.clip(np.asarray(centre) - np.asarray(size) // 2, 0, np.asarray(SHAPE) - 1)
    hi = np.clip(lo + size, 1, SHAPE)
    a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = label
    return tuple(int(v) for v in (lo + hi) // 2), tuple(int(v) for v in size)


def random_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference with 1-5 box lesions and a prediction that shifts, resizes, splits, drops and adds some."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    for _ in range(rng.integers(1, 6)):
        centre, size = random_box(rng, ref, int(rng.choice(LESION_LABELS)))
        fate = rng.random()
        if fate < 0.6:    # detected, shifted and resized, sometimes with another label
            label = int(rng.choice(LESION_LABELS))
            random_box(rng, pred, label, centre=np.asarray(centre) + rng.integers(-2, 3, 3),
                       size=np.maximum(np.asarray(size) + rng.integers(-2, 3, 3), 1))
        elif fate < 0.8:  # split into two pieces
            for dx in (-3, 3):
                random_box(rng, pred, int(rng.choice(LESION_LABELS)), centre=np.asarray(centre) + (0, 0, dx),
                           size=(size[0], size[1], 3))
    for _ in range(rng.integers(0, 3)):  # false positives anywhere
        random_box(rng, pred, int(rng.choice(LESION_LABELS)))
    return ref, pred


def components(label_map: np.ndarray) -> list[np.ndarray]:
    labelled, n = ndimage.label(np.isin(label_map, LESION_LABELS), structure=PAPER_STRUCTURE)
    return [labelled == i for i in range(1, n + 1)]


def eligible(r: np.ndarray, p: np.ndarray, criterion: str) -> tuple[bool, int]:
    inter = int(np.count_nonzero(r & p))
    if criterion == "overlap":
        return inter > 0, inter
    threshold = float(criterion.split(":")[1])
    return 2 * inter / (r.sum() + p.sum()) > threshold, inter


def brute_force_counts(ref: np.ndarray, pred: np.ndarray, criterion: str) -> tuple[int, set[int], int, int]:
    """(number of matched pairs of one optimal matching, all matched-pair counts reaching the optimum,
    number of reference lesions, number of predicted lesions)."""
    refs, preds = components(ref), components(pred)
    weight = {}
    for i, r in enumerate(refs):
        for j, p in enumerate(preds):
            ok, inter = eligible(r, p, criterion)
            if ok:
                weight[i, j] = inter
    best = {"total": -1, "sizes": set()}

    def search(i: int, used: frozenset, total: int, size: int) -> None:
        if i == len(refs):
            if total > best["total"]:
                best["total"], best["sizes"] = total, {size}
            elif total == best["total"]:
                best["sizes"].add(size)
            return
        search(i + 1, used, total, size)  # reference i unmatched
        for j in range(len(preds)):
            if j not in used and (i, j) in weight:
                search(i + 1, used | {j}, total + weight[i, j], size + 1)

    search(0, frozenset(), 0, 0)
    return min(best["sizes"]), best["sizes"], len(refs), len(preds)


@pytest.mark.parametrize("criterion", ["overlap", "dice:0.2", "dice:0.5"])
def test_class_agnostic_counts_match_brute_force(criterion):
    compared = 0
    for seed in range(40):
        ref, pred = random_pair(seed)
        _, optimal_sizes, n_ref, n_pred = brute_force_counts(ref, pred, criterion)
        r = evaluate_case(ref, pred, SCHEMA, spacing=(1.0, 1.0, 1.0), criterion=criterion, min_volume_cm3=0.0)
        c = r["counts"]
        matched = c["tp"] + c["fl"]
        assert matched in optimal_sizes, f"seed {seed}: {matched} matches, brute force {optimal_sizes}"
        assert c["fn"] == n_ref - matched, f"seed {seed}"
        assert c["fp"] == n_pred - matched, f"seed {seed}"
        assert len(r["reference_lesions"]) == n_ref and len(r["predicted_lesions"]) == n_pred
        compared += 1
    assert compared == 40


def test_random_volumes_cover_hard_cases():
    """The generator produces splits, merges, misses and false positives (so the comparison means something)."""
    seen = {"fp": 0, "fn": 0, "fl": 0, "split": 0}
    for seed in range(40):
        ref, pred = random_pair(seed)
        r = evaluate_case(ref, pred, SCHEMA, spacing=(1.0, 1.0, 1.0), criterion="overlap", min_volume_cm3=0.0)
        for k in ("fp", "fn", "fl"):
            seen[k] += r["counts"][k]
        refs, preds = components(ref), components(pred)
        seen["split"] += sum(sum(bool((rr & p).any()) for p in preds) > 1 for rr in refs)
    assert all(v > 5 for v in seen.values()), seen
