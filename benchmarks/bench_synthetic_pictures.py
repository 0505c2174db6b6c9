"""Pictures of the synthetic chest CT generator: one PNG per CT-RATE finding in ``docs/synthetic/``.

For each finding the same synthetic patient is rendered twice, with only that finding and with none (anatomy and
noise streams are shared, so the difference is the finding). Panels: an axial and a coronal CT slice through the
finding (chosen where the two volumes differ most), the simulated frontal radiograph with the finding, and the
radiograph without it - so one sees at a glance which findings a radiograph can show.

Usage::

    python benchmarks/bench_synthetic_pictures.py [--shape 112 160 160] [--seed 7] [--out docs/synthetic]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Display windows (level, width) in HU.
LUNG = (-600.0, 1500.0)
MEDIASTINUM = (40.0, 400.0)
BONE = (400.0, 1800.0)
WINDOW = {
    "Medical material": BONE,
    "Arterial wall calcification": MEDIASTINUM,
    "Coronary artery wall calcification": MEDIASTINUM,
    "Cardiomegaly": MEDIASTINUM,
    "Pericardial effusion": MEDIASTINUM,
    "Hiatal hernia": MEDIASTINUM,
    "Lymphadenopathy": MEDIASTINUM,
    "Pleural effusion": MEDIASTINUM,
}


# Findings small enough that the slices should go through their strongest voxel, not their centre of mass.
FOCAL = {"Medical material", "Arterial wall calcification", "Coronary artery wall calcification", "Lung nodule",
         "Lymphadenopathy", "Hiatal hernia"}


# Findings best shown on the axial slice where they are thickest.
THICKEST = {"Pleural effusion", "Atelectasis"}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def cxr(volume: np.ndarray, spacing) -> np.ndarray:
    try:
        from x2ctclip.processors import simulate_cxr
    except ImportError:  # the simulation module is optional for this script: fall back to a mean projection
        simulate_cxr = None
    if simulate_cxr is not None:
        return simulate_cxr(volume, spacing=spacing)
    img = np.clip(volume.astype(np.float32), -1000, 1000).mean(axis=1)[::-1]
    return (img - img.min()) / (np.ptp(img) + 1e-6)


def render(name: str | None, seed: int, shape, labels_from=None):
    from x2ctclip import CT_RATE_FINDINGS
    from x2ctclip.train.synthetic.study import make_study

    labels = np.zeros(len(CT_RATE_FINDINGS), dtype=np.int8)
    if name is not None:
        labels[CT_RATE_FINDINGS.index(name)] = 1
    return make_study(seed, shape, labels=labels, split="test", patient=1)


def figure(name: str, study, normal, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = study.volumes[0].astype(np.float32)
    ref = normal.volumes[0].astype(np.float32)
    sz, sy, sx = study.spacings[0]
    diff = np.abs(vol - ref) if vol.shape == ref.shape else np.zeros_like(vol)
    diff[diff < 60] = 0  # ignore noise
    focal = name in FOCAL
    if diff.sum() == 0:
        k, j = vol.shape[0] // 2, vol.shape[1] // 2
    elif focal:
        # Small findings: the slices through the strongest change.
        k, j, _ = np.unravel_index(int(np.argmax(diff)), diff.shape)
    else:
        # The diff-weighted mean slice: the middle of the finding (argmax would pick e.g. the base of an effusion).
        wz, wy = diff.sum(axis=(1, 2)), diff.sum(axis=(0, 2))
        k = int(round(float((wz * np.arange(len(wz))).sum() / wz.sum())))
        j = int(round(float((wy * np.arange(len(wy))).sum() / wy.sum())))
        if name in THICKEST:
            k = int(np.argmax(wz))
    level, width = WINDOW.get(name, LUNG)
    lo, hi = level - width / 2, level + width / 2
    fig, ax = plt.subplots(1, 4, figsize=(16, 4.6))
    ax[0].imshow(vol[k], cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx)
    ax[0].set_title(f"axial slice {k} (W{width:.0f}/L{level:.0f})")
    ax[1].imshow(vol[::-1, j, :], cmap="gray", vmin=lo, vmax=hi, aspect=sz / sx)
    ax[1].set_title(f"coronal slice {j}")
    ax[2].imshow(cxr(study.volumes[0], study.spacings[0]), cmap="gray")
    ax[2].set_title("simulated CXR")
    ax[3].imshow(cxr(normal.volumes[0], normal.spacings[0]), cmap="gray")
    ax[3].set_title("same patient, no finding")
    for a in ax:
        a.axis("off")
    details = {k_: v for k_, v in study.details.items() if k_ == name}
    fig.suptitle(f"{name}: {details.get(name, '')}"[:160], fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from x2ctclip import CT_RATE_FINDINGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(112, 160, 160))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "synthetic")
    parser.add_argument("--only", nargs="*", default=None, help="finding names (default: all 18 and 'normal')")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    normal = render(None, args.seed, args.shape)
    names = args.only or list(CT_RATE_FINDINGS)
    for name in names:
        study = render(name, args.seed, args.shape)
        path = args.out / f"{slug(name)}.png"
        figure(name, study, normal, path)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if args.only is None:
        figure("normal", normal, normal, args.out / "normal.png")
        print(f"wrote {args.out / 'normal.png'}")
    print(f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
