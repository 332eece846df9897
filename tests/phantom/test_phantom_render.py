"""Rendered cases: label consistency, per-tissue HU statistics (GUIDE ranges), lesion look and context."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnunet_plus.phantom.case import render_case
from nnunet_plus.phantom.cohort import plan_cohort
from nnunet_plus.phantom.dataset import DEFAULT_SHAPE, DEFAULT_SPACING, default_origin, phantom_labels
from nnunet_plus.phantom.lesions import AMPLIFIED_FLOOR_HU, LESION_TYPES, min_diameter_mm

LABELS = phantom_labels()
NAME_OF = {v: k for k, v in LABELS.items()}
CUBE = np.ones((3, 3, 3), dtype=bool)


@pytest.fixture(scope="module")
def cases():
    """12 default-size cases: 3 healthy, every lesion type, normal / fatty / cirrhotic livers (seed 0)."""
    specs = plan_cohort(12, 0, seed=0, healthy_fraction=0.25, lesion_types=LESION_TYPES)
    origin = default_origin(DEFAULT_SHAPE, DEFAULT_SPACING)
    return [(spec, render_case(spec, shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING, origin=origin, labels=LABELS))
            for spec in specs]


def test_cohort_covers_conditions_and_types(cases):
    assert {spec.condition for spec, _ in cases} == {"normal", "fatty", "cirrhotic"}
    assert {les["type"] for _, c in cases for les in c.record["lesions"]} == set(LESION_TYPES)


def test_arrays(cases):
    for _, case in cases:
        assert case.image.shape == case.label.shape == DEFAULT_SHAPE
        assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
        assert set(np.unique(case.label)) <= set(LABELS.values())
        assert (case.label == 1).sum() > 5000   # a liver of several hundred cm3


def test_lesions_inside_liver_and_not_touching(cases):
    for spec, case in cases:
        label = case.label
        lesion = label >= 2
        # no lesion voxel touches background: lesions lie inside the liver envelope
        assert not (ndimage.binary_dilation(lesion, CUBE) & (label == 0)).any(), spec.case_id
        # each lesion is its own 26-connected component: lesions never touch each other
        _, n_components = ndimage.label(lesion, structure=CUBE)
        assert n_components == case.record["n_lesions"], spec.case_id
        for value in np.unique(label[lesion]):
            grown = ndimage.binary_dilation(label == value, CUBE)
            assert not (grown & lesion & (label != value)).any(), spec.case_id


def test_records_match_labels(cases):
    for spec, case in cases:
        record = case.record
        assert record["case_id"] == spec.case_id and record["liver_condition"] == spec.condition
        for value, name in NAME_OF.items():
            if value < 2:
                continue
            expected = sum(les["n_voxels"] for les in record["lesions"] if les["type"] == name)
            assert (case.label == value).sum() == expected, (spec.case_id, name)
        for les in record["lesions"]:
            assert les["label"] == LABELS[les["type"]]
            assert min_diameter_mm(DEFAULT_SPACING) <= les["diameter_mm"] <= 60.0
            assert les["volume_cm3"] == pytest.approx(les["n_voxels"] * np.prod(DEFAULT_SPACING) / 1000, abs=1e-4)
            z, y, x = np.round(les["centre_voxel_zyx"]).astype(int)
            window = case.label[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
            assert (window == les["label"]).any(), (spec.case_id, les)


def test_context_rule_in_ground_truth(cases):
    for _, case in cases:
        types = {les["type"] for les in case.record["lesions"]}
        if "hcc" in types:
            assert case.record["liver_condition"] == "cirrhotic"
        if "hemangioma" in types:
            assert case.record["liver_condition"] != "cirrhotic"


def test_patient_class_and_healthy(cases):
    for spec, case in cases:
        record = case.record
        if spec.healthy:
            assert record["n_lesions"] == 0 and record["patient_class"] == "normal"
            assert record["patient_category"] == "normal"
        else:
            assert record["n_lesions"] >= 1
            present = [k for k in LESION_TYPES if k in {les["type"] for les in record["lesions"]}]
            assert record["patient_class"] == present[0]


def _pooled(cases, tissue, condition=None):
    values = [case.image[case.tissues[tissue]] for spec, case in cases
              if tissue in case.tissues and (condition is None or spec.condition == condition)]
    return np.concatenate(values).astype(float)


# GUIDE primer ranges (HU, NCCT), measured on the noisy image over voxels of one tissue only
@pytest.mark.parametrize("tissue,low,high", [
    ("subcutaneous_fat", -120, -80), ("visceral_fat", -120, -80), ("muscle", 40, 50), ("spleen", 45, 50),
    ("blood", 35, 45), ("kidney", 25, 35), ("bone", 300, 1000), ("gallbladder", 0, 20), ("lesion_cyst", 0, 15),
])
def test_tissue_hu_in_guide_ranges(cases, tissue, low, high):
    values = _pooled(cases, tissue)
    assert values.size > 50
    assert low <= values.mean() <= high, (tissue, values.mean())


def test_air_and_noise(cases):
    assert _pooled(cases, "air").mean() == pytest.approx(-1000, abs=5)
    for _, case in cases:
        fat = case.image[case.tissues["subcutaneous_fat"]].astype(float)
        assert 10 <= fat.std() <= 20   # CT noise sigma 10-20 HU
        # spatially correlated: neighbouring voxels along x are positively correlated
        bg = case.image[2:-2, :4, :].astype(float)   # anterior air rows: pure noise
        bg -= bg.mean()
        corr = (bg[..., 1:] * bg[..., :-1]).mean() / bg.var()
        assert 0.2 < corr < 0.9


def test_liver_hu_per_condition(cases):
    ranges = {"normal": (55, 65), "fatty": (10, 40), "cirrhotic": (45, 62)}
    for spec, case in cases:
        liver = case.image[case.tissues["liver"]].astype(float).mean()
        low, high = ranges[spec.condition]
        assert low <= liver <= high, (spec.case_id, spec.condition, liver)
        assert liver == pytest.approx(case.record["liver_hu"], abs=2.0)
        if spec.condition == "fatty":     # fatty liver is darker than the spleen
            assert liver < case.image[case.tissues["spleen"]].mean()


def test_lesion_appearance(cases):
    for _, case in cases:
        for les in case.record["lesions"]:
            voxels = case.image[case.label == les["label"]].astype(float)
            if les["type"] == "calcification":
                assert voxels.max() > 150           # small, very bright
            elif les["type"] in ("hcc", "hemangioma", "metastasis", "icc") and les["diameter_mm"] >= 15:
                assert voxels.mean() < case.record["liver_hu"] or case.record["liver_condition"] == "fatty"
            if les["type"] == "icc":
                assert les["dilated_ducts"] >= 2


def test_lesions_not_separable_from_liver_by_a_threshold(cases):
    """HCC / hemangioma / metastasis / ICC voxels overlap liver voxels in HU: no threshold splits them."""
    best = []
    for _, case in cases:
        liver = case.image[case.tissues["liver"]].astype(float)
        for les in case.record["lesions"]:
            if les["type"] in ("hcc", "hemangioma", "metastasis", "icc"):
                lesion = case.image[case.label == les["label"]].astype(float)
                accuracies = [0.5 * ((lesion < t).mean() + (liver >= t).mean()) for t in np.arange(-20, 90, 2)]
                best.append(max(accuracies))
    assert len(best) >= 5
    assert np.mean(best) < 0.9


def test_fat_sparing_is_liver_not_lesion(cases):
    fatty = [(spec, case) for spec, case in cases if spec.condition == "fatty"]
    spared = [case for _, case in fatty if case.record["hard_negatives"]]
    assert spared, "the fatty livers of this cohort should show focal fat sparing"
    for case in spared:
        for item in case.record["hard_negatives"]:
            assert item["kind"] == "focal_fat_sparing" and item["contrast_hu"] > 0
        if "fat_sparing" in case.tissues:
            assert (case.label[case.tissues["fat_sparing"]] == 1).all()
    for spec, case in cases:
        if spec.condition != "fatty":
            assert case.record["hard_negatives"] == []


def test_render_is_deterministic(cases):
    spec, case = cases[1]
    again = render_case(spec, shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING,
                        origin=default_origin(DEFAULT_SHAPE, DEFAULT_SPACING), labels=LABELS)
    assert np.array_equal(again.image, case.image) and np.array_equal(again.label, case.label)
    assert again.record == case.record


def test_cirrhosis_shrinks_liver_and_enlarges_spleen(cases):
    def mean_of(condition, key):
        return np.mean([c.record[key] for s, c in cases if s.condition == condition])

    assert mean_of("cirrhotic", "spleen_volume_cm3") > 1.3 * mean_of("normal", "spleen_volume_cm3")
    assert mean_of("cirrhotic", "liver_volume_cm3") < mean_of("normal", "liver_volume_cm3")


def _contrast_and_noise(case):
    """Mean |lesion - liver| HU over the soft-tissue lesions, and the recorded noise sigma."""
    liver = case.image[case.tissues["liver"]].astype(float).mean()
    contrasts = [abs(case.image[case.label == les["label"]].astype(float).mean() - liver)
                 for les in case.record["lesions"] if les["type"] != "calcification"]
    return float(np.mean(contrasts)), case.record["noise_sigma_hu"]


def test_conspicuity_amplifies_contrast_and_lowers_noise_only(cases):
    spec, case = next((s, c) for s, c in cases if any(les["type"] in ("hcc", "hemangioma", "icc", "metastasis")
                                                       for les in c.record["lesions"]))
    origin = default_origin(DEFAULT_SHAPE, DEFAULT_SPACING)
    bright = render_case(spec, shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING, origin=origin, labels=LABELS,
                         conspicuity=3.0)
    assert np.array_equal(bright.label, case.label)            # same anatomy and lesions, only their look
    contrast, noise = _contrast_and_noise(case)
    bright_contrast, bright_noise = _contrast_and_noise(bright)
    assert bright_contrast > 2.0 * contrast
    assert bright_noise == pytest.approx(noise / 3.0, abs=0.06)
    outside = case.label == 0
    assert np.abs(bright.image[outside].astype(float) - case.image[outside]).mean() < noise  # body unchanged but noise
    for les in bright.record["lesions"]:                       # amplified lesions stay above the floor
        assert bright.image[bright.label == les["label"]].astype(float).mean() >= AMPLIFIED_FLOOR_HU - bright_noise


@pytest.mark.parametrize("liver_hu", [12.0, 25.0, 54.0, 64.0])  # fatty, cirrhotic and normal parenchyma
def test_amplified_lesions_keep_their_intensity_order(liver_hu):
    """At the demo's conspicuity 5 the cyst (2-12 HU) stays darker than the HCC / hemangioma (33-45 HU) and every
    amplified hypodense value stays above the floor, strictly increasing with the original HU (a hard floor made
    them all -20 HU); near the liver's HU the contrast is multiplied by the full conspicuity."""
    from nnunet_plus.phantom.lesions import amplified_hu

    hu = np.linspace(-5.0, 80.0, 200, dtype=np.float32)
    bright = amplified_hu(hu, liver_hu, 5.0)
    assert np.all(np.diff(bright) > 0) and np.all(bright > AMPLIFIED_FLOOR_HU)
    hypodense = hu < liver_hu
    assert np.all(np.abs(bright[hypodense] - liver_hu) <= 5.0 * np.abs(hu[hypodense] - liver_hu) + 1e-3)
    assert np.allclose(bright[~hypodense], liver_hu + 5.0 * (hu[~hypodense] - liver_hu), atol=1e-3)
    near = np.float32(liver_hu - 1.0)
    assert amplified_hu(near, liver_hu, 5.0) == pytest.approx(liver_hu - 5.0, abs=0.5)
    cyst, hcc = amplified_hu(np.float32(12.0), liver_hu, 5.0), amplified_hu(np.float32(33.0), liver_hu, 5.0)
    assert hcc - cyst > 10.0  # far more than the amplified noise (~2-3 HU)
