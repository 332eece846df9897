"""Connected lesion components of a mask, the first step of seg2det (cascaded paper, §III-A).

The paper's connectivity ("paper") labels 8-connected components in every axial slice and links components of
neighbouring slices that share at least one (y, x) pixel; this equals a 3D structuring element made of the
full 3x3 in-plane neighbourhood plus the two (z +- 1, same y, x) neighbours. 6 / 18 / 26 are also offered.
The components are found inside the bounding box of all lesion voxels, in vectorised passes over the list of
lesion voxels (no per-lesion pass over the volume).
"""
from __future__ import annotations

import cc3d
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components

__all__ = ["CONNECTIVITIES", "lesion_components", "normalise_connectivity"]

#: The connectivities :func:`lesion_components` accepts.
CONNECTIVITIES = ("paper", 6, 18, 26)


def normalise_connectivity(connectivity: str | int) -> str | int:
    """``"paper"``, 6, 18 or 26 (a digit string is read as a number); ValueError for anything else."""
    value = connectivity
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    return value


def lesion_components(mask: np.ndarray, connectivity: str | int
                      ) -> tuple[tuple[slice, slice, slice], tuple[int, int, int], np.ndarray, np.ndarray, int] | None:
    """Connected components of a boolean (Z, Y, X) ``mask`` (``connectivity`` normalised, see
    :func:`normalise_connectivity`); None when the mask is empty.

    Returns ``(box, crop_shape, flat, ids, n)``: the crop of the volume holding every True voxel (with the
    "paper" connectivity one empty row more, when the volume has one), its shape, the raster indices of the
    mask voxels in the crop, their component ids (1..n, numbered in raster order of each component's first
    voxel, like ``scipy.ndimage.label``) and n.
    """
    box = _bounding_box(mask)
    if box is None:
        return None
    if connectivity == "paper":     # keep one empty row of the volume in the crop (see _label_components)
        rows = box[1]
        if rows.stop < mask.shape[1]:
            box = (box[0], slice(rows.start, rows.stop + 1), box[2])
        elif rows.start > 0:
            box = (box[0], slice(rows.start - 1, rows.stop), box[2])
    crop = np.ascontiguousarray(mask[box])
    flat, ids, n = _label_components(crop, connectivity)
    return box, crop.shape, flat, ids, n


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding every True voxel; None for an empty mask."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    plane = mask[zs[0]:zs[-1] + 1].any(axis=0)
    ys = np.flatnonzero(plane.any(axis=1))
    xs = np.flatnonzero(plane.any(axis=0))
    return slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)


def _label_components(mask: np.ndarray, connectivity: str | int) -> tuple[np.ndarray, np.ndarray, int]:
    """Connected components of a C-contiguous boolean (z, y, x) mask.

    Returns the flat indices of the mask voxels (raster order), their component ids (1..n, numbered in
    raster order of each component's first voxel, like ``scipy.ndimage.label``) and n.
    """
    flat = np.flatnonzero(mask)
    if 2 * mask.size < 2 ** 31:
        flat = flat.astype(np.int32)            # halves the memory traffic of everything downstream
    original_flat = flat
    mask = mask.view(np.uint8)      # cc3d is much faster on uint8 than on bool
    if connectivity != "paper":
        labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
        return flat, labels.reshape(-1)[flat], int(n)
    depth, height, width = mask.shape
    # 2D 8-connected components of every slice at once: the slices stacked as one 2D image, which needs an
    # empty row between consecutive slices so that nothing connects across them (lesion_components' crop keeps one)
    if mask[:, 0].any() and mask[:, -1].any():
        padded = np.zeros((depth, height + 1, width), dtype=np.uint8)
        padded[:, :height] = mask
        flat = flat + (flat // (height * width)) * width
        mask, height = padded, height + 1
    plane = height * width
    labels2d, n2d = cc3d.connected_components(mask.reshape(depth * height, width), connectivity=8,
                                              return_N=True)
    labels2d = labels2d.reshape(-1)
    ids2d = labels2d[flat]
    # link 2D components that share a pixel in consecutive slices. Two overlapping x-runs (maximal runs of
    # voxels along x) of slices z and z + 1 overlap at the start of one of them, so testing the pixel above
    # and below every run start finds every link
    run_start = np.ones(flat.size, dtype=bool)
    run_start[1:] = (np.diff(flat) != 1) | (flat[1:] % width == 0)
    starts = flat[run_start]
    start_ids = ids2d[run_start]
    up = starts < (depth - 1) * plane
    up_ids = labels2d[starts[up] + plane]
    down = starts >= plane
    down_ids = labels2d[starts[down] - plane]
    rows = np.concatenate((start_ids[up], start_ids[down]))
    cols = np.concatenate((up_ids, down_ids))
    linked = cols != 0
    rows, cols = rows[linked].astype(np.int64), cols[linked].astype(np.int64)
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n2d + 1, n2d + 1)).tocsr()
    # components are numbered in order of their smallest node; node 0 (background) is alone -> 0
    n_graph, component = graph_components(graph, directed=False)
    return original_flat, component[ids2d], int(n_graph - 1)
