"""Pure array functions on nnU-Net outputs: multi-sensitivity, seg2det, match, LiverMax, classify_patient."""
from __future__ import annotations

from nnunet_plus.postprocessing.classify import NORMAL, classify_patient
from nnunet_plus.postprocessing.livermax import liver_max, liver_region, patient_probabilities
from nnunet_plus.postprocessing.match import (
    MatchResult, assign_one_to_one, assign_tiers, match_lesions, match_overlaps, overlap_table,
)
from nnunet_plus.postprocessing.multi_sensitivity import multi_sensitivity_labels
from nnunet_plus.postprocessing.seg2det import RECORD_KEYS, Detections, label_mask, seg2det

__all__ = [
    "NORMAL", "RECORD_KEYS", "Detections", "MatchResult", "assign_one_to_one", "assign_tiers", "classify_patient",
    "label_mask", "liver_max", "liver_region", "match_lesions", "match_overlaps", "multi_sensitivity_labels",
    "overlap_table", "patient_probabilities", "seg2det",
]
