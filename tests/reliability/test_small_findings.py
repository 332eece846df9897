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
    with caplog.at_level(logging.INFO, logger="nnunet_plus.predict.inputs"):
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
