"""Candidate-bank crop settings: the lesion-scale field of view, compatibility with old banks, CLI flags."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_plus.classifier.bank_io import bank_metadata
from nnunet_plus.classifier.bank_settings import BankSettings
from nnunet_plus.classifier.candidate_arrays import build_case_candidates
from nnunet_plus.classifier.cli import bank_settings, build_parser, main
from nnunet_plus.classifier.crops import candidate_rois
from nnunet_plus.schema import build_schema

#: the ``settings`` block of a bank.json / checkpoint written before ``roi_fov`` existed (resolved normalisation)
LEGACY_SETTINGS = {"roi_shape": [16, 64, 64], "liver_shape": [32, 64, 64], "normalisation": ["ct"],
                   "ct_window": [-200.0, 300.0], "large_lesion": "zoom", "margin": 0.25, "mask_order": 1,
                   "pad_mode": "constant", "liver_mode": "fit", "liver_margin": 0.05, "criterion": "overlap",
                   "connectivity": "paper"}
SCHEMA = build_schema({"background": 0, "liver": 1, "hcc": 2, "cyst": 3}, liver=("liver",), lesions=("hcc", "cyst"),
                      sensitivities=(1.0, 4.0))


def test_new_banks_default_to_the_lesion_rule():
    settings = BankSettings()
    assert (settings.roi_fov, settings.roi_shape, settings.roi_context, settings.roi_min_mm) == (
        "lesion", (16, 32, 32), 2.0, 32.0)
    block = settings.to_json()
    assert block["roi_fov"] == "lesion" and block["roi_shape"] == [16, 32, 32]
    assert BankSettings.from_json(block) == settings


@pytest.mark.parametrize("block", [
    LEGACY_SETTINGS,
    {**LEGACY_SETTINGS, "roi_shape": [16, 32, 32], "large_lesion": "crop"},
    {"roi_shape": [16, 64, 64]},
    {"roi_shape": [16, 64, 64], "future_key": 1},  # unknown keys are ignored, as before
])
def test_old_settings_read_as_fixed_and_round_trip(block):
    """A settings block without ``roi_fov`` (bank.json / checkpoint of an older version) means the fixed rule, and
    the fixed rule is written back in the same form, so old and new banks compare equal.

    Parameters
    ----------
    block : a stored settings dict without the lesion-rule keys.
    """
    settings = BankSettings.from_json(block)
    assert settings.roi_fov == "fixed" and settings.roi_shape == tuple(block["roi_shape"])
    out = settings.to_json()
    assert not {"roi_fov", "roi_context", "roi_min_mm"} & set(out)
    assert {k: v for k, v in out.items() if k in block} == {k: v for k, v in block.items() if k in out}
    assert BankSettings.from_json(out) == settings


def test_fixed_bank_metadata_equals_an_old_bank_json():
    """A bank rebuilt with ``roi_fov="fixed"`` writes the settings an old bank.json holds (the resume check
    compares them as JSON), while the lesion rule differs from it."""
    fixed = bank_metadata(SCHEMA, BankSettings(roi_fov="fixed"), target_spacing=(6.0, 5.0, 5.0), channel_names=["CT"])
    assert fixed["settings"] == LEGACY_SETTINGS
    lesion = bank_metadata(SCHEMA, BankSettings(), target_spacing=(6.0, 5.0, 5.0), channel_names=["CT"])
    assert lesion["settings"] != LEGACY_SETTINGS and lesion["settings"]["roi_fov"] == "lesion"


@pytest.mark.parametrize("roi_fov", ["lesion", "fixed"])
def test_crop_options_drive_candidate_rois(roi_fov):
    """``crop_options()`` hands every lesion-ROI setting to :func:`candidate_rois`.

    Parameters
    ----------
    roi_fov : field-of-view rule of the settings.
    """
    settings = BankSettings(roi_fov=roi_fov, roi_shape=(8, 16, 16))
    image = np.random.default_rng(0).normal(size=(1, 20, 60, 60)).astype(np.float32)
    instances = np.zeros(image.shape[1:], np.int32)
    instances[9:11, 28:31, 28:31] = 1
    bbox = [[9, 28, 28, 11, 31, 31]]
    rois, scales = candidate_rois(image, instances, [1], bbox, spacing=(6, 5, 5), target_spacing=(6, 5, 5),
                                  pad_value=0.0, **settings.crop_options())
    expected, expected_scales = candidate_rois(image, instances, [1], bbox, spacing=(6, 5, 5),
                                               target_spacing=(6, 5, 5), roi_shape=(8, 16, 16), roi_fov=roi_fov,
                                               pad_value=0.0)
    np.testing.assert_array_equal(rois, expected)
    np.testing.assert_array_equal(scales, expected_scales)
    assert (scales[0] < 1.0) == (roi_fov == "lesion")  # lesion scale: finer than the target spacing


@pytest.mark.parametrize("settings, shape, share, scale", [
    (BankSettings(), (16, 32, 32), 12 * 10 * 10 / 32 ** 3, (2 / 6 * 1 / 5 * 1 / 5) ** (1 / 3)),
    (BankSettings(roi_fov="fixed"), (16, 64, 64), 12 * 10 * 10 / (96 * 320 * 320), 1.0),
], ids=["lesion", "fixed"])
def test_bank_case_crops_follow_the_settings(settings, shape, share, scale):
    """The bank build (and inference, which shares ``classifier_inputs``) makes its crops with the settings' rule:
    a 2 x 2 x 2 voxel lesion at 6 x 5 x 5 mm fills ~3.7 % of a lesion-scale crop, ~0.01 % of a fixed one.

    Parameters
    ----------
    settings : the bank settings.
    shape : expected crop shape.
    share, scale : expected mask-channel mean (lesion volume / field of view volume) and ``roi_scale``.
    """
    size = (20, 64, 64)
    reference = np.zeros(size, np.uint8)
    reference[4:16, 12:52, 12:52] = 1
    reference[9:11, 30:32, 30:32] = 2
    probabilities = np.zeros((4, *size), np.float32)
    probabilities[0] = 1.0
    probabilities[:, reference == 1] = np.array([0.05, 0.9, 0.03, 0.02])[:, None]
    probabilities[:, reference == 2] = np.array([0.05, 0.1, 0.8, 0.05])[:, None]
    image = np.where(reference == 0, -1000.0, np.where(reference == 1, 60.0, 20.0))[None].astype(np.float32)
    arrays = build_case_candidates("case_0", image, reference, probabilities, SCHEMA, spacing=(6.0, 5.0, 5.0),
                                   target_spacing=(6.0, 5.0, 5.0), settings=settings)
    crops = arrays["crops"].astype(np.float32)
    assert crops.shape == (1, 2, *shape)
    assert float(crops[0, -1].mean()) == pytest.approx(share, rel=0.05)
    assert float(arrays["roi_scale"][0]) == pytest.approx(scale, rel=1e-3)


@pytest.mark.parametrize("changes, message", [
    ({"roi_fov": "mm"}, r"roi_fov must be one of \('lesion', 'fixed'\), got 'mm'"),
    ({"roi_context": 0.9}, "roi_context must be a finite number >= 1"),
    ({"roi_min_mm": -5}, "roi_min_mm must be a finite number of mm > 0"),
    ({"roi_min_mm": float("nan")}, "roi_min_mm must be a finite number of mm > 0"),
    ({"roi_shape": (16, 0, 32)}, "roi_shape must be three positive integers"),
    ({"roi_fov": "fixed", "roi_context": 3.0}, r"roi_context=3.0 is only used by roi_fov='lesion'"),
    ({"roi_fov": "fixed", "roi_min_mm": 20}, r"roi_min_mm=20.0 is only used by roi_fov='lesion'"),
    ({"large_lesion": "crop"}, r"large_lesion='crop' is only used by roi_fov='fixed'"),
    ({"margin": 0.5}, r"margin=0.5 is only used by roi_fov='fixed'"),
])
def test_bad_settings_raise_readable_errors(changes, message):
    """Bad values, and options of the rule not chosen (they would be ignored), raise a ValueError naming them.

    Parameters
    ----------
    changes : keyword arguments of :class:`BankSettings`.
    message : expected part of the error message.
    """
    with pytest.raises(ValueError, match=message):
        BankSettings(**changes)


@pytest.mark.parametrize("argv, expected", [
    ([], BankSettings()),
    (["--roi-fov", "fixed"], BankSettings(roi_fov="fixed", roi_shape=(16, 64, 64))),
    (["--roi-shape", "24", "24", "24", "--roi-context", "3", "--roi-min-mm", "40"],
     BankSettings(roi_shape=(24, 24, 24), roi_context=3.0, roi_min_mm=40.0)),
    (["--roi-fov", "fixed", "--roi-shape", "16", "32", "32"], BankSettings(roi_fov="fixed", roi_shape=(16, 32, 32))),
])
def test_cli_crop_flags_build_the_bank_settings(argv, expected):
    """The crop flags of ``nnunet_plus_train_classifier`` map onto :class:`BankSettings` (unset: defaults).

    Parameters
    ----------
    argv : crop flags after ``DATASET CONFIG FOLD``.
    expected : the settings they must give.
    """
    args = build_parser().parse_args(["3", "3d_fullres", "0", *argv])
    assert bank_settings(args) == expected
    assert args.overwrite_bank is False


def test_cli_rejects_bad_crop_flags(capsys):
    """A flag of the other rule or a bad value stops the CLI before any bank is touched, with a readable error."""
    assert main(["3", "3d_fullres", "0", "-device", "cpu", "--roi-fov", "fixed", "--roi-context", "3"]) == 1
    assert "roi_context=3.0 is only used by roi_fov='lesion'" in capsys.readouterr().err
    assert main(["3", "3d_fullres", "0", "-device", "cpu", "--roi-min-mm", "0"]) == 1
    assert "roi_min_mm must be a finite number of mm > 0" in capsys.readouterr().err
    assert main(["3", "3d_fullres", "0", "--roi-fov", "cube"]) == 2  # argparse: invalid choice
    assert "invalid choice: 'cube'" in capsys.readouterr().err
