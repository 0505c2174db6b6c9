"""``x2ctclip assemble OUT_DIR --ctclip DIR (--cxr DIR | --cxr-config JSON) [--cxr-clip CKPT]``.

Builds an X2CT-CLIP model from pretrained towers (see :func:`x2ctclip.assembly.assemble_x2ctclip`) and saves it
as a Hub folder (``x2ctclip.train.hub.folders.save_model_folder``: safetensors, ``auto_map``, remote code, CXR
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
    group.add_argument("--cxr-config", type=Path,
                       help="JSON vision config (with model_type) for a randomly initialised CXR backbone")
    parser.add_argument(
        "--cxr-clip", type=Path,
        help="CXR-CLIP checkpoint (swint_mcc.tar / r50_mcc.tar as published, or .pt/.safetensors) for the CXR tower",
    )
    parser.add_argument(
        "--cxr-projection-bias", action="store_true",
        help="keep the CXR-CLIP projection bias (default: dropped, as the X2CT-CLIP authors' loader does)",
    )
    parser.add_argument(
        "--trust-checkpoint", action="store_true",
        help="unpickle --cxr-clip without restrictions. This RUNS CODE FROM THE FILE: use it only for a file from a "
        "source you trust, and only if the default (tensors, containers and omegaconf configs only) refuses it",
    )


def _read_vision_config(path: Path) -> dict:
    """A JSON vision config with ``model_type``, checked by building it (errors name the file)."""
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from transformers import AutoConfig

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such JSON config file.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON config ({' '.join(str(err).split())}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ValueError(f"{path}: expected a JSON object with a 'model_type' (e.g. \"swin\" or \"resnet\").")
    kwargs = dict(data)
    try:
        AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    except Exception as err:  # unknown model type, values of the wrong type
        text = " ".join(str(err).split())
        raise ValueError(f"{path}: not a usable vision config ({type(err).__name__}: {text[:200]}).") from None
    return data


def run(args) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.assembly import assemble_x2ctclip

    out_dir: Path = args.out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: output folder exists and is not empty.")
    cxr_config = None
    if args.cxr_config is not None:
        cxr_config = _read_vision_config(args.cxr_config)
    overrides = {"cxr_projection_bias": True} if args.cxr_projection_bias else {}
    model = assemble_x2ctclip(
        args.ctclip, cxr_path=args.cxr, cxr_config=cxr_config, cxrclip_checkpoint=args.cxr_clip,
        trust_checkpoint=args.trust_checkpoint, **overrides,
    )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where a folder should be, no permission
        raise ValueError(f"{out_dir}: cannot create its folder ({err.strerror or err}).") from None
    # One save path for every model folder (x2ctclip.train.hub.folders): safetensors, remote code, processor,
    # tokenizer, card; written to a temporary sibling and renamed, so an interrupted run leaves no half-written folder.
    from x2ctclip.processors import X2CTCLIPImageProcessor
    from x2ctclip.train.hub.folders import save_model_folder
    from x2ctclip.train.training.trainer import build_processor

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
