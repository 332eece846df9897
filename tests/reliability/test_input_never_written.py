"""Finding 1 of issue 14: the input folder is never written.

``-o`` equal to ``-i`` (or to the folder an input file lives in, symbolic links followed) is refused before
anything is read or written; an output folder inside the input folder is not taken for a case.
"""
from __future__ import annotations

import os

import pytest

from nnunet_plus.predict.errors import InputError
from nnunet_plus.predict.inputs import discover_cases


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_cli_refuses_output_folder_equal_to_input_folder(tmp_path, cohort, monkeypatch, capsys):
    from nnunet_plus.predict.cli import main

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, str(tmp_path / key))
    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    same = tmp_path / "same"
    cohort.case("liver", same, tmp_path / "seg")
    before = _snapshot(same)
    code = main(["-i", str(same), "-o", str(same) + os.sep, "-d", "901", "-c", "3d_fullres", "-device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert str(same) in err and "-o" in err and "-i" in err
    assert _snapshot(same) == before


def test_images_folder_as_output_is_refused_and_the_ct_is_kept(cohort):
    images, segmentations = cohort.root / "ct", cohort.root / "seg"
    ct, _ = cohort.case("liver", images, segmentations)
    before = ct.read_bytes()
    with pytest.raises(InputError, match="input folder"):
        cohort.run(segmentations, images, images=images)
    assert ct.read_bytes() == before and sorted(p.name for p in images.iterdir()) == ["liver.nii.gz"]


def test_source_folder_as_output_is_refused(cohort):
    segmentations = cohort.root / "seg"
    _, seg = cohort.case("liver", cohort.root / "ct", segmentations)
    before = seg.read_bytes()
    with pytest.raises(InputError, match=str(segmentations)):
        cohort.run(segmentations, segmentations)
    assert seg.read_bytes() == before and sorted(p.name for p in segmentations.iterdir()) == ["liver.nii.gz"]


def test_folder_of_a_linked_input_file_is_refused(cohort):
    """``-i links`` holds symbolic links to the CTs in ``store``: ``-o store`` would overwrite them."""
    store, links, segmentations = cohort.root / "store", cohort.root / "links", cohort.root / "seg"
    ct, _ = cohort.case("liver", store, segmentations)
    links.mkdir()
    (links / "liver.nii.gz").symlink_to(ct)
    before = ct.read_bytes()
    with pytest.raises(InputError, match="liver.nii.gz"):
        cohort.run(segmentations, store, images=links)
    assert ct.read_bytes() == before and not (store / "liver.json").exists()


def test_output_folder_inside_the_input_folder_is_not_a_case(cohort):
    segmentations = cohort.root / "seg"
    cohort.case("liver", cohort.root / "ct", segmentations)
    out = segmentations / "refined"
    for _ in range(2):  # the second run finds the output folder inside the input folder
        report = cohort.run(segmentations, out)
        assert report.failures == [] and report.done == ["liver"]
    assert (out / "liver.json").is_file()
    other = cohort.root / "seg2"
    cohort.case("liver", cohort.root / "ct", other)
    for _ in range(2):  # deeper: the subfolder of the input folder that holds the output folder is no case either
        report = cohort.run(other, other / "runs" / "first")
        assert report.failures == [] and report.done == ["liver"]


def test_discovery_skips_the_output_folder(tmp_path, cohort):
    images = tmp_path / "ct"
    cohort.case("liver", images, tmp_path / "seg")
    (images / "predictions").mkdir()
    (images / "runs" / "a").mkdir(parents=True)
    assert [c.case for c in discover_cases(images, num_channels=1)] == ["liver", "predictions", "runs"]
    assert [c.case for c in discover_cases(images, num_channels=1, exclude=images / "predictions")] == \
        ["liver", "runs"]
    assert [c.case for c in discover_cases(images, num_channels=1, exclude=images / "runs" / "a")] == \
        ["liver", "predictions"]
