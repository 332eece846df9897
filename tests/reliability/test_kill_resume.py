"""Issue 14, acceptance: a ``kill -9`` at a random point, then a resume, gives the results of an uninterrupted run
(bit for bit for predict; the same final checkpoint for classifier training with the same seed), and no file under
a final name is ever truncated.

The commands run in subprocesses and are SIGKILLed (their whole process group) at a point drawn at random
(``sigkill.run``: :func:`conftest.kill_when`; a failure message names ``NNUNET_PLUS_KILL_SEED=<seed>``, set it to
replay that kill point). Right after each kill every file under a final name is checked (``sigkill.assert_complete``:
gzip / NIfTI complete and readable, JSON parses, PNG ends with IEND, npz CRCs, CSV rows, checkpoints load); hidden
files a kill leaves are temp files of the atomic writers only.

The demo as a whole takes minutes; its step mechanism is tested on its first step (the phantom cohort, seconds):
killed anywhere in it, the re-run redoes or skips it and ends with the cohort of an uninterrupted run. A ``kill -9``
of the demo process alone (not its group) takes the running step's command with it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_plus.files.atomic import TEMP_NAME

# ---- predict ------------------------------------------------------------------------------------------------------
N_CASES = 10
DATASET_ID = 977


def _plug_and_play_env(root: Path, schema) -> dict:
    """nnU-Net folders holding only ``Dataset977_KillResume/dataset.json`` (labels + the lesion schema): enough for
    ``nnunet_plus_predict --from-segmentation -d 977`` (no trained model)."""
    raw = root / "nnUNet_raw" / f"Dataset{DATASET_ID}_KillResume"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": schema.labels, "numTraining": 0, "file_ending": ".nii.gz",
        "plus": schema.to_block()}))
    for name in ("nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
    return {**os.environ, **{name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                 "nnUNet_results")}}


def _case_jsons(folder: Path) -> set[str]:
    """Cases whose ``<case>.json`` (written last: the case is done) exists in ``folder``."""
    return {p.name[: -len(".json")] for p in folder.glob("case_*.json")} if folder.is_dir() else set()


def _final_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if not p.name.startswith(".")}


def test_predict_killed_then_continued_equals_an_uninterrupted_run(cohort, make_tiny_case, tmp_path, sigkill):
    images, segmentations = tmp_path / "ct", tmp_path / "seg"
    for i in range(N_CASES):
        image, labels = make_tiny_case(i)  # 24 x 64 x 64 voxels, 1-2 lesions
        cohort.write(image.astype(np.int16), images / f"case_{i:02d}.nii.gz")
        cohort.write(labels, segmentations / f"case_{i:02d}.nii.gz")
    env = _plug_and_play_env(tmp_path, cohort.schema)

    def predict(out: Path, *extra: str) -> list[str]:  # every per-case writer: label maps, JSON, PNG, npz + pkl
        return [sys.executable, "-m", "nnunet_plus.predict.cli", "--from-segmentation", str(segmentations), "-i",
                str(images), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres", "-device", "cpu",
                "--no-classifier", "--disable_progress_bar", "--overlays", "--save_probabilities", *extra]

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    with open(tmp_path / "reference.log", "wb") as log:  # beside the run that is killed
        uninterrupted = subprocess.Popen(predict(reference), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # killed once 1..4 cases are done, up to most of a case later: in a label map, overlay, npz, JSON, ...
        k, delay = sigkill.randint(1, 4), sigkill.uniform(0.0, 0.08)
        sigkill.run(predict(resumed), tmp_path / "killed.log", lambda: len(_case_jsons(resumed)) >= k, delay=delay,
                    env=env)
        assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    finished = _case_jsons(resumed)
    assert k <= len(finished) < N_CASES, sigkill.tag
    hidden = sigkill.assert_complete(resumed)
    assert all(TEMP_NAME.match(p.name) or p.name.startswith(".nnunet_plus_write_test.") for p in hidden), \
        (hidden, sigkill.tag)

    again = subprocess.run(predict(resumed, "--continue_prediction"), env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, (again.stderr, sigkill.tag)
    assert f"{N_CASES - len(finished)} case(s) written, {len(finished)} already done, 0 failed" in again.stdout

    expected, got = _final_files(reference), _final_files(resumed)
    assert sorted(got) == sorted(expected), sigkill.tag
    for name, path in expected.items():
        if name == "nnunet_plus_predict.json":
            continue
        assert got[name].read_bytes() == path.read_bytes(), (name, sigkill.tag)
    # the run-info file: "command" holds the -o folder (and --continue_prediction), "report" / "parts" what this
    # run did (the resumed run skipped the finished cases); every other field (mode, folders, schema, ...) is equal
    run_info = [json.loads(files["nnunet_plus_predict.json"].read_text()) for files in (expected, got)]
    report = run_info[1]["report"]
    assert report["skipped"] == sorted(finished) and report["failures"] == []
    assert sorted(report["done"] + report["skipped"]) == [f"case_{i:02d}" for i in range(N_CASES)]
    for info in run_info:
        for key in ("command", "report", "parts"):
            del info[key]
    assert run_info[0] == run_info[1]


# ---- classifier training ------------------------------------------------------------------------------------------
#: what nnunet_plus_train_classifier runs for a fold (its trainer, settings and split) once the candidate bank is
#: built (here once, before), without the end-to-end validation after checkpoint_final: argv = bank, fold folder,
#: raw dataset, dataset name, training cases, validation cases, epochs, resume (1: continue_training, the CLI's --c).
#: One thread each: the runs are compared bit for bit, and two runs share two cores without oversubscription.
TRAIN = """
import sys
from pathlib import Path

