"""Finding 9 of issue 14: JSON files get the mode a plain ``open()`` would give (the umask applies; a replaced
file keeps its mode), so ``umask 077`` keeps summaries and dataset.json private."""
from __future__ import annotations

import os
import stat

import pytest

from nnunet_plus.predict.outputs import atomic_path
from nnunet_plus.files.atomic import write_json_atomic


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_json_file_respects_the_umask(tmp_path, umask_077):
    write_json_atomic(tmp_path / "summary.json", {"cases": ["a"]})
    with atomic_path(tmp_path / "table.csv") as tmp:
        tmp.write_text("case\n")
    assert _mode(tmp_path / "summary.json") == 0o600 == _mode(tmp_path / "table.csv")


def test_replaced_json_file_keeps_its_mode(tmp_path, umask_077):
    path = tmp_path / "dataset.json"
    path.write_text("{}")
    for mode in (0o600, 0o664):
        path.chmod(mode)
        write_json_atomic(path, {"mode": mode})
        assert _mode(path) == mode


def test_default_umask_gives_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "x.json", [])
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x.json") == 0o644
