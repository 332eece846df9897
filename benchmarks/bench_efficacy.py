"""Benchmark (issue 13): nnU-Net alone vs + PLUS vs + a gradient-boosting peer on phantom cohorts of several seeds.

What the PLUS stage adds over nnU-Net alone, and over a simple second stage, on phantom cohorts drawn with
different seeds.

Per seed S, in ``--workdir/seed_S`` (kept: a rerun continues where it stopped):

1. the whole ``nnunet_plus_demo --seed S`` (phantom cohort, nnU-Net folds 0 / 1, PLUS classifier folds 0 / 1,
   prediction of the held-out test cases by nnU-Net alone and by nnU-Net + PLUS, ``nnunet_plus_evaluate
   --baseline``); its output goes to ``seed_S/bench_demo.log``;
2. the peer (``--skip-peer`` leaves it out; ``benchmarks/peer_gbm.py``): gradient boosting on per-candidate
   numbers of the classifier's candidate bank, cross-fitted along the demo's 2-fold split, its decision rule
   fitted on the out-of-fold tables with the project's operating point (same guard as PLUS: the identity,
   i.e. nnU-Net alone, unless a rule strictly beats it), applied to the test cases. The test cases'
   candidates come from nnU-Net's softmax that the demo's + PLUS prediction keeps (``predictions/plus/<case>.npz``;
   for a demo folder without it, ``nnunet_plus_predict --no-classifier --save_probabilities`` with the demo's
   folds and options) and :func:`~nnunet_plus.classifier.candidate_arrays.build_case_candidates`; the reference
   labels only score them.

Metrics on the test cases (``docs/evaluation.md``: overlap criterion, no minimum volume, as the demo
evaluates): lesion F1 / precision / recall (a lesion counts when found with the right type), false positives
per patient, malignant / benign patient F1, screening accuracy (any lesion), malignant / tumour AUC. nnU-Net
alone and + PLUS come from the demo's ``evaluation/summary_baseline.json`` and ``summary.json``; the peer is
scored on candidate-bank arrays (:func:`~nnunet_plus.classifier.rule_scores.score_cases`, the same
matching), and nnU-Net alone is scored that way too as a consistency check against the summary. Patient AUC
scores: LiverMax for nnU-Net alone and whenever the rule is the identity, else the second stage's patient
probabilities (max over the candidates), as ``nnunet_plus_predict`` does.

    python benchmarks/bench_efficacy.py --seeds 11 12 13 [--write-results]
    python benchmarks/bench_efficacy.py --seeds 1 2 --cases 8 --test-cases 4 -tr nnUNetTrainerPLUS_cpuTiny_2epochs \\
        --classifier-epochs 1 --workdir /tmp/bench_eff_smoke          # smoke test, a few minutes per seed
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Efficacy (bench_efficacy.py)"
RESULTS_FILE = "efficacy.json"
SOFTMAX_RUN = "nnunet_softmax"  # nnU-Net's softmax of the test cases when the + PLUS run did not keep it
ARMS = ("nnunet", "plus", "peer")
ARM_NAMES = {"nnunet": "nnU-Net alone", "plus": "+ PLUS", "peer": "+ GBM peer"}
#: (key, row name, kind): "pct" = fraction printed in %, deltas in percentage points
METRICS = (("lesion_f1", "lesion F1", "pct"), ("lesion_precision", "lesion precision", "pct"),
           ("lesion_recall", "lesion recall", "pct"), ("fp_per_patient", "FP / patient", "float2"),
           ("malignant_f1", "malignant patient F1", "pct"), ("benign_f1", "benign patient F1", "pct"),
           ("screening_accuracy", "screening accuracy", "pct"), ("auc_malignant", "malignant AUC", "float3"),
           ("auc_tumor", "tumour AUC", "float3"))
#: the table's comparison columns: (name, arm, minus arm)
DELTAS = (("Δ PLUS", "plus", "nnunet"), ("Δ GBM", "peer", "nnunet"), ("PLUS − GBM", "plus", "peer"))

sys.path.insert(0, str(Path(__file__).resolve().parent))


# ---- stage 1: the demo ----------------------------------------------------------------------------------------
def demo_command(args, seed: int, folder: Path) -> list[str]:
    command = [sys.executable, "-m", "nnunet_plus.demo", "--workdir", str(folder), "--seed", str(seed),
               "-device", args.device]
    for flag, value in (("--cases", args.cases), ("--test-cases", args.test_cases),
                        ("--extra-cases", args.extra_cases), ("--conspicuity", args.conspicuity),
                        ("-tr", args.trainer), ("--classifier-preset", args.classifier_preset),
                        ("--classifier-epochs", args.classifier_epochs), ("-np", args.num_processes)):
        if value is not None:
            command += [flag, str(value)]
    return command


def run_demo(command: list[str], log: Path, *, quiet: bool) -> tuple[float, str | None]:
    """Run the demo (its output into ``log``, step headers on the console); (wall seconds, error or None)."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ {shlex.join(command)}\n")
        fh.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   encoding="utf-8", errors="replace", bufsize=1)
        errors = []
        for line in process.stdout:
            fh.write(line)
            if line.startswith("nnunet_plus_demo: error"):
                errors.append(line.strip())
            if not quiet and (line.startswith("=== [") or line.startswith("=== PLUS") or "error" in line[:40]):
                print("   ", line.rstrip()[:160], flush=True)
        code = process.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        return seconds, (errors[-1] if errors else f"nnunet_plus_demo exited with code {code}") + f" (log: {log})"
    return seconds, None


