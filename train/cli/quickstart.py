"""``x2ctclip quickstart --out DIR [--preset default|tiny] [--seed S] [--workers N]``.

Synthetic CT-RATE data -> CT-CLIP -> latent cache -> X2CT-CLIP and a CXR-only baseline -> held-out evaluation, in one
command (see :mod:`x2ctclip.train.quickstart`). Rerunning the same command continues a killed run.
"""

from __future__ import annotations

from pathlib import Path

from x2ctclip.train.cli.args import non_negative_int, positive_int


def configure_parser(parser, command):
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.quickstart import PRESETS

    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="'default' (about 15 min on 2 CPU cores) or 'tiny' (about a minute, for tests)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="data seeds seed, seed+1, seed+2; training 1024+seed")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes for data generation and preprocessing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.cli.app import CommandError
    from x2ctclip.train.quickstart import run_quickstart
    from x2ctclip.train.quickstart_report import headline

    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"{args.out}: exists and is not a folder; --out must be a new or an earlier quickstart "
                           "folder.")
    metrics = run_quickstart(args.out, preset=args.preset, seed=args.seed, workers=args.workers,
                             progress=not args.no_progress)
    print()
    print((args.out / "results.md").read_text())
    print(headline(metrics))
    print(f"Model: {args.out / 'model'}  (AutoModel / AutoProcessor.from_pretrained)")
    print(f"Total time {metrics['timings_s']['total']:.0f} s, peak memory {metrics['peak_memory_mb']} MiB")
    return 0
