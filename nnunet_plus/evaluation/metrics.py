"""Metric formulas from counts, labels and scores: pure functions, no I/O.

Conventions (the cascaded paper's Table V and PLUS Table 1):

* A ratio whose denominator is 0 is ``None`` (JSON ``null``), never NaN; F1 is ``None`` when precision or
  recall is ``None`` and 0.0 when both are 0.
* Lesion level: precision = TP / (TP + FP + FL), recall = TP / (TP + FN + FL),
  recall_rough = (TP + FL) / (TP + FL + FN) (lesion found, type ignored), F1 = harmonic mean.
* Per class (or per group of classes), recall counts the *reference* lesions of the class that were matched
  to another class (``fl_ref``) and precision the *predicted* lesions of the class matched to another class
  (``fl_pred``).
* Fractions are returned in [0, 1]; the printing layer shows percentages.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

#: FROC operating points, false positives per patient (LUNA16 / Camelyon convention).
FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def safe_ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` as float, ``None`` when the denominator is 0."""
    if denominator == 0:
        return None
    return float(numerator) / float(denominator)


def f1_from(precision: float | None, recall: float | None) -> float | None:
    """Harmonic mean of precision and recall; ``None`` if either is ``None``, 0.0 if both are 0."""
    if precision is None or recall is None:
        return None
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if int(value) != value or value < 0:
            raise ValueError(f"count {name} must be a non-negative integer, got {value!r}")


def lesion_metrics(tp: int, fl: int, fp: int, fn: int) -> dict:
    """Overall lesion-level metrics from the match counts (the cascaded paper's "All" row).

    Returns ``{"tp", "fl", "fp", "fn", "precision", "recall", "f1", "recall_rough"}``; ratios in [0, 1] or
    ``None`` when undefined.
    """
    _check_counts(tp=tp, fl=fl, fp=fp, fn=fn)
    precision = safe_ratio(tp, tp + fp + fl)
    recall = safe_ratio(tp, tp + fn + fl)
    return {
        "tp": int(tp), "fl": int(fl), "fp": int(fp), "fn": int(fn),
        "precision": precision,
        "recall": recall,
        "f1": f1_from(precision, recall),
        "recall_rough": safe_ratio(tp + fl, tp + fl + fn),
    }


def class_lesion_metrics(tp: int, fl_ref: int, fl_pred: int, fp: int, fn: int) -> dict:
    """Lesion metrics of one class or group of classes, FL counted from each side.

    ``fl_ref``: reference lesions of the class matched to a prediction of another class (lowers recall);
    ``fl_pred``: predicted lesions of the class matched to a reference of another class (lowers precision).
    Returns the keys of :func:`lesion_metrics` with ``fl = fl_ref`` (the FL column of Table V), plus
    ``fl_ref`` and ``fl_pred``.
    """
    _check_counts(tp=tp, fl_ref=fl_ref, fl_pred=fl_pred, fp=fp, fn=fn)
    precision = safe_ratio(tp, tp + fp + fl_pred)
    recall = safe_ratio(tp, tp + fn + fl_ref)
    return {
        "tp": int(tp), "fl": int(fl_ref), "fp": int(fp), "fn": int(fn),
        "fl_ref": int(fl_ref), "fl_pred": int(fl_pred),
        "precision": precision,
        "recall": recall,
        "f1": f1_from(precision, recall),
        "recall_rough": safe_ratio(tp + fl_ref, tp + fl_ref + fn),
    }


def _as_bool_array(values: Sequence, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1, True, False)).all():
        raise ValueError(f"{name} must hold only 0/1 or booleans")
    return arr.astype(bool)


def binary_metrics(y_true: Sequence[bool], y_pred: Sequence[bool]) -> dict:
    """Patient-level binary metrics (one entry per patient).

    Returns ``{"n", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "specificity", "accuracy"}``
    (recall = sensitivity).
    """
    t = _as_bool_array(y_true, "y_true")
    p = _as_bool_array(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    precision = safe_ratio(tp, tp + fp)
    recall = safe_ratio(tp, tp + fn)
    return {
        "n": int(t.size), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1_from(precision, recall),
        "specificity": safe_ratio(tn, tn + fp),
        "accuracy": safe_ratio(tp + tn, t.size),
    }


def accuracy(y_true: Sequence, y_pred: Sequence) -> float | None:
    """Fraction of equal entries (e.g. the three-class normal / benign / malignant accuracy)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length ({len(y_true)} vs {len(y_pred)})")
    return safe_ratio(sum(1 for a, b in zip(y_true, y_pred) if a == b), len(y_true))


def confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> list[list[int]]:
    """Confusion matrix as nested lists: row = true label, column = predicted label, in ``labels`` order."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length ({len(y_true)} vs {len(y_pred)})")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in (*y_true, *y_pred) if v not in index})
    if unknown:
        raise ValueError(f"values {unknown} are not among the confusion-matrix labels {list(labels)}")
    matrix = [[0] * len(labels) for _ in labels]
    for a, b in zip(y_true, y_pred):
        matrix[index[a]][index[b]] += 1
    return matrix


