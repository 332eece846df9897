"""match (cascaded paper, eq. 6-7; PLAN §3): one-to-one lesion matching between two instance maps.

Candidate pairs are (reference, predicted) lesions passing the criterion: ``"overlap"`` (at least one shared
voxel, the cascaded paper) or ``"dice:T"`` (Dice > T, PLAN uses 0.2). Among them, the one-to-one assignment
maximising the total number of shared voxels is chosen (``scipy.optimize.linear_sum_assignment``). A matched
pair with the same label is a true positive (TP), with different labels a false label (FL); unmatched
predictions are false positives (FP), unmatched references false negatives (FN).

:func:`match_overlaps` is that matching on an overlap table (rows of :func:`overlap_table`: reference id,
predicted id, shared voxels); :func:`match_lesions` builds the table from two instance maps, and the
classifier's rule scores replay it on the table stored in a candidate bank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["MatchResult", "assign_one_to_one", "assign_tiers", "match_lesions", "match_overlaps", "overlap_table"]


@dataclass
class MatchResult:
    """Outcome of :func:`match_lesions`; ids are instance ids, labels come from the two label mappings.

    Attributes
    ----------
    pairs : (reference id, predicted id) matched one-to-one, sorted by reference id.
    tp : pairs whose labels agree.
    fl : pairs whose labels differ ("false label").
    fp : unmatched predicted ids (predictions overlapping only ignored references excluded).
    fn : unmatched reference ids (ignored references excluded).
    reference_labels, predicted_labels : id -> label mappings used for the per-class counts.
    """

    pairs: list[tuple[int, int]] = field(default_factory=list)
    tp: list[tuple[int, int]] = field(default_factory=list)
    fl: list[tuple[int, int]] = field(default_factory=list)
    fp: list[int] = field(default_factory=list)
    fn: list[int] = field(default_factory=list)
    reference_labels: dict[int, int] = field(default_factory=dict)
    predicted_labels: dict[int, int] = field(default_factory=dict)

    def counts(self) -> dict:
        """``{"tp", "fl", "fp", "fn"}`` lesion counts."""
        return {"tp": len(self.tp), "fl": len(self.fl), "fp": len(self.fp), "fn": len(self.fn)}

    def per_class(self, labels: Iterable[int]) -> dict[int, dict]:
        """Counts per lesion label: ``{"tp", "fl_ref", "fl_pred", "fp", "fn"}``.

        ``fl_ref`` counts reference lesions of the class matched to another class (recall side),
        ``fl_pred`` predicted lesions of the class matched to another class (precision side).
        """
        table = {int(label): {"tp": 0, "fl_ref": 0, "fl_pred": 0, "fp": 0, "fn": 0} for label in labels}

        def add(label: int, key: str) -> None:
            if label in table:
                table[label][key] += 1

        for ref, _ in self.tp:
            add(self.reference_labels[ref], "tp")
        for ref, pred in self.fl:
            add(self.reference_labels[ref], "fl_ref")
            add(self.predicted_labels[pred], "fl_pred")
        for pred in self.fp:
            add(self.predicted_labels[pred], "fp")
        for ref in self.fn:
            add(self.reference_labels[ref], "fn")
        return table


def overlap_table(reference_instances: np.ndarray, predicted_instances: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared voxel counts of every overlapping (reference id, predicted id) pair.

    Returns ``(reference_ids, predicted_ids, shared)``, three (m,) int64 arrays, one entry per pair of
    instances (both ids > 0) sharing at least one voxel.
    """
    reference = np.asarray(reference_instances)
    predicted = np.asarray(predicted_instances)
    if reference.shape != predicted.shape:
        raise ValueError(f"instance maps differ in shape: {reference.shape} vs {predicted.shape}")
    both = np.flatnonzero((reference.reshape(-1) > 0) & (predicted.reshape(-1) > 0))
    ref_ids = reference.reshape(-1)[both].astype(np.int64)
    pred_ids = predicted.reshape(-1)[both].astype(np.int64)
    if both.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    width = int(pred_ids.max()) + 1
    unique, shared = np.unique(ref_ids * width + pred_ids, return_counts=True)
    return unique // width, unique % width, shared.astype(np.int64)


