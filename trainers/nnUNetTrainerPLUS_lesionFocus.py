"""nnUNetTrainerPLUS_lesionFocus: a recipe that learns small, rare lesions in few iterations.

Why: with nnU-Net's default recipe (SGD 1e-2 poly, per-sample Dice + CE) a 3D U-Net learns the phantom's liver
in a few hundred iterations but no lesion within 1500 (benchmarks/RESULTS.md, "Stage one on the phantom"):
lesion voxels are ~0.1 % of a case and split over six types, and Dice on the many (case, type) pairs without
a lesion pushes every type to zero. This recipe changes the loss and optimiser only:

- ``LesionUnionLoss``: nnU-Net's Dice + CE plus a type-agnostic term on "any lesion" (the summed softmax of the
  lesion channels vs the union of the lesion labels: BCE on log-probabilities + batch soft Dice), so lesion
  mass is learned before the types are told apart (stage two refines the types);
- cross-entropy weight ``LESION_CE_WEIGHT`` on the lesion channels, batch Dice;
- AdamW (lr 1e-3, poly decay), which converges faster than SGD in short schedules.

Network, plans, data augmentation, sampling and validation are nnU-Net's / nnUNetTrainerPLUS's.
Imports are absolute: nnU-Net imports this folder's modules as top-level modules.
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunet_plus.trainers.nnUNetTrainerPLUS import nnUNetTrainerPLUS

LESION_CE_WEIGHT = 10.0
UNION_WEIGHT = 1.0
ADAM_LR = 1e-3


class LesionUnionLoss(nn.Module):
    """``base(logits, target) + weight * (BCE + soft Dice)`` of "any lesion".

    logits: (B, C, *spatial) raw network output; target: (B, 1, *spatial) integer labels (nnU-Net layout).
    ``lesion_channels``: output channels (= label values) of the lesion types. log P(lesion) is
    logsumexp(lesion logits) - logsumexp(all logits), so the BCE is exact and stable. The Dice is computed over
    the whole batch and skipped when the batch holds no lesion voxel. nnU-Net's augmentation maps the -1 of
    cropped-away voxels to background before the loss.
    """

    def __init__(self, base: nn.Module, lesion_channels: list[int], weight: float = UNION_WEIGHT,
                 smooth: float = 1e-5):
        super().__init__()
        if not lesion_channels:
            raise ValueError("LesionUnionLoss needs at least one lesion channel")
        self.base = base
        self.lesion_channels = list(lesion_channels)
        self.weight = float(weight)
        self.smooth = float(smooth)

    def union_terms(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(BCE, 1 - soft Dice) of the lesion union; both scalars."""
        logits = logits.float()
        is_lesion = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        is_lesion[self.lesion_channels] = True
        log_all = torch.logsumexp(logits, 1)
        log_p = torch.logsumexp(logits[:, is_lesion], 1) - log_all
        log_not = torch.logsumexp(logits[:, ~is_lesion], 1) - log_all
        lesion_values = torch.tensor(self.lesion_channels, device=target.device)
        truth = torch.isin(target[:, 0].long(), lesion_values).float()
        bce = -(truth * log_p + (1.0 - truth) * log_not).mean()
        if truth.sum() == 0:
            return bce, torch.zeros((), device=logits.device)
        p = log_p.exp()
        dice = (2.0 * (p * truth).sum() + self.smooth) / (p.sum() + truth.sum() + self.smooth)
        return bce, 1.0 - dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce, dice_loss = self.union_terms(logits, target)
        return self.base(logits, target) + self.weight * (bce + dice_loss)


class nnUNetTrainerPLUS_lesionFocus(nnUNetTrainerPLUS):
    """nnUNetTrainerPLUS with the lesion-focused loss and AdamW (module docstring); nnU-Net's schedule length."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = ADAM_LR

    def _build_loss(self):
        n_heads = self.label_manager.num_segmentation_heads
        lesion_channels = [int(v) for v in self.lesion_schema.lesion_labels]
        if (self.label_manager.has_regions or self.label_manager.has_ignore_label
                or max(lesion_channels) >= n_heads):
            raise RuntimeError("nnUNetTrainerPLUS_lesionFocus needs plain labels (no regions, no ignore label) whose "
                               "lesion labels are output channels; use nnUNetTrainerPLUS for such datasets")
        ce_weight = torch.ones(n_heads, device=self.device)
        ce_weight[lesion_channels] = LESION_CE_WEIGHT
        loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": self.is_ddp},
                              {"weight": ce_weight}, weight_ce=1, weight_dice=1,
                              ignore_label=self.label_manager.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        loss = LesionUnionLoss(loss, lesion_channels)
        if self.enable_deep_supervision:
            scales = self._get_deep_supervision_scales()
            weights = np.array([1 / (2 ** i) for i in range(len(scales))])
            weights[-1] = 0
            loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
