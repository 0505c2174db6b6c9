"""Training configurations: one dataclass per trainer, read from YAML and from command-line flags.

Every field of a config is a command-line flag (``output_dir`` -> ``--output-dir``) whose help is the field's
``metadata["help"]``. ``--config run.yaml`` reads a YAML mapping of field names first; flags given on the command
line override it; fields given nowhere keep their dataclass default. :func:`config_from_args` does the merge and
validates the result, so a typo in a YAML key or an impossible value is a ``ValueError`` that names the file or the
flag, never a traceback deep in the training loop.

- :class:`TrainConfig`: what every trainer shares (optimiser, schedule, precision, logging, checkpoints).
- :class:`CTCLIPTrainConfig`: stage 1, aligning the CT tower and the report tower (``x2ctclip train ctclip``).
- :class:`X2CTTrainConfig`: stage 2, the paper's X2CT-CLIP stage (``x2ctclip train x2ct``).

The tower presets (:data:`CT_PRESETS`, :data:`CXR_PRESETS`, :data:`TEXT_PRESETS`) are the architectures the trainers
build from scratch; ``ct_config`` / ``cxr_config`` / ``text_config`` override single fields of a preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from x2ctclip.fileio import write_atomic

__all__ = [
    "CT_PRESETS",
    "CTCLIPTrainConfig",
    "CXR_PRESETS",
    "TEXT_PRESETS",
    "TrainConfig",
    "X2CTTrainConfig",
    "add_config_arguments",
    "check_ct_augmentation",
    "config_from_args",
    "load_yaml_config",
]


def _field(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, factory: bool = False) -> Any:
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if factory:
        return field(default_factory=lambda: _copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_ct_augmentation(max_shift: Any, intensity_jitter: float,
                          names: tuple[str, str] = ("ct_max_shift", "ct_intensity_jitter")) -> None:
    """The arguments of the stage-1 CT augmentation (:class:`~x2ctclip.train.training.augment.CTTrainAugmentation`),
    checked here without importing torch; ``names`` are the fields named in the errors."""
    values = list(max_shift) if isinstance(max_shift, (list, tuple)) else None
    if values is None or len(values) != 3 or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"{names[0]} must be three voxel counts >= 0 (D, H, W), got {max_shift!r}.")
    if not 0.0 <= intensity_jitter < 1.0:
        raise ValueError(f"{names[1]} must be in [0, 1), got {intensity_jitter}.")


# ----------------------------------------------------------------------------------------------------- presets
#: CT tower presets (fields of :class:`x2ctclip.X2CTCLIPCTConfig`). ``use_vq`` is off for every preset trained here:
#: the quantiser of CT-CLIP replaces tokens by stored codes without a straight-through path, so with it on no gradient
#: would reach the encoder. ``ctclip`` is CT-CLIP's architecture (480 x 480 x 240 input).
CT_PRESETS: dict[str, dict[str, Any]] = {
    "ctclip": dict(
        dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10, num_frames=240,
        spatial_depth=4, temporal_depth=4, heads=8, dim_head=32, use_vq=False,
    ),
    # The quickstart's CT tower: 64 x 64 in-plane, 32 slices (see train/quickstart.py).
    "small": dict(
        dim=64, codebook_size=16, image_size=64, patch_size=8, temporal_patch_size=4, num_frames=32,
        spatial_depth=1, temporal_depth=1, heads=4, dim_head=16, use_vq=False,
    ),
    "tiny": dict(
        dim=16, codebook_size=8, image_size=16, patch_size=8, temporal_patch_size=4, num_frames=8,
        spatial_depth=1, temporal_depth=1, heads=2, dim_head=8, use_vq=False,
    ),
}

#: CXR tower presets (transformers vision configs; ``model_type`` picks the class). Stochastic depth and dropout are
#: off in the small presets so that data-parallel runs equal single-process runs exactly.
CXR_PRESETS: dict[str, dict[str, Any]] = {
    # CXR-CLIP / X2CT-CLIP Swin-Tiny (patch 4, window 7, 224 x 224).
    "swin-tiny": dict(
        model_type="swin", image_size=224, patch_size=4, num_channels=3, embed_dim=96, depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.1,
    ),
    "resnet50": dict(model_type="resnet", embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                     layer_type="bottleneck"),
    # The quickstart's CXR tower: a 4-stage ResNet with 16-128 channels (about 1.2 M parameters).
    "small": dict(model_type="resnet", embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                  layer_type="basic"),
    "tiny": dict(model_type="swin", image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[1, 1],
                 num_heads=[2, 2], window_size=4, drop_path_rate=0.0, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0),
}

#: Report tower presets for towers built from scratch (transformers BERT configs).
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # CXR-BERT / BERT-base as in CT-CLIP.
    "cxr-bert": dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512),
    "tiny": dict(model_type="bert", vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0),
}


def resolve_preset(presets: dict[str, dict[str, Any]], name: str, overrides: dict[str, Any], what: str) -> dict[str, Any]:
    """The preset ``name`` updated with ``overrides`` (a fresh dict)."""
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; choose from {sorted(presets)}.")
    out = _copy(presets[name])
    out.update(_copy(overrides or {}))
    return out


# ----------------------------------------------------------------------------------------------------- configs
@dataclass
class TrainConfig:
    """Options every trainer shares. Batch sizes are per process: the global batch is
    ``per_device_batch_size x processes x gradient_accumulation_steps`` (negatives of the contrastive loss span
    ``per_device_batch_size x processes`` rows: they are gathered across processes but not across accumulation steps).
    """

    output_dir: str = _field("runs/x2ctclip", "folder for checkpoints, logs and the final model (created)")
    seed: int = _field(1024, "seed of the initialisation, the data order and the augmentation")
    per_device_batch_size: int = _field(32, "rows per process and per micro-step")
    gradient_accumulation_steps: int = _field(1, "micro-steps per optimiser step")
    num_epochs: int = _field(1, "epochs over the scans (one reconstruction per scan per epoch); ignored if max_steps > 0")
    max_steps: int = _field(0, "optimiser steps to run (0: num_epochs epochs)")
    learning_rate: float = _field(5e-5, "AdamW peak learning rate")
    weight_decay: float = _field(1e-4, "AdamW weight decay (not applied to biases, norms and the logit scale)")
    adam_betas: tuple[float, float] = _field((0.9, 0.99), "AdamW betas")
    adam_epsilon: float = _field(1e-8, "AdamW epsilon")
    max_grad_norm: float = _field(0.5, "gradient clipping norm (0: no clipping)")
    lr_scheduler: str = _field("constant", "learning-rate schedule after warm-up", choices=("constant", "cosine", "linear"))
    warmup_steps: int = _field(0, "linear warm-up steps")
    mixed_precision: str = _field("no", "autocast precision (fp16 needs a GPU)", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = _field(
        False,
        "recompute the activations of the trained towers' layers in the backward pass instead of keeping them "
        "(less memory, about one more forward of compute)",
    )
    logging_steps: int = _field(10, "log the training losses every N optimiser steps")
    eval_steps: int = _field(0, "evaluate on the validation split every N steps (0: only at the end)")
    save_steps: int = _field(500, "write a resumable checkpoint every N optimiser steps (0: none)")
    save_total_limit: int = _field(2, "keep only the N newest checkpoints (0: keep all)")
    resume: str | None = _field(None, "'latest' or a checkpoint folder to resume from")
    num_workers: int = _field(0, "data-loading worker processes per training process")
    report_to: list[str] = _field(["tensorboard", "csv"], "loggers on the main process (tensorboard, csv)", factory=True)
    progress_bar: bool = _field(True, "show a tqdm progress bar on the main process")
    find_unused_parameters: str = _field(
        "auto",
        "DDP find_unused_parameters: 'auto' turns it on only when a probe step leaves a trainable parameter without "
        "gradient",
        choices=("auto", "true", "false"),
    )
    max_train_samples: int = _field(0, "use only the first N scans of the training split (0: all)")
    max_eval_samples: int = _field(0, "use only the first N scans of the validation split (0: all)")

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for impossible values."""
        positive = ("per_device_batch_size", "gradient_accumulation_steps", "learning_rate")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")
        non_negative = (
            "num_epochs", "max_steps", "weight_decay", "max_grad_norm", "warmup_steps", "logging_steps", "eval_steps",
            "save_steps", "save_total_limit", "num_workers", "max_train_samples", "max_eval_samples",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if self.max_steps == 0 and self.num_epochs == 0:
            raise ValueError("set max_steps or num_epochs > 0: the run would train for zero steps.")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}.")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}.")
        unknown = set(self.report_to) - {"tensorboard", "csv"}
        if unknown:
            raise ValueError(f"report_to accepts 'tensorboard' and 'csv', got {sorted(unknown)}.")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the config as YAML (readable back with ``--config``), atomically."""
        write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(names)}.")
        try:
            return cls(**values)
        except TypeError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        values = load_yaml_config(path)
        values.update(overrides)
        return cls.from_dict(values, source=str(path))


@dataclass
class CTCLIPTrainConfig(TrainConfig):
    """Stage 1 (CT-CLIP): align the CT tower (from scratch or ``init_model``) with the report tower.

    Reads preprocessed shards (columns ``ct``, ``report``) from ``data_dir``. With ``text_training: projection`` the
    report tower's body is frozen and its [CLS] states are computed once per distinct report before training; only
    its projection (and the CT tower) train, so a step runs no text transformer.
    """

    output_dir: str = _field("runs/ctclip", "folder for checkpoints, logs and the final model (created)")
    data_dir: str = _field("", "preprocessed data folder (x2ctclip preprocess), holding <split>/ shards")
    train_split: str = _field("train", "split to train on")
    eval_split: str | None = _field("valid", "split to evaluate on ('' or null: none)")
    init_model: str | None = _field(None, "folder of an X2CT-CLIP/CT-CLIP model with CT and report towers to start from")
    ct_preset: str = _field("ctclip", "CT tower architecture when training from scratch", choices=tuple(CT_PRESETS))
    ct_config: dict[str, Any] = _field({}, "overrides of the CT preset, as JSON on the command line", factory=True)
    text_model: str | None = _field(
        "all-MiniLM-L6-v2", "pretrained report tower: a folder or 'all-MiniLM-L6-v2' (shipped offline); null: text_preset"
    )
    text_preset: str = _field("cxr-bert", "report tower architecture when text_model is null", choices=tuple(TEXT_PRESETS))
    text_config: dict[str, Any] = _field({}, "overrides of the report tower config, as JSON", factory=True)
    tokenizer: str | None = _field(None, "tokenizer folder (default: text_model's)")
    max_text_length: int = _field(512, "report tokens (CT-CLIP: 512)")
    text_training: str = _field(
        "projection", "what trains on the report side: full tower, projection only (body frozen, cached), or nothing",
        choices=("full", "projection", "frozen"),
    )
    text_truncation_side: str = _field(
        "right", "which end of a long report is cut (left keeps the Impressions at its end)", choices=("right", "left")
    )
    prompt_text_fraction: float = _field(
        0.0,
        "fraction of training rows whose text is a prompt sentence built from the row's labels (the zero-shot prompt "
        "pairs: its positive findings and a few negatives) instead of the report",
    )
    prompt_text_negatives: int = _field(3, "negative findings named in each prompt sentence")
    ct_max_shift: list[int] = _field(
        [0, 0, 0], "CT augmentation: random translation of up to (D, H, W) voxels per axis, air-filled (0: none)",
        factory=True,
    )
    ct_intensity_jitter: float = _field(
        0.0, "CT augmentation: random offset of up to this many HU / 1000 and gain of up to 1 +- it (0: none)"
    )
    projection_dim: int = _field(512, "width of the shared latent space")
    logit_scale_init: float = _field(math.log(1 / 0.07), "initial log logit scale (CLIP: log(1/0.07))")
    train_logit_scale: bool = _field(True, "learn the logit scale (clamped to max_logit_scale)")
    max_logit_scale: float = _field(100.0, "upper bound of exp(logit_scale)")
    learning_rate: float = _field(1e-4, "AdamW peak learning rate")
    weight_decay: float = _field(0.1, "AdamW weight decay (not applied to biases, norms and the logit scale)")
    max_grad_norm: float = _field(1.0, "gradient clipping norm (0: no clipping)")

    def validate(self) -> None:
        super().validate()
        if self.max_text_length <= 0 or self.projection_dim <= 0:
            raise ValueError("max_text_length and projection_dim must be > 0.")
        if not 0.0 <= self.prompt_text_fraction <= 1.0 or self.prompt_text_negatives < 0:
            raise ValueError("prompt_text_fraction must be in [0, 1] and prompt_text_negatives >= 0.")
        if self.max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be > 0, got {self.max_logit_scale}.")
        check_ct_augmentation(self.ct_max_shift, self.ct_intensity_jitter)
        if self.init_model is None and self.text_model is None and not self.tokenizer:
            raise ValueError("a report tower built from text_preset needs a tokenizer folder (tokenizer: ...).")


@dataclass
class X2CTTrainConfig(TrainConfig):
    """Stage 2 (X2CT-CLIP): train a CXR tower against the frozen CT and report towers of a CT-CLIP model.

    CT and report latents come from the embedding cache (``x2ctclip cache-embeddings``) so a step touches no CT
    volume; the loss is ``alpha * L(CT, report) + beta * L(CXR, report) + gamma * L(CXR, CT)`` with the frozen CT-CLIP
    logit scale. Defaults are those of the X2CT-CLIP code (AdamW 5e-5, weight decay 1e-4, betas (0.9, 0.99), clipping
    0.5, seed 1024, no schedule). With ``gamma = 0`` this trains a CXR-only CLIP (CXR vs report).
    """

    output_dir: str = _field("runs/x2ct", "folder for checkpoints, logs and the final model (created)")
    ctclip_model: str = _field("", "folder of the CT-CLIP model (CT and report towers) the CXR tower is aligned to")
    data_dir: str = _field("", "preprocessed data folder (x2ctclip preprocess) with the simulated CXRs")
    embedding_cache: str = _field("", "embedding cache folder (x2ctclip cache-embeddings) of ctclip_model on data_dir")
    train_split: str = _field("train", "split to train on")
    eval_split: str | None = _field("valid", "split to evaluate on ('' or null: none)")
    cxr_model: str | None = _field(None, "folder of a pretrained transformers vision backbone for the CXR tower")
    cxr_preset: str = _field("swin-tiny", "CXR tower architecture when cxr_model is not given", choices=tuple(CXR_PRESETS))
    cxr_config: dict[str, Any] = _field({}, "overrides of the CXR preset, as JSON", factory=True)
    cxrclip_checkpoint: str | None = _field(None, "CXR-CLIP checkpoint (.pt/.safetensors) initialising the CXR tower")
    loss_ct_text_weight: float = _field(0.0, "alpha: weight of L(CT, report) (constant here: both are cached)")
    loss_cxr_text_weight: float = _field(1.0, "beta: weight of L(CXR, report)")
    loss_cxr_ct_weight: float = _field(1.0, "gamma: weight of L(CXR, CT); 0 gives a CXR-only CLIP")
    image_size: int = _field(224, "CXR side in pixels fed to the tower")
    image_mean: float = _field(0.5, "CXR normalisation mean (0.5 for Swin; ImageNet 0.485/0.456/0.406 for ResNet-50)")
    image_std: float = _field(0.5, "CXR normalisation std")
    augment: bool = _field(True, "random crop, CLAHE and brightness/contrast jitter on training CXRs")
    crop_scale: tuple[float, float] = _field((0.8, 1.1), "RandomResizedCrop area scale range")
    crop_ratio: tuple[float, float] = _field((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range")
    clahe_clip_limit: float = _field(4.0, "CLAHE clip limit (0: no CLAHE)")
    clahe_tile_grid: int = _field(8, "CLAHE tiles per side")
    brightness: float = _field(0.2, "brightness jitter (factor drawn from [1 - b, 1 + b])")
    contrast: float = _field(0.2, "contrast jitter (factor drawn from [1 - c, 1 + c])")

    def validate(self) -> None:
        super().validate()
        for name in ("loss_ct_text_weight", "loss_cxr_text_weight", "loss_cxr_ct_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.loss_cxr_text_weight == 0 and self.loss_cxr_ct_weight == 0:
            raise ValueError("loss_cxr_text_weight and loss_cxr_ct_weight are both 0: the CXR tower would get no gradient.")
        if isinstance(self.crop_scale, list):
            self.crop_scale = tuple(self.crop_scale)
        if isinstance(self.crop_ratio, list):
            self.crop_ratio = tuple(self.crop_ratio)
        if self.image_size <= 0:
            raise ValueError(f"image_size must be > 0, got {self.image_size}.")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max, got {self.crop_scale}.")
        if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be (min, max) with 0 < min <= max, got {self.crop_ratio}.")
        jitter_ok = 0 <= self.brightness < 1 and 0 <= self.contrast < 1
        if self.clahe_clip_limit < 0 or self.clahe_tile_grid <= 0 or not jitter_ok:
            raise ValueError("clahe_clip_limit >= 0, clahe_tile_grid > 0 and brightness, contrast in [0, 1) are required.")
        if self.image_std <= 0:
            raise ValueError(f"image_std must be > 0, got {self.image_std}.")


# ----------------------------------------------------------------------------------------------------- YAML / CLI
def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of config fields; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err}).") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _none_or(parse):
    def convert(text: str):
        return None if text.lower() in ("none", "null", "") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type[TrainConfig]) -> None:
    """Add ``--config FILE`` and one flag per field of ``config_class``, generated by ``transformers.HfArgumentParser``.

    HfArgumentParser writes the flags (``--output-dir`` and ``--output_dir``, ``--no-augment`` for true-by-default
    switches, help and choices from the field metadata, ``true|false`` booleans). Three field kinds it does not parse
    get their types here: ``tuple[float, float]`` (two values), ``dict`` (a JSON object) and ``X | None`` (``null``
    gives None). Every flag defaults to ``argparse.SUPPRESS`` so that :func:`config_from_args` can tell a flag given
    on the command line (which overrides the YAML file) from one left out (YAML value, else the dataclass default).
    """
    from transformers import HfArgumentParser

    parser.add_argument("--config", metavar="YAML", default=None, help="YAML file of options; flags override it")
    generated = HfArgumentParser(config_class, add_help=False)
    hints = typing.get_type_hints(config_class)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(config_class)}  # fmt: skip
    for action in generated._actions:
        tp, optional = _unwrap_optional(hints[action.dest])
        origin = typing.get_origin(tp)
        if origin is tuple:
            action.type, action.nargs = typing.get_args(tp)[0], len(typing.get_args(tp))
        elif origin is dict:
            action.type, action.metavar = _json_dict, "JSON"
        elif origin is list:
            action.nargs = "*"  # an empty list is a value (report_to: no logger)
        elif optional and tp is not bool:
            action.type = _none_or(tp)
        if action.const is not False:  # not the --no-X complement of a switch
            action.help = f"{action.help or ''} (default: {defaults[action.dest]!r})".replace("%", "%%")
        action.default = argparse.SUPPRESS
    parser._add_container_actions(generated)  # what ArgumentParser(parents=[generated]) does, on an existing parser


def config_from_args(config_class: type[TrainConfig], args: argparse.Namespace) -> TrainConfig:
    """Build ``config_class`` from defaults, then the YAML file ``args.config``, then the flags given."""
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        values.update(load_yaml_config(args.config))
        source = f"{args.config} + command line"
    for f in dataclasses.fields(config_class):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return config_class.from_dict(values, source=source)
