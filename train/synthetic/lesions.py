"""The 18 CT-RATE abnormalities for the synthetic chest CT generator: label sampling and rendering in HU.

Labels are drawn from a chain of logistic conditionals fitted to real CT-RATE labels (prevalences and
co-occurrences; numbers in ``resources/ct_rate_label_stats.json``, fitted by
``benchmarks/bench_synthetic_label_stats.py``). Each positive label then gets a concrete, measured instance
(sizes in mm, lobes, sides) that the renderer draws into the volume and the report generator describes, so image,
labels and report agree.

Rendering happens in four stages of :func:`x2ctclip.train.synthetic.study.make_study`:

1. :func:`plan_findings` edits the anatomy plan (a larger heart, pericardial fluid, dilated or thick-walled
   airways, a hiatal hernia) and records measurements;
2. :func:`lung_hooks` change the lung parenchyma before vessels are drawn (emphysema, mosaic attenuation, ground
   glass), so vessels stay visible through ground glass and are pruned in emphysema;
3. :func:`render_findings` draws the rest into the float HU volume (consolidation with air bronchograms,
   atelectasis, nodules, septal lines, fibrotic bands, pleural effusion, lymph nodes);
4. :func:`dense_layers` returns the calcifications and metal, composited after the reconstruction blur so that
   small dense objects keep their HU (> 300 HU calcium, > 2000 HU metal).
"""

from __future__ import annotations


import numpy as np


from x2ctclip.train.synthetic.anatomy import HU_AIR, LOBES, ChestPlan
from x2ctclip.train.synthetic.geometry import (
    Grid,
    blend,
    capsule_fraction,
    ellipsoid_fraction,
    paint_max,
    rotation_zyx,
    smooth_path,
)
from x2ctclip.train.synthetic.render import RenderedChest
HU_METAL = 3071.0  # the top of the usual 12-bit CT range


# Lymph node stations relative to the carina / hila: (name, offset builder).
NODE_STATIONS = {
    "right lower paratracheal": lambda p: p.landmarks["carina"] + [16.0, -4.0, -20.0],
    "left lower paratracheal": lambda p: p.landmarks["carina"] + [12.0, -2.0, 16.0],
    "subcarinal": lambda p: p.landmarks["carina"] + [-20.0, 10.0, 2.0],
    "aortopulmonary window": lambda p: p.landmarks["carina"] + [4.0, -16.0, 28.0],
    "prevascular": lambda p: np.array([p.landmarks["carina"][0] + 28.0, p.cav_y_ant + 22.0, -4.0]),
    "right hilar": lambda p: p.landmarks["hilum_right"] + [0.0, -10.0, -8.0],
    "left hilar": lambda p: p.landmarks["hilum_left"] + [0.0, -10.0, 6.0],
    "right upper paratracheal": lambda p: p.landmarks["carina"] + [45.0, -4.0, -16.0],
}


# ------------------------------------------------------------------------------------------------- helpers
def _lung_points(chest: RenderedChest, rng, n: int, *, side: int | None = None, weight=None,
                 lobe: str | None = None) -> np.ndarray:
    """``n`` random body-frame points (z, y, x) inside the lungs, optionally on one side or in one lobe, and
    weighted by ``weight(points) -> [0, 1]`` (rejection sampling; falls back to the whole lung if the lobe is not
    on the grid)."""
    if lobe is not None:
        target = LOBES.index(lobe)
        w0 = weight
        weight = lambda p: (chest.plan.lobe_index(p) == target) * (1.0 if w0 is None else w0(p))  # noqa: E731
        pts = _lung_points(chest, rng, n, side=1 if lobe.startswith("right") else 2, weight=weight)
        if len(pts) < n:
            pts = np.vstack([pts.reshape(-1, 3), _lung_points(chest, rng, n - len(pts), weight=w0)])
        return pts
    key = "lung_index"
    if key not in chest.extras:
        chest.extras[key] = np.flatnonzero(chest.lung.ravel())
    idx = chest.extras[key]
    if side is not None:
        lab = chest.lung.ravel()[idx]
        idx = idx[lab == side]
    if len(idx) == 0:
        return np.zeros((0, 3))
    out = []
    for _ in range(50):
        cand = chest.grid.points_mm(rng.choice(idx, size=max(4 * n, 16)))
        cand += rng.uniform(-0.5, 0.5, cand.shape) * np.asarray(chest.grid.spacing)
        if weight is not None:
            cand = cand[rng.random(len(cand)) < weight(cand)]
        out.extend(cand)
        if len(out) >= n:
            break
    return np.asarray(out[:n]) if out else np.zeros((0, 3))