def _parse_criterion(criterion: str) -> float | None:
    """None for "overlap", else the Dice threshold T of "dice:T"."""
    if criterion == "overlap":
        return None
    if criterion.startswith("dice:"):
        try:
            threshold = float(criterion[len("dice:"):])
        except ValueError:
            threshold = float("nan")
        if 0.0 <= threshold < 1.0:
            return threshold
    raise ValueError(f"criterion must be 'overlap' or 'dice:T' with 0 <= T < 1 (e.g. 'dice:0.2'), "
                     f"got {criterion!r}")


def _lesion_ids(instances: np.ndarray) -> np.ndarray:
    """Ids of the lesion voxels (values > 0) of an instance map, as int64 (small: lesion voxels only)."""
    values = np.asarray(instances).reshape(-1)
    return values[values > 0].astype(np.int64)


def _sizes(instances: np.ndarray) -> np.ndarray:
    """Voxel count of every id (index = id)."""
    return np.bincount(_lesion_ids(instances), minlength=1)


def assign_one_to_one(reference_ids: np.ndarray, predicted_ids: np.ndarray, shared: np.ndarray
                      ) -> list[tuple[int, int]]:
    """The one-to-one assignment of reference to predicted lesions maximising the total shared voxels.

    ``reference_ids``, ``predicted_ids``, ``shared`` : (m,) rows of candidate pairs, as :func:`overlap_table`
    returns them. Returns the chosen (reference id, predicted id) pairs with shared voxels > 0, sorted by
    reference id (``scipy.optimize.linear_sum_assignment`` on the reference x predicted weight matrix).
    """
    refs = np.asarray(reference_ids, dtype=np.int64).reshape(-1).tolist()
    if not refs:
        return []
    preds = np.asarray(predicted_ids, dtype=np.int64).reshape(-1).tolist()
    rows, cols = sorted(set(refs)), sorted(set(preds))  # plain Python: far faster than np.unique on small tables
    row_of = {r: i for i, r in enumerate(rows)}
    col_of = {p: j for j, p in enumerate(cols)}
    weight = np.zeros((len(rows), len(cols)))
    weight[[row_of[r] for r in refs], [col_of[p] for p in preds]] = np.asarray(shared).reshape(-1)
    chosen_rows, chosen_cols = linear_sum_assignment(weight, maximize=True)
    return sorted((rows[r], cols[c]) for r, c in zip(chosen_rows, chosen_cols) if weight[r, c] > 0)


def match_overlaps(reference_ids: np.ndarray, predicted_ids: np.ndarray, shared: np.ndarray,
                   reference_labels: Mapping[int, int], predicted_labels: Mapping[int, int], *,
                   ignored_reference_ids: Collection[int] = (), eligible: np.ndarray | None = None) -> MatchResult:
    """One-to-one matching of reference and predicted lesions from their overlap table.

    Parameters
    ----------
    reference_ids, predicted_ids, shared : (m,) rows of overlapping pairs (:func:`overlap_table`).
    reference_labels, predicted_labels : id -> lesion label of every lesion to count; the TP / FL / FP / FN
        lists are drawn from these ids (a predicted id absent here takes no part; give only its rows).
    ignored_reference_ids : reference lesions not counted: they take no part in the assignment, and a
        prediction left unmatched that overlaps one of them (any row) is not a false positive.
    eligible : optional (m,) bool, the rows passing the match criterion (e.g. Dice > T); default all.
    """
    ref_ids = np.asarray(reference_ids, dtype=np.int64).reshape(-1)
    pred_ids = np.asarray(predicted_ids, dtype=np.int64).reshape(-1)
    shared = np.asarray(shared).reshape(-1)
    ignored = {int(i) for i in ignored_reference_ids}
    on_ignored = np.zeros(ref_ids.size, dtype=bool)
    if ignored:  # a set lookup per row: far faster than np.isin on small tables
        on_ignored[:] = [r in ignored for r in ref_ids.tolist()]
    near_ignored = set(pred_ids[on_ignored].tolist())
    usable = ~on_ignored if eligible is None else ~on_ignored & np.asarray(eligible, dtype=bool)
    pairs = assign_one_to_one(ref_ids[usable], pred_ids[usable], shared[usable])

    matched_refs = {r for r, _ in pairs}
    matched_preds = {p for _, p in pairs}
    tp = [(r, p) for r, p in pairs if reference_labels[r] == predicted_labels[p]]
    fl = [(r, p) for r, p in pairs if reference_labels[r] != predicted_labels[p]]
    fp = sorted(p for p in predicted_labels if p not in matched_preds and p not in near_ignored)
    fn = sorted(r for r in reference_labels if r not in matched_refs and r not in ignored)
    return MatchResult(pairs=pairs, tp=tp, fl=fl, fp=fp, fn=fn, reference_labels=dict(reference_labels),
                       predicted_labels=dict(predicted_labels))


