"""``x2ctclip convert-ctclip CHECKPOINT OUT_DIR [--config JSON] [--tokenizer DIR]``.

Converts a CT-CLIP checkpoint (e.g. ``CT-CLIP_v2.pt``) into an X2CT-CLIP model folder with the CT and report towers,
loadable with ``AutoModel.from_pretrained(OUT_DIR)`` (after ``import x2ctclip``, or with ``trust_remote_code=True``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("checkpoint", type=Path, help="CT-CLIP checkpoint (.pt / .pth / .bin or .safetensors)")
    parser.add_argument("out_dir", type=Path, help="folder to write (must not exist or be empty, see --overwrite)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="CT-CLIP configuration JSON ({'config': {'ctvit': ..., 'text': ..., 'dim_latent': ...}}); "
        "default: the official CT-CLIP configuration (CTViT 512-d, 480 x 480 x 240, BERT-base, 512-d latents)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help=f"folder holding the report tower's BERT tokenizer ({CXR_BERT}), saved into OUT_DIR",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    parser.add_argument(
        "--trust-checkpoint", action="store_true",
        help="unpickle CHECKPOINT without restrictions. This RUNS CODE FROM THE FILE: only for a file from a source "
        "you trust, and only if the default (tensors and containers only) refuses it",
    )
    parser.add_argument("--sha256", action="store_true", help="record the checkpoint's SHA-256 on the model card")


def run(args: argparse.Namespace) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.convert_ctclip import convert_ctclip_checkpoint
    from x2ctclip.train.hub.cards import write_ctclip_model_card

    out = convert_ctclip_checkpoint(
        args.checkpoint, args.out_dir, config_path=args.config, tokenizer_dir=args.tokenizer, overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
    )
    card = write_ctclip_model_card(out, source_checkpoint=args.checkpoint, compute_sha256=args.sha256)
    print(f"Wrote the converted CT-CLIP model (towers: ct, text) to {out}, with its model card {card}")
    if args.tokenizer is None:
        print(
            f"No tokenizer was given. The report tower needs CXR-BERT's tokenizer ({CXR_BERT}), which cannot be "
            "downloaded here. On a machine with Hub access run:\n"
            f"    python -c \"from transformers import BertTokenizer; "
            f"BertTokenizer.from_pretrained('{CXR_BERT}', do_lower_case=True).save_pretrained('{out}')\"\n"
            f"or convert again with --tokenizer DIR (a folder holding that tokenizer)."
        )
    return 0
