"""Aggregate per-case results into ``summary.json``, print it in the papers' layout, compare two runs.

Schema of the summary (all ratios are fractions in [0, 1], ``null`` when undefined; full description with
an example in docs/evaluation.md)::

    meta            {n_cases, n_missing, missing_cases, criterion, min_volume_cm3, lesions, malignant,
                     benign, priority, probability_source, notes}
    lesion_level    {tp, fl, fp, fn, precision, recall, f1, recall_rough, ignored_reference,
                     ignored_predicted}                     # class-agnostic detection, FL = wrong type
    per_class       {lesion name: {tp, fl, fl_ref, fl_pred, fp, fn, precision, recall, f1, recall_rough}}
    malignant_group, benign_group   same keys as a per_class entry (types inside the group count as TP)
    patient_level   {malignant, benign, screening: {n, tp, fp, fn, tn, precision, recall, f1, specificity,
                     accuracy}, three_class_accuracy, confusion_matrix {labels, matrix},
                     three_class_confusion_matrix {labels, matrix}, auc {tumor, malignant, benign, <name>}}
    froc            {fp_rates, sensitivity, mean_sensitivity, curve {thresholds, fp_per_patient,
                     sensitivity}} or null when the predicted lesions carry no probabilities
    dice            {liver, lesion: {mean, global, n}}
    volume_bins     {bin name: {low, high, n, tp, fl, fn, recall, recall_rough}}   # reference lesions
    radius_bins     same, by equivalent-sphere radius in mm
    per_case        [the dicts of nnunet_plus.evaluation.case.evaluate_case]
"""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Mapping, Sequence

from nnunet_plus.evaluation.conventions import GROUP_KEYS, PATIENT_GROUPS, RADIUS_BINS_MM, VOLUME_BINS_CM3, bin_name
from nnunet_plus.evaluation.metrics import (
    accuracy, auc, binary_metrics, class_lesion_metrics, confusion_matrix, dice_from_counts, froc,
    lesion_metrics, mean_or_none, safe_ratio, sum_counts,
)
from nnunet_plus.schema import MIN_REFERENCE_VOLUME_CM3, LesionSchema

#: Headline metrics compared by :func:`compare_summaries` (label, path in the summary).
HEADLINE_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lesion F1", ("lesion_level", "f1")),
    ("lesion precision", ("lesion_level", "precision")),
    ("lesion recall", ("lesion_level", "recall")),
    ("lesion recall-rough", ("lesion_level", "recall_rough")),
    ("malignant F1", ("patient_level", "malignant", "f1")),
    ("malignant precision", ("patient_level", "malignant", "precision")),
    ("malignant recall", ("patient_level", "malignant", "recall")),
    ("benign F1", ("patient_level", "benign", "f1")),
    ("benign precision", ("patient_level", "benign", "precision")),
    ("benign recall", ("patient_level", "benign", "recall")),
    ("screening F1", ("patient_level", "screening", "f1")),
    ("screening accuracy", ("patient_level", "screening", "accuracy")),
    ("three-class accuracy", ("patient_level", "three_class_accuracy")),
    ("AUC malignant", ("patient_level", "auc", "malignant")),
    ("AUC benign", ("patient_level", "auc", "benign")),
    ("AUC tumor", ("patient_level", "auc", "tumor")),
    ("FROC mean sensitivity", ("froc", "mean_sensitivity")),
    ("liver Dice (mean)", ("dice", "liver", "mean")),
    ("lesion Dice (mean)", ("dice", "lesion", "mean")),
)


def _bins(per_case: Sequence[Mapping], key: str, bins: Sequence[tuple[str, float, float]]) -> dict:
    out = {name: {"low": low, "high": None if math.isinf(high) else high, "n": 0, "tp": 0, "fl": 0, "fn": 0}
           for name, low, high in bins}
    for c in per_case:
        for lesion in c["reference_lesions"]:
            if lesion["outcome"] == "ignored":
                continue
            b = out[bin_name(lesion[key], bins)]
            b["n"] += 1
            b[lesion["outcome"]] += 1
    for b in out.values():
        b["recall"] = safe_ratio(b["tp"], b["n"])
        b["recall_rough"] = safe_ratio(b["tp"] + b["fl"], b["n"])
    return out