def match_lesions(reference_instances: np.ndarray, reference_labels: Mapping[int, int],
                  predicted_instances: np.ndarray, predicted_labels: Mapping[int, int], *,
                  criterion: str = "overlap", ignored_reference_ids: Collection[int] = ()) -> MatchResult:
    """One-to-one matching of reference and predicted lesions.

    Parameters
    ----------
    reference_instances, predicted_instances : (Z, Y, X) integer instance maps (0 = no lesion).
    reference_labels, predicted_labels : id -> lesion label for every lesion to consider; ids present in a
        map but absent from its mapping are an error.
    criterion : ``"overlap"`` (any shared voxel) or ``"dice:T"`` (Dice > T).
    ignored_reference_ids : reference lesions not counted (e.g. below a size limit). They take no part in
        the assignment; a prediction left unmatched that overlaps one of them (any shared voxel) is not
        counted as a false positive.
    """
    threshold = _parse_criterion(criterion)
    reference_labels = {int(k): int(v) for k, v in reference_labels.items()}
    predicted_labels = {int(k): int(v) for k, v in predicted_labels.items()}
    ref_ids, pred_ids, shared = overlap_table(reference_instances, predicted_instances)
    ref_sizes, pred_sizes = _sizes(reference_instances), _sizes(predicted_instances)
    for name, sizes, labels in (("reference", ref_sizes, reference_labels),
                                ("predicted", pred_sizes, predicted_labels)):
        missing = sorted(set(np.flatnonzero(sizes[1:]) + 1) - set(labels))
        if missing:
            raise ValueError(f"{name} lesion id(s) {missing[:10]} have no entry in {name}_labels")
    eligible = None
    if threshold is not None:
        eligible = 2.0 * shared / (ref_sizes[ref_ids] + pred_sizes[pred_ids]) > threshold
    return match_overlaps(ref_ids, pred_ids, shared, reference_labels, predicted_labels,
                          ignored_reference_ids=ignored_reference_ids, eligible=eligible)


def assign_tiers(confident_instances: np.ndarray, suspicious_instances: np.ndarray) -> dict[int, str]:
    """Tier of every lesion of the higher-sensitivity instance map (cascaded eq. 7).

    ``"confident"`` when the lesion overlaps a lesion found at the base sensitivity (Det_same), else
    ``"suspicious"`` (Det_diff, found only at the higher sensitivity).
    """
    confident = np.asarray(confident_instances)
    suspicious = np.asarray(suspicious_instances)
    if confident.shape != suspicious.shape:
        raise ValueError(f"instance maps differ in shape: {confident.shape} vs {suspicious.shape}")
    present = np.unique(_lesion_ids(suspicious)).tolist()
    flat = suspicious.reshape(-1)
    overlapping = set(np.unique(flat[(confident.reshape(-1) > 0) & (flat > 0)]).tolist())
    return {i: ("confident" if i in overlapping else "suspicious") for i in present}
