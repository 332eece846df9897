"""classify_patient: highest-priority lesion label present, else normal (0)."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_plus.postprocessing import NORMAL, classify_patient

# cascaded paper priority HCC > ICC > Meta > Hem > Other > Cyst with label values 2..7
PRIORITY = [2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    "present, expected",
    [
        ([], NORMAL),
        ([7], 7),
        ([7, 5], 5),
        ([5, 7, 2], 2),
        ([4, 4, 4, 6], 4),
        (np.array([0, 1, 7, 3], dtype=np.uint8), 3),   # background / liver are ignored
        ([0, 1, 9], NORMAL),                           # labels outside the priority list are ignored
    ],
)
def test_classify_patient(present, expected):
    assert classify_patient(present, PRIORITY) == expected


def test_priority_order_decides_not_label_value():
    assert classify_patient([2, 7], [7, 2]) == 7
    assert classify_patient(iter([3, 2]), (2, 3)) == 2
