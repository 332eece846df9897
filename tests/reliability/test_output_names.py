"""Finding 6 of issue 14: output names never collide.

A case named like a run-level file (``nnunet_plus_predict`` -> ``nnunet_plus_predict.json``) or two cases whose
outputs share a name (``foo`` and ``foo_instances`` -> ``foo_instances.nii.gz``) are refused before anything is
written, with one line naming the cases.
"""
from __future__ import annotations

import pytest

from nnunet_plus.predict.inputs import InputError


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
