"""``x2ctclip preprocess`` and ``x2ctclip cache-embeddings``: the two one-off data conversions.

``x2ctclip preprocess DATA_ROOT OUT [--split train --split valid] [--shape D H W] [--spacing z y x]
[--cxr-mode mean] [--cxr-size 256] [--workers N] [--shard-size ROWS]``: CT-RATE layout (folder or
``hf://datasets/...``) -> fixed-size Arrow shards (:mod:`x2ctclip.train.data.preprocess`).

``x2ctclip cache-embeddings --model DIR --data OUT --out CACHE [--split ...] [--batch-size B] [--tokenizer DIR]
[--device cuda]``: frozen CT and report latents of a preprocessed folder (:mod:`x2ctclip.train.data.embedding_cache`).

Both run unchanged under ``torchrun --nproc_per_node N -m x2ctclip.train.cli CMD ...`` (each rank its own shards,
rank 0 finalises; :mod:`x2ctclip.train.distributed`). Both are resumable: run the same command again after an
interruption. A gated ``hf://`` data root uses the token of
``huggingface-cli login`` or ``HF_TOKEN`` (never a command-line argument, which would end up in shell histories).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from x2ctclip.train import distributed


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "preprocess":
        from x2ctclip.train.data.preprocess import DEFAULT_SHAPE, DEFAULT_SPACING

        parser.add_argument("data_root", help="CT-RATE layout: a folder, file://... or hf://datasets/{org}/{repo}/{folder}")
        parser.add_argument("out", type=Path, help="output folder (OUT/{split}/, OUT/preprocess_config.json)")
        parser.add_argument("--split", dest="splits", action="append", metavar="SPLIT",
                            help="split to convert; repeat for several (default: train and valid)")
        parser.add_argument("--shape", nargs=3, type=int, metavar=("D", "H", "W"), default=list(DEFAULT_SHAPE),
                            help="CT size after crop/pad, in voxels (default: %(default)s)")
        parser.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"), default=list(DEFAULT_SPACING),
                            help="target voxel spacing in mm (default: %(default)s)")
        parser.add_argument("--cxr-mode", default="mean", choices=("mean", "beer_lambert"),
                            help="CT-to-CXR simulation (default: %(default)s, as X2CT-CLIP)")
        parser.add_argument("--cxr-size", type=int, default=256, help="side of the stored CXR in pixels (default: %(default)s)")
        parser.add_argument("--workers", type=int, default=0, help="decoding processes (default: 0, in this process)")
        parser.add_argument("--shard-size", type=int, default=None, help="rows per Arrow shard (default: ~500 MB shards)")
        parser.add_argument("--release", default="auto", choices=("auto", "fixed", "original"),
                            help="CT-RATE release: fixed = corrected {split}_fixed/ folders (HU, full headers), "
                                 "original = first release (blank headers, metadata rescale), auto = fixed when "
                                 "present (default: %(default)s)")
        parser.add_argument("--keep-non-chest", action="store_true",
                            help="keep the volumes listed in metadata/no_chest_{train,valid}.txt (left out by default)")
        parser.add_argument("--keep-implausible", action="store_true",
                            help="keep volumes that fail the chest-CT check (lung-like air in the body cross-section; "
                                 "left out and listed in OUT/{split}/skipped.csv by default)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    elif command == "cache-embeddings":
        parser.add_argument("--model", required=True, type=Path, help="X2CT-CLIP model folder (CT and report towers)")
        parser.add_argument("--data", required=True, type=Path, help="preprocessed folder (x2ctclip preprocess OUT)")
        parser.add_argument("--out", required=True, type=Path, help="cache folder (CACHE/{split}/, CACHE/cache_config.json)")
        parser.add_argument("--split", dest="splits", action="append", metavar="SPLIT",
                            help="split to cache; repeat for several (default: every preprocessed split)")
        parser.add_argument("--batch-size", type=int, default=8, help="volumes per forward pass (default: %(default)s)")
        parser.add_argument("--tokenizer", type=Path, default=None, help="report tokenizer folder (default: the model folder)")
        parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
        parser.add_argument("--shard-size", type=int, default=1024, help="rows per Arrow shard (default: %(default)s)")
        parser.add_argument("--bf16", action="store_true", help="run the frozen towers under bfloat16 autocast")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    else:  # pragma: no cover - cli.py only dispatches the names above here
        raise ValueError(f"cmd_data does not implement the command {command!r}.")


def run(args) -> int:
    with distributed.distributed_session():
        return _run(args)


def _run(args) -> int:
    progress = False if args.no_progress else None
    stats: dict = {}
    if args.command == "preprocess":
        from x2ctclip.train.data.preprocess import preprocess_ct_rate

        results = preprocess_ct_rate(
            args.data_root,
            args.out,
            splits=args.splits or ("train", "valid"),
            shape=args.shape,
            spacing=args.spacing,
            cxr_mode=args.cxr_mode,
            cxr_size=args.cxr_size,
            workers=args.workers,
            shard_size=args.shard_size,
            progress=progress,
            release=args.release,
            keep_non_chest=args.keep_non_chest,
            keep_implausible=args.keep_implausible,
        )
    else:
        from x2ctclip.train.data.embedding_cache import cache_embeddings

        results = cache_embeddings(
            args.model,
            args.data,
            args.out,
            splits=args.splits,
            batch_size=args.batch_size,
            tokenizer=args.tokenizer,
            device=args.device,
            shard_size=args.shard_size,
            progress=progress,
            bf16=args.bf16,
            stats=stats,
        )
    if not distributed.is_main():
        return 0
    where = args.out
    for split, dataset in results.items():
        speed = ""
        if split in stats:
            s = stats[split]
            speed = (f" ({s['volumes']} computed in {s['seconds']:.1f} s: {s['volumes_per_s']:.2f} volumes/s over "
                     f"{s['world_size']} process{'es' if s['world_size'] > 1 else ''})")
        print(f"{split}: {dataset.num_rows} rows in {where / split}{speed}")
    return 0
