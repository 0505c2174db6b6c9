"""``x2ctclip push DIR REPO_ID [--private] [--dry-run] [--token TOKEN] [--message MSG]``.

Checks a model folder locally (config ``auto_map`` and remote-code files, safetensors weights, processor and
tokenizer files, model card metadata and ``model-index``; see :func:`x2ctclip.train.hub.validation.validate_hub_folder`), then
uploads it with ``huggingface_hub`` (``create_repo`` + ``upload_folder``). ``--dry-run`` stops after the checks and
lists the files that would be uploaded, with their sizes; it needs no network and no login.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("folder", type=Path, help="model folder written by save_for_hub (or a converted CT-CLIP folder)")
    parser.add_argument("repo_id", help="Hub repository, 'owner/name' (created when it does not exist)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the files, upload nothing")
    parser.add_argument("--token", default=None, help="Hub token (default: the one of `hf auth login`)")
    parser.add_argument("--message", default=None, help="commit message")


def run(args: argparse.Namespace) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.hub.card_sections import human_size
    from x2ctclip.train.hub.push import push_folder

    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: no such model folder.")
    result = push_folder(
        args.folder, args.repo_id, private=args.private, dry_run=args.dry_run, token=args.token, commit_message=args.message
    )
    for warning in result.warnings:
        print(f"warning: {warning}")
    meta = result.card_metadata
    n_results = sum(len(model.get("results") or []) for model in meta.get("model-index") or [])
    print(
        f"Model card: license {meta.get('license')}, library {meta.get('library_name')}, pipeline "
        f"{meta.get('pipeline_tag') or '(none)'}, base models {meta.get('base_model') or '(none)'}, data sets "
        f"{meta.get('datasets') or '(none)'}, model-index: {n_results} result(s)."
    )
    width = max((len(name) for name, _ in result.files), default=0)
    verb = "Would upload" if result.dry_run else "Uploaded"
    print(f"{verb} {len(result.files)} files ({human_size(result.total_bytes)}) to {args.repo_id}"
          f"{' (private)' if args.private else ''}:")
    for name, size in result.files:
        print(f"  {name:<{width}}  {size:>12,d} B")
    if result.dry_run:
        print("Dry run: the folder and its model card passed the local checks; nothing was uploaded.")
    else:
        print(f"Done: {result.url}")
    return 0
