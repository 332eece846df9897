"""nnUNetTrainerPLUS: nnU-Net's own trainer plus lesion- and patient-level validation.

nnU-Net finds these classes through ``nnUNet_extTrainer`` (``export nnUNet_extTrainer=$(nnunet_plus_trainers_path)``).
nnU-Net imports the modules of this folder as top-level modules, so imports here are absolute.
"""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_plus.schema import LesionSchema


class nnUNetTrainerPLUS(nnUNetTrainer):
    """Trains exactly as ``nnUNetTrainer``; its final validation (and ``--val``) always exports the softmax
    (stage two needs out-of-fold probabilities) and adds ``validation/plus_summary.json`` plus one
    ``<case>_lesions.json`` per case. Fails at initialisation if dataset.json lacks the ``"plus"`` schema."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        schema = LesionSchema.from_dataset_json(dataset_json, dataset_id=plans.get("dataset_name"))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lesion_schema = schema

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities=True)
        if self.local_rank != 0:
            return
        from nnunet_plus.nnunet_validation import run_lesion_validation

        run_lesion_validation(self)
