"""The patient around the liver: body outline, fat, muscle, spine and ribs, lungs and heart above the
diaphragm, kidneys, spleen, stomach, pancreas, bowel, aorta and IVC, and ascites.

All positions are in mm in the grid-centred patient frame, vectors ordered (z, y, x): x towards the
patient's left, y posterior, z superior. In-plane sizes scale with the body (which is fitted to the field of
view); cranio-caudal sizes are in mm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnunet_plus.phantom.canvas import Canvas
from nnunet_plus.phantom.noise import smooth_field
from nnunet_plus.phantom.shapes import Grid, capsule, ellipse_2d, ellipsoid, occupancy, rotation

LIVER_CONDITIONS: tuple[str, ...] = ("normal", "fatty", "cirrhotic")

#: Smallest field of view (z, y, x) in mm and grid (Z, Y, X) in voxels that can hold the phantom's liver.
MIN_FOV_MM: tuple[float, float, float] = (100.0, 160.0, 160.0)
MIN_SHAPE: tuple[int, int, int] = (8, 32, 32)


@dataclass(frozen=True)
class Patient:
    """Sampled patient: body size, layout, liver condition and tissue HU values (before noise)."""

    condition: str
    a: float                 # body half-width (x), mm
    b: float                 # body half-depth (y), mm
    fat_mm: float            # subcutaneous fat thickness, mm
    muscle_mm: float         # abdominal wall muscle thickness, mm
    outline: tuple[tuple[float, float], ...]  # (amplitude, phase) of outline harmonics k = 2, 3, 4
    z_top: float             # liver dome, mm
    liver_length: float      # cranio-caudal liver extent, mm
    spleen_scale: float
    has_gallbladder: bool
    ascites_mm: float        # 0 = no ascites
    hu: dict                 # tissue -> HU
    noise_sigma: float       # HU

    @property
    def cavity_a(self) -> float:
        return self.a - self.fat_mm - self.muscle_mm

    @property
    def cavity_b(self) -> float:
        return self.b - self.fat_mm - self.muscle_mm

    @property
    def spine_y(self) -> float:
        """y of the vertebral body centre."""
        return 0.48 * self.b


def sample_patient(rng: np.random.Generator, grid: Grid, condition: str) -> Patient:
    """Draw a patient for ``condition`` (one of :data:`LIVER_CONDITIONS`) that fits the field of view."""
    hz, hy, hx = grid.half_extent
    a = min(rng.uniform(140.0, 175.0), 0.93 * hx)
    b = min(a * rng.uniform(0.70, 0.80), 0.90 * hy)
    fat = rng.uniform(0.06, 0.17) * b
    muscle = rng.uniform(0.07, 0.10) * b
    outline = tuple((float(rng.uniform(0.005, 0.025)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3))
    top_margin = min(rng.uniform(8.0, 22.0), 0.15 * hz)
    z_top = hz - top_margin
    length = rng.uniform(135.0, 165.0) * (0.88 if condition == "cirrhotic" else 1.0)
    length = min(length, 2 * hz - top_margin - 8.0)
    hu = {
        "subcutaneous_fat": rng.uniform(-110.0, -95.0),
        "visceral_fat": rng.uniform(-100.0, -88.0),
        "muscle": rng.uniform(42.0, 49.0),
        "blood": rng.uniform(36.0, 44.0),
        "spleen": rng.uniform(46.0, 49.0),
        "kidney": rng.uniform(28.0, 34.0),
        "pancreas": rng.uniform(38.0, 46.0),
        "bone_cancellous": rng.uniform(310.0, 380.0),
        "bone_cortical": rng.uniform(700.0, 900.0),
        "rib": rng.uniform(450.0, 650.0),
        "cartilage": rng.uniform(100.0, 180.0),
        "disc": rng.uniform(70.0, 90.0),
        "csf": rng.uniform(5.0, 14.0),
        "lung": rng.uniform(-880.0, -840.0),
        "bile": rng.uniform(3.0, 15.0),
        "ascites": rng.uniform(2.0, 12.0),
        "bowel_wall": rng.uniform(35.0, 45.0),
        "bowel_fluid": rng.uniform(5.0, 25.0),
        "gas": rng.uniform(-990.0, -960.0),
        "stool": rng.uniform(-120.0, -60.0),
        "stomach_content": rng.uniform(8.0, 30.0),
    }
    return Patient(
        condition=condition, a=a, b=b, fat_mm=fat, muscle_mm=muscle, outline=outline,
        z_top=z_top, liver_length=length,
        spleen_scale=rng.uniform(1.25, 1.45) if condition == "cirrhotic" else rng.uniform(0.9, 1.08),
        has_gallbladder=bool(rng.random() < 0.85),
        ascites_mm=rng.uniform(6.0, 16.0) if condition == "cirrhotic" and rng.random() < 0.5 else 0.0,
        hu=hu, noise_sigma=rng.uniform(10.0, 14.0),
    )


@dataclass
class Shapes:
    """Signed-distance maps (mm, full grid, float32) of the organs the liver and lesions must respect."""

    body: np.ndarray
    muscle_outer: np.ndarray
    cavity: np.ndarray
    dome: np.ndarray          # abdominal side of the diaphragm (< 0 below it)
    ivc: np.ndarray
    aorta: np.ndarray
    vertebra: np.ndarray
    kidney_right: np.ndarray
    kidney_left: np.ndarray
    spleen: np.ndarray
    stomach: np.ndarray
    heart: np.ndarray
    gallbladder: np.ndarray | None
    landmarks: dict           # name -> (z, y, x) mm


def _full(array: np.ndarray, grid: Grid) -> np.ndarray:
    """A broadcastable (e.g. z-invariant) map expanded to a full-grid float32 array."""
    return np.ascontiguousarray(np.broadcast_to(array, grid.shape), dtype=np.float32)


def body_shapes(grid: Grid, patient: Patient) -> Shapes:
    """Organ signed-distance maps and landmarks for ``patient`` on ``grid``."""
    p = patient
    z, y, x = grid.coords()
    a, b, ac, bc, L, zt = p.a, p.b, p.cavity_a, p.cavity_b, p.liver_length, p.z_top
    theta = np.arctan2(y / b, x / a)
    wobble = sum(amp * np.cos(k * theta + ph) for k, (amp, ph) in zip((2, 3, 4), p.outline))
    body = np.maximum(ellipse_2d(y, x, (0.0, 0.0), (b, a)) - wobble * (a + b) / 2, y - 0.9 * b)
    body = _full(body, grid)
    posterior = np.clip(y / b, 0.0, 1.0)
    muscle_outer = body + p.fat_mm * (1.0 - 0.45 * posterior)
    s = np.clip(b / 115.0, 0.75, 1.1)
    ys = p.spine_y
    vertebra = _full(ellipse_2d(y, x, (ys, 0.0), (15 * s, 20 * s)), grid)
    paraspinal = np.minimum(ellipse_2d(y, x, (ys + 30 * s, -27 * s), (20 * s, 19 * s)),
                            ellipse_2d(y, x, (ys + 30 * s, 27 * s), (20 * s, 19 * s)))
    cavity = np.maximum(muscle_outer + p.muscle_mm, np.maximum(-paraspinal, -(vertebra - 2.0)))
    cavity = np.maximum(cavity, y - (ys + 18 * s)).astype(np.float32)
    dome_depth = 90.0
    dome = ellipsoid(np.maximum(z, np.float32(zt - dome_depth)), y, x, (zt - dome_depth, -0.1 * bc, -0.3 * ac),
                     (dome_depth, 1.1 * bc, 1.35 * ac))
    ivc = _full(ellipse_2d(y, x, (ys - 27 * s, -27 * s), (10 * s, 13 * s)), grid)
    aorta_r = 11.5 * s
    aorta = _full(ellipse_2d(y, x, (ys - 15 * s - aorta_r, 10 * s), (aorta_r, aorta_r)), grid)
    kidney_right_c = (zt - 0.62 * L - 45.0, ys + 5 * s, -0.42 * ac)
    kidney_left_c = (zt - 0.62 * L - 30.0, ys + 5 * s, 0.42 * ac)
    kidney_right = ellipsoid(z, y, x, kidney_right_c, (52.0, 21 * s, 27 * s), rotation(rz=0.35))
    kidney_left = ellipsoid(z, y, x, kidney_left_c, (52.0, 21 * s, 27 * s), rotation(rz=-0.35))
    ss = p.spleen_scale
    spleen_c = (zt - 0.33 * L, 0.38 * bc, 0.66 * ac)
    spleen = ellipsoid(z, y, x, spleen_c, (55.0 * ss, 0.34 * bc * ss, 0.17 * ac * ss), rotation(rz=-0.7))
    spleen = np.maximum(spleen, 6.0 - ellipsoid(z, y, x, (spleen_c[0], 0.22 * bc, 0.40 * ac),
                                                (60.0, 0.2 * bc, 0.16 * ac)))
    spleen = np.maximum(spleen, np.maximum(cavity + 2.0, dome + 3.0))
    spleen = np.maximum(spleen, 3.0 - kidney_left).astype(np.float32)
    stomach = ellipsoid(z, y, x, (zt - 0.30 * L, -0.12 * bc, 0.38 * ac), (45.0, 0.30 * bc, 0.22 * ac),
                        rotation(rz=0.5))
    stomach = np.maximum(np.maximum(stomach, cavity + 3.0), np.maximum(dome + 3.0, 2.0 - spleen))
    heart = ellipsoid(z, y, x, (zt + 40.0, -0.25 * bc, 0.12 * ac), (60.0, 0.45 * bc, 0.45 * ac))
    heart = np.maximum(heart, 4.0 - dome)
    hilum = (zt - 0.52 * L, 0.05 * bc, -0.24 * ac)
    gallbladder = None
    gb_c = (zt - 0.66 * L, -0.36 * bc, -0.26 * ac)
    if p.has_gallbladder:
        gallbladder = ellipsoid(z, y, x, gb_c, (28.0, 13.0 * s, 13.0 * s), rotation(rx=0.5))
    landmarks = {
        "hilum": hilum, "gallbladder": gb_c, "ivc_top": (zt - 12.0, ys - 27 * s, -27 * s),
        "spine": (0.0, ys, 0.0), "spleen": spleen_c, "right_lobe": (zt - 0.5 * L, 0.05 * bc, -0.45 * ac),
        "left_lobe": (zt - 0.30 * L, -0.45 * bc, 0.05 * ac), "kidney_right": kidney_right_c,
        "kidney_left": kidney_left_c,
    }
    return Shapes(body=body, muscle_outer=muscle_outer.astype(np.float32), cavity=cavity, dome=dome,
                  ivc=ivc, aorta=aorta, vertebra=vertebra, kidney_right=kidney_right, kidney_left=kidney_left,
                  spleen=spleen, stomach=stomach.astype(np.float32), heart=heart, gallbladder=gallbladder,
                  landmarks=landmarks)


def paint_anatomy(canvas: Canvas, grid: Grid, patient: Patient, shapes: Shapes, liver_sdf: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Paint everything except the liver and gallbladder, in anatomical layering order (later covers earlier):
    body wall, thorax above the diaphragm, bowel, pancreas, stomach, ascites, retroperitoneum and spleen,
    great vessels, spine, ribs."""
    hu, sp = patient.hu, grid.spacing

    def occ(sdf):
        return occupancy(sdf, sp)

    canvas.paint("subcutaneous_fat", occ(shapes.body), hu["subcutaneous_fat"])
    canvas.paint("muscle", occ(shapes.muscle_outer), hu["muscle"])
    canvas.paint("visceral_fat", occ(shapes.cavity), hu["visceral_fat"])
    # lungs and heart (with pericardial fat) above the diaphragm
    canvas.paint("lung", occ(np.maximum(shapes.cavity + 2.0, np.maximum(5.0 - shapes.dome, -shapes.heart))),
                 hu["lung"])
    canvas.paint("visceral_fat", occ(shapes.heart - 6.0), hu["visceral_fat"])
    canvas.paint("blood", occ(shapes.heart), hu["blood"])
    _paint_bowel(canvas, grid, patient, shapes, rng)
    _paint_upper_gi(canvas, grid, patient, shapes, rng)
    if patient.ascites_mm > 0:
        near = np.minimum(liver_sdf, shapes.spleen) - patient.ascites_mm
        canvas.paint("ascites", occ(np.maximum(near, shapes.cavity + 1.0)), hu["ascites"])
    _paint_retroperitoneum(canvas, grid, patient, shapes)
    canvas.paint("spleen", occ(shapes.spleen), hu["spleen"])
    canvas.paint("blood", occ(shapes.aorta), hu["blood"])
    canvas.paint("blood", occ(shapes.ivc), hu["blood"])
    _paint_spine(canvas, grid, patient, shapes, rng)
    _paint_ribs(canvas, grid, patient, shapes, rng)