def auc(y_true: Sequence[bool], scores: Sequence[float]) -> float | None:
    """ROC AUC (scikit-learn); ``None`` when only one class is present or there is no sample."""
    from sklearn.metrics import roc_auc_score

    t = _as_bool_array(y_true, "y_true")
    s = np.asarray(scores, dtype=float)
    if s.shape != t.shape:
        raise ValueError(f"y_true and scores differ in shape ({t.shape} vs {s.shape})")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    if t.size == 0 or t.all() or not t.any():
        return None
    return float(roc_auc_score(t, s))


def froc(scores: Sequence[float], hits: Sequence[bool], *, n_reference: int, n_patients: int,
         fp_rates: Sequence[float] = FROC_FP_RATES) -> dict | None:
    """Free-response ROC from scored predicted lesions.

    Parameters
    ----------
    scores : (N,) confidence of each predicted lesion (all cases pooled).
    hits : (N,) True for a prediction matched to a reference lesion, False for a false positive.
    n_reference : number of reference lesions (the sensitivity denominator).
    n_patients : number of cases (the false-positives-per-patient denominator).
    fp_rates : operating points in false positives per patient.

    Returns
    -------
    ``{"fp_rates", "sensitivity", "mean_sensitivity", "curve": {"thresholds", "fp_per_patient",
    "sensitivity"}}`` or ``None`` when there is no reference lesion or no patient. A prediction is kept when
    its score >= threshold; the curve has one point per distinct score, from the highest down. The
    sensitivity at a rate is that of the most sensitive operating point with at most that many false
    positives per patient (a step function, no interpolation; 0.0 when no point qualifies).
    """
    s = np.asarray(scores, dtype=float)
    h = _as_bool_array(hits, "hits")
    if s.shape != h.shape:
        raise ValueError(f"scores and hits differ in shape ({s.shape} vs {h.shape})")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    if h.sum() > n_reference:
        raise ValueError(f"{int(h.sum())} hits but only {n_reference} reference lesions")
    if n_reference <= 0 or n_patients <= 0:
        return None
    thresholds = np.unique(s)[::-1]
    fp_per_patient = np.array([np.sum(~h & (s >= t)) for t in thresholds], dtype=float) / n_patients
    sensitivity = np.array([np.sum(h & (s >= t)) for t in thresholds], dtype=float) / n_reference
    at_rates = []
    for rate in fp_rates:
        ok = fp_per_patient <= rate
        at_rates.append(float(sensitivity[ok].max()) if ok.any() else 0.0)
    return {
        "fp_rates": [float(r) for r in fp_rates],
        "sensitivity": at_rates,
        "mean_sensitivity": float(np.mean(at_rates)),
        "curve": {
            "thresholds": thresholds.tolist(),
            "fp_per_patient": fp_per_patient.tolist(),
            "sensitivity": sensitivity.tolist(),
        },
    }


def dice_from_counts(intersection: int, size_a: int, size_b: int) -> float | None:
    """Dice = 2 |A & B| / (|A| + |B|); ``None`` when both are empty."""
    _check_counts(intersection=intersection, size_a=size_a, size_b=size_b)
    if intersection > min(size_a, size_b):
        raise ValueError(f"intersection {intersection} exceeds a set size ({size_a}, {size_b})")
    return safe_ratio(2 * intersection, size_a + size_b)


def overlap_counts(a: np.ndarray, b: np.ndarray) -> dict:
    """Voxel counts ``{"intersection", "reference", "prediction"}`` of two boolean masks of equal shape."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape ({a.shape} vs {b.shape})")
    return {"intersection": int(np.count_nonzero(a & b)), "reference": int(np.count_nonzero(a)),
            "prediction": int(np.count_nonzero(b))}


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks of equal shape; ``None`` when both are empty."""
    c = overlap_counts(a, b)
    return dice_from_counts(c["intersection"], c["reference"], c["prediction"])


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not ``None``; ``None`` if there is none."""
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def sum_counts(records: Sequence[Mapping[str, int]], keys: Sequence[str]) -> dict[str, int]:
    """Key-wise sum of count dictionaries (missing keys count 0)."""
    return {k: int(sum(int(r.get(k, 0)) for r in records)) for k in keys}
