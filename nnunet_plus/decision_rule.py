"""The second stage's decision rule: which candidates are reported, with which type.

Guard: the second stage only helps or steps aside. Its candidates are nnU-Net's own f = 1 lesions (tier
``"confident"``) and the f = 4 lesions touching none of them (``"suspicious"``, see
:func:`nnunet_plus.case_analysis.merge_candidates`). From the PLUS probabilities ``p`` of a candidate
(``(L + 1,)``: the lesion types in ``schema.lesions`` order, then "not a lesion") and nnU-Net's class ``k``
of it, a :class:`DecisionRule` decides:

* a confident candidate is **rejected** when ``p[not a lesion] > reject_confident``;
* a kept confident candidate takes the PLUS type ``j`` instead of ``k`` only when PLUS leads by more than
  ``relabel_margin``: ``p[j] - p[k]`` when ``j`` and ``k`` are in the same group, else the group masses'
  difference ``P(group of j) - P(group of k)``; and, when ``relabel_pairs`` is given, only when the change
  ``(k, j)`` is one of them (the changes that beat nnU-Net on validation; see
  :mod:`nnunet_plus.classifier.operating_point`);
* a suspicious candidate is **reported** when ``1 - p[not a lesion] > accept_suspicious``, with type ``j``.

The PLUS type ``j`` is decided group first (``groups``: the malignant and the benign class indices; a type in
neither is a group of its own): the group with the largest summed probability, then its most probable type.
Whether a lesion is malignant is the decision the diagnosis rests on, so it is taken on the whole malignant
mass: a candidate with hcc 0.19, icc 0.25, metastasis 0.12 (malignant 0.56) and cyst 0.30 is malignant, where
the plain ``argmax`` would call it a cyst and the patient benign. Without ``groups`` ``j = argmax p[:L]``.

The identity rule (every threshold 1, or no allowed type change: nothing rejected, relabelled or added)
reports exactly nnU-Net's f = 1 lesions with nnU-Net's classes, whatever the network says.

The rule also says which patient probabilities come from PLUS rather than LiverMax (``patient_from_plus``:
``tumor``, ``malignant``, ``benign``, lesion type names; empty: all LiverMax), a choice of its own, fitted on the
same validation cases (:mod:`nnunet_plus.classifier.patient_sources`) and independent of the lesion decisions.
The thresholds are fitted on out-of-fold validation by :mod:`nnunet_plus.classifier.operating_point`;
:mod:`nnunet_plus.refine` applies them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["DecisionRule", "apply_rule", "group_first_type"]


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds of the decision rule (module docstring); the defaults are the identity."""

    reject_confident: float = 1.0
    relabel_margin: float = 1.0
    accept_suspicious: float = 1.0
    #: the allowed type changes, ``((nnU-Net class k, PLUS type j), ...)`` sorted; None: every change allowed
    relabel_pairs: tuple[tuple[int, int], ...] | None = None
    #: the patient probabilities taken from PLUS (keys of the case JSON's ``patient.probabilities``), sorted; the
    #: others stay LiverMax
    patient_from_plus: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("reject_confident", "relabel_margin", "accept_suspicious"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"decision rule: {name} must be a number in [0, 1], got {value!r}")
        if self.relabel_pairs is not None:
            try:
                pairs = tuple(sorted({(int(k), int(j)) for k, j in self.relabel_pairs}))
            except (TypeError, ValueError):
                raise ValueError(f"decision rule: relabel_pairs must be pairs of class indices, got "
                                 f"{self.relabel_pairs!r}") from None
            if any(k < 0 or j < 0 or k == j for k, j in pairs):
                raise ValueError(f"decision rule: relabel_pairs must be pairs of two different class indices "
                                 f">= 0, got {self.relabel_pairs!r}")
            object.__setattr__(self, "relabel_pairs", pairs)
        keys = self.patient_from_plus
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"decision rule: patient_from_plus must be a list of patient probability names, got "
                             f"{keys!r}")
        object.__setattr__(self, "patient_from_plus", tuple(sorted(set(keys))))

    @property
    def relabels(self) -> bool:
        """True when the rule may change a confident candidate's type."""
        return self.relabel_margin < 1.0 and self.relabel_pairs != ()

    @property
    def is_identity(self) -> bool:
        """True when the rule reports exactly nnU-Net's f = 1 lesions with nnU-Net's classes."""
        return self.reject_confident >= 1.0 and not self.relabels and self.accept_suspicious >= 1.0

    def to_json(self) -> dict:
        """The rule as a JSON-ready dict (``relabel_pairs`` as lists; :meth:`from_json` reads it back)."""
        data = {"reject_confident": self.reject_confident, "relabel_margin": self.relabel_margin,
                "accept_suspicious": self.accept_suspicious}
        if self.relabel_pairs is not None:
            data["relabel_pairs"] = [list(pair) for pair in self.relabel_pairs]
        data["patient_from_plus"] = list(self.patient_from_plus)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "DecisionRule":
        """The rule of a :meth:`to_json` dict; ValueError / TypeError / KeyError when it is not one."""
        pairs = data.get("relabel_pairs")
        return cls(float(data["reject_confident"]), float(data["relabel_margin"]), float(data["accept_suspicious"]),
                   None if pairs is None else tuple(tuple(pair) for pair in pairs),
                   data.get("patient_from_plus", ()))

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        """One sentence; ``class_names`` (the lesion types in schema order) name the allowed type changes."""
        keys = ", ".join(self.patient_from_plus)
        patient = f"; patient probabilities of {keys} from PLUS (any other from LiverMax)" if keys else ""
        return self._describe_lesions(class_names) + patient

    def _describe_lesions(self, class_names: Sequence[str] | None) -> str:
        if self.is_identity:
            return "identity (nnU-Net alone: every f=1 lesion kept with nnU-Net's class, no suspicious candidate)"
        if not self.relabels:
            change = "never change its type"
        else:
            change = f"change its type when the PLUS type leads nnU-Net's by > {self.relabel_margin:g}"
            if self.relabel_pairs is not None:
                def name(i: int) -> str:
                    return class_names[i] if class_names is not None and i < len(class_names) else str(i)

                change += " (only " + ", ".join(f"{name(k)} -> {name(j)}" for k, j in self.relabel_pairs) + ")"
        return (f"reject a confident candidate when p(not a lesion) > {self.reject_confident:g}; {change}; "
                f"report a suspicious candidate when p(lesion) > {self.accept_suspicious:g}")


