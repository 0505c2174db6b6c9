"""Rendering the planned chest (lungs, mediastinum, bones, abdomen, airway and vessel trees) into HU."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from x2ctclip.train.synthetic.anatomy import ChestPlan
from x2ctclip.train.synthetic.geometry import Grid
from x2ctclip.train.synthetic.anatomy import HU_AIR
from x2ctclip.train.synthetic.anatomy import HU_FLUID
from x2ctclip.train.synthetic.anatomy import HU_KIDNEY
from x2ctclip.train.synthetic.anatomy import HU_MUSCLE
from x2ctclip.train.synthetic.anatomy import HU_SPLEEN
from x2ctclip.train.synthetic.geometry import blend
from x2ctclip.train.synthetic.geometry import capsule_fraction
from x2ctclip.train.synthetic.geometry import capsule_fractions
from x2ctclip.train.synthetic.geometry import chain_fraction
from x2ctclip.train.synthetic.geometry import chain_placed
from x2ctclip.train.synthetic.geometry import ellipsoid_fraction
from x2ctclip.train.synthetic.geometry import paint_max
from x2ctclip.train.synthetic.geometry import rotation_zyx
from x2ctclip.train.synthetic.geometry import smooth_path
from x2ctclip.train.synthetic.geometry import splat_segments


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
    # np.copyto(..., where=mask) writes the same values as hu[mask] = v without building an index list.
    np.copyto(hu, P["fat"], where=body & (hu < P["fat"]))
    # Skin (a thin rim) then the muscle layer inside the subcutaneous fat.
    inner = (xx * a_z / np.maximum(a_z - 2.5, 1)) ** 2 + (yy * np.where(y < 0, b_ant_z / (b_ant_z - 2.5),
                                                                       b_post_z / (b_post_z - 2.5))) ** 2
    np.copyto(hu, 25.0, where=body & (inner > 1.0))
    fa, fat = plan.fat, plan.fat
    xm = x / (a_z - fa)
    ym = np.where(y < 0, y / (b_ant_z - fat), y / (b_post_z - fat * 0.8))
    muscle = (xm * xm + ym * ym - 0.35 * xm * xm * ym * ym) <= 1.0
    np.copyto(hu, P["muscle"], where=muscle)
    del inner, xm, ym

    # Thoracic cavity (inside ribs and intercostal muscles), minus the spine and paraspinal muscles.
    cav_a, yc, cav_b = plan.cavity(z)
    r_cav = (x / cav_a) ** 2 + ((y - yc) / cav_b) ** 2
    spine_excl = ((x / (plan.vertebra_r + 10.0)) ** 2 + ((y - plan.spine_y - 18.0) / 36.0) ** 2) <= 1.0
    cavity = (r_cav <= 1.0) & ~spine_excl & (z < plan.z_apex + 25.0)
    np.copyto(hu, P["fat"] + 10.0, where=cavity)  # mediastinal / extrapleural fat, overwritten by lungs and organs

    # Lungs: cavity above the diaphragm domes, below the apical caps, outside the mediastinum.
    yy2 = y[0, :, :]
    xx2 = x[0, :, :]
    lung = np.zeros(grid.shape, dtype=np.int8)
    abdomen = np.zeros(grid.shape, dtype=bool)
    for label, side, sel in ((1, "right", x < 0), (2, "left", x >= 0)):
        dome = plan.dome(side, xx2, yy2)[None]  # (1, H, W)
        apex = plan.apex(side, xx2, yy2)[None]
        np.copyto(lung, label, where=cavity & sel & (z > dome) & (z < apex))
        abdomen |= (r_cav <= 1.0) & sel & (z <= dome)
    mediastinum = _mediastinum_mask(plan, grid)
    np.copyto(lung, 0, where=mediastinum)
    np.copyto(hu, 25.0, where=abdomen)
    chest = RenderedChest(grid=grid, plan=plan, hu=hu, body=body, lung=lung, cavity=cavity,
                          heart=np.zeros(grid.shape, dtype=bool),
                          airway_lumen=np.zeros(grid.shape, dtype=np.float32))
    _render_abdomen(chest, rng, abdomen)
    del abdomen

    # Lung parenchyma: denser posteriorly (gravity-dependent perfusion in a supine patient).
    in_lung = lung > 0
    gradient = (45.0 * (y - plan.cav_y_ant) / (plan.cav_y_post - plan.cav_y_ant)).astype(np.float32)
    np.copyto(hu, P["lung"] + gradient, where=in_lung)  # (1, H, 1) broadcast over the volume
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
    np.copyto(hu, P["fat"] + 30.0, where=abdomen)  # mixed fat and bowel
    dome_r = plan.dome("right", x[0], y[0])[None]
    liver = abdomen & (x < 35.0 - 0.6 * (y - plan.cav_y_ant)) & (z < dome_r - 4.0) & (
        z > plan.z_recess - 60.0 - 0.3 * (x + plan.cav_a))
    np.copyto(hu, P["liver"], where=liver)
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
    """Vertebrae with discs and posterior elements, ribs and costal cartilages, sternum, clavicles, scapulae.

    Longer than 80 lines on purpose: the bones are painted in one pass in depth order (a later bone paints over an
    earlier one), which the sequence of short blocks keeps visible.
    """
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
        placed_wall, placed_lumen = capsule_fractions(grid, br.a, br.b, [(ra + wt, rb + wt), (ra, rb)])
        paint_max(wall, placed_wall)
        paint_max(lumen, placed_lumen)
    if thin:
        np.maximum(vessel, splat_segments(grid, thin), out=vessel)
    # Everything below is multiplied by the lung mask, so outside the lungs' bounding box it adds exactly 0 to hu:
    # composite inside that box only (the same values, a fraction of the full-volume passes).
    box = _mask_box(lung)
    if box is None:
        return
    vessel, wall, lumen, lung, hu = vessel[box], wall[box], lumen[box], lung[box], hu[box]
    # Emphysema and mosaic-attenuation hooks may have stored a vessel weight field (fewer, thinner vessels).
    weight = chest.extras.get("vessel_weight")
    if weight is not None:
        vessel *= weight[box]
    vessel *= lung
    wall *= lung
    lumen *= lung
    hu += vessel * (plan.hu["blood"] - hu)
    hu += wall * (10.0 - hu)
    hu += lumen * (HU_AIR + 30.0 - hu)
    airway = chest.airway_lumen[box]
    np.maximum(airway, lumen, out=airway)


def _mask_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box (index slices) of the True voxels of a 3-D mask; None when it is empty."""
    out = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(hit):
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def _render_table(chest: RenderedChest, rng: np.random.Generator) -> None:
    """The scanner couch: a curved carbon-fibre plate under the patient's back."""
    grid, plan, hu = chest.grid, chest.plan, chest.hu
    y0 = plan.body_b_post + 8.0
    x2 = grid.x[0]
    yt = y0 + 0.0009 * x2 ** 2
    plate = (np.abs(grid.y[0] - yt) < 4.0) & (np.abs(x2) < 0.9 * plan.body_a + 40.0)  # (H, W)
    hu[:, plate] = -200.0 if rng.random() < 0.5 else 60.0
