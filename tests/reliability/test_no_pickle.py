"""Finding 5 of issue 14: no code runs from files.

``--from-probabilities`` never unpickles nnU-Net's ``<case>.pkl`` with code: with the CT images (``-i``) it is not
read at all (the geometry comes from the image), without them it is read as plain data; ``--trust-pickle``
unpickles it, with a warning. nnU-Net checkpoints are opened with ``weights_only=True`` before nnU-Net loads them.
"""
from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import SimpleITK as sitk


class _Payload:
    """Unpickling this creates ``marker`` (what a crafted file could do with any command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _probabilities(cohort, case: str, *, crafted: bool) -> tuple:
    """nnU-Net's --save_probabilities pair for ``case`` in ``cohort.root / 'probs'``: the one-hot of the label
    map in the .npz; the .pkl holds the geometry (nnU-Net's keys, numpy values) or, ``crafted``, the payload."""
    images, segmentations, folder = cohort.root / "ct", cohort.root / "seg", cohort.root / "probs"
    _, seg = cohort.case(case, images, segmentations)
    image = sitk.ReadImage(str(seg))
    labels = sitk.GetArrayFromImage(image)
    folder.mkdir(exist_ok=True)
    np.savez_compressed(folder / f"{case}.npz", probabilities=np.eye(4, dtype=np.float32)[labels].transpose(3, 0, 1, 2))
    marker = cohort.root / f"{case}_code_ran"
    properties = {"sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                                 "direction": image.GetDirection()},
                  "spacing": [4.0, 1.5, 1.5], "shape_before_cropping": np.array(labels.shape),
                  "bbox_used_for_cropping": [[np.int64(0), np.int64(s)] for s in labels.shape],
                  "class_locations": {1: np.argwhere(labels == 1)[:5]}}
    with open(folder / f"{case}.pkl", "wb") as fh:
        pickle.dump({"sitk_stuff": _Payload(marker)} if crafted else properties, fh)
    return folder, images, marker


def _run(cohort, folder, **options):
    from nnunet_plus.predict.plug_and_play import run_plug_and_play
    from nnunet_plus.refine import CaseRefiner

    return run_plug_and_play(folder, cohort.root / "out", mode="probabilities", refiner=CaseRefiner(cohort.schema),
                             num_processes=0, progress=False, **options)


def test_crafted_pkl_is_refused_without_images(cohort):
    folder, _, marker = _probabilities(cohort, "liver", crafted=True)
    report = _run(cohort, folder)
    assert not marker.exists()
    assert [f.case for f in report.failures] == ["liver"]
    error = report.failures[0].error
    assert str(folder / "liver.pkl") in error and "--trust-pickle" in error and len(error.splitlines()) == 1


def test_crafted_pkl_is_not_opened_when_the_images_give_the_geometry(cohort):
    folder, images, marker = _probabilities(cohort, "liver", crafted=True)
    report = _run(cohort, folder, images_folder=images)
    assert report.done == ["liver"] and not marker.exists()


def test_nnunet_properties_load_as_plain_data(cohort):
    folder, _, marker = _probabilities(cohort, "liver", crafted=False)
    report = _run(cohort, folder)
    assert report.done == ["liver"] and not report.failures


def test_trust_pickle_unpickles_with_a_warning(cohort, caplog):
    folder, _, marker = _probabilities(cohort, "liver", crafted=True)
    with caplog.at_level(logging.WARNING):
        _run(cohort, folder, trust_pickle=True)
    assert marker.exists()  # what --trust-pickle means: the file's code runs
    assert any("--trust-pickle" in r.getMessage() and "liver.pkl" in r.getMessage() for r in caplog.records)


def test_trust_pickle_flag(tmp_path):
    from nnunet_plus.predict.cli import build_parser, main

    args = build_parser().parse_args(["-o", "o", "-d", "1", "-c", "3d_fullres", "--from-probabilities", "p",
                                      "--trust-pickle"])
    assert args.trust_pickle
    with pytest.raises(SystemExit):
        main(["-i", "i", "-o", "o", "-d", "1", "-c", "3d_fullres", "--trust-pickle"])


def test_validation_export_pkl_never_runs_code(tmp_path):
    from nnunet_plus.nnunet_validation import load_softmax_export

    marker = tmp_path / "code_ran"
    np.savez_compressed(tmp_path / "case.npz", probabilities=np.zeros((2, 2, 2, 2), np.float32))
    with open(tmp_path / "case.pkl", "wb") as fh:
        pickle.dump({"sitk_stuff": _Payload(marker)}, fh)
    with pytest.raises(ValueError, match="case.pkl is not plain data"):
        load_softmax_export(tmp_path / "case.npz")
    assert not marker.exists()


def test_nnunet_checkpoint_is_opened_safely_first(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    from nnunet_plus.files.safe_load import check_checkpoint

    plain = {"network_weights": {"w": torch.zeros(2)}, "init_args": {"device": torch.device("cpu"), "fold": 0},
             "logging": {"ema_fg_dice": [np.float64(0.5)]}, "_best_ema": np.float64(0.5),
             "inference_allowed_mirroring_axes": (0, 1, 2), "trainer_name": "nnUNetTrainer"}
    torch.save(plain, tmp_path / "plain.pth")
    marker = tmp_path / "code_ran"
    torch.save({**plain, "init_args": _Payload(marker)}, tmp_path / "crafted.pth")
    with caplog.at_level(logging.WARNING):
        check_checkpoint(tmp_path / "plain.pth")
        assert not caplog.records
        check_checkpoint(tmp_path / "crafted.pth")
    assert not marker.exists()
    assert "crafted.pth" in caplog.records[0].getMessage() and "trust" in caplog.records[0].getMessage()
    data = (tmp_path / "plain.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pth is not a readable checkpoint"):
        check_checkpoint(tmp_path / "cut.pth")
