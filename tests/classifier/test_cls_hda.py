"""Tests of the attention operation and Hierarchical Dual Attention (PLUS eq. 1)."""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_plus.classifier.attention import Attention
from nnunet_plus.classifier.hda import HierarchicalDualAttention

DIM = 16


def test_attention_matches_formula():
    torch.manual_seed(0)
    attention = Attention(DIM)
    queries, context = torch.randn(2, 3, DIM), torch.randn(2, 5, DIM)
    q = attention.to_q(attention.norm_q(queries))
    k = attention.to_k(attention.norm_kv(context))
    v = attention.to_v(attention.norm_kv(context))
    expected = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(DIM), dim=-1) @ v
    torch.testing.assert_close(attention(queries, context), expected)


def test_attention_heads_and_errors():
    attention = Attention(DIM, num_heads=4)
    assert attention(torch.randn(3, 2, DIM), torch.randn(3, 7, DIM)).shape == (3, 2, DIM)
    assert attention(torch.randn(0, 2, DIM), torch.randn(0, 7, DIM)).shape == (0, 2, DIM)
    with pytest.raises(ValueError):
        Attention(DIM, num_heads=3)
    with pytest.raises(ValueError):
        attention(torch.randn(3, 2, DIM), torch.randn(2, 7, DIM))


@pytest.mark.parametrize("liver_shape, sizes", [
    ((4, 4, 4), [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)]),
    ((2, 4, 4), [(1, 1, 1), (2, 2, 2), (2, 3, 3), (2, 4, 4)]),
])
def test_pool_sizes(liver_shape, sizes):
    assert HierarchicalDualAttention(DIM, num_scales=4).pool_sizes(liver_shape) == sizes


@pytest.mark.parametrize("patients, lesion_to_patient", [
    (1, []), (2, []), (1, [0]), (3, [2]), (3, [0, 0, 2, 2, 2]), (2, [1, 0, 1, 0, 0, 1, 1]),
])
@pytest.mark.parametrize("num_scales", [1, 4])
def test_shapes(patients, lesion_to_patient, num_scales):
    torch.manual_seed(0)
    hda = HierarchicalDualAttention(DIM, num_scales=num_scales, num_heads=2)
    index = torch.tensor(lesion_to_patient, dtype=torch.long)
    out = hda(torch.randn(len(index), DIM, 2, 4, 4), torch.randn(patients, DIM, 4, 4, 4), index)
    assert out.shape == (len(index), DIM)
    assert torch.isfinite(out).all()


def test_each_lesion_sees_only_its_patient_liver():
    torch.manual_seed(0)
    hda = HierarchicalDualAttention(DIM).eval()
    lesions = torch.randn(4, DIM, 2, 4, 4)
    livers = torch.randn(2, DIM, 4, 4, 4)
    index = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        out = hda(lesions, livers, index)
        changed = livers.clone()
        changed[1] += torch.randn_like(changed[1])
        out_changed = hda(lesions, changed, index)
        alone = hda(lesions[2:3], livers[0:1], torch.tensor([0]))
    torch.testing.assert_close(out_changed[[0, 2]], out[[0, 2]])
    assert not torch.allclose(out_changed[[1, 3]], out[[1, 3]])
    torch.testing.assert_close(alone[0], out[2])


def test_output_depends_on_lesion_and_liver_and_backprops():
    torch.manual_seed(0)
    hda = HierarchicalDualAttention(DIM)
    lesions = torch.randn(2, DIM, 2, 4, 4, requires_grad=True)
    livers = torch.randn(1, DIM, 4, 4, 4, requires_grad=True)
    hda(lesions, livers, torch.tensor([0, 0])).square().sum().backward()
    assert lesions.grad.abs().sum() > 0 and livers.grad.abs().sum() > 0
    assert all(p.grad is not None for p in hda.parameters())


def test_bad_inputs():
    hda = HierarchicalDualAttention(DIM)
    with pytest.raises(ValueError, match="lesion_map"):
        hda(torch.randn(2, DIM + 1, 2, 4, 4), torch.randn(1, DIM, 4, 4, 4), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="liver_map"):
        hda(torch.randn(2, DIM, 2, 4, 4), torch.randn(1, DIM, 4, 4), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="lesion_to_patient"):
        hda(torch.randn(2, DIM, 2, 4, 4), torch.randn(1, DIM, 4, 4, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_scales"):
        HierarchicalDualAttention(DIM, num_scales=0)