def _lung_height(chest: RenderedChest, pts: np.ndarray) -> np.ndarray:
    """0 at the lung bases, 1 at the apices."""
    p = chest.plan
    return np.clip((pts[:, 0] - p.z_recess) / (p.z_apex - p.z_recess), 0, 1)


def _periphery(chest: RenderedChest, pts: np.ndarray) -> np.ndarray:
    """Normalised radius of points in the thoracic cavity ellipse (1 = chest wall)."""
    ca, yc, cb = chest.plan.cavity(pts[:, 0])
    return np.sqrt((pts[:, 2] / ca) ** 2 + ((pts[:, 1] - yc) / cb) ** 2)


def _noise_blob(grid: Grid, rng, placed, threshold: float = 0.0, sigma_mm: float = 8.0):
    """Make an occupancy irregular: keep it where a smooth random field exceeds ``threshold`` (soft edge)."""
    from scipy.ndimage import gaussian_filter

    if placed is None:
        return None
    box, frac = placed
    sig = [sigma_mm / s for s in grid.spacing]
    field = gaussian_filter(rng.standard_normal(frac.shape).astype(np.float32), sig, mode="reflect")
    field /= field.std() + 1e-6
    return box, frac * np.clip((field - threshold) * 1.5 + 0.5, 0, 1)


# ------------------------------------------------------------------------------------ stage 2: lung hooks
def lung_hooks(details: dict, rng: np.random.Generator) -> list:
    """Callables run on the fresh lung parenchyma (before vessels): emphysema, mosaic attenuation, ground glass."""
    hooks = []
    if "Emphysema" in details:
        hooks.append(lambda chest: _emphysema(chest, rng, details["Emphysema"]))
    if "Mosaic attenuation pattern" in details:
        hooks.append(lambda chest: _mosaic(chest, rng, details["Mosaic attenuation pattern"]))
    if "Lung opacity" in details:
        hooks.append(lambda chest: _ground_glass(chest, rng, details["Lung opacity"]))
    return hooks


def _vessel_weight(chest: RenderedChest) -> np.ndarray:
    if "vessel_weight" not in chest.extras:
        chest.extras["vessel_weight"] = np.ones(chest.grid.shape, dtype=np.float32)
    return chest.extras["vessel_weight"]


EMPHYSEMA_EXTENT = {"mild": 0.09, "moderate": 0.16, "severe": 0.26}  # low-attenuation fraction of the lungs


def _emphysema(chest: RenderedChest, rng, info: dict) -> None:
    """Low-attenuation areas (about -985 HU, i.e. < -950 HU after noise) without visible walls and with fewer
    vessels, covering 9 / 16 / 26 % of the lungs for mild / moderate / severe disease: clustered lobular areas in
    the upper zones (centrilobular), subpleural bullae (paraseptal) or diffuse basal loss (panlobular)."""
    grid, plan = chest.grid, chest.plan
    lung = chest.lung > 0
    extent = EMPHYSEMA_EXTENT[info["severity"]]
    kind = info["type"]
    height = np.clip((grid.z - plan.z_recess) / (plan.z_apex - plan.z_recess), 0, 1)  # 0 bases .. 1 apices
    if kind == "panlobular":
        zone = 0.25 + 0.75 * (1.0 - height) ** 1.5
    else:
        zone = 0.25 + 0.75 * height ** 1.5
    score = _smooth_field(grid, rng, 14.0 if kind != "paraseptal" else 18.0) * zone
    if kind in ("paraseptal", "mixed"):
        # Paraseptal disease hugs the pleura: favour the outer rim of the cavity.
        ca, yc, cb = plan.cavity(grid.z)
        rho = np.sqrt((grid.x / ca) ** 2 + ((grid.y - yc) / cb) ** 2)
        score = score * (0.4 + 0.6 * np.clip((rho - 0.6) / 0.35, 0, 1))
    values = score[lung]
    if values.size == 0:
        return
    thr = float(np.quantile(values, 1.0 - extent))
    occ = np.clip((score - thr) / 0.04 + 0.5, 0, 1).astype(np.float32) * lung
    chest.hu += occ * (-985.0 - chest.hu)
    w = _vessel_weight(chest)
    w *= 1.0 - 0.8 * occ
    chest.extras["emphysema"] = occ


