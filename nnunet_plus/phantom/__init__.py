"""Synthetic non-contrast liver CT phantom cohorts in nnU-Net raw format.

``make_phantom_dataset`` writes a deterministic cohort (body, organs, normal / fatty / cirrhotic livers, six
focal lesion types with their NCCT appearance and the context rule HCC-in-cirrhosis / hemangioma-elsewhere);
``write_preview`` draws a few of its cases; ``render_case`` renders one case in memory.
"""
from __future__ import annotations

from nnunet_plus.phantom.case import PhantomCase, render_case
from nnunet_plus.phantom.cohort import CaseSpec, plan_cohort
from nnunet_plus.phantom.dataset import DEFAULT_SHAPE, DEFAULT_SPACING, make_phantom_dataset, phantom_labels
from nnunet_plus.phantom.lesions import LESION_TYPES
from nnunet_plus.phantom.preview import write_preview

__all__ = ["CaseSpec", "DEFAULT_SHAPE", "DEFAULT_SPACING", "LESION_TYPES", "PhantomCase", "make_phantom_dataset",
           "phantom_labels", "plan_cohort", "render_case", "write_preview"]
