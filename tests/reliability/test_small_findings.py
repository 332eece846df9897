"""Finding 10 of issue 14 (the smaller ones): a coarse header spacing is announced with the size it resamples to
before nnU-Net resamples; probability maps that do not sum to 1 (all zero) are refused naming the file; a missing
input folder creates no output folder; temp files left by a killed run are removed when the next run starts
(fresh ones, maybe another part's, are kept); the run-info file keeps the report of every part of a split run."""
from __future__ import annotations

import json
import logging
import os
import time
import uuid

import numpy as np
import pytest

from nnunet_plus.predict.errors import InputError


def test_coarse_spacing_warns_with_the_resampled_size(caplog, model_grid):
    from nnunet_plus.predict.predictor import PLUSPredictor

    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.predictor"):
        shape = PLUSPredictor.check_resampling(model_grid.predictor, model_grid.geometry((50.0, 50.0, 50.0)),
                                               "ct/coarse.nii.gz")
    assert shape == (100, 533, 533)
    [record] = caplog.records
    assert record.getMessage().startswith("ct/coarse.nii.gz: ") and "(100, 533, 533)" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.predictor"):
        assert PLUSPredictor.check_resampling(model_grid.predictor, model_grid.geometry((1.5, 1.5, 4.0)), "ok") == (8, 16, 16)
    assert caplog.records == []


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_probabilities_that_do_not_sum_to_one_are_refused(cohort, fill):
    from nnunet_plus.predict.plug_and_play import discover_sources, load_source

    folder = cohort.root / "probs"
    for c in range(4):
        cohort.write(np.full((8, 32, 32), fill, np.float32), folder / f"liver_{c:04d}.nii.gz")
    source = discover_sources(folder, mode="probabilities", num_classes=4)["liver"]
    with pytest.raises(InputError, match="must sum to 1") as info:
        load_source(source, num_classes=4)
    assert str(info.value).startswith(f"{folder / 'liver_0000.nii.gz'}: ") and "\n" not in str(info.value)


def test_missing_input_creates_no_output_folder(cohort):
    out = cohort.root / "out"
    with pytest.raises(InputError, match="does not exist"):
        cohort.run(cohort.root / "missing", out)
    assert not out.exists()


def test_stale_temp_files_of_a_killed_run_are_removed(cohort, caplog):
    cohort.case("liver", cohort.root / "ct", cohort.root / "seg")
    out = cohort.root / "out"
    out.mkdir()
    stale = [out / f".liver.nii.gz.{uuid.uuid4().hex}.tmp.nii.gz", out / f".liver.json.{uuid.uuid4().hex}.tmp.json"]
    fresh = out / f".other.nii.gz.{uuid.uuid4().hex}.tmp.nii.gz"  # another part writing right now
    kept = [fresh, out / ".notes.tmp", out / f"liver.{uuid.uuid4().hex}.tmp.json"]  # not atomic_path's names
    hour_ago = time.time() - 3600
    for path in [*stale, *kept]:
        path.write_bytes(b"half a file")
        if path != fresh:
            os.utime(path, (hour_ago, hour_ago))
    with caplog.at_level(logging.INFO, logger="nnunet_plus.files.atomic"):
        report = cohort.run(cohort.root / "seg", out)
    assert report.done == ["liver"]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "removed 2 temp file(s)" in caplog.text


def test_run_info_keeps_the_report_of_every_part(cohort, caplog):
    for name in ("a_case", "b_case"):
        cohort.case(name, cohort.root / "ct", cohort.root / "seg")
    out = cohort.root / "out"
    out.mkdir()
    (out / "nnunet_plus_predict.json").write_bytes(b"\x1f\x8b half a file")  # unreadable: started afresh
    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.runner"):
        for part in (1, 0):
            cohort.run(cohort.root / "seg", out, num_parts=2, part_id=part)
    assert "nnunet_plus_predict.json cannot be read" in caplog.text
    info = json.loads((out / "nnunet_plus_predict.json").read_text())
    assert info["part_id"] == 0 and info["report"]["done"] == ["a_case"]  # the last part at the top level
    assert {key: report["done"] for key, report in info["parts"].items()} == {"0/2": ["a_case"], "1/2": ["b_case"]}
    cohort.run(cohort.root / "seg", out)  # a single run in the same folder: only its own report
    assert list(json.loads((out / "nnunet_plus_predict.json").read_text())["parts"]) == ["0/1"]


def _stale(path, hour_ago=True):
    """``path`` as a killed writer leaves it (a file, or a folder when it has no suffix after '.tmp')."""
    if path.name.endswith(".tmp"):
        path.mkdir(parents=True)
        (path / "half.nii.gz").write_bytes(b"half")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    if hour_ago:
        then = time.time() - 3600
        os.utime(path, (then, then))
    return path


def test_a_killed_phantom_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    from nnunet_plus.phantom.dataset import make_phantom_dataset

    name = "Dataset977_LiverPhantom"
    stale = _stale(tmp_path / f".{name}.k1ll3d.tmp")
    running = _stale(tmp_path / f".{name}.runn1ng.tmp", hour_ago=False)  # another run writing right now
    other = _stale(tmp_path / ".Dataset978_LiverPhantom.k1ll3d.tmp")  # another dataset's: not ours to judge
    make_phantom_dataset(977, 1, n_test=0, shape=(20, 40, 40), spacing=(6.0, 5.0, 5.0), out_dir=tmp_path,
                         num_processes=1, quiet=True)
    assert (tmp_path / name / "dataset.json").is_file()
    assert not stale.exists() and running.exists() and other.exists()


def test_a_killed_classifier_runs_temp_files_are_removed_by_the_next_run(tmp_path, classifier_files, monkeypatch):
    from nnunet_plus.classifier.bank_settings import BankSettings
    from nnunet_plus.classifier.trainer.settings import TrainerSettings
    from nnunet_plus.classifier.trainer.train_fold import train_classifier_fold

    project = classifier_files(tmp_path / "project")
    for key, value in project.env.items():
        monkeypatch.setenv(key, value)
    fold = project.classifier / "fold_0"
    stale = [_stale(fold / f".checkpoint_latest.pth.{uuid.uuid4().hex}.tmp.pth"),
             _stale(fold / "validation" / f".summary.json.{uuid.uuid4().hex}.tmp.json"),
             _stale(project.bank / f".cls_000.npz.{uuid.uuid4().hex}.tmp.npz")]
    result = train_classifier_fold(project.dataset, "3d_fullres", 0, settings=TrainerSettings(epochs=1, preset="tiny"),
                                   bank_settings=BankSettings(roi_shape=(16, 32, 32), liver_shape=(16, 32, 32)),
                                   device="cpu", num_processes=1, quiet=True)  # the fixture's bank settings
    assert result.fold_folder == fold and (fold / "checkpoint_final.pth").is_file()
    assert not any(p.exists() for p in stale)