def _smooth_field(grid: Grid, rng, cell_mm: float) -> np.ndarray:
    """A random field with correlation length ``cell_mm``, values in [0, 1], at the grid shape (trilinear)."""
    from scipy.ndimage import zoom

    coarse = [max(2, int(np.ceil(n * s / cell_mm)) + 1) for n, s in zip(grid.shape, grid.spacing)]
    f = rng.random(coarse).astype(np.float32)
    out = zoom(f, [n / c for n, c in zip(grid.shape, coarse)], order=1, mode="nearest", grid_mode=True)
    return out[: grid.shape[0], : grid.shape[1], : grid.shape[2]]


def _mosaic(chest: RenderedChest, rng, info: dict) -> None:
    """Lobular patches of low attenuation with thinner vessels (air trapping / oligaemia) next to denser lung."""
    grid = chest.grid
    lung = chest.lung > 0
    if info["extent"] == "lower lobes":
        lung = lung & (grid.z < chest.plan.fissure["z0"] - 40.0)
    field = _smooth_field(grid, rng, float(rng.uniform(18.0, 28.0)))
    low = np.clip((0.45 - field) * 6.0, 0, 1) * lung  # about 40 % of the lung
    high = np.clip((field - 0.55) * 6.0, 0, 1) * lung
    chest.hu += -95.0 * low + 45.0 * high
    w = _vessel_weight(chest)
    w *= 1.0 - 0.45 * low


def _ground_glass(chest: RenderedChest, rng, info: dict) -> None:
    """Ground-glass opacity (about -530 HU, 50-100 mm patches), patchy, peripheral and basal predominant; vessels stay visible."""
    grid = chest.grid
    lung = chest.lung > 0
    wt = lambda p: 0.3 + 0.7 * (_periphery(chest, p) > 0.7) * (1 - 0.6 * _lung_height(chest, p))  # noqa: E731
    for lobe in info["patch_lobes"]:
        for c in _lung_points(chest, rng, 1, weight=wt, lobe=lobe):
            r = float(rng.uniform(25.0, 50.0))
            placed = _noise_blob(grid, rng, ellipsoid_fraction(grid, c, (r, r * 0.8, r)), threshold=-0.3)
            blend(chest.hu, placed, float(rng.uniform(-600.0, -460.0)), where=lung)


# ---------------------------------------------------------------------------------- stage 3: render_findings
def render_findings(chest: RenderedChest, details: dict, rng: np.random.Generator) -> None:
    """Draw the lung, pleural and nodal findings into ``chest.hu`` (after vessels and airways)."""
    if "Consolidation" in details:
        _consolidation(chest, rng, details["Consolidation"])
    if "Atelectasis" in details:
        _atelectasis(chest, rng, details["Atelectasis"], details.get("Pleural effusion"))
    if "Interlobular septal thickening" in details:
        _septal_lines(chest, rng, details["Interlobular septal thickening"])
    if "Pulmonary fibrotic sequela" in details:
        _fibrotic_bands(chest, rng, details["Pulmonary fibrotic sequela"])
    if "Lung nodule" in details:
        _nodules(chest, rng, details["Lung nodule"])
    if "Pleural effusion" in details:
        _pleural_effusion(chest, rng, details["Pleural effusion"])
        passive_atelectasis(chest, details, rng)
    nodes = details.get("Lymphadenopathy", {}).get("nodes", []) + details["_normal"].get("small_nodes", [])
    for node in nodes:
        _lymph_node(chest, rng, node)


