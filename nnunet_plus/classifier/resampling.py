"""Resampling a (Z, Y, X) volume on an axis-aligned output grid: the sampling mechanism behind the crops.

Axis order is numpy ``(z, y, x)``; positions and steps are in input voxels. A :class:`SamplingGrid` places
``shape`` output voxels around a centre, ``step`` input voxels apart. Only the block of the volume the grid
covers is read (:func:`block_bounds`, :func:`padded_block`: padded where it leaves the volume, ``"constant"``
or ``"edge"``). Interpolation is (tri)linear or nearest; downsampling is anti-aliased by a Gaussian of sigma
``(step - 1) / 2`` input voxels (skimage's rule, scipy's kernel truncated at 4 sigma, 'nearest' borders),
upsampling is plain. Both steps are one small matrix per axis (separable: :func:`resample_block`). Where the
step is 1 along an axis the samples snap to the input grid, so the output is an exact copy there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PAD_MODES: tuple[str, ...] = ("constant", "edge")
_SNAP_TOL = 1e-6


@dataclass(frozen=True)
class SamplingGrid:
    """An axis-aligned output grid placed in an input volume (numpy order).

    Attributes
    ----------
    centre : input voxel coordinates of the grid's centre.
    step : input voxels per output voxel along each axis (> 1 means downsampling).
    shape : output shape.
    """

    centre: tuple[float, float, float]
    step: tuple[float, float, float]
    shape: tuple[int, int, int]

    def positions(self, axis: int) -> np.ndarray:
        """Input coordinates of the output voxel centres along ``axis`` (snapped when step is 1)."""
        n, step = self.shape[axis], self.step[axis]
        first = self.centre[axis] - (n - 1) / 2.0 * step
        if abs(step - 1.0) < _SNAP_TOL:
            first = math.floor(first + 0.5)
        return first + np.arange(n) * step


def block_bounds(grid: SamplingGrid, antialias: bool) -> tuple[list[int], list[int], list[float]]:
    """Input index range ``[lo, hi)`` per axis that ``grid`` reads (with the smoothing kernel's reach) and the
    Gaussian sigma per axis (input voxels; 0 = no smoothing)."""
    lo, hi, sigma = [], [], []
    for axis in range(3):
        pos = grid.positions(axis)
        s = max(0.0, (grid.step[axis] - 1.0) / 2.0) if antialias else 0.0
        reach = int(4.0 * s + 0.5) + 1 if s > 0 else 0
        lo.append(math.floor(pos[0]) - reach)
        hi.append(math.floor(pos[-1]) + 2 + reach)
        sigma.append(s)
    return lo, hi, sigma


def padded_block(volume: np.ndarray, lo: Sequence[int], hi: Sequence[int], *, pad_mode: str,
                 pad_value: float) -> np.ndarray:
    """``volume[lo:hi]`` of a (Z, Y, X) volume (a copy) with the parts outside the volume padded (constant or
    edge)."""
    if pad_mode == "edge":
        index = [np.clip(np.arange(lo[a], hi[a]), 0, volume.shape[a] - 1) for a in range(3)]
        return volume[np.ix_(*index)]
    dtype = np.result_type(volume.dtype, np.min_scalar_type(pad_value))
    block = np.full([hi[a] - lo[a] for a in range(3)], pad_value, dtype=dtype)
    src = tuple(slice(max(lo[a], 0), min(hi[a], volume.shape[a])) for a in range(3))
    dst = tuple(slice(s.start - lo[a], s.stop - lo[a]) for a, s in enumerate(src))
    if all(s.stop > s.start for s in src):
        block[dst] = volume[src]
    return block


def _gaussian_operator(length: int, sigma: float) -> np.ndarray:
    """(length, length) matrix of a 1D Gaussian filter with 'nearest' borders (scipy's kernel, truncate 4)."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    operator = np.zeros((length, length))
    rows = np.repeat(np.arange(length), offsets.size)
    cols = np.clip(np.arange(length)[:, None] + offsets[None, :], 0, length - 1).ravel()
    np.add.at(operator, (rows, cols), np.tile(weights, length))
    return operator


def _axis_operator(positions: np.ndarray, length: int, sigma: float, order: int) -> np.ndarray:
    """(len(positions), length) matrix: Gaussian smoothing (sigma > 0) then linear / nearest interpolation at
    ``positions`` (block coordinates, clamped to the block)."""
    operator = np.zeros((positions.size, length))
    rows = np.arange(positions.size)
    if order == 0:
        np.add.at(operator, (rows, np.clip(np.floor(positions + 0.5).astype(int), 0, length - 1)), 1.0)
    else:
        floor = np.floor(positions)
        weight = positions - floor
        floor = floor.astype(int)
        np.add.at(operator, (rows, np.clip(floor, 0, length - 1)), 1.0 - weight)
        np.add.at(operator, (rows, np.clip(floor + 1, 0, length - 1)), weight)
    if sigma > 0:
        operator = operator @ _gaussian_operator(length, sigma)
    return operator.astype(np.float32)


def resample_block(block: np.ndarray, grid: SamplingGrid, lo: Sequence[int], sigma: Sequence[float], *,
                   order: int) -> np.ndarray:
    """Anti-alias (order 1, sigma > 0) and interpolate ``block`` (..., Z, Y, X) whose index 0 is input index
    ``lo``; returns float32 (..., *grid.shape). The grid is axis-aligned, so both steps are one small matrix
    per axis (separable)."""
    operators = [_axis_operator(grid.positions(a) - lo[a], block.shape[a - 3], sigma[a] if order == 1 else 0.0,
                                order) for a in range(3)]
    op_z, op_y, op_x = operators
    out = np.matmul(block.astype(np.float32, copy=False), op_x.T)    # (..., Z, Y, X')
    out = np.matmul(op_y, out)                                          # (..., Z, Y', X')
    lead, (n_z, n_y, n_x) = out.shape[:-3], out.shape[-3:]
    out = np.matmul(op_z, out.reshape(*lead, n_z, n_y * n_x))          # (..., Z', Y' X')
    return out.reshape(*lead, op_z.shape[0], n_y, n_x)


def sample_grid(volume: np.ndarray, grid: SamplingGrid, *, order: int = 1, pad_mode: str = "constant",
                pad_value: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Resample one (Z, Y, X) volume on ``grid``; returns ``grid.shape`` float32.

    Only the block the grid covers is read. ``order`` 1 = (tri)linear, 0 = nearest (never smoothed).
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {volume.shape}")
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {pad_mode!r}; choose from {PAD_MODES}")
    lo, hi, sigma = block_bounds(grid, antialias and order == 1)
    block = padded_block(volume, lo, hi, pad_mode=pad_mode, pad_value=pad_value)
    return resample_block(block, grid, lo, sigma, order=order)
