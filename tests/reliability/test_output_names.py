"""Finding 6 of issue 14: output names never collide.

A case named like a run-level file (``nnunet_plus_predict`` -> ``nnunet_plus_predict.json``) or two cases whose
outputs share a name (``foo`` and ``foo_instances`` -> ``foo_instances.nii.gz``) are refused before anything is
written, with one line naming the cases. nnunet_plus_evaluate refuses an output file (its default
``PRED/nnunet_plus_summary.json`` too) that is a file it reads, e.g. the JSON of a case ``nnunet_plus_summary``.
"""
from __future__ import annotations

import json

import pytest

from nnunet_plus.predict.errors import InputError


@pytest.mark.parametrize("names, wanted", [
    (("liver", "nnunet_plus_predict"), ["nnunet_plus_predict", "nnunet_plus_predict.json"]),
    (("foo", "foo_instances"), ["'foo'", "'foo_instances'", "foo_instances.nii.gz"]),
])
def test_colliding_names_are_refused_before_anything_is_written(cohort, names, wanted):
    segmentations, out = cohort.root / "seg", cohort.root / "out"
    for name in names:
        cohort.case(name, cohort.root / "ct", segmentations)
    with pytest.raises(InputError) as info:
        cohort.run(segmentations, out)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in wanted), message
    assert not out.exists()


def test_names_that_do_not_collide_still_run(cohort):
    """``foo_overlay`` writes ``foo_overlay_overlay.png``, never ``foo``'s ``foo_overlay.png``."""
    segmentations = cohort.root / "seg"
    for name in ("foo", "foo_overlay", "lesions"):
        cohort.case(name, cohort.root / "ct", segmentations)
    report = cohort.run(segmentations, cohort.root / "out", overlays=True)
    assert report.failures == [] and report.done == ["foo", "foo_overlay", "lesions"]
    assert {"foo_overlay.png", "foo_overlay_overlay.png", "lesions.json", "lesions.csv"} <= \
        {p.name for p in (cohort.root / "out").iterdir()}


def test_every_part_of_a_split_run_refuses(cohort):
    """The check looks at every case of the folder, not only this part's share."""
    segmentations = cohort.root / "seg"
    for name in ("foo", "foo_instances"):
        cohort.case(name, cohort.root / "ct", segmentations)
    for part in (0, 1):
        with pytest.raises(InputError, match="foo_instances"):
            cohort.run(segmentations, cohort.root / "out", num_parts=2, part_id=part)


@pytest.mark.parametrize("output", [None, "pred/case.json", "ref/case.nii.gz", "dataset.json"])
def test_evaluate_never_writes_over_a_file_it_reads(cohort, capsys, output):
    """A case named ``nnunet_plus_summary`` has its JSON where evaluate writes its summary by default: it was
    scored with its JSON, then that JSON was replaced by the summary (and a re-run read the summary as the case's
    JSON). The same for an ``-o`` naming a label map, a case JSON or the ``--schema`` file."""
    from nnunet_plus.evaluation.cli import main

    _, labels = cohort.case("case", cohort.root / "ct", cohort.root / "ref")
    cohort.case("nnunet_plus_summary", cohort.root / "ct", cohort.root / "ref")
    pred = cohort.root / "pred"
    report = cohort.run(cohort.root / "ref", pred)
    assert report.done == ["case", "nnunet_plus_summary"]
    schema = cohort.root / "dataset.json"
    schema.write_text(json.dumps({"labels": cohort.schema.labels, "plus": cohort.schema.to_block()}))
    before = {p: p.read_bytes() for folder in ("ref", "pred") for p in (cohort.root / folder).iterdir()}
    target = pred / "nnunet_plus_summary.json" if output is None else cohort.root / output
    argv = ["-ref", str(cohort.root / "ref"), "-pred", str(pred), "--schema", str(schema), "-np", "1", "--quiet"]
    assert main(argv + ([] if output is None else ["-o", str(target)])) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(target) in err and "pass another -o" in err, err
    assert {p: p.read_bytes() for folder in ("ref", "pred") for p in (cohort.root / folder).iterdir()} == before
    assert main(argv + ["-o", str(cohort.root / "summary.json")]) == 0
    assert json.loads((cohort.root / "summary.json").read_text())["meta"]["n_cases"] == 2
