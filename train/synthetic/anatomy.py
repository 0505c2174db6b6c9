"""Procedural chest anatomy for the synthetic CT-RATE-style data set, rendered directly in Hounsfield units (HU).

Coordinates
-----------
Everything here lives in a *body frame* measured in millimetres:

* ``x``: patient left is positive (0 = body midline),
* ``y``: patient posterior is positive (0 = centre of the body's antero-posterior extent),
* ``z``: patient superior is positive (0 = the lung apices).

These are the DICOM patient axes (LPS) up to a translation, so the writer in :mod:`x2ctclip.train.synthetic.writer` only
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

import math
from dataclasses import dataclass, field

import numpy as np
from x2ctclip.train.synthetic.geometry import Grid
from x2ctclip.train.synthetic.geometry import rotation_zyx
from x2ctclip.train.synthetic.geometry import smooth_path

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
    d = (b - a) / (_norm(b - a) or 1.0)
    r = rng.normal(0, 1, 3)
    perp = r - d * float(d @ r)  # a random direction perpendicular to the branch
    perp /= _norm(perp) or 1.0
    offset_b = perp * (vessel_r[1] + airway_r[1] + 0.5)
    plan.branches.append(Branch(np.asarray(a, float), np.asarray(b, float), generation, lobe, vessel_r, airway_r,
                                np.asarray(offset_a, float), offset_b))
    return offset_b


def _norm(v: np.ndarray) -> float:
    """Euclidean norm of a float64 vector: what ``np.linalg.norm`` computes (sqrt of ``v.dot(v)``), without its
    argument handling (called twice for each of the ~600 branches of a study)."""
    return math.sqrt(v.dot(v))


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
