"""Finding 7 of issue 14: one line naming the file instead of a traceback (or of a late, nameless failure).

An unwritable ``-o`` is refused before any case is computed; nnunet_plus_configure names a dataset.json that is
not JSON, not an object, not UTF-8 or immutable; make_phantom refuses a shape it cannot allocate; a header
spacing that resamples to nothing names the file; ``-step_size 0`` and ``-f 1_old`` are argument errors; folds
are only ``fold_<k>`` / ``fold_all`` folders (a ``fold_1_old`` copy is neither loaded nor averaged in). A 1 x 1 x 1
voxel image is no error at all: it is read, predicted (overlay included) and evaluated like any other.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_plus.predict.errors import InputError

LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- predict: -o ------------------------------------------------------------------------------------------------
def test_output_under_a_file_is_refused_before_any_case(cohort):
    cohort.case("liver", cohort.root / "ct", cohort.root / "seg")
    blocker = cohort.root / "not_a_folder"
    blocker.write_text("a file")
    with pytest.raises(InputError, match="not a writable folder") as info:
        cohort.run(cohort.root / "seg", blocker / "out", images=cohort.root / "ct")
    assert str(blocker / "out") in _one_line(str(info.value))


def test_read_only_output_folder_is_refused_before_any_case(cohort, faults):
    cohort.case("liver", cohort.root / "ct", cohort.root / "seg")
    out = cohort.root / "out"
    out.mkdir()
    faults.read_only(out)
    with pytest.raises(InputError, match="not a writable folder") as info:
        cohort.run(cohort.root / "seg", out, images=cohort.root / "ct")
    assert str(out) in _one_line(str(info.value))
    assert list(out.iterdir()) == []


# ---- configure ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, expected", [
    (b'{"labels": {"liver": 1,', "not valid JSON"),
    (b'[{"labels": {"liver": 1}}]', "JSON list, not an object"),
    ('{"labels": {"f\u00f6ie": 1}}'.encode("latin-1"), "not UTF-8"),
])
def test_configure_names_a_bad_dataset_json(tmp_path, capsys, content, expected):
    from nnunet_plus.schema_cli import main

    path = tmp_path / "dataset.json"
    path.write_bytes(content)
    assert main(["--dataset-json", str(path)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("nnunet_plus_configure: error: ") and str(path) in line and expected in line, line
    assert path.read_bytes() == content


def test_configure_names_an_immutable_dataset_json(tmp_path, capsys, faults):
    from nnunet_plus.schema_cli import main

    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": LABELS}))
    faults.immutable(path)  # mode 0644 kept: only the flag blocks the write
    assert main(["--dataset-json", str(path)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(path) in line and "not writable" in line and "immutable" in line, line


# ---- make_phantom ---------------------------------------------------------------------------------------------------
def test_make_phantom_refuses_a_shape_it_cannot_allocate(tmp_path, capsys):
    from nnunet_plus.phantom.cli import main

    code = main(["-d", "977", "-n", "1", "--n-test", "0", "--shape", "100000", "100000", "100000",
                 "--out", str(tmp_path), "-np", "1", "--quiet"])
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert "GiB" in line and "--shape" in line, line
    assert list(tmp_path.iterdir()) == []


# ---- header spacing ---------------------------------------------------------------------------------------------
def test_a_spacing_that_resamples_to_nothing_names_the_file(model_grid):
    from nnunet_plus.predict.predictor import PLUSPredictor

    with pytest.raises(InputError) as info:
        PLUSPredictor.check_resampling(model_grid.predictor, model_grid.geometry((1e-6, 1e-6, 1e-6)),
                                       "ct/micro.nii.gz")
    line = _one_line(str(info.value))
    assert line.startswith("ct/micro.nii.gz: ") and "(0, 0, 0)" in line and "header spacing" in line, line


# ---- arguments ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    (["-step_size", "0"], "-step_size must be in (0, 1]"),
    (["-step_size", "1.5"], "-step_size must be in (0, 1]"),
    (["-step_size", "nan"], "-step_size must be in (0, 1]"),
    (["-f", "0", "1_old"], "-f takes fold numbers or 'all'"),
])
def test_bad_step_size_and_fold_are_argument_errors(tmp_path, capsys, flags, expected):
    from nnunet_plus.predict.cli import main

    with pytest.raises(SystemExit) as info:
        main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "-d", "999", "-c", "3d_fullres", *flags])
    assert info.value.code == 2
    assert expected in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# ---- fold folders -------------------------------------------------------------------------------------------------
def _fold_folders(root, names, checkpoint="checkpoint_final.pth"):
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / checkpoint).write_bytes(b"not a checkpoint")
    return root


def test_only_fold_k_and_fold_all_are_folds(tmp_path):
    from nnunet_plus.paths import trained_folds
    from nnunet_plus.predict.predictor import check_model_folder

    folder = _fold_folders(tmp_path, ["fold_0", "fold_1", "fold_10", "fold_all", "fold_1_old", "fold_1_x",
                                      "fold_", "fold_2.bak"])
    (folder / "fold_3").mkdir()  # no checkpoint: not trained
    for name in ("dataset.json", "plans.json"):
        (folder / name).write_text("{}")
    assert trained_folds(folder, "checkpoint_final.pth") == [0, 1, 10, "all"]
    assert check_model_folder(folder, None, "checkpoint_final.pth") == [0, 1, 10]


def test_classifier_ignores_a_fold_copy(tmp_path):
    from nnunet_plus.classifier.inference import PLUSInference
    from nnunet_plus.schema import build_schema

    folder = _fold_folders(tmp_path / "PLUSClassifier", ["fold_1_x"])
    with pytest.raises(FileNotFoundError, match="no fold of"):
        PLUSInference.from_folder(folder, schema=build_schema(LABELS))


# ---- a 1 x 1 x 1 voxel image ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 5)])
def test_a_one_voxel_image_is_predicted_with_its_overlay_and_evaluated(cohort, shape):
    """A 1 x 1 x 1 voxel CT + label map (and a one-row image) goes through the shared reader, predict and evaluate
    like any other image. Its overlay failed the case with "tiny: TypeError: Input z must be at least a (2, 2)
    shaped array, but has shape (1, 1)" (matplotlib's contour on a slice under 2 x 2 voxels), naming no file."""
    import SimpleITK as sitk

    from nnunet_plus.evaluation.cli import main
    from nnunet_plus.files.image_io import read_image
    from nnunet_plus.files.integrity import check_complete

    labels = np.ones(shape, np.uint8)
    labels.flat[0] = 2  # one HCC voxel in the liver
    ct = cohort.write(np.full(shape, 30, np.int16), cohort.root / "ct" / "tiny.nii.gz")
    seg = cohort.write(labels, cohort.root / "seg" / "tiny.nii.gz")
    out = cohort.root / "out"
    report = cohort.run(seg.parent, out, images=ct.parent, overlays=True)
    assert report.failures == [] and report.done == ["tiny"]
    check_complete(out / "tiny_overlay.png")
    assert np.array_equal(sitk.GetArrayFromImage(read_image(out / "tiny.nii.gz")), labels)
    [lesion] = json.loads((out / "tiny.json").read_text())["lesions"]
    assert lesion["class"] == "hcc" and lesion["n_voxels"] == 1

    schema = cohort.root / "dataset.json"
    schema.write_text(json.dumps({"labels": LABELS, "plus": cohort.schema.to_block()}))
    summary = cohort.root / "summary.json"
    assert main(["-ref", str(seg.parent), "-pred", str(out), "--schema", str(schema), "--min-volume", "0",
                 "--quiet", "-o", str(summary)]) == 0
    lesions = json.loads(summary.read_text())["lesion_level"]
    assert (lesions["tp"], lesions["fp"], lesions["fn"]) == (1, 0, 0)