def _consolidation(chest: RenderedChest, rng, info: dict) -> None:
    """Airless lung (about 35 HU) filling part of a lobe, with air bronchograms (patent airways through it)."""
    grid, plan = chest.grid, chest.plan
    lung = chest.lung > 0
    wt = lambda p: 0.25 + 0.75 * (1 - _lung_height(chest, p))  # noqa: E731 - basal predominance
    occ = np.zeros(grid.shape, dtype=np.float32)
    centers = [_lung_points(chest, rng, 1, weight=wt, lobe=lobe) for lobe in info["area_lobes"]]
    for c in (c[0] for c in centers if len(c)):
        r = float(rng.uniform(40.0, 75.0))  # segmental to lobar; the fissures below cut it to the lobe
        placed = _noise_blob(grid, rng, ellipsoid_fraction(grid, c, (r, r * 0.9, r * 0.85)), threshold=-1.0,
                             sigma_mm=12.0)
        if placed is None:
            continue
        box, frac = placed
        # Stay within the lobe of the centre: fissures bound consolidation.
        zz, yy, xx = grid.coords(box)
        oblique = plan.fissure["z0"] + plan.fissure["slope"] * (yy - plan.fissure["y0"])
        lobe = plan.lobe_of(c)
        same = (zz < oblique) if lobe.endswith("lower") else (zz >= oblique)
        same = same & ((xx < 0) if lobe.startswith("right") else (xx >= 0))
        paint_max(occ, (box, frac * same))
    occ *= lung
    # Air bronchograms: peripheral airways of the tree that run through the consolidated region stay aerated.
    bronchi = np.zeros(grid.shape, dtype=np.float32)
    for br in plan.branches:
        if br.generation < 2:
            continue
        mid = grid.box(0.5 * (br.a + br.b), 0.5 * (br.a + br.b))
        if mid is None or occ[mid].max() < 0.5:
            continue
        r = max(br.airway_r[0] * 1.1, 1.0)
        paint_max(bronchi, capsule_fraction(grid, br.a, br.b, r, max(br.airway_r[1], 0.8),
                                            min_radius=0.35 * grid.voxel))
    occ_b = occ * (1.0 - np.maximum(bronchi, chest.airway_lumen))
    chest.hu += occ_b * (float(rng.uniform(20.0, 45.0)) - chest.hu)
    chest.hu += occ * bronchi * (HU_AIR + 80.0 - chest.hu)
    chest.extras["consolidation"] = occ


def _atelectasis(chest: RenderedChest, rng, info: dict, effusion: dict | None) -> None:
    """Plate-like (linear) atelectasis in the planned lobes and/or dependent subsegmental collapse of the bases.
    Passive (compressive) atelectasis next to pleural fluid is drawn by :func:`passive_atelectasis`."""
    grid, plan = chest.grid, chest.plan
    lung = chest.lung > 0
    spare = 1.0 - chest.airway_lumen
    wt = lambda p: (_periphery(chest, p) > 0.45) * 1.0  # noqa: E731 - away from the hilum
    for lobe in info.get("linear_lobes", []):
        for c in _lung_points(chest, rng, 1, weight=wt, lobe=lobe):
            rot = rotation_zyx(axial_deg=float(rng.uniform(0, 180)), coronal_deg=float(rng.uniform(-20, 20)))
            # 6-10 mm plates: at least one voxel of the coarsest CT grid the quickstart reads (6 mm).
            axes = (float(rng.uniform(3.0, 5.0)), float(rng.uniform(14, 24)), float(rng.uniform(25, 45)))
            blend(chest.hu, ellipsoid_fraction(grid, c, axes, rot), float(rng.uniform(-60.0, 20.0)),
                  where=lung * spare)
    sides = info.get("dependent_sides", [])
    if sides:
        # Dependent (posterior, basal) collapse: a band along the posterior chest wall of the bases.
        top = plan.z_dome_right + float(rng.uniform(30.0, 70.0))
        box = grid.box((plan.z_recess - 10, plan.cav_y_ant, -plan.cav_a), (top, plan.cav_y_post + 5, plan.cav_a))
        if box is not None:
            zz, yy, xx = grid.coords(box)
            ca, yc, cb = plan.cavity(zz)
            rho = np.sqrt((xx / ca) ** 2 + ((yy - yc) / cb) ** 2) + 1e-3
            depth = (1 - rho) * np.sqrt(xx ** 2 + (yy - yc) ** 2) / rho
            thick = float(rng.uniform(18.0, 34.0)) * np.clip((top - zz) / (top - plan.z_recess), 0, 1) ** 0.5
            post = np.clip((yy - yc) / cb / rho, 0, 1) ** 2
            which = ((xx < 0) & ("right" in sides)) | ((xx >= 0) & ("left" in sides))
            frac = np.clip((thick * post - depth) / 3.0 + 0.5, 0, 1) * which
            blend(chest.hu, (box, frac.astype(np.float32)), float(rng.uniform(-120.0, 10.0)), where=lung * spare)


