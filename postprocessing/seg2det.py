"""seg2det (cascaded paper, §III-A): from a label map to lesion instances with per-lesion properties.

A lesion is a connected component of the union of all lesion labels (not one class at a time), found by
:func:`~nnunet_plus.postprocessing.components.lesion_components` ("paper" connectivity: 2D components linked
across slices; 6 / 18 / 26 are also offered).

Everything runs in vectorised passes over the list of lesion voxels (found once, inside the bounding box
of all lesion voxels); no per-lesion pass over the volume. The longest axial diameter uses the fact that
the farthest pair of pixels of a slice lies on the convex hull, which is spanned by the end points of the
pixel runs along x, and prunes slices whose bounding-box diagonal cannot beat the best pair found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from nnunet_plus.postprocessing.components import lesion_components, normalise_connectivity
from nnunet_plus.postprocessing.multi_sensitivity import is_torch_tensor

__all__ = ["Detections", "RECORD_KEYS", "label_mask", "seg2det"]

#: Keys of every lesion record, in order.
RECORD_KEYS: tuple[str, ...] = (
    "id", "label", "n_voxels", "volume_mm3", "volume_cm3", "axial_diameter_mm", "sphere_diameter_mm",
    "bbox", "centroid_voxel", "centroid_world", "hu_mean", "hu_std", "hu_min", "hu_max", "prior",
    "max_probability",
)


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
    connectivity = normalise_connectivity(connectivity)
    if not min_volume_mm3 >= 0:
        raise ValueError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3}")
    spacing = tuple(float(s) for s in spacing)
    voxel_volume = spacing[0] * spacing[1] * spacing[2]
    if image is not None and image.ndim == 4:
        image = image[0]

    instances = np.zeros(label_map.shape, dtype=np.int32)
    found = lesion_components(label_mask(label_map, lesions), connectivity)
    if found is None:
        return Detections(instances, [])
    box, crop_shape, flat, ids, n = found
    counts = np.bincount(ids, minlength=n + 1)[1:]
    if min_volume_mm3 > 0:
        flat, ids, counts, n = _drop_small(flat, ids, counts, counts * voxel_volume >= min_volume_mm3)
    if n == 0:
        return Detections(instances, [])

    voxels = _sort_by_lesion(flat, ids, counts, box, crop_shape, label_map.shape)
    instances.reshape(-1)[voxels.full_flat] = voxels.ids
    columns = _geometry_columns(voxels, spacing, origin, direction)
    columns["label"] = _vote(voxels.ids, _gather(label_map, voxels.full_flat, voxels.coords), n, lesions, order)
    if image is not None:
        columns.update(_hu_columns(image, voxels))
    if probabilities is not None:
        columns.update(_probability_columns(probabilities, lesions, voxels))
    values = {key: column.tolist() for key, column in columns.items()}   # arrays -> plain Python values
    records = [{key: values[key][i] if key in values else None for key in RECORD_KEYS} for i in range(n)]
    return Detections(instances, records)


def _drop_small(flat: np.ndarray, ids: np.ndarray, counts: np.ndarray, kept: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(flat, ids, counts, n)`` of the lesions ``kept`` ((n,) bool), renumbered so that ids stay consecutive."""
    if kept.all():
        return flat, ids, counts, int(counts.size)
    renumber = np.zeros(counts.size + 1, dtype=ids.dtype)
    renumber[1:][kept] = np.arange(1, int(kept.sum()) + 1)
    ids = renumber[ids]
    keep = ids > 0
    return flat[keep], ids[keep], counts[kept], int(kept.sum())


@dataclass
class _LesionVoxels:
    """The lesion voxels sorted by lesion id (raster order within a lesion), so that per-lesion reductions
    are ``np.ufunc.reduceat`` over contiguous segments.

    flat : raster indices in the crop; ids : lesion ids; counts, starts : (n,) voxels and first position
    of every lesion; local : (z, y, x) coordinates in the crop; coords : the same in the volume;
    full_flat : raster indices in the volume (intp).
    """

    flat: np.ndarray
    ids: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    local: tuple[np.ndarray, np.ndarray, np.ndarray]
    coords: tuple[np.ndarray, np.ndarray, np.ndarray]
    full_flat: np.ndarray


