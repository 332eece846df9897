"""Finding 10 of issue 14 (the smaller ones): a coarse header spacing is announced with the size it resamples to
before nnU-Net resamples; probability maps that do not sum to 1 (all zero) are refused naming the file; a missing
input folder creates no output folder."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from nnunet_plus.predict.inputs import InputError


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