def _group_of(num_types: int, groups: Sequence[Sequence[int]] | None) -> np.ndarray:
    """(L,) group number of each type: ``groups`` (malignant, benign class indices) first, any other type alone."""
    group_of = np.arange(num_types)
    for number, members in enumerate(groups or ()):
        for t in members:
            if 0 <= int(t) < num_types:
                group_of[int(t)] = num_types + number
    return group_of


def group_first_type(probabilities: np.ndarray, groups: Sequence[Sequence[int]] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(type (N,) int64, group mass (N, L) float64)`` of PLUS ``probabilities`` ((N, L + 1)): the most probable
    type inside the group with the largest summed probability (module docstring); ``mass[:, t]`` is the summed
    probability of the group of type ``t``. Types in no group, and all of them without ``groups``, are their
    own group. Ties go to the lowest index."""
    p = np.asarray(probabilities, dtype=np.float64)[:, :-1]
    return _group_first(p, _group_of(p.shape[1], groups))


def _group_first(p: np.ndarray, group_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_first_type` of the type columns ``p`` (N, L) given each type's group number (L,)."""
    mass = np.zeros_like(p)
    for g in np.unique(group_of):
        inside = group_of == g
        mass[:, inside] = p[:, inside].sum(axis=1, keepdims=True)
    chosen_group = group_of[np.argmax(mass, axis=1)]  # the largest group mass (its lowest type on ties)
    inside_chosen = np.where(group_of[None, :] == chosen_group[:, None], p, -np.inf)
    return np.argmax(inside_chosen, axis=1).astype(np.int64), mass


def apply_rule(rule: DecisionRule, probabilities: np.ndarray, *, tier: np.ndarray,
               nnunet_class: np.ndarray, groups: Sequence[Sequence[int]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(reported (N,) bool, class (N,) int64)`` of one case's candidates.

    Parameters
    ----------
    probabilities : (N, L + 1) PLUS probabilities (lesion types, then "not a lesion").
    tier : (N,) 0 = confident (an f = 1 lesion), 1 = suspicious.
    nnunet_class : (N,) nnU-Net's class index of each candidate (in ``[0, L]``; used for confident ones).
    groups : the malignant and the benign class indices (the PLUS type is decided group first; module
        docstring), or None (plain argmax).

    A rejected candidate gets class ``L``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, L + 1), got shape {p.shape}")
    n, not_a_lesion = p.shape[0], p.shape[1] - 1
    tier = np.asarray(tier).reshape(-1)
    nnunet_class = np.asarray(nnunet_class, dtype=np.int64).reshape(-1)
    if tier.shape != (n,) or nnunet_class.shape != (n,):
        raise ValueError(f"need one tier and one nnU-Net class per candidate ({n}), got {tier.shape} and "
                         f"{nnunet_class.shape}")
    confident = tier == 0
    if rule.is_identity:  # exact, whatever the probabilities (NaN included)
        return confident.copy(), np.where(confident, nnunet_class, not_a_lesion).astype(np.int64)
    group_of = _group_of(not_a_lesion, groups)
    best, mass = _group_first(p[:, :not_a_lesion], group_of)
    own = np.clip(nnunet_class, 0, not_a_lesion - 1)
    rows = np.arange(n)
    lead = np.where(group_of[best] == group_of[own], p[rows, best] - p[rows, own],
                    mass[rows, best] - mass[rows, own])
    relabel = (nnunet_class >= not_a_lesion) | (lead > rule.relabel_margin)
    if rule.relabel_pairs is not None:  # only the allowed changes (k, j); a class-less candidate always takes j
        allowed = np.zeros((not_a_lesion, not_a_lesion), dtype=bool)
        for k, j in rule.relabel_pairs:
            if k < not_a_lesion and j < not_a_lesion:
                allowed[k, j] = True
        relabel = (nnunet_class >= not_a_lesion) | (relabel & allowed[own, best])
    confident_class = np.where(relabel, best, nnunet_class)
    reported = np.where(confident, ~(p[:, not_a_lesion] > rule.reject_confident),
                        (1.0 - p[:, not_a_lesion]) > rule.accept_suspicious)
    classes = np.where(confident, confident_class, best)
    return reported, np.where(reported, classes, not_a_lesion).astype(np.int64)
