"""Finding 3 of issue 14: truncated images are never read silently (SimpleITK fills the missing part with zeros).

Every image the project reads from the user goes through :func:`nnunet_plus.files.image_io.read_image`: a ``.gz``
file must decompress to its end marker and CRC, a NIfTI file must hold the bytes its header announces. Where
nnU-Net's reader reads the raw dataset (the classifier's candidate bank and its validation), the files are checked
first (:func:`nnunet_plus.files.integrity.check_complete`).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.predict.errors import InputError
from nnunet_plus.predict.inputs import discover_cases, read_case


def _one_line(message: str) -> bool:
    return len(str(message).strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_predict_input_truncated_is_refused(tmp_path, faults, name):
    noise = np.random.default_rng(0).integers(-100, 200, (8, 32, 32)).astype(np.int16)
    path = tmp_path / "in" / name
    image = sitk.GetImageFromArray(noise)
    path.parent.mkdir()
    sitk.WriteImage(image, str(path), name.endswith(".gz"))
    read_case(discover_cases(path.parent, num_channels=1)[0])  # complete: reads
    faults.truncate(path)
    with pytest.raises(InputError, match="truncated") as info:
        read_case(discover_cases(path.parent, num_channels=1)[0])
    assert str(path) in str(info.value) and "re-export" in str(info.value) and _one_line(info.value)


def test_truncated_case_fails_alone_and_the_others_run(cohort, faults):
    images, segmentations = cohort.root / "ct", cohort.root / "seg"
    bad, _ = cohort.case("bad", images, segmentations)
    cohort.case("good", images, segmentations)
    faults.truncate(bad, 0.6)
    report = cohort.run(segmentations, cohort.root / "out", images=images)
    assert report.done == ["good"]
    assert [f.case for f in report.failures] == ["bad"]
    error = report.failures[0].error
    assert str(bad) in error and "truncated" in error and _one_line(error)
    assert not (cohort.root / "out" / "bad.nii.gz").exists()


def test_truncated_label_map_source_is_refused(cohort, faults):
    _, seg = cohort.case("liver", cohort.root / "ct", cohort.root / "seg")
    faults.truncate(seg, 0.6)
    report = cohort.run(cohort.root / "seg", cohort.root / "out")
    assert not report.done and str(seg) in report.failures[0].error and "truncated" in report.failures[0].error


@pytest.mark.parametrize("which", ["prediction", "reference"])
def test_evaluate_refuses_a_truncated_label_map(tmp_path, cohort, faults, make_tiny_case, capsys, which):
    from nnunet_plus.evaluation.cli import main
    from nnunet_plus.schema import write_schema

    _, labels = make_tiny_case(3, shape=(8, 32, 32))
    files = {folder: cohort.write(labels, tmp_path / folder / "case.nii.gz") for folder in ("reference", "prediction")}
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text('{"labels": {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}}')
    write_schema(dataset_json, cohort.schema)
    argv = ["-ref", str(tmp_path / "reference"), "-pred", str(tmp_path / "prediction"), "--schema", str(dataset_json),
            "-o", str(tmp_path / "summary.json"), "-np", "1", "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    faults.truncate(files[which], 0.6)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert _one_line(err) and str(files[which]) in err and "truncated" in err, err


@pytest.mark.parametrize("which", ["image", "label"])
def test_candidate_bank_refuses_a_truncated_raw_case(tmp_path, faults, classifier_files, which):
    """nnunet_plus_train_classifier's candidate bank reads the raw dataset with nnU-Net's reader, which took the
    missing part of a cut CT or label map for zeros (exit 0, crops and targets from half a case)."""
    from nnunet_plus.classifier.bank_io import CandidateBankError

    project = classifier_files(tmp_path, build_bank=False)
    path = project.raw / ("imagesTr/cls_001_0000.nii.gz" if which == "image" else "labelsTr/cls_001.nii.gz")
    faults.truncate(path, 0.6)
    with pytest.raises(CandidateBankError, match="truncated") as info:
        project.build_bank()
    assert str(path) in str(info.value) and "cls_001" in str(info.value) and _one_line(info.value)
    assert not (project.bank / "cls_001.npz").exists()
