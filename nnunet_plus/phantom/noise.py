"""Random fields: smooth tissue textures and spatially correlated CT noise."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                 scale_mm: float) -> np.ndarray:
    """Gaussian random field with correlation length ``scale_mm``, zero mean and unit std (float32).

    Long correlation lengths are drawn on a coarser grid and linearly upsampled, which is much faster
    than filtering white noise at full resolution and indistinguishable after smoothing.
    """
    sigma = np.array([scale_mm / s for s in spacing], dtype=float)
    factor = np.maximum(1, np.floor(sigma / 2.0)).astype(int)
    coarse_shape = tuple(int(np.ceil(n / f)) + 1 for n, f in zip(shape, factor))
    white = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.gaussian_filter(white, sigma / factor, mode="wrap", truncate=3.0)
    if np.any(factor > 1):
        field = ndimage.zoom(field, factor, order=1, grid_mode=False)
    field = field[tuple(slice(0, n) for n in shape)]
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_hu: float,
                     correlation_vox: tuple[float, ...]) -> np.ndarray:
    """CT-like noise: white Gaussian noise blurred by ``correlation_vox`` (voxels per axis), rescaled to
    exactly ``sigma_hu`` standard deviation over the volume (float32, HU)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(white, correlation_vox, mode="wrap", truncate=3.0)
    noise -= noise.mean()
    return noise * np.float32(sigma_hu / noise.std())


def plane_waves(rng: np.random.Generator, n_waves: int, wavelength_mm: tuple[float, float]):
    """A random smooth function of position, built from ``n_waves`` plane waves; values within [-1, 1].

    Returns a callable ``f(u_z, u_y, u_x) -> array`` (used for lobulated lesion contours).
    """
    directions = rng.standard_normal((n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavenumbers = 2 * np.pi / rng.uniform(*wavelength_mm, size=n_waves)
    phases = rng.uniform(0, 2 * np.pi, size=n_waves)
    weights = rng.uniform(0.5, 1.0, size=n_waves)
    weights /= weights.sum()

    def evaluate(uz, uy, ux):
        total = np.zeros(np.broadcast_shapes(np.shape(uz), np.shape(uy), np.shape(ux)), dtype=np.float32)
        for d, k, p, w in zip(directions, wavenumbers, phases, weights):
            total += np.float32(w) * np.cos(np.float32(k) * (np.float32(d[0]) * uz + np.float32(d[1]) * uy
                                                             + np.float32(d[2]) * ux) + np.float32(p))
        return total

    return evaluate
