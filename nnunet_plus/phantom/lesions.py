"""Focal liver lesions on non-contrast CT: types, sizes, appearance, placement and rendering.

NCCT appearance (pre-noise HU, see the GUIDE's domain primer):

- ``cyst``: 0-15 HU, homogeneous, round, sharp edge.
- ``hemangioma`` and ``hcc``: the *same* local appearance on purpose (hypodense 33-45 HU, lobulated,
  heterogeneous, larger ones with a darker central scar/necrosis); only their context differs (HCC grows in
  cirrhotic livers, hemangioma in non-cirrhotic ones, see :mod:`nnunet_plus.phantom.cohort`).
- ``icc``: hypodense 30-42 HU, irregular, with dilated bile ducts (bile ~10 HU) upstream, i.e. on the side
  of the lesion away from the hilum.
- ``metastasis``: hypodense, often multiple; from ~15 mm a bull's-eye (darker necrotic centre, rim).
- ``calcification``: small, very bright (300-700 HU before partial volume).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from nnunet_plus.phantom.canvas import Canvas
from nnunet_plus.phantom.liver import Liver
from nnunet_plus.phantom.noise import plane_waves, smooth_field
from nnunet_plus.phantom.shapes import Box, Grid, capsule, ellipsoid, occupancy, rotation

#: Lesion type names in label order (classifyPatient priority: malignant first, cyst last).
LESION_TYPES: tuple[str, ...] = ("hcc", "icc", "metastasis", "hemangioma", "calcification", "cyst")

#: Diameter distribution per type: (median mm, log-normal sigma, largest mm). Skewed to small lesions.
DIAMETER_MM: dict[str, tuple[float, float, float]] = {
    "hcc": (22.0, 0.55, 60.0), "icc": (28.0, 0.45, 60.0), "metastasis": (13.0, 0.55, 50.0),
    "hemangioma": (17.0, 0.55, 60.0), "calcification": (4.0, 0.3, 10.0), "cyst": (10.0, 0.6, 60.0),
}
MAX_DIAMETER_MM = 60.0


def min_diameter_mm(spacing: tuple[float, float, float]) -> float:
    """Smallest lesion diameter the grid can show: 3 mm or two in-plane voxels, whichever is larger."""
    return max(3.0, 2.0 * max(spacing[1], spacing[2]))


def sample_diameter(rng: np.random.Generator, kind: str, d_min: float, d_max: float) -> float:
    """Log-normal diameter (mm) for lesion type ``kind``, clipped to [d_min, d_max]."""
    median, sigma, largest = DIAMETER_MM[kind]
    d = median * np.exp(sigma * rng.standard_normal())
    return float(np.clip(d, d_min, max(d_min, min(d_max, largest))))


@dataclass(frozen=True)
class Appearance:
    """How one lesion looks: HU of its core, rim and centre, texture, and contour irregularity."""

    core_hu: float
    rim_hu: float           # HU at the edge (= core_hu when there is no rim)
    centre_hu: float        # HU of a central scar / necrosis (= core_hu when there is none)
    centre_fraction: float  # relative radius of the central area
    texture_hu: float
    lobulation: float       # contour wobble amplitude, fraction of the radius
    wavelength: tuple[float, float]  # contour wobble wavelengths, fractions of the diameter
    elongation: float       # log-normal sigma of the axis ratios


def sample_appearance(rng: np.random.Generator, kind: str, diameter: float) -> Appearance:
    """Draw the NCCT appearance of a lesion of type ``kind`` and ``diameter`` mm."""
    if kind == "cyst":
        hu = rng.uniform(2.0, 12.0)
        return Appearance(hu, hu, hu, 0.0, 1.5, rng.uniform(0.0, 0.03), (0.8, 1.5), 0.08)
    if kind == "calcification":
        hu = rng.uniform(350.0, 700.0)
        return Appearance(hu, hu, hu, 0.0, 20.0, rng.uniform(0.0, 0.1), (0.6, 1.2), 0.15)
    if kind in ("hcc", "hemangioma"):   # deliberately identical distributions: only the liver tells them apart
        hu = rng.uniform(33.0, 45.0)
        scar = diameter >= 25.0 and rng.random() < 0.4
        centre = hu - rng.uniform(10.0, 18.0) if scar else hu
        return Appearance(hu, hu, centre, rng.uniform(0.2, 0.35) if scar else 0.0, rng.uniform(4.0, 6.0),
                          rng.uniform(0.10, 0.20), (0.4, 1.0), 0.15)
    if kind == "icc":
        hu = rng.uniform(30.0, 42.0)
        return Appearance(hu, hu, hu, 0.0, rng.uniform(3.0, 5.0), rng.uniform(0.18, 0.28), (0.25, 0.6), 0.2)
    if kind == "metastasis":
        if diameter >= 15.0 and rng.random() < 0.8:   # bull's eye
            rim = rng.uniform(36.0, 46.0)
            return Appearance(rim, rim, rng.uniform(10.0, 24.0), rng.uniform(0.45, 0.65), 3.0,
                              rng.uniform(0.04, 0.1), (0.5, 1.2), 0.1)
        hu = rng.uniform(26.0, 40.0)
        return Appearance(hu, hu, hu, 0.0, 3.0, rng.uniform(0.04, 0.1), (0.5, 1.2), 0.1)
    raise ValueError(f"unknown lesion type {kind!r}; choose from {', '.join(LESION_TYPES)}")


@dataclass
class Lesion:
    """A placed lesion: its box on the grid, partial-volume fraction, HU values and label mask (box-local)."""

    kind: str
    diameter_mm: float
    centre_mm: np.ndarray       # (z, y, x)
    bound_mm: float             # no part of the lesion is farther than this from its centre
    box: Box
    occ: np.ndarray
    value: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class LesionShape:
    """Shape of one lesion independent of its size: axis ratios (product 1), orientation and a contour
    wobble defined on radius-normalised coordinates, so that shrinking a lesion keeps its shape."""

    axes: np.ndarray
    rot: np.ndarray
    wobble: Callable[..., np.ndarray]   # (u_z, u_y, u_x) / radius -> values in [-1, 1]
    lobulation: float

    def bound(self, diameter: float) -> float:
        """Radius (mm) of a ball around the centre that contains the whole lesion."""
        return diameter / 2.0 * float(self.axes.max()) * (1.0 + self.lobulation)


def sample_shape(rng: np.random.Generator, look: Appearance) -> LesionShape:
    """Random axis ratios, orientation and contour wobble for a lesion with appearance ``look``."""
    axes = np.exp(look.elongation * rng.standard_normal(3))
    axes /= np.cbrt(np.prod(axes))
    rot = rotation(*rng.uniform(0, 2 * np.pi, size=3))
    wobble = plane_waves(rng, 6, (2 * look.wavelength[0], 2 * look.wavelength[1]))
    return LesionShape(axes, rot, wobble, look.lobulation)


def render_lesion(rng: np.random.Generator, grid: Grid, kind: str, centre: np.ndarray, diameter: float,
                  look: Appearance, shape: LesionShape) -> Lesion:
    """Rasterise one lesion: partial-volume fraction, HU map and label mask (largest connected part)."""
    r = diameter / 2.0
    bound = shape.bound(diameter)
    box = grid.box(centre, bound)
    zb, yb, xb = grid.coords(box)
    base = ellipsoid(zb, yb, xb, centre, tuple(r * shape.axes), shape.rot)
    inv_r = np.float32(1.0 / r)
    uz, uy, ux = ((zb - np.float32(centre[0])) * inv_r, (yb - np.float32(centre[1])) * inv_r,
                  (xb - np.float32(centre[2])) * inv_r)
    sdf = base - np.float32(shape.lobulation * r) * shape.wobble(uz, uy, ux)
    radial = np.clip(1.0 + base * inv_r, 0.0, 1.5)   # ~0 at the centre, 1 on the surface
    occ = occupancy(sdf, grid.spacing)
    value = np.full(occ.shape, look.core_hu, dtype=np.float32)
    if look.rim_hu != look.core_hu:
        value += (look.rim_hu - look.core_hu) * np.clip((radial - 0.5) / 0.5, 0.0, 1.0)
    if look.centre_fraction > 0:
        weight = np.clip((look.centre_fraction + 0.15 - radial) / 0.3, 0.0, 1.0)
        value += (look.centre_hu - value) * weight
    if look.texture_hu > 0:
        value += look.texture_hu * smooth_field(rng, occ.shape, grid.spacing, max(3.0, diameter / 6.0))
    mask = occ >= 0.5
    if not mask.any():
        mask[np.unravel_index(int(np.argmax(occ)), occ.shape)] = True
    parts, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n > 1:
        sizes = np.bincount(parts.ravel())[1:]
        mask = parts == (1 + int(np.argmax(sizes)))
        occ = occ * ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3)))
    return Lesion(kind, diameter, np.asarray(centre, dtype=float), bound, box, occ, value, mask)


def place_lesions(rng: np.random.Generator, grid: Grid, liver: Liver, kinds: list[str]) -> list[Lesion]:
    """Place lesions of the given types inside the liver, largest first, none touching another.

    Each lesion is surrounded by at least one voxel of liver (its label never touches the background) and
    stays one voxel diagonal away from every other lesion. A lesion that does not fit is shrunk (down to
    the grid's smallest diameter) and dropped if it still does not fit.
    """
    sp = np.asarray(grid.spacing)
    gap = float(np.linalg.norm(sp))
    d_min = min_diameter_mm(grid.spacing)
    depth_max = float(liver.depth_mm.max()) if liver.mask.any() else 0.0
    d_max = min(MAX_DIAMETER_MM, 2.0 * max(depth_max - gap, 0.0))
    plan = sorted(((sample_diameter(rng, k, d_min, d_max), k) for k in kinds), key=lambda t: -t[0])
    taken = np.zeros(grid.shape, dtype=bool)
    placed: list[Lesion] = []
    for diameter, kind in plan:
        look = sample_appearance(rng, kind, diameter)
        shape = sample_shape(rng, look)
        lesion = None
        for _ in range(12):
            bound = shape.bound(diameter)
            inside = np.argwhere(liver.depth_mm >= bound + gap)
            if len(inside):
                centres = inside * sp
                ok = np.ones(len(inside), dtype=bool)
                for other in placed:
                    other_c = grid.index_of(other.centre_mm) * sp
                    ok &= np.linalg.norm(centres - other_c, axis=1) >= bound + other.bound_mm + gap
                inside = inside[ok]
            if len(inside) == 0:
                if diameter <= d_min:
                    break
                diameter = max(d_min, diameter * 0.85)
                continue
            index = inside[int(rng.integers(len(inside)))] + rng.uniform(-0.3, 0.3, size=3)
            candidate = render_lesion(rng, grid, kind, grid.centre_mm(index), diameter, look, shape)
            grown = ndimage.binary_dilation(candidate.mask, structure=np.ones((3, 3, 3)))
            if (grown & (~liver.mask[candidate.box] | taken[candidate.box])).any():
                continue
            lesion = candidate
            break
        if lesion is not None:
            taken[lesion.box] |= lesion.mask
            placed.append(lesion)
    return placed


def paint_ducts(canvas: Canvas, grid: Grid, liver: Liver, lesion: Lesion, hilum: np.ndarray, bile_hu: float,
                rng: np.random.Generator) -> int:
    """Dilated bile ducts upstream of an ICC: 2-3 tapering tubes running from the lesion away from the
    hilum, inside the liver (part of the liver label). Returns the number of ducts."""
    away = lesion.centre_mm - hilum
    away = away / np.linalg.norm(away) if np.linalg.norm(away) > 1e-6 else rng.standard_normal(3)
    away /= np.linalg.norm(away)
    n = int(rng.integers(2, 4))
    for _ in range(n):
        perp = rng.standard_normal(3)
        perp -= (perp @ away) * away
        perp /= np.linalg.norm(perp)
        angle = rng.uniform(0.0, 0.6)
        d = np.cos(angle) * away + np.sin(angle) * perp
        start = lesion.centre_mm + d * lesion.diameter_mm * 0.3
        end = start + d * rng.uniform(22.0, 45.0)
        radius = rng.uniform(2.0, 3.2)
        box = grid.box((start + end) / 2, np.abs(end - start) / 2 + radius + 3)
        zb, yb, xb = grid.coords(box)
        occ = occupancy(capsule(zb, yb, xb, start, end, radius, radius * 0.6), grid.spacing)
        canvas.paint("bile_duct", occ * liver.occ[box], bile_hu, box)
    return n


#: The HU an amplified hypodense lesion approaches, never reaches (``conspicuity`` > 1, :func:`amplified_hu`).
AMPLIFIED_FLOOR_HU = -50.0


def amplified_hu(value: np.ndarray, liver_hu: float, conspicuity: float) -> np.ndarray:
    """Lesion HU ``value`` with its contrast against the parenchyma ``liver_hu`` multiplied by ``conspicuity``.

    A hyperdense contrast is multiplied as is. A hypodense one is multiplied, then bent smoothly towards
    :data:`AMPLIFIED_FLOOR_HU` (``liver + s * (exp(c * (value - liver) / s) - 1)``, ``s = liver - floor``): slope
    ``c`` near the liver's HU, strictly increasing, always above the floor. A hard floor (``max(.., floor)``)
    flattened every hypodense type to the same HU at conspicuity 5 (cyst, HCC, ICC and metastasis medians
    between -18 and -1 HU), erasing the intensity order (cyst darkest) the types are told apart by; the bend keeps
    it: at conspicuity 5 in a 60 HU liver a 7 HU cyst becomes -40 HU and a 39 HU HCC -8 HU (the floor is below
    the -20 HU of that hard floor, and above fat, for that reason).
    """
    value = np.asarray(value, dtype=np.float32)
    contrast = np.float32(conspicuity) * (value - np.float32(liver_hu))
    span = np.float32(max(liver_hu - AMPLIFIED_FLOOR_HU, 1.0))
    bent = span * np.expm1(np.minimum(contrast, 0.0) / span)
    return (np.float32(liver_hu) + np.where(contrast >= 0.0, contrast, bent)).astype(np.float32)


def paint_lesion(canvas: Canvas, lesion: Lesion, *, liver_hu: float, conspicuity: float = 1.0) -> None:
    """Blend a rendered lesion into the image (owner ``lesion_<type>``).

    ``conspicuity`` multiplies the lesion's contrast against the mean parenchyma ``liver_hu`` (HU) for every
    type but calcification (already conspicuous; :func:`amplified_hu`); 1 keeps the NCCT appearance of the module
    docstring.
    """
    value = lesion.value
    if conspicuity != 1.0 and lesion.kind != "calcification":
        value = amplified_hu(value, liver_hu, conspicuity)
    canvas.paint(f"lesion_{lesion.kind}", lesion.occ, value, lesion.box)
