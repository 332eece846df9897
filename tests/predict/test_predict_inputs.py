"""Input discovery and validation of nnunet_plus_predict (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.files.image_io import Geometry
from nnunet_plus.predict.errors import InputError
from nnunet_plus.predict.inputs import discover_cases, read_case, split_image_name

from helpers import ODD_ORIGIN, ROTATED_DIRECTION, to_sitk, write_dicom_series, write_image


def _volume(seed: int = 0, shape=(5, 12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 200, size=shape).astype(np.int16)


def _cases(folder, num_channels=1):
    return {c.case: c for c in discover_cases(folder, num_channels=num_channels)}


@pytest.mark.parametrize("name, expected", [
    ("ct_0000.nii.gz", ("ct_0000", ".nii.gz")), ("scan.NRRD", ("scan", ".NRRD")), ("a.b.mha", ("a.b", ".mha")),
    ("notes.txt", None), (".nii.gz", None),
])
def test_split_image_name(name, expected):
    assert split_image_name(name) == expected


def test_naming_rule_mixes_nnunet_plain_and_dicom(tmp_path):
    volume = _volume()
    write_image(volume, tmp_path / "case_a_0000.nii.gz")
    write_image(volume, tmp_path / "plain_ct.nrrd")
    write_dicom_series(volume, tmp_path / "dicom_case", origin=(-10.0, 20.0, -30.0))
    write_image(volume, tmp_path / "volume.mhd")  # header + .raw companion: one case
    (tmp_path / ".DS_Store").write_text("hidden files are ignored")
    cases = _cases(tmp_path)
    assert sorted(cases) == ["case_a", "dicom_case", "plain_ct", "volume"]
    assert all(c.error is None for c in cases.values())
    for case in cases.values():
        image, geometry = read_case(case)
        assert image.shape == (1, 5, 12, 10) and image.dtype == np.float32
        np.testing.assert_array_equal(image[0], volume)  # DICOM round trip keeps the HU values
        assert geometry.spacing_zyx == pytest.approx((4.0, 1.5, 1.5))
    _, dicom_geometry = read_case(cases["dicom_case"])
    assert dicom_geometry.origin == pytest.approx((-10.0, 20.0, -30.0))


def test_multichannel_cases_are_stacked_in_channel_order(tmp_path):
    write_image(_volume(1), tmp_path / "p1_0001.nii.gz")
    write_image(_volume(0), tmp_path / "p1_0000.nii.gz")
    image, _ = read_case(_cases(tmp_path, 2)["p1"])
    np.testing.assert_array_equal(image[0], _volume(0))
    np.testing.assert_array_equal(image[1], _volume(1))


def test_empty_and_missing_folders_raise(tmp_path):
    with pytest.raises(InputError, match="is empty"):
        discover_cases(tmp_path, num_channels=1)
    with pytest.raises(InputError, match="does not exist"):
        discover_cases(tmp_path / "nope", num_channels=1)


def test_missing_channel_and_wrong_channel_count(tmp_path):
    write_image(_volume(), tmp_path / "two_0000.nii.gz")
    write_image(_volume(), tmp_path / "three_0000.nii.gz")
    write_image(_volume(), tmp_path / "three_0001.nii.gz")
    write_image(_volume(), tmp_path / "three_0002.nii.gz")
    write_image(_volume(), tmp_path / "ok_0000.nii.gz")
    write_image(_volume(), tmp_path / "ok_0001.nii.gz")
    write_image(_volume(), tmp_path / "plain.nii.gz")
    cases = _cases(tmp_path, num_channels=2)
    assert cases["ok"].error is None
    with pytest.raises(InputError, match=r"missing channel file\(s\) two_0001\.\*"):
        read_case(cases["two"])
    with pytest.raises(InputError, match=r"wrong channel count.*three_0002\.nii\.gz"):
        read_case(cases["three"])
    with pytest.raises(InputError, match=r"plain\.nii\.gz has no _XXXX channel suffix but the model needs 2"):
        read_case(cases["plain"])


def test_two_files_for_one_case(tmp_path):
    write_image(_volume(), tmp_path / "dup.nii.gz")
    write_image(_volume(), tmp_path / "dup.nrrd")
    with pytest.raises(InputError, match=r"several inputs claim it \(dup\.nii\.gz, dup\.nrrd\)"):
        read_case(_cases(tmp_path)["dup"])


def test_non_image_corrupt_2d_nan_files_name_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    write_image(_volume()[0], tmp_path / "flat.nii.gz")
    nan = _volume().astype(np.float32)
    nan[1, 2, 3] = np.nan
    nan[2, 2, 3] = np.inf
    write_image(nan, tmp_path / "nan.nrrd")  # NIfTI can't be used: ITK's NIfTI reader turns NaN into 0
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 5, 6), np.int16), isVector=False),
                    str(tmp_path / "four_d.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 5, 6, 3), np.uint8), isVector=True),
                    str(tmp_path / "rgb.mha"))
    (tmp_path / "empty_dir").mkdir()
    cases = _cases(tmp_path)
    expectations = {
        "notes.txt": r"notes\.txt is not an image file \(unknown extension\)",
        "broken": r"broken\.nii\.gz cannot be read as an image \(corrupt",
        "flat": r"flat\.nii\.gz is a 2D image",
        "nan": r"nan\.nrrd has 2 NaN / infinite voxels",
        "four_d": r"four_d\.nrrd is a 4D image",
        "rgb": r"rgb\.mha has 3 components per voxel",
        "empty_dir": r"empty_dir is a folder but holds no DICOM series",
    }
    assert sorted(cases) == sorted(expectations)
    for case, pattern in expectations.items():
        with pytest.raises(InputError, match=pattern):
            read_case(cases[case])


@pytest.mark.parametrize("change, pattern", [
    ({"spacing": (1.5, 1.5, 5.0)}, "spacing"),
    ({"origin": (0.0, 0.0, 1.0)}, "origin"),
    ({"direction": (0, 1, 0, 1, 0, 0, 0, 0, 1)}, "direction"),
])
def test_channels_with_different_geometry(tmp_path, change, pattern):
    write_image(_volume(), tmp_path / "g_0000.nii.gz")
    write_image(_volume(), tmp_path / "g_0001.nii.gz", **change)
    with pytest.raises(InputError, match=rf"g_0001\.nii\.gz does not have the geometry of g_0000\.nii\.gz \({pattern}"):
        read_case(_cases(tmp_path, 2)["g"])


def test_channels_with_different_size(tmp_path):
    write_image(_volume(), tmp_path / "s_0000.nii.gz")
    write_image(_volume(shape=(5, 12, 11)), tmp_path / "s_0001.nii.gz")
    with pytest.raises(InputError, match=r"s_0001\.nii\.gz does not have the geometry.*size \(11, 12, 5\)"):
        read_case(_cases(tmp_path, 2)["s"])


def test_dicom_folder_with_two_series(tmp_path):
    write_dicom_series(_volume(), tmp_path / "two_series", series_uid="1.2.3.4.5.1")
    write_dicom_series(_volume(), tmp_path / "two_series", series_uid="1.2.3.4.5.2")
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        read_case(_cases(tmp_path)["two_series"])


def test_geometry_round_trips_nnunet_properties():
    image = to_sitk(np.zeros((3, 4, 5), np.uint8), spacing=(0.7, 0.8, 2.5), origin=ODD_ORIGIN,
                            direction=ROTATED_DIRECTION)
    geometry = Geometry.of(image)
    properties = geometry.nnunet_properties()
    assert properties["spacing"] == [2.5, 0.8, 0.7]  # nnU-Net's (z, y, x)
    assert Geometry.from_nnunet_properties(properties, (3, 4, 5)) == geometry
    assert geometry.mismatch(geometry) is None
