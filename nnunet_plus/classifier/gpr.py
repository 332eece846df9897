"""Graph-based Prior Reasoning (GPR, PLUS Algorithm 1): refine lesion features with prior-weighted prototypes.

Algorithm 1, for features ``F (N, d)``, a prior ``P (N, K)`` and learnable prototypes ``V (K, d)``:

1. ``F_psi = psi(F)``; ``V_w = P V`` (the prototypes weighted by the prior);
2. node set ``G = [F_psi ; V]``;
3. ``Q, K, V = W_q(G), W_k(G), W_v(G)``; ``m = sum_j softmax_j(q^T k_j / sqrt(d)) v_j`` for the centre node;
4. ``F' = F + F_theta([F_psi || m]) * V_w`` (element-wise product; residual update of the centre node).

Choices where the paper is silent or ambiguous:

* The graph is built per lesion: the lesion's own projected feature is the centre node and the ``K``
  prototypes are its neighbours (``1 + K`` nodes). The algorithm's "B original + B prototype nodes" could
  also be read as one graph over the whole batch; that would make a lesion's output depend on the other
  lesions (and patients) in the batch, so we do not do it.
* Only the centre node's message is needed (step 4 updates the centre node only), so only its query is used.
* ``P`` must be a distribution over the ``K`` prototypes (rows summing to 1);
  :func:`nnunet_plus.classifier.model.prior_distribution` turns nnU-Net's lesion-class prior into one
  (``K = C + 1``, with a "not a lesion" prototype).
* Prototypes are initialised ``N(0, 1)`` (embedding-style), so ``V_w`` is O(1) and the update is not
  vanishing at initialisation.

The prior enters only through ``V_w``: with a one-hot prior on class ``c`` the update is the message gated by
prototype ``c`` alone; with a uniform prior it is gated by the prototypes' mean.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_plus.classifier.attention import Attention


class GraphPriorReasoning(nn.Module):
    """Prior-aware feature refinement of Algorithm 1.

    Parameters
    ----------
    dim : feature dimension ``d``.
    num_prototypes : ``K``, one learnable prototype per class of the prior.
    num_heads : attention heads (1 = the paper's formula).
    dropout : attention-weight dropout.
    """

    def __init__(self, dim: int, num_prototypes: int, *, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
        self.dim = int(dim)
        self.num_prototypes = int(num_prototypes)
        self.prototypes = nn.Parameter(torch.randn(self.num_prototypes, self.dim))  # V_theta
        self.psi = nn.Linear(dim, dim)
        self.attention = Attention(dim, num_heads=num_heads, dropout=dropout)  # W_q, W_k, W_v
        self.update = nn.Linear(2 * dim, dim)  # F_theta

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Return the prior-aware features ``F'`` ``(N, dim)``.

        Parameters
        ----------
        features : ``(N, dim)`` lesion features ``F``.
        prior : ``(N, num_prototypes)`` prior distribution ``P`` (rows summing to 1).
        """
        n = features.shape[0]
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(features.shape)}")
        if prior.shape != (n, self.num_prototypes):
            raise ValueError(f"prior must be ({n}, {self.num_prototypes}), got {tuple(prior.shape)}")
        prototypes = self.prototypes.to(features.dtype)
        projected = self.psi(features)  # F_psi (N, d)
        weighted = prior.to(features.dtype) @ prototypes  # V_w (N, d)
        nodes = torch.cat([projected.unsqueeze(1), prototypes.unsqueeze(0).expand(n, -1, -1)], dim=1)
        message = self.attention(projected.unsqueeze(1), nodes).squeeze(1)  # m (N, d)
        return features + self.update(torch.cat([projected, message], dim=1)) * weighted
