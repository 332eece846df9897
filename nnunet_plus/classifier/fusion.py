"""How the PLUS classifier combines lesion features with the segmentation prior (Table 1 / Fig. 2 ablations).

Every fusion module maps ``(features (N, d), prior (N, K)) -> features (N, d)``, ``prior`` being a
distribution over the classifier's ``K = C + 1`` classes (see
:func:`nnunet_plus.classifier.model.prior_distribution`). Modes:

``gpr`` (default)
    Graph-based Prior Reasoning, Algorithm 1 (:class:`~nnunet_plus.classifier.gpr.GraphPriorReasoning`).
``none``
    No prior: the head sees the HDA features only (the "HDA" row of the component ablation).
``distill``
    Knowledge distillation (Fig. 2a, Gou et al. 2021): the prior is not a network input but a soft target;
    the features pass through unchanged and the trainer adds a distillation term to the loss
    (``plus_loss(..., distill_targets=prior_distribution(priors), distill_weight=...)``).
``gated``
    Gated multimodal unit (Fig. 2b, Arevalo et al. 2017): ``h_f = tanh(W_f F)``, ``h_p = tanh(W_p P)``,
    ``z = sigmoid(W_z [F ; P])`` (one gate per channel and lesion), ``F' = z * h_f + (1 - z) * h_p``.
``weighted``
    Weighted average (Fig. 2c, Yin 2018): ``F' = (1 - w) F + w W_p P`` with one learnable global weight
    ``w = sigmoid(omega)`` (``omega`` starts at 0, i.e. ``w = 0.5``), the same for every lesion: unlike the
    gate it cannot adapt to the sample. The paper gives no formula for ``gated`` and ``weighted``; these
    are our readings of the cited methods.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_plus.classifier.gpr import GraphPriorReasoning

FUSION_MODES: tuple[str, ...] = ("gpr", "none", "distill", "gated", "weighted")


class NoFusion(nn.Module):
    """Ignore the prior (modes ``none`` and ``distill``)."""

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        return features


class GatedFusion(nn.Module):
    """Gated multimodal unit over the features and the prior (mode ``gated``).

    Parameters
    ----------
    dim : feature dimension ``d``.
    num_prototypes : ``K``, the number of classes of the prior.
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(dim, dim)
        self.prior_proj = nn.Linear(num_prototypes, dim)
        self.gate = nn.Linear(dim + num_prototypes, dim)

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        prior = prior.to(features.dtype)
        z = torch.sigmoid(self.gate(torch.cat([features, prior], dim=1)))
        return z * torch.tanh(self.feature_proj(features)) + (1 - z) * torch.tanh(self.prior_proj(prior))


class WeightedFusion(nn.Module):
    """Global learnable weighted average of the features and an embedding of the prior (mode ``weighted``).

    Parameters
    ----------
    dim : feature dimension ``d``.
    num_prototypes : ``K``, the number of classes of the prior.
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.prior_proj = nn.Linear(num_prototypes, dim)
        self.omega = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.omega).to(features.dtype)
        return (1 - w) * features + w * self.prior_proj(prior.to(features.dtype))


def build_fusion(mode: str, dim: int, num_prototypes: int, *, num_heads: int = 1,
                 dropout: float = 0.0) -> nn.Module:
    """Return the fusion module of ``mode`` (one of :data:`FUSION_MODES`) for ``dim`` features and a
    ``num_prototypes``-class prior."""
    if mode == "gpr":
        return GraphPriorReasoning(dim, num_prototypes, num_heads=num_heads, dropout=dropout)
    if mode in ("none", "distill"):
        return NoFusion()
    if mode == "gated":
        return GatedFusion(dim, num_prototypes)
    if mode == "weighted":
        return WeightedFusion(dim, num_prototypes)
    raise ValueError(f"unknown fusion mode {mode!r}; choose one of {FUSION_MODES}")
