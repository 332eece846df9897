"""The liver: shape per condition (normal, fatty, cirrhotic), parenchyma texture, portal and hepatic
veins, and focal fat sparing (an unlabelled hard negative in fatty livers)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_plus.phantom.anatomy import Patient, Shapes
from nnunet_plus.phantom.canvas import Canvas
from nnunet_plus.phantom.noise import plane_waves, smooth_field
from nnunet_plus.phantom.shapes import Grid, capsule, ellipsoid, occupancy, rotation, smooth_union

#: Mean parenchyma HU range per liver condition (NCCT: normal 55-65, fatty 10-40, cirrhotic heterogeneous).
PARENCHYMA_HU: dict[str, tuple[float, float]] = {
    "normal": (56.0, 64.0), "fatty": (12.0, 38.0), "cirrhotic": (50.0, 58.0),
}


@dataclass
class Liver:
    """The painted liver: shape, envelope mask, inner distance map and what it contains."""

    sdf: np.ndarray            # signed distance, mm
    occ: np.ndarray            # partial-volume fraction
    mask: np.ndarray           # envelope: occ >= 0.5 (the liver label before lesions)
    depth_mm: np.ndarray       # distance from each envelope voxel to the outside, mm
    mean_hu: float             # mean parenchyma HU (before noise)
    hard_negatives: list[dict]


def liver_shape(grid: Grid, patient: Patient, shapes: Shapes, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (mm) of the liver: right lobe, left lobe and caudate, fitted under the diaphragm and
    around the IVC, kidney, spleen and heart. Cirrhosis shrinks the right lobe, enlarges the left lobe
    and caudate and makes the surface nodular."""
    p = patient
    z, y, x = grid.coords()
    ac, bc, L, zt = p.cavity_a, p.cavity_b, p.liver_length, p.z_top
    cirrhotic = p.condition == "cirrhotic"
    right_scale = rng.uniform(0.74, 0.84) if cirrhotic else rng.uniform(0.95, 1.05)
    left_scale = rng.uniform(1.08, 1.2) if cirrhotic else rng.uniform(0.85, 1.05)
    tilt = rotation(rz=rng.uniform(-0.12, 0.12), ry=rng.uniform(-0.08, 0.08))
    # the right lobe reaches above the dome and is clipped by it: the liver fills the right hemidiaphragm
    right = ellipsoid(z, y, x, (zt - 0.5 * L + 20.0, 0.06 * bc, -0.44 * ac),
                      (0.5 * L + 20.0, 0.60 * bc * right_scale, 0.46 * ac * right_scale), tilt)
    left = ellipsoid(z, y, x, (zt - 0.28 * L, -0.42 * bc, 0.02 * ac),
                     (0.20 * L, 0.26 * bc * left_scale, 0.46 * ac * left_scale),
                     rotation(rz=rng.uniform(-0.45, -0.2)))
    caudate = ellipsoid(z, y, x, (zt - 0.4 * L, 0.12 * bc, -0.10 * ac),
                        (0.18 * L, 0.14 * bc * left_scale, 0.12 * ac * left_scale))
    sdf = smooth_union(smooth_union(right, left, 0.2 * ac), caudate, 0.08 * ac)
    # the inferior (visceral) surface rises from the right lobe's tip towards the midline
    slope = rng.uniform(0.35, 0.6)
    inferior = (np.float32(zt - L) + np.float32(slope) * (x + np.float32(0.85 * ac)) - z) / np.hypot(1.0, slope)
    sdf = np.maximum(sdf, inferior.astype(np.float32))
    if cirrhotic:
        sdf = sdf + rng.uniform(1.8, 3.0) * smooth_field(rng, grid.shape, grid.spacing, 5.0)
    else:
        sdf = sdf + 0.8 * smooth_field(rng, grid.shape, grid.spacing, 15.0)
    exclusions = [shapes.cavity + 1.5, shapes.dome + 2.0, 2.0 - shapes.ivc, 4.0 - shapes.aorta,
                  8.0 - shapes.vertebra, 4.0 - shapes.kidney_right, 3.0 - shapes.spleen, 4.0 - shapes.heart]
    if shapes.gallbladder is not None:
        exclusions.append(-shapes.gallbladder)
    for other in exclusions:
        sdf = np.maximum(sdf, other)
    return sdf.astype(np.float32)


def _vessel_tree(rng: np.random.Generator, start, direction, length: float, radius: float, depth: int,
                 out: list) -> None:
    direction = np.asarray(direction, dtype=float)
    direction /= np.linalg.norm(direction)
    end = np.asarray(start, dtype=float) + direction * length
    out.append((np.asarray(start, dtype=float), end, radius, radius * 0.85))
    if depth == 0:
        return
    for _ in range(2):
        perp = rng.standard_normal(3)
        perp -= (perp @ direction) * direction
        perp /= np.linalg.norm(perp)
        angle = rng.uniform(0.35, 0.8)
        child = np.cos(angle) * direction + np.sin(angle) * perp
        _vessel_tree(rng, end, child, length * rng.uniform(0.6, 0.8), radius * 0.72, depth - 1, out)


