"""LiverMax and the patient probabilities derived from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_plus.postprocessing import liver_max, patient_probabilities

LIVER, HCC, CYST = 1, 2, 3


def _edge_case():
    """Liver in columns 0-4; an hcc lesion in row 2 of slice 1, columns 3-5 (column 5 outside the liver)."""
    label_map = np.zeros((3, 5, 8), dtype=np.uint8)
    label_map[:, :, 0:5] = LIVER
    label_map[1, 2, 3:6] = HCC
    probabilities = np.full((4, 3, 5, 8), 0.01, dtype=np.float32)
    probabilities[HCC, 1, 2, 3:5] = 0.5
    probabilities[HCC, 1, 2, 5] = 0.7      # predicted lesion outside the liver labels: in the region
    probabilities[HCC, 1, 2, 6] = 0.9      # predicted background, 1 mm from the lesion
    probabilities[CYST, 0, 0, 0] = 0.3
    probabilities[CYST, 2, 4, 7] = 0.95    # 3 mm from the region
    return label_map, probabilities


@pytest.mark.parametrize("dilate_mm, expected", [(0.0, {HCC: 0.7, CYST: 0.3}), (1.0, {HCC: 0.9, CYST: 0.3}),
                                                 (3.0, {HCC: 0.9, CYST: 0.95})])
def test_lesion_partly_outside_the_liver(dilate_mm, expected):
    label_map, probabilities = _edge_case()
    result = liver_max(probabilities, label_map, liver_labels=[LIVER], lesion_labels=[HCC, CYST],
                       dilate_mm=dilate_mm)
    assert result == pytest.approx(expected)


@pytest.mark.parametrize("dilate_mm, expected", [(0.0, 0.01), (1.5, 0.4), (2.3, 0.6), (3.0, 0.8)])
def test_anisotropic_dilation(dilate_mm, expected):
    # spacing 3 mm between slices, 1 mm in plane; liver = 3 voxels of slice 1, row 0, columns 0-2
    label_map = np.zeros((3, 3, 7), dtype=np.uint8)
    label_map[1, 0, 0:3] = LIVER
    probabilities = np.full((3, 3, 3, 7), 0.01, dtype=np.float32)
    probabilities[HCC, 0, 0, 0] = 0.8      # one slice below: 3 mm
    probabilities[HCC, 1, 1, 4] = 0.6      # (dy, dx) = (1, 2): sqrt(5) = 2.24 mm
    probabilities[HCC, 1, 1, 3] = 0.4      # (1, 1): 1.41 mm
    probabilities[HCC, 1, 0, 5] = 0.7      # (0, 3): 3 mm
    result = liver_max(probabilities, label_map, liver_labels=[LIVER], lesion_labels=[HCC],
                       spacing=(3.0, 1.0, 1.0), dilate_mm=dilate_mm)
    assert result == pytest.approx({HCC: expected})


@pytest.mark.parametrize("dilate_mm", [0.0, 2.0])
def test_empty_region(dilate_mm):
    result = liver_max(np.ones((4, 2, 3, 3), dtype=np.float32), np.zeros((2, 3, 3), dtype=np.uint8),
                       liver_labels=[LIVER], lesion_labels=[HCC, CYST], dilate_mm=dilate_mm)
    assert result == {HCC: 0.0, CYST: 0.0}


@pytest.mark.parametrize("kind", ["float16", "torch", "torch_float16"])
def test_other_input_kinds(kind):
    label_map, probabilities = _edge_case()
    given = {"float16": probabilities.astype(np.float16), "torch": torch.from_numpy(probabilities),
             "torch_float16": torch.from_numpy(probabilities).half()}[kind]
    for dilate_mm in (0.0, 1.0):
        expected = liver_max(probabilities, label_map, liver_labels=[LIVER], lesion_labels=[HCC, CYST],
                             dilate_mm=dilate_mm)
        result = liver_max(given, label_map, liver_labels=[LIVER], lesion_labels=[HCC, CYST], dilate_mm=dilate_mm)
        assert result == pytest.approx(expected, abs=1e-3)


def test_inputs_are_not_modified():
    label_map, probabilities = _edge_case()
    before = (label_map.copy(), probabilities.copy())
    liver_max(probabilities, label_map, liver_labels=[LIVER], lesion_labels=[HCC, CYST], dilate_mm=2.0)
    np.testing.assert_array_equal(label_map, before[0])
    np.testing.assert_array_equal(probabilities, before[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"probabilities": np.zeros((2, 3, 5, 8))}, "shape"),
        ({"lesion_labels": []}, "non-empty"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"dilate_mm": -1.0}, "dilate_mm"),
    ],
)
def test_bad_input(kwargs, message):
    label_map, probabilities = _edge_case()
    options = {"probabilities": probabilities, "liver_labels": [LIVER], "lesion_labels": [HCC, CYST], **kwargs}
    given = options.pop("probabilities")
    with pytest.raises(ValueError, match=message):
        liver_max(given, label_map, **options)


@pytest.mark.parametrize(
    "malignant, benign, expected",
    [
        ([2], [3, 4], {"tumor": 0.9, "malignant": 0.9, "benign": 0.6}),
        ([2, 4], [3], {"tumor": 0.9, "malignant": 0.9, "benign": 0.3}),
        ([], [3], {"tumor": 0.9, "malignant": 0.0, "benign": 0.3}),
    ],
)
def test_patient_probabilities(malignant, benign, expected):
    livermax = {2: 0.9, 3: 0.3, 4: 0.6}
    assert patient_probabilities(livermax, malignant_labels=malignant, benign_labels=benign) == expected


def test_patient_probabilities_unknown_label():
    with pytest.raises(ValueError, match="LiverMax"):
        patient_probabilities({2: 0.5}, malignant_labels=[2], benign_labels=[5])
    assert patient_probabilities({}, malignant_labels=[], benign_labels=[]) == \
        {"tumor": 0.0, "malignant": 0.0, "benign": 0.0}