def summary_metrics(summary: dict) -> dict:
    """The benchmark's metrics from an ``nnunet_plus_evaluate`` summary.json (None where undefined)."""
    lesion = summary.get("lesion_level") or {}
    patient = summary.get("patient_level") or {}
    auc = patient.get("auc") or {}
    n_cases = (summary.get("meta") or {}).get("n_cases") or 0
    return {"lesion_f1": lesion.get("f1"), "lesion_precision": lesion.get("precision"),
            "lesion_recall": lesion.get("recall"),
            "fp_per_patient": lesion["fp"] / n_cases if n_cases and lesion.get("fp") is not None else None,
            "malignant_f1": (patient.get("malignant") or {}).get("f1"),
            "benign_f1": (patient.get("benign") or {}).get("f1"),
            "screening_accuracy": (patient.get("screening") or {}).get("accuracy"),
            "auc_malignant": auc.get("malignant"), "auc_tumor": auc.get("tumor"),
            "counts": {k: lesion.get(k) for k in ("tp", "fl", "fp", "fn")}}


def plus_notes(demo) -> list[str]:
    """What the PLUS stage did: skipped, or its fitted operating point."""
    if demo.classifier_skipped:
        return [f"PLUS skipped ({demo.classifier_skipped}): the + PLUS column is nnU-Net alone"]
    path = demo.classifier_folder / "operating_point.json"
    if not path.is_file():
        return ["PLUS: no operating_point.json in the classifier folder"]
    data = json.loads(path.read_text())
    aside = " (+ PLUS = nnU-Net alone)" if data.get("identity") else ""
    return [f"PLUS operating point: {data.get('description')}{aside}"]


def _schema_and_classes(meta: dict):
    from nnunet_plus.schema import SCHEMA_KEY, LesionSchema

    schema = LesionSchema.from_dataset_json({"labels": meta["labels"], SCHEMA_KEY: meta["schema"]})
    names = list(schema.lesions)
    return schema, [names.index(n) for n in schema.malignant], [names.index(n) for n in schema.benign]


