"""``x2ctclip make-synthetic``: write the embedded synthetic data set in the CT-RATE layout.

``x2ctclip make-synthetic OUT_DIR --n-train N --n-valid M [--n-test K] [--shape D H W] [--seed S] [--recons R]
[--workers W]`` renders N + M + K synthetic chest CT scans (R reconstructions each) with CT-RATE-like labels and
reports (:mod:`x2ctclip.train.synthetic.writer`). Deterministic for a seed; rerunning the same command after an interruption
renders only the missing volumes and rewrites the CSVs;
a rerun into the folder with another seed, shape, recons or release is refused (``synthetic_config.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.synthetic.study import DEFAULT_SHAPE

    parser.add_argument("out_dir", type=Path, help="output folder (created; existing volumes are kept)")
    parser.add_argument("--n-train", type=int, required=True, help="training scans")
    parser.add_argument("--n-valid", type=int, required=True, help="validation scans")
    parser.add_argument("--n-test", type=int, default=0, help="held-out test scans (default: %(default)s)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("D", "H", "W"), default=list(DEFAULT_SHAPE),
                        help="voxels of the first reconstruction: slices, rows, columns (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="everything is a function of it (default: %(default)s)")
    parser.add_argument("--recons", type=int, default=1,
                        help="reconstructions per scan: 1 soft kernel, 2 + sharp kernel, 3 + 5 mm thick slices "
                             "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default: %(default)s)")
    parser.add_argument("--release", default="fixed", choices=("fixed", "original"),
                        help="CT-RATE release layout: fixed = corrected {split}_fixed/ folders with HU values, "
                             "original = first release (blank headers, metadata rescale) (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    start = time.perf_counter()
    result = generate_synthetic_ct_rate(
        args.out_dir,
        n_train=args.n_train,
        n_valid=args.n_valid,
        n_test=args.n_test,
        shape=tuple(args.shape),
        seed=args.seed,
        recons=args.recons,
        workers=args.workers,
        progress=not args.no_progress,
        release=args.release,
    )
    rows = ", ".join(f"{split}: {n}" for split, n in result["rows"].items())
    print(f"{args.out_dir}: wrote {result['volumes']} volumes ({result['skipped']} already present) in "
          f"{time.perf_counter() - start:.1f} s; CSV rows {rows}")
    return 0
