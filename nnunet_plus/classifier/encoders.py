"""3D ResNet encoders for the PLUS classifier (E^S for the lesion ROI, E^H for the liver).

Built on dynamic-network-architectures' :class:`ResidualEncoder` with :class:`BasicBlockD` residual blocks
(the ResNet-D variant nnU-Net's residual-encoder U-Nets use). The layout follows the usual video/volume
ResNet-18 (torchvision ``r3d_18``): a single ``3x7x7`` stem convolution with stride ``(1, 2, 2)`` (CT ROIs
and liver inputs have fewer slices than in-plane voxels), then four stages of basic blocks with strides
``1, 2, 2, 2``. The total downsampling is therefore ``(8, 16, 16)`` along ``(z, y, x)``:

* a ``16 x 64 x 64`` (z, y, x) lesion ROI (the paper's 64x64x16) gives a ``2 x 4 x 4`` feature map;
* a ``32 x 64 x 64`` liver input gives ``4 x 4 x 4``.

Normalisation is instance norm by default (nnU-Net's choice): the PLUS batch is two patients with a
variable number of lesions, too few for stable batch statistics, and instance norm makes every lesion's
features independent of the other lesions in the batch. Instance norm needs more than one voxel per
channel: with instance norm the encoder raises a ``ValueError`` when the final map would have a single
voxel (e.g. inputs of at most ``8 x 16 x 16``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

#: Width / depth presets. ``paper`` is ResNet-18 (4 stages x 2 basic blocks, 64-128-256-512); ``tiny`` is a
#: 1-block-per-stage, 8-16-32-64 encoder for CPU tests.
ENCODER_PRESETS: Mapping[str, Mapping[str, tuple[int, ...]]] = {
    "paper": {"widths": (64, 128, 256, 512), "blocks_per_stage": (2, 2, 2, 2)},
    "tiny": {"widths": (8, 16, 32, 64), "blocks_per_stage": (1, 1, 1, 1)},
}

STEM_KERNEL: tuple[int, int, int] = (3, 7, 7)
DEFAULT_STEM_STRIDE: tuple[int, int, int] = (1, 2, 2)
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2)
NORMS: Mapping[str, type[nn.Module]] = {"instance": nn.InstanceNorm3d, "batch": nn.BatchNorm3d}


def encoder_preset(name: str) -> dict[str, tuple[int, ...]]:
    """Return ``{"widths": ..., "blocks_per_stage": ...}`` of a named preset (``"paper"`` or ``"tiny"``)."""
    if name not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; choose one of {sorted(ENCODER_PRESETS)}")
    return {key: tuple(value) for key, value in ENCODER_PRESETS[name].items()}


class ResNetEncoder3d(nn.Module):
    """A 3D ResNet (basic blocks) returning its last feature map.

    Parameters
    ----------
    in_channels : number of input channels (image channels, plus one for a mask channel if any).
    widths : channels of the four stages (the output has ``widths[-1]`` channels).
    blocks_per_stage : number of basic blocks in each stage.
    stem_stride : stride of the stem convolution along ``(z, y, x)``.
    norm : ``"instance"`` (default) or ``"batch"``.

    Input ``(N, in_channels, Z, Y, X)``; output ``(N, widths[-1], Z', Y', X')`` with
    ``Z' = ceil(Z / (stem_z * 8))`` etc. (``(2, 4, 4)`` for a ``16 x 64 x 64`` input with the default stem).
    An empty batch (``N = 0``) gives an empty output. An input whose size is not a multiple of the total
    stride is zero-padded at the high end of each axis (the ResNet-D skip path needs even sizes at every
    strided stage).
    """

    def __init__(self, in_channels: int, *, widths: Sequence[int], blocks_per_stage: Sequence[int],
                 stem_stride: Sequence[int] = DEFAULT_STEM_STRIDE, norm: str = "instance") -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        blocks_per_stage = tuple(int(b) for b in blocks_per_stage)
        stem_stride = tuple(int(s) for s in stem_stride)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if len(widths) != len(STAGE_STRIDES) or len(blocks_per_stage) != len(STAGE_STRIDES):
            raise ValueError(f"widths and blocks_per_stage need {len(STAGE_STRIDES)} entries, got "
                             f"{widths} and {blocks_per_stage}")
        if min(widths) < 1 or min(blocks_per_stage) < 1:
            raise ValueError(f"widths and blocks_per_stage must be positive, got {widths} and {blocks_per_stage}")
        if len(stem_stride) != 3 or min(stem_stride) < 1:
            raise ValueError(f"stem_stride must be three positive ints (z, y, x), got {stem_stride}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
        norm_op = NORMS[norm]
        norm_kwargs = {"eps": 1e-5, "affine": True}
        nonlin_kwargs = {"inplace": True}
        self.in_channels = int(in_channels)
        self.norm = norm
        self.widths = widths
        self.out_channels = widths[-1]
        self.total_stride = tuple(s * 2 ** (len(STAGE_STRIDES) - 1) for s in stem_stride)
        self.stem = ConvDropoutNormReLU(nn.Conv3d, self.in_channels, widths[0], STEM_KERNEL, stem_stride, False,
                                        norm_op, norm_kwargs, None, None, nn.ReLU, nonlin_kwargs)
        self.body = ResidualEncoder(
            widths[0], n_stages=len(widths), features_per_stage=widths, conv_op=nn.Conv3d, kernel_sizes=3,
            strides=STAGE_STRIDES, n_blocks_per_stage=blocks_per_stage, conv_bias=False, norm_op=norm_op,
            norm_op_kwargs=norm_kwargs, nonlin=nn.ReLU, nonlin_kwargs=nonlin_kwargs, block=BasicBlockD,
            return_skips=False, disable_default_stem=True,
        )

    def output_shape(self, spatial_shape: Sequence[int]) -> tuple[int, int, int]:
        """Spatial shape ``(Z', Y', X')`` of the feature map for an input of spatial shape ``(Z, Y, X)``."""
        return tuple(-(-int(n) // s) for n, s in zip(spatial_shape, self.total_stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, Z, Y, X), got {tuple(x.shape)}")
        out_shape = self.output_shape(x.shape[2:])
        if x.shape[0] == 0:  # normalisation layers reject empty batches
            return x.new_zeros((0, self.out_channels, *out_shape))
        if self.norm == "instance" and _prod(out_shape) < 2:
            raise ValueError(f"input of spatial shape {tuple(x.shape[2:])} leaves a single voxel after the total "
                             f"stride {self.total_stride}; use larger inputs")
        padding = []
        for n, m, s in zip(reversed(x.shape[2:]), reversed(out_shape), reversed(self.total_stride)):
            padding += [0, m * s - int(n)]
        if any(padding):
            x = nn.functional.pad(x, padding)
        return self.body(self.stem(x))


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out
