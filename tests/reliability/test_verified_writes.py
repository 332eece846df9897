"""Finding 4 of issue 14: a failed write never leaves a file under its final name.

SimpleITK's NIfTI writer does not raise when a write fails (full disk, file-size limit): every file goes
through :func:`nnunet_plus.files.atomic.atomic_path`, which checks the temp file (gzip stream, NIfTI size, the
header read back, JSON, PNG, npz) before the rename. A failed case is not "done" for --continue_prediction.
"""
from __future__ import annotations

import gzip
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_plus.files.atomic import atomic_path
from nnunet_plus.predict.outputs import is_case_done

_WRITE_NOISE = textwrap.dedent("""
    import numpy as np
    from nnunet_plus.files.image_io import Geometry
    from nnunet_plus.predict.outputs import write_image
    geometry = Geometry((64, 64, 16), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    noise = np.random.default_rng(0).integers(-1000, 1000, (16, 64, 64)).astype(np.int16)
    for name in ("new.nii.gz", "old.nii.gz"):
        try:
            write_image(noise, geometry, name)
            print("written", name)
        except OSError as exc:
            print("refused", exc)
""")


def test_label_map_past_a_file_size_limit(tmp_path, faults):
    """A real write error: the process may write 20 kB per file, the label map needs ~100 kB."""
    old = tmp_path / "old.nii.gz"
    old.write_bytes(gzip.compress(b"the previous complete file"))
    before = old.read_bytes()
    result = faults.file_size_limit(_WRITE_NOISE, 20_000, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused writing") for line in lines), result.stdout
    assert "new.nii.gz failed" in lines[0] and "no file was written" in lines[0]
    assert "the previous file was kept" in lines[1]
    assert not (tmp_path / "new.nii.gz").exists()
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.nii.gz"]  # no temp file left behind


def test_failed_label_map_write_fails_the_case_and_is_not_done(cohort, faults):
    images, segmentations, out = cohort.root / "ct", cohort.root / "seg", cohort.root / "out"
    cohort.case("liver", images, segmentations)
    faults.truncating_writer()
    report = cohort.run(segmentations, out, images=images)
    assert [f.case for f in report.failures] == ["liver"] and "liver.nii.gz failed" in report.failures[0].error
    assert not (out / "liver.nii.gz").exists() and not (out / "liver.json").exists()
    assert not is_case_done(out, "liver")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_continue_prediction_redoes_a_case_whose_write_failed(cohort, faults, monkeypatch):
    images, segmentations, out = cohort.root / "ct", cohort.root / "seg", cohort.root / "out"
    cohort.case("liver", images, segmentations)
    with monkeypatch.context() as patch:
        write = sitk.WriteImage
        calls = []

        def fail_second(image, path, *args, **kwargs):  # label map fine, instance map truncated
            write(image, path, *args, **kwargs)
            calls.append(path)
            if len(calls) == 2:
                faults.truncate(Path(path))

        patch.setattr(sitk, "WriteImage", fail_second)
        first = cohort.run(segmentations, out, images=images)
    assert first.failures and not is_case_done(out, "liver")
    again = cohort.run(segmentations, out, images=images, continue_prediction=True)
    assert again.done == ["liver"] and not again.skipped and is_case_done(out, "liver")


def _png() -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=np.random.default_rng(0).random((2, 8, 16, 16), dtype=np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize("name, content", [
    ("case.json", json.dumps({"case": "c", "lesions": [{"id": i} for i in range(50)]}).encode()),
    ("case_overlay.png", None),
    ("case.npz", None),
    ("case.nii.gz", gzip.compress(bytes(352) + bytes(1000))),
])
def test_truncated_temp_file_is_never_renamed(tmp_path, name, content):
    content = content or (_png() if name.endswith(".png") else _npz())
    target = tmp_path / name
    target.write_bytes(b"previous")
    with pytest.raises(OSError, match=f"writing {target} failed.*previous file was kept"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(content[: len(content) * 2 // 3])  # a writer that stopped without an error
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with atomic_path(target) as tmp:  # the complete file passes
        tmp.write_bytes(content)
    assert target.read_bytes() == content
