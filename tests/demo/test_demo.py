"""``nnunet_plus_demo`` end to end on a very small cohort with the 2-epoch CPU trainer (a smoke test of the
main job: every real command runs, the report is written, a re-run skips every step)."""
from __future__ import annotations

import json

import pytest

from nnunet_plus.demo import DATASET_NAME, TIMINGS_FILE, main

STEPS = ["phantom", "plan_and_preprocess", "nnunet_fold0", "nnunet_fold1", "extra_cohort", "classifier_fold0",
         "classifier_fold1", "predict_nnunet", "predict_plus", "evaluate"]
ARGS = ["--cases", "6", "--test-cases", "2", "--extra-cases", "2", "--classifier-epochs", "1",
        "-tr", "nnUNetTrainerPLUS_cpuTiny_2epochs", "-np", "1"]


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
    # the extra cohort: predicted by the trained folds, in the candidate bank, spread over the classifier folds
    from nnunet_plus.classifier.bank_io import read_bank_metadata

    bank = read_bank_metadata(workdir / "nnUNet_results" / DATASET_NAME / f"PLUSClassifier__{ARGS[-3]}__nnUNetPlans__"
                              "3d_fullres" / "candidate_bank")
    extra = sorted(c for c, entry in bank["cases"].items() if entry.get("extra"))
    assert extra == ["extra_0000", "extra_0001"]
    assert not any(p.name.startswith("extra") for p in (workdir / "nnUNet_raw" / DATASET_NAME / "imagesTr").iterdir())


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
    """Stage one found no lesion candidate: the demo records why and goes on with nnU-Net alone; any other
    classifier failure still stops the demo."""
    from nnunet_plus.classifier.trainer import NO_CANDIDATE_ERROR
    from nnunet_plus.demo import CLASSIFIER_SKIPPED_FILE, Demo, DemoError

    demo = Demo(tmp_path, device="cpu", n_train=4, n_test=1, classifier_epochs=1, num_processes=1)
    demo.logs.mkdir(parents=True)
    message = f"nnunet_plus_train_classifier: error: {NO_CANDIDATE_ERROR} 2 training cases of fold 0, even at f=4"

    def failing(fold, text):
        (demo.logs / f"classifier_fold{fold}.log").write_text(f"building the bank\n{text}\n")
        raise DemoError(f"step classifier_fold{fold} failed (exit 1)")

    monkeypatch.setattr(demo, "_train_classifier", lambda fold: failing(fold, "Traceback: out of memory"))
    with pytest.raises(DemoError):
        demo.train_classifier(0)
    assert demo.classifier_skipped is None

    monkeypatch.setattr(demo, "_train_classifier", lambda fold: failing(fold, message))
    demo.train_classifier(0)
    assert (tmp_path / CLASSIFIER_SKIPPED_FILE).is_file()
    assert demo.classifier_skipped == message


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