def _paint_bowel(canvas: Canvas, grid: Grid, patient: Patient, shapes: Shapes, rng: np.random.Generator) -> None:
    """Bowel loops and the hepatic flexure of the colon below the liver hilum (solid organs cover them)."""
    ac, bc, L, zt = patient.cavity_a, patient.cavity_b, patient.liver_length, patient.z_top
    for k in range(int(rng.integers(14, 22))):
        if k == 0:  # hepatic flexure of the colon, under the right lobe
            start = np.array([zt - 0.95 * L, -0.15 * bc, -0.7 * ac])
            direction = np.array([0.1, 0.2, 1.0])
            radius = rng.uniform(14.0, 19.0)
            kind = rng.choice(["stool", "gas"], p=[0.7, 0.3])
        else:
            start = np.array([rng.uniform(-grid.half_extent[0] - 10.0, zt - 0.6 * L), rng.uniform(-0.8, 0.2) * bc,
                              rng.uniform(-0.7, 0.7) * ac])
            direction = rng.standard_normal(3)
            radius = rng.uniform(8.0, 14.0)
            kind = rng.choice(["bowel_fluid", "gas", "stool"], p=[0.55, 0.2, 0.25])
        _paint_bowel_loop(canvas, grid, shapes, patient.hu, start, direction, radius, str(kind), rng)