def _septal_lines(chest: RenderedChest, rng, info: dict) -> None:
    """Thickened interlobular septa: a warped polyhedral lattice (secondary lobules ~14-22 mm) of ~1.2 mm walls in
    the subpleural lung. Clear on thin CT sections, almost nothing on a projection."""
    grid, plan = chest.grid, chest.plan
    sel = chest.lung > 0
    if info["zones"] == "lower lobes":
        sel = sel & (grid.z < plan.fissure["z0"] - 30.0)
    idx = np.flatnonzero(sel.ravel())
    if len(idx) == 0:
        return
    pts = grid.points_mm(idx)
    periph = _periphery(chest, pts)
    keep = periph > 0.72  # subpleural
    idx, pts = idx[keep], pts[keep]
    L = info["cell_mm"]
    ph = rng.uniform(0, 2 * np.pi, 6)
    z, y, x = pts[:, 0], pts[:, 1], pts[:, 2]
    wz = z + 4.0 * np.sin(y / 19.0 + ph[0]) + 3.0 * np.sin(x / 23.0 + ph[1])
    wy = y + 4.0 * np.sin(x / 17.0 + ph[2]) + 3.0 * np.sin(z / 21.0 + ph[3])
    wx = x + 4.0 * np.sin(z / 18.0 + ph[4]) + 3.0 * np.sin(y / 22.0 + ph[5])
    h = grid.voxel
    # mm: the tent below integrates to this thickness across each septal plane. Thickened septa are 1-2 mm; 1.2 mm
    # raises a 6 mm voxel by about 200 HU, so the lattice survives the quickstart's coarse CT grid.
    thick = 1.2
    occ = np.zeros(len(idx))
    for w in (wz, wy, wx):
        d = np.abs(w / L - np.round(w / L)) * L  # distance to the nearest septal plane, mm
        occ = np.maximum(occ, np.clip(1.0 - d / h, 0, 1) * min(1.0, thick / h))
    flat = chest.hu.reshape(-1)
    spare = 1.0 - chest.airway_lumen.reshape(-1)[idx]
    flat[idx] += (occ * spare * (20.0 - flat[idx])).astype(np.float32)


def _fibrotic_bands(chest: RenderedChest, rng, info: dict) -> None:
    """Parenchymal (fibrotic) bands from the pleura, upper-zone predominant, plus apical pleuroparenchymal caps."""
    grid, plan = chest.grid, chest.plan
    lung = chest.lung > 0
    wt = lambda p: (_periphery(chest, p) > 0.75) * (0.3 + 0.7 * _lung_height(chest, p))  # noqa: E731
    occ = np.zeros(grid.shape, dtype=np.float32)
    starts = [_lung_points(chest, rng, 1, weight=wt, lobe=lobe) for lobe in info["band_lobes"]]
    for a in (a[0] for a in starts if len(a)):
        ca, yc, cb = (float(np.asarray(v).reshape(-1)[0]) for v in plan.cavity(np.array([a[0]])))
        inward = -np.array([0.0, (a[1] - yc) / cb ** 2, a[2] / ca ** 2])  # the wall's inward normal
        inward /= np.linalg.norm(inward) + 1e-9
        inward = inward + rng.normal(0, 0.35, 3)
        inward /= np.linalg.norm(inward)
        length = float(rng.uniform(30.0, 60.0))
        pts = smooth_path([a - 6 * inward, a + 0.5 * length * inward + rng.normal(0, 3, 3), a + length * inward], 6)
        for i in range(len(pts) - 1):
            # 4-6 mm thick bands (scar with volume loss), not hairlines: visible at 6 mm voxels.
            paint_max(occ, capsule_fraction(grid, pts[i], pts[i + 1], 3.0, 2.2, min_radius=0.4 * grid.voxel))
    if info["apical"]:
        for side in ("right", "left"):
            cx, cy, _ = plan.apex_centers[side]
            box = grid.box((plan.z_apex - 40, cy - 40, cx - 40), (plan.z_apex + 5, cy + 40, cx + 40))
            if box is None:
                continue
            zz, yy, xx = grid.coords(box)
            gap = plan.apex(side, xx, yy) - zz  # mm below the apical pleura
            cap = np.clip(1.0 - (gap - 10.0) / 4.0, 0, 1) * (gap > -1)  # a cap about 10 mm thick
            np.maximum(occ[box], cap.astype(np.float32), out=occ[box])
    occ *= lung * (1.0 - chest.airway_lumen)
    chest.hu += occ * (float(rng.uniform(-80.0, 10.0)) - chest.hu)


