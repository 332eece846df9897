"""Real-world DICOM folders as -i cases (issue 15 point 3): series choice, localizers, spacing, tilt, codecs.

The series are written here with pydicom (8 x 16 x 16 CT, HU = stored value - 1024), plus pydicom's shipped
real CT series where the installed wheel has them.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid  # noqa: E402

from nnunet_plus.files.image_io import Geometry  # noqa: E402
from nnunet_plus.predict import cli  # noqa: E402
from nnunet_plus.predict.errors import InputError  # noqa: E402
from nnunet_plus.predict.inputs import discover_cases, read_case, read_sitk  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: an oblique but orthonormal plane (rotated 30 degrees about z, then 20 about x)
_a, _b = math.radians(30), math.radians(20)
OBLIQUE = (math.cos(_a), math.sin(_a), 0.0,
           -math.sin(_a) * math.cos(_b), math.cos(_a) * math.cos(_b), math.sin(_b))
HTJ2K = "1.2.840.10008.1.2.4.201"


def _volume(seed: int = 0, depth: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 200, size=(depth, 16, 16)).astype(np.int16)


def _positions(depth: int, *, origin=(-20.0, -30.0, 40.0), orientation=AXIAL, spacing_z: float = 2.5):
    normal = np.cross(orientation[:3], orientation[3:])
    return [tuple(np.asarray(origin) + k * spacing_z * normal) for k in range(depth)]


def write_series(folder: Path, volume: np.ndarray, *, positions=None, orientation=AXIAL, pixel_spacing=(0.7, 0.8),
                 series_uid: str | None = None, description: str = "abdomen", modality: str = "CT",
                 image_type=("ORIGINAL", "PRIMARY", "AXIAL"), tilt: float | None = None, syntax=ExplicitVRLittleEndian,
                 patient_id: str = "P1", prefix: str = "im") -> SimpleNamespace:
    """One file per slice of ``volume`` (Z, Y, X HU), written in a shuffled order; returns uid and files."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    positions = positions if positions is not None else _positions(len(volume), orientation=orientation)
    files = []
    order = np.random.default_rng(len(volume)).permutation(len(volume))  # file names do not follow z
    for k in range(len(volume)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, "TEST^DICOM"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", series_uid
        ds.Modality, ds.SeriesDescription, ds.ImageType = modality, description, list(image_type)
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 2.5
        if tilt is not None:
            ds.GantryDetectorTilt = tilt
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (volume[k].astype(np.int32) + 1024).astype(np.int16).tobytes()
        if syntax == RLELossless:
            ds.compress(RLELossless)
        elif syntax != ExplicitVRLittleEndian:  # a codec nobody here decodes: a J2K marker and noise
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
            ds["PixelData"].VR = "OB"
            meta.TransferSyntaxUID = syntax
        path = folder / f"{prefix}{order[k]:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return SimpleNamespace(uid=series_uid, files=files, folder=folder)


def _sitk_reading(folder: Path, uid: str | None = None) -> sitk.Image:
    """What plain SimpleITK makes of a folder (the reference for clean series)."""
    uid = uid or sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))[0]
    return sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


# ---- clean series --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_clean_series_matches_simpleitk(tmp_path, orientation):
    volume = _volume()
    write_series(tmp_path / "ct", volume, orientation=orientation)
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM")  # stray files are skipped
    case = {c.case: c for c in discover_cases(tmp_path, num_channels=1)}["ct"]
    image, geometry = read_case(case)
    reference = _sitk_reading(tmp_path / "ct")
    assert geometry.mismatch(Geometry.of(reference)) is None
    assert geometry.spacing == pytest.approx((0.8, 0.7, 2.5))
    assert geometry.origin == pytest.approx((-20.0, -30.0, 40.0), abs=1e-5)
    np.testing.assert_array_equal(image[0], sitk.GetArrayFromImage(reference))
    np.testing.assert_array_equal(image[0], volume)  # slices sorted by position, HU rescaled


