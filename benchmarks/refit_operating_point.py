"""Refit stage two's operating point on stored ``bench_efficacy.py`` cohorts, under other guards (issue 13).

How a choice about the decision rule (which scores it may not worsen, how nnU-Net's f = 4 answer sets the bar)
is made without training anything again: each cohort folder of a finished ``bench_efficacy.py`` run keeps the
classifier folds' out-of-fold probability tables of their validation cases
(``fold_k/validation/candidate_tables.npz``), the candidate bank, the trained classifier and the test cases'
candidate banks (``bench_efficacy/test_bank``). This script refits the pooled rule on those validation tables
with :func:`~nnunet_plus.classifier.operating_point.fit_rule` as the code now stands, once per guard set, applies
each rule to the test cases with the stored classifier's probabilities, and scores them with the benchmark's own
scoring (:func:`bench_efficacy.bank_arm_metrics`). The row ``stored`` is the rule the run itself used
(``operating_point.json``); it reproduces the run's + PLUS lesion and patient F1, which checks that nothing else
moved (its AUCs follow the file's ``patient_from_plus``: a file written before that field takes every patient
probability from LiverMax, so its AUC deltas are 0 where the run itself may have used PLUS's).

The cohorts that choose a variant do not show that it generalises: check the choice on seeds run after it.

    python benchmarks/refit_operating_point.py /work/bench21/seed_11 /work/bench21/seed_12 ... \\
        --guards all=malignant_f1,malignant_recall,false_positives --guards malignant_f1_only=malignant_f1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

def parse_guards(text: str) -> tuple[str, dict[str, int]]:
    """``NAME=score,score`` (empty after ``=``: no guard) -> ``(NAME, {score: direction})``, the directions
    of :data:`~nnunet_plus.classifier.operating_point.SCORE_DIRECTIONS`."""
    from nnunet_plus.classifier.operating_point import SCORE_DIRECTIONS

    name, sep, scores = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--guards takes NAME=score,score,... (got {text!r})")
    chosen = [s for s in scores.split(",") if s]
    unknown = [s for s in chosen if s not in SCORE_DIRECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown guarded score(s) {unknown}; choose from {sorted(SCORE_DIRECTIONS)}")
    return name, {s: SCORE_DIRECTIONS[s] for s in chosen}


def load_cohort(seed_dir: Path) -> dict:
    """The stored validation banks and tables, the stored rule and its objective, and the test banks with the
    stored classifier's tables."""
    from bench_efficacy import _schema_and_classes

    from nnunet_plus.classifier.bank_io import load_case_bank, read_bank_metadata
    from nnunet_plus.classifier.inference import PLUSInference
    from nnunet_plus.classifier.model import candidate_features
    from nnunet_plus.classifier.operating_point import OPERATING_POINT_FILE
    from nnunet_plus.classifier.trainer.scoring import CANDIDATE_TABLES_FILE, load_candidate_tables

    classifiers = sorted(seed_dir.glob("nnUNet_results/*/PLUSClassifier__*"))
    test_bank = seed_dir / "bench_efficacy" / "test_bank"
    if len(classifiers) != 1 or not test_bank.is_dir():
        raise FileNotFoundError(f"{seed_dir}: not a finished bench_efficacy.py cohort (needs one PLUSClassifier "
                                f"folder and bench_efficacy/test_bank); run the benchmark there first")
    classifier = classifiers[0]
    bank_dir = classifier / "candidate_bank"
    meta = read_bank_metadata(bank_dir)
    schema, malignant, benign = _schema_and_classes(meta)
    validation_banks, validation_tables = [], []
    for fold_dir in sorted(classifier.glob("fold_*")):
        cases, tables = load_candidate_tables(fold_dir / "validation" / CANDIDATE_TABLES_FILE)
        validation_banks += [load_case_bank(bank_dir / f"{case}.npz", metadata=meta) for case in cases]
        validation_tables += tables
    stored = json.loads((classifier / OPERATING_POINT_FILE).read_text())
    inference = PLUSInference.from_folder(classifier, schema=schema)
    test_banks = [load_case_bank(p, metadata=meta) for p in sorted(test_bank.glob("*.npz"))]
    num_lesions = len(schema.lesions)
    test_tables = [inference.predict_inputs(b.crops, b.prior, candidate_features(b.tier, b.max_probability,
                                                                                 b.volume_mm3, b.nnunet_class,
                                                                                 num_lesions), b.liver)
                   for b in test_banks]
    return dict(schema=schema, malignant=malignant, benign=benign, validation_banks=validation_banks,
                validation_tables=validation_tables, test_banks=test_banks, test_tables=test_tables,
                stored_rule=inference.rule, objective=stored["objective"],
                min_volume_mm3=schema.min_lesion_volume_mm3)


def _difference(value, reference):
    return None if value is None or reference is None else value - reference


def _pp(value, reference):
    difference = _difference(value, reference)
    return None if difference is None else 100.0 * difference


