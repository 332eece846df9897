"""The demo's Markdown report: nnU-Net alone vs + PLUS, the training curves' end points, plots, overlays, timings."""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Protocol

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.classifier.trainer.fold_files import read_history
from nnunet_plus.evaluation.summary import format_comparison, format_lesion_table


class DemoRun(Protocol):
    """What the report reads of a demo run (``nnunet_plus.demo.Demo`` is one); the report never imports the demo."""

    workdir: Path
    device: str
    trainer: str
    n_train: int
    n_test: int
    timings: dict
    dataset_raw: Path
    model_folder: Path
    classifier_folder: Path
    classifier_skipped: str | None
    predictions: Path
    evaluation: Path


REPORT_FILE = "report.md"
MAX_OVERLAYS = 4
#: training-loss lines of nnU-Net's training_log_*.txt (nnU-Net writes no per-epoch JSON; the PLUS classifier's
#: losses come from its fold's history.json)
_NNUNET_LOSS = re.compile(r"train_loss (-?\d+(?:\.\d+)?)")


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _first_last(values: list[float]) -> str:
    """"first -> last (N epochs)", or "n/a" without values."""
    return f"{values[0]:.3f} -> {values[-1]:.3f} ({len(values)} epochs)" if values else "n/a"


def _nnunet_loss(fold_folder: Path) -> str:
    """nnU-Net's training loss, first -> last, over the fold's training logs (oldest first)."""
    return _first_last([float(m.group(1)) for log in sorted(fold_folder.glob("training_log*.txt"))
                        for m in _NNUNET_LOSS.finditer(log.read_text())])


def _classifier_loss(fold_folder: Path) -> str:
    """The PLUS classifier's training loss, first -> last, from the fold's history.json."""
    history = read_history(fold_folder) or {}
    return _first_last([float(r["train_total"]) for r in history.get("history", [])
                        if r.get("train_total") is not None])


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _learning_table(demo: DemoRun) -> list[str]:
    """Per fold and stage: training loss first -> last epoch and the fold's validation lesion figures."""
    lines = ["| stage | fold | training loss | validation (held-out fold) |", "| --- | --- | --- | --- |"]
    for fold_folder in sorted(demo.model_folder.glob("fold_*")):
        summary = fold_folder / "validation" / "plus_summary.json"
        result = "n/a"
        if summary.is_file():
            lesion = json.loads(summary.read_text())["tiers"]["confident"]["lesion_level"]
            result = (f"f = 1 lesion F1 {_percent(lesion['f1'])}, recall {_percent(lesion['recall'])}, found "
                      f"regardless of type {_percent(lesion['recall_rough'])}")
        loss = _nnunet_loss(fold_folder)
        lines.append(f"| nnU-Net | {fold_folder.name} | {loss} | {result} |")
    for fold_folder in sorted(demo.classifier_folder.glob("fold_*")):
        summary = fold_folder / "validation" / "summary.json"
        result = "n/a"
        if summary.is_file():
            data = json.loads(summary.read_text())
            alone, plus = data["nnunet"]["lesion_level"], data["nnunet+plus"]["lesion_level"]
            result = (f"lesion F1 {_percent(alone['f1'])} (nnU-Net alone) -> {_percent(plus['f1'])} (+ PLUS), "
                      f"precision {_percent(alone['precision'])} -> {_percent(plus['precision'])}")
        lines.append(f"| PLUS classifier | {fold_folder.name} | {_classifier_loss(fold_folder)} "
                     f"| {result} |")
    return lines


def _classifier_figures(demo: DemoRun) -> list[str]:
    lines = []
    for fold_folder in sorted(demo.classifier_folder.glob("fold_*")):
        summary_file = fold_folder / "validation" / "summary.json"
        if summary_file.is_file():
            lines.append(f"- classifier {fold_folder.name}: validation summary `{_relative(summary_file, demo.workdir)}`")
        progress = fold_folder / "progress.png"
        if progress.is_file():
            lines.append(f"\n![classifier {fold_folder.name} progress]({_relative(progress, demo.workdir)})\n")
    return lines


def _operating_point(demo: DemoRun) -> list[str]:
    """What the prediction's decision rule is (the classifier folder's operating_point.json), in words."""
    path = demo.classifier_folder / "operating_point.json"
    if demo.classifier_skipped or not path.is_file():
        return []
    data = json.loads(path.read_text())
    verdict = ("**Stage two steps aside on the lesions**: on the classifier folds' validation cases no decision rule "
               "beat nnU-Net alone, so + PLUS reports exactly nnU-Net's lesions." if data["identity"] else
               "Stage two changes nnU-Net's answer where the rule below says so.")
    if not data["rule"].get("patient_from_plus"):  # else the description names them
        verdict += " Patient probabilities: LiverMax (PLUS's validation AUC was nowhere above LiverMax's)."
    return [f"Operating point (`{_relative(path, demo.workdir)}`, fitted on the classifier folds' validation "
            f"cases): {data['description']}. {verdict}", ""]


def write_report(demo: DemoRun) -> Path:
    """Write ``report.md`` into the demo's work folder; returns its path."""
    ours = json.loads((demo.evaluation / "summary.json").read_text())
    baseline = json.loads((demo.evaluation / "summary_baseline.json").read_text())
    lines = [
        "# nnunet_plus demo report",
        "",
        f"Synthetic phantom cohort `{demo.dataset_raw.name}`: {demo.n_train} training cases (2 folds), "
        f"{demo.n_test} held-out test cases. nnU-Net trainer `{demo.trainer}` on `{demo.device}`; "
        f"machine: {platform.platform()}, {os.cpu_count()} CPU cores.",
        "",
        "## nnU-Net alone vs nnU-Net + PLUS (test cases)",
        "",
        *([f"**The PLUS stage was skipped** (`{demo.classifier_skipped}`): the two rows below are both nnU-Net "
           "alone. Train stage one longer (see README) to give the classifier candidates.", ""]
          if demo.classifier_skipped else []),
        *_operating_point(demo),
        "```",
        format_comparison(baseline, ours, names=("nnU-Net alone", "nnU-Net + PLUS")),
        "```",
        "",
        "### Lesion level, nnU-Net + PLUS",
        "",
        "```",
        format_lesion_table(ours),
        "```",
        "",
        "## Plots",
        "",
    ]
    for png in sorted((demo.evaluation / "plots").glob("*.png")):
        lines.append(f"![{png.stem}]({_relative(png, demo.workdir)})")
    lines += ["", "## Training", "", *_learning_table(demo), ""]
    for fold_folder in sorted(demo.model_folder.glob("fold_*")):
        progress = fold_folder / "progress.png"
        if progress.is_file():
            lines.append(f"![nnU-Net {fold_folder.name} progress]({_relative(progress, demo.workdir)})")
    lines += _classifier_figures(demo)
    overlays = sorted((demo.predictions / "plus").glob("*_overlay.png"))[:MAX_OVERLAYS]
    if overlays:
        lines += ["", "## Overlays (nnU-Net + PLUS)", ""]
        lines += [f"![{p.stem}]({_relative(p, demo.workdir)})" for p in overlays]
    lines += ["", "## Time per step (s)", "", "| step | seconds |", "| --- | --- |"]
    lines += [f"| {step} | {seconds} |" for step, seconds in demo.timings.items()]
    lines.append(f"| **total** | {sum(demo.timings.values()):.1f} |")
    report = demo.workdir / REPORT_FILE
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return report