def test_series_in_subfolders_is_found(tmp_path):
    """A PACS export nests the files (PATIENT/STUDY/SERIES); the case folder is searched recursively."""
    write_series(tmp_path / "case" / "ST0" / "SE1", _volume())
    assert read_sitk(tmp_path / "case").GetSize() == (16, 16, 8)


# ---- several series ------------------------------------------------------------------------------------------
@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "exam"
    big = write_series(folder, _volume(1, depth=8), description="venous", prefix="a")
    small = write_series(folder, _volume(2, depth=5), description="arterial", prefix="b",
                         positions=_positions(5, origin=(-20.0, -30.0, 60.0)))
    scout = write_series(folder, _volume(3, depth=2), description="scout", prefix="s",
                         image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                         orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), positions=[(0, 0, 0), (0, 5, 0)])
    return SimpleNamespace(folder=folder, big=big, small=small, scout=scout)


def test_several_series_largest_ct_chosen_and_logged(two_series, caplog):
    with caplog.at_level(logging.INFO, logger="nnunet_plus.predict.dicom_scan"):
        image = read_sitk(two_series.folder)
    assert image.GetSize() == (16, 16, 8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _volume(1, depth=8))
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"reading series {two_series.big.uid}" in message and "the largest CT series" in message
    assert two_series.small.uid in message  # the series not read are listed


def test_series_uid_picks_another_series(two_series):
    image = read_sitk(two_series.folder, series_uids=[two_series.small.uid])
    assert image.GetSize() == (16, 16, 5)
    assert image.GetOrigin() == pytest.approx((-20.0, -30.0, 60.0))
    case = discover_cases(two_series.folder.parent, num_channels=1)[0]
    np.testing.assert_array_equal(read_case(case, series_uids=[two_series.small.uid])[0][0], _volume(2, depth=5))
    np.testing.assert_array_equal(read_case(case)[0][0], _volume(1, depth=8))  # no setting left behind


def test_unknown_series_uid_lists_the_series(two_series):
    with pytest.raises(InputError) as info:
        read_sitk(two_series.folder, series_uids=["1.2.3.999"])
    message = str(info.value)
    assert "\n" not in message and str(two_series.folder) in message and "1.2.3.999" in message
    for uid, count in [(two_series.big.uid, 8), (two_series.small.uid, 5), (two_series.scout.uid, 2)]:
        assert f"{uid} (CT '" in message and f"{count} images" in message


