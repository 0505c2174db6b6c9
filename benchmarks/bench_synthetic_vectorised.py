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
import hashlib
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from x2ctclip.train.quickstart import PRESETS
from x2ctclip.train.synthetic import anatomy, findings, geometry, lesions, render, study
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

_MODULES = (geometry, render, lesions, anatomy, study, findings)


# ------------------------------------------------------------------ reference: the code before vectorising
def _reference_box(self, lo, hi) -> tuple[slice, slice, slice] | None:
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


def _reference_capsule_fraction(grid, a, b, ra: float, rb: float, *, min_radius: float = 0.0):
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



def _reference_splat_segments(grid, segments) -> np.ndarray:
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



REFERENCE = {"capsule_fraction": _reference_capsule_fraction, "splat_segments": _reference_splat_segments}


@contextlib.contextmanager
def reference_generator():
    """Swap the reference functions into every generator module that holds the new ones (and ``Grid.box``)."""
    saved = [(geometry.Grid, "box", geometry.Grid.box)]
    geometry.Grid.box = _reference_box
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
