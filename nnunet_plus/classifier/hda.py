"""Hierarchical Dual Attention (HDA, PLUS eq. 1): multi-scale exchange between liver and lesion features.

``F = F_theta1([DCA(Pool_i(F_H); F_S)]_{i=1..K})`` with

``F'_x = F_theta2(A(F_x, F_y))``,  ``DCA(F_x, F_y) = [F'_x ; F_theta3(A(F_y, F'_x))]``.

Here ``F_x`` are the liver tokens pooled at scale ``i`` and ``F_y`` the lesion tokens: the pooled liver
first queries the lesion (liver -> lesion flow, ``F'_x``), then the lesion queries that lesion-aware liver
(lesion -> liver flow). Choices where the paper is silent:

* ``Pool_i`` is adaptive average pooling of the liver feature map to a grid of ``i`` cells per axis
  (``i = 1..K``; ``1, 8, 27, 64`` tokens for K=4), clipped to the map's own size (a ``4 x 4 x 4`` map is the
  finest scale). Scale 1 is the global liver descriptor, scale K the full-resolution map.
* One DCA (``A``, ``F_theta2``, ``F_theta3``) is shared by all scales, as eq. 1 writes a single DCA.
* ``[ ; ]`` concatenates the two flows after averaging each over its tokens, giving ``2 d`` values per scale;
  ``F_theta1`` projects the ``2 K d`` concatenation back to ``d``.
* Tokens carry no positional encoding (the paper mentions none).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_plus.classifier.attention import Attention


class HierarchicalDualAttention(nn.Module):
    """Fuse each lesion's feature map with its patient's liver feature map at ``num_scales`` scales.

    Parameters
    ----------
    dim : channels ``d`` of both feature maps (and of the output vector).
    num_scales : ``K``, the number of liver pooling scales (paper: 4).
    num_heads : heads of the attention operations (1 = the paper's single-head formula).
    dropout : attention-weight dropout.
    """

    def __init__(self, dim: int, *, num_scales: int = 4, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.dim = int(dim)
        self.num_scales = int(num_scales)
        self.liver_to_lesion = Attention(dim, num_heads=num_heads, dropout=dropout)
        self.lesion_to_liver = Attention(dim, num_heads=num_heads, dropout=dropout)
        self.proj_liver = nn.Linear(dim, dim)  # F_theta2
        self.proj_lesion = nn.Linear(dim, dim)  # F_theta3
        self.proj_out = nn.Linear(2 * self.num_scales * dim, dim)  # F_theta1

    def pool_sizes(self, liver_shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        """Pooling grid ``(z, y, x)`` of each scale for a liver feature map of spatial shape ``liver_shape``."""
        return [tuple(min(i, int(n)) for n in liver_shape) for i in range(1, self.num_scales + 1)]

    def forward(self, lesion_map: torch.Tensor, liver_map: torch.Tensor,
                lesion_to_patient: torch.Tensor) -> torch.Tensor:
        """Return the fused lesion features ``(N, dim)``.

        Parameters
        ----------
        lesion_map : ``(N, dim, z, y, x)`` lesion feature maps (``F_S``), one per lesion.
        liver_map : ``(B, dim, z', y', x')`` liver feature maps (``F_H``), one per patient.
        lesion_to_patient : ``(N,)`` long, the patient index in ``[0, B)`` of every lesion.
        """
        if lesion_map.ndim != 5 or lesion_map.shape[1] != self.dim:
            raise ValueError(f"lesion_map must be (N, {self.dim}, z, y, x), got {tuple(lesion_map.shape)}")
        if liver_map.ndim != 5 or liver_map.shape[1] != self.dim:
            raise ValueError(f"liver_map must be (B, {self.dim}, z, y, x), got {tuple(liver_map.shape)}")
        if lesion_to_patient.shape != (lesion_map.shape[0],):
            raise ValueError(f"lesion_to_patient must have shape ({lesion_map.shape[0]},), "
                             f"got {tuple(lesion_to_patient.shape)}")
        lesion_tokens = lesion_map.flatten(2).transpose(1, 2)  # (N, Ts, d)
        flows = []
        for size in self.pool_sizes(tuple(liver_map.shape[2:])):
            pooled = F.adaptive_avg_pool3d(liver_map, size).flatten(2).transpose(1, 2)  # (B, Ti, d)
            liver_tokens = pooled.index_select(0, lesion_to_patient)  # (N, Ti, d)
            liver_aware = self.proj_liver(self.liver_to_lesion(liver_tokens, lesion_tokens))  # F'_x
            lesion_aware = self.proj_lesion(self.lesion_to_liver(lesion_tokens, liver_aware))
            flows += [liver_aware.mean(dim=1), lesion_aware.mean(dim=1)]
        return self.proj_out(torch.cat(flows, dim=1))