def test_cli_series_uid_reaches_the_reader_and_errors_in_one_line(two_series, tmp_path, monkeypatch, capsys):
    seen = {}

    class FakePredictor:  # the reading the real run does per case (read_case of each input), without a model
        @classmethod
        def from_dataset(cls, *args, **options):
            return cls()

        def predict_folder(self, input_folder, output_folder, *, dicom_series_uids=(), **options):
            case = {c.case: c for c in discover_cases(input_folder, num_channels=1)}["exam"]
            seen["size"] = read_case(case, series_uids=dicom_series_uids)[0].shape
            return SimpleNamespace(done=["exam"], skipped=[], failures=[])

    monkeypatch.setattr("nnunet_plus.predict.predictor.PLUSPredictor", FakePredictor)
    monkeypatch.setattr(cli, "_device", lambda name: "cpu")
    monkeypatch.setattr(cli, "ensure_ext_trainer_env", lambda: None)
    flags = ["-i", str(two_series.folder.parent), "-o", str(tmp_path / "out"), "-d", "1", "-c", "3d_fullres"]
    assert cli.main([*flags, "--series-uid", two_series.small.uid]) == 0
    assert seen["size"] == (1, 5, 16, 16)
    assert cli.main(flags) == 0 and seen["size"] == (1, 8, 16, 16)  # no flag: the largest CT series
    assert cli.main([*flags, "--series-uid", "9.9.9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nnunet_plus_predict: error: ") and "no series with --series-uid 9.9.9" in err[-1]


def test_tie_between_largest_series_asks_for_series_uid(tmp_path):
    write_series(tmp_path / "tie", _volume(1), prefix="a")
    write_series(tmp_path / "tie", _volume(2), prefix="b")
    with pytest.raises(InputError, match=r"tie as the largest CT series \(8 image\(s\) each\); choose one with "
                                         r"--series-uid"):
        read_sitk(tmp_path / "tie")


def test_only_localizers_is_an_error(tmp_path):
    write_series(tmp_path / "scout", _volume(depth=2), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(InputError, match="holds only localizer / scout images"):
        read_sitk(tmp_path / "scout")


# ---- localizers inside a series ------------------------------------------------------------------------------
@pytest.mark.parametrize("image_type", [("ORIGINAL", "PRIMARY", "LOCALIZER"), ("ORIGINAL", "PRIMARY", "AXIAL")],
                         ids=["localizer_type", "other_orientation"])
def test_localizer_in_series_is_dropped(tmp_path, caplog, image_type):
    volume = _volume()
    series = write_series(tmp_path / "ct", volume)
    write_series(tmp_path / "ct", _volume(5, depth=1), series_uid=series.uid, image_type=image_type, prefix="loc",
                 orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0), positions=[(0.0, -100.0, 100.0)])
    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.dicom_series"):
        image = read_sitk(tmp_path / "ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume)
    assert any("loc000.dcm" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)


# ---- slice geometry ------------------------------------------------------------------------------------------
def test_missing_slice_is_an_error_naming_the_gap(tmp_path):
    positions = _positions(8)
    write_series(tmp_path / "gap", _volume(depth=7), positions=positions[:4] + positions[5:])
    with pytest.raises(InputError) as info:
        read_sitk(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(info.value)
    assert "missing slice(s) between z = 47.50 and 52.50 mm (gap 5.00 mm, median spacing 2.5 mm)" in str(info.value)


def test_non_uniform_spacing_is_an_error(tmp_path):
    positions = _positions(8)
    positions[5] = (positions[5][0], positions[5][1], positions[5][2] + 0.4)  # 16 % of the spacing off
    write_series(tmp_path / "uneven", _volume(), positions=positions)
    with pytest.raises(InputError, match=r"uneven: series .* has non-uniform slice spacing \(gaps 2.1 to 2.9 mm; "
                                         r"the slice at z = 52.90 mm is 0.4 mm off"):
        read_sitk(tmp_path / "uneven")


def test_spacing_jitter_within_tolerance_is_read(tmp_path):
    positions = [(x, y, z + (0.004 if k % 2 else -0.004)) for k, (x, y, z) in enumerate(_positions(8))]
    write_series(tmp_path / "jitter", _volume(), positions=positions)
    image = read_sitk(tmp_path / "jitter")
    assert image.GetSpacing()[2] == pytest.approx(2.5, abs=0.01)


def test_gantry_tilt_is_an_error(tmp_path):
    shift = 2.5 * math.tan(math.radians(15))
    positions = [(x, y + k * shift, z) for k, (x, y, z) in enumerate(_positions(8))]
    write_series(tmp_path / "tilt", _volume(), positions=positions, tilt=15.0)
    with pytest.raises(InputError, match=r"tilt: series .* has gantry tilt .* 15.00 degrees; GantryDetectorTilt 15\)"):
        read_sitk(tmp_path / "tilt")


def test_tilt_tag_with_orthogonal_positions_is_trusted_with_a_warning(tmp_path, caplog):
    volume = _volume()
    write_series(tmp_path / "tag", volume, tilt=12.0)
    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.dicom_series"):
        image = read_sitk(tmp_path / "tag")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume)
    assert any("GantryDetectorTilt = 12 degrees" in r.getMessage() for r in caplog.records)


def test_duplicate_positions_are_an_error(tmp_path):
    positions = _positions(8)
    positions[6] = positions[5]
    write_series(tmp_path / "dup", _volume(), positions=positions)
    with pytest.raises(InputError, match=r"dup: series .* has 1 duplicate slice position\(s\), e.g. z = 52.50 mm"):
        read_sitk(tmp_path / "dup")


def test_copy_of_the_same_image_is_ignored(tmp_path, caplog):
    volume = _volume()
    series = write_series(tmp_path / "copy", volume)
    (tmp_path / "copy" / "copy_of_first.dcm").write_bytes(series.files[0].read_bytes())
    with caplog.at_level(logging.WARNING, logger="nnunet_plus.predict.dicom_series"):
        image = read_sitk(tmp_path / "copy")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume)
    assert any("same SOPInstanceUID" in r.getMessage() for r in caplog.records)


# ---- transfer syntaxes ---------------------------------------------------------------------------------------
def test_undecodable_transfer_syntax_names_it(tmp_path):
    write_series(tmp_path / "htj2k", _volume(), syntax=HTJ2K)
    with pytest.raises(InputError) as info:
        read_sitk(tmp_path / "htj2k")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "htj2k") in message
    assert f"High-Throughput JPEG 2000 Image Compression (Lossless Only) ({HTJ2K})" in message
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message and "gdcmconv --raw" in message


