"""``nnunet_plus_demo`` end to end on a very small cohort with the 2-epoch CPU trainer (the main job: every real
command runs, both stages learn something, the classifier is trained rather than skipped, the report is written,
a re-run skips every step)."""
from __future__ import annotations

import json
import math
import re

import pytest

from nnunet_plus.demo import CLASSIFIER_SKIPPED_FILE, DATASET_NAME, TIMINGS_FILE, main

STEPS = ["phantom", "plan_and_preprocess", "nnunet_fold0", "nnunet_fold1", "extra_cohort", "classifier_fold0",
         "classifier_fold1", "predict_plus", "predict_nnunet", "evaluate"]
ARGS = ["--cases", "6", "--test-cases", "2", "--extra-cases", "2", "--classifier-epochs", "1",
        "-tr", "nnUNetTrainerPLUS_cpuTiny_2epochs", "-np", "1"]
CLASSIFIER = f"PLUSClassifier__{ARGS[-3]}__nnUNetPlans__3d_fullres"
#: what even this tiny run learns (seen in two CPU runs: nnU-Net's training loss 1.963 -> 1.784 / 2.081 -> 1.904
#: and 2.299 -> 2.064 / 2.434 -> 2.240, liver Dice 0.22 and 0.14 on the test cases, 4 and 3 training candidates of
#: the classifier folds on a reference lesion beside 1,500 to 7,100 false ones); a stage that learned nothing misses
#: these by far. The lesion candidates are counted over both folds: after 8 iterations a fold may have none (a CI
#: run of 2026-12-07: 4 in fold 0, 0 beside 10,032 false ones in fold 1)
MIN_NNUNET_LOSS_DROP = 0.05
MIN_LIVER_DICE = 0.05
MIN_LESION_CANDIDATES = 1


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    code = main(["--workdir", str(workdir), *ARGS])
    return workdir, code


def test_demo_runs_every_step_and_writes_the_report(demo_run):
    workdir, code = demo_run
    assert code == 0
    timings = json.loads((workdir / TIMINGS_FILE).read_text())
    assert list(timings) == STEPS
    report = (workdir / "report.md").read_text()
    assert "nnU-Net alone" in report and "nnU-Net + PLUS" in report
    # what each stage learned: first -> last training loss from the real logs, validation figures per fold
    for fold in ("fold_0", "fold_1"):
        row = next(line for line in report.splitlines() if line.startswith(f"| nnU-Net | {fold} | "))
        assert "(2 epochs)" in row and "f = 1 lesion F1" in row
    summary = json.loads((workdir / "evaluation" / "summary.json").read_text())
    assert summary["meta"]["n_cases"] == 2
    for name in ("nnunet", "plus"):
        assert len(list((workdir / "predictions" / name).glob("case_*_instances.nii.gz"))) == 2
    assert (workdir / "nnUNet_raw" / DATASET_NAME / "dataset.json").is_file()
    # nnU-Net alone is the + PLUS run's saved softmax without stage two
    info = json.loads((workdir / "predictions" / "nnunet" / "nnunet_plus_predict.json").read_text())
    assert info["mode"] == "from-probabilities"
    # the extra cohort: predicted by the trained folds, in the candidate bank, spread over the classifier folds
    from nnunet_plus.classifier.bank_io import read_bank_metadata

    bank = read_bank_metadata(workdir / "nnUNet_results" / DATASET_NAME / CLASSIFIER / "candidate_bank")
    extra = sorted(c for c, entry in bank["cases"].items() if entry.get("extra"))
    assert extra == ["extra_0000", "extra_0001"]
    assert not any(p.name.startswith("extra") for p in (workdir / "nnUNet_raw" / DATASET_NAME / "imagesTr").iterdir())


def _loss_row(report: str, stage: str, fold: str) -> tuple[float, float, int]:
    """(first, last, epochs) of the report's training-loss cell of ``stage`` / ``fold``."""
    row = next(line for line in report.splitlines() if line.startswith(f"| {stage} | {fold} | "))
    match = re.search(r"\| (-?\d+\.\d+) -> (-?\d+\.\d+) \((\d+) epochs\) \|", row)
    assert match, row
    return float(match.group(1)), float(match.group(2)), int(match.group(3))


def test_both_stages_learned_and_the_classifier_was_trained(demo_run):
    """Not only a smoke test: stage one's training loss falls, it finds the liver and lesion candidates that
    overlap reference lesions, and stage two is trained (not skipped) in both folds, on them."""
    from nnunet_plus.classifier.checkpoint import load_checkpoint
    from nnunet_plus.classifier.trainer.fold_files import fold_complete, read_history, read_skipped

    workdir, code = demo_run
    assert code == 0
    report = (workdir / "report.md").read_text()
    for fold in ("fold_0", "fold_1"):
        first, last, epochs = _loss_row(report, "nnU-Net", fold)
        assert epochs == 2 and first - last >= MIN_NNUNET_LOSS_DROP, (fold, first, last)
    liver = json.loads((workdir / "evaluation" / "summary_baseline.json").read_text())["dice"]["liver"]["mean"]
    assert liver is not None and liver >= MIN_LIVER_DICE, liver
    # stage two: no skip record anywhere, both folds complete, trained on candidates of real lesions
    assert not (workdir / CLASSIFIER_SKIPPED_FILE).exists() and "was skipped" not in report
    lesion_candidates = {}
    for fold in ("fold_0", "fold_1"):
        folder = workdir / "nnUNet_results" / DATASET_NAME / CLASSIFIER / fold
        assert read_skipped(folder) is None and fold_complete(folder)
        counts = load_checkpoint(folder / "checkpoint_final.pth")["class_counts"]
        lesion_candidates[fold] = sum(counts[:-1])   # the last class: not a lesion
        [record] = read_history(folder)["history"]
        assert math.isfinite(record["train_total"]) and math.isfinite(record["val_total"])
        first, last, epochs = _loss_row(report, "PLUS classifier", fold)
        assert epochs == 1 and first == last == pytest.approx(record["train_total"], abs=1e-3)
    assert sum(lesion_candidates.values()) >= MIN_LESION_CANDIDATES, lesion_candidates


