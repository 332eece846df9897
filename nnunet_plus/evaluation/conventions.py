"""Fixed conventions of the evaluation: lesion size bins, patient groups, per-group count keys."""
from __future__ import annotations

import math
from typing import Sequence

from nnunet_plus.schema import LesionSchema

#: Reference-lesion volume bins in cm3, [low, high) (the cascaded paper's Table I; "<0.5" only holds
#: lesions when ``min_volume_cm3`` < 0.5).
VOLUME_BINS_CM3: tuple[tuple[str, float, float], ...] = (
    ("<0.5", 0.0, 0.5), ("0.5-2", 0.5, 2.0), ("2-4", 2.0, 4.0), ("4-8", 4.0, 8.0), ("8-16", 8.0, 16.0),
    ("16-64", 16.0, 64.0), (">64", 64.0, math.inf),
)
#: Reference-lesion radius bins in mm, [low, high) (PLAN's Table 2), radius of the equivalent sphere.
RADIUS_BINS_MM: tuple[tuple[str, float, float], ...] = (
    ("<5", 0.0, 5.0), ("5-10", 5.0, 10.0), ("10-20", 10.0, 20.0), (">20", 20.0, math.inf),
)
#: Patient groups, in confusion-matrix order.
PATIENT_GROUPS: tuple[str, ...] = ("normal", "benign", "malignant")

#: Count keys of a class or group of classes (see case.group_counts).
GROUP_KEYS: tuple[str, ...] = ("tp", "fl_ref", "fl_pred", "fp", "fn")


def bin_name(value: float, bins: Sequence[tuple[str, float, float]]) -> str:
    """Name of the [low, high) bin holding ``value``."""
    for name, low, high in bins:
        if low <= value < high:
            return name
    raise ValueError(f"value {value} lies in none of the bins {[b[0] for b in bins]}")


def patient_group(patient_class: str, schema: LesionSchema) -> str:
    """``'normal'``, ``'benign'`` or ``'malignant'`` for a patient class name (a lesion name or 'normal')."""
    if patient_class == "normal":
        return "normal"
    if patient_class in schema.malignant:
        return "malignant"
    if patient_class in schema.benign:
        return "benign"
    raise ValueError(f"patient class {patient_class!r} is neither 'normal' nor a malignant / benign lesion "
                     f"of the schema ({list(schema.lesions)})")
