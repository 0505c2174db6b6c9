"""``x2ctclip assemble OUT_DIR --ctclip DIR (--cxr DIR | --cxr-config JSON) [--cxr-clip CKPT]``.

Builds an X2CT-CLIP model from pretrained towers (see :func:`x2ctclip.assembly.assemble_x2ctclip`) and saves it
as a Hub folder (``x2ctclip.train.hub_folders.save_model_folder``: safetensors, ``auto_map``, remote code, CXR
processor, the CT-CLIP folder's tokenizer when it has one, model card).
"""

from __future__ import annotations

import json
from pathlib import Path

def configure_parser(parser, command):
    parser.add_argument("out_dir", type=Path, help="output folder (must not exist or be empty)")
    parser.add_argument("--ctclip", required=True, type=Path, help="converted CT-CLIP folder (CT and report towers)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cxr", type=Path, help="transformers vision checkpoint folder for the CXR backbone")
    group.add_argument("--cxr-config", type=Path, help="JSON vision config (with model_type) for a randomly initialised CXR backbone")
    parser.add_argument("--cxr-clip", type=Path, help="CXR-CLIP checkpoint (.pt/.safetensors) to initialise the CXR tower")


def run(args) -> int:
    from x2ctclip.assembly import assemble_x2ctclip

    out_dir: Path = args.out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: output folder exists and is not empty.")
    cxr_config = None
    if args.cxr_config is not None:
        try:
            cxr_config = json.loads(args.cxr_config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{args.cxr_config}: not a readable JSON config ({err}).") from None
    model = assemble_x2ctclip(args.ctclip, cxr_path=args.cxr, cxr_config=cxr_config, cxrclip_checkpoint=args.cxr_clip)
    # One save path for every model folder (x2ctclip.train.hub_folders): safetensors, remote code, processor,
    # tokenizer, card; written to a temporary sibling and renamed, so an interrupted run leaves no half-written folder.
    from x2ctclip.processors import X2CTCLIPImageProcessor
    from x2ctclip.train.hub_folders import save_model_folder
    from x2ctclip.train.trainer import build_processor

    size = int(getattr(model.config.cxr_config, "image_size", None) or 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    has_tokenizer = (args.ctclip / "tokenizer_config.json").is_file()
    if has_tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.ctclip)
        parts = {"processor": build_processor(tokenizer, image_size=size,
                                              max_length=int(model.config.text_config.max_position_embeddings))}
    else:
        parts = {"image_processor": X2CTCLIPImageProcessor(size=size, crop_size=size)}
    built_on = [args.ctclip] + ([args.cxr] if args.cxr is not None else [])
    info = {"description": "Assembled by `x2ctclip assemble` from pretrained towers; not trained after assembly."}
    save_model_folder(model, out_dir, **parts, built_on=built_on, training_info=info, require_tokenizer=has_tokenizer)
    if not has_tokenizer:
        print(f"{args.ctclip} holds no tokenizer, so {out_dir} has none: save the report tower's tokenizer into it "
              "before using or pushing it.")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"Assembled X2CT-CLIP model in {out_dir} (towers {model.config.towers}; {n_train:,} trainable parameters).")
    return 0
