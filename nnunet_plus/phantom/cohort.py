"""Cohort planning: which cases are healthy, each case's liver condition and lesion list, and the context rule.

Context rule (why the PLUS classifier needs the liver, not only the lesion crop): HCC arises only in
cirrhotic livers, hemangioma only in non-cirrhotic ones, and the two look alike locally. Metastases are
usually multiple and mostly in non-cirrhotic livers. Cysts and calcifications occur anywhere, often as
incidental findings beside the main lesion. Healthy subjects have no lesion; some have a fatty or
cirrhotic liver (screening specificity).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnunet_plus.phantom.lesions import LESION_TYPES

#: Share of each lesion type as the main (highest-priority) lesion of a patient with lesions.
PRIMARY_WEIGHTS: dict[str, float] = {
    "hcc": 0.2, "icc": 0.1, "metastasis": 0.2, "hemangioma": 0.2, "calcification": 0.1, "cyst": 0.2,
}
#: Liver condition given the main lesion type (the context rule lives here and in :func:`allowed`).
CONDITION_WEIGHTS: dict[str, dict[str, float]] = {
    "hcc": {"cirrhotic": 1.0},
    "icc": {"normal": 0.5, "fatty": 0.2, "cirrhotic": 0.3},
    "metastasis": {"normal": 0.6, "fatty": 0.3, "cirrhotic": 0.1},
    "hemangioma": {"normal": 0.65, "fatty": 0.35},
    "calcification": {"normal": 0.55, "fatty": 0.3, "cirrhotic": 0.15},
    "cyst": {"normal": 0.55, "fatty": 0.3, "cirrhotic": 0.15},
}
HEALTHY_CONDITION_WEIGHTS: dict[str, float] = {"normal": 0.5, "fatty": 0.3, "cirrhotic": 0.2}
#: Incidental benign findings added beside the main lesion: type -> (probability, largest count).
INCIDENTAL: dict[str, tuple[float, int]] = {"cyst": (0.25, 2), "calcification": (0.12, 1), "hemangioma": (0.1, 1)}


def allowed(kind: str, condition: str) -> bool:
    """Whether lesion type ``kind`` may appear in a liver with ``condition`` (the context rule)."""
    return CONDITION_WEIGHTS[kind].get(condition, 0.0) > 0


@dataclass(frozen=True)
class CaseSpec:
    """What one case should contain; rendering decides sizes and positions from the case's own seed."""

    case_id: str
    index: int
    split: str                      # "train" or "test"
    condition: str                  # "normal", "fatty" or "cirrhotic"
    lesion_types: tuple[str, ...]   # planned lesions, main type first; empty for a healthy subject
    seed: int

    @property
    def healthy(self) -> bool:
        return not self.lesion_types

    def rng(self) -> np.random.Generator:
        """The case's random generator: depends on (seed, index) only, never on the other cases."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1, self.index)))


def _largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` over the keys in proportion to ``weights``, each key at least once when possible."""
    keys = list(weights)
    floor = {k: 0 for k in keys}
    if total >= len(keys):
        floor = {k: 1 for k in keys}
    rest = total - sum(floor.values())
    w = np.array([weights[k] for k in keys], dtype=float)
    share = rest * w / w.sum()
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: rest - counts.sum()]] += 1
    return {k: floor[k] + int(c) for k, c in zip(keys, counts)}


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    w = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _lesion_list(rng: np.random.Generator, primary: str, condition: str, selected: tuple[str, ...]) -> tuple[str, ...]:
    if primary == "metastasis":
        count = 1 if rng.random() < 0.25 else int(min(2 + rng.geometric(0.45) - 1, 7))
    elif primary == "hcc":
        count = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
    elif primary == "cyst":
        count = int(min(rng.geometric(0.5), 4))
    elif primary in ("hemangioma", "calcification"):
        count = 1 if rng.random() < 0.8 else 2
    else:
        count = 1
    kinds = [primary] * count
    for kind, (p, most) in INCIDENTAL.items():
        if kind != primary and kind in selected and allowed(kind, condition) and rng.random() < p:
            kinds += [kind] * int(rng.integers(1, most + 1))
    return tuple(kinds)


def plan_cohort(n_train: int, n_test: int, *, seed: int, healthy_fraction: float,
                lesion_types: tuple[str, ...], case_prefix: str = "case") -> list[CaseSpec]:
    """Plan every case: exactly ``round(healthy_fraction * n)`` healthy subjects per split, main lesion types
    spread over the others in proportion to :data:`PRIMARY_WEIGHTS` (each selected type at least once when
    there are enough cases), liver condition from the context rule. Case ids are ``f"{case_prefix}_{index:04d}"``
    (``case_0000`` onwards by default), training cases first. The prefix only names the cases: it never enters
    the random draws, so two cohorts that differ only in ``case_prefix`` have the same content."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    weights = {k: PRIMARY_WEIGHTS[k] for k in LESION_TYPES if k in lesion_types}
    specs: list[CaseSpec] = []
    for split, n in (("train", n_train), ("test", n_test)):
        n_healthy = int(round(healthy_fraction * n))
        counts = _largest_remainder(n - n_healthy, weights)
        primaries = [None] * n_healthy + [k for k, c in counts.items() for _ in range(c)]
        order = rng.permutation(n)
        for position in order:
            primary = primaries[position]
            if primary is None:
                condition, kinds = _choose(rng, HEALTHY_CONDITION_WEIGHTS), ()
            else:
                condition = _choose(rng, CONDITION_WEIGHTS[primary])
                kinds = _lesion_list(rng, primary, condition, lesion_types)
            index = len(specs)
            specs.append(CaseSpec(f"{case_prefix}_{index:04d}", index, split, condition, kinds, seed))
    return specs


def patient_class(lesion_types: list[str] | tuple[str, ...]) -> str:
    """classifyPatient: the highest-priority lesion type present (order of LESION_TYPES), else ``normal``."""
    present = [k for k in LESION_TYPES if k in lesion_types]
    return present[0] if present else "normal"