def compare(cohort: dict, guard_sets: dict[str, dict[str, int]]) -> dict[str, dict]:
    """Per variant: the rule, its test deltas against nnU-Net alone (pp), false positives per patient and test
    lesions found whatever their type (nnU-Net alone, variant)."""
    from bench_efficacy import bank_arm_metrics

    from nnunet_plus.classifier.operating_point import fit_rule
    from nnunet_plus.decision_rule import DecisionRule

    groups = (cohort["schema"], cohort["malignant"], cohort["benign"])
    alone = bank_arm_metrics(cohort["test_banks"], cohort["test_tables"], DecisionRule(), *groups)
    rules = {"stored": cohort["stored_rule"]}
    for name, guards in guard_sets.items():
        rules[name] = fit_rule(cohort["validation_banks"], cohort["validation_tables"],
                               malignant_classes=cohort["malignant"], benign_classes=cohort["benign"],
                               class_names=cohort["schema"].lesions, objective=cohort["objective"],
                               min_volume_mm3=cohort["min_volume_mm3"], guards=guards).rule
    rows = {}
    for name, rule in rules.items():
        plus = bank_arm_metrics(cohort["test_banks"], cohort["test_tables"], rule, *groups)
        rows[name] = {"lesion_f1": _pp(plus["lesion_f1"], alone["lesion_f1"]),
                      "malignant_f1": _pp(plus["malignant_f1"], alone["malignant_f1"]),
                      "benign_f1": _pp(plus["benign_f1"], alone["benign_f1"]),
                      "fp_per_patient": (alone["fp_per_patient"], plus["fp_per_patient"]),
                      "auc_tumor": _difference(plus["auc_tumor"], alone["auc_tumor"]),
                      "auc_malignant": _difference(plus["auc_malignant"], alone["auc_malignant"]),
                      "found": tuple(arm["counts"]["tp"] + arm["counts"]["fl"] for arm in (alone, plus)),
                      "rule": rule.describe(cohort["schema"].lesions)}
    return rows


def _signed(value) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def _signed_auc(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def summary_lines(results: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown: per variant, mean and lowest delta of lesion and malignant patient F1 and of the tumour and
    malignant AUC over the cohorts, the cohorts below 0, the mean false positives per patient, and the test
    lesions found whatever their type (all cohorts) with the cohorts where fewer were found than by nnU-Net
    alone."""
    variants = list(next(iter(results.values())))
    lines = ["| variant | mean Δ lesion F1 | lowest | cohorts < 0 | mean Δ malignant F1 | lowest | cohorts < 0 "
             "| mean Δ tumour AUC | lowest | cohorts < 0 | mean Δ malignant AUC | lowest | cohorts < 0 "
             "| FP / patient | lesions found (cohorts with fewer) |",
             "| --- " * 15 + "|"]
    for variant in variants:
        rows = [cohort[variant] for cohort in results.values()]
        cells = []
        for key, form in (("lesion_f1", "{:+.1f}"), ("malignant_f1", "{:+.1f}"), ("auc_tumor", "{:+.3f}"),
                          ("auc_malignant", "{:+.3f}")):
            values = [r[key] for r in rows if r[key] is not None]
            cells += [form.format(np.mean(values)) + (" pp" if "f1" in key else ""), form.format(min(values)),
                      str(sum(v < -1e-9 for v in values))] if values else ["n/a"] * 3
        before = np.mean([r["fp_per_patient"][0] for r in rows])
        after = np.mean([r["fp_per_patient"][1] for r in rows])
        found = np.sum([r["found"] for r in rows], axis=0)
        fewer = sum(r["found"][1] < r["found"][0] for r in rows)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {before:.3f} -> {after:.3f} | "
                     f"{found[0]} -> {found[1]} ({fewer}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cohorts", nargs="+", type=Path, help="seed folders of finished bench_efficacy.py runs")
    parser.add_argument("--guards", action="append", type=parse_guards, default=[],
                        help="a variant to refit: NAME=score,score (repeatable; default: the code's guards)")
    args = parser.parse_args(argv)
    from nnunet_plus.classifier.operating_point import GUARDED_SCORES

    guard_sets = dict(args.guards) or {"refit": dict(GUARDED_SCORES)}
    results = {}
    for seed_dir in args.cohorts:
        try:
            cohort = load_cohort(seed_dir)
        except (FileNotFoundError, KeyError, ValueError) as error:
            print(f"refit_operating_point: {error}", file=sys.stderr)
            return 1
        results[str(seed_dir)] = compare(cohort, guard_sets)
        for name, row in results[str(seed_dir)].items():
            fp = row["fp_per_patient"]
            print(f"{seed_dir}  {name:18s} lesion F1 {_signed(row['lesion_f1']):>6}  malignant F1 "
                  f"{_signed(row['malignant_f1']):>6}  benign F1 {_signed(row['benign_f1']):>6}  AUC tumour "
                  f"{_signed_auc(row['auc_tumor'])} malignant {_signed_auc(row['auc_malignant'])}  "
                  f"FP/patient {fp[0]:.2f} -> {fp[1]:.2f}  found {row['found'][0]} -> {row['found'][1]}  | "
                  f"{row['rule']}", flush=True)
    print("\n" + "\n".join(summary_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
