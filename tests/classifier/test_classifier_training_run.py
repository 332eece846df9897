"""PLUSClassifierTrainer and nnunet_plus_train_classifier on the synthetic project (tiny preset, CPU)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from nnunet_plus.classifier.bank_io import read_bank_metadata
from nnunet_plus.classifier.rule_scores import score_cases
from nnunet_plus.classifier.checkpoint import load_checkpoint, save_checkpoint
from nnunet_plus.classifier.cli import main
from nnunet_plus.classifier.data import CandidateDataset
from nnunet_plus.classifier.operating_point import OPERATING_POINT_FILE, load_rule
from nnunet_plus.classifier.trainer.fold_files import NoCandidateError, fold_complete, read_history, read_skipped
from nnunet_plus.classifier.trainer.settings import TrainerSettings
from nnunet_plus.classifier.trainer.train_fold import train_classifier_fold
from nnunet_plus.classifier.trainer.scoring import CANDIDATE_TABLES_FILE, load_candidate_tables
from nnunet_plus.evaluation.summary import summarize
from nnunet_plus.nnunet_validation import validate_folder

from classifier_project import make_trainer, write_project


def test_one_epoch_writes_checkpoints_progress_and_summary(trained_folds):
    fold = trained_folds.classifier / "fold_0"
    assert sorted(p.name for p in fold.glob("*.pth")) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    assert (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [log] = fold.glob("training_log_*.txt")
    text = log.read_text()
    assert "epoch 0: lr 1.00e-04" in text and "nnU-Net alone on the validation patients: lesion F1 0.4444" in text
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["epoch"] == 1 and ckpt["fold"] == 0 and ckpt["dataset_name"] == trained_folds.dataset
    assert ckpt["schema"]["lesions"] == ["hcc", "cyst"] and ckpt["model_config"]["preset"] == "tiny"
    assert ckpt["bank"]["settings"]["roi_shape"] == [16, 32, 32] and len(ckpt["history"]) == 1
    assert ckpt["val_cases"] == ["cls_000", "cls_001", "cls_002"]
    # training candidates of fold 0 (cls_003 full: hcc, -, cyst, hcc; cls_005 single: hcc): z_c inverse frequency
    assert ckpt["class_counts"] == [3, 1, 1]
    torch.testing.assert_close(ckpt["class_weights"], torch.tensor([5 / 9, 5 / 3, 5 / 3]))

    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["meta"]["cases"] == ["cls_000", "cls_001", "cls_002"] and summary["meta"]["epoch"] == 1
    alone, plus = summary["nnunet"], summary["nnunet+plus"]
    # nnU-Net alone by hand: A in cls_000 and cls_001 (TP), B (hcc on a cyst: FL), the cyst-on-liver FP,
    # C (only at f=4) and D (never) missed
    assert {k: alone["lesion_level"][k] for k in ("tp", "fl", "fp", "fn")} == {"tp": 2, "fl": 1, "fp": 1, "fn": 2}
    assert alone["lesion_level"]["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    # PLUS is scored on the same cases with the fold's fitted rule: the bank-level counts of the final model's
    # candidate probabilities under that rule are those of the full (end-to-end) evaluation
    assert plus["meta"]["n_cases"] == alone["meta"]["n_cases"] == 3
    counts = {k: plus["lesion_level"][k] for k in ("tp", "fl", "fp", "fn")}
    cases, tables = load_candidate_tables(fold / "validation" / CANDIDATE_TABLES_FILE)
    assert cases == ckpt["val_cases"]
    data = CandidateDataset(trained_folds.bank, cases, metadata=read_bank_metadata(trained_folds.bank))
    schema = trained_folds.schema
    scores = score_cases([data.bank(i) for i in range(len(data))], tables, rule=load_rule(fold / OPERATING_POINT_FILE),
                         malignant_classes=[schema.lesions.index(n) for n in schema.malignant],
                         benign_classes=[schema.lesions.index(n) for n in schema.benign],
                         min_volume_mm3=schema.min_lesion_volume_mm3)
    assert counts == {k: scores["lesion"][k] for k in ("tp", "fl", "fp", "fn")}
    assert summary["comparison"]["lesion F1"]["baseline"] == alone["lesion_level"]["f1"]
    assert (fold / "validation" / "comparison.txt").read_text().startswith("Comparison: nnU-Net vs nnU-Net + PLUS")


def test_history_json_holds_the_epochs_and_says_done_last(trained_folds):
    """history.json: the checkpoint's per-epoch records as JSON, ``done`` once the validation is written."""
    for fold in (trained_folds.classifier / "fold_0", trained_folds.classifier / "fold_1"):
        history = read_history(fold)
        ckpt = load_checkpoint(fold / "checkpoint_final.pth")
        assert history["done"] is True and fold_complete(fold)
        assert history["fold"] == ckpt["fold"] and history["epochs"] == 1 and history["best"] == ckpt["best"]
        assert [r["epoch"] for r in history["history"]] == [0]
        assert history["history"] == json.loads(json.dumps(ckpt["history"]))
        assert set(history["history"][0]) >= {"lr", "train_total", "val_total", "lesion_f1", "lesion_counts"}
    assert read_history(trained_folds.classifier) is None and not fold_complete(trained_folds.classifier)


