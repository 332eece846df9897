"""Implicit shapes in millimetres and their partial-volume occupancy on an anisotropic voxel grid.

Every shape function returns an approximate signed distance in mm (negative inside) evaluated on
broadcastable coordinate arrays. Vectors are in numpy order ``(z, y, x)``: x towards the patient's left,
y posterior, z superior (ITK's LPS axes with an identity direction), in mm relative to the grid centre.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]
Vec = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (Z, Y, X) voxels and ``spacing`` (z, y, x) mm, centred on the origin."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def half_extent(self) -> tuple[float, float, float]:
        """Half the field of view (z, y, x) in mm."""
        return tuple(n * s / 2.0 for n, s in zip(self.shape, self.spacing))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def centre_mm(self, index: Vec) -> np.ndarray:
        """Position (z, y, x) mm of a (possibly fractional) voxel index (z, y, x)."""
        return np.array([(i - (n - 1) / 2.0) * s for i, n, s in zip(index, self.shape, self.spacing)])

    def index_of(self, point: Vec) -> np.ndarray:
        """Fractional voxel index (z, y, x) of a point (z, y, x) mm."""
        return np.array([p / s + (n - 1) / 2.0 for p, n, s in zip(point, self.shape, self.spacing)])

    def box(self, centre: Vec | None = None, radius: float | Vec = 0.0, *, margin: int = 2) -> Box:
        """Voxel slices covering a ball/box of ``radius`` mm around ``centre`` (whole grid if None).

        Each slice has at least 2 voxels so that gradients can be taken on it.
        """
        if centre is None:
            return (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        radius = np.broadcast_to(np.asarray(radius, dtype=float), (3,))
        out = []
        for c, r, n, s in zip(centre, radius, self.shape, self.spacing):
            lo = int(np.floor((c - r) / s + (n - 1) / 2.0)) - margin
            hi = int(np.ceil((c + r) / s + (n - 1) / 2.0)) + margin + 1
            lo, hi = max(lo, 0), min(hi, n)
            if hi - lo < 2:
                lo, hi = (max(0, min(lo, n - 2)), max(0, min(lo, n - 2)) + 2)
            out.append(slice(lo, hi))
        return tuple(out)

    def coords(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays in mm (float32) of the voxel centres inside ``box``."""
        box = box or self.box()
        axes = []
        for k, (sl, n, s) in enumerate(zip(box, self.shape, self.spacing)):
            c = ((np.arange(sl.start, sl.stop) - (n - 1) / 2.0) * s).astype(np.float32)
            shape = [1, 1, 1]
            shape[k] = c.size
            axes.append(c.reshape(shape))
        return axes[0], axes[1], axes[2]


def rotation(rz: float = 0.0, ry: float = 0.0, rx: float = 0.0) -> np.ndarray:
    """Rotation matrix acting on (z, y, x) vectors: about the z axis by ``rz``, then y, then x (radians)."""
    cz, sz = np.cos(rz), np.sin(rz)
    cy, sy = np.cos(ry), np.sin(ry)
    cx, sx = np.cos(rx), np.sin(rx)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # mixes y and x
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # mixes z and x
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # mixes z and y
    return about_x @ about_y @ about_z


def local_coords(z, y, x, centre: Vec, rot: np.ndarray | None = None):
    """Coordinates relative to ``centre`` in the frame of ``rot`` (u = R^T (p - c))."""
    dz, dy, dx = z - np.float32(centre[0]), y - np.float32(centre[1]), x - np.float32(centre[2])
    if rot is None:
        return dz, dy, dx
    r = rot.astype(np.float32)
    return (r[0, 0] * dz + r[1, 0] * dy + r[2, 0] * dx,
            r[0, 1] * dz + r[1, 1] * dy + r[2, 1] * dx,
            r[0, 2] * dz + r[1, 2] * dy + r[2, 2] * dx)


def ellipsoid(z, y, x, centre: Vec, radii: Vec, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid with semi-axes ``radii`` (z, y, x) mm.

    First-order estimate ``(rho - 1) / |grad rho|``: exact on the surface, good near it.
    """
    u = local_coords(z, y, x, centre, rot)
    q = [ui / np.float32(r) for ui, r in zip(u, radii)]
    rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    grad = np.sqrt((q[0] / radii[0]) ** 2 + (q[1] / radii[1]) ** 2 + (q[2] / radii[2]) ** 2)
    return ((rho - 1.0) * rho / np.maximum(grad, 1e-6)).astype(np.float32)


def ellipse_2d(y, x, centre: tuple[float, float], radii: tuple[float, float], angle: float = 0.0) -> np.ndarray:
    """Signed distance (mm) to an infinite elliptic cylinder along z; ``angle`` rotates it in-plane."""
    dy, dx = y - np.float32(centre[0]), x - np.float32(centre[1])
    if angle:
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        dy, dx = c * dy + s * dx, -s * dy + c * dx
    qy, qx = dy / np.float32(radii[0]), dx / np.float32(radii[1])
    rho = np.sqrt(qy ** 2 + qx ** 2)
    grad = np.sqrt((qy / radii[0]) ** 2 + (qx / radii[1]) ** 2)
    return ((rho - 1.0) * rho / np.maximum(grad, 1e-6)).astype(np.float32)


def capsule(z, y, x, a: Vec, b: Vec, radius_a: float, radius_b: float) -> np.ndarray:
    """Signed distance (mm) to a tapered tube from point ``a`` (radius_a) to ``b`` (radius_b)."""
    a = np.asarray(a, dtype=np.float32)
    ab = np.asarray(b, dtype=np.float32) - a
    length2 = max(float(ab @ ab), 1e-6)
    dz, dy, dx = z - a[0], y - a[1], x - a[2]
    t = np.clip((dz * ab[0] + dy * ab[1] + dx * ab[2]) / np.float32(length2), 0.0, 1.0)
    dist = np.sqrt((dz - t * ab[0]) ** 2 + (dy - t * ab[1]) ** 2 + (dx - t * ab[2]) ** 2)
    return (dist - (radius_a + t * (radius_b - radius_a))).astype(np.float32)


def smooth_union(d1: np.ndarray, d2: np.ndarray, k: float) -> np.ndarray:
    """Union of two signed distances blended over ``k`` mm (polynomial smooth minimum)."""
    h = np.maximum(k - np.abs(d1 - d2), 0.0) / k
    return np.minimum(d1, d2) - h * h * (k / 4.0)


def occupancy(sdf: np.ndarray, spacing: Vec) -> np.ndarray:
    """Partial-volume fraction (0..1, float32) of each voxel inside the shape ``sdf < 0``.

    A voxel cut by a locally planar surface with unit normal n is covered over a width
    ``w = |(n_z s_z, n_y s_y, n_x s_x)|`` mm along n, so the fraction is ``0.5 - sdf / w`` clipped to 0..1.
    Thicker slices therefore give wider partial-volume bands on the upper and lower faces of a shape.
    """
    grads = np.gradient(sdf, *spacing)
    g_mm = np.sqrt(sum(g * g for g in grads))
    g_vox = np.sqrt(sum((g * s) ** 2 for g, s in zip(grads, spacing)))
    width = np.where(g_mm > 0.5, g_vox / np.maximum(g_mm, 1e-6), np.float32(np.mean(spacing)))
    return np.clip(0.5 - sdf / np.maximum(width, 1e-3), 0.0, 1.0).astype(np.float32)
