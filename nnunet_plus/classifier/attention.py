"""Scaled dot-product attention with its own query/key/value projections (the ``A(F_a, F_b)`` of PLUS eq. 1)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    """``A(F_a, F_b) = softmax(T_Q(F_a) T_K(F_b)^T / sqrt(d)) T_V(F_b)``, optionally split into heads.

    With ``num_heads=1`` this is exactly the single-head formula of the paper; with ``h`` heads the formula is
    applied per head on ``dim / h`` channels and the heads are concatenated. Queries and context are
    layer-normalised before the projections (pre-norm: a stability choice of ours, not in the paper). There is
    no output projection: the callers' ``F_theta`` projections play that role.

    Parameters
    ----------
    dim : token dimension ``d`` of queries, context and output.
    num_heads : number of heads; must divide ``dim``.
    dropout : dropout on the attention weights (training only).
    """

    def __init__(self, dim: int, *, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend from ``queries`` ``(N, Tq, dim)`` to ``context`` ``(N, Tk, dim)``; returns ``(N, Tq, dim)``."""
        if queries.ndim != 3 or context.ndim != 3 or queries.shape[0] != context.shape[0] \
                or queries.shape[2] != self.dim or context.shape[2] != self.dim:
            raise ValueError(f"expected queries (N, Tq, {self.dim}) and context (N, Tk, {self.dim}), got "
                             f"{tuple(queries.shape)} and {tuple(context.shape)}")
        context = self.norm_kv(context)
        q = self._heads(self.to_q(self.norm_q(queries)))
        k = self._heads(self.to_k(context))
        v = self._heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(queries.shape[0], queries.shape[1], self.dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.dim // self.num_heads).transpose(1, 2)