def test_summary_has_the_metric_set_and_figures_of_plus_summary(trained_folds, tmp_path):
    """nnU-Net alone in summary.json = the f=1 entry of plus_summary.json (nnUNetTrainerPLUS's validation)."""
    validation = tmp_path / "validation"
    shutil.copytree(trained_folds.model / "fold_0" / "validation", validation)
    plus_summary = validate_folder(validation, trained_folds.raw / "labelsTr", trained_folds.schema,
                                   image_folder=trained_folds.raw / "imagesTr", quiet=True)
    reference = plus_summary["sensitivities"]["f=1"]
    summary = json.loads((trained_folds.classifier / "fold_0" / "validation" / "summary.json").read_text())
    keys = set(summarize([], trained_folds.schema)) - {"per_case"}
    assert set(reference) == keys == set(summary["nnunet"]) == set(summary["nnunet+plus"])
    for block in ("lesion_level", "per_class", "malignant_group", "benign_group", "dice", "volume_bins"):
        assert summary["nnunet"][block] == reference[block], block
    for kind in ("malignant", "benign", "screening"):
        assert summary["nnunet"]["patient_level"][kind] == reference["patient_level"][kind]
    assert summary["nnunet"]["patient_level"]["auc"] == reference["patient_level"]["auc"]  # LiverMax both