def _nodules(chest: RenderedChest, rng, info: dict) -> None:
    """Round nodules of the planned diameters: solid (~30 HU), calcified (~400 HU), ground-glass (~-550 HU)."""
    grid = chest.grid
    lung = chest.lung > 0
    inner = lambda p: (_periphery(chest, p) < 0.93) * 1.0  # noqa: E731
    hu_of = {"solid": 30.0, "calcified": 420.0, "ground-glass": -560.0, "part-solid": -300.0}
    for nod in info["nodules"]:
        pts = _lung_points(chest, rng, 1, weight=inner, lobe=nod["lobe"])
        if len(pts) == 0:
            continue
        c = pts[0]
        r = nod["diameter_mm"] / 2.0
        axes = r * rng.uniform(0.85, 1.15, 3)
        placed = ellipsoid_fraction(grid, c, axes)
        blend(chest.hu, placed, hu_of[nod["kind"]], where=lung)
        if nod["kind"] == "part-solid":
            blend(chest.hu, ellipsoid_fraction(grid, c, axes * 0.45), 30.0, where=lung)
        chest.extras.setdefault("nodule_centers", []).append(c)


def _pleural_effusion(chest: RenderedChest, rng, info: dict) -> None:
    """Free pleural fluid (~5-20 HU) in the dependent (posterior, basal) pleural space with a meniscus that climbs
    the posterior and lateral chest wall; the lung in front of it is displaced (replaced)."""
    grid, plan = chest.grid, chest.plan
    fluid_hu = float(rng.uniform(5.0, 20.0))
    effusion = np.zeros(grid.shape, dtype=np.float32)
    for side in info["sides"]:
        depth = float(info["depth_mm"][side])
        label = 1 if side == "right" else 2
        climb = 4.0 * depth + 70.0  # larger effusions reach higher along the posterior and lateral wall
        top = plan.z_recess + climb
        box = grid.box((plan.z_recess - 20.0, plan.cav_y_ant - 10.0, -plan.cav_a - 10.0),
                       (top, plan.cav_y_post + 20.0, plan.cav_a + 10.0))
        if box is None:
            continue
        zz, yy, xx = grid.coords(box)
        ca, yc, cb = plan.cavity(zz)
        rho = np.sqrt((xx / ca) ** 2 + ((yy - yc) / cb) ** 2) + 1e-3
        dist_wall = (1.0 - rho) * np.sqrt(xx ** 2 + (yy - yc) ** 2) / rho  # radial distance to the chest wall
        post = np.clip(0.45 + 0.55 * (yy - yc) / cb / rho, 0, 1)  # 1 posteriorly, 0.45 laterally, 0 in front
        height = np.clip((top - zz) / climb, 0, 1) ** 0.6
        thick = depth * post * height
        # The dependent fluid also fills the bottom of the costophrenic recess completely.
        frac = np.clip((thick - dist_wall) / grid.voxel + 0.5, 0, 1)
        frac *= chest.lung[box] == label
        np.maximum(effusion[box], frac.astype(np.float32), out=effusion[box])
    chest.hu += effusion * (fluid_hu - chest.hu)
    chest.extras["pleural_fluid"] = effusion > 0.5


def _lymph_node(chest: RenderedChest, rng, node: dict) -> None:
    """An oval soft-tissue node (~38 HU) in mediastinal fat or at the hilum; never drawn over vessels or airways."""
    plan, grid = chest.plan, chest.grid
    c = NODE_STATIONS[node["station"]](plan) + rng.normal(0, 2.0, 3)
    s, l_ = node["short_axis_mm"] / 2.0, node["long_axis_mm"] / 2.0
    placed = ellipsoid_fraction(grid, c, (l_, s, s * 1.1), rotation_zyx(axial_deg=float(rng.uniform(0, 180))))
    if placed is None:
        return
    box, frac = placed
    soft = (chest.hu[box] < -30.0) & (chest.airway_lumen[box] < 0.3)
    blend(chest.hu, (box, frac * soft), 38.0)


