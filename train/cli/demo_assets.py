"""``x2ctclip demo-assets MODEL_DIR --data PREPROCESSED_DIR [--cache CACHE_DIR]``: write the Space demo's
calibration, report gallery and out-of-distribution reference next to a model, from the validation split only
(see :mod:`x2ctclip.train.hub.demo_assets`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser, name: str = "demo-assets") -> None:
    parser.add_argument("model", type=Path, help="model folder (X2CTCLIPModel.save_pretrained + processor)")
    parser.add_argument("--data", required=True, type=Path, help="preprocessed folder (x2ctclip preprocess)")
    parser.add_argument("--cache", type=Path, help="embedding cache of --data for the report latents (default: the "
                        "model's report tower)")  # fmt: skip
    parser.add_argument("--split", default="valid", help="split to use (default valid; never test)")
    parser.add_argument("--distribution", help="one line naming the training distribution, shown by the demo "
                        "(default: from the preprocessed folder's config)")  # fmt: skip
    parser.add_argument("--accept-share", type=float, default=0.975, help="share of in-distribution CXRs the "
                        "out-of-distribution limit accepts (default 0.975)")  # fmt: skip
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Errors are raised as FileNotFoundError / ValueError naming the file; the CLI prints them on one line."""
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.hub.demo_assets import write_demo_assets

    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"{args.model}: no config.json; not a saved model folder")
    if not args.data.is_dir():
        raise FileNotFoundError(f"{args.data}: no such preprocessed folder")
    try:
        record = write_demo_assets(args.model, args.data, args.cache, split=args.split,
                                   distribution=args.distribution, accept_share=args.accept_share,
                                   device=args.device, progress=False if args.no_progress else None)  # fmt: skip
    except OSError as error:
        raise ValueError(f"{args.model}: {error}") from None
    print(f"wrote {', '.join(record['files'])} and demo_assets.json into {args.model} from {record['n_cases']} "
          f"{record['split']} cases")
    return 0


def main(argv: list[str] | None = None) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.cli.app import main as cli_main

    return cli_main(["demo-assets", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