def test_rle_series_read_by_simpleitk_and_by_the_pydicom_fallback(tmp_path, monkeypatch, caplog):
    volume = _volume()
    write_series(tmp_path / "rle", volume, syntax=RLELossless)
    by_sitk = read_sitk(tmp_path / "rle")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_sitk), volume)

    def cannot_decode(self):
        raise RuntimeError("ITK ERROR: GDCMImageIO: Failed to change to Implicit Transfer Syntax")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", cannot_decode)
    with caplog.at_level(logging.INFO, logger="nnunet_plus.predict.dicom_series"):
        by_pydicom = read_sitk(tmp_path / "rle")
    assert any("decoded with pydicom" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_pydicom), volume)
    assert Geometry.of(by_sitk).mismatch(Geometry.of(by_pydicom)) is None


# ---- pydicom's shipped real CT series ------------------------------------------------------------------------
def _shipped(relative: str) -> Path:
    from pydicom.data import get_testdata_file

    try:
        dicomdir = get_testdata_file("DICOMDIR")
    except Exception:  # noqa: BLE001 - a wheel without test data
        dicomdir = None
    folder = Path(dicomdir).parent / "dicomdirtests" / relative if dicomdir else None
    if folder is None or not folder.is_dir():
        folder = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / relative
    if not folder.is_dir():
        pytest.skip(f"this pydicom wheel ships no dicomdirtests/{relative}")
    return folder


def test_shipped_ct_exam_chooses_the_ct_over_its_scouts():
    """98892001: a 2-image scout series (ImageType LOCALIZER) and a 5-slice gated CT, in two subfolders."""
    exam = _shipped("98892001")
    image = read_sitk(exam)
    reference = _sitk_reading(exam / "CT5N")
    assert Geometry.of(image).mismatch(Geometry.of(reference)) is None
    assert image.GetSize() == (16, 16, 5) and image.GetSpacing()[2] == pytest.approx(2.5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))


def test_shipped_ct_with_missing_slices_is_refused():
    """77654033/CT2: 4 slices at z = -99.48, 103.02, 104.27, 105.52; SimpleITK alone stacks them 68.3 mm apart."""
    folder = _shipped("77654033/CT2")
    assert _sitk_reading(folder).GetSpacing()[2] == pytest.approx(68.333, abs=1e-3)  # the silently wrong volume
    with pytest.raises(InputError, match=r"missing slice\(s\) between z = -99.48 and 103.02 mm"):
        read_sitk(folder)
