"""Coded concepts of the DICOM outputs (SEG and SR): a code for every label of the lesion schema, the SR's concept
names and units, and the names that identify nnunet_plus as the algorithm.

Codes (Segmented Property Type; lesion segments: category SCT 49755003 "Morphologically Abnormal Structure",
anatomic region SCT 10200004 "Liver"; liver: category SCT 91723000 "Anatomical Structure")

=================  ===========================================================  ======  ==============================
label name(s)      code (meaning)                                               scheme  checked against
=================  ===========================================================  ======  ==============================
liver              10200004 Liver                                               SCT     pydicom codes (Liver)
hcc                25370001 Hepatocellular carcinoma                            SCT     not in pydicom/highdicom tables;
                                                                                        SNOMED CT concept (morphology)
icc, cca           70179006 Cholangiocarcinoma                                  SCT     not in pydicom/highdicom tables;
                                                                                        SNOMED CT concept (morphology);
                                                                                        "intrahepatic" = region Liver
metastasis         14799000 Neoplasm, metastatic                                SCT     pydicom (NeoplasmSecondary)
hemangioma         400210000 Hemangioma                                         SCT     pydicom codes (Hemangioma)
cyst               367643001 Cyst                                               SCT     pydicom codes (Cyst, CID 7159);
                                                                                        "of liver" = region Liver
calcification      18115005 Pathologic calcification                            SCT     pydicom codes
fnh                fnh (Focal nodular hyperplasia)                              local   99NNUNETPLUS: no verified code
other_malignant    other_malignant (Other malignant liver lesion)               local   99NNUNETPLUS
other_benign       other_benign (Other benign liver lesion)                     local   99NNUNETPLUS
any other label    its name (or ``L<value>``), meaning = the name               local   99NNUNETPLUS
=================  ===========================================================  ======  ==============================


Algorithm identification (SEG segments and SR groups): name ``nnunet_plus``, family DCM 123110 "Artificial
Intelligence", version :data:`nnunet_plus.__version__`, source = the model id (``<Dataset>/<trainer>__<plans>
__<configuration>``, the model folder).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from nnunet_plus.schema import LesionSchema

#: private coding scheme designator for concepts without a verified standard code (DICOM: "99" prefix)
LOCAL_SCHEME = "99NNUNETPLUS"
ALGORITHM_NAME = "nnunet_plus"

# (code value, scheme, meaning) of the segmented property types, by (normalised) label name
SCT = "SCT"
LIVER = ("10200004", SCT, "Liver")
_TYPE_CODES: dict[str, tuple[str, str, str]] = {
    "liver": LIVER,
    "hcc": ("25370001", SCT, "Hepatocellular carcinoma"),
    "hepatocellular_carcinoma": ("25370001", SCT, "Hepatocellular carcinoma"),
    "icc": ("70179006", SCT, "Cholangiocarcinoma"),
    "cca": ("70179006", SCT, "Cholangiocarcinoma"),
    "cholangiocarcinoma": ("70179006", SCT, "Cholangiocarcinoma"),
    "metastasis": ("14799000", SCT, "Neoplasm, metastatic"),
    "metastases": ("14799000", SCT, "Neoplasm, metastatic"),
    "meta": ("14799000", SCT, "Neoplasm, metastatic"),
    "hemangioma": ("400210000", SCT, "Hemangioma"),
    "haemangioma": ("400210000", SCT, "Hemangioma"),
    "cyst": ("367643001", SCT, "Cyst"),
    "calcification": ("18115005", SCT, "Pathologic calcification"),
    "fnh": ("fnh", LOCAL_SCHEME, "Focal nodular hyperplasia"),
    "other_malignant": ("other_malignant", LOCAL_SCHEME, "Other malignant liver lesion"),
    "other_benign": ("other_benign", LOCAL_SCHEME, "Other benign liver lesion"),
}
# segment categories, the normal patient class and the SR's concept names and units
ANATOMICAL_STRUCTURE = ("91723000", SCT, "Anatomical Structure")
TISSUE = ("85756007", SCT, "Tissue")
ABNORMAL = ("49755003", SCT, "Morphologically Abnormal Structure")
NORMAL = ("17621005", SCT, "Normal")
CLASSIFICATION = ("278201002", SCT, "Classification")
VOLUME = ("118565006", SCT, "Volume")
LONG_AXIS = ("103339001", SCT, "Long axis")
PROBABILITY = ("122157", "DCM", "Probability")
IMPRESSION = ("121073", "DCM", "Impression")
TIER = ("tier", LOCAL_SCHEME, "Detection tier")
TIERS = {"confident": ("confident", LOCAL_SCHEME, "Confident (first sensitivity)"),
         "suspicious": ("suspicious", LOCAL_SCHEME, "Suspicious (higher sensitivity only)")}
UNITS = {"mm3": ("mm3", "UCUM", "cubic millimeter"), "mm": ("mm", "UCUM", "millimeter"),
         "ml": ("ml", "UCUM", "milliliter"), "1": ("1", "UCUM", "no units")}
#: the tracking identifier of a lesion's segment and SR group ("lesion <id>")
LESION_TRACKING = re.compile(r"^lesion (\d+)$")


def coded_concept(triple: tuple[str, str, str]):
    """The highdicom ``CodedConcept`` of a ``(value, scheme, meaning)`` triple of this module."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=triple[0], scheme_designator=triple[1], meaning=triple[2])


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class LabelConcept:
    """Codes of one label value: segmented property category and type (``(value, scheme, meaning)``)."""

    value: int
    name: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    is_lesion: bool


def label_concepts(schema: LesionSchema) -> dict[int, LabelConcept]:
    """label value -> :class:`LabelConcept` for every non-background label of ``schema`` (module table).

    Each type code is given to one label only (the first in label order), so that a segment's type maps back
    to one label value; later labels with the same code, and unknown names, get a local code (their name, or
    ``L<value>`` when the name is longer than 16 characters)."""
    lesions = set(schema.lesions)
    taken: set[tuple[str, str]] = set()
    out: dict[int, LabelConcept] = {}
    for name, value in sorted(schema.labels.items(), key=lambda kv: int(kv[1])):
        value = int(value)
        if value == 0:
            continue
        triple = _TYPE_CODES.get(_normalise(name))
        if triple is None or (triple[0], triple[1]) in taken:
            code = name if len(name) <= 16 and re.fullmatch(r"[A-Za-z0-9_.\- ]+", name) else f"L{value}"
            triple = (code, LOCAL_SCHEME, name[:64])
        taken.add((triple[0], triple[1]))
        is_lesion = name in lesions
        if is_lesion:
            category = ABNORMAL
        elif name in schema.liver or triple[1] == SCT:
            category = ANATOMICAL_STRUCTURE
        else:
            category = TISSUE
        out[value] = LabelConcept(value, name, category, triple, is_lesion)
    return out

