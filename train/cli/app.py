"""The ``x2ctclip`` console command.

Each sub-command lives in its own module, imported only when that sub-command runs, so ``x2ctclip --help`` stays
fast. A command module defines ``configure_parser(parser, command)`` (adds the arguments of sub-command
``command``) and ``run(args) -> int`` (``args.command`` names the sub-command).

Errors: a failure caused by the input (a missing, empty, corrupt or implausible file, an impossible option, a file
too large for the memory budget) is printed as ONE line ``x2ctclip CMD: error: FILE: problem`` on stderr with exit
status 2, never a traceback. Programming errors (``TypeError``, ``KeyError``, ...) keep their traceback. With
``x2ctclip --debug CMD ...`` or the environment variable ``X2CTCLIP_DEBUG=1`` every error shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Add a line here to add a sub-command.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert-ctclip": ("x2ctclip.train.cli.convert", "convert a CT-CLIP checkpoint into a transformers folder"),
    "assemble": ("x2ctclip.train.cli.assemble", "assemble an X2CT-CLIP model from pretrained towers"),
    "push": ("x2ctclip.train.cli.push", "validate a model folder and upload it to the Hugging Face Hub"),
    "preprocess": ("x2ctclip.train.cli.data", "convert a CT-RATE layout into fixed-size Arrow shards (CT + simulated CXR)"),
    "cache-embeddings": ("x2ctclip.train.cli.data", "cache the frozen CT and report latents of preprocessed data"),
    "make-synthetic": ("x2ctclip.train.cli.synthetic", "write synthetic chest CT studies in the CT-RATE layout"),
    "train": ("x2ctclip.train.cli.train", "train a stage: ctclip (CT + report towers) or x2ct (CXR tower, X2CT-CLIP)"),
    "quickstart": ("x2ctclip.train.cli.quickstart", "synthetic data -> CT-CLIP -> X2CT-CLIP -> evaluation, in one command"),
    "evaluate": ("x2ctclip.train.cli.evaluate", "evaluate a model: zeroshot | retrieval | calibrate | all"),
    "space": ("x2ctclip.train.cli.space", "write a deployable Hugging Face Space folder for the demo"),
    "demo-assets": (
        "x2ctclip.train.cli.demo_assets", "write the Space demo's calibration, gallery and input-check reference"
    ),
    "fewshot": ("x2ctclip.train.cli.fewshot", "linear probe / LoRA on stratified fractions of the training labels"),
}


class CommandError(Exception):
    """An error the user can fix; printed without a traceback."""


#: Exception types that mean "this input is bad" (printed as one line). Third-party types are added by
#: :func:`_input_error_types` only when their module is already imported (no import cost for other commands).
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    CommandError, OSError, ValueError, MemoryError, RuntimeError, EOFError,
)  # fmt: skip
_THIRD_PARTY_ERRORS = (
    ("nibabel.filebasedimages", "ImageFileError"),  # not a NIfTI / unreadable header
    ("nibabel.spatialimages", "HeaderDataError"),  # e.g. scl_inter = inf
    ("pydicom.errors", "InvalidDicomError"),
    ("yaml", "YAMLError"),
    ("pickle", "UnpicklingError"),  # torch.load of a file that is not a checkpoint
    ("zipfile", "BadZipFile"),
    ("safetensors", "SafetensorError"),
    ("tarfile", "TarError"),
)


def _input_error_types() -> tuple[type[BaseException], ...]:
    types_ = list(_INPUT_ERRORS)
    for module_name, name in _THIRD_PARTY_ERRORS:
        module = sys.modules.get(module_name)
        error_type = getattr(module, name, None) if module is not None else None
        if isinstance(error_type, type) and issubclass(error_type, BaseException):
            types_.append(error_type)
    return tuple(types_)


def debug_enabled() -> bool:
    """True when ``X2CTCLIP_DEBUG`` is set to something other than ``""``, ``0``, ``false`` or ``no``."""
    return os.environ.get("X2CTCLIP_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def error_line(err: BaseException) -> str:
    """One line describing ``err``: its message with line breaks folded, ``FILE: reason`` for an ``OSError`` that
    carries a file name its message lacks, and a sentence for a ``MemoryError`` (whose message is often empty)."""
    message = " ".join(str(err).split())
    filename = getattr(err, "filename", None) if isinstance(err, OSError) else None
    if filename is not None and err.strerror:  # "[Errno 2] No such file or directory: 'x'" -> "x: No such file ..."
        message = f"{filename}: {err.strerror}"
    if isinstance(err, MemoryError):
        detail = f" ({message})" if message else ""
        return (f"out of memory{detail}: the input needs more memory than this machine has "
                "(see docs/limits_and_checks.md for the budgets)")  # fmt: skip
    return message or type(err).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x2ctclip", description="X2CT-CLIP: CT-level findings from chest X-rays.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error (or X2CTCLIP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # Arguments are added lazily (see main) so that one broken optional dependency cannot break every command.
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled()
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
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
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"x2ctclip {name}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not isinstance(err, _input_error_types()):
            raise
        print(f"x2ctclip {name}: error: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the commands raise x2ctclip.train.cli.app.CommandError,
    # which is another class than __main__.CommandError (``python -m x2ctclip.train.cli`` would print tracebacks).
    from x2ctclip.train.cli.app import main as _main

    sys.exit(_main())