import torch

from nnunet_plus.classifier.trainer.fold_trainer import PLUSClassifierTrainer
from nnunet_plus.classifier.trainer.settings import TrainerSettings

torch.set_num_threads(1)

bank, output, raw, dataset, train, val, epochs, resume = sys.argv[1:]
trainer = PLUSClassifierTrainer(Path(bank), Path(output), fold=0, train_cases=train.split(","),
                                val_cases=val.split(","), raw_dataset_dir=Path(raw), dataset_name=dataset,
                                settings=TrainerSettings(epochs=int(epochs), preset="tiny"),
                                device=torch.device("cpu"), quiet=True)
trainer.run_training(continue_training=resume == "1", validate=False)
"""


def test_classifier_training_killed_then_resumed_ends_with_the_same_checkpoint(tmp_path, sigkill,
                                                                             classifier_files):
    from nnunet_plus.classifier.checkpoint import load_checkpoint

    project = classifier_files(tmp_path / "project")
    split = project.splits[0]

    def train(output: Path, resume: bool) -> list[str]:
        return [sys.executable, "-c", TRAIN, str(project.bank), str(output), str(project.raw), project.dataset,
                ",".join(split["train"]), ",".join(split["val"]), "2", "1" if resume else "0"]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    with open(tmp_path / "reference.log", "wb") as log:  # beside the run that is killed
        uninterrupted = subprocess.Popen(train(reference, False), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # killed in the second (last) epoch: after checkpoint_latest.pth (epoch 1) first appears
        latest = resumed / "checkpoint_latest.pth"
        sigkill.run(train(resumed, False), tmp_path / "killed.log", latest.is_file, delay=sigkill.uniform(0.0, 0.3),
                    env=env)
        assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    assert not (resumed / "checkpoint_final.pth").exists(), sigkill.tag
    hidden = sigkill.assert_complete(resumed)  # checkpoint_latest / _best load
    assert all(re.fullmatch(r"\.checkpoint_\w+\.pth\.\w+\.tmp", p.name) or TEMP_NAME.match(p.name)  # progress.png
               for p in hidden), (hidden, sigkill.tag)
    assert load_checkpoint(latest)["epoch"] == 1

    again = subprocess.run(train(resumed, True), capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, (again.stdout + again.stderr, sigkill.tag)
    logs = "".join(p.read_text() for p in sorted(resumed.glob("training_log_*.txt")))
    assert f"continuing from {latest} after epoch 1" in logs
    assert not latest.exists()
    a, b = (load_checkpoint(folder / "checkpoint_final.pth") for folder in (reference, resumed))
    assert a["epoch"] == b["epoch"] == 2
    assert list(a["state_dict"]) == list(b["state_dict"])
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), (name, sigkill.tag)
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name, sigkill.tag)
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]  # seconds: wall time of the epoch


# ---- demo ---------------------------------------------------------------------------------------------------------
DEMO_ARGS = ["--cases", "4", "--test-cases", "1", "--extra-cases", "0", "-np", "1", "-tr",
             "nnUNetTrainerPLUS_cpuTiny_2epochs"]


def test_demo_killed_in_its_first_step_then_rerun_completes_it(tmp_path, sigkill):
    from nnunet_plus.demo import DATASET_ID as DEMO_DATASET, DATASET_NAME, TIMINGS_FILE, Demo
    from nnunet_plus.files.integrity import check_complete
    from nnunet_plus.phantom.cli import main as make_phantom

    # the phantom step uninterrupted, with the demo's own options (seed 0, 4 + 1 cases)
    reference = tmp_path / "reference"
    options = Demo(reference, device="cpu", n_train=4, n_test=1, classifier_epochs=1, num_processes=1,
                   n_extra=0)._phantom_options()
    assert make_phantom(["-d", str(DEMO_DATASET), "-n", "4", "--n-test", "1", "--out", str(reference), "--seed", "0",
                         *options, "--preview", str(reference / "phantom_preview.png"), "--quiet"]) == 0

    workdir = tmp_path / "demo"
    demo = [sys.executable, "-m", "nnunet_plus.demo", "--workdir", str(workdir), *DEMO_ARGS]
    first, second = tmp_path / "first.log", tmp_path / "second.log"

    def assert_complete() -> None:  # the demo's files (nnU-Net's own, in nnUNet_preprocessed, are not atomic)
        sigkill.assert_complete(workdir / "nnUNet_raw")
        for path in (workdir / TIMINGS_FILE, workdir / "phantom_preview.png"):
            if path.exists():
                check_complete(path)

    # killed 0 to 3 s after the phantom step starts (it takes ~2 s): generating cases, moving the dataset into
    # place, drawing the preview, or early in plan_and_preprocess
    sigkill.run(demo, first, lambda: "=== [phantom]" in first.read_text(errors="replace"),
                delay=sigkill.uniform(0.0, 3.0))
    assert_complete()
    dataset = workdir / "nnUNet_raw" / DATASET_NAME
    complete = (dataset / "dataset.json").is_file()
    if not complete:  # the generator's staging folder is hidden: nnU-Net never sees a partial dataset
        assert not dataset.exists() and not list((workdir / "nnUNet_raw").glob("Dataset*")), sigkill.tag

    # the re-run redoes the step (or skips it when the dataset was in place); stopped when the next step starts
    output = sigkill.run(demo, second, lambda: "=== [plan_and_preprocess]" in second.read_text(errors="replace"))
    assert ("=== [phantom] already done, skipped" in output) == complete, (output, sigkill.tag)
    assert_complete()  # demo_timings.json has the step's time only when one run did all of it
    expected = reference / DATASET_NAME
    files = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    for relative in files:
        assert (dataset / relative).read_bytes() == (expected / relative).read_bytes(), (relative, sigkill.tag)
    assert (workdir / "phantom_preview.png").read_bytes() == (reference / "phantom_preview.png").read_bytes(), \
        sigkill.tag


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_kill_of_the_demo_alone_stops_the_step_it_runs(tmp_path, sigkill):
    """``kill -9 <demo pid>`` (not its process group): the running step's command must not go on writing into the
    work folder beside the re-run (it did: the child was re-parented and kept running)."""
    pid_file = tmp_path / "step.pid"
    step = ("import os, sys, time; fh = open(sys.argv[1] + '.tmp', 'w'); fh.write(str(os.getpid())); fh.close(); "
            "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(120)")
    script = ("import sys; from pathlib import Path; from nnunet_plus.demo import Demo; "
              "Demo(Path(sys.argv[1]), device='cpu', n_train=4, n_test=1, classifier_epochs=1, num_processes=1)"
              f".run('step', ['python', '-c', {step!r}, sys.argv[2]])")
    sigkill.run([sys.executable, "-c", script, str(tmp_path / "demo"), str(pid_file)], tmp_path / "demo.log",
                pid_file.is_file, group=False)
    child = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the step's command outlived the killed demo"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_demo_redoes_a_step_killed_between_its_writes(tmp_path, monkeypatch):
    """A step is done only when the files its command writes last exist (whole): a kill between two writes of a
    step (nnU-Net's own are not atomic) makes the re-run redo it, or continue it with --c, instead of skipping it
    and failing or reporting from half its outputs later."""
    from nnunet_plus.classifier.trainer.fold_files import write_history
    from nnunet_plus.demo import DATASET_NAME, EVALUATION_FILES, Demo

    demo = Demo(tmp_path, device="cpu", n_train=4, n_test=1, classifier_epochs=1, num_processes=1, n_extra=1)
    commands: list[list[str]] = []
    monkeypatch.setattr(demo, "run", lambda step, args: commands.append(args))

    def touch(path: Path, data: bytes = b"{}") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    # plan_and_preprocess: nnU-Net copies the labels into gt_segmentations last, with copy_file(update=True)
    label = touch(demo.dataset_raw / "labelsTr" / "case_0000.nii.gz", bytes(100))
    touch(demo.preprocessed / DATASET_NAME / "nnUNetPlans.json")
    copy = touch(demo.gt_segmentations / label.name, bytes(50))  # cut short, and newer than the label
    assert not demo._preprocessed()
    demo.plan_and_preprocess()
    assert commands[-1][0] == "nnUNetv2_plan_and_preprocess" and not copy.exists()
    touch(copy, label.read_bytes())
    assert demo._preprocessed()

    # an nnU-Net fold killed in its validation (checkpoint_final written, checkpoint_latest removed): --c, which
    # runs only the validation, instead of a new training
    touch(demo.model_folder / "fold_0" / "checkpoint_final.pth", b"")
    demo.train_fold(0)
    assert commands[-1][:2] == ["nnUNetv2_train", "990"] and commands[-1][-1] == "--c"
    demo.train_fold(1)
    assert commands[-1][-1] != "--c"

    # the extra cohort: nnUNetv2_predict writes <case>.npz, <case>.pkl, then <case>.nii.gz
    touch(demo.extra_cohort / "imagesTr" / "extra_0000_0000.nii.gz")
    touch(demo.extra_predictions / "extra_0000.npz")
    assert not demo._extra_done()
    touch(demo.extra_predictions / "extra_0000.nii.gz")
    assert demo._extra_done()

    # a classifier fold killed after checkpoint_final, before its operating point and validation (its history.json
    # not yet done, the command's last write): --c
    fold = demo.classifier_folder / "fold_0"
    touch(fold / "checkpoint_final.pth", b"")
    touch(fold / "validation" / "summary.json")
    write_history(fold, fold=0, epochs=1, best={}, history=[{"epoch": 0}], done=False)
    assert not demo._classifier_trained(0)
    demo.train_classifier(0)
    assert commands[-1][0] == "nnunet_plus_train_classifier" and commands[-1][-1] == "--c"
    write_history(fold, fold=0, epochs=1, best={}, history=[{"epoch": 0}], done=True)
    assert demo._classifier_trained(0)

    # nnU-Net alone: the + PLUS run's saved softmax without the classifier; the full prediction while a test case's
    # softmax is missing (a + PLUS run from before the softmax was kept)
    touch(demo.dataset_raw / "imagesTs" / "case_0048_0000.nii.gz")
    demo.predict_nnunet_alone()
    assert commands[-1][0] == "nnunet_plus_predict" and "--from-probabilities" not in commands[-1]
    touch(demo.predictions / "plus" / "case_0048.npz")
    demo.predict_nnunet_alone()
    assert commands[-1][commands[-1].index("--from-probabilities") + 1] == str(demo.predictions / "plus")
    assert "--no-classifier" in commands[-1]

    # evaluate killed after its summary, before the baseline summary the report reads and the plots
    for name in EVALUATION_FILES[:-1]:
        assert not demo._evaluated()
        touch(demo.evaluation / name)
    assert not demo._evaluated()
    touch(demo.evaluation / EVALUATION_FILES[-1])
    assert demo._evaluated()
