"""The ``x2ctclip`` console command.

Each sub-command lives in its own module, imported only when that sub-command runs, so ``x2ctclip --help`` stays
fast. A command module defines ``configure_parser(parser, command)`` (adds the arguments of sub-command
``command``) and ``run(args) -> int`` (``args.command`` names the sub-command).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a line here to add a sub-command.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert-ctclip": ("x2ctclip.train.cmd_convert", "convert a CT-CLIP checkpoint into a transformers folder"),
    "assemble": ("x2ctclip.train.cmd_assemble", "assemble an X2CT-CLIP model from pretrained towers"),
    "push": ("x2ctclip.train.cmd_push", "validate a model folder and upload it to the Hugging Face Hub"),
    "preprocess": ("x2ctclip.train.cmd_data", "convert a CT-RATE layout into fixed-size Arrow shards (CT + simulated CXR)"),
    "cache-embeddings": ("x2ctclip.train.cmd_data", "cache the frozen CT and report latents of preprocessed data"),
    "make-synthetic": ("x2ctclip.train.cmd_make_synthetic", "write synthetic chest CT studies in the CT-RATE layout"),
    "train": ("x2ctclip.train.cmd_train", "train a stage: ctclip (CT + report towers) or x2ct (CXR tower, X2CT-CLIP)"),
    "quickstart": ("x2ctclip.train.cmd_quickstart", "synthetic data -> CT-CLIP -> X2CT-CLIP -> evaluation, in one command"),
    "evaluate": ("x2ctclip.train.cmd_evaluate", "evaluate a model: zeroshot | retrieval | calibrate | all"),
    "demo-assets": ("x2ctclip.train.cmd_demo_assets", "write the Space demo's calibration, gallery and input-check reference"),
    "fewshot": ("x2ctclip.train.cmd_fewshot", "linear probe / LoRA on stratified fractions of the training labels"),
}


class CommandError(Exception):
    """An error the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x2ctclip", description="X2CT-CLIP: CT-level findings from chest X-rays.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # Arguments are added lazily (see main) so that one broken optional dependency cannot break every command.
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] == "--version":
        from x2ctclip import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from: {', '.join(COMMANDS)}")
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"x2ctclip {name}", description=help_text)
    module.configure_parser(sub_parser, name)
    args = sub_parser.parse_args(argv[1:])
    args.command = name
    try:
        return int(module.run(args) or 0)
    except (CommandError, FileNotFoundError, ValueError) as err:
        print(f"x2ctclip {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