def _froc(per_case: Sequence[Mapping], n_reference: int) -> tuple[dict | None, str | None]:
    scored = [lesion for c in per_case for lesion in c["predicted_lesions"] if lesion["outcome"] != "ignored"]
    if any(lesion["score"] is None for lesion in scored):
        return None, "FROC not computed: predicted lesions carry no probability (no <case>.json with them)"
    result = froc([lesion["score"] for lesion in scored], [lesion["outcome"] != "fp" for lesion in scored],
                  n_reference=n_reference, n_patients=len(per_case))
    return result, None if result is not None else "FROC not computed: no reference lesion"


def _dice(per_case: Sequence[Mapping], key: str) -> dict:
    total = sum_counts([c["voxels"][key] for c in per_case], ("intersection", "reference", "prediction"))
    values = [c["dice"][key] for c in per_case]
    return {"mean": mean_or_none(values),
            "global": dice_from_counts(total["intersection"], total["reference"], total["prediction"]),
            "n": sum(v is not None for v in values)}


def _patient_level(patients: Sequence[Mapping], schema: LesionSchema) -> dict:
    """The summary's ``patient_level`` from the ``patient`` blocks of the cases: malignant / benign / screening
    metrics, three-class accuracy, both confusion matrices and the AUCs."""
    patient_level = {
        kind: binary_metrics([p["reference"][k] for p in patients], [p["predicted"][k] for p in patients])
        for kind, k in (("malignant", "malignant"), ("benign", "benign"), ("screening", "tumor"))
    }
    patient_level["three_class_accuracy"] = accuracy([p["reference_group"] for p in patients],
                                                     [p["predicted_group"] for p in patients])
    classes = ["normal", *schema.priority]
    patient_level["confusion_matrix"] = {"labels": classes, "matrix": confusion_matrix(
        [p["reference_class"] for p in patients], [p["predicted_class"] for p in patients], classes)}
    patient_level["three_class_confusion_matrix"] = {"labels": list(PATIENT_GROUPS), "matrix": confusion_matrix(
        [p["reference_group"] for p in patients], [p["predicted_group"] for p in patients], PATIENT_GROUPS)}
    patient_level["auc"] = {k: auc([p["reference"][k] for p in patients], [p["probabilities"][k] for p in patients])
                            for k in ("tumor", "malignant", "benign", *schema.lesions)}
    return patient_level


def summarize(per_case: Sequence[Mapping], schema: LesionSchema, *, criterion: str = "overlap",
              min_volume_cm3: float = MIN_REFERENCE_VOLUME_CM3) -> dict:
    """Aggregate :func:`~nnunet_plus.evaluation.case.evaluate_case` results into the summary dict.

    ``criterion`` and ``min_volume_cm3`` are recorded in ``meta`` (they must be those used per case).
    """
    per_case = list(per_case)
    counts = sum_counts([c["counts"] for c in per_case],
                        ("tp", "fl", "fp", "fn", "ignored_reference", "ignored_predicted"))
    lesion_level = lesion_metrics(counts["tp"], counts["fl"], counts["fp"], counts["fn"])
    lesion_level.update(ignored_reference=counts["ignored_reference"],
                        ignored_predicted=counts["ignored_predicted"])

    def group(records: Sequence[Mapping]) -> dict:
        s = sum_counts(records, GROUP_KEYS)
        return class_lesion_metrics(s["tp"], s["fl_ref"], s["fl_pred"], s["fp"], s["fn"])

    per_class = {name: group([c["per_class"][name] for c in per_case]) for name in schema.lesions}

    patients = [c["patient"] for c in per_case]
    patient_level = _patient_level(patients, schema)
    sources = sorted({p["probability_source"] for p in patients})
    notes = []
    n_reference = counts["tp"] + counts["fl"] + counts["fn"]
    froc_result, froc_note = _froc(per_case, n_reference)
    if froc_note:
        notes.append(froc_note)
    if "label_map" in sources:
        notes.append("patient AUCs use 0/1 scores from the label maps for cases without a <case>.json")
    missing = [c["case"] for c in per_case if c.get("missing")]
    return {
        "meta": {
            "n_cases": len(per_case), "n_missing": len(missing), "missing_cases": missing,
            "criterion": criterion, "min_volume_cm3": float(min_volume_cm3),
            "lesions": list(schema.lesions), "malignant": list(schema.malignant), "benign": list(schema.benign),
            "priority": list(schema.priority),
            "probability_source": sources[0] if len(sources) == 1 else ("mixed" if sources else None),
            "notes": notes,
        },
        "lesion_level": lesion_level,
        "per_class": per_class,
        "malignant_group": group([c["malignant_group"] for c in per_case]),
        "benign_group": group([c["benign_group"] for c in per_case]),
        "patient_level": patient_level,
        "froc": froc_result,
        "dice": {"liver": _dice(per_case, "liver"), "lesion": _dice(per_case, "lesion")},
        "volume_bins": _bins(per_case, "volume_cm3", VOLUME_BINS_CM3),
        "radius_bins": _bins(per_case, "radius_mm", RADIUS_BINS_MM),
        "per_case": per_case,
    }


