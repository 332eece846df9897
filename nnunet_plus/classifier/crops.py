"""Pure array functions that turn an image volume into the PLUS classifier's inputs.

Axis order is numpy ``(z, y, x)`` and spacings are in mm in that order (nnU-Net's convention). Images are
``(C, Z, Y, X)`` (all channels kept: multi-phase input works), masks ``(Z, Y, X)``.

Documented choices (the paper is silent on them):

* **Intensity** (:func:`normalise_intensity`): CT channels are clipped to the abdominal window
  ``[-200, 300]`` HU and mapped linearly to ``[-1, 1]`` (``(x - 50) / 250``); other modalities are
  z-scored per channel (over a mask when one is given). Air and everything below -200 HU becomes -1.
* **Lesion ROI field of view** (``roi_fov``): the crop is centred on the centre of the lesion's bounding box;
  channels are the image channels followed by the lesion's own mask (other lesions are not marked).

  - ``"lesion"`` (lesion scale, the default of new candidate banks): a **cube in mm** of side
    ``L = max(roi_min_mm, roi_context * e)``, ``e`` the longest side of the lesion's bounding box in mm
    (voxel count x spacing), resampled to ``roi_shape`` voxels (default ``(16, 32, 32)``, output spacing
    ``L / roi_shape`` per axis). A cube rather than per-axis extents keeps the lesion's shape (a flat lesion
    stays flat; size is kept in ``roi_scale``); with ``(16, 32, 32)`` the z spacing is twice the in-plane one,
    which the encoders' ``(1, 2, 2)`` stem turns into isotropic features. ``roi_context = 2`` (default) gives
    half the lesion's extent of tissue on each side of its longest axis; the floor ``roi_min_mm = 32`` keeps
    the surroundings of small lesions (a 10 mm lesion sits in a 32 mm cube). The lesion then fills a large
    share of the crop whatever its size: at 6 x 5 x 5 mm, a 2 x 2 x 2 voxel lesion is ~4 % of the mask
    channel's mass, against ~0.01 % in the fixed 16 x 64 x 64 ROI. The liver input (below) keeps the
    organ-level context.
  - ``"fixed"`` (the rule of banks made before ``roi_fov`` existed): ``roi_shape`` voxels (default
    ``(16, 64, 64)``, the paper's 64x64x16) at the nnU-Net target spacing, zoomed out only for large lesions
    (``large_lesion`` below).

  Image: trilinear; mask: linear by default (a soft mask in [0, 1] that keeps partial volume), nearest as an
  option. Downsampling is anti-aliased (Gaussian, sigma = (step - 1) / 2 input voxels, skimage's rule);
  upsampling is plain (tri)linear. Where no resampling is needed along an axis (same spacing), samples are
  snapped to the input grid so the crop is an exact copy (the centre may then move by half a voxel). The
  sampling itself is :mod:`nnunet_plus.classifier.resampling`.
* **ROI scale** (``roi_scale``, returned by :func:`lesion_grid` and :func:`candidate_rois`): the crop's zoom
  relative to the target spacing, the geometric mean over the axes of ``output spacing / target spacing``
  (the cube root of the field of view's volume over that of ``roi_shape`` voxels at the target spacing); 1 =
  no zoom, < 1 = finer than the target spacing (small lesions under ``"lesion"``). It keeps the size
  information a fixed output grid loses.
* **Lesions larger than the ROI** (``large_lesion``, ``roi_fov="fixed"`` only): ``"zoom"`` (default)
  enlarges the field of view by one factor ``s >= 1`` on all axes (aspect kept) so that the bounding box plus
  ``margin`` times its size on each side fits, and resamples that field of view to ``roi_shape`` (the
  effective spacing is ``s * target_spacing``, ``roi_scale = s``); ``"crop"`` keeps the fixed field of view
  and cuts the lesion.
* **Borders**: the ROI is padded where it leaves the volume: ``pad_mode="constant"`` with ``pad_value``
  (default: each channel's minimum, i.e. air / the background value), or ``"edge"`` (replicate). Masks are
  padded with 0.
* **Liver input** (:func:`liver_input`): voxels outside the liver region are set to ``fill_value``
  (default each channel's minimum, so the liver outline stays visible), the volume is cropped to the
  region's bounding box plus ``margin`` and resampled to ``shape`` (default ``(32, 64, 64)``). ``"fit"``
  (default) keeps the physical aspect ratio: a cube-shaped field of view (side = the bounding box's longest
  physical side plus margin) sampled with ``shape`` voxels, so a 64-voxel in-plane grid spans the same
  length as the 32-slice axis; liver shape (shrunken, enlarged, nodular) is preserved.
  ``"stretch"`` maps the bounding box to ``shape`` axis by axis.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from nnunet_plus.classifier.resampling import SamplingGrid, block_bounds, padded_block, resample_block

DEFAULT_ROI_SHAPE: tuple[int, int, int] = (16, 64, 64)        # roi_fov="fixed"
DEFAULT_LESION_ROI_SHAPE: tuple[int, int, int] = (16, 32, 32)  # roi_fov="lesion"
DEFAULT_ROI_CONTEXT: float = 2.0
DEFAULT_ROI_MIN_MM: float = 32.0
ROI_FOV_RULES: tuple[str, ...] = ("lesion", "fixed")
DEFAULT_LIVER_SHAPE: tuple[int, int, int] = (32, 64, 64)
DEFAULT_CT_WINDOW: tuple[float, float] = (-200.0, 300.0)
NORMALISATIONS: tuple[str, ...] = ("ct", "zscore", "none")
LARGE_LESION_RULES: tuple[str, ...] = ("zoom", "crop")
LIVER_FIT_MODES: tuple[str, ...] = ("fit", "stretch")


# ---- intensity --------------------------------------------------------------------------------------------
def normalise_intensity(image: np.ndarray, *, scheme: str | Sequence[str] = "ct",
                        ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise each channel of ``image`` (C, Z, Y, X); returns a new float32 array of the same shape.

    ``scheme`` is one name for all channels or one per channel: ``"ct"`` clips to ``ct_window`` (HU) and maps
    it linearly to [-1, 1]; ``"zscore"`` subtracts the mean and divides by the standard deviation computed
    over ``mask`` (Z, Y, X) voxels when given and non-empty, else over the whole channel (std 0 -> 1);
    ``"none"`` only casts.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {image.shape}")
    schemes = [scheme] * image.shape[0] if isinstance(scheme, str) else list(scheme)
    if len(schemes) != image.shape[0]:
        raise ValueError(f"{len(schemes)} normalisation schemes for {image.shape[0]} channels")
    unknown = sorted(set(schemes) - set(NORMALISATIONS))
    if unknown:
        raise ValueError(f"unknown normalisation {unknown}; choose from {NORMALISATIONS}")
    lo, hi = (float(v) for v in ct_window)
    if not hi > lo:
        raise ValueError(f"ct_window must be (low, high) with high > low, got {tuple(ct_window)}")
    if mask is not None and mask.shape != image.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[1:]}")
    use_mask = mask is not None and bool(np.any(mask))
    out = np.empty(image.shape, dtype=np.float32)
    for c, name in enumerate(schemes):
        channel = image[c].astype(np.float32)
        if name == "ct":
            np.clip(channel, lo, hi, out=channel)
            channel = (channel - (lo + hi) / 2.0) / ((hi - lo) / 2.0)
        elif name == "zscore":
            values = channel[mask.astype(bool)] if use_mask else channel
            mean = float(values.mean(dtype=np.float64))
            std = float(values.std(dtype=np.float64))
            channel = (channel - mean) / (std if std > 0 else 1.0)
        out[c] = channel
    return out


# ---- grids ------------------------------------------------------------------------------------------------
def _check_3(name: str, values: Sequence[float], *, positive: bool = True) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3 or (positive and any(not v > 0 for v in values)):
        raise ValueError(f"{name} must be three positive numbers (z, y, x), got {values}")
    return values


def _check_shape(name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be three positive integers (z, y, x), got {shape}")
    return shape


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """``[z0, y0, x0, z1, y1, x1]`` (end exclusive) of the non-zero voxels of ``mask`` (Z, Y, X)."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be (Z, Y, X), got shape {mask.shape}")
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(np.any(mask, axis=other))
        if idx.size == 0:
            raise ValueError("mask is empty: no voxel to take a bounding box of")
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return (*lo, *hi)