# ------------------------------------------------------------------------------- stage 4: dense (post-blur)
def dense_layers(chest: RenderedChest, details: dict, rng: np.random.Generator) -> list:
    """Calcifications and metal as ``(box, occupancy, hu)`` layers, composited after the reconstruction blur."""
    layers: list = []
    grid, plan = chest.grid, chest.plan
    min_r = 0.7 * grid.voxel
    if "Arterial wall calcification" in details:
        info = details["Arterial wall calcification"]
        aorta = plan.tubes["aorta"]
        n_pts = len(aorta.points)
        ranges = {"ascending aorta": (1, 11), "aortic arch": (11, 20), "descending aorta": (20, n_pts - 8)}
        for i in range(info["n_plaques"]):
            site = info["sites"][i % len(info["sites"])]
            lo, hi = ranges[site]
            k = int(rng.integers(lo, max(lo + 1, hi)))
            # A curvilinear plaque 12-35 mm long and ~4 mm thick on the wall, following the aorta's centre line:
            # what 6 x 6 x 10 mm voxels still show as calcium (a 1 mm dot is averaged into the blood).
            side = rng.normal(0, 1, 3)
            length, walked = float(rng.uniform(12.0, 35.0)), 0.0
            hu = float(rng.uniform(700.0, 1300.0))
            prev = None
            for j in range(k, n_pts):
                t = aorta.points[min(j + 1, n_pts - 1)] - aorta.points[max(j - 1, 0)]
                t /= np.linalg.norm(t) + 1e-9
                perp = side - (side @ t) * t
                perp /= np.linalg.norm(perp) + 1e-9
                wall = aorta.points[j] + perp * (aorta.radii[j] - 1.5)
                if prev is not None:
                    layers.append((capsule_fraction(grid, prev, wall, 2.0, 2.0, min_radius=min_r), hu))
                    walked += float(np.linalg.norm(wall - prev))
                    if walked >= length:
                        break
                prev = wall
    if "Coronary artery wall calcification" in details:
        info = details["Coronary artery wall calcification"]
        for i in range(info["n_spots"]):
            # Calcified segments 10-30 mm along the vessel, ~3.5 mm across (a dot is lost in a 6 mm voxel of blood).
            v = info["vessels"][i % len(info["vessels"])]
            s0 = float(rng.uniform(0.05, 0.55))
            path = [coronary_point(plan, v, s) for s in np.linspace(s0, s0 + float(rng.uniform(0.12, 0.3)), 5)]
            r, hu = float(rng.uniform(1.5, 2.2)), float(rng.uniform(600.0, 1200.0))
            for a, b in zip(path[:-1], path[1:]):
                layers.append((capsule_fraction(grid, a, b, r, r, min_radius=min_r), hu))
    if "Medical material" in details:
        for item in details["Medical material"]["items"]:
            layers.extend(_medical_material(chest, rng, item))
    return [(p, v) for p, v in layers if p is not None]


def coronary_point(plan: ChestPlan, vessel: str, s: float) -> np.ndarray:
    """A point on the epicardial surface along ``vessel`` ("LAD", "LCx", "RCA"), ``s`` in [0, 1] from its origin.

    In the heart ellipsoid's own frame the long axis (third axis) runs from the base (-) to the apex (+); the
    atrioventricular groove is a ring near the base and the LAD runs down the anterior surface.
    """
    ax = plan.heart_axes * plan.heart_scale
    if vessel == "LAD":
        w = -0.35 + 1.2 * s  # base -> apex along the long axis
        v = -np.sqrt(max(1 - w * w, 0.02))  # anterior surface (negative second axis)
        u = 0.25 * np.sqrt(max(1 - w * w, 0.02))
    else:
        w = -0.35
        ring = np.sqrt(1 - w * w)
        theta = (np.pi * (0.6 + 0.8 * s)) if vessel == "RCA" else (-np.pi * (0.1 + 0.7 * s))
        v, u = -ring * np.cos(theta), ring * np.sin(theta)
    local = np.array([u * ax[0], v * ax[1], w * ax[2]]) * 1.04 + np.array([0.0, 0.0, 0.0])
    local += np.sign(local) * (plan.epicardial_fat * 0.4)
    return plan.heart_center + plan.heart_rotation @ local


