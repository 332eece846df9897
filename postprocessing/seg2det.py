"""seg2det (cascaded paper, §III-A): from a label map to lesion instances with per-lesion properties.

A lesion is a connected component of the union of all lesion labels (not one class at a time). The
paper's connectivity ("paper") labels 8-connected components in every axial slice and links components of
neighbouring slices that share at least one (y, x) pixel; this equals a 3D structuring element made of the
full 3x3 in-plane neighbourhood plus the two (z +- 1, same y, x) neighbours. 6 / 18 / 26 are also offered.

Everything runs in vectorised passes over the list of lesion voxels (found once, inside the bounding box
of all lesion voxels); no per-lesion pass over the volume. The longest axial diameter uses the fact that
the farthest pair of pixels of a slice lies on the convex hull, which is spanned by the end points of the
pixel runs along x, and prunes slices whose bounding-box diagonal cannot beat the best pair found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cc3d
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components

from nnunet_plus.postprocessing.multi_sensitivity import is_torch_tensor

__all__ = ["Detections", "RECORD_KEYS", "label_mask", "seg2det"]

#: Keys of every lesion record, in order.
RECORD_KEYS: tuple[str, ...] = (
    "id", "label", "n_voxels", "volume_mm3", "volume_cm3", "axial_diameter_mm", "sphere_diameter_mm",
    "bbox", "centroid_voxel", "centroid_world", "hu_mean", "hu_std", "hu_min", "hu_max", "prior",
    "max_probability",
)
_CONNECTIVITIES = ("paper", 6, 18, 26)


@dataclass
class Detections:
    """Lesion instances of one label map.

    Attributes
    ----------
    instances : (Z, Y, X) int32, 0 = no lesion, lesion ids 1..N.
    lesions : one JSON-able record per id (keys :data:`RECORD_KEYS`, possibly more), in id order.
    """

    instances: np.ndarray
    lesions: list[dict] = field(default_factory=list)

    def to_dataframe(self):
        """The records as a ``pandas.DataFrame``, one row per lesion (list-valued cells kept as lists)."""
        import pandas as pd

        if not self.lesions:
            return pd.DataFrame(columns=list(RECORD_KEYS))
        return pd.DataFrame.from_records(self.lesions)

    def labels(self) -> dict[int, int]:
        """Lesion id -> lesion label value."""
        return {int(r["id"]): int(r["label"]) for r in self.lesions}


def label_mask(label_map: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Boolean (Z, Y, X) mask of the voxels whose label is one of ``labels``."""
    values = sorted({int(v) for v in labels})
    low, high = values[0], values[-1]
    gaps = sorted(set(range(low, high + 1)) - set(values))
    dtype = label_map.dtype
    # unsigned maps: one subtraction with wrap-around and one comparison test low <= v <= high
    wrap = np.issubdtype(dtype, np.unsignedinteger) and 0 <= low and high <= np.iinfo(dtype).max
    mask = np.empty(label_map.shape, dtype=bool)
    chunk = 8                                     # slices per step: the temporary stays in cache
    scratch = np.empty((min(chunk, label_map.shape[0]),) + label_map.shape[1:], dtype=dtype) if wrap else None
    for z0 in range(0, label_map.shape[0], chunk):
        source, target = label_map[z0:z0 + chunk], mask[z0:z0 + chunk]
        if wrap:
            shifted = np.subtract(source, dtype.type(low), out=scratch[:source.shape[0]])
            np.less_equal(shifted, dtype.type(high - low), out=target)
        else:
            np.greater_equal(source, low, out=target)
            target &= source <= high
        for gap in gaps:
            target &= source != gap
    return mask


def _normalise_connectivity(connectivity: str | int) -> str | int:
    value = connectivity
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value not in _CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {_CONNECTIVITIES}, got {connectivity!r}")
    return value


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding every True voxel; None for an empty mask."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    plane = mask[zs[0]:zs[-1] + 1].any(axis=0)
    ys = np.flatnonzero(plane.any(axis=1))
    xs = np.flatnonzero(plane.any(axis=0))
    return slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)


def _components(mask: np.ndarray, connectivity: str | int) -> tuple[np.ndarray, np.ndarray, int]:
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
    # empty row between consecutive slices so that nothing connects across them (seg2det's crop keeps one)
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


