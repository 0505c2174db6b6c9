"""One synthetic study: its plan (patient, findings, report) and its rendered CT volume."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


from x2ctclip.train.synthetic.anatomy import ChestPlan, Patient, plan_chest, plan_trees, sample_patient
from x2ctclip.train.synthetic.geometry import Grid
from x2ctclip.train.synthetic.render import render_chest, render_trees
from x2ctclip.train.synthetic.lesions import apply_dense_layers, dense_layers, lung_hooks, render_findings
from x2ctclip.train.synthetic.findings import as_label_vector, plan_findings, sample_labels
from x2ctclip.train.synthetic.reports import make_report
SPLITS = ("train", "valid", "test")
DEFAULT_SHAPE = (96, 128, 128)

# Reconstructions of one scan, cycled when more are asked: a soft-tissue kernel, a sharp (lung) kernel with more
# noise and no smoothing, and thick slices (pairs of slices averaged: half as many, twice the spacing).
RECON_KINDS = (
    {"kind": "soft", "kernel": "B30f", "description": "THORAX 1.5 B30f", "noise": 1.0, "blur": (0.5, 0.7, 0.7)},
    {"kind": "sharp", "kernel": "B70f", "description": "THORAX 1.0 B70f LUNG", "noise": 1.6, "blur": None},
    {"kind": "thick", "kernel": "B30f", "description": "THORAX 5.0 B30f", "noise": 1.0, "blur": (0.5, 0.7, 0.7)},
)
SCANNERS = (
    ("SIEMENS", "SOMATOM Definition Edge", -1024.0, 0.45),
    ("PHILIPS", "Ingenuity CT", -1024.0, 0.25),
    ("TOSHIBA", "Aquilion ONE", -1024.0, 0.15),
    ("PHILIPS", "Brilliance 64", -8192.0, 0.15),  # some scanners store with a large negative intercept
)


@dataclass
class SyntheticStudy:
    """One synthetic CT scan with all its reconstructions.

    Attributes:
        volumes: one int16 HU array per reconstruction, shape ``(D_r, H, W)`` indexed ``[z, y, x]`` (slices feet to
            head, rows anterior to posterior, columns patient right to left); see :mod:`.synthetic_anatomy`.
        spacings: ``(sz, sy, sx)`` mm per reconstruction.
        labels: ``(18,)`` int8, canonical CT-RATE order.
        report: the four CT-RATE report fields.
        details: finding name -> measurements (mm) of what was drawn.
        metadata: one CT-RATE metadata row (without VolumeName) per reconstruction.
        origin_lps: DICOM LPS position (mm) of voxel ``[0, 0, 0]``.
    """

    volumes: list
    spacings: list
    labels: np.ndarray
    report: dict
    details: dict
    patient: Patient
    metadata: list = field(default_factory=list)
    origin_lps: tuple = (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------- validation
def check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be three integers (D, H, W), got {shape!r}") from None
    if len(shape) != 3:
        raise ValueError(f"shape must be three integers (D, H, W), got {shape!r}")
    if min(shape) < 16 or max(shape) > 1024:
        raise ValueError(f"every dimension of shape must be between 16 and 1024 voxels, got {shape}")
    return shape


def check_spacing(spacing):
    if spacing is None:
        return None
    try:
        spacing = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be three numbers (sz, sy, sx) in mm, got {spacing!r}") from None
    if len(spacing) != 3 or not all(0.1 <= s <= 30.0 for s in spacing):
        raise ValueError(f"spacing must be three numbers between 0.1 and 30 mm (sz, sy, sx), got {spacing!r}")
    return spacing


# ------------------------------------------------------------------------------------------------ studies
def _grid_for(plan: ChestPlan, shape, spacing, rng: np.random.Generator) -> Grid:
    """Field of view: the body with a margin in-plane; apices to upper abdomen along z (CT-RATE-like coverage)."""
    d, h, w = shape
    top = float(rng.uniform(20.0, 45.0))
    bottom = plan.z_recess - float(rng.uniform(25.0, 60.0))
    if spacing is None:
        fov = max(2 * plan.body_a * float(rng.uniform(1.08, 1.22)), 2 * plan.body_b_ant * 1.25)
        sx = fov / w
        spacing = ((top - bottom) / d, sx, sx)
    sz, sy, sx = spacing
    # Centre the body left-right; the table sits under the back, so the body is a little anterior of centre.
    oz = top - (d - 1) * sz
    oy = -0.5 * (h - 1) * sy + float(rng.uniform(5.0, 15.0))
    ox = -0.5 * (w - 1) * sx + float(rng.normal(0.0, 3.0))
    return Grid((d, h, w), (sz, sy, sx), (oz, oy, ox))


def _study_rngs(seed: int, split: str, patient: int, scan: int):
    s = SPLITS.index(split) if split in SPLITS else 9
    # Separate streams, so that e.g. forcing a finding changes neither the anatomy nor the noise of a study.
    return (
        np.random.default_rng([seed, s, patient]),  # the patient's body (shared by follow-up scans)
        np.random.default_rng([seed, s, patient, scan, 0]),  # labels and finding parameters
        {
            "anatomy": np.random.default_rng([seed, s, patient, scan, 1]),  # vessel trees, organ details
            "findings": np.random.default_rng([seed, s, patient, scan, 3]),  # where lesions are drawn
            "noise": np.random.default_rng([seed, s, patient, scan, 4]),  # reconstruction noise
        },
        np.random.default_rng([seed, s, patient, scan, 2]),  # report wording
    )


def plan_study(seed: int, split: str, patient: int, scan: int, shape, *, spacing=None, labels=None):
    """Everything about a study except its voxels: patient, anatomy plan, grid, labels, finding details, report
    and scanner metadata. Cheap (no rendering); :func:`make_study` renders it."""
    shape = check_shape(shape)
    spacing = check_spacing(spacing)
    r_patient, r_find, r_render, r_report = _study_rngs(seed, split, patient, scan)
    person = sample_patient(r_patient)
    plan = plan_chest(r_patient, person)
    grid = _grid_for(plan, shape, spacing, r_patient)
    scanner = SCANNERS[int(r_patient.choice(len(SCANNERS), p=[s[3] for s in SCANNERS]))]
    if labels is None:
        labels = sample_labels(r_find)
        if scan > 0:
            # A follow-up scan keeps most of the patient's findings: each label is kept with probability 0.7 and
            # otherwise redrawn, which preserves the marginal prevalences.
            _, r_first, _, _ = _study_rngs(seed, split, patient, 0)
            first = sample_labels(r_first)
            labels = np.where(r_find.random(len(labels)) < 0.7, first, labels).astype(np.int8)
    else:
        labels = as_label_vector(labels)
    details = plan_findings(r_find, labels, plan)
    report = make_report(r_report, labels, details, person, follow_up=scan > 0)
    return {"patient": person, "plan": plan, "grid": grid, "labels": labels, "details": details,
            "report": report, "scanner": scanner, "render_rng": r_render, "scan": scan}


def make_study(seed: int = 0, shape=DEFAULT_SHAPE, *, spacing=None, labels=None, n_recons: int = 1,
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
        # In place (vol is this reconstruction's own array): the same values as np.clip(np.rint(vol), ...).
        hu16 = np.clip(np.rint(vol, out=vol), -3024, 3071, out=vol).astype(np.int16)
        volumes.append(hu16)
        spacings.append(sp)
        meta.append(metadata_row(p, spec, hu16.shape, sp, intercept, padding))
    origin = (grid.origin[2], grid.origin[1], grid.origin[0] + TABLE_Z)
    return SyntheticStudy(volumes=volumes, spacings=spacings, labels=p["labels"], report=p["report"],
                          details=details, patient=p["patient"], metadata=meta, origin_lps=origin)


TABLE_Z = -180.0  # scanner z of the lung apex (mm): only shifts ImagePositionPatient and the affine


def _reconstruct(base: np.ndarray, rng, spec: dict, noise_sd: float, dense: list) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    vol = rng.standard_normal(base.shape, dtype=np.float32)
    vol *= noise_sd * spec["noise"] * (1.0 if spec["blur"] else 0.45)
    vol += base
    if spec["blur"]:
        gaussian_filter(vol, spec["blur"], output=vol, truncate=2.5)
    apply_dense_layers(vol, dense)
    return vol


def _pad_outside_fov(vol: np.ndarray, value: float) -> None:
    """Scanners store a padding value outside the circular reconstruction field of view."""
    _, h, w = vol.shape
    yy, xx = np.ogrid[:h, :w]
    outside = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 > 1.0
    vol[:, outside] = value


def metadata_row(p: dict, spec: dict, shape, spacing, intercept: float, padding) -> dict:
    manufacturer, model, _, _ = p["scanner"]
    person = p["patient"]
    grid = p["grid"]
    sz, sy, sx = spacing
    thick = {"soft": 1.5, "sharp": 1.0, "thick": 5.0}[spec["kind"]]
    origin = (grid.origin[2], grid.origin[1], grid.origin[0] + TABLE_Z)
    return {
        "Manufacturer": manufacturer,
        "ManufacturerModelName": model,
        "SeriesDescription": spec["description"],
        "ConvolutionKernel": spec["kernel"],
        "PatientSex": person.sex,
        "PatientAge": f"{person.age:03d}Y",
        "PatientPosition": "HFS",
        "KVP": 120,
        "XRayTubeCurrent": int(120 + 80 * max(person.habitus, 0)),
        "SliceThickness": max(thick, round(sz, 6)) if spec["kind"] == "thick" else thick,
        "Rows": shape[1],
        "Columns": shape[2],
        "NumberofSlices": shape[0],  # spelled so in the CT-RATE metadata
        "XYSpacing": f"[{_fmt(sx)}, {_fmt(sy)}]",
        "ZSpacing": _fmt(sz),
        "RescaleSlope": 1.0,
        "RescaleIntercept": intercept,
        "RescaleType": "HU",
        "ImagePositionPatient": f"[{_fmt(origin[0])}, {_fmt(origin[1])}, {_fmt(origin[2])}]",
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
        "PixelPaddingValue": "" if padding is None else int(padding - intercept),
        "StudyDate": 20200101 + 100 * (p["scan"] % 12),
    }


def _fmt(v: float) -> str:
    return repr(round(float(v), 6))


def synthesize_study(rng, shape=DEFAULT_SHAPE, spacing=None, labels=None):
    """In-memory convenience: one soft-kernel reconstruction.

    Args:
        rng: an int seed or a ``numpy.random.Generator`` (an integer seed is drawn from it).
        shape: ``(D, H, W)`` voxels. spacing: ``(sz, sy, sx)`` mm or None. labels: as in :func:`make_study`.

    Returns:
        ``(hu, labels, report)``: int16 HU volume ``(D, H, W)`` indexed ``[z, y, x]`` (feet->head,
        anterior->posterior, right->left), the ``(18,)`` int8 labels, the report dict (CT-RATE field names).
    """
    seed = int(rng.integers(0, 2**31 - 1)) if isinstance(rng, np.random.Generator) else int(rng)
    study = make_study(seed, shape, spacing=spacing, labels=labels)
    return study.volumes[0], study.labels, study.report