def default_roi_shape(roi_fov: str) -> tuple[int, int, int]:
    """The ROI shape of a field-of-view rule: ``(16, 32, 32)`` for ``"lesion"``, ``(16, 64, 64)`` for ``"fixed"``."""
    if roi_fov not in ROI_FOV_RULES:
        raise ValueError(f"unknown roi_fov rule {roi_fov!r}; choose from {ROI_FOV_RULES}")
    return DEFAULT_LESION_ROI_SHAPE if roi_fov == "lesion" else DEFAULT_ROI_SHAPE


def check_roi_context(roi_context: float, roi_min_mm: float) -> tuple[float, float]:
    """Validate the lesion rule's ``roi_context`` (>= 1) and ``roi_min_mm`` (> 0); returns them as floats."""
    roi_context, roi_min_mm = float(roi_context), float(roi_min_mm)
    if not (math.isfinite(roi_context) and roi_context >= 1.0):
        raise ValueError(f"roi_context must be a finite number >= 1 (field of view / lesion extent; below 1 the "
                         f"crop would cut the lesion), got {roi_context}")
    if not (math.isfinite(roi_min_mm) and roi_min_mm > 0.0):
        raise ValueError(f"roi_min_mm must be a finite number of mm > 0, got {roi_min_mm}")
    return roi_context, roi_min_mm