def paint_liver(canvas: Canvas, grid: Grid, patient: Patient, shapes: Shapes, sdf: np.ndarray,
                rng: np.random.Generator) -> Liver:
    """Paint parenchyma (condition-specific mean and texture), veins and focal fat sparing; return the liver."""
    p, sp = patient, grid.spacing
    occ = occupancy(sdf, sp)
    mask = occ >= 0.5
    mean_hu = float(rng.uniform(*PARENCHYMA_HU[p.condition]))
    if p.condition == "cirrhotic":   # regenerative nodules separated by a fibrotic network
        texture = 3.0 * smooth_field(rng, grid.shape, sp, 5.0)
        texture -= 7.0 * np.exp(-(smooth_field(rng, grid.shape, sp, 6.0) / 0.2) ** 2)
    elif p.condition == "fatty":     # uneven fat deposition
        texture = 4.0 * smooth_field(rng, grid.shape, sp, 25.0) + 2.0 * smooth_field(rng, grid.shape, sp, 8.0)
    else:
        texture = 2.0 * smooth_field(rng, grid.shape, sp, 8.0)
    if mask.any():
        texture -= texture[mask].mean()
    canvas.paint("liver", occ, mean_hu + texture)

    # veins: portal tree from the hilum, three hepatic veins into the IVC
    lm = shapes.landmarks
    s = np.clip(p.b / 115.0, 0.75, 1.1)
    segments: list = []
    hilum = np.array(lm["hilum"])
    for target in (lm["right_lobe"], lm["left_lobe"]):
        _vessel_tree(rng, hilum, np.subtract(target, hilum), 24.0 * s, 5.5 * s, 3, segments)
    ivc_top = np.array(lm["ivc_top"])
    L, ac, bc = p.liver_length, p.cavity_a, p.cavity_b
    for d in ((-0.25 * L, 0.0, -0.8 * ac), (-0.35 * L, -0.5 * bc, -0.2 * ac), (-0.15 * L, -0.7 * bc, 0.3 * ac)):
        _vessel_tree(rng, ivc_top, d, 30.0 * s, 5.0 * s, 2, segments)
    vessels = np.zeros(grid.shape, dtype=np.float32)
    for a, b, ra, rb in segments:
        box = grid.box((a + b) / 2, np.abs(a - b) / 2 + max(ra, rb) + 3)
        zb, yb, xb = grid.coords(box)
        np.maximum(vessels[box], occupancy(capsule(zb, yb, xb, a, b, ra, rb), sp), out=vessels[box])
    canvas.paint("liver_vessel", vessels * occ, p.hu["blood"])

    depth = ndimage.distance_transform_edt(mask, sampling=sp).astype(np.float32)
    hard_negatives = []
    if p.condition == "fatty":
        hard_negatives = _paint_fat_sparing(canvas, grid, shapes, occ, depth, mean_hu, texture, rng)
    return Liver(sdf=sdf, occ=occ, mask=mask, depth_mm=depth, mean_hu=mean_hu, hard_negatives=hard_negatives)


def _paint_fat_sparing(canvas: Canvas, grid: Grid, shapes: Shapes, occ: np.ndarray, depth: np.ndarray,
                       fatty_hu: float, texture: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Geographic areas of normally attenuating liver in a fatty liver (next to the gallbladder fossa,
    near the hilum or under the capsule): brighter than the surrounding liver, but not lesions."""
    n = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.4, 0.3, 0.15]))
    spared_hu = float(rng.uniform(52.0, 62.0))
    records = []
    for k in range(n):
        radius = float(rng.uniform(7.0, 18.0))
        # mostly inside the liver, under the capsule or next to the fossa / hilum
        candidates = np.argwhere((depth >= 0.6 * radius) & (depth <= 0.6 * radius + 15.0))
        if len(candidates) == 0:
            break
        if k == 0:   # fossa / hilum: the classic sites
            site = shapes.landmarks["gallbladder" if shapes.gallbladder is not None else "hilum"]
            dists = np.linalg.norm((candidates - grid.index_of(site)) * np.asarray(grid.spacing), axis=1)
            index = candidates[int(np.argmin(dists))]
        else:
            index = candidates[int(rng.integers(len(candidates)))]
        centre = grid.centre_mm(index)
        radii = (radius * rng.uniform(0.5, 0.9), radius * rng.uniform(0.6, 1.0), radius)
        rot = rotation(rng.uniform(0, np.pi), rng.uniform(0, np.pi), rng.uniform(0, np.pi))
        wobble = plane_waves(rng, 5, (radius, 3 * radius))
        box = grid.box(centre, 1.4 * radius + 4)
        zb, yb, xb = grid.coords(box)
        local = ellipsoid(zb, yb, xb, centre, radii, rot)
        local = local - 0.3 * radius * wobble(zb - np.float32(centre[0]), yb - np.float32(centre[1]),
                                              xb - np.float32(centre[2]))
        alpha = np.clip(0.5 - local / 5.0, 0.0, 1.0) * occ[box]
        canvas.paint("fat_sparing", alpha, spared_hu + texture[box] * 0.5, box)
        records.append({"kind": "focal_fat_sparing", "centre_zyx_mm": [float(c) for c in centre],
                        "diameter_mm": round(2 * radius, 1), "contrast_hu": round(spared_hu - fatty_hu, 1)})
    return records
