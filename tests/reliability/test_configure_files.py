"""Finding 8 of issue 14: nnunet_plus_configure's file handling.

A read-only dataset.json is refused (left unchanged, mode kept), a symbolic link is written through to its
target, and non-finite numbers are refused with one line instead of being written as non-standard JSON.
"""
from __future__ import annotations

import json
import math
import stat

import pytest

from nnunet_plus.schema import SchemaError, build_schema
from nnunet_plus.files.atomic import write_json_atomic
from nnunet_plus.schema_cli import main

LABELS = {"background": 0, "liver": 1, "hcc": 2, "cyst": 3}


@pytest.fixture
def dataset_json(tmp_path):
    path = tmp_path / "Dataset501_Liver" / "dataset.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "CT"}}, indent=2))
    return path


def _run(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


def test_read_only_dataset_json_is_refused(dataset_json, capsys):
    before = dataset_json.read_bytes()
    dataset_json.chmod(0o444)
    code, err = _run(capsys, "--dataset-json", str(dataset_json))
    assert code == 1 and len(err.splitlines()) == 1 and str(dataset_json) in err and "read-only" in err, err
    assert dataset_json.read_bytes() == before and stat.S_IMODE(dataset_json.stat().st_mode) == 0o444
    assert [p.name for p in dataset_json.parent.iterdir()] == ["dataset.json"]


def test_writable_dataset_json_keeps_its_mode(dataset_json, capsys):
    dataset_json.chmod(0o640)
    assert _run(capsys, "--dataset-json", str(dataset_json))[0] == 0
    assert stat.S_IMODE(dataset_json.stat().st_mode) == 0o640 and "plus" in json.loads(dataset_json.read_text())


def test_symlinked_dataset_json_is_written_through(dataset_json, tmp_path, capsys):
    link = tmp_path / "link.json"
    link.symlink_to(dataset_json)
    assert _run(capsys, "--dataset-json", str(link))[0] == 0
    assert link.is_symlink() and link.resolve() == dataset_json
    assert json.loads(dataset_json.read_text())["plus"]["lesions"] == ["hcc", "cyst"]


@pytest.mark.parametrize("flags, name", [
    (["--min-volume-mm3", "nan"], "min_lesion_volume_mm3"),
    (["--min-volume-mm3", "inf"], "min_lesion_volume_mm3"),
    (["--sensitivities", "1", "inf"], "sensitivities"),
    (["--sensitivities", "nan", "4"], "sensitivities"),
])
def test_non_finite_numbers_are_refused(dataset_json, capsys, flags, name):
    before = dataset_json.read_bytes()
    code, err = _run(capsys, "--dataset-json", str(dataset_json), *flags)
    assert code == 1 and len(err.splitlines()) == 1 and name in err and "finite" in err, err
    assert dataset_json.read_bytes() == before


def test_schema_and_json_writer_refuse_non_finite_values(tmp_path):
    with pytest.raises(SchemaError, match="finite"):
        build_schema(LABELS, min_lesion_volume_mm3=math.inf)
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"value": math.nan})
    assert list(tmp_path.iterdir()) == []