# ---- printing -------------------------------------------------------------------------------------------
def format_percent(value: float | None, digits: int = 1) -> str:
    """``0.9625 -> '96.3%'`` (half-up rounding, as the papers print), ``None -> 'n/a'``."""
    if value is None:
        return "n/a"
    q = Decimal(repr(100.0 * value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q}%"


def _format_delta(value: float | None) -> str:
    if value is None:
        return "n/a"
    q = Decimal(repr(100.0 * value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{q:+}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
             for r in (header, *rows)]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _get(summary: Mapping, path: Sequence[str]) -> float | None:
    node = summary
    for key in path:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return None
        node = node[key]
    return node


def _lesion_row(name: str, m: Mapping) -> list[str]:
    return [name, str(m["fn"]), str(m["fp"]), str(m["fl"]), str(m["tp"]), format_percent(m["precision"]),
            format_percent(m["recall"]), format_percent(m["recall_rough"]), format_percent(m["f1"])]


def format_lesion_table(summary: Mapping) -> str:
    """The cascaded paper's Table V layout: per type FN, FP, FL, TP, precision, recall, recall-rough (+ F1)."""
    rows = [_lesion_row(name, m) for name, m in summary["per_class"].items()]
    rows.append(_lesion_row("All", summary["lesion_level"]))
    rows.append(_lesion_row("Malig", summary["malignant_group"]))
    rows.append(_lesion_row("Benign", summary["benign_group"]))
    return _table(["Type", "FN", "FP", "FL", "TP", "Precision", "Recall", "Recall-rough", "F1"], rows)


def format_bins_table(summary: Mapping) -> str:
    """Reference-lesion recall by volume bin (cm3) and by radius bin (mm)."""
    parts = []
    for key, unit in (("volume_bins", "cm3"), ("radius_bins", "mm")):
        bins = summary[key]
        header = [f"{key.split('_')[0].capitalize()} ({unit})", *bins.keys()]
        rows = [["n", *(str(b["n"]) for b in bins.values())],
                ["Recall", *(format_percent(b["recall"]) for b in bins.values())],
                ["Recall-rough", *(format_percent(b["recall_rough"]) for b in bins.values())]]
        parts.append(_table(header, rows))
    return "\n\n".join(parts)


_PATIENT_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Lesion F1", ("lesion_level", "f1")), ("Prec.", ("lesion_level", "precision")),
    ("Recall", ("lesion_level", "recall")),
    ("F1 malig", ("patient_level", "malignant", "f1")), ("Prec. malig", ("patient_level", "malignant", "precision")),
    ("Recall malig", ("patient_level", "malignant", "recall")),
    ("F1 benign", ("patient_level", "benign", "f1")), ("Prec. benign", ("patient_level", "benign", "precision")),
    ("Recall benign", ("patient_level", "benign", "recall")),
    ("Screen F1", ("patient_level", "screening", "f1")), ("Screen Acc.", ("patient_level", "screening", "accuracy")),
)


def _patient_row(name: str, summary: Mapping) -> list[str]:
    return [name, *(format_percent(_get(summary, path)) for _, path in _PATIENT_COLUMNS)]


def format_patient_table(summaries: Mapping[str, Mapping]) -> str:
    """PLUS Table 1 layout (lesion F1 / precision / recall, malignant and benign patient F1 / precision /
    recall, screening F1 / accuracy), one row per named summary."""
    return _table(["Method", *(c for c, _ in _PATIENT_COLUMNS)],
                  [_patient_row(name, s) for name, s in summaries.items()])


def format_confusion_matrix(cm: Mapping) -> str:
    """Confusion matrix table: rows = reference, columns = prediction."""
    labels = cm["labels"]
    rows = [[f"ref {a}", *(str(v) for v in row)] for a, row in zip(labels, cm["matrix"])]
    return _table(["reference \\ predicted", *labels], rows)


def format_summary(summary: Mapping, *, title: str | None = None) -> str:
    """All tables of one summary as text."""
    meta = summary["meta"]
    pl = summary["patient_level"]
    head = (f"{meta['n_cases']} cases ({meta['n_missing']} missing), match {meta['criterion']}, reference "
            f"lesions < {meta['min_volume_cm3']:g} cm3 ignored")
    out = [title or "nnunet_plus evaluation", head, "",
           "Lesion level (precision = TP/(TP+FP+FL), recall = TP/(TP+FN+FL), recall-rough = (TP+FL)/(TP+FL+FN))",
           format_lesion_table(summary), "", format_bins_table(summary), "",
           "Patient level", format_patient_table({"this run": summary}), "",
           f"Three-class (normal / benign / malignant) accuracy: {format_percent(pl['three_class_accuracy'])}",
           "AUC: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in pl["auc"].items()), ""]
    fr = summary["froc"]
    if fr is not None:
        out.append("FROC sensitivity at FP/patient " + ", ".join(
            f"{r:g}: {format_percent(s)}" for r, s in zip(fr["fp_rates"], fr["sensitivity"]))
            + f"; mean {format_percent(fr['mean_sensitivity'])}")
    d = summary["dice"]
    out.append(f"Dice per case (mean): liver {format_percent(d['liver']['mean'])}, lesion "
               f"{format_percent(d['lesion']['mean'])}; global: liver {format_percent(d['liver']['global'])}, "
               f"lesion {format_percent(d['lesion']['global'])}")
    out += ["", "Patient class confusion matrix (classify_patient)", format_confusion_matrix(pl["confusion_matrix"])]
    out += [f"note: {n}" for n in meta["notes"]]
    return "\n".join(out)


# ---- comparison -------------------------------------------------------------------------------------------
def compare_summaries(baseline: Mapping, ours: Mapping) -> dict:
    """Headline metrics of two summaries: ``{metric: {"baseline", "ours", "delta"}}`` (delta = ours - baseline,
    ``None`` when either is undefined), plus ``"per_class"``: the same for each class's precision / recall /
    F1."""
    def entry(a: float | None, b: float | None) -> dict:
        return {"baseline": a, "ours": b, "delta": None if a is None or b is None else b - a}

    out = {label: entry(_get(baseline, path), _get(ours, path)) for label, path in HEADLINE_METRICS}
    out["per_class"] = {name: {k: entry(_get(baseline, ("per_class", name, k)), _get(ours, ("per_class", name, k)))
                               for k in ("precision", "recall", "f1")}
                        for name in ours["per_class"]}
    return out


def format_comparison(baseline: Mapping, ours: Mapping, *, names: tuple[str, str] = ("baseline", "ours")) -> str:
    """Both runs and the deltas (percentage points), in PLUS Table 1's layout, then per class and headline
    metrics."""
    base_name, our_name = names
    delta_row = ["delta (pp)"]
    for _, path in _PATIENT_COLUMNS:
        a, b = _get(baseline, path), _get(ours, path)
        delta_row.append(_format_delta(None if a is None or b is None else b - a))
    table1 = _table(["Method", *(c for c, _ in _PATIENT_COLUMNS)],
                    [_patient_row(base_name, baseline), _patient_row(our_name, ours), delta_row])
    comparison = compare_summaries(baseline, ours)
    class_rows = []
    for name, metrics in comparison["per_class"].items():
        row = [name]
        for k in ("precision", "recall", "f1"):
            e = metrics[k]
            row += [format_percent(e["baseline"]), format_percent(e["ours"]), _format_delta(e["delta"])]
        class_rows.append(row)
    class_header = ["Type"] + [f"{k} {n}" for k in ("Prec.", "Recall", "F1") for n in (base_name, our_name, "delta")]
    headline_rows = []
    for label, e in comparison.items():
        if label == "per_class":
            continue
        if label.startswith("AUC"):  # AUCs stay fractions, as the papers print them
            headline_rows.append([label, *(("n/a" if v is None else f"{v:+.3f}" if k == "delta" else f"{v:.3f}")
                                           for k, v in e.items())])
        else:
            headline_rows.append([label, format_percent(e["baseline"]), format_percent(e["ours"]),
                                  _format_delta(e["delta"])])
    return "\n".join([f"Comparison: {base_name} vs {our_name}", table1, "",
                      _table(class_header, class_rows), "",
                      _table(["Metric", base_name, our_name, "delta"], headline_rows),
                      "(deltas in percentage points; AUC deltas as fractions)"])