def test_demo_rerun_skips_finished_steps(demo_run, capsys):
    workdir, _ = demo_run
    before = json.loads((workdir / TIMINGS_FILE).read_text())
    assert main(["--workdir", str(workdir), *ARGS]) == 0
    out = capsys.readouterr().out
    assert out.count("already done, skipped") == len(STEPS)
    assert json.loads((workdir / TIMINGS_FILE).read_text()) == before


def test_demo_refuses_too_few_cases(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path), "--cases", "2"]) == 2
    assert "--cases >= 4" in capsys.readouterr().err


def test_classifier_without_candidates_is_skipped_not_fatal(tmp_path, monkeypatch):
    """Stage one found no lesion candidate (the command wrote ``fold_k/skipped.json`` and failed): the demo records
    why and goes on with nnU-Net alone; any other classifier failure still stops the demo."""
    from nnunet_plus.classifier.trainer.fold_files import write_skipped
    from nnunet_plus.demo import CLASSIFIER_SKIPPED_FILE, Demo, DemoError

    demo = Demo(tmp_path, device="cpu", n_train=4, n_test=1, classifier_epochs=1, num_processes=1)
    reason = "nnU-Net found no lesion candidate in the 2 training cases of fold 0, even at the highest sensitivity"

    def failing(fold, skipped: bool):
        if skipped:
            write_skipped(demo.classifier_folder / f"fold_{fold}", reason)
        raise DemoError(f"step classifier_fold{fold} failed (exit 1)")

    monkeypatch.setattr(demo, "_train_classifier", lambda fold: failing(fold, False))
    with pytest.raises(DemoError):
        demo.train_classifier(0)
    assert demo.classifier_skipped is None

    monkeypatch.setattr(demo, "_train_classifier", lambda fold: failing(fold, True))
    demo.train_classifier(0)
    assert (tmp_path / CLASSIFIER_SKIPPED_FILE).is_file()
    assert demo.classifier_skipped == reason


def test_seed_and_classifier_preset_reach_the_commands(tmp_path, monkeypatch):
    """``--seed S`` draws the phantom cohort with seed S; ``--classifier-preset`` overrides the per-device preset."""
    from nnunet_plus.demo import CLASSIFIER_PRESETS, Demo

    built = []
    monkeypatch.setattr(Demo, "run_all", lambda self: built.append(self))
    assert main(["--workdir", str(tmp_path), "--seed", "7", "--classifier-preset", "paper"]) == 0
    assert built[0].seed == 7 and built[0].classifier_preset == "paper"
    assert main(["--workdir", str(tmp_path)]) == 0
    assert built[1].seed == 0 and built[1].classifier_preset == CLASSIFIER_PRESETS["cpu"]

    commands = {}
    monkeypatch.setattr(Demo, "run", lambda self, step, args: commands.__setitem__(step, args))
    built[0].make_phantom()
    built[0]._train_classifier(0)
    phantom, classifier = commands["phantom"], commands["classifier_fold0"]
    assert phantom[phantom.index("--seed") + 1] == "7"
    assert classifier[classifier.index("--preset") + 1] == "paper"


def test_extra_cohort_commands(tmp_path, monkeypatch):
    """The extra cohort is drawn with another seed and its own case ids outside nnUNet_raw, predicted by the
    trained folds with probabilities, and handed to the classifier; ``--extra-cases 0`` leaves it out."""
    from nnunet_plus.demo import EXTRA_SEED_OFFSET, Demo

    calls = []
    monkeypatch.setattr(Demo, "run", lambda self, step, args: calls.append((step, args)))
    demo = Demo(tmp_path, device="cpu", n_train=8, n_test=2, classifier_epochs=1, num_processes=1, seed=3,
                n_extra=5)
    demo.make_extra_cohort()
    (_, phantom), (_, predict) = calls
    assert phantom[0] == "nnunet_plus_make_phantom" and phantom[phantom.index("-n") + 1] == "5"
    assert phantom[phantom.index("--seed") + 1] == str(3 + EXTRA_SEED_OFFSET)
    assert phantom[phantom.index("--case-prefix") + 1] == "extra"
    assert not str(demo.extra_cohort).startswith(str(demo.raw))
    assert predict[0] == "nnUNetv2_predict" and "--save_probabilities" in predict
    assert predict[predict.index("-o") + 1] == str(demo.extra_cohort / "predictions")
    demo._train_classifier(0)
    assert calls[-1][1][calls[-1][1].index("--extra-cases") + 1] == str(demo.extra_cohort)
    demo.n_extra = 0
    demo._train_classifier(0)
    assert "--extra-cases" not in calls[-1][1]
