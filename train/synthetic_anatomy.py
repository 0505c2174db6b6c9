"""Procedural chest anatomy for the synthetic CT-RATE-style data set, rendered directly in Hounsfield units (HU).

Coordinates
-----------
Everything here lives in a *body frame* measured in millimetres:

* ``x``: patient left is positive (0 = body midline),
* ``y``: patient posterior is positive (0 = centre of the body's antero-posterior extent),
* ``z``: patient superior is positive (0 = the lung apices).

These are the DICOM patient axes (LPS) up to a translation, so the writer in :mod:`x2ctclip.train.synthetic` only
adds an offset to go to scanner coordinates. Volumes are float32 arrays of shape ``(D, H, W)`` indexed
``[z, y, x]``: slice index increases towards the head, row index towards the back, column index towards the
patient's left. An axial slice ``volume[k]`` shown with ``imshow`` is therefore in the radiological convention
(anterior up, patient right on the viewer's left) and ``volume.mean(axis=1)[::-1]`` is an upright frontal
projection.

Design
------
:func:`plan_chest` samples every anatomical parameter (a :class:`ChestPlan`: plain numbers and polylines, no
voxels), findings may then edit the plan (a larger heart, dilated airways...), and :func:`render_chest` rasterises
it at the requested shape and spacing. Nothing is generated at a higher resolution than the target grid: tubes are
rendered as anti-aliased capsule chains inside their own bounding boxes, large organs as quadrics evaluated by
broadcasting, ribs in a thin shell only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Tissue attenuation in HU (non-contrast CT). Per-patient jitter is added in plan_chest.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 45.0
HU_BLOOD = 40.0
HU_LIVER = 58.0
HU_SPLEEN = 48.0
HU_KIDNEY = 32.0
HU_FLUID = 12.0
HU_CARTILAGE = 120.0
HU_LUNG = -885.0

LOBES = ("right upper", "right middle", "right lower", "left upper", "left lower")


# ----------------------------------------------------------------------------------------------- grid and rendering
@dataclass
class Grid:
    """A voxel grid in the body frame.

    Args:
        shape: ``(D, H, W)`` voxels (slices, rows, columns).
        spacing: ``(sz, sy, sx)`` in mm.
        origin: body-frame ``(z, y, x)`` in mm of voxel ``[0, 0, 0]``'s centre.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def __post_init__(self) -> None:
        d, h, w = self.shape
        sz, sy, sx = self.spacing
        oz, oy, ox = self.origin
        self.z = (oz + sz * np.arange(d, dtype=np.float32)).reshape(d, 1, 1)
        self.y = (oy + sy * np.arange(h, dtype=np.float32)).reshape(1, h, 1)
        self.x = (ox + sx * np.arange(w, dtype=np.float32)).reshape(1, 1, w)
        self.voxel = float(min(self.spacing))

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices covering the body-frame box ``lo..hi`` (each ``(z, y, x)`` mm); None when outside."""
        out = []
        for axis in range(3):
            s, o, n = self.spacing[axis], self.origin[axis], self.shape[axis]
            a = int(np.floor((lo[axis] - o) / s))
            b = int(np.ceil((hi[axis] - o) / s)) + 1
            a, b = max(a, 0), min(b, n)
            if a >= b:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def coords(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable ``(z, y, x)`` coordinate arrays (mm) of a box from :meth:`box`."""
        return self.z[box[0]], self.y[:, box[1]], self.x[:, :, box[2]]

    def points_mm(self, flat_index: np.ndarray) -> np.ndarray:
        """Body-frame ``(N, 3)`` positions (z, y, x) of flat voxel indices."""
        k, j, i = np.unravel_index(flat_index, self.shape)
        return np.stack(
            [self.z.ravel()[k], self.y.ravel()[j], self.x.ravel()[i]], axis=1
        ).astype(np.float64)


def capsule_fraction(grid: Grid, a, b, ra: float, rb: float, *, min_radius: float = 0.0):
    """Anti-aliased occupancy (0..1) of a tapered capsule from point ``a`` to ``b`` (``(z, y, x)`` mm).

    Radii ``ra``/``rb`` are in mm; ``min_radius`` (mm) keeps thin objects (wires) from vanishing between voxel
    centres. Returns ``(box, fraction)`` or ``None`` when the capsule misses the grid. The fraction ramps linearly
    over one voxel across the surface, a cheap stand-in for the partial-volume effect.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    ra, rb = max(ra, min_radius), max(rb, min_radius)
    r = max(ra, rb) + grid.voxel
    box = grid.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    d = b - a
    dd = float(d @ d) or 1e-6
    t = ((z - a[0]) * d[0] + (y - a[1]) * d[1] + (x - a[2]) * d[2]) / dd
    np.clip(t, 0.0, 1.0, out=t)
    dist = np.sqrt((z - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (x - a[2] - t * d[2]) ** 2)
    sd = dist - (ra + t * (rb - ra))
    frac = np.clip(0.5 - sd / grid.voxel, 0.0, 1.0)
    return box, frac.astype(np.float32, copy=False)


def ellipsoid_fraction(grid: Grid, center, axes, rotation: np.ndarray | None = None, *, grow: float = 0.0):
    """Anti-aliased occupancy of an ellipsoid with semi-axes ``axes`` (mm, in its own frame) grown by ``grow`` mm.

    ``rotation`` (3x3, body frame <- ellipsoid frame, rows/cols in (z, y, x) order) orients it. Returns
    ``(box, fraction)`` or ``None``.
    """
    c = np.asarray(center, dtype=np.float32)
    ax = np.asarray(axes, dtype=np.float32) + grow
    reach = float(ax.max()) + grid.voxel
    box = grid.box(c - reach, c + reach)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    dz, dy, dx = z - c[0], y - c[1], x - c[2]
    if rotation is None:
        u, v, w = dz, dy, dx
    else:
        rt = np.asarray(rotation, dtype=np.float32).T  # ellipsoid frame <- body frame
        u = rt[0, 0] * dz + rt[0, 1] * dy + rt[0, 2] * dx
        v = rt[1, 0] * dz + rt[1, 1] * dy + rt[1, 2] * dx
        w = rt[2, 0] * dz + rt[2, 1] * dy + rt[2, 2] * dx
    rho = np.sqrt((u / ax[0]) ** 2 + (v / ax[1]) ** 2 + (w / ax[2]) ** 2)
    # Distance to the surface is approximately (rho - 1) * local radius; the smallest semi-axis is a safe scale.
    frac = np.clip(0.5 - (rho - 1.0) * float(ax.min()) / grid.voxel, 0.0, 1.0)
    return box, frac.astype(np.float32, copy=False)


def blend(volume: np.ndarray, placed, value, *, where: np.ndarray | None = None, scale: float = 1.0) -> None:
    """Blend ``value`` (HU, scalar or array shaped like the box) into ``volume`` with a ``placed`` occupancy."""
    if placed is None:
        return
    box, frac = placed
    if scale != 1.0:
        frac = frac * scale
    if where is not None:
        frac = frac * where[box]
    sub = volume[box]
    sub += frac * (value - sub)


def paint_max(target: np.ndarray, placed) -> None:
    """Accumulate an occupancy into ``target`` with max (idempotent where pieces overlap)."""
    if placed is None:
        return
    box, frac = placed
    np.maximum(target[box], frac, out=target[box])


def chain_fraction(grid: Grid, target: np.ndarray, points, radii, *, min_radius: float = 0.0) -> None:
    """Max-accumulate the occupancy of a polyline of tapered capsules (``points`` (N, 3) mm, ``radii`` (N,) mm)."""
    for i in range(len(points) - 1):
        paint_max(target, capsule_fraction(grid, points[i], points[i + 1], radii[i], radii[i + 1],
                                           min_radius=min_radius))


def chain_placed(grid: Grid, points, radii, *, min_radius: float = 0.0):
    """Occupancy of a capsule chain as ``(box, fraction)`` over the chain's own bounding box (or None)."""
    points = np.asarray(points, dtype=np.float32)
    r = float(np.max(radii)) + 2 * grid.voxel
    box = grid.box(points.min(axis=0) - r, points.max(axis=0) + r)
    if box is None:
        return None
    local = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
    origin = tuple(grid.origin[i] + box[i].start * grid.spacing[i] for i in range(3))
    sub = Grid(local.shape, grid.spacing, origin)
    chain_fraction(sub, local, points, radii, min_radius=min_radius)
    return box, local