def lesion_grid(bbox: Sequence[int], *, spacing: Sequence[float], target_spacing: Sequence[float],
                roi_shape: Sequence[int] | None = None, roi_fov: str = "fixed",
                roi_context: float = DEFAULT_ROI_CONTEXT, roi_min_mm: float = DEFAULT_ROI_MIN_MM,
                large_lesion: str = "zoom", margin: float = 0.25) -> tuple[SamplingGrid, float]:
    """The ROI grid of a lesion with bounding box ``bbox`` ``[z0, y0, x0, z1, y1, x1]`` (end exclusive).

    Parameters
    ----------
    bbox : the lesion's bounding box in input voxels.
    spacing : input voxel spacing (z, y, x) mm.
    target_spacing : nnU-Net's target spacing (z, y, x) mm (the ``"fixed"`` rule's output spacing and the
        reference of the returned scale).
    roi_shape : output voxels (z, y, x); default :func:`default_roi_shape` of ``roi_fov``.
    roi_fov : ``"fixed"`` (``roi_shape`` voxels at the target spacing, zoomed out for large lesions by
        ``large_lesion`` / ``margin``) or ``"lesion"`` (a cube of side ``max(roi_min_mm, roi_context x the
        bounding box's longest side in mm)``); see the module docstring.
    roi_context, roi_min_mm : the ``"lesion"`` rule's field of view / lesion extent ratio (>= 1) and floor (mm).
    large_lesion, margin : the ``"fixed"`` rule's large-lesion rule (``"zoom"`` / ``"crop"``) and context margin.

    Returns
    -------
    ``(grid, scale)``: the grid is centred on the box centre; ``scale`` is the zoom relative to the target
    spacing (geometric mean over the axes of output spacing / target spacing). Under ``"fixed"`` it is 1
    unless ``large_lesion="zoom"`` and the box plus ``margin`` times its extent on each side exceeds the
    field of view ``roi_shape * target_spacing``; the output spacing is then ``scale * target_spacing``.
    """
    spacing = _check_3("spacing", spacing)
    target_spacing = _check_3("target_spacing", target_spacing)
    roi_shape = _check_shape("roi_shape", default_roi_shape(roi_fov) if roi_shape is None else roi_shape)
    roi_context, roi_min_mm = check_roi_context(roi_context, roi_min_mm)
    if large_lesion not in LARGE_LESION_RULES:
        raise ValueError(f"unknown large_lesion rule {large_lesion!r}; choose from {LARGE_LESION_RULES}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if len(bbox) != 6 or any(int(bbox[a + 3]) <= int(bbox[a]) for a in range(3)):
        raise ValueError(f"bbox must be [z0, y0, x0, z1, y1, x1] with z1 > z0 etc., got {list(bbox)}")
    lo = [int(v) for v in bbox[:3]]
    hi = [int(v) for v in bbox[3:]]
    centre = tuple((lo[a] + hi[a] - 1) / 2.0 for a in range(3))
    extent = [(hi[a] - lo[a]) * spacing[a] for a in range(3)]
    if roi_fov == "lesion":
        side = max(roi_min_mm, roi_context * max(extent))
        out_spacing = [side / roi_shape[a] for a in range(3)]
        scale = math.prod(out_spacing[a] / target_spacing[a] for a in range(3)) ** (1.0 / 3.0)
    else:
        scale = 1.0
        if large_lesion == "zoom":
            needed = [extent[a] * (1.0 + 2.0 * margin) for a in range(3)]
            fov = [roi_shape[a] * target_spacing[a] for a in range(3)]
            scale = max(1.0, max(needed[a] / fov[a] for a in range(3)))
        out_spacing = [scale * target_spacing[a] for a in range(3)]
    step = tuple(out_spacing[a] / spacing[a] for a in range(3))
    return SamplingGrid(centre=centre, step=step, shape=roi_shape), scale


def _pad_values(image: np.ndarray, pad_value: float | Sequence[float] | None) -> list[float]:
    if pad_value is None:
        return [float(image[c].min()) for c in range(image.shape[0])]
    if np.ndim(pad_value) == 0:
        return [float(pad_value)] * image.shape[0]
    values = [float(v) for v in pad_value]
    if len(values) != image.shape[0]:
        raise ValueError(f"{len(values)} pad values for {image.shape[0]} channels")
    return values


# ---- lesion ROIs -------------------------------------------------------------------------------------------
def candidate_rois(image: np.ndarray, instances: np.ndarray, lesion_ids: Sequence[int],
                   bboxes: Sequence[Sequence[int]], *, spacing: Sequence[float], target_spacing: Sequence[float],
                   roi_shape: Sequence[int] | None = None, roi_fov: str = "fixed",
                   roi_context: float = DEFAULT_ROI_CONTEXT, roi_min_mm: float = DEFAULT_ROI_MIN_MM,
                   large_lesion: str = "zoom", margin: float = 0.25, pad_mode: str = "constant",
                   pad_value: float | Sequence[float] | None = None,
                   mask_order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """ROIs of several lesions of one instance map (see :func:`lesion_roi` for the rules).

    ``instances`` (Z, Y, X) int: lesion ``lesion_ids[i]`` has bounding box ``bboxes[i]``. Returns
    ``(rois (N, C + 1, *roi_shape) float32, scales (N,) float32)`` (``scales``: see :func:`lesion_grid`); only
    the blocks around the lesions are read.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {image.shape}")
    if instances.shape != image.shape[1:]:
        raise ValueError(f"instance map shape {instances.shape} does not match image shape {image.shape[1:]}")
    if len(lesion_ids) != len(bboxes):
        raise ValueError(f"{len(lesion_ids)} lesion ids but {len(bboxes)} bounding boxes")
    if mask_order not in (0, 1):
        raise ValueError(f"mask_order must be 0 (nearest) or 1 (linear), got {mask_order}")
    roi_shape = _check_shape("roi_shape", default_roi_shape(roi_fov) if roi_shape is None else roi_shape)
    pads = _pad_values(image, pad_value)
    rois = np.empty((len(lesion_ids), image.shape[0] + 1, *roi_shape), dtype=np.float32)
    scales = np.empty(len(lesion_ids), dtype=np.float32)
    for i, (lesion_id, bbox) in enumerate(zip(lesion_ids, bboxes)):
        grid, scales[i] = lesion_grid(bbox, spacing=spacing, target_spacing=target_spacing, roi_shape=roi_shape,
                                      roi_fov=roi_fov, roi_context=roi_context, roi_min_mm=roi_min_mm,
                                      large_lesion=large_lesion, margin=margin)
        lo, hi, sigma = block_bounds(grid, True)
        blocks = [padded_block(image[c], lo, hi, pad_mode=pad_mode, pad_value=pads[c]).astype(np.float32, copy=False)
                  for c in range(image.shape[0])]
        mask = padded_block(instances, lo, hi, pad_mode="constant", pad_value=0) == lesion_id
        if mask_order == 1:
            rois[i] = resample_block(np.stack([*blocks, mask]), grid, lo, sigma, order=1)
        else:
            rois[i, :-1] = resample_block(np.stack(blocks), grid, lo, sigma, order=1)
            rois[i, -1] = resample_block(mask, grid, lo, sigma, order=0)
    return rois, scales


def lesion_roi(image: np.ndarray, lesion_mask: np.ndarray, *, spacing: Sequence[float],
               target_spacing: Sequence[float], roi_shape: Sequence[int] | None = None, roi_fov: str = "fixed",
               roi_context: float = DEFAULT_ROI_CONTEXT, roi_min_mm: float = DEFAULT_ROI_MIN_MM,
               large_lesion: str = "zoom", margin: float = 0.25, pad_mode: str = "constant",
               pad_value: float | Sequence[float] | None = None, mask_order: int = 1) -> np.ndarray:
    """The classifier's lesion input: ``(C + 1, *roi_shape)`` float32 = image channels + the lesion mask.

    Parameters
    ----------
    image : (C, Z, Y, X) array with voxel ``spacing`` (z, y, x) mm (normalise it first).
    lesion_mask : (Z, Y, X) bool, the lesion's voxels (non-empty).
    target_spacing : nnU-Net's target spacing (z, y, x) mm: the ``"fixed"`` rule's ROI voxel spacing.
    roi_shape : ROI voxels (z, y, x), default (16, 64, 64) for ``"fixed"``, (16, 32, 32) for ``"lesion"``.
    roi_fov : ``"fixed"`` (default here; ``roi_shape`` voxels at the target spacing) or ``"lesion"`` (a cube
        of side ``max(roi_min_mm, roi_context x`` the bounding box's longest side in mm``)``, resampled to
        ``roi_shape``); the candidate bank's default is ``"lesion"`` (:class:`~nnunet_plus.classifier.
        bank_settings.BankSettings`).
    roi_context, roi_min_mm : the ``"lesion"`` rule's ratio field of view / lesion extent (>= 1) and floor (mm).
    large_lesion : ``"fixed"`` rule only: ``"zoom"`` (enlarge the field of view to the bounding box +
        ``margin`` x extent on each side, aspect kept, resampled to ``roi_shape``) or ``"crop"`` (fixed field of
        view).
    pad_mode, pad_value : outside the volume, ``"constant"`` ``pad_value`` (default per-channel minimum) or
        ``"edge"``. The mask is padded with 0.
    mask_order : 1 = linear (soft mask, default), 0 = nearest (binary).
    """
    lesion_mask = np.asarray(lesion_mask)
    if lesion_mask.ndim != 3:
        raise ValueError(f"lesion_mask must be (Z, Y, X), got shape {lesion_mask.shape}")
    bbox = bounding_box(lesion_mask)
    rois, _ = candidate_rois(image, lesion_mask.astype(np.uint8), [1], [bbox], spacing=spacing,
                             target_spacing=target_spacing, roi_shape=roi_shape, roi_fov=roi_fov,
                             roi_context=roi_context, roi_min_mm=roi_min_mm, large_lesion=large_lesion,
                             margin=margin, pad_mode=pad_mode, pad_value=pad_value, mask_order=mask_order)
    return rois[0]


# ---- liver input -------------------------------------------------------------------------------------------
def liver_grid(bbox: Sequence[int], *, spacing: Sequence[float], shape: Sequence[int] = DEFAULT_LIVER_SHAPE,
               mode: str = "fit", margin: float = 0.05) -> SamplingGrid:
    """The liver input's grid over the liver region's bounding box ``bbox`` (see the module docstring)."""
    spacing = _check_3("spacing", spacing)
    shape = _check_shape("shape", shape)
    if mode not in LIVER_FIT_MODES:
        raise ValueError(f"unknown liver input mode {mode!r}; choose from {LIVER_FIT_MODES}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    lo = [int(v) for v in bbox[:3]]
    hi = [int(v) for v in bbox[3:]]
    extent = [(hi[a] - lo[a]) * spacing[a] * (1.0 + 2.0 * margin) for a in range(3)]
    if mode == "fit":
        out_spacing = [max(extent) / shape[a] for a in range(3)]
    else:
        out_spacing = [extent[a] / shape[a] for a in range(3)]
    return SamplingGrid(centre=tuple((lo[a] + hi[a] - 1) / 2.0 for a in range(3)),
                        step=tuple(out_spacing[a] / spacing[a] for a in range(3)), shape=shape)


def liver_input(image: np.ndarray, liver_region_mask: np.ndarray, *, spacing: Sequence[float],
                shape: Sequence[int] = DEFAULT_LIVER_SHAPE, mode: str = "fit", margin: float = 0.05,
                fill_value: float | Sequence[float] | None = None) -> np.ndarray:
    """The classifier's liver input: ``(C, *shape)`` float32.

    ``image`` (C, Z, Y, X) with voxel ``spacing`` (z, y, x) mm; ``liver_region_mask`` (Z, Y, X) = liver and
    lesion voxels of the predicted label map (non-empty). Voxels outside the region are set to ``fill_value``
    (default per-channel minimum), the region's bounding box plus ``margin`` is resampled (trilinear,
    anti-aliased) to ``shape``: ``mode="fit"`` keeps the physical aspect (cube field of view), ``"stretch"``
    fills ``shape`` axis by axis.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {image.shape}")
    liver_region_mask = np.asarray(liver_region_mask)
    if liver_region_mask.shape != image.shape[1:]:
        raise ValueError(f"liver mask shape {liver_region_mask.shape} does not match image shape "
                         f"{image.shape[1:]}")
    grid = liver_grid(bounding_box(liver_region_mask), spacing=spacing, shape=shape, mode=mode, margin=margin)
    fills = _pad_values(image, fill_value)
    lo, hi, sigma = block_bounds(grid, True)
    inside = padded_block(liver_region_mask.astype(bool, copy=False), lo, hi, pad_mode="constant",
                           pad_value=0).astype(bool)
    outside = ~inside
    blocks = np.empty((image.shape[0], *inside.shape), dtype=np.float32)
    for c in range(image.shape[0]):
        blocks[c] = padded_block(image[c], lo, hi, pad_mode="constant", pad_value=fills[c])
        blocks[c][outside] = fills[c]
    return resample_block(blocks, grid, lo, sigma, order=1)
