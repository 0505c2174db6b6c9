"""Sampling the 18 CT-RATE labels with the release's statistics and planning each finding's lesion."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from x2ctclip import CT_RATE_FINDINGS

from x2ctclip.train.synthetic.anatomy import LOBES, ChestPlan
from x2ctclip.train.synthetic.lesions import NODE_STATIONS

STATS_PATH = Path(__file__).resolve().parents[1] / "resources" / "ct_rate_label_stats.json"


# ----------------------------------------------------------------------------------------------------- labels
@lru_cache(maxsize=1)
def load_label_stats() -> dict:
    """The label statistics (prevalence, co-occurrence, chain model) shipped with the package."""
    stats = json.loads(STATS_PATH.read_text())
    if list(stats["findings"]) != list(CT_RATE_FINDINGS):
        raise ValueError(f"{STATS_PATH}: findings are not in the canonical CT-RATE order")
    return stats


def sample_labels(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Draw label vectors (int8, 18 columns in canonical order) from the fitted chain of conditionals.

    Returns shape ``(18,)`` when ``n`` is None, else ``(n, 18)``. Uses exactly 18 uniform draws per vector.
    """
    stats = load_label_stats()
    chain = stats["chain"]
    m = 1 if n is None else int(n)
    k = len(CT_RATE_FINDINGS)
    u = rng.random((m, k))
    y = np.zeros((m, k), dtype=np.int8)
    for j in range(k):
        logit = chain["intercepts"][j]
        if j:
            logit = logit + y[:, :j] @ np.asarray(chain["coefficients"][j], dtype=np.float64)
        y[:, j] = u[:, j] < 1.0 / (1.0 + np.exp(-logit))
    return y[0] if n is None else y