def splat_segments(grid: Grid, segments) -> np.ndarray:
    """Volume fraction (0..1) occupied by thin tapered tubes ``[(a, b, (ra, rb)), ...]`` (mm), by trilinear
    splatting of points every half voxel along each segment, each carrying its slab volume ``pi r^2 ds``.

    For tubes thinner than a voxel this gives the partial-volume occupancy of :func:`capsule_fraction` at a
    fraction of the cost (one ``bincount`` for all segments).
    """
    step = 0.5 * grid.voxel
    pts, vol = [], []
    for a, b, (ra, rb) in segments:
        length = float(np.linalg.norm(np.asarray(b) - np.asarray(a)))
        n = max(2, int(np.ceil(length / step)) + 1)
        t = np.linspace(0.0, 1.0, n)[:, None]
        pts.append(np.asarray(a) + t * (np.asarray(b) - np.asarray(a)))
        r = ra + t[:, 0] * (rb - ra)
        vol.append(np.pi * r * r * (length / (n - 1)))
    p = np.concatenate(pts)
    w = np.concatenate(vol) / float(np.prod(grid.spacing))
    idx = (p - np.asarray(grid.origin)) / np.asarray(grid.spacing)
    base = np.floor(idx).astype(np.int64)
    frac = idx - base
    shape = np.asarray(grid.shape)
    flats, weights = [], []
    for corner in range(8):
        off = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        c = base + off
        ok = np.all((c >= 0) & (c < shape), axis=1)
        flats.append(np.ravel_multi_index(c[ok].T, grid.shape))
        weights.append((w * np.prod(np.where(off, frac, 1.0 - frac), axis=1))[ok])
    out = np.bincount(np.concatenate(flats), weights=np.concatenate(weights), minlength=int(np.prod(shape)))
    return np.minimum(out, 1.0).astype(np.float32).reshape(grid.shape)