def _paint_upper_gi(canvas: Canvas, grid: Grid, patient: Patient, shapes: Shapes, rng: np.random.Generator) -> None:
    """Pancreas (head, neck, body, tail), portal trunk, stomach with wall, contents and an anterior gas cap."""
    hu, sp = patient.hu, grid.spacing
    a, b, bc, ac = patient.a, patient.b, patient.cavity_b, patient.cavity_a
    s = np.clip(b / 115.0, 0.75, 1.1)
    zp = patient.z_top - 0.62 * patient.liver_length
    pts = [(zp - 10, 0.02 * b, -0.16 * a), (zp, -0.06 * b, 0.0), (zp + 6, 0.04 * b, 0.16 * a),
           (zp + 18, 0.24 * b, 0.42 * a)]
    radius = rng.uniform(8.0, 11.0) * s
    hilum = np.array(shapes.landmarks["hilum"])
    confluence = hilum + np.array([-35.0, 0.05 * bc, 0.22 * ac])
    tubes = [("pancreas", a0, a1, radius, radius * 0.85) for a0, a1 in zip(pts[:-1], pts[1:])]
    tubes.append(("blood", confluence, hilum, 7.0 * s, 6.5 * s))
    for name, a0, a1, r0, r1 in tubes:
        box = grid.box(np.add(a0, a1) / 2, np.abs(np.subtract(a0, a1)) / 2 + max(r0, r1) + 3)
        zb, yb, xb = grid.coords(box)
        canvas.paint(name, occupancy(capsule(zb, yb, xb, a0, a1, r0, r1), sp), hu[name], box)
    _, y, _ = grid.coords()
    canvas.paint("bowel_wall", occupancy(shapes.stomach, sp), hu["bowel_wall"])
    inner = shapes.stomach + np.float32(4.0)
    canvas.paint("stomach_content", occupancy(inner, sp), hu["stomach_content"])
    gas_level = -0.12 * bc - rng.uniform(0.05, 0.25) * bc
    canvas.paint("gas", occupancy(np.maximum(inner, y - np.float32(gas_level)), sp), hu["gas"])