def as_label_vector(labels) -> np.ndarray:
    """Normalise labels given as an 18-vector, a dict name -> 0/1 or an iterable of finding names."""
    if labels is None:
        raise ValueError("labels is None")
    if isinstance(labels, dict):
        unknown = set(labels) - set(CT_RATE_FINDINGS)
        if unknown:
            raise ValueError(f"unknown finding names {sorted(unknown)}; expected names from CT_RATE_FINDINGS")
        return np.array([int(bool(labels.get(n, 0))) for n in CT_RATE_FINDINGS], dtype=np.int8)
    arr = list(labels)
    if arr and all(isinstance(a, str) for a in arr):
        unknown = set(arr) - set(CT_RATE_FINDINGS)
        if unknown:
            raise ValueError(f"unknown finding names {sorted(unknown)}; expected names from CT_RATE_FINDINGS")
        return np.array([int(n in arr) for n in CT_RATE_FINDINGS], dtype=np.int8)
    vec = np.asarray(arr)
    if vec.shape != (len(CT_RATE_FINDINGS),):
        raise ValueError(f"labels must have {len(CT_RATE_FINDINGS)} entries (canonical order), got shape {vec.shape}")
    if not np.isin(vec, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return vec.astype(np.int8)


# ------------------------------------------------------------------------------------------------- planning
def heart_ctr(plan: ChestPlan) -> float:
    """Cardiothoracic ratio of the plan: widest transverse heart diameter over widest inner thoracic diameter."""
    axes = plan.heart_axes * plan.heart_scale
    half_width = float(np.sqrt(((plan.heart_rotation[2] * axes) ** 2).sum()))
    return (2 * half_width) / (2 * plan.cav_a)


def plan_findings(rng: np.random.Generator, labels: np.ndarray, plan: ChestPlan) -> dict[str, dict]:
    """Choose an instance of every positive finding; apply those that change anatomy to ``plan``.

    Returns ``details``: finding name -> parameters and measurements (mm) used by rendering and reports. It also
    holds a few facts about negative studies under the key ``"_normal"`` (heart ratio, small lymph nodes).

    Longer than 80 lines on purpose: one short branch per finding, in the order the findings interact (those that change
    the anatomy first), each drawing and recording one instance.
    """
    positive = {name for name, v in zip(CT_RATE_FINDINGS, labels) if v}
    details: dict[str, dict] = {}
    normal: dict = {}
    details["_normal"] = normal

    # Heart size: normal hearts are kept below a ratio of 0.5, enlarged ones well above it.
    ctr0 = heart_ctr(plan)
    if "Cardiomegaly" in positive:
        target = float(rng.uniform(0.56, 0.68))
        # Enlarge mostly in the axial plane (transverse and AP), less along z, and shift towards the left.
        grow = target / ctr0
        plan.heart_axes = plan.heart_axes * np.array([grow ** 0.5, grow, grow])
        plan.heart_scale = target / heart_ctr(plan)  # small isotropic correction for the tilted long axis
        plan.heart_center = plan.heart_center + np.array([-12.0, 0.0, 12.0]) * (grow - 1.0) / 0.3
        details["Cardiomegaly"] = {"ctr": round(heart_ctr(plan), 2)}
    else:
        if ctr0 > 0.48:
            plan.heart_scale = 0.48 / ctr0
        normal["ctr"] = round(heart_ctr(plan), 2)
    if "Pericardial effusion" in positive:
        thick = float(np.clip(rng.lognormal(np.log(14.0), 0.35), 8.0, 30.0))
        plan.pericardial_effusion_mm = thick
        details["Pericardial effusion"] = {"thickness_mm": round(thick)}
    if "Hiatal hernia" in positive:
        size = float(rng.uniform(45.0, 80.0))
        c = plan.landmarks["hiatus"] + np.array([0.45 * size, -4.0, -4.0])
        plan.hiatal_hernia = {
            "center": c,
            "axes": np.array([0.45, 0.4, 0.5]) * size,
            "air_fraction": float(rng.uniform(0.15, 0.5)),
        }
        details["Hiatal hernia"] = {"size_mm": round(size), "type": "sliding"}
    lower = ["right lower", "left lower"]
    if "Bronchiectasis" in positive:
        r = rng.random()
        lobes = lower if r < 0.5 else (["right middle", "left upper"] if r < 0.7 else
                                        ["right upper", "right middle", "right lower", "left upper", "left lower"])
        scale = float(rng.uniform(2.0, 2.8))
        for lobe in lobes:
            plan.airway_lumen_scale[lobe] = scale
        plan.airway_max_generation = max(plan.airway_max_generation, 4)
        details["Bronchiectasis"] = {"lobes": lobes, "type": "cylindrical" if rng.random() < 0.7 else "varicose",
                                     "diameter_mm": round(2 * 3.0 * scale)}
    if "Peribronchial thickening" in positive:
        plan.airway_wall_scale = float(rng.uniform(2.2, 3.0))
        plan.airway_max_generation = max(plan.airway_max_generation, 4)
        details["Peribronchial thickening"] = {"extent": "bilateral" if rng.random() < 0.8 else "lower lobes"}

    # Findings rendered later: choose their parameters now so reports can describe them.
    if "Lung nodule" in positive:
        n = int(rng.choice([1, 1, 1, 2, 2, 3, 3, 4, 5, 6]))
        diam = np.clip(rng.lognormal(np.log(11.0), 0.35, n), 7.0, 30.0)
        kinds = rng.choice(["solid", "solid", "solid", "solid", "solid", "solid", "calcified", "calcified",
                            "ground-glass", "part-solid"], n)
        lobes = _pick(rng, n, {"right upper": 0.25, "right middle": 0.08, "right lower": 0.21, "left upper": 0.25,
                               "left lower": 0.21})
        details["Lung nodule"] = {"nodules": [{"diameter_mm": round(float(d), 1), "kind": str(k), "lobe": lobe}
                                              for (d, k), lobe in zip(sorted(zip(diam, kinds), key=lambda t: -t[0]),
                                                                      lobes)]}
    if "Pleural effusion" in positive:
        r = rng.random()
        sides = ["right", "left"] if r < 0.5 else (["right"] if r < 0.78 else ["left"])
        depth = {s: round(float(np.clip(rng.lognormal(np.log(35.0), 0.55), 8.0, 90.0))) for s in sides}
        details["Pleural effusion"] = {"sides": sides, "depth_mm": depth}
    if "Lymphadenopathy" in positive:
        stations = list(rng.choice(list(NODE_STATIONS), size=int(rng.integers(2, 6)), replace=False))
        nodes = []
        for st in stations:
            short = float(np.clip(rng.lognormal(np.log(20.0), 0.25), 13.0, 35.0))
            nodes.append({"station": str(st), "short_axis_mm": round(short),
                          "long_axis_mm": round(short * rng.uniform(1.2, 1.7))})
        details["Lymphadenopathy"] = {"nodes": sorted(nodes, key=lambda d: -d["short_axis_mm"])}
    elif rng.random() < 0.5:
        st = str(rng.choice(list(NODE_STATIONS)))
        short = float(rng.uniform(4.0, 8.5))
        normal["small_nodes"] = [{"station": st, "short_axis_mm": round(short),
                                  "long_axis_mm": round(short * rng.uniform(1.1, 1.5))}]
    if "Emphysema" in positive:
        kind = str(rng.choice(["centrilobular", "centrilobular", "paraseptal", "panlobular", "mixed"]))
        details["Emphysema"] = {"type": kind, "severity": str(rng.choice(["mild", "mild", "moderate", "severe"])),
                                "zones": "lower lobes" if kind == "panlobular" else "upper lobes"}
    if "Atelectasis" in positive:
        kinds = ["linear"] if rng.random() < 0.5 else (["subsegmental"] if rng.random() < 0.6 else
                                                       ["linear", "subsegmental"])
        info = {"kinds": kinds}
        if "linear" in kinds:
            info["linear_lobes"] = _pick(rng, int(rng.integers(1, 4)), {"right middle": 0.25, "left upper": 0.2,
                                                                         "right lower": 0.3, "left lower": 0.25})
        if "subsegmental" in kinds:
            r = rng.random()
            info["dependent_sides"] = ["right", "left"] if r < 0.6 else (["right"] if r < 0.8 else ["left"])
        if "Pleural effusion" in positive and rng.random() < 0.7:
            kinds.append("passive")
            info["passive_sides"] = list(details["Pleural effusion"]["sides"])
        info["lobes"] = _ordered(info.get("linear_lobes", []) + [f"{s} lower" for s in info.get("dependent_sides", [])]
                                 + [f"{s} lower" for s in info.get("passive_sides", [])])
        details["Atelectasis"] = info
    if "Lung opacity" in positive:
        patches = _pick(rng, int(rng.integers(1, 5)), {"right upper": 0.15, "right middle": 0.1, "right lower": 0.27,
                                                        "left upper": 0.18, "left lower": 0.3}, replace=True)
        details["Lung opacity"] = {"pattern": "ground-glass", "patch_lobes": patches, "lobes": _ordered(patches),
                                   "bilateral": len({p.split()[0] for p in patches}) == 2}
    if "Consolidation" in positive:
        areas = _pick(rng, int(rng.choice([1, 1, 2])), {"right upper": 0.14, "right middle": 0.12, "right lower": 0.3,
                                                         "left upper": 0.14, "left lower": 0.3})
        details["Consolidation"] = {"area_lobes": areas, "air_bronchograms": True, "lobes": _ordered(areas)}
    if "Pulmonary fibrotic sequela" in positive:
        bands = _pick(rng, int(rng.integers(2, 6)), {"right upper": 0.3, "right middle": 0.1, "right lower": 0.15,
                                                      "left upper": 0.3, "left lower": 0.15}, replace=True)
        apical = bool(rng.random() < 0.6)
        details["Pulmonary fibrotic sequela"] = {
            "band_lobes": bands, "apical": apical,
            "lobes": _ordered(bands + (["right upper", "left upper"] if apical else []))}
    if "Mosaic attenuation pattern" in positive:
        details["Mosaic attenuation pattern"] = {"extent": "both lungs" if rng.random() < 0.75 else "lower lobes"}
    if "Interlobular septal thickening" in positive:
        details["Interlobular septal thickening"] = {"zones": "both lungs" if rng.random() < 0.5 else
                                                     "lower lobes", "cell_mm": float(rng.uniform(14.0, 22.0))}
    if "Arterial wall calcification" in positive:
        sites = ["aortic arch", "descending aorta"] if rng.random() < 0.6 else (
            ["aortic arch"] if rng.random() < 0.5 else ["ascending aorta", "aortic arch", "descending aorta"])
        details["Arterial wall calcification"] = {"sites": sites, "n_plaques": int(rng.integers(4, 12))}
    if "Coronary artery wall calcification" in positive:
        vessels = sorted({str(v) for v in rng.choice(["LAD", "LAD", "LCx", "RCA"], size=int(rng.integers(1, 4)))},
                         key=["LAD", "LCx", "RCA"].index)
        details["Coronary artery wall calcification"] = {"vessels": vessels, "n_spots": int(rng.integers(2, 6))}
    if "Medical material" in positive:
        items = [str(rng.choice(["pacemaker", "sternal wires", "port catheter", "surgical clips", "stent",
                                 "valve prosthesis"], p=[0.22, 0.25, 0.23, 0.15, 0.08, 0.07]))]
        if rng.random() < 0.25:
            extra = str(rng.choice(["sternal wires", "surgical clips", "port catheter"]))
            if extra not in items:
                items.append(extra)
        if "valve prosthesis" in items and "sternal wires" not in items:
            items.append("sternal wires")
        details["Medical material"] = {"items": items}
    return details


def _pick(rng, n: int, weights: dict, replace: bool = False) -> list[str]:
    names = list(weights)
    p = np.array([weights[k] for k in names], dtype=np.float64)
    p /= p.sum()
    n = n if replace else min(n, len(names))
    return [str(v) for v in rng.choice(names, size=n, replace=replace, p=p)]


def _ordered(lobes) -> list[str]:
    """Unique lobe names in anatomical order."""
    return [lobe for lobe in LOBES if lobe in set(lobes)]