def test_resume_gives_the_state_of_an_uninterrupted_run(cls_project, tmp_path, monkeypatch):
    uninterrupted = make_trainer(cls_project, tmp_path / "a", 0, epochs=2)
    uninterrupted.run_training(validate=False)

    interrupted = make_trainer(cls_project, tmp_path / "b", 0, epochs=2)
    original = type(interrupted).train_epoch

    def stop_at_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(type(interrupted), "train_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run_training(validate=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b" / "checkpoint_latest.pth")["epoch"] == 1
    assert not (tmp_path / "b" / "checkpoint_final.pth").exists()

    # a final checkpoint of an earlier training of this fold: --c must continue the newer, unfinished one
    stale = load_checkpoint(tmp_path / "a" / "checkpoint_final.pth")
    stale["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in stale["state_dict"].items()}
    save_checkpoint(stale, tmp_path / "b" / "checkpoint_final.pth")
    resumed = make_trainer(cls_project, tmp_path / "b", 0, epochs=2)
    resumed.run_training(continue_training=True, validate=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoint_final.pth")
    b = load_checkpoint(tmp_path / "b" / "checkpoint_final.pth")
    assert a["epoch"] == b["epoch"] == 2 and not (tmp_path / "b" / "checkpoint_latest.pth").exists()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for key, value in a["optimizer"]["state"].items():
        for k, v in value.items():
            assert torch.equal(v, b["optimizer"]["state"][key][k]), (key, k)
    assert a["scheduler"] == b["scheduler"]
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
    assert len(list((tmp_path / "b").glob("training_log_*.txt"))) == 2  # one log per session
    history = read_history(tmp_path / "b")  # both epochs; not done: validate=False wrote no validation summary
    assert [r["epoch"] for r in history["history"]] == [0, 1] and history["done"] is False


def test_resume_refuses_other_settings(trained_folds, tmp_path):
    shutil.copy(trained_folds.classifier / "fold_0" / "checkpoint_final.pth", tmp_path / "checkpoint_final.pth")
    with pytest.raises(ValueError, match=r"cannot continue from .*other settings \(epochs=1\)"):
        make_trainer(trained_folds, tmp_path, 0, epochs=3).run_training(continue_training=True)
    with pytest.raises(ValueError, match=r"cannot continue from .*it is Dataset998_ClsTrainer fold 0"):
        make_trainer(trained_folds, tmp_path, 1).run_training(continue_training=True)


def _env(monkeypatch, project):
    for key, value in project.env.items():
        monkeypatch.setenv(key, value)


def test_cli_builds_the_bank_and_trains_a_fold(tmp_path, monkeypatch, capsys):
    project = write_project(tmp_path)
    _env(monkeypatch, project)
    assert main([project.dataset, "3d_fullres", "1", "-device", "cpu", "--epochs", "1", "--preset", "tiny", "-np",
                 "1", "--lr", "3e-4", "--class-weight-power", "0.5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "candidate bank: 6 case(s)" in out and "nnU-Net alone   lesion F1 " in out
    fold = project.classifier / "fold_1"
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["val_cases"] == ["cls_003", "cls_004", "cls_005"]
    assert ckpt["bank"]["settings"]["roi_fov"] == "lesion" and ckpt["bank"]["settings"]["roi_shape"] == [16, 32, 32]
    assert ckpt["trainer"]["fusion"] == "gpr" and ckpt["trainer"]["epochs"] == 1
    assert ckpt["trainer"]["learning_rate"] == 3e-4 and ckpt["trainer"]["class_weight_power"] == 0.5
    assert (fold / "validation" / "summary.json").is_file() and (fold / "progress.png").is_file()
    # the operating point: the fold's and the folder's (pooled over the finished folds), printed
    fold_rule = json.loads((fold / "operating_point.json").read_text())
    pooled = json.loads((project.classifier / "operating_point.json").read_text())
    assert fold_rule["folds"] == [1] and pooled["folds"] == ["1"] and pooled["n_cases"] == 3
    assert pooled["description"] in out and "operating point on 3 validation cases" in out
    # --c on a finished fold: nothing to train, the validation is rewritten
    assert main([project.dataset, "3d_fullres", "1", "-device", "cpu", "--epochs", "1", "--preset", "tiny", "--c",
                 "--lr", "3e-4", "--class-weight-power", "0.5", "--quiet"]) == 0
    # a new training (no --c) replaces the earlier final checkpoint; the Python API does what the command does
    result = train_classifier_fold(project.dataset, "3d_fullres", 1, settings=TrainerSettings(epochs=2, preset="tiny"),
                                   device="cpu", num_processes=1, quiet=True)
    assert load_checkpoint(fold / "checkpoint_final.pth")["epoch"] == 2
    assert result.fold_folder == fold and result.bank_dir == project.classifier / "candidate_bank"
    assert len(result.bank_files) == 6 and result.summary["meta"]["epoch"] == 2
    assert result.summary == json.loads((fold / "validation" / "summary.json").read_text())
    assert fold_complete(fold) and len(read_history(fold)["history"]) == 2


def test_cli_writes_skipped_json_when_the_training_cases_hold_no_candidate(tmp_path, monkeypatch,
                                                                          capsys):
    """No candidate to learn from: a typed error, ``fold_k/skipped.json`` with the reason and exit 1; a later
    successful run of the fold removes that record."""
    project = write_project(tmp_path)
    _env(monkeypatch, project)
    args = [project.dataset, "3d_fullres", "0", "-device", "cpu", "--epochs", "1", "--preset", "tiny", "-np", "1",
            "--quiet"]
    fold = project.classifier / "fold_0"
    with monkeypatch.context() as patched:
        patched.setattr(CandidateDataset, "class_counts", lambda self: np.zeros(3, dtype=np.int64))
        assert main(args) == 1
    reason = read_skipped(fold)
    assert reason.startswith("nnU-Net found no lesion candidate in the 3 training cases of fold 0")
    assert f"nnunet_plus_train_classifier: error: {reason}" in capsys.readouterr().err
    assert json.loads((fold / "skipped.json").read_text()) == {"reason": reason}
    assert not fold_complete(fold) and not (fold / "checkpoint_final.pth").exists()
    assert main(args) == 0
    assert read_skipped(fold) is None and fold_complete(fold)


def test_cli_errors(tmp_path, monkeypatch, capsys):
    project = write_project(tmp_path)
    _env(monkeypatch, project)
    for npz in (project.model / "fold_1" / "validation").glob("*.npz"):
        npz.unlink()  # nnU-Net fold 1 was not validated with --npz
    assert main([project.dataset, "3d_fullres", "0", "-device", "cpu", "--preset", "tiny", "-np", "1",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "fold 0 needs 3 case(s) that are not in the candidate bank (cls_003, cls_004, cls_005)" in err
    assert "nnUNetv2_train Dataset998_ClsTrainer 3d_fullres 1 -tr nnUNetTrainerPLUS -p nnUNetPlans --npz" in err
    assert main([project.dataset, "3d_fullres", "0", "--build-bank-only", "-np", "1", "--quiet"]) == 0
    assert main([project.dataset, "3d_fullres", "7", "-device", "cpu", "--quiet"]) == 1
    assert "fold 7 is not in the split" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([project.dataset, "3d_fullres", "0", "-device", "cuda"]) == 1
        assert "no CUDA GPU; use -device cpu" in capsys.readouterr().err
    assert main([project.dataset, "3d_fullres", "0", "-device", "tpu"]) == 2  # argparse usage error
    assert main([project.dataset, "3d_fullres", "0", "-device", "cpu", "--class-weight-power", "-1"]) == 1
    assert "class_weight_power must be in [0, 2]" in capsys.readouterr().err


def test_distill_fusion_and_patient_best_metric(cls_project, tmp_path):
    trainer = make_trainer(cls_project, tmp_path, 0, fusion="distill", best_metric="patient_f1")
    trainer.run_training(validate=False)
    record = trainer.history[-1]
    assert record["train_distill"] > 0 and record["val_distill"] > 0  # KL(prior || p) is added
    assert trainer.best["metric"] == "patient_f1"
    assert load_checkpoint(tmp_path / "checkpoint_final.pth")["model_config"]["fusion"] == "distill"


def test_no_candidate_in_the_training_cases_is_a_clear_error(cls_project, tmp_path):
    from nnunet_plus.classifier.trainer.fold_trainer import PLUSClassifierTrainer

    trainer = PLUSClassifierTrainer(cls_project.bank, tmp_path, fold=0, train_cases=["cls_002"],  # healthy, none
                                    val_cases=["cls_000"], raw_dataset_dir=cls_project.raw,
                                    dataset_name=cls_project.dataset, settings=TrainerSettings(preset="tiny"))
    with pytest.raises(NoCandidateError, match=r"no lesion candidate in the 1 training cases of fold 0, even at the "
                                               r"highest sensitivity \(f=4\)"):
        trainer.run_training()
    with pytest.raises(ValueError, match="training and the validation set"):
        PLUSClassifierTrainer(cls_project.bank, tmp_path, fold=0, train_cases=["cls_000"], val_cases=["cls_000"],
                              raw_dataset_dir=cls_project.raw, dataset_name=cls_project.dataset)