def build_test_banks(demo, meta: dict, schema, softmax_dir: Path, out_dir: Path) -> list:
    """Candidate-bank arrays of the demo's test cases, from nnU-Net's softmax (``<case>.npz`` in ``softmax_dir``)."""
    import numpy as np
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_plus.classifier.candidate_arrays import build_case_candidates
    from nnunet_plus.classifier.bank_io import load_case_bank, save_case_bank
    from nnunet_plus.classifier.bank_settings import BankSettings

    dataset_json = json.loads((demo.dataset_raw / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    images, labels = demo.dataset_raw / "imagesTs", demo.dataset_raw / "labelsTs"
    channels = len(dataset_json["channel_names"])
    cases = sorted(p.name[: -len(f"_0000{ending}")] for p in images.glob(f"*_0000{ending}"))
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(images / f"{cases[0]}_0000{ending}"),
                                                       verbose=False)()
    settings = BankSettings.from_json(meta["settings"])
    banks = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        image, properties = reader.read_images([str(images / f"{case}_{c:04d}{ending}") for c in range(channels)])
        label, _ = reader.read_seg(str(labels / f"{case}{ending}"))
        with np.load(softmax_dir / f"{case}.npz", allow_pickle=False) as data:
            probabilities = data["probabilities"]
        sitk = properties.get("sitk_stuff", {})
        arrays = build_case_candidates(case, image, np.rint(label[0]).astype(np.int16), probabilities, schema,
                                       spacing=tuple(float(s) for s in properties["spacing"]),
                                       target_spacing=meta["target_spacing"], settings=settings,
                                       channel_names=meta["channel_names"], origin=sitk.get("origin"),
                                       direction=sitk.get("direction"))
        banks.append(load_case_bank(save_case_bank(arrays, out_dir / f"{case}.npz"), metadata=meta))
    return banks


def bank_arm_metrics(banks, tables, rule, schema, malignant: list[int], benign: list[int]) -> dict:
    """The benchmark's metrics of ``rule`` on candidate-bank cases (the identity = nnU-Net alone)."""
    import numpy as np

    from nnunet_plus.classifier.rule_scores import score_cases
    from nnunet_plus.classifier.patient_sources import plus_patient_probabilities
    from nnunet_plus.decision_rule import apply_rule
    from nnunet_plus.evaluation.metrics import auc, binary_metrics

    scores = score_cases(banks, tables, rule=rule, malignant_classes=malignant, benign_classes=benign)
    lesion = scores["lesion"]
    tumor_truth, tumor_found, score_tumor, score_malignant, malignant_truth = [], [], [], [], []
    for bank, table in zip(banks, tables):
        reported, _ = apply_rule(rule, table, tier=bank.tier, nnunet_class=bank.base_class,
                                 groups=(malignant, benign))
        tumor_truth.append(bool(bank.patient[0]))
        malignant_truth.append(bool(bank.patient[1]))
        tumor_found.append(bool(reported.any()))
        patient = plus_patient_probabilities(np.asarray(table), schema)  # each key from PLUS where the rule says
        score_tumor.append(patient["tumor"] if "tumor" in rule.patient_from_plus else float(bank.nnunet_patient[0]))
        score_malignant.append(patient["malignant"] if "malignant" in rule.patient_from_plus
                               else float(bank.nnunet_patient[1]))
    return {"lesion_f1": lesion["f1"], "lesion_precision": lesion["precision"], "lesion_recall": lesion["recall"],
            "fp_per_patient": lesion["fp"] / len(banks) if banks else None,
            "malignant_f1": scores["malignant_f1"], "benign_f1": scores["benign_f1"],
            "screening_accuracy": binary_metrics(tumor_truth, tumor_found)["accuracy"],
            "auc_malignant": auc(malignant_truth, score_malignant), "auc_tumor": auc(tumor_truth, score_tumor),
            "counts": {k: lesion[k] for k in ("tp", "fl", "fp", "fn")}}


def run_peer_arm(demo, baseline: dict, notes: list[str], *, quiet: bool) -> dict | None:
    """Peer metrics (None when there is no bank); predicts the test softmax, builds the test banks, cross-fits,
    scores; appends what it found to ``notes`` as it goes (they survive an exception)."""
    import numpy as np

    from nnunet_plus.classifier.bank_io import load_case_bank, read_bank_metadata
    from nnunet_plus.decision_rule import DecisionRule
    from nnunet_plus.classifier.splits import load_splits
    from nnunet_plus.demo import DATASET_NAME
    from peer_gbm import run_peer

    bank_dir = demo.classifier_folder / "candidate_bank"
    if not (bank_dir / "bank.json").is_file():
        notes.append(f"GBM peer: no candidate bank in {bank_dir} (the classifier never built one); peer n/a")
        return None
    meta = read_bank_metadata(bank_dir)
    schema, malignant, benign = _schema_and_classes(meta)
    banks = {case: load_case_bank(bank_dir / f"{case}.npz", metadata=meta) for case in sorted(meta.get("cases") or {})}
    splits = load_splits(demo.preprocessed / DATASET_NAME / "splits_final.json")

    cases = demo.test_cases
    softmax_dir = demo.predictions / "plus"  # the demo's + PLUS run keeps nnU-Net's softmax
    if not all((softmax_dir / f"{c}.npz").is_file() for c in cases):
        softmax_dir = demo.predictions / SOFTMAX_RUN
    if not all((softmax_dir / f"{c}.npz").is_file() for c in cases):
        if not quiet:
            print(f"    peer: nnunet_plus_predict --no-classifier --save_probabilities -> predictions/{SOFTMAX_RUN}",
                  flush=True)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            demo.predict(SOFTMAX_RUN, ["--no-classifier", "--save_probabilities"])
    test_banks = build_test_banks(demo, meta, schema, softmax_dir, demo.workdir / "bench_efficacy" / "test_bank")

    n_outputs = int(meta["num_lesion_classes"]) + 1
    identity_tables = [np.zeros((b.num_candidates, n_outputs)) for b in test_banks]
    nnunet = bank_arm_metrics(test_banks, identity_tables, DecisionRule(), schema, malignant, benign)
    ours, theirs = nnunet["counts"], baseline.get("counts") or {}
    same = ours == theirs and _close(nnunet["lesion_f1"], baseline.get("lesion_f1"))
    notes.append(f"consistency: nnU-Net alone lesion F1 {_pct(nnunet['lesion_f1'])} on the test banks (tp/fl/fp/fn "
                 f"{_counts(ours)}) vs {_pct(baseline.get('lesion_f1'))} in summary_baseline.json ({_counts(theirs)}): "
                 + ("agree" if same else "DISAGREE"))
    if not banks or not any(b.num_candidates for b in banks.values()):
        notes.append("GBM peer: the candidate bank holds no candidate; the peer is nnU-Net alone")
        return dict(nnunet)
    result = run_peer(banks, meta, splits, test_banks, malignant_classes=malignant, benign_classes=benign,
                      class_names=schema.lesions)
    rule = result.fitted.rule
    peer = bank_arm_metrics(test_banks, result.tables, rule, schema, malignant, benign)
    notes.append(f"GBM peer ({result.n_train_candidates} bank candidates, {result.oof_cases} out-of-fold cases): "
                 + result.fitted.describe())
    return peer


# ---- formatting -----------------------------------------------------------------------------------------------
def _close(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)


def _counts(counts: dict) -> str:
    return "/".join("?" if counts.get(k) is None else str(counts[k]) for k in ("tp", "fl", "fp", "fn"))


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def fmt(value, kind: str, *, delta: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    sign = "+" if delta else ""
    if kind == "pct":
        return f"{100 * value:{sign}.1f}" + (" pp" if delta else " %")
    return f"{value:{sign}.{2 if kind == 'float2' else 3}f}"


def _delta(arms: dict, key: str, a: str, b: str):
    x, y = (arms.get(a) or {}).get(key), (arms.get(b) or {}).get(key)
    return None if x is None or y is None else x - y


def seed_table(result: dict) -> list[str]:
    arms = result["arms"]
    head = ["metric", *(ARM_NAMES[a] for a in ARMS), *(d[0] for d in DELTAS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name, kind in METRICS:
        cells = [fmt((arms.get(a) or {}).get(key), kind) if arms.get(a) is not None else "n/a" for a in ARMS]
        cells += [fmt(_delta(arms, key, a, b), kind, delta=True) for _, a, b in DELTAS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _mean_sd(values: list, kind: str, n_seeds: int, *, delta: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    scale, digits = (100.0, 1) if kind == "pct" else (1.0, 2 if kind == "float2" else 3)
    unit = (" pp" if delta else " %") if kind == "pct" else ""
    text = f"{scale * mean:{'+' if delta else ''}.{digits}f} ± " + ("n/a" if sd is None else f"{scale * sd:.{digits}f}")
    return text + unit + (f" (n={len(values)})" if len(values) < n_seeds else "")


def mean_table(results: list[dict]) -> list[str]:
    done = [r for r in results if r["status"] == "ok"]
    head = ["metric (mean ± sd)", *(ARM_NAMES[a] for a in ARMS), *(d[0] for d in DELTAS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name, kind in METRICS:
        cells = [_mean_sd([(r["arms"].get(a) or {}).get(key) for r in done], kind, len(done)) for a in ARMS]
        cells += [_mean_sd([_delta(r["arms"], key, a, b) for r in done], kind, len(done), delta=True)
                  for _, a, b in DELTAS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def time_table(results: list[dict]) -> list[str]:
    lines = ["| seed | status | test cases | demo, this run (s) | demo steps, all runs (s) | peer (s) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        t = r["times"]
        cells = [str(r["seed"]), r["status"], str(r.get("n_test") or "n/a"),
                 *("n/a" if t.get(k) is None else f"{t[k]:.0f}" for k in ("demo_run_s", "demo_steps_s", "peer_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        lines.append(f"### seed {r['seed']} ({r['status']})")
        lines.append("")
        if r["status"] != "ok":
            lines.append(f"- failed: {r.get('error')}")
        else:
            lines += seed_table(r)
            lines.append("")
        lines += [f"- {note}" for note in r["notes"]]
        lines.append("")
    ok = sum(r["status"] == "ok" for r in results)
    lines.append(f"### mean ± sd over {ok} of {len(results)} seed(s) (sample sd; deltas averaged per seed)")
    lines.append("")
    lines += mean_table(results)
    lines.append("")
    lines.append("### wall time per seed")
    lines.append("")
    lines += time_table(results)
    return lines


# ---- results file ------------------------------------------------------------------------------------------------
def machine(device: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        pass
    accelerator = "CPU only"
    if device == "cuda":
        import torch

        accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda requested, none visible"
    return f"{os.cpu_count()}-core CPU ({cpu}), device {device}: {accelerator}, Python {platform.python_version()}"


def write_results(text: str) -> None:
    """Replace (or append) only this benchmark's section of RESULTS.md, atomically."""
    from results_md import write_section

    write_section(SECTION, text, results=RESULTS)


# ---- main ----------------------------------------------------------------------------------------------------------
def run_seed(seed: int, args) -> dict:
    from nnunet_plus.demo import CLASSIFIER_EPOCHS, DEMO_CASES, DEMO_CONSPICUITY, DEMO_EXTRA_CASES, Demo

    folder = (args.workdir / f"seed_{seed}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    result = {"seed": seed, "status": "ok", "error": None, "arms": {}, "notes": [], "times": {}, "n_test": None}
    print(f"\n=== seed {seed}: nnunet_plus_demo in {folder} (log: {folder / 'bench_demo.log'})", flush=True)
    seconds, error = run_demo(demo_command(args, seed, folder), folder / "bench_demo.log", quiet=args.quiet)
    demo = Demo(folder, device=args.device, n_train=args.cases or DEMO_CASES, n_test=args.test_cases or 20,
                classifier_epochs=args.classifier_epochs or CLASSIFIER_EPOCHS[args.device],
                num_processes=args.num_processes or min(os.cpu_count() or 1, 4), trainer=args.trainer,
                conspicuity=args.conspicuity if args.conspicuity is not None else DEMO_CONSPICUITY, seed=seed,
                classifier_preset=args.classifier_preset,
                n_extra=DEMO_EXTRA_CASES if args.extra_cases is None else args.extra_cases)
    result["times"] = {"demo_run_s": seconds, "demo_steps_s": sum(demo.timings.values()) if demo.timings else None}
    if error is not None:
        result.update(status="failed", error=error)
        print(f"    seed {seed} failed: {error}", flush=True)
        return result
    ours = json.loads((demo.evaluation / "summary.json").read_text())
    baseline = json.loads((demo.evaluation / "summary_baseline.json").read_text())
    result["n_test"] = (baseline.get("meta") or {}).get("n_cases")
    result["arms"]["nnunet"] = summary_metrics(baseline)
    result["arms"]["plus"] = summary_metrics(ours)
    result["notes"] += plus_notes(demo)
    if args.skip_peer:
        result["arms"]["peer"] = None
        result["notes"].append("GBM peer skipped (--skip-peer)")
    else:
        start = time.perf_counter()
        try:
            result["arms"]["peer"] = run_peer_arm(demo, result["arms"]["nnunet"], result["notes"], quiet=args.quiet)
        except Exception as exc:  # noqa: BLE001 - the peer must not hide the seed's demo figures
            result["arms"]["peer"] = None
            result["notes"].append(f"GBM peer failed: {type(exc).__name__}: {exc}")
        result["times"]["peer_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    from nnunet_plus.demo import DEMO_CONSPICUITY

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13], help="cohort seeds (default 11 12 13)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nnunet_plus_bench_efficacy"),
                        help="one demo work folder per seed (seed_S/; kept: a rerun continues where it stopped)")
    parser.add_argument("--cases", type=int, default=None, help="training cases (default: the demo's, 48)")
    parser.add_argument("--test-cases", type=int, default=None, help="test cases (default: the demo's, 20)")
    parser.add_argument("--extra-cases", type=int, default=None,
                        help="extra cohort for the classifier (default: the demo's, 48; 0 = none)")
    parser.add_argument("--conspicuity", type=float, default=None,
                        help=f"phantom lesion conspicuity (default: the demo's, {DEMO_CONSPICUITY:g})")
    parser.add_argument("-device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")
    parser.add_argument("-tr", dest="trainer", default=None, help="nnU-Net trainer (default: the demo's per device)")
    parser.add_argument("--classifier-preset", choices=("tiny", "paper"), default=None,
                        help="PLUS classifier preset (default: the demo's per device: tiny on cpu, paper on cuda)")
    parser.add_argument("--classifier-epochs", type=int, default=None,
                        help="PLUS classifier epochs (default: the demo's per device: 5 on cpu, 30 on cuda)")
    parser.add_argument("-np", dest="num_processes", type=int, default=None,
                        help="worker processes of the demo (default: the demo's)")
    parser.add_argument("--skip-peer", action="store_true", help="leave out the gradient-boosting peer")
    parser.add_argument("--quiet", action="store_true", help="print only the tables")
    parser.add_argument("--write-results", action="store_true", help=f"write {SECTION!r} of {RESULTS}")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)

    from nnunet_plus.files.atomic import write_json_atomic

    started = datetime.datetime.now().astimezone()
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args))
        write_json_atomic(args.workdir / RESULTS_FILE, {"command": argv, "results": results})
    command = "python benchmarks/bench_efficacy.py " + shlex.join(argv)
    lines = [SECTION, "", f"`{command}`", "",
             f"Machine: {machine(args.device)}. Run {started:%Y-%m-%d %H:%M %Z}; figures per seed in "
             f"`{args.workdir / RESULTS_FILE}`.", "",
             "nnU-Net alone and + PLUS: the demo's `nnunet_plus_evaluate --baseline` on the held-out test cases; "
             "+ GBM peer: gradient boosting on per-candidate numbers of the same candidate bank, under the same "
             "guard and operating-point fit (benchmarks/peer_gbm.py). Δ = column minus nnU-Net alone "
             "(percentage points for %); PLUS − GBM = what the PLUS network adds over the peer.", "",
             *report(results)]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    if args.write_results:
        write_results(text)
        print(f"\nwritten to {RESULTS}", flush=True)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
