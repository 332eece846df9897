"""The lesion schema: which nnU-Net labels are liver, which are lesion types, and how patients are classified.

The schema lives as a ``"plus"`` block inside nnU-Net's ``dataset.json`` (nnU-Net ignores unknown keys)::

    "plus": {
        "liver": ["liver"],
        "lesions": ["hcc", "icc", "metastasis", "hemangioma", "cyst"],
        "malignant": ["hcc", "icc", "metastasis"],
        "benign": ["hemangioma", "cyst"],
        "priority": ["hcc", "icc", "metastasis", "hemangioma", "cyst"],
        "sensitivities": [1, 4],
        "min_lesion_volume_mm3": 0,
        "max_suspicious_per_case": 50,
        "liver_largest_component": true
    }

Names refer to keys of the dataset's ``"labels"`` block. nnU-Net requires consecutive integer labels, so a
label's value is also its softmax channel index.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_plus.files.atomic import write_json_atomic

SCHEMA_KEY = "plus"

#: The nine lesion types of the PLUS cohort, in classifyPatient priority order (malignancy first; the
#: cascaded paper's HCC > ICC > Meta > Hem > Other > Cyst, extended to PLUS's nine types).
PLUS_LESION_TYPES: tuple[str, ...] = (
    "hcc", "icc", "metastasis", "other_malignant",
    "hemangioma", "fnh", "calcification", "other_benign", "cyst",
)
PLUS_MALIGNANT: tuple[str, ...] = ("hcc", "icc", "metastasis", "other_malignant")
PLUS_BENIGN: tuple[str, ...] = ("hemangioma", "fnh", "calcification", "other_benign", "cyst")
DEFAULT_SENSITIVITIES: tuple[float, ...] = (1.0, 4.0)
#: Suspicious candidates kept per case: bounds the classifier's work when an under-trained model's f=4 map
#: breaks into thousands of specks (benchmarks/RESULTS.md, "Stage one on the phantom").
DEFAULT_MAX_SUSPICIOUS = 50
#: Default of :attr:`LesionSchema.min_lesion_volume_mm3`: no detection is dropped for its size.
DEFAULT_MIN_LESION_VOLUME_MM3 = 0.0
#: Default of :attr:`LesionSchema.liver_largest_component`: keep only the largest connected liver region.
DEFAULT_LIVER_LARGEST_COMPONENT = True
#: Default size limit of the evaluation (``nnunet_plus_evaluate --min-volume``, :mod:`nnunet_plus.evaluation`):
#: reference lesions smaller than this (cm3) are ignored, as the cascaded paper excludes lesions < 0.5 cm3. A
#: separate quantity from :attr:`LesionSchema.min_lesion_volume_mm3` (which drops small detections, default 0):
#: the validations run during training pass the schema's value instead.
MIN_REFERENCE_VOLUME_CM3 = 0.5


class SchemaError(ValueError):
    """A missing or inconsistent ``"plus"`` block; the message says how to fix it."""


def _fix_hint(dataset_id: str | int | None) -> str:
    target = f"-d {dataset_id}" if dataset_id is not None else "-d DATASET_ID"
    return f"run `nnunet_plus_configure {target} --liver ... --lesions ... --malignant ... --benign ...`"


@dataclass(frozen=True)
class LesionSchema:
    """Label roles of one nnU-Net dataset.

    Attributes
    ----------
    labels : mapping name -> integer label value (nnU-Net's ``"labels"``; also the softmax channel index).
    liver : names of the liver (parenchyma) labels.
    lesions : names of the lesion-type labels, in a fixed order (the classifier's class order).
    malignant, benign : disjoint subsets of ``lesions``.
    priority : all lesion names, highest classifyPatient priority first.
    sensitivities : multi-sensitivity factors, ascending; the first is the confident tier (normally 1).
    min_lesion_volume_mm3 : detections smaller than this are dropped.
    max_suspicious_per_case : keep at most this many suspicious candidates per case (those found only at a
        higher sensitivity), the most probable first; 0 = keep all. Confident lesions are always kept.
    liver_largest_component : keep only the largest connected liver region of the predictions (liver voxels
        elsewhere become background; lesions are not touched; :mod:`nnunet_plus.postprocessing.liver_component`).
    """

    labels: Mapping[str, int]
    liver: tuple[str, ...]
    lesions: tuple[str, ...]
    malignant: tuple[str, ...]
    benign: tuple[str, ...]
    priority: tuple[str, ...]
    sensitivities: tuple[float, ...] = DEFAULT_SENSITIVITIES
    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3
    max_suspicious_per_case: int = DEFAULT_MAX_SUSPICIOUS
    liver_largest_component: bool = DEFAULT_LIVER_LARGEST_COMPONENT
    dataset_id: str | int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`SchemaError` with a fix hint if the schema is inconsistent."""
        hint = _fix_hint(self.dataset_id)
        labels = dict(self.labels)
        if not labels:
            raise SchemaError(f"dataset.json has no 'labels' block; add one (nnU-Net format), then {hint}")
        values = sorted(int(v) for v in labels.values())
        if values != list(range(len(values))):
            raise SchemaError(f"labels must be consecutive integers 0..N-1 (nnU-Net rule), got {values}; "
                              "renumber the labels in dataset.json")
        background = [n for n, v in labels.items() if int(v) == 0]
        for role, names in (("liver", self.liver), ("lesions", self.lesions), ("malignant", self.malignant),
                            ("benign", self.benign), ("priority", self.priority)):
            unknown = [n for n in names if n not in labels]
            if unknown:
                raise SchemaError(f"schema '{role}' names unknown label(s) {unknown}; known labels are "
                                  f"{sorted(labels)}; {hint}")
            if any(n in background for n in names):
                raise SchemaError(f"background label {background[0]!r} cannot be in '{role}'; {hint}")
            if len(set(names)) != len(names):
                raise SchemaError(f"schema '{role}' lists a label twice: {list(names)}; {hint}")
        if not self.liver:
            raise SchemaError(f"schema has no liver label; {hint}")
        if not self.lesions:
            raise SchemaError(f"schema has no lesion label; {hint}")
        both = set(self.liver) & set(self.lesions)
        if both:
            raise SchemaError(f"label(s) {sorted(both)} are both liver and lesion; {hint}")
        both = set(self.malignant) & set(self.benign)
        if both:
            raise SchemaError(f"label(s) {sorted(both)} are both malignant and benign; {hint}")
        outside = (set(self.malignant) | set(self.benign)) - set(self.lesions)
        if outside:
            raise SchemaError(f"malignant/benign label(s) {sorted(outside)} are not lesion labels; {hint}")
        if set(self.priority) != set(self.lesions):
            raise SchemaError(f"'priority' must list every lesion label exactly once (lesions: "
                              f"{list(self.lesions)}, priority: {list(self.priority)}); {hint}")
        if not self.sensitivities or any(not (0 < f < math.inf) for f in self.sensitivities) \
                or list(self.sensitivities) != sorted(self.sensitivities):
            raise SchemaError(f"'sensitivities' must be finite, positive and ascending, got "
                              f"{list(self.sensitivities)}; {hint}")
        if not 0 <= self.min_lesion_volume_mm3 < math.inf:
            raise SchemaError(f"'min_lesion_volume_mm3' must be a finite number >= 0, got "
                              f"{self.min_lesion_volume_mm3}; {hint}")
        if isinstance(self.max_suspicious_per_case, bool) or not isinstance(self.max_suspicious_per_case, int) \
                or self.max_suspicious_per_case < 0:
            raise SchemaError(f"'max_suspicious_per_case' must be an integer >= 0 (0 = no limit), got "
                              f"{self.max_suspicious_per_case!r}; {hint}")
        if not isinstance(self.liver_largest_component, bool):
            raise SchemaError(f"'liver_largest_component' must be true or false, got "
                              f"{self.liver_largest_component!r}; {hint}")

    # ---- label-value views (what the array functions take) ----------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of softmax channels (= number of labels incl. background)."""
        return len(self.labels)

    @property
    def liver_labels(self) -> tuple[int, ...]:
        return tuple(int(self.labels[n]) for n in self.liver)

    @property
    def lesion_labels(self) -> tuple[int, ...]:
        """Lesion label values in schema order (the classifier's class order)."""
        return tuple(int(self.labels[n]) for n in self.lesions)

    @property
    def liver_region_labels(self) -> tuple[int, ...]:
        """Liver and lesion label values: the liver region of a label map is the liver with its lesions."""
        return self.liver_labels + self.lesion_labels

    @property
    def malignant_labels(self) -> tuple[int, ...]:
        return tuple(int(self.labels[n]) for n in self.malignant)

    @property
    def benign_labels(self) -> tuple[int, ...]:
        return tuple(int(self.labels[n]) for n in self.benign)

    @property
    def priority_labels(self) -> tuple[int, ...]:
        """Lesion label values, highest classifyPatient priority first."""
        return tuple(int(self.labels[n]) for n in self.priority)

    def label_name(self, value: int) -> str:
        """Name of a label value (``'normal'`` is not a label; background's name is returned for 0)."""
        for name, v in self.labels.items():
            if int(v) == int(value):
                return name
        raise KeyError(f"label value {value} is not in the schema's labels {dict(self.labels)}")

    # ---- (de)serialisation -------------------------------------------------------------------------
    def to_block(self) -> dict:
        """The JSON ``"plus"`` block (without ``labels``, which live in dataset.json's own block)."""
        return {
            "liver": list(self.liver),
            "lesions": list(self.lesions),
            "malignant": list(self.malignant),
            "benign": list(self.benign),
            "priority": list(self.priority),
            "sensitivities": [float(f) for f in self.sensitivities],
            "min_lesion_volume_mm3": float(self.min_lesion_volume_mm3),
            "max_suspicious_per_case": int(self.max_suspicious_per_case),
            "liver_largest_component": self.liver_largest_component,
        }

    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping | str | os.PathLike,
                          dataset_id: str | int | None = None) -> "LesionSchema":
        """Read the schema from a dataset.json dict or file; :class:`SchemaError` if it is missing."""
        if not isinstance(dataset_json, Mapping):
            dataset_json = read_dataset_json(dataset_json)
        hint = _fix_hint(dataset_id)
        labels = dataset_json.get("labels")
        if not isinstance(labels, Mapping):
            raise SchemaError(f"dataset.json has no 'labels' block; add one (nnU-Net format), then {hint}")
        if any(not isinstance(v, int) for v in labels.values()):
            raise SchemaError("region-based labels (lists of values) are not supported by nnunet_plus; "
                              "use one integer per label in dataset.json")
        block = dataset_json.get(SCHEMA_KEY)
        if not isinstance(block, Mapping):
            raise SchemaError(f"dataset.json has no '{SCHEMA_KEY}' lesion schema; {hint}")
        missing = [k for k in ("liver", "lesions", "malignant", "benign") if k not in block]
        if missing:
            raise SchemaError(f"the '{SCHEMA_KEY}' block lacks {missing}; {hint}")
        lesions = tuple(block["lesions"])
        return cls(
            labels={str(k): int(v) for k, v in labels.items()},
            liver=tuple(block["liver"]),
            lesions=lesions,
            malignant=tuple(block["malignant"]),
            benign=tuple(block["benign"]),
            priority=tuple(block.get("priority", lesions)),
            sensitivities=tuple(float(f) for f in block.get("sensitivities", DEFAULT_SENSITIVITIES)),
            min_lesion_volume_mm3=float(block.get("min_lesion_volume_mm3", DEFAULT_MIN_LESION_VOLUME_MM3)),
            max_suspicious_per_case=block.get("max_suspicious_per_case", DEFAULT_MAX_SUSPICIOUS),
            liver_largest_component=block.get("liver_largest_component", DEFAULT_LIVER_LARGEST_COMPONENT),
            dataset_id=dataset_id,
        )


def build_schema(labels: Mapping[str, int], *, liver: Sequence[str] = ("liver",),
                 lesions: Sequence[str] | None = None, malignant: Sequence[str] | None = None,
                 benign: Sequence[str] | None = None, priority: Sequence[str] | None = None,
                 sensitivities: Sequence[float] = DEFAULT_SENSITIVITIES,
                 min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3,
                 max_suspicious_per_case: int = DEFAULT_MAX_SUSPICIOUS,
                 liver_largest_component: bool = DEFAULT_LIVER_LARGEST_COMPONENT,
                 dataset_id: str | int | None = None) -> LesionSchema:
    """Build a schema, filling defaults from the nine PLUS lesion types.

    ``lesions`` defaults to every label that is neither background nor liver. ``malignant`` / ``benign``
    default to the PLUS classification of the lesion names (unknown names must then be given explicitly).
    ``priority`` defaults to malignant lesions first (PLUS order where known), then benign ones, with cyst last.
    """
    labels = {str(k): int(v) for k, v in labels.items()}
    liver = tuple(liver)
    if lesions is None:
        lesions = tuple(n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0 and n not in liver)
    lesions = tuple(lesions)
    if malignant is None:
        malignant = tuple(n for n in lesions if n in PLUS_MALIGNANT)
    if benign is None:
        benign = tuple(n for n in lesions if n in PLUS_BENIGN)
    unclassified = [n for n in lesions if n not in malignant and n not in benign]
    if unclassified:
        raise SchemaError(f"lesion label(s) {unclassified} are neither malignant nor benign; pass them with "
                          "--malignant or --benign")
    if priority is None:
        order = {n: i for i, n in enumerate(PLUS_LESION_TYPES)}
        priority = sorted(lesions, key=lambda n: (n not in malignant, order.get(n, len(order) - 1.5), n))
    return LesionSchema(labels=labels, liver=liver, lesions=lesions, malignant=tuple(malignant),
                        benign=tuple(benign), priority=tuple(priority),
                        sensitivities=tuple(float(f) for f in sensitivities),
                        min_lesion_volume_mm3=float(min_lesion_volume_mm3),
                        max_suspicious_per_case=max_suspicious_per_case,
                        liver_largest_component=liver_largest_component, dataset_id=dataset_id)


def read_dataset_json(path: str | os.PathLike) -> dict:
    """The JSON object of a dataset.json file; :class:`SchemaError` (one line naming the file) when it is
    missing, unreadable, not UTF-8, not valid JSON or not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path} not found; point to the dataset.json of an nnU-Net raw or preprocessed dataset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from exc
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not valid JSON ({exc}); fix or regenerate it") from exc
    except OSError as exc:
        raise SchemaError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    if not isinstance(data, dict):
        raise SchemaError(f"{path} holds a JSON {type(data).__name__}, not an object; an nnU-Net dataset.json is "
                          '{"labels": {...}, "channel_names": {...}, ...}')
    return data


def write_schema(dataset_json_path: str | os.PathLike, schema: LesionSchema) -> None:
    """Add / replace the ``"plus"`` block of a dataset.json file, keeping every other key and the file's mode; a
    symbolic link is kept and its target rewritten. A read-only file raises :class:`PermissionError`."""
    path = Path(os.path.realpath(dataset_json_path))
    data = read_dataset_json(path)
    data[SCHEMA_KEY] = schema.to_block()
    write_json_atomic(path, data)
