"""classifyPatient (cascaded paper, eq. 12): the patient class is the highest-priority lesion type present."""
from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["NORMAL", "classify_patient"]

#: Patient class returned when no lesion label is present.
NORMAL = 0


def classify_patient(present_labels: Iterable[int], priority: Sequence[int]) -> int:
    """The first label of ``priority`` (highest priority first) found in ``present_labels``, else 0 (normal).

    ``present_labels`` may hold anything else too (e.g. ``numpy.unique`` of a label map, with background and
    liver): labels outside ``priority`` are ignored.
    """
    present = {int(v) for v in present_labels}
    for label in priority:
        if int(label) in present:
            return int(label)
    return NORMAL
