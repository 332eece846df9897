"""The demo's Markdown report: nnU-Net alone vs + PLUS, the training curves' end points, plots, overlays, timings."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from nnunet_plus.evaluation.summary import format_comparison, format_lesion_table

if TYPE_CHECKING:
    from nnunet_plus.demo import Demo

REPORT_FILE = "report.md"
MAX_OVERLAYS = 4


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _classifier_figures(demo: "Demo") -> list[str]:
    lines = []
    for fold_folder in sorted(demo.classifier_folder.glob("fold_*")):
        summary_file = fold_folder / "validation" / "summary.json"
        if summary_file.is_file():
            lines.append(f"- classifier {fold_folder.name}: validation summary `{_relative(summary_file, demo.workdir)}`")
        progress = fold_folder / "progress.png"
        if progress.is_file():
            lines.append(f"\n![classifier {fold_folder.name} progress]({_relative(progress, demo.workdir)})\n")
    return lines


def write_report(demo: "Demo") -> Path:
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
    lines += ["", "## Training", ""]
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
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(report)
    return report
