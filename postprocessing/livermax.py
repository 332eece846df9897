"""LiverMax (LIDIA §2.2): patient-level lesion probabilities from the voxel softmax.

For every lesion type, the patient probability is the maximum softmax of that type over all voxels inside
the liver. The liver region is taken from the predicted label map (liver labels plus lesion labels, so that
lesions replacing liver parenchyma count), optionally dilated by a physical margin so that lesions bulging
out of the liver edge count too.
"""
from __future__ import annotations

import math
from typing import Collection, Mapping, Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

from nnunet_plus.postprocessing.multi_sensitivity import is_torch_tensor
from nnunet_plus.postprocessing.seg2det import label_mask

__all__ = ["liver_max", "liver_region", "patient_probabilities"]


def liver_region(label_map: np.ndarray, labels: Sequence[int], *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 dilate_mm: float = 0.0) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """The region of ``labels`` in ``label_map``, dilated by ``dilate_mm`` (Euclidean, in mm).

    Returns ``(box, mask)``: a bounding box (3 slices) and the boolean region inside it, or None when no
    voxel has one of the labels. Voxels outside the box are outside the region.
    """
    region = label_mask(label_map, labels)
    zs = np.flatnonzero(region.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    plane = region[zs[0]:zs[-1] + 1].any(axis=0)
    ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    low = np.array([zs[0], ys[0], xs[0]])
    high = np.array([zs[-1], ys[-1], xs[-1]]) + 1
    if dilate_mm > 0:
        margin = np.array([math.floor(dilate_mm / s) for s in spacing])
        low = np.maximum(low - margin, 0)
        high = np.minimum(high + margin, region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    crop = region[box]
    if dilate_mm > 0:
        # every voxel within dilate_mm of the region lies inside the box grown by the margin
        crop = distance_transform_edt(~crop, sampling=spacing) <= dilate_mm
    return box, crop


def _masked_max(channel, box: tuple[slice, slice, slice], region: np.ndarray) -> float:
    """Max of a (Z, Y, X) numpy array or torch tensor over ``region`` inside ``box``."""
    if is_torch_tensor(channel):
        import torch

        values = channel[box][torch.from_numpy(region).to(channel.device)]
        return float(values.max()) if values.numel() else 0.0
    return float(np.max(channel[box], where=region, initial=0.0))


def liver_max(probabilities, label_map: np.ndarray, *, liver_labels: Collection[int],
              lesion_labels: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0),
              dilate_mm: float = 0.0) -> dict[int, float]:
    """Per lesion label, the maximum probability over the liver region.

    Parameters
    ----------
    probabilities : (C, Z, Y, X) softmax, numpy or torch (any device). Not modified.
    label_map : (Z, Y, X) predicted label map defining the region (liver labels + lesion labels).
    liver_labels, lesion_labels : label values (= channel indices).
    spacing : voxel size (z, y, x) in mm, for the dilation.
    dilate_mm : grow the region by this distance (mm, Euclidean with the anisotropic spacing).

    Returns
    -------
    ``{lesion label: max probability}``; 0.0 for every label when the region is empty.
    """
    label_map = np.asarray(label_map)
    lesions = [int(v) for v in lesion_labels]
    livers = [int(v) for v in liver_labels]
    if not lesions or not livers:
        raise ValueError("liver_labels and lesion_labels must both be non-empty")
    shape = tuple(probabilities.shape)
    if len(shape) != 4 or shape[1:] != label_map.shape or shape[0] <= max(lesions):
        raise ValueError(f"probabilities must have shape (C, {', '.join(map(str, label_map.shape))}) with "
                         f"C > {max(lesions)}, got {shape}")
    if len(spacing) != 3 or any(not (float(s) > 0) for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {tuple(spacing)}")
    if not dilate_mm >= 0:
        raise ValueError(f"dilate_mm must be >= 0, got {dilate_mm}")
    found = liver_region(label_map, livers + lesions, spacing=tuple(float(s) for s in spacing),
                         dilate_mm=float(dilate_mm))
    if found is None:
        return {label: 0.0 for label in lesions}
    box, region = found
    return {label: _masked_max(probabilities[label], box, region) for label in lesions}


def patient_probabilities(livermax: Mapping[int, float], *, malignant_labels: Collection[int],
                          benign_labels: Collection[int]) -> dict[str, float]:
    """Patient probabilities ``{"tumor", "malignant", "benign"}``: maxima of LiverMax over all lesion
    labels, the malignant ones and the benign ones (0.0 for an empty set)."""
    values = {int(k): float(v) for k, v in livermax.items()}
    missing = sorted({int(v) for v in [*malignant_labels, *benign_labels]} - set(values))
    if missing:
        raise ValueError(f"label(s) {missing} have no LiverMax value (known: {sorted(values)})")
    return {
        "tumor": max(values.values(), default=0.0),
        "malignant": max((values[int(v)] for v in malignant_labels), default=0.0),
        "benign": max((values[int(v)] for v in benign_labels), default=0.0),
    }
