"""Tests of Graph-based Prior Reasoning (PLUS Algorithm 1) and the alternative fusion modules."""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_plus.classifier.fusion import (FUSION_MODES, GatedFusion, NoFusion, WeightedFusion,
                                           build_fusion)
from nnunet_plus.classifier.gpr import GraphPriorReasoning

DIM, K = 8, 4


def _block_prototypes(gpr: GraphPriorReasoning) -> None:
    """Prototype c = ones on dims 2c, 2c+1 and zero elsewhere (disjoint supports)."""
    with torch.no_grad():
        gpr.prototypes.zero_()
        for c in range(K):
            gpr.prototypes[c, 2 * c:2 * c + 2] = 1.0


@pytest.mark.parametrize("n", [0, 1, 5])
def test_shapes(n):
    torch.manual_seed(0)
    gpr = GraphPriorReasoning(DIM, K, num_heads=2)
    prior = torch.softmax(torch.randn(n, K), dim=1)
    out = gpr(torch.randn(n, DIM), prior)
    assert out.shape == (n, DIM)


def test_algorithm_1_by_hand():
    torch.manual_seed(0)
    gpr = GraphPriorReasoning(DIM, K)
    features = torch.randn(3, DIM)
    prior = torch.softmax(torch.randn(3, K), dim=1)
    f_psi = gpr.psi(features)
    nodes = torch.cat([f_psi[:, None], gpr.prototypes.expand(3, K, DIM)], dim=1)  # (3, 1 + K, d)
    att = gpr.attention
    q = att.to_q(att.norm_q(f_psi))
    k, v = att.to_k(att.norm_kv(nodes)), att.to_v(att.norm_kv(nodes))
    alpha = torch.softmax((k @ q[:, :, None]).squeeze(2) / math.sqrt(DIM), dim=1)  # (3, 1 + K)
    message = (alpha[:, :, None] * v).sum(dim=1)
    expected = features + gpr.update(torch.cat([f_psi, message], dim=1)) * (prior @ gpr.prototypes)
    torch.testing.assert_close(gpr(features, prior), expected)


def test_one_hot_prior_selects_its_prototype():
    torch.manual_seed(0)
    gpr = GraphPriorReasoning(DIM, K)
    _block_prototypes(gpr)
    features = torch.randn(2, DIM)
    updates = []
    with torch.no_grad():
        for c in range(K):
            one_hot = torch.nn.functional.one_hot(torch.full((2,), c), K).float()
            update = gpr(features, one_hot) - features
            block = torch.zeros(DIM, dtype=torch.bool)
            block[2 * c:2 * c + 2] = True
            assert torch.all(update[:, ~block] == 0)  # only prototype c's dims move
            assert torch.all(update[:, block].abs() > 0)
            updates.append(update)
        uniform = gpr(features, torch.full((2, K), 1.0 / K)) - features
    # the uniform prior spreads the same message over all prototypes with weight 1/K each
    torch.testing.assert_close(uniform, sum(updates) / K)
    assert torch.all(uniform.abs() > 0)
    for c in range(K):
        torch.testing.assert_close(updates[c][:, 2 * c:2 * c + 2], K * uniform[:, 2 * c:2 * c + 2])


def test_prior_weights_prototypes_linearly():
    torch.manual_seed(1)
    gpr = GraphPriorReasoning(DIM, K)
    features = torch.randn(3, DIM)
    eye = torch.eye(K)
    mixed = torch.tensor([[0.7, 0.3, 0.0, 0.0]]).expand(3, K)
    with torch.no_grad():
        u0 = gpr(features, eye[[0, 0, 0]]) - features
        u1 = gpr(features, eye[[1, 1, 1]]) - features
        um = gpr(features, mixed) - features
    torch.testing.assert_close(um, 0.7 * u0 + 0.3 * u1)
    assert not torch.allclose(u0, u1)


def test_gpr_errors():
    with pytest.raises(ValueError):
        GraphPriorReasoning(DIM, 0)
    gpr = GraphPriorReasoning(DIM, K)
    with pytest.raises(ValueError, match="prior"):
        gpr(torch.randn(2, DIM), torch.rand(2, K + 1))
    with pytest.raises(ValueError, match="features"):
        gpr(torch.randn(2, DIM + 1), torch.rand(2, K))


def test_gated_fusion_formula():
    torch.manual_seed(0)
    gated = GatedFusion(DIM, K)
    features, prior = torch.randn(3, DIM), torch.softmax(torch.randn(3, K), dim=1)
    z = torch.sigmoid(gated.gate(torch.cat([features, prior], dim=1)))
    expected = z * torch.tanh(gated.feature_proj(features)) + (1 - z) * torch.tanh(gated.prior_proj(prior))
    torch.testing.assert_close(gated(features, prior), expected)


def test_weighted_fusion_starts_at_half():
    torch.manual_seed(0)
    weighted = WeightedFusion(DIM, K)
    features, prior = torch.randn(3, DIM), torch.softmax(torch.randn(3, K), dim=1)
    torch.testing.assert_close(weighted(features, prior), 0.5 * features + 0.5 * weighted.prior_proj(prior))


@pytest.mark.parametrize("mode", FUSION_MODES)
@pytest.mark.parametrize("n", [0, 1, 4])
def test_build_fusion_shapes(mode, n):
    fusion = build_fusion(mode, DIM, K)
    features = torch.randn(n, DIM)
    out = fusion(features, torch.softmax(torch.randn(n, K), dim=1))
    assert out.shape == (n, DIM)
    if mode in ("none", "distill"):
        assert isinstance(fusion, NoFusion) and out is features


def test_build_fusion_unknown():
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fusion("concat", DIM, K)