def _sort_by_lesion(flat: np.ndarray, ids: np.ndarray, counts: np.ndarray, box: tuple[slice, slice, slice],
                    crop_shape: tuple[int, int, int], shape: tuple[int, ...]) -> _LesionVoxels:
    """The voxels of the components found in the crop ``box`` of a volume of ``shape``, sorted by lesion."""
    n = counts.size
    order_by_id = np.argsort(ids.astype(np.uint16) if n < 2 ** 16 else ids, kind="stable")
    flat, ids = flat[order_by_id], ids[order_by_id]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    _, c_height, c_width = crop_shape
    cz = flat // (c_height * c_width)
    rest = flat - cz * (c_height * c_width)
    cy = rest // c_width
    cx = rest - cy * c_width
    z0, y0, x0 = (b.start for b in box)
    coords = (cz + z0, cy + y0, cx + x0)
    # intp indices: numpy would convert int32 ones at every gather
    full_flat = (coords[0].astype(np.intp) * shape[1] + coords[1]) * shape[2] + coords[2]
    return _LesionVoxels(flat, ids, counts, starts, (cz, cy, cx), coords, full_flat)


def _geometry_columns(voxels: _LesionVoxels, spacing: tuple[float, float, float], origin, direction
                      ) -> dict[str, np.ndarray]:
    """Record columns of the lesions' size and position: (n,) or (n, m) arrays keyed by record key."""
    counts, starts, coords = voxels.counts, voxels.starts, voxels.coords
    centroid = np.stack([np.add.reduceat(c, starts, dtype=np.int64) / counts for c in coords], axis=1)  # z y x
    low = np.stack([np.minimum.reduceat(c, starts) for c in coords], axis=1)
    high = np.stack([np.maximum.reduceat(c, starts) for c in coords], axis=1) + 1
    volumes = counts * (spacing[0] * spacing[1] * spacing[2])
    return {
        "id": np.arange(1, counts.size + 1),
        "n_voxels": counts,
        "volume_mm3": volumes,
        "volume_cm3": volumes / 1000.0,
        "axial_diameter_mm": _axial_diameters(voxels.flat, starts, *voxels.local, spacing[1:]),
        "sphere_diameter_mm": np.cbrt(6.0 * volumes / math.pi),
        "bbox": np.concatenate((low, high), axis=1),
        "centroid_voxel": centroid,
        "centroid_world": _world(centroid, spacing, origin, direction),
    }


def _hu_columns(image, voxels: _LesionVoxels) -> dict[str, np.ndarray]:
    """``hu_mean``, ``hu_std`` (population), ``hu_min``, ``hu_max`` of each lesion in the (Z, Y, X) ``image``."""
    counts, starts = voxels.counts, voxels.starts
    values = _gather(image, voxels.full_flat, voxels.coords)
    hu_mean = np.add.reduceat(values, starts, dtype=np.float64) / counts
    deviation = values - np.repeat(hu_mean, counts)
    hu_std = np.sqrt(np.add.reduceat(deviation * deviation, starts) / counts)
    hu = (hu_mean, hu_std, np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts))
    return dict(zip(("hu_mean", "hu_std", "hu_min", "hu_max"), (c.astype(np.float64) for c in hu)))


def _probability_columns(probabilities, lesions: list[int], voxels: _LesionVoxels) -> dict[str, np.ndarray]:
    """``prior`` (mean probability of each lesion label, (n, len(lesions))) and ``max_probability`` (largest
    summed lesion probability of a voxel) of each lesion."""
    counts, starts = voxels.counts, voxels.starts
    total = None
    priors = np.empty((counts.size, len(lesions)))
    for j, label in enumerate(lesions):
        values = _gather(probabilities[label], voxels.full_flat, voxels.coords)
        priors[:, j] = np.add.reduceat(values, starts, dtype=np.float64) / counts
        if total is None:
            total = values.astype(np.result_type(values.dtype, np.float32))
        else:
            np.add(total, values, out=total)
    return {"prior": priors, "max_probability": np.maximum.reduceat(total, starts).astype(np.float64)}


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