def _paint_retroperitoneum(canvas: Canvas, grid: Grid, patient: Patient, shapes: Shapes) -> None:
    """Kidneys with renal sinus fat, and the psoas muscles growing towards the pelvis."""
    hu, sp = patient.hu, grid.spacing
    z, y, x = grid.coords()
    s = np.clip(patient.b / 115.0, 0.75, 1.1)
    ys = patient.spine_y
    for side, kidney in ((-1, shapes.kidney_right), (1, shapes.kidney_left)):
        canvas.paint("kidney", occupancy(kidney, sp), hu["kidney"])
        kz, ky, kx = shapes.landmarks["kidney_right" if side < 0 else "kidney_left"]
        sinus = ellipsoid(z, y, x, (kz, ky - 7 * s, kx - side * 12 * s), (25.0, 8 * s, 8 * s))
        canvas.paint("visceral_fat", occupancy(np.maximum(sinus, kidney + 2.0), sp), hu["visceral_fat"])
        top = (patient.z_top - 0.55 * patient.liver_length, ys - 2 * s, side * 30 * s)
        bottom = (-grid.half_extent[0] - 40.0, ys + 2 * s, side * 40 * s)
        canvas.paint("muscle", occupancy(capsule(z, y, x, top, bottom, 2.0, 24.0 * s), sp), hu["muscle"])


