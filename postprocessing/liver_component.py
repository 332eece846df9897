"""The liver is one organ: liver voxels outside the largest connected liver region become background.

nnU-Net decides from cross-validation whether to keep only the largest connected component of a class
(``nnUNetv2_find_best_configuration``); for the liver, anatomy decides. A CPU-trained stage one draws stray
specks of "liver" in the stomach, spleen or body wall; they lower the liver Dice and put background into the
liver region that LiverMax and the classifier's liver input read (benchmarks/RESULTS.md, "Stage one: the liver
as one component").

The liver region is the liver and lesion labels of the base (f = 1) label map; its largest 26-connected
component is kept. Only **liver** voxels outside it are cleared, in every label map: lesion voxels stay
wherever they are, so the lesion candidates (and nnU-Net alone's detections) are unchanged.
"""
from __future__ import annotations

from typing import Sequence

import cc3d
import numpy as np

__all__ = ["keep_largest_liver_component"]


def keep_largest_liver_component(label_maps: np.ndarray, liver_labels: Sequence[int],
                                 lesion_labels: Sequence[int]) -> np.ndarray:
    """Label maps with the liver voxels outside the largest connected liver region set to 0 (background).

    label_maps : (k, Z, Y, X) integer numpy label maps, map 0 the base (f = 1) map; not modified.
    liver_labels, lesion_labels : label values; the region is ``np.isin(label_maps[0], liver + lesion labels)``.
    Returns a new (k, Z, Y, X) array of the same dtype (a copy even when nothing changes).
    """
    maps = np.array(label_maps, copy=True)
    if maps.ndim != 4:
        raise ValueError(f"label_maps must be (k, Z, Y, X), got shape {maps.shape}")
    liver = [int(v) for v in liver_labels]
    region = np.isin(maps[0], liver + [int(v) for v in lesion_labels])
    if not region.any():
        return maps
    components = cc3d.connected_components(region, connectivity=26)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    if np.count_nonzero(sizes) <= 1:
        return maps
    outside = components != int(sizes.argmax())
    for label_map in maps:
        label_map[outside & np.isin(label_map, liver)] = 0
    return maps
