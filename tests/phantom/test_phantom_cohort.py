"""Cohort planning: exact healthy counts, the context rule, lesion multiplicity, patient classes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nnunet_plus.phantom.cohort import allowed, patient_class, plan_cohort
from nnunet_plus.phantom.lesions import LESION_TYPES, sample_appearance


@pytest.fixture(scope="module")
def big_plan():
    return plan_cohort(400, 100, seed=3, healthy_fraction=0.3, lesion_types=LESION_TYPES)


def test_context_rule_in_plan(big_plan):
    for spec in big_plan:
        if "hcc" in spec.lesion_types:
            assert spec.condition == "cirrhotic", spec
        if "hemangioma" in spec.lesion_types:
            assert spec.condition != "cirrhotic", spec
    # both sides of the rule are exercised
    assert any("hcc" in s.lesion_types for s in big_plan)
    assert any("hemangioma" in s.lesion_types for s in big_plan)


def test_allowed_is_the_context_rule():
    assert allowed("hcc", "cirrhotic") and not allowed("hcc", "normal") and not allowed("hcc", "fatty")
    assert allowed("hemangioma", "normal") and allowed("hemangioma", "fatty")
    assert not allowed("hemangioma", "cirrhotic")
    assert all(allowed("cyst", c) for c in ("normal", "fatty", "cirrhotic"))


@pytest.mark.parametrize("fraction,n_train,n_test", [(0.3, 10, 4), (0.0, 7, 0), (1.0, 5, 3), (0.25, 9, 2)])
def test_exact_healthy_count_per_split(fraction, n_train, n_test):
    specs = plan_cohort(n_train, n_test, seed=0, healthy_fraction=fraction, lesion_types=LESION_TYPES)
    for split, n in (("train", n_train), ("test", n_test)):
        part = [s for s in specs if s.split == split]
        assert len(part) == n
        assert sum(s.healthy for s in part) == round(fraction * n)


def test_ids_order_and_every_main_type_present():
    specs = plan_cohort(12, 3, seed=5, healthy_fraction=0.0, lesion_types=LESION_TYPES)
    assert [s.case_id for s in specs] == [f"case_{i:04d}" for i in range(15)]
    assert [s.split for s in specs] == ["train"] * 12 + ["test"] * 3
    mains = {patient_class(s.lesion_types) for s in specs if s.split == "train"}
    # 12 lesion cases over 6 types: each type is the main (highest-priority) lesion of at least one case
    assert mains == set(LESION_TYPES)


def test_case_prefix_names_the_cases_only():
    plain = plan_cohort(7, 2, seed=5, healthy_fraction=0.3, lesion_types=LESION_TYPES)
    extra = plan_cohort(7, 2, seed=5, healthy_fraction=0.3, lesion_types=LESION_TYPES, case_prefix="extra2")
    assert [s.case_id for s in extra] == [f"extra2_{i:04d}" for i in range(9)]
    # same plan and same per-case random draws: only the id differs
    assert [replace(s, case_id="") for s in extra] == [replace(s, case_id="") for s in plain]
    assert plan_cohort(7, 2, seed=5, healthy_fraction=0.3, lesion_types=LESION_TYPES, case_prefix="case") == plain
    for a, b in zip(plain, extra):
        assert a.rng().random(4).tolist() == b.rng().random(4).tolist()


def test_healthy_subjects_include_fatty_and_cirrhotic(big_plan):
    conditions = {s.condition for s in big_plan if s.healthy}
    assert conditions == {"normal", "fatty", "cirrhotic"}


def test_metastases_are_usually_multiple(big_plan):
    counts = [s.lesion_types.count("metastasis") for s in big_plan if s.lesion_types[:1] == ("metastasis",)]
    assert len(counts) > 50
    assert np.mean([c >= 2 for c in counts]) > 0.6


def test_lesion_subset_only():
    specs = plan_cohort(30, 0, seed=1, healthy_fraction=0.2, lesion_types=("cyst", "metastasis"))
    kinds = {k for s in specs for k in s.lesion_types}
    assert kinds == {"cyst", "metastasis"}


def test_patient_class_priority():
    assert patient_class(["cyst", "hemangioma", "metastasis"]) == "metastasis"
    assert patient_class(["cyst", "calcification"]) == "calcification"
    assert patient_class(["icc", "hcc"]) == "hcc"
    assert patient_class([]) == "normal"


def test_hcc_and_hemangioma_look_the_same_locally():
    # the same random draws give the same appearance: only the liver around them tells them apart
    for seed in range(20):
        for diameter in (8.0, 20.0, 40.0):
            a = sample_appearance(np.random.default_rng(seed), "hcc", diameter)
            b = sample_appearance(np.random.default_rng(seed), "hemangioma", diameter)
            assert a == b


def test_plan_is_deterministic_and_case_rng_independent_of_cohort_size():
    a = plan_cohort(10, 2, seed=9, healthy_fraction=0.3, lesion_types=LESION_TYPES)
    b = plan_cohort(10, 2, seed=9, healthy_fraction=0.3, lesion_types=LESION_TYPES)
    assert a == b
    assert a[0].rng().random() == b[0].rng().random()
    assert a[0].rng().random() != a[1].rng().random()
