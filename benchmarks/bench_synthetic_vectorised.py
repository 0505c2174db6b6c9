"""Vectorised synthetic generator against today's reference implementation, in the same run (issue 17).

The faster generator must render bit-identical studies, so the reference is the *previous code itself*: the
functions that were rewritten are kept verbatim below (``_reference_*``) and swapped into the generator's modules
for the reference rounds. Each round writes the same ``--n`` studies at the default quickstart's synthetic shape
with :func:`generate_synthetic_ct_rate` (1 worker, what each of the quickstart's workers runs) into a temporary
folder; reference and vectorised rounds alternate (``--rounds`` each) so that the load of a shared machine hits
both alike. Prints wall and CPU time per study, studies/s, the speed-up, whether the two folders are identical
(decompressed NIfTI bytes and tables), and the generation time projected for the default quickstart
(``n_train + n_valid + n_test`` studies on ``workers`` processes).

Usage::

    python benchmarks/bench_synthetic_vectorised.py [--n 40] [--rounds 2] [--shape 64 128 128]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from x2ctclip.train.quickstart import PRESETS
from x2ctclip.train.synthetic import anatomy, findings, geometry, lesions, render, study, writer
from x2ctclip.train.synthetic.anatomy import Branch
from x2ctclip.train.synthetic.anatomy import HU_AIR, HU_FLUID, HU_KIDNEY, HU_SPLEEN
from x2ctclip.train.synthetic.geometry import blend, ellipsoid_fraction, paint_max, rotation_zyx
from x2ctclip.train.synthetic.render import (RenderedChest, _mediastinum_mask, _render_bones, _render_mediastinum,
                                             _render_table)
from x2ctclip.train.synthetic.writer import nifti_bytes
from x2ctclip.train.synthetic.geometry import Grid
from x2ctclip.train.synthetic.anatomy import ChestPlan
from x2ctclip.train.synthetic.anatomy import plan_trees
from x2ctclip.train.synthetic.lesions import dense_layers, lung_hooks, render_findings
from x2ctclip.train.synthetic.study import (DEFAULT_SHAPE, RECON_KINDS, TABLE_Z, SyntheticStudy, _pad_outside_fov,
                                            _reconstruct, metadata_row, plan_study)
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

_MODULES = (geometry, render, lesions, anatomy, study, findings, writer)


# ------------------------------------------------------------------ reference: the code before vectorising
# Copied verbatim (only renamed _reference_*); they call one another through the plain names bound after them.
capsule_fraction = splat_segments = _render_abdomen = write_atomic = render_chest = render_trees = None
# train/synthetic/geometry.py (Grid.box) at the commit before issue 17's changes
def _reference_Grid_box(self, lo, hi) -> tuple[slice, slice, slice] | None:
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


# train/synthetic/geometry.py (capsule_fraction) at the commit before issue 17's changes
def _reference_capsule_fraction(grid: Grid, a, b, ra: float, rb: float, *, min_radius: float = 0.0):
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


# train/synthetic/geometry.py (splat_segments) at the commit before issue 17's changes
def _reference_splat_segments(grid: Grid, segments) -> np.ndarray:
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


# train/synthetic/render.py (render_chest) at the commit before issue 17's changes
def _reference_render_chest(plan: ChestPlan, grid: Grid, rng: np.random.Generator, lung_hooks=()) -> RenderedChest:
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


# train/synthetic/render.py (_render_abdomen) at the commit before issue 17's changes
def _reference__render_abdomen(chest: RenderedChest, rng: np.random.Generator, abdomen: np.ndarray) -> None:
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


# train/synthetic/render.py (render_trees) at the commit before issue 17's changes
def _reference_render_trees(chest: RenderedChest) -> None:
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


# train/synthetic/anatomy.py (_add_branch) at the commit before issue 17's changes
def _reference__add_branch(rng, plan, a, b, offset_a, generation, lobe, vessel_r, airway_r) -> np.ndarray:
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


# train/synthetic/study.py (make_study) at the commit before issue 17's changes
def _reference_make_study(seed: int = 0, shape=DEFAULT_SHAPE, *, spacing=None, labels=None, n_recons: int = 1,
               split: str = "train", patient: int = 1, scan: int = 0, planned: dict | None = None) -> SyntheticStudy:
    """Render one study (all ``n_recons`` reconstructions) deterministically from ``(seed, split, patient, scan)``.

    Args:
        shape: ``(D, H, W)`` of the first reconstruction (slices, rows, columns).
        spacing: ``(sz, sy, sx)`` mm; default: chosen so the chest fills the field of view like a clinical scan.
        labels: force the findings (18-vector, dict or list of names); default: drawn like CT-RATE.
        n_recons: reconstructions to produce (1: soft kernel; 2: + sharp kernel; 3: + 5 mm thick slices; cycles).
    """
    if n_recons < 1:
        raise ValueError(f"n_recons must be >= 1, got {n_recons}")
    p = planned or plan_study(seed, split, patient, scan, shape, spacing=spacing, labels=labels)
    plan, grid, rngs, details = p["plan"], p["grid"], p["render_rng"], p["details"]
    chest = render_chest(plan, grid, rngs["anatomy"], lung_hooks=lung_hooks(details, rngs["findings"]))
    plan_trees(rngs["anatomy"], plan, grid, chest.lung, n_leaves=150)
    render_trees(chest)
    render_findings(chest, details, rngs["findings"])
    dense = dense_layers(chest, details, rngs["findings"])
    rng = rngs["noise"]
    base = chest.hu
    del chest

    manufacturer, model, intercept, _ = p["scanner"]
    noise_sd = 55.0 * (1.0 + 0.35 * max(p["patient"].habitus, 0.0))  # before the blur; ~15-20 HU after it
    padding = -2048.0 if manufacturer == "SIEMENS" else (-3024.0 if manufacturer == "TOSHIBA" else None)
    volumes, spacings, meta = [], [], []
    for r in range(n_recons):
        spec = RECON_KINDS[r % len(RECON_KINDS)]
        vol = _reconstruct(base, rng, spec, noise_sd, dense)
        sp = grid.spacing
        if spec["kind"] == "thick":
            d2 = vol.shape[0] // 2
            vol = 0.5 * (vol[0:2 * d2:2] + vol[1:2 * d2:2])
            sp = (sp[0] * 2, sp[1], sp[2])
        if padding is not None:
            _pad_outside_fov(vol, padding)
        hu16 = np.clip(np.rint(vol), -3024, 3071).astype(np.int16)
        volumes.append(hu16)
        spacings.append(sp)
        meta.append(metadata_row(p, spec, hu16.shape, sp, intercept, padding))
    origin = (grid.origin[2], grid.origin[1], grid.origin[0] + TABLE_Z)
    return SyntheticStudy(volumes=volumes, spacings=spacings, labels=p["labels"], report=p["report"],
                          details=details, patient=p["patient"], metadata=meta, origin_lps=origin)


# train/synthetic/writer.py (write_atomic) at the commit before issue 17's changes
def _reference_write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary sibling and rename it over ``path`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# train/synthetic/writer.py (write_volume) at the commit before issue 17's changes
def _reference_write_volume(path: Path, hu: np.ndarray, spacing, origin_lps, intercept: float, slope: float = 1.0,
                 compresslevel: int = 1, release: str = "fixed") -> None:
    """Write an int16 HU volume ``(D, H, W)`` as ``.nii.gz``, atomically; deterministic bytes (gzip header without
    time stamp or name). ``release="fixed"`` (CT-RATE's corrected release): the values are HU (slope 1, intercept
    0) with a full header; ``"original"`` (first release): stored values ``(HU - intercept) / slope`` under a blank
    header, the rescale only in the metadata."""
    from isal import igzip

    if release == "fixed":
        slope, intercept = 1.0, 0.0
    elif release != "original":
        raise ValueError(f"release must be 'fixed' or 'original', got {release!r}")
    stored = np.rint((hu.astype(np.float32) - intercept) / slope).astype(np.int16)
    raw = nifti_bytes(stored, spacing, origin_lps, slope, intercept, blank_header=release == "original")
    write_atomic(path, igzip.compress(raw, compresslevel, mtime=0))

capsule_fraction = _reference_capsule_fraction
splat_segments = _reference_splat_segments
_render_abdomen = _reference__render_abdomen
write_atomic = _reference_write_atomic
render_chest = _reference_render_chest
render_trees = _reference_render_trees


REFERENCE = {"capsule_fraction": _reference_capsule_fraction, "splat_segments": _reference_splat_segments,
             "render_chest": _reference_render_chest, "_render_abdomen": _reference__render_abdomen,
             "render_trees": _reference_render_trees, "_add_branch": _reference__add_branch,
             "write_atomic": _reference_write_atomic, "write_volume": _reference_write_volume,
             "make_study": _reference_make_study}


@contextlib.contextmanager
def reference_generator():
    """Swap the reference functions into every generator module that holds the new ones (and ``Grid.box``)."""
    saved = [(geometry.Grid, "box", geometry.Grid.box)]
    geometry.Grid.box = _reference_Grid_box
    for mod in _MODULES:
        for name, ref in REFERENCE.items():
            if hasattr(mod, name):
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, ref)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


# ------------------------------------------------------------------------------------------------ measuring
def folder_digest(root: Path) -> str:
    """sha256 of the decompressed NIfTI bytes and the tables of a written folder."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        data = path.read_bytes()
        h.update(gzip.decompress(data) if path.suffix == ".gz" else data)
    return h.hexdigest()