def _paint_spine(canvas: Canvas, grid: Grid, patient: Patient, shapes: Shapes, rng: np.random.Generator) -> None:
    """Vertebral bodies (cortex, cancellous bone, discs every 36 mm), posterior elements and spinal canal."""
    hu, sp = patient.hu, grid.spacing
    z, y, x = grid.coords()
    s = np.clip(patient.b / 115.0, 0.75, 1.1)
    ys = patient.spine_y

    def occ(sdf):
        return occupancy(_full(sdf, grid), sp)

    canvas.paint("bone_cortical", occ(shapes.vertebra), hu["bone_cortical"])
    canvas.paint("bone", occ(shapes.vertebra + 3.0), hu["bone_cancellous"])
    disc = np.abs((z - np.float32(rng.uniform(0, 36))) % 36.0 - 18.0) - 4.0
    canvas.paint("disc", occ(np.maximum(shapes.vertebra, disc)), hu["disc"])
    posterior = np.minimum(ellipse_2d(y, x, (ys + 25 * s, 0.0), (12 * s, 14 * s)),
                           ellipse_2d(y, x, (ys + 42 * s, 0.0), (12 * s, 5 * s)))
    canvas.paint("bone_cortical", occ(posterior), hu["bone_cortical"] * 0.8)
    canvas.paint("csf", occ(ellipse_2d(y, x, (ys + 25 * s, 0.0), (7 * s, 8 * s))), hu["csf"])


def _paint_ribs(canvas: Canvas, grid: Grid, patient: Patient, shapes: Shapes, rng: np.random.Generator) -> None:
    """Ribs: oblique bands in the wall descending anteriorly over the upper abdomen (costal cartilage in
    front), with irregular spacing; none at the spine or sternum."""
    p = patient
    z, y, x = grid.coords()
    a, b = p.a, p.b
    ang = np.abs(np.arctan2(x / a, y / b))           # 0 posterior, pi anterior
    arc = ang * (a + b) / 2
    arc = arc + np.float32(rng.uniform(4.0, 8.0)) * np.sin(arc / np.float32(rng.uniform(25.0, 40.0))
                                                            + np.float32(rng.uniform(0, 2 * np.pi)))
    slope, period, height = rng.uniform(0.6, 0.8), rng.uniform(28.0, 34.0), 8.0
    phase = (z + np.float32(slope) * arc - np.float32(rng.uniform(0, period))) % np.float32(period) - period / 2
    band = np.abs(phase) * np.float32(np.cos(np.arctan(slope))) - height / 2
    radial = np.abs(shapes.cavity - np.float32(0.45 * p.muscle_mm)) - 3.0
    low = p.z_top - p.liver_length * (0.55 + 0.35 * np.clip(y / b + 0.3, 0, 1))
    outside_arc = np.maximum(0.12 * np.pi - ang, ang - 0.8 * np.pi) * 30.0
    rib = np.maximum(np.maximum(band, radial), np.maximum(low - z, outside_arc)).astype(np.float32)
    cartilage = ang > np.float32(0.62 * np.pi)
    canvas.paint("rib", occupancy(rib, grid.spacing),
                 np.where(cartilage, np.float32(p.hu["cartilage"]), np.float32(p.hu["rib"])))


def _paint_bowel_loop(canvas: Canvas, grid: Grid, shapes: Shapes, hu: dict, start: np.ndarray,
                      direction: np.ndarray, radius: float, kind: str, rng: np.random.Generator) -> None:
    """A curved loop of bowel (three tube segments) with a wall and fluid, faeces or gas; gas floats
    anteriorly over fluid (air-fluid level, as in a supine patient)."""
    points = [np.asarray(start, dtype=float)]
    d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    for _ in range(3):
        points.append(points[-1] + d * rng.uniform(18.0, 32.0))
        turn = rng.standard_normal(3)
        turn -= (turn @ d) * d
        angle = rng.uniform(0.5, 1.3)
        d = np.cos(angle) * d + np.sin(angle) * turn / np.linalg.norm(turn)
    pts = np.array(points)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    box = grid.box((lo + hi) / 2, (hi - lo) / 2 + radius + 4)
    zb, yb, xb = grid.coords(box)
    tube = np.min([capsule(zb, yb, xb, a, b, radius, radius) for a, b in zip(pts[:-1], pts[1:])], axis=0)
    cavity = shapes.cavity[box]
    sp = grid.spacing
    canvas.paint("bowel_wall", occupancy(np.maximum(tube, cavity + 1.0), sp), hu["bowel_wall"], box)
    inner = np.maximum(tube + 3.0, cavity + 4.0)
    if kind == "stool":  # mottled faeces with small gas bubbles
        canvas.paint("stool", occupancy(inner, sp), hu["stool"] + 60.0 * smooth_field(rng, inner.shape, sp, 4.0), box)
        return
    canvas.paint("bowel_fluid", occupancy(inner, sp), hu["bowel_fluid"], box)
    if kind == "gas":
        level = float(pts[:, 1].mean()) + rng.uniform(-0.3, 0.5) * radius
        canvas.paint("gas", occupancy(np.maximum(inner, yb - np.float32(level)), sp), hu["gas"], box)