def _gather(volume, flat_index: np.ndarray, coords: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Values of a (Z, Y, X) numpy array or torch tensor at the given voxels, as a numpy array."""
    if is_torch_tensor(volume):
        import torch

        index = torch.from_numpy(flat_index).to(volume.device)
        return volume.reshape(-1)[index].cpu().numpy()
    if volume.flags.c_contiguous:
        return np.take(volume.reshape(-1), flat_index)
    return volume[coords]


def _axial_diameters(flat: np.ndarray, starts: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray,
                     spacing_yx: Sequence[float]) -> np.ndarray:
    """Longest in-plane distance (mm) between voxel centres of each lesion within one slice, (n,).

    ``flat`` are raster indices into a (z, y, x) crop, sorted by lesion (raster order within a lesion);
    ``starts`` is the first position of every lesion; ``z``, ``y``, ``x`` are the in-crop coordinates.
    """
    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    # end points of the runs of consecutive voxels along x (a run never mixes lesions: its voxels touch)
    start = np.ones(flat.size, dtype=bool)
    start[1:] = (np.diff(flat) != 1) | (x[1:] == 0)
    end = np.ones(flat.size, dtype=bool)
    end[:-1] = start[1:]
    keep = np.flatnonzero(start | end)
    e_lesion = np.searchsorted(starts, keep, side="right") - 1
    e_z, e_y, e_x = z[keep], y[keep], x[keep]
    # groups = (lesion, slice), contiguous since a lesion's voxels are in raster order
    first = np.ones(keep.size, dtype=bool)
    first[1:] = (e_lesion[1:] != e_lesion[:-1]) | (e_z[1:] != e_z[:-1])
    g_start = np.flatnonzero(first)
    g_stop = np.append(g_start[1:], keep.size)
    g_lesion = e_lesion[g_start]
    # projections on 8 directions (22.5 degrees apart): the largest extent is a lower bound of the
    # diameter, and the diameter is at most that extent / cos(11.25 deg)
    py, px = e_y * sy, e_x * sx
    lower = np.zeros(g_start.size)
    for angle in np.arange(8) * (np.pi / 8):
        projection = py * math.sin(angle) + px * math.cos(angle)
        extent = np.maximum.reduceat(projection, g_start) - np.minimum.reduceat(projection, g_start)
        np.maximum(lower, extent, out=lower)
    upper = lower / math.cos(np.pi / 16)
    lesion_first_group = np.flatnonzero(np.diff(g_lesion, prepend=-1))
    best = np.maximum.reduceat(lower, lesion_first_group)
    candidates = np.flatnonzero(upper > best[g_lesion])
    candidates = candidates[np.lexsort((-upper[candidates], g_lesion[candidates]))]
    for g in candidates:
        lesion = g_lesion[g]
        if upper[g] <= best[lesion]:
            continue
        gy, gx = py[g_start[g]:g_stop[g]], px[g_start[g]:g_stop[g]]
        d2 = (gy[:, None] - gy[None, :]) ** 2 + (gx[:, None] - gx[None, :]) ** 2
        best[lesion] = max(best[lesion], math.sqrt(float(d2.max())))
    return best


def _check_inputs(label_map: np.ndarray, lesion_labels: Sequence[int], priority: Sequence[int] | None,
                  probabilities, image, spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    if label_map.ndim != 3:
        raise ValueError(f"label_map must be a (Z, Y, X) array, got shape {label_map.shape}")
    if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool):
        raise ValueError(f"label_map must hold integer labels, got dtype {label_map.dtype}")
    lesions = [int(v) for v in lesion_labels]
    if not lesions or len(set(lesions)) != len(lesions):
        raise ValueError(f"lesion_labels must be non-empty without repeats, got {list(lesion_labels)}")
    order = lesions if priority is None else [int(v) for v in priority]
    missing = [v for v in lesions if v not in order]
    if missing:
        raise ValueError(f"priority {order} lacks lesion label(s) {missing}")
    if len(spacing) != 3 or any(not (float(s) > 0) for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {tuple(spacing)}")
    shape = tuple(label_map.shape)
    if probabilities is not None:
        p_shape = tuple(probabilities.shape)
        if len(p_shape) != 4 or p_shape[1:] != shape or p_shape[0] <= max(lesions):
            raise ValueError(f"probabilities must have shape (C, {', '.join(map(str, shape))}) with C > "
                             f"{max(lesions)}, got {p_shape}")
    if image is not None:
        i_shape = tuple(image.shape)
        if i_shape != shape and not (len(i_shape) == 4 and i_shape[1:] == shape):
            raise ValueError(f"image must have shape {shape} or (C, {', '.join(map(str, shape))}), got {i_shape}")
    return lesions, [v for v in order if v in set(lesions)]


def seg2det(label_map: np.ndarray, lesion_labels: Sequence[int], *, priority: Sequence[int] | None = None,
            probabilities=None, image=None, spacing: Sequence[float] = (1.0, 1.0, 1.0),
            origin: Sequence[float] | None = None, direction: Sequence[float] | None = None,
            connectivity: str | int = "paper", min_volume_mm3: float = 0.0) -> Detections:
    """Split a label map into lesion instances and measure each lesion.

    Parameters
    ----------
    label_map : (Z, Y, X) integer label map. Not modified.
    lesion_labels : lesion label values; record ``prior`` follows this order.
    priority : lesion labels, highest first, breaking ties of the voxel vote (default: ``lesion_labels``).
    probabilities : optional (C, Z, Y, X) softmax (numpy or torch) for ``prior`` and ``max_probability``.
    image : optional (Z, Y, X) or (C, Z, Y, X) CT in HU (channel 0 is used) for the ``hu_*`` statistics.
    spacing : voxel size (z, y, x) in mm.
    origin, direction : SimpleITK geometry ((x, y, z) mm and a row-major 3x3) for ``centroid_world``.
    connectivity : ``"paper"`` (default), 6, 18 or 26.
    min_volume_mm3 : lesions smaller than this are dropped; ids stay consecutive.

    Returns
    -------
    :class:`Detections` with the (Z, Y, X) int32 instance map and one record per lesion. Ids follow the
    raster order (z, y, x) of each lesion's first voxel. Diameters are between voxel centres (0 for a
    lesion one voxel wide); ``hu_std`` is the population standard deviation.
    """
    label_map = np.asarray(label_map)
    lesions, order = _check_inputs(label_map, lesion_labels, priority, probabilities, image, spacing)
    connectivity = _normalise_connectivity(connectivity)
    if not min_volume_mm3 >= 0:
        raise ValueError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3}")
    spacing = tuple(float(s) for s in spacing)
    voxel_volume = spacing[0] * spacing[1] * spacing[2]
    if image is not None and image.ndim == 4:
        image = image[0]

    shape = label_map.shape
    instances = np.zeros(shape, dtype=np.int32)
    mask = label_mask(label_map, lesions)
    box = _bounding_box(mask)
    if box is None:
        return Detections(instances, [])
    if connectivity == "paper":     # keep one empty row of the volume in the crop (see _components)
        rows = box[1]
        if rows.stop < shape[1]:
            box = (box[0], slice(rows.start, rows.stop + 1), box[2])
        elif rows.start > 0:
            box = (box[0], slice(rows.start - 1, rows.stop), box[2])
    crop = np.ascontiguousarray(mask[box])
    flat, ids, n = _components(crop, connectivity)
    counts = np.bincount(ids, minlength=n + 1)[1:]
    if min_volume_mm3 > 0:
        kept = counts * voxel_volume >= min_volume_mm3
        if not kept.all():
            renumber = np.zeros(n + 1, dtype=ids.dtype)
            renumber[1:][kept] = np.arange(1, int(kept.sum()) + 1)
            ids = renumber[ids]
            keep = ids > 0
            flat, ids, counts, n = flat[keep], ids[keep], counts[kept], int(kept.sum())
    if n == 0:
        return Detections(instances, [])

    # from here on every per-voxel array is sorted by lesion id (raster order within a lesion), so that
    # per-lesion reductions are np.ufunc.reduceat over contiguous segments
    order_by_id = np.argsort(ids.astype(np.uint16) if n < 2 ** 16 else ids, kind="stable")
    flat, ids = flat[order_by_id], ids[order_by_id]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    _, c_height, c_width = crop.shape
    cz = flat // (c_height * c_width)
    rest = flat - cz * (c_height * c_width)
    cy = rest // c_width
    cx = rest - cy * c_width
    z0, y0, x0 = (b.start for b in box)
    coords = (cz + z0, cy + y0, cx + x0)
    # intp indices: numpy would convert int32 ones at every gather
    full_flat = (coords[0].astype(np.intp) * shape[1] + coords[1]) * shape[2] + coords[2]
    instances.reshape(-1)[full_flat] = ids

    label_values = _gather(label_map, full_flat, coords)
    winners = _vote(ids, label_values, n, lesions, order)
    diameters = _axial_diameters(flat, starts, cz, cy, cx, spacing[1:])
    centroid = np.stack([np.add.reduceat(c, starts, dtype=np.int64) / counts for c in coords], axis=1)  # z y x
    world = _world(centroid, spacing, origin, direction)
    low = np.stack([np.minimum.reduceat(c, starts) for c in coords], axis=1)
    high = np.stack([np.maximum.reduceat(c, starts) for c in coords], axis=1) + 1

    hu = None
    if image is not None:
        values = _gather(image, full_flat, coords)
        hu_mean = np.add.reduceat(values, starts, dtype=np.float64) / counts
        deviation = values - np.repeat(hu_mean, counts)
        hu_std = np.sqrt(np.add.reduceat(deviation * deviation, starts) / counts)
        hu = (hu_mean, hu_std, np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts))

    priors = max_probability = None
    if probabilities is not None:
        total = None
        priors = np.empty((n, len(lesions)))
        for j, label in enumerate(lesions):
            values = _gather(probabilities[label], full_flat, coords)
            priors[:, j] = np.add.reduceat(values, starts, dtype=np.float64) / counts
            if total is None:
                total = values.astype(np.result_type(values.dtype, np.float32))
            else:
                np.add(total, values, out=total)
        max_probability = np.maximum.reduceat(total, starts)

    volumes = counts * voxel_volume
    columns = {                                   # (n,) or (n, m) arrays -> plain Python values
        "id": np.arange(1, n + 1),
        "label": winners,
        "n_voxels": counts,
        "volume_mm3": volumes,
        "volume_cm3": volumes / 1000.0,
        "axial_diameter_mm": diameters,
        "sphere_diameter_mm": np.cbrt(6.0 * volumes / math.pi),
        "bbox": np.concatenate((low, high), axis=1),
        "centroid_voxel": centroid,
        "centroid_world": world,
    }
    if hu is not None:
        columns.update(zip(("hu_mean", "hu_std", "hu_min", "hu_max"), (c.astype(np.float64) for c in hu)))
    if priors is not None:
        columns.update(prior=priors, max_probability=max_probability.astype(np.float64))
    values = {key: column.tolist() for key, column in columns.items()}
    records = [{key: values[key][i] if key in values else None for key in RECORD_KEYS} for i in range(n)]
    return Detections(instances, records)


def _vote(ids: np.ndarray, label_values: np.ndarray, n: int, lesions: list[int], order: list[int]) -> np.ndarray:
    """Majority label of each lesion, ties to the label earlier in ``order``; (n,) label values."""
    k = len(lesions)
    position = np.zeros(max(lesions) + 1, dtype=np.int64)
    position[lesions] = np.arange(k)                           # label value -> index in lesions
    votes = np.bincount(ids.astype(np.int64) * k + position[label_values],
                        minlength=(n + 1) * k).reshape(n + 1, k)[1:]
    rank = np.array([order.index(v) for v in lesions])            # 0 = highest priority
    return np.array(lesions)[np.argmax(votes * k + (k - 1 - rank), axis=1)]


def _world(centroid_zyx: np.ndarray, spacing: tuple[float, float, float], origin, direction) -> np.ndarray:
    """SimpleITK physical points (x, y, z) of continuous (z, y, x) voxel indices, (n, 3)."""
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    return origin + (centroid_zyx[:, ::-1] * np.array(spacing[::-1])) @ matrix.T
