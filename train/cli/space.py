"""``x2ctclip space OUT --model DIR_OR_REPO [--wheel WHL] [--overwrite]``: write a deployable Gradio Space folder
(see :mod:`x2ctclip.train.hub.space`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("out_dir", type=Path, help="Space folder to write (must not exist or be empty)")
    parser.add_argument("--model", required=True, help="model folder (copied into the Space) or Hub id (owner/name)")
    parser.add_argument("--wheel", type=Path, help="x2ctclip wheel to ship (default: built from this checkout)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.hub.space import build_space

    out = build_space(args.out_dir, args.model, wheel=args.wheel, overwrite=args.overwrite)
    print(f"Wrote the Space folder {out} (app_file space_app.py); upload it with "
          f"`huggingface-cli upload --repo-type space OWNER/NAME {out}`.")
    return 0
