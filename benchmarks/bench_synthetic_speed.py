"""Generation speed of the synthetic CT-RATE set (the claim: 400 studies at 96 x 128 x 128 in under 2 minutes on
2 cores), with the single-process run as baseline in the same process.

Runs :func:`x2ctclip.train.synthetic.writer.generate_synthetic_ct_rate` (what ``x2ctclip make-synthetic`` runs) into a
temporary folder: first ``--baseline`` studies with 1 worker, then ``--n`` studies with ``--workers`` workers, and
prints wall time, CPU time (this process and its workers), studies per second, the speed-up and the load average
of the machine (other processes compete for the same cores, so the load is part of the measurement).

Usage::

    python benchmarks/bench_synthetic_speed.py [--n 400] [--baseline 40] [--workers 2] [--shape 96 128 128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def timed(out: Path, n: int, workers: int, shape, recons: int) -> tuple[float, float]:
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    t0, c0 = time.perf_counter(), os.times()
    n_valid = n // 10
    generate_synthetic_ct_rate(out, n_train=n - n_valid, n_valid=n_valid, shape=shape, seed=0, recons=recons,
                               workers=workers, progress=False)
    t1, c1 = time.perf_counter(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + (
        c1.children_system - c0.children_system)
    return t1 - t0, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--baseline", type=int, default=40, help="studies for the 1-worker baseline")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--recons", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128))
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    tmp = Path(tempfile.mkdtemp(prefix="x2ctclip_speed_"))
    try:
        print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        w1, c1 = timed(tmp / "baseline", args.baseline, 1, shape, args.recons)
        print(f"baseline, 1 worker : {args.baseline:4d} studies {w1:7.1f} s wall {c1:7.1f} s CPU "
              f"-> {args.baseline / w1:5.2f} studies/s, {c1 / args.baseline:.3f} CPU s/study")
        wn, cn = timed(tmp / "run", args.n, args.workers, shape, args.recons)
        print(f"{args.workers} workers          : {args.n:4d} studies {wn:7.1f} s wall {cn:7.1f} s CPU "
              f"-> {args.n / wn:5.2f} studies/s, {cn / args.n:.3f} CPU s/study")
        size = sum(p.stat().st_size for p in (tmp / "run").rglob("*.nii.gz"))
        print(f"speed-up over 1 worker: {(args.n / wn) / (args.baseline / w1):.2f}x; "
              f"{args.n} studies x {args.recons} recon(s) at {shape}: {wn:.1f} s "
              f"({'under' if wn < 120 else 'OVER'} 2 minutes); {size / 2**20:.0f} MiB of .nii.gz")
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
