"""Tests of the 3D ResNet encoders of the PLUS classifier."""
from __future__ import annotations

import pytest
import torch

from nnunet_plus.classifier.encoders import ResNetEncoder3d, encoder_preset


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("shape, expected", [
    ((16, 64, 64), (2, 4, 4)),  # paper ROI (z, y, x)
    ((32, 64, 64), (4, 4, 4)),  # liver input
    ((8, 32, 32), (1, 2, 2)),  # test crop
    ((9, 33, 31), (2, 3, 2)),  # odd sizes: zero-padded up to a multiple of the stride (8, 16, 16)
])
def test_output_shape(shape, expected):
    torch.manual_seed(0)
    encoder = ResNetEncoder3d(2, **encoder_preset("tiny"))
    assert encoder.total_stride == (8, 16, 16)
    assert encoder.output_shape(shape) == expected
    out = encoder(torch.randn(2, 2, *shape))
    assert out.shape == (2, 64, *expected)


def test_empty_batch():
    encoder = ResNetEncoder3d(3, **encoder_preset("tiny"))
    assert encoder(torch.zeros(0, 3, 8, 32, 32)).shape == (0, 64, 1, 2, 2)


def test_presets():
    assert encoder_preset("paper") == {"widths": (64, 128, 256, 512), "blocks_per_stage": (2, 2, 2, 2)}
    assert encoder_preset("tiny") == {"widths": (8, 16, 32, 64), "blocks_per_stage": (1, 1, 1, 1)}
    paper = ResNetEncoder3d(2, **encoder_preset("paper"))
    stages = paper.body.stages
    assert [len(stage.blocks) for stage in stages] == [2, 2, 2, 2]
    assert paper.out_channels == 512
    # torchvision's r3d_18 backbone (same layout, 3 input channels, BatchNorm) has 33.17 M parameters
    assert 33.0e6 < _params(paper) < 33.3e6
    assert _params(ResNetEncoder3d(2, **encoder_preset("tiny"))) < 0.3e6


def test_single_voxel_output():
    encoder = ResNetEncoder3d(1, **encoder_preset("tiny"))
    with pytest.raises(ValueError, match="single voxel"):
        encoder(torch.randn(2, 1, 8, 16, 16))
    batch_norm = ResNetEncoder3d(1, **encoder_preset("tiny"), norm="batch")
    assert batch_norm(torch.randn(2, 1, 8, 16, 16)).shape == (2, 64, 1, 1, 1)


@pytest.mark.parametrize("kwargs", [
    {"widths": (8, 16, 32), "blocks_per_stage": (1, 1, 1, 1)},
    {"widths": (8, 16, 32, 64), "blocks_per_stage": (1, 0, 1, 1)},
    {"widths": (8, 16, 32, 64), "blocks_per_stage": (1, 1, 1, 1), "norm": "group"},
    {"widths": (8, 16, 32, 64), "blocks_per_stage": (1, 1, 1, 1), "stem_stride": (1, 2)},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ResNetEncoder3d(1, **kwargs)


def test_bad_input_and_preset():
    encoder = ResNetEncoder3d(2, **encoder_preset("tiny"))
    with pytest.raises(ValueError, match="expected input"):
        encoder(torch.randn(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match="unknown encoder preset"):
        encoder_preset("huge")