def _medical_material(chest: RenderedChest, rng, item: str) -> list:
    """Metal (3071 HU) and radio-opaque devices: pacemaker and leads, sternal wires, port and catheter, clips,
    coronary stent, prosthetic valve ring."""
    grid, plan = chest.grid, chest.plan
    min_r = 0.9 * grid.voxel
    out = []
    y_sub = -plan.body_b_ant * 0.92 + plan.fat * 0.45  # in the subcutaneous fat of the anterior chest wall
    zs_top = plan.z_apex - 38.0 * plan.patient.height
    if item == "pacemaker":
        side = 1 if rng.random() < 0.85 else -1
        gen = np.array([zs_top - 25.0, y_sub, side * 0.45 * plan.body_a])
        out.append((ellipsoid_fraction(grid, gen, (20.0, max(4.0, min_r), 24.0)), HU_METAL))
        ra = plan.heart_center + plan.heart_rotation @ (np.array([0.0, -0.2, -0.7]) * plan.heart_axes)
        rv = plan.heart_center + plan.heart_rotation @ (np.array([-0.3, -0.5, 0.75]) * plan.heart_axes
                                                        * plan.heart_scale)
        svc = plan.tubes["svc"].points
        for target in ([ra] if rng.random() < 0.3 else [ra, rv]):
            path = smooth_path([gen, [zs_top + 5.0, plan.cav_y_ant + 10.0, side * 40.0], svc[0], svc[1], svc[2],
                                target], 24)
            for a, b in zip(path[:-1], path[1:]):
                out.append((capsule_fraction(grid, a, b, 1.0, 1.0, min_radius=min_r), HU_METAL))
    elif item == "sternal wires":
        y_front = plan.cav_y_ant - 8.0
        for k in range(int(rng.integers(5, 8))):
            z = zs_top - 20.0 - k * 22.0
            loop = [np.array([z, y_front + 9.0 * np.sin(t), 16.0 * np.cos(t)]) for t in np.linspace(0, 2 * np.pi, 9)]
            for a, b in zip(loop[:-1], loop[1:]):
                out.append((capsule_fraction(grid, a, b, 0.6, 0.6, min_radius=min_r), HU_METAL))
    elif item == "port catheter":
        side = -1 if rng.random() < 0.8 else 1
        port = np.array([zs_top - 30.0, y_sub, side * 0.4 * plan.body_a])
        out.append((ellipsoid_fraction(grid, port, (12.0, max(6.0, min_r), 12.0)), HU_METAL))
        svc = plan.tubes["svc"].points
        path = smooth_path([port, [zs_top + 10.0, plan.cav_y_ant + 5.0, side * 35.0], svc[0], svc[1],
                            0.5 * (svc[1] + svc[2])], 16)
        for a, b in zip(path[:-1], path[1:]):
            out.append((capsule_fraction(grid, a, b, 1.3, 1.3, min_radius=0.5 * grid.voxel), 350.0))
    elif item == "surgical clips":
        for _ in range(int(rng.integers(2, 7))):
            if rng.random() < 0.5:
                c = plan.landmarks["carina"] + rng.normal(0, 15, 3)
            else:
                pts = _lung_points(chest, rng, 1)
                c = pts[0] if len(pts) else plan.landmarks["carina"]
            d = rng.normal(0, 1, 3)
            d *= 2.5 / (np.linalg.norm(d) + 1e-9)
            out.append((capsule_fraction(grid, c - d, c + d, 0.8, 0.8, min_radius=min_r), HU_METAL))
    elif item == "stent":
        path = [coronary_point(plan, "LAD", s) for s in np.linspace(0.05, 0.3, 5)]
        for a, b in zip(path[:-1], path[1:]):
            out.append((capsule_fraction(grid, a, b, 1.6, 1.6, min_radius=min_r), 2600.0))
    elif item == "valve prosthesis":
        base = plan.heart_center + plan.heart_rotation @ (np.array([0.0, 0.0, -0.45]) * plan.heart_axes)
        rot = plan.heart_rotation
        ring = [base + rot @ np.array([11.0 * np.cos(t), 11.0 * np.sin(t), 0.0]) for t in np.linspace(0, 2 * np.pi, 10)]
        for a, b in zip(ring[:-1], ring[1:]):
            out.append((capsule_fraction(grid, a, b, 1.5, 1.5, min_radius=min_r), HU_METAL))
    return out


def apply_dense_layers(volume: np.ndarray, layers: list) -> None:
    """Composite dense layers into a float HU ``volume`` in place (never lowers a voxel)."""
    for (box, frac), hu in layers:
        sub = volume[box]
        np.maximum(sub, sub + frac * (hu - sub), out=sub)


def passive_atelectasis(chest: RenderedChest, details: dict, rng) -> None:
    """Compressive atelectasis: a denser rim of lung just above/in front of the pleural fluid."""
    info = details.get("Atelectasis")
    fluid = chest.extras.get("pleural_fluid")
    if info is None or fluid is None or not info.get("passive_sides"):
        return
    from scipy.ndimage import binary_dilation

    rim = binary_dilation(fluid, iterations=max(1, int(round(6.0 / chest.grid.voxel)))) & ~fluid & (chest.lung > 0)
    chest.hu[rim] += 0.8 * (-250.0 - chest.hu[rim])