def smooth_path(points, n: int = 24) -> np.ndarray:
    """Catmull-Rom resampling of a few control points ``(K, 3)`` into ``n`` points along a smooth curve."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        t = np.linspace(0, 1, n)[:, None]
        return p[0] + t * (p[-1] - p[0])
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    seg = len(p) - 1
    out = []
    for s in np.linspace(0, seg, n):
        i = min(int(s), seg - 1)
        t = s - i
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return np.asarray(out)


def rotation_zyx(axial_deg: float = 0.0, coronal_deg: float = 0.0) -> np.ndarray:
    """Rotation (body <- object frame, (z, y, x) order): ``axial_deg`` about z, then ``coronal_deg`` about y."""
    a, c = np.deg2rad(axial_deg), np.deg2rad(coronal_deg)
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])  # turns y towards x
    ry = np.array([[np.cos(c), 0, -np.sin(c)], [0, 1, 0], [np.sin(c), 0, np.cos(c)]])  # turns z towards x
    return rz @ ry


# ---------------------------------------------------------------------------------------------- patient and plan
@dataclass
class Patient:
    """Who is scanned: ``sex`` ("M"/"F"), ``age`` (years), ``habitus`` (-1 thin .. 1.5 obese), ``height`` factor."""

    sex: str
    age: int
    habitus: float
    height: float


def sample_patient(rng: np.random.Generator, *, sex: str | None = None, age: int | None = None) -> Patient:
    """Draw a CT-RATE-like adult: 55 % men, age about 57 +- 15 years, mostly normal habitus."""
    sex = sex or ("M" if rng.random() < 0.55 else "F")
    if age is None:
        age = int(np.clip(rng.normal(57, 15), 18, 92))
    habitus = float(np.clip(rng.normal(0.1, 0.55), -1.0, 1.5))
    height = float(np.clip(rng.normal(1.0 if sex == "M" else 0.93, 0.05), 0.8, 1.15))
    return Patient(sex=sex, age=age, habitus=habitus, height=height)


@dataclass
class Tube:
    """A tubular structure: ``points`` (N, 3) body-frame mm, ``radii`` (N,) mm, ``hu`` its content."""

    points: np.ndarray
    radii: np.ndarray
    hu: float = HU_BLOOD


@dataclass
class Branch:
    """One segment of a bronchovascular tree (``a`` -> ``b``, (z, y, x) mm) with its generation and lobe."""

    a: np.ndarray
    b: np.ndarray
    generation: int
    lobe: str
    vessel_r: tuple[float, float]
    airway_r: tuple[float, float]
    vessel_offset_a: np.ndarray
    vessel_offset_b: np.ndarray


@dataclass
class ChestPlan:
    """Every anatomical parameter of one chest, in mm (body frame, see the module docstring) and HU. Findings edit
    it before :func:`render_chest`.

    ``body_a`` / ``body_b_ant`` / ``body_b_post``: body half width and anterior / posterior half depths at mid chest;
    ``fat`` / ``muscle``: wall layer thicknesses; ``cav_a``, ``cav_y_ant``, ``cav_y_post``: thoracic cavity half width
    and anterior / posterior limits; ``z_apex`` (0), ``z_dome_right``, ``z_dome_left``, ``z_recess``: heights of the
    apices, the dome tops and the posterior costophrenic recesses; ``apex_centers`` / ``dome_centers``: paraboloid
    caps per side; heart as a rotated ellipsoid (``heart_center``, semi-axes ``heart_axes``, ``heart_rotation``,
    scaled by ``heart_scale``); ``tubes``: vessels, airways and oesophagus by name; ``fissure``: planar fissures
    (``z0 + slope * (y - y0)`` oblique, ``horizontal`` on the right); ``hu``: this patient's tissue values.
    """

    patient: Patient
    body_a: float
    body_b_ant: float
    body_b_post: float
    fat: float
    muscle: float
    cav_a: float
    cav_y_ant: float
    cav_y_post: float
    z_apex: float
    z_dome_right: float
    z_dome_left: float
    z_recess: float
    apex_centers: dict
    dome_centers: dict
    heart_center: np.ndarray
    heart_axes: np.ndarray
    heart_rotation: np.ndarray
    epicardial_fat: float
    spine_y: float
    vertebra_r: float
    tubes: dict = field(default_factory=dict)
    landmarks: dict = field(default_factory=dict)  # named points (carina, hila, hiatus, aortic arch), mm
    breasts: list = field(default_factory=list)
    hu: dict = field(default_factory=dict)
    # edited by findings
    heart_scale: float = 1.0
    pericardial_effusion_mm: float = 0.0
    airway_lumen_scale: dict = field(default_factory=dict)  # lobe -> scale of generation >= 2 lumens
    airway_wall_scale: float = 1.0
    airway_max_generation: int = 2
    branches: list = field(default_factory=list)
    hiatal_hernia: dict | None = None
    fissure: dict = field(default_factory=dict)

    # Geometry helpers used by rendering, findings and reports ---------------------------------------------------
    def body_half_axes(self, z):
        """Body half width, anterior and posterior half depths (mm) at height(s) ``z``."""
        z = np.asarray(z, dtype=np.float32)
        # Narrower towards the neck above the apices; the lower chest is slightly wider.
        top = 1.0 - 0.22 / (1.0 + np.exp(-(z - 25.0) / 12.0))
        low = 1.0 + 0.03 / (1.0 + np.exp((z + 180.0) / 30.0))
        return self.body_a * top * low, self.body_b_ant * (0.85 + 0.15 * top), self.body_b_post * (0.9 + 0.1 * top)

    def cavity(self, z):
        """Thoracic cavity ellipse at height(s) ``z``: half width, centre y and half depth (mm)."""
        a, _, _ = self.body_half_axes(z)
        cav_a = self.cav_a * a / self.body_a
        yc = 0.5 * (self.cav_y_ant + self.cav_y_post)
        return cav_a, yc, 0.5 * (self.cav_y_post - self.cav_y_ant)

    def dome(self, side: str, x, y):
        """Height (mm) of the diaphragm dome of ``side`` ("right"/"left") above ``(x, y)``."""
        cx, cy, rx, ry = self.dome_centers[side]
        top = self.z_dome_right if side == "right" else self.z_dome_left
        return top - ((x - cx) ** 2 / (2 * rx) + (y - cy) ** 2 / (2 * ry))

    def apex(self, side: str, x, y):
        """Height (mm) of the apical lung surface of ``side`` above ``(x, y)``."""
        cx, cy, r = self.apex_centers[side]
        return self.z_apex - ((x - cx) ** 2 + (y - cy) ** 2) / (2 * r)

    def lobe_index(self, pts) -> np.ndarray:
        """Index into :data:`LOBES` of body-frame points ``(N, 3)`` (z, y, x), from planar approximations of the
        oblique and horizontal fissures."""
        pts = np.atleast_2d(np.asarray(pts, dtype=np.float64))
        z, y, x = pts[:, 0], pts[:, 1], pts[:, 2]
        lower = z < self.fissure["z0"] + self.fissure["slope"] * (y - self.fissure["y0"])
        middle = z < self.fissure["horizontal"]
        right = np.where(lower, 2, np.where(middle, 1, 0))
        left = np.where(lower, 4, 3)
        return np.where(x < 0, right, left)

    def lobe_of(self, p) -> str:
        """Lobe name (one of :data:`LOBES`) of a body-frame point ``(z, y, x)``."""
        return LOBES[int(self.lobe_index(p)[0])]


def plan_chest(rng: np.random.Generator, patient: Patient) -> ChestPlan:
    """Sample the anatomy of one patient (sizes, positions, densities) as a :class:`ChestPlan`."""
    male = patient.sex == "M"
    h = patient.habitus
    s = patient.height
    jit = lambda sd: float(rng.normal(0.0, sd))  # noqa: E731 - tiny local helper

    body_a = (168.0 if male else 152.0) * (1 + 0.10 * h) + jit(6)
    body_b_ant = (112.0 if male else 104.0) * (1 + 0.13 * h) + jit(4)
    body_b_post = body_b_ant * 0.98
    fat = max(4.0, (10.0 if male else 14.0) + 11.0 * h + jit(2))
    muscle = (6.0 if male else 5.0) * (1 - 0.004 * max(0, patient.age - 40)) + jit(1)
    wall = fat + muscle + 7.0  # fat, muscle, ribs and intercostal muscles
    cav_a = body_a - wall
    cav_y_ant = -body_b_ant + wall + 2.0
    cav_y_post = body_b_post - fat - 14.0
    # Landmarks along z (apex at 0), scaled by the patient's height.
    z_dome_right = -(178.0 + jit(10)) * s
    z_dome_left = z_dome_right - (14.0 + jit(4))
    z_recess = z_dome_left - 62.0 * s
    spine_y = cav_y_post - 30.0
    vertebra_r = (17.0 if male else 15.0) + jit(1)

    plan = ChestPlan(
        patient=patient,
        body_a=body_a,
        body_b_ant=body_b_ant,
        body_b_post=body_b_post,
        fat=fat,
        muscle=muscle,
        cav_a=cav_a,
        cav_y_ant=cav_y_ant,
        cav_y_post=cav_y_post,
        z_apex=0.0,
        z_dome_right=z_dome_right,
        z_dome_left=z_dome_left,
        z_recess=z_recess,
        apex_centers={
            "right": (-0.40 * cav_a + jit(4), spine_y - 25.0, 34.0 + jit(3)),
            "left": (0.40 * cav_a + jit(4), spine_y - 25.0, 34.0 + jit(3)),
        },
        dome_centers={
            "right": (-0.38 * cav_a, -12.0 + jit(4), 66.0 + jit(4), 52.0 + jit(3)),
            "left": (0.38 * cav_a, -8.0 + jit(4), 66.0 + jit(4), 52.0 + jit(3)),
        },
        heart_center=np.array([z_dome_left + 52.0 * s + jit(4), cav_y_ant + 50.0 + jit(3), 0.2 * cav_a + jit(4)]),
        heart_axes=np.array([52.0 * s, 40.0, 66.0]) * (1.0 if male else 0.93) * (1 + 0.05 * rng.standard_normal()),
        heart_rotation=rotation_zyx(axial_deg=28.0 + jit(5), coronal_deg=22.0 + jit(5)),
        epicardial_fat=float(np.clip(3.0 + 2.5 * h + 0.04 * (patient.age - 50) + jit(1), 1.0, 9.0)),
        spine_y=spine_y,
        vertebra_r=vertebra_r,
    )
    old = max(0.0, (patient.age - 40) / 40.0)
    plan.hu = {
        "fat": HU_FAT + jit(8),
        "muscle": HU_MUSCLE + jit(5),
        "blood": HU_BLOOD + jit(4),
        "liver": HU_LIVER + jit(6) - (25.0 if rng.random() < 0.15 else 0.0),  # some fatty livers
        "lung": HU_LUNG + jit(15) - 15.0 * old,
        "bone_cortex": 820.0 - 180.0 * old + jit(40),
        "bone_marrow": 240.0 - 110.0 * old + jit(20),
        "cartilage": HU_CARTILAGE + 180.0 * old * rng.random(),  # costal cartilage calcifies with age
    }
    plan.fissure = {
        "z0": -70.0 * s + jit(6),
        "y0": cav_y_post - 5.0,
        "slope": 1.1 + jit(0.08),
        "horizontal": -118.0 * s + jit(6),
    }
    _plan_mediastinum(rng, plan)
    if patient.sex == "F":
        for side in (-1, 1):
            size = 1.0 + 0.35 * h + 0.2 * rng.random()
            plan.breasts.append(
                (np.array([plan.heart_center[0] + 5.0 + jit(6), -body_b_ant + 12.0, side * (0.5 * body_a + jit(5))]),
                 np.array([42.0, 22.0 * size, 50.0]) * (0.9 + 0.2 * rng.random()))
            )
    return plan


def _plan_mediastinum(rng: np.random.Generator, plan: ChestPlan) -> None:
    """Vessels, airways and oesophagus as tubes (body-frame mm)."""
    jit = lambda sd: float(rng.normal(0.0, sd))  # noqa: E731
    s = plan.patient.height
    hc = plan.heart_center
    old = max(0.0, (plan.patient.age - 40) / 40.0)
    yv = plan.spine_y
    carina = np.array([-82.0 * s + jit(4), yv - 42.0, 0.0 + jit(2)])
    plan.landmarks["carina"] = carina
    trachea_r = (9.5 if plan.patient.sex == "M" else 8.0) + jit(0.5)
    plan.tubes["trachea"] = Tube(
        smooth_path([[70.0, yv - 58.0, 0.0], [0.0, yv - 52.0, jit(2)], carina + [6, 0, 0]], 10),
        np.full(10, trachea_r), HU_AIR)
    # Main bronchi: the right one shorter and steeper, the left longer and more horizontal.
    rb_end = carina + np.array([-24.0 * s, 4.0, -27.0]) + rng.normal(0, 2, 3)
    lb_end = carina + np.array([-32.0 * s, 6.0, 44.0]) + rng.normal(0, 2, 3)
    plan.tubes["right_bronchus"] = Tube(np.array([carina, rb_end]), np.array([trachea_r * 0.75, 6.0]), HU_AIR)
    plan.tubes["left_bronchus"] = Tube(np.array([carina, lb_end]), np.array([trachea_r * 0.68, 5.5]), HU_AIR)
    plan.landmarks["hilum_right"] = rb_end
    plan.landmarks["hilum_left"] = lb_end
    plan.landmarks["trachea_r"] = trachea_r

    # Aorta: root at the heart base, ascending on the right, arch over the left bronchus, descending left of spine.
    ar = (14.0 + 3.0 * old) * (1.0 if plan.patient.sex == "M" else 0.92) + jit(0.8)
    root = hc + np.array([38.0, 2.0, -22.0])
    arch_top = np.array([carina[0] + 30.0 + jit(3), yv - 48.0, 6.0])
    desc_top = np.array([carina[0] + 12.0, yv - 18.0, 26.0 + jit(2)])
    aorta = smooth_path([
        root,
        [carina[0] + 8.0, plan.cav_y_ant + 38.0, -14.0 + jit(2)],
        arch_top,
        desc_top,
        [carina[0] - 60.0, yv - 14.0, 24.0 + jit(2)],
        [plan.z_dome_left - 10.0, yv - 18.0, 14.0],
        [plan.z_recess - 40.0, yv - 22.0, 6.0],
    ], 40)
    radii = np.interp(np.arange(40), [0, 12, 20, 40], [ar * 1.05, ar, ar * 0.88, ar * 0.8])
    plan.tubes["aorta"] = Tube(aorta, radii, plan.hu["blood"])
    plan.landmarks["aorta_arch"] = arch_top
    # Supra-aortic branches.
    for name, dx, r in (("brachiocephalic", -10.0, 6.0), ("carotid", 2.0, 4.5), ("subclavian", 12.0, 5.0)):
        start = arch_top + np.array([4.0, -4.0 if dx < 0 else 2.0, dx])
        end = np.array([80.0, start[1] + 4.0, dx * 1.8 - (6 if dx < 0 else -4)])
        plan.tubes[name] = Tube(np.array([start, end]), np.array([r, r * 0.9]), plan.hu["blood"])
    # Pulmonary trunk and arteries.
    pt0 = hc + np.array([40.0, -20.0, 8.0])
    bif = np.array([carina[0] - 8.0, carina[1] - 12.0, 8.0])
    pr = 12.5 + 2.0 * old + jit(0.8)
    plan.tubes["pulmonary_trunk"] = Tube(smooth_path([pt0, pt0 + [18, 8, 4], bif], 8), np.full(8, pr),
                                         plan.hu["blood"])
    plan.tubes["left_pa"] = Tube(smooth_path([bif, [carina[0] - 4, carina[1] - 4, 32.0],
                                              lb_end + [0, 10, 8]], 10), np.linspace(pr * 0.8, 8.0, 10),
                                 plan.hu["blood"])
    plan.tubes["right_pa"] = Tube(smooth_path([bif, [carina[0] - 12, carina[1] - 18, -16.0],
                                               rb_end + [-6, -10, -4]], 10), np.linspace(pr * 0.8, 8.0, 10),
                                  plan.hu["blood"])
    # Superior vena cava into the right atrium; azygos arch is omitted.
    plan.tubes["svc"] = Tube(np.array([[80.0, plan.cav_y_ant + 40.0, -26.0], [carina[0], carina[1] - 24.0, -30.0],
                                       hc + [30.0, 8.0, -42.0]]), np.array([8.5, 9.5, 10.0]), plan.hu["blood"] - 3)
    # Inferior vena cava from the right atrium down through the liver.
    plan.tubes["ivc"] = Tube(np.array([hc + [-30.0, 20.0, -30.0], [plan.z_recess - 40, yv - 10.0, -24.0]]),
                             np.array([12.0, 11.0]), plan.hu["blood"] - 3)
    # Oesophagus: behind the trachea, left of the midline, through the hiatus to the stomach.
    hiatus = np.array([plan.z_dome_left - 15.0, yv - 38.0, 22.0])
    plan.landmarks["hiatus"] = hiatus
    plan.tubes["esophagus"] = Tube(smooth_path([[70.0, yv - 36.0, 4.0], [carina[0], yv - 30.0, 6.0],
                                                [hc[0] - 10.0, yv - 30.0, 10.0], hiatus], 20),
                                   np.full(20, 7.5), HU_MUSCLE - 5)


def plan_trees(rng: np.random.Generator, plan: ChestPlan, grid: Grid, lung_label: np.ndarray, n_leaves: int = 70):
    """Bronchovascular trees: lobar, segmental and subsegmental branches from each hilum to points in the lung.

    Branch targets are random voxels of the rendered lung mask (``lung_label``: 1 right, 2 left), grouped per lobe,
    so the trees fill whatever lung shape the patient has. Fills ``plan.branches``.
    """
    plan.branches = []
    for side, label, hilum in (("right", 1, plan.landmarks["hilum_right"]), ("left", 2, plan.landmarks["hilum_left"])):
        idx = np.flatnonzero(lung_label.ravel() == label)
        if len(idx) < 8:
            continue
        pts = grid.points_mm(rng.choice(idx, size=min(len(idx), n_leaves * 3), replace=False))
        lobes = np.array(LOBES)[plan.lobe_index(pts)]
        for lobe in sorted(set(lobes)):
            lp = pts[lobes == lobe]
            if len(lp) < 3:
                continue
            centroid = lp.mean(axis=0)
            lobar = hilum + 0.35 * (centroid - hilum)
            o_lobar = _add_branch(rng, plan, hilum, lobar, np.zeros(3), 1, lobe, (5.5, 4.8), (4.2, 3.6))
            n_seg = 2 if len(lp) < 40 else (3 if lobe.endswith("middle") else 4)
            groups = _kmeans(rng, lp, n_seg)
            for g in range(n_seg):
                gp = lp[groups == g]
                if len(gp) == 0:
                    continue
                seg = lobar + 0.5 * (gp.mean(axis=0) - lobar)
                o_seg = _add_branch(rng, plan, lobar, seg, o_lobar, 2, lobe, (4.2, 3.2), (3.0, 2.5))
                sub_groups = _kmeans(rng, gp, 2) if len(gp) >= 4 else np.zeros(len(gp), int)
                for sg in range(int(sub_groups.max()) + 1):
                    sp = gp[sub_groups == sg]
                    if len(sp) == 0:
                        continue
                    sub = seg + 0.55 * (sp.mean(axis=0) - seg)
                    o_sub = _add_branch(rng, plan, seg, sub, o_seg, 3, lobe, (3.0, 2.3), (2.0, 1.6))
                    # A third of the target points become leaves: two tapering branches each.
                    for leaf in sp[: max(1, len(sp) // 3)]:
                        mid = sub + 0.6 * (leaf - sub) + rng.normal(0, 3, 3)
                        o_mid = _add_branch(rng, plan, sub, mid, o_sub, 4, lobe, (2.5, 1.9), (1.4, 1.0))
                        _add_branch(rng, plan, mid, leaf, o_mid, 5, lobe, (1.9, 1.1), (0.9, 0.5))


def _add_branch(rng, plan, a, b, offset_a, generation, lobe, vessel_r, airway_r) -> np.ndarray:
    """Append a branch; its artery runs alongside the airway, shifted by a perpendicular offset that is
    continuous from the parent's end (``offset_a``) to this branch's end (returned)."""
    d = (b - a) / (np.linalg.norm(b - a) or 1.0)
    r = rng.normal(0, 1, 3)
    perp = r - d * float(d @ r)  # a random direction perpendicular to the branch
    perp /= np.linalg.norm(perp) or 1.0
    offset_b = perp * (vessel_r[1] + airway_r[1] + 0.5)
    plan.branches.append(Branch(np.asarray(a, float), np.asarray(b, float), generation, lobe, vessel_r, airway_r,
                                np.asarray(offset_a, float), offset_b))
    return offset_b


def _kmeans(rng: np.random.Generator, pts: np.ndarray, k: int, iters: int = 4) -> np.ndarray:
    k = max(1, min(k, len(pts)))
    centers = pts[rng.choice(len(pts), size=k, replace=False)]
    groups = np.zeros(len(pts), int)
    for _ in range(iters):
        groups = np.argmin(((pts[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        for g in range(k):
            if np.any(groups == g):
                centers[g] = pts[groups == g].mean(axis=0)
    return groups


# ---------------------------------------------------------------------------------------------------- rendering
@dataclass
class RenderedChest:
    """A rendered chest: ``hu`` (D, H, W) float32 HU plus the masks findings need.

    ``lung`` is int8 (0 outside, 1 right lung, 2 left lung); ``body``, ``cavity`` and ``heart`` are bool;
    ``airway_lumen`` is a float32 occupancy (0..1) of the airway lumens, so that dense findings can spare
    air bronchograms.
    """

    grid: Grid
    plan: ChestPlan
    hu: np.ndarray
    body: np.ndarray
    lung: np.ndarray
    cavity: np.ndarray
    heart: np.ndarray
    airway_lumen: np.ndarray
    extras: dict = field(default_factory=dict)


def render_chest(plan: ChestPlan, grid: Grid, rng: np.random.Generator, lung_hooks=()) -> RenderedChest:
    """Rasterise ``plan`` on ``grid`` (HU, float32), everything except the bronchovascular trees, which need the
    lung mask to be planned (:func:`plan_trees`, then :func:`render_trees`). ``lung_hooks`` are callables
    ``hook(chest)`` run right after the lung parenchyma is painted (emphysema, mosaic attenuation, ground glass)."""
    d, h, w = grid.shape
    z, y, x = grid.z, grid.y, grid.x
    hu = np.full(grid.shape, HU_AIR, dtype=np.float32)
    P = plan.hu

    # Body outline: a rounded ellipse, flatter at the back. Computed per voxel by broadcasting (z-dependent axes).
    a_z, b_ant_z, b_post_z = plan.body_half_axes(z)
    yy = np.where(y < 0, y / b_ant_z, y / b_post_z)  # (D, H, 1)
    xx = x / a_z  # (D, 1, W)
    r_body = xx * xx + yy * yy - 0.35 * (xx * xx) * (yy * yy)
    body = r_body <= 1.0
    for center, axes in plan.breasts:
        placed = ellipsoid_fraction(grid, center, axes)
        if placed is not None:
            box, frac = placed
            body[box] |= frac > 0.5
            blend(hu, placed, P["fat"] + 30.0)
    hu[body & (hu < P["fat"])] = P["fat"]
    # Skin (a thin rim) then the muscle layer inside the subcutaneous fat.
    inner = (xx * a_z / np.maximum(a_z - 2.5, 1)) ** 2 + (yy * np.where(y < 0, b_ant_z / (b_ant_z - 2.5),
                                                                       b_post_z / (b_post_z - 2.5))) ** 2
    hu[body & (inner > 1.0)] = 25.0
    fa, fat = plan.fat, plan.fat
    xm = x / (a_z - fa)
    ym = np.where(y < 0, y / (b_ant_z - fat), y / (b_post_z - fat * 0.8))
    muscle = (xm * xm + ym * ym - 0.35 * xm * xm * ym * ym) <= 1.0
    hu[muscle] = P["muscle"]
    del inner, xm, ym

    # Thoracic cavity (inside ribs and intercostal muscles), minus the spine and paraspinal muscles.
    cav_a, yc, cav_b = plan.cavity(z)
    r_cav = (x / cav_a) ** 2 + ((y - yc) / cav_b) ** 2
    spine_excl = ((x / (plan.vertebra_r + 10.0)) ** 2 + ((y - plan.spine_y - 18.0) / 36.0) ** 2) <= 1.0
    cavity = (r_cav <= 1.0) & ~spine_excl & (z < plan.z_apex + 25.0)
    hu[cavity] = P["fat"] + 10.0  # mediastinal / extrapleural fat, overwritten by lungs and organs

    # Lungs: cavity above the diaphragm domes, below the apical caps, outside the mediastinum.
    yy2 = y[0, :, :]
    xx2 = x[0, :, :]
    lung = np.zeros(grid.shape, dtype=np.int8)
    abdomen = np.zeros(grid.shape, dtype=bool)
    for label, side, sel in ((1, "right", x < 0), (2, "left", x >= 0)):
        dome = plan.dome(side, xx2, yy2)[None]  # (1, H, W)
        apex = plan.apex(side, xx2, yy2)[None]
        lung[cavity & sel & (z > dome) & (z < apex)] = label
        abdomen |= (r_cav <= 1.0) & sel & (z <= dome)
    mediastinum = _mediastinum_mask(plan, grid)
    lung[mediastinum] = 0
    hu[abdomen] = 25.0
    chest = RenderedChest(grid=grid, plan=plan, hu=hu, body=body, lung=lung, cavity=cavity,
                          heart=np.zeros(grid.shape, dtype=bool),
                          airway_lumen=np.zeros(grid.shape, dtype=np.float32))
    _render_abdomen(chest, rng, abdomen)
    del abdomen

    # Lung parenchyma: denser posteriorly (gravity-dependent perfusion in a supine patient).
    in_lung = lung > 0
    gradient = (45.0 * (y - plan.cav_y_ant) / (plan.cav_y_post - plan.cav_y_ant)).astype(np.float32)
    hu[in_lung] = (P["lung"] + np.broadcast_to(gradient, grid.shape))[in_lung]
    for hook in lung_hooks:
        hook(chest)

    _render_mediastinum(chest, rng)
    _render_bones(chest, rng)
    _render_table(chest, rng)
    del r_cav, r_body
    return chest


def _mediastinum_mask(plan: ChestPlan, grid: Grid) -> np.ndarray:
    """Voxels that belong to the mediastinum: a central band plus every mediastinal structure with a fat margin."""
    z, y, x = grid.z, grid.y, grid.x
    hc = plan.heart_center
    # Central band: thin anteriorly (junction line), wider in the upper mediastinum (thymic fat, vessels).
    upper = 1.0 / (1.0 + np.exp(-(z - hc[0] - 20.0) / 8.0)) * (z < plan.z_apex - 10.0)
    back = 1.0 / (1.0 + np.exp(-(y - plan.spine_y + 45.0) / 5.0))
    width = 9.0 + 13.0 * upper + 12.0 * back  # smooth, so lung borders have no steps
    mask = np.abs(x - 2.0) < width
    occ = np.zeros(grid.shape, dtype=np.float32)
    for name in ("aorta", "pulmonary_trunk", "left_pa", "right_pa", "svc", "esophagus", "trachea", "ivc",
                 "brachiocephalic", "carotid", "subclavian"):
        t = plan.tubes[name]
        margin = 3.0 if name in ("left_pa", "right_pa") else 5.0
        chain_fraction(grid, occ, t.points, t.radii + margin)
    _heart_fraction(plan, grid, occ, grow=plan.epicardial_fat + plan.pericardial_effusion_mm + 3.0)
    if plan.hiatal_hernia is not None:
        paint_max(occ, ellipsoid_fraction(grid, plan.hiatal_hernia["center"], plan.hiatal_hernia["axes"], grow=3))
    mask |= occ > 0.5
    return mask


def _heart_fraction(plan: ChestPlan, grid: Grid, target: np.ndarray, grow: float = 0.0) -> None:
    axes = plan.heart_axes * plan.heart_scale
    paint_max(target, ellipsoid_fraction(grid, plan.heart_center, axes, plan.heart_rotation, grow=grow))


def _render_abdomen(chest: RenderedChest, rng: np.random.Generator, abdomen: np.ndarray) -> None:
    """Upper abdomen under the domes: liver (right), stomach with a fundal air bubble and spleen (left)."""
    plan, grid, hu = chest.plan, chest.grid, chest.hu
    P = plan.hu
    z, y, x = grid.z, grid.y, grid.x
    hu[abdomen] = P["fat"] + 30.0  # mixed fat and bowel
    dome_r = plan.dome("right", x[0], y[0])[None]
    liver = abdomen & (x < 35.0 - 0.6 * (y - plan.cav_y_ant)) & (z < dome_r - 4.0) & (
        z > plan.z_recess - 60.0 - 0.3 * (x + plan.cav_a))
    hu[liver] = P["liver"]
    dome_l = plan.dome("left", x[0], y[0])[None]
    # Stomach: anterior under the left dome; supine, so its air collects anteriorly (non-dependent).
    sc = np.array([plan.z_dome_left - 45.0, plan.cav_y_ant + 55.0, 0.45 * plan.cav_a])
    st = ellipsoid_fraction(grid, sc, (40.0, 38.0, 42.0))
    if st is not None:
        box, frac = st
        zz, yy, _ = grid.coords(box)
        under = (zz < dome_l[:, box[1], box[2]] - 4.0)
        content = np.where(yy < sc[1] - 12.0 - 10.0 * rng.random(), HU_AIR, HU_FLUID + 15.0)
        blend(hu, (box, frac * under), content.astype(np.float32))
    spleen = ellipsoid_fraction(grid, [plan.z_dome_left - 40.0, plan.spine_y - 5.0, 0.72 * plan.cav_a],
                                (45.0, 28.0, 22.0), rotation_zyx(axial_deg=-35.0))
    if spleen is not None:
        box, frac = spleen
        blend(hu, (box, frac * (grid.z[box[0]] < dome_l[:, box[1], box[2]] - 4.0)), HU_SPLEEN)
    for side in (-1, 1):  # upper poles of the kidneys in the lowest slices
        kc = [plan.z_recess - 30.0 + (10.0 if side > 0 else 0.0), plan.spine_y + 5.0, side * 52.0]
        blend(hu, ellipsoid_fraction(grid, kc, (45.0, 28.0, 22.0), rotation_zyx(axial_deg=side * 25.0)), HU_KIDNEY)


def _render_mediastinum(chest: RenderedChest, rng: np.random.Generator) -> None:
    plan, grid, hu = chest.plan, chest.grid, chest.hu
    P = plan.hu
    # Heart: epicardial fat shell, optional pericardial fluid, then the myocardium and blood pool; only above the
    # diaphragm. Everything is done inside the bounding box of the outermost shell.
    axes = plan.heart_axes * plan.heart_scale
    outer = ellipsoid_fraction(grid, plan.heart_center, axes, plan.heart_rotation,
                               grow=plan.epicardial_fat + plan.pericardial_effusion_mm)
    heart = np.zeros(grid.shape, dtype=bool)
    if outer is not None:
        box = outer[0]
        above = _above_domes(plan, grid)[box]
        blend(hu, (box, outer[1] * above), P["fat"] + 10.0)
        if plan.pericardial_effusion_mm > 0:
            fl = _within(ellipsoid_fraction(grid, plan.heart_center, axes, plan.heart_rotation,
                                            grow=plan.pericardial_effusion_mm), box)
            blend(hu, (box, fl * above), HU_FLUID)
            fluid = np.zeros(grid.shape, dtype=bool)
            fluid[box] = fl * above > 0.5
            chest.extras["pericardial_fluid"] = fluid
        myo = _within(ellipsoid_fraction(grid, plan.heart_center, axes, plan.heart_rotation), box)
        blend(hu, (box, myo * above), P["blood"] + 4.0)
        heart[box] = myo * above > 0.5
    chest.heart = heart
    # Great vessels, oesophagus.
    for name in ("ivc", "aorta", "pulmonary_trunk", "left_pa", "right_pa", "svc", "brachiocephalic", "carotid",
                 "subclavian", "esophagus"):
        t = plan.tubes[name]
        blend(hu, chain_placed(grid, t.points, t.radii), t.hu)
    if plan.hiatal_hernia is not None:
        hh = plan.hiatal_hernia
        placed = ellipsoid_fraction(grid, hh["center"], hh["axes"])
        if placed is not None:
            # Air is anterior (non-dependent), fluid posterior: an air-fluid level in a supine patient.
            level = hh["center"][1] - hh["axes"][1] * (0.5 - hh["air_fraction"]) * 2.0
            inner = ellipsoid_fraction(grid, hh["center"], np.asarray(hh["axes"]) - 3.0)
            blend(hu, placed, HU_MUSCLE)
            if inner is not None:
                _, yy, _ = grid.coords(inner[0])
                content = np.where(yy < level, HU_AIR, HU_FLUID + 10.0).astype(np.float32)
                blend(hu, inner, np.broadcast_to(content, inner[1].shape))
    # Trachea and main bronchi: a soft-tissue wall around an air lumen.
    for name in ("trachea", "right_bronchus", "left_bronchus"):
        t = plan.tubes[name]
        blend(hu, chain_placed(grid, t.points, t.radii + 1.8 * plan.airway_wall_scale), 15.0)
    for name in ("trachea", "right_bronchus", "left_bronchus"):
        t = plan.tubes[name]
        placed = chain_placed(grid, t.points, t.radii)
        if placed is not None:
            blend(hu, placed, HU_AIR)
            paint_max(chest.airway_lumen, placed)


def _within(placed, box):
    """The occupancy of ``placed`` re-cut to ``box`` (which must contain it); zeros where it is absent."""
    out = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
    if placed is None:
        return out
    pbox, frac = placed
    sub = tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(pbox, box))
    out[sub] = frac
    return out


def _above_domes(plan: ChestPlan, grid: Grid) -> np.ndarray:
    x2, y2 = grid.x[0], grid.y[0]
    dome = np.maximum(plan.dome("right", x2, y2), plan.dome("left", x2, y2))
    return (grid.z > dome[None] - 2.0).astype(np.float32)


def _render_bones(chest: RenderedChest, rng: np.random.Generator) -> None:
    """Vertebrae with discs and posterior elements, ribs and costal cartilages, sternum, clavicles, scapulae."""
    plan, grid = chest.plan, chest.grid
    P = plan.hu
    cortex, marrow = P["bone_cortex"], P["bone_marrow"]
    vr = plan.vertebra_r
    pitch = 26.0 * plan.patient.height
    # The spine and paraspinal muscles only occupy a box behind the mediastinum: work there.
    spine_box = grid.box((-1e4, plan.spine_y - vr - 15.0, -70.0), (1e4, plan.body_b_post + 5.0, 70.0))
    if spine_box is not None:
        z, y, x = grid.coords(spine_box)
        hu = chest.hu[spine_box]
        # Gentle thoracic kyphosis: the spine is most posterior at mid chest.
        sy = plan.spine_y + (8.0 * np.cos((z + 120.0) / 160.0)).astype(np.float32)
        phase = np.mod(z - plan.z_apex + 6.0, pitch)
        disc = (phase < 5.0).astype(np.float32)
        rv = np.sqrt((x / (vr * 1.15)) ** 2 + ((y - sy) / vr) ** 2)
        body_occ = np.clip(0.5 - (rv - 1.0) * vr / grid.voxel, 0, 1)
        shell = np.clip(0.5 - (1.0 - 2.5 / vr - rv) * vr / grid.voxel, 0, 1)
        value = marrow + shell * (cortex - marrow)
        value = value + disc * (80.0 - value)
        hu += body_occ * (value - hu)
        # Neural arch: a ring around the canal, a spinous process and transverse processes.
        cy = sy + vr + 9.0
        rc = np.sqrt(x ** 2 + (y - cy) ** 2)
        ring = ((rc > 8.0) & (rc < 14.0) & (y > sy + vr - 2.0)).astype(np.float32)
        spinous = ((np.abs(x) < 4.5) & (y > cy + 10.0) & (y < cy + 38.0 - 0.3 * phase)).astype(np.float32)
        ax = np.abs(x)
        transverse = ((np.abs(y - cy + 2.0 - 0.45 * (ax - 10.0)) < 5.0) & (ax > 10.0) & (ax < 34.0)
                      & (phase > 6.0) & (phase < 20.0)).astype(np.float32)
        arch = np.maximum(np.maximum(ring, spinous), transverse) * (1.0 - disc)
        hu += arch * (0.5 * (cortex + marrow) - hu)
        canal = (rc <= 8.0).astype(np.float32)
        hu += canal * (HU_FLUID + 10.0 - hu)
        # Paraspinal muscles (the spine exclusion zone of the cavity) outside bone.
        para = ((ax - 38.0) ** 2 / 26.0 ** 2 + (y - cy - 8.0) ** 2 / 24.0 ** 2 <= 1.0) & (hu < 0)
        para &= chest.body[spine_box]
        hu[para] = P["muscle"]
    hu = chest.hu
    z, y, x = grid.z, grid.y, grid.x

    # Ribs: a thin elliptical shell just outside the cavity; each rib descends from back to front.
    cav_a, yc, cav_b = plan.cavity(z)
    r_rib = 1.0 + 6.0 / cav_b
    rho2 = (x / cav_a) ** 2 + ((y - yc) / cav_b) ** 2
    near = (rho2 > (r_rib - 7.0 / cav_b) ** 2) & (rho2 < (r_rib + 7.0 / cav_b) ** 2)
    near &= (z < plan.z_apex + 20.0) & (z > plan.z_recess - 60.0)
    idx = np.flatnonzero(near)
    del rho2, near
    if len(idx):
        k, j, i = np.unravel_index(idx, grid.shape)
        pz, py, px = grid.z.ravel()[k], grid.y.ravel()[j], grid.x.ravel()[i]
        ca, ycc, cb = plan.cavity(pz)
        u = np.clip((py - ycc) / cb, -1, 1)  # +1 posterior, -1 anterior
        # Angle around the cavity from the posterior midline (0) to the anterior midline (pi). The rib descends
        # linearly with it: ~50 mm from the costovertebral joint to the axilla, as much again to the front, so
        # posterior ribs slope down laterally and anterior ribs down medially on a frontal projection.
        phi = np.arctan2(np.abs(px) / ca, (py - ycc) / cb)
        drop = 100.0 * plan.patient.height * phi / np.pi
        zr = pz + drop - plan.z_apex
        n = np.round(-(zr + 14.0) / pitch)
        dz = zr + 14.0 + n * pitch
        rr = np.sqrt((px / ca) ** 2 + ((py - ycc) / cb) ** 2)
        dr = (rr - r_rib) * cb
        valid = (n >= 0) & (n <= 11)
        # Lower ribs stop short of the front; upper ribs end in costal cartilage at the sternum.
        front_limit = np.where(n <= 6, -1.01, -0.35 + 0.12 * (n - 7))
        valid &= u > front_limit
        # Costal cartilage: the medial anterior ends (longer for the lower ribs, which form the costal margin).
        cart = (u < -0.3) & (np.abs(px) < ca * (0.34 + 0.03 * np.clip(n - 5, 0, 4)))
        in_rib = valid & (np.abs(dz) < 5.5) & (np.abs(dr) < 4.0) & (np.abs(px) > plan.vertebra_r + 14.0)
        core = in_rib & (np.abs(dz) < 3.0) & (np.abs(dr) < 1.8)
        val = np.where(cart, P["cartilage"], np.where(core, marrow + 40.0, 0.55 * cortex + 0.45 * marrow))
        flat = hu.reshape(-1)
        sel = idx[in_rib]
        flat[sel] = val[in_rib]
    # Sternum: manubrium and body in the anterior midline.
    zs_top = plan.z_apex - 38.0 * plan.patient.height
    zs_bot = plan.heart_center[0] - 40.0
    y_front = plan.cav_y_ant - 2.0
    box = grid.box((zs_bot, y_front - 14.0, -24.0), (zs_top, y_front + 2.0, 24.0))
    if box is not None:
        zz, yy, xx = grid.coords(box)
        half_w = np.where(zz > zs_top - 45.0, 22.0, 13.0)
        st = (np.abs(xx) < half_w) & (yy > y_front - 12.0) & (yy < y_front)
        core = (np.abs(xx) < half_w - 3.0) & (yy > y_front - 9.5) & (yy < y_front - 2.5)
        sub = hu[box]
        sub[st] = cortex * 0.8
        sub[core & st] = marrow + 40.0
    # Clavicles (from the manubrium towards the shoulders) and scapulae (plates behind the posterior ribs).
    for side in (-1, 1):
        a = np.array([zs_top + 2.0, y_front - 16.0, side * 22.0])
        b = np.array([zs_top + 12.0, -25.0, side * (plan.body_a * 0.6)])
        c = np.array([zs_top + 20.0, 5.0, side * (plan.body_a - 12.0)])
        blend(hu, chain_placed(grid, smooth_path([a, b, c], 8), np.full(8, 7.0)), 0.6 * cortex + 0.4 * marrow)
        _render_scapula(chest, side)


def _render_scapula(chest: RenderedChest, side: int) -> None:
    plan, grid, hu = chest.plan, chest.grid, chest.hu
    top, bottom = plan.z_apex + 25.0, plan.z_apex - 150.0 * plan.patient.height
    box = grid.box((bottom, 0.0, -plan.body_a), (top, plan.body_b_post, plan.body_a))
    if box is None:
        return
    zz, yy, xx = grid.coords(box)
    a_z, _, bp = plan.body_half_axes(zz)
    # A curved plate 10-20 mm under the posterolateral skin, triangular: wide at the top, narrow at the tip.
    t = np.clip((top - zz) / (top - bottom), 0, 1)
    x_in = plan.vertebra_r + 45.0 + 40.0 * t
    x_out = a_z - 18.0 - 30.0 * t
    rho = np.sqrt((xx / a_z) ** 2 + (yy / bp) ** 2)
    depth = (1.0 - rho) * bp
    plate = (side * xx > x_in) & (side * xx < x_out) & (yy > 10.0) & (depth > plan.fat + 4.0) & (
        depth < plan.fat + 10.0)
    sub = hu[box]
    sub[plate] = 0.7 * plan.hu["bone_cortex"]


def render_trees(chest: RenderedChest) -> None:
    """Draw the bronchovascular trees of ``chest.plan.branches`` (see :func:`plan_trees`): pulmonary vessels (soft
    tissue, thinned by ``extras['vessel_weight']``) and intrapulmonary airways (air lumen, soft-tissue wall)."""
    plan, grid, hu = chest.plan, chest.grid, chest.hu
    lung = chest.lung > 0
    vessel = np.zeros(grid.shape, dtype=np.float32)
    wall = np.zeros(grid.shape, dtype=np.float32)
    lumen = np.zeros(grid.shape, dtype=np.float32)
    min_r = 0.3 * grid.voxel
    thin = []
    for br in plan.branches:
        a, b = br.a + br.vessel_offset_a, br.b + br.vessel_offset_b
        if max(br.vessel_r) < grid.voxel:
            thin.append((a, b, br.vessel_r))  # sub-voxel vessels: splatted below, much cheaper than capsules
        else:
            paint_max(vessel, capsule_fraction(grid, a, b, *br.vessel_r))
        scale = plan.airway_lumen_scale.get(br.lobe, 1.0) if br.generation >= 2 else 1.0
        if br.generation > plan.airway_max_generation and scale == 1.0:
            continue
        if br.generation > max(plan.airway_max_generation, 4):
            continue
        ra, rb = br.airway_r[0] * scale, br.airway_r[1] * scale
        if max(ra, rb) < min_r:
            continue
        wt = (0.45 * ra + 0.4) * plan.airway_wall_scale
        paint_max(wall, capsule_fraction(grid, br.a, br.b, ra + wt, rb + wt))
        paint_max(lumen, capsule_fraction(grid, br.a, br.b, ra, rb))
    if thin:
        np.maximum(vessel, splat_segments(grid, thin), out=vessel)
    # Emphysema and mosaic-attenuation hooks may have stored a vessel weight field (fewer, thinner vessels).
    weight = chest.extras.get("vessel_weight")
    if weight is not None:
        vessel *= weight
    vessel *= lung
    wall *= lung
    lumen *= lung
    hu += vessel * (plan.hu["blood"] - hu)
    hu += wall * (10.0 - hu)
    hu += lumen * (HU_AIR + 30.0 - hu)
    np.maximum(chest.airway_lumen, lumen, out=chest.airway_lumen)


def _render_table(chest: RenderedChest, rng: np.random.Generator) -> None:
    """The scanner couch: a curved carbon-fibre plate under the patient's back."""
    grid, plan, hu = chest.grid, chest.plan, chest.hu
    y0 = plan.body_b_post + 8.0
    x2 = grid.x[0]
    yt = y0 + 0.0009 * x2 ** 2
    plate = (np.abs(grid.y[0] - yt) < 4.0) & (np.abs(x2) < 0.9 * plan.body_a + 40.0)  # (H, W)
    hu[:, plate] = -200.0 if rng.random() < 0.5 else 60.0