def timed_round(out: Path, n: int, shape, seed: int) -> tuple[float, float, str]:
    """Wall s, CPU s and folder digest of writing ``n`` studies (90 % train, 10 % valid) with 1 worker."""
    t0, c0 = time.perf_counter(), time.process_time()
    n_valid = max(1, n // 10)
    generate_synthetic_ct_rate(out, n_train=n - n_valid, n_valid=n_valid, shape=shape, seed=seed, workers=1,
                               progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    digest = folder_digest(out)
    shutil.rmtree(out)
    return wall, cpu, digest


def main(argv: list[str] | None = None) -> int:
    preset = PRESETS["default"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="studies per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each generator (alternating)")
    parser.add_argument("--shape", type=int, nargs=3, default=preset.synthetic_shape)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 2 or args.rounds < 1:
        parser.error("--n must be >= 2 and --rounds >= 1")
    shape = tuple(args.shape)
    tmp = Path(tempfile.mkdtemp(prefix="x2ctclip_vectorised_"))
    results = {"reference": [], "vectorised": []}
    try:
        print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        timed_round(tmp / "warm", 2, shape, args.seed)  # imports, caches
        for r in range(args.rounds):
            for kind in ("reference", "vectorised"):
                ctx = reference_generator() if kind == "reference" else contextlib.nullcontext()
                with ctx:
                    wall, cpu, digest = timed_round(tmp / f"{kind}{r}", args.n, shape, args.seed)
                results[kind].append((wall, cpu, digest))
                print(f"round {r + 1} {kind:10s}: {args.n} studies {wall:6.1f} s wall {cpu:6.1f} s CPU -> "
                      f"{args.n / wall:5.2f} studies/s, {cpu / args.n:.3f} CPU s/study", flush=True)
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref_cpu = sum(c for _, c, _ in results["reference"]) / (args.n * args.rounds)
    new_cpu = sum(c for _, c, _ in results["vectorised"]) / (args.n * args.rounds)
    ref_wall = sum(w for w, _, _ in results["reference"]) / (args.n * args.rounds)
    new_wall = sum(w for w, _, _ in results["vectorised"]) / (args.n * args.rounds)
    digests = {d for kind in results for _, _, d in results[kind]}
    print(f"\nreference : {1 / ref_wall:5.2f} studies/s, {ref_cpu:.3f} CPU s/study")
    print(f"vectorised: {1 / new_wall:5.2f} studies/s, {new_cpu:.3f} CPU s/study")
    print(f"speed-up: {ref_wall / new_wall:.2f}x wall, {ref_cpu / new_cpu:.2f}x CPU; outputs identical: "
          f"{'yes' if len(digests) == 1 else 'NO'}")
    total = preset.n_train + preset.n_valid + preset.n_test
    workers = max(preset.workers, 1)
    print(f"default quickstart ({total} studies at {preset.synthetic_shape}, {workers} workers, CPU-bound): about "
          f"{total * ref_cpu / workers:.0f} s -> {total * new_cpu / workers:.0f} s of generation if the cores are free")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
