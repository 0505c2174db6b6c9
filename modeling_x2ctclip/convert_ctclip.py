"""Convert a CT-CLIP checkpoint (``CT-CLIP_v2.pt``, ``CT_VocabFine_v2.pt``, ``CT_LiPro_v2.pt``) into an
:class:`X2CTCLIPModel` folder.

CT-CLIP (Hamamci et al.) stores one ``state_dict`` of its ``CTCLIP`` module. The converted model has the CT tower
(:class:`~x2ctclip.modeling_ct.X2CTCLIPCTModel`), the report tower (a transformers ``BertModel``), both projections and
the logit scale, and no CXR tower (``towers=["ct", "text"]``):

=======================================================  ==============================================================
CT-CLIP key                                              X2CT-CLIP key
=======================================================  ==============================================================
``temperature``                                          ``logit_scale`` (log scale; logits use ``exp`` of it)
``text_transformer.*``                                   ``text_model.*``
``to_text_latent.weight``                                ``text_projection.weight``
``to_visual_latent.weight``                              ``ct_projection.weight``
``visual_transformer.to_patch_emb.{1,2,3}.*``            ``ct_model.embeddings.{patch_norm,projection,norm}.*``
``visual_transformer.spatial_rel_pos_bias.net.*``        ``ct_model.spatial_position_bias.mlp.{0,1,2}.*``
``visual_transformer.enc_{spatial,temporal}_transformer``  ``ct_model.{spatial,temporal}_encoder``, per layer:
  ``layers.N.0.dsconv.*``                                  ``layers.N.peg.conv.*``
  ``layers.N.1.{to_q,to_out}.weight``                      ``layers.N.attention.{q_proj,out_proj}.weight``
  ``layers.N.1.to_kv.weight`` (keys then values)           ``layers.N.attention.{k_proj,v_proj}.weight``
  ``layers.N.1.{q_scale,k_scale}``, ``norm.gamma``         ``layers.N.attention.{q_scale,k_scale}``, ``norm.weight``
  ``layers.N.3.{0,1,4}.*``                                 ``layers.N.feed_forward.{norm,fc_in,fc_out}.*``
  ``norm_out.gamma``                                       ``norm_out.weight``
``visual_transformer.vq._codebook.embed`` (1, K, dim)    ``ct_model.quantizer.codebook`` (K, dim)
=======================================================  ==============================================================

Keys accepted and dropped, because the encoder path never reads them (see :data:`DROPPED_KEY_REASONS`):
the ``*_extra`` projections (CT-CLIP's optional second projection pair, off in its training), the decoder-side
``to_pixels*`` and ``to_patch_emb_first_frame*`` layers, the quantiser's training state (``cluster_size``,
``initted``, ``embed_avg``), the self-attention ``context_norm`` (only used for cross-attention, which CTViT does not
have), the empty ``null_kv`` tensors and the always-zero LayerNorm ``beta`` buffers (both checked when weights are
given), and ``text_transformer.embeddings.position_ids`` / ``token_type_ids`` (index buffers that older transformers
versions saved). Any other key, a missing key or a shape mismatch raises a ``ValueError`` that lists them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint_loading import brief_error
from .configuration_x2ctclip import X2CTCLIPConfig, X2CTCLIPCTConfig
from .fileio import atomic_dir

logger = logging.getLogger(__name__)

# CT-CLIP's CTViT hyper-parameter names (its JSON / constructor) -> X2CTCLIPCTConfig fields.
_CTVIT_TO_CT_CONFIG = {
    "dim": "dim",
    "codebook_size": "codebook_size",
    "image_size": "image_size",
    "patch_size": "patch_size",
    "temporal_patch_size": "temporal_patch_size",
    "spatial_depth": "spatial_depth",
    "temporal_depth": "temporal_depth",
    "dim_head": "dim_head",
    "heads": "heads",
    "channels": "channels",
    "frames": "num_frames",
    "num_frames": "num_frames",
}
# CTViT arguments that only concern its training (GAN discriminator, VGG loss, dropout): accepted and ignored.
_CTVIT_TRAINING_ONLY = {
    "discr_base_dim", "use_vgg_and_gan", "vgg", "discr_attn_res_layers", "use_hinge_loss", "attn_dropout", "ff_dropout",
}

# Official CT-CLIP configuration (CT-CLIP_v2.pt): CTViT dim 512, 480 x 480 in-plane, 240 slices, 20 x 20 x 10 patches,
# 4 spatial + 4 temporal layers of 8 heads x 32, codebook 8192; CXR-BERT (BERT-base, vocab 30522); 512-d latents.
OFFICIAL_CTVIT = dict(
    dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10, spatial_depth=4,
    temporal_depth=4, dim_head=32, heads=8, frames=240,
)
OFFICIAL_DIM_LATENT = 512

DROPPED_KEY_REASONS: dict[str, str] = {
    r"to_(text|visual)_latent_extra\.weight": "optional second projection pair (extra_latent_projection), unused",
    r"visual_transformer\.to_pixels(_first_frame)?\..*": "CTViT decoder (reconstruction) head, not on the encoder path",
    r"visual_transformer\.to_patch_emb_first_frame\..*": "first-frame patch embedding, unused by CT-CLIP's CTViT",
    r"visual_transformer\.vq\._codebook\.(initted|cluster_size|embed_avg)": "vector quantiser training state (EMA)",
    r"visual_transformer\.enc_(spatial|temporal)_transformer\.layers\.\d+\.1\.context_norm\.(gamma|beta)": (
        "cross-attention context norm, unused in self-attention"
    ),
    r"visual_transformer\.enc_(spatial|temporal)_transformer\.layers\.\d+\.1\.null_kv": "empty null key/value",
    r"visual_transformer\.enc_(spatial|temporal)_transformer\.(layers\.\d+\.1\.norm|norm_out)\.beta": (
        "LayerNorm bias fixed at zero (a bias-free LayerNorm here)"
    ),
    r"text_transformer\.embeddings\.(position_ids|token_type_ids)": "index buffer saved by older transformers",
}
_DROPPED = [(re.compile(pattern), reason) for pattern, reason in DROPPED_KEY_REASONS.items()]

_PATCH_EMB = {"1": "patch_norm", "2": "projection", "3": "norm"}
_FEED_FORWARD = {"0": "norm", "1": "fc_in", "4": "fc_out"}
_ATTENTION = {
    "to_q.weight": "q_proj.weight", "to_out.weight": "out_proj.weight", "q_scale": "q_scale", "k_scale": "k_scale",
    "norm.gamma": "norm.weight",
}
_LAYER_KEY = re.compile(r"visual_transformer\.enc_(spatial|temporal)_transformer\.layers\.(\d+)\.(\d+)\.(.+)")
_NORM_OUT_KEY = re.compile(r"visual_transformer\.enc_(spatial|temporal)_transformer\.norm_out\.gamma")
_POS_BIAS_KEY = re.compile(r"visual_transformer\.spatial_rel_pos_bias\.net\.(\d+)(?:\.0)?\.(weight|bias)")
_PATCH_EMB_KEY = re.compile(r"visual_transformer\.to_patch_emb\.(\d+)\.(weight|bias)")


def _target_names(key: str) -> list[str] | None:
    """X2CT-CLIP name(s) of one CT-CLIP key; ``[]`` for a known, dropped key; ``None`` for an unknown key.

    ``to_kv`` gives two names (keys, then values).
    """
    if any(pattern.fullmatch(key) for pattern, _ in _DROPPED):
        return []
    if key == "temperature":
        return ["logit_scale"]
    if key == "to_text_latent.weight":
        return ["text_projection.weight"]
    if key == "to_visual_latent.weight":
        return ["ct_projection.weight"]
    if key.startswith("text_transformer."):
        return ["text_model." + key[len("text_transformer."):]]
    if key == "visual_transformer.vq._codebook.embed":
        return ["ct_model.quantizer.codebook"]
    if match := _PATCH_EMB_KEY.fullmatch(key):
        index, kind = match.groups()
        return [f"ct_model.embeddings.{_PATCH_EMB[index]}.{kind}"] if index in _PATCH_EMB else None
    if match := _POS_BIAS_KEY.fullmatch(key):
        index, kind = match.groups()
        return [f"ct_model.spatial_position_bias.mlp.{index}.{kind}"]
    if match := _NORM_OUT_KEY.fullmatch(key):
        return [f"ct_model.{match.group(1)}_encoder.norm_out.weight"]
    if match := _LAYER_KEY.fullmatch(key):
        axis, layer, block, rest = match.groups()
        prefix = f"ct_model.{axis}_encoder.layers.{layer}"
        if block == "0" and rest in ("dsconv.weight", "dsconv.bias"):
            return [f"{prefix}.peg.conv.{rest.split('.')[1]}"]
        if block == "1" and rest == "to_kv.weight":
            return [f"{prefix}.attention.k_proj.weight", f"{prefix}.attention.v_proj.weight"]
        if block == "1" and rest in _ATTENTION:
            return [f"{prefix}.attention.{_ATTENTION[rest]}"]
        if block == "3":
            index, _, kind = rest.partition(".")
            if index in _FEED_FORWARD and kind in ("weight", "bias"):
                return [f"{prefix}.feed_forward.{_FEED_FORWARD[index]}.{kind}"]
    return None


def _source_shapes(key: str, target_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The CT-CLIP shape that produces ``target_shapes`` for ``key``."""
    if key == "visual_transformer.vq._codebook.embed":
        return (1, *target_shapes[0])
    if len(target_shapes) == 2:  # to_kv: keys and values stacked on the output axis
        return (target_shapes[0][0] + target_shapes[1][0], *target_shapes[0][1:])
    return target_shapes[0]


@dataclass
class ConversionPlan:
    """Where every CT-CLIP key goes: ``mapping`` key -> X2CT-CLIP name(s), ``dropped`` key -> reason."""

    mapping: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)


def expected_state_shapes(config: X2CTCLIPConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the persistent tensors of an :class:`X2CTCLIPModel` built from ``config`` (no memory used:
    the model is built on the meta device)."""
    from .modeling_x2ctclip import X2CTCLIPModel

    with torch.device("meta"):
        model = X2CTCLIPModel(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def plan_ctclip_conversion(
    source_shapes: Mapping[str, Sequence[int]], config: X2CTCLIPConfig, source: str = "CT-CLIP state dict"
) -> ConversionPlan:
    """Check a CT-CLIP key -> shape listing against ``config`` and say where every key goes, without any weights.

    Raises:
        ValueError: listing the unknown keys, the X2CT-CLIP tensors no key provides, and the shape mismatches.
    """
    if set(config.towers) != {"ct", "text"}:
        raise ValueError(f"A CT-CLIP conversion targets towers ['ct', 'text'], got config.towers = {config.towers}.")
    expected = expected_state_shapes(config)
    plan = ConversionPlan()
    unknown, mismatched = [], []
    provided: set[str] = set()
    for key, shape in source_shapes.items():
        shape = tuple(int(s) for s in shape)
        names = _target_names(key)
        if names is None or any(name not in expected for name in names):
            unknown.append(f"{key} {list(shape)}")
            continue
        if not names:
            plan.dropped[key] = next(reason for pattern, reason in _DROPPED if pattern.fullmatch(key))
            continue
        want = _source_shapes(key, [expected[name] for name in names])
        if shape != want:
            mismatched.append(f"{key}: checkpoint {list(shape)}, model expects {list(want)}")
        plan.mapping[key] = names
        provided.update(names)
    missing = sorted(set(expected) - provided)
    if unknown or missing or mismatched:
        problems = [
            _listing(f"{len(unknown)} unknown key(s)", sorted(unknown)),
            _listing(f"{len(missing)} X2CT-CLIP tensor(s) that no key provides", missing),
            _listing(f"{len(mismatched)} shape mismatch(es)", sorted(mismatched)),
        ]
        raise ValueError(
            f"{source} does not match this CT-CLIP configuration (is it a CT-CLIP checkpoint, and is its configuration the right one?)."
            + "".join(problems)
        )
    return plan


def _listing(title: str, items: list[str], limit: int = 40) -> str:
    if not items:
        return ""
    shown = "".join(f"\n    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title}:{shown}{more}"


def convert_ctclip_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: X2CTCLIPConfig, source: str = "CT-CLIP state dict"
) -> dict[str, torch.Tensor]:
    """Rename (and split / reshape where needed) a CT-CLIP ``state_dict`` into an :class:`X2CTCLIPModel` state dict.

    Args:
        state_dict: the CT-CLIP ``CTCLIP.state_dict()`` (original key names).
        config: the target :class:`X2CTCLIPConfig` (``towers=["ct", "text"]``), e.g. from :func:`ctclip_config`.
        source: name used in error messages (the checkpoint path).

    Raises:
        ValueError: unknown / missing keys, shape mismatches (all listed), or a dropped tensor that is not what the
            encoder path assumes (a non-empty ``null_kv``, a non-zero LayerNorm ``beta``).
    """
    plan = plan_ctclip_conversion({k: tuple(v.shape) for k, v in state_dict.items()}, config, source)
    bad = [
        key
        for key in plan.dropped
        if (key.endswith(".null_kv") and state_dict[key].numel() != 0)
        or (key.endswith(".beta") and ".context_norm." not in key and bool(state_dict[key].any()))
    ]
    if bad:
        raise ValueError(
            f"{source}: these tensors must be empty (null_kv) or zero (LayerNorm beta) for the CT-CLIP encoder path, "
            f"and are not: {', '.join(sorted(bad))}"
        )
    converted: dict[str, torch.Tensor] = {}
    for key, names in plan.mapping.items():
        tensor = state_dict[key]
        if len(names) == 2:
            for name, part in zip(names, tensor.chunk(2, dim=0)):
                converted[name] = part.contiguous()
        elif key == "visual_transformer.vq._codebook.embed":
            converted[names[0]] = tensor[0].contiguous()
        else:
            converted[names[0]] = tensor.reshape(()) if key == "temperature" else tensor
    return converted


def ctclip_config(
    ctvit: Mapping | None = None,
    text: Mapping | None = None,
    dim_latent: int = OFFICIAL_DIM_LATENT,
    temperature: float = 1.0,
) -> X2CTCLIPConfig:
    """The :class:`X2CTCLIPConfig` of a CT-CLIP model.

    Args:
        ctvit: CT-CLIP's ``CTViT`` arguments (``dim``, ``image_size``, ``frames``, ...); the official ones by default.
            Training-only arguments (discriminator, VGG, dropout) are ignored; anything else unknown is an error.
        text: a ``BertConfig`` dict for the report tower; BERT-base (CXR-BERT's shape, vocab 30522) by default.
        dim_latent: width of CT-CLIP's latent space (``projection_dim``).
        temperature: CT-CLIP's ``temperature`` (the log logit scale).
    """
    from transformers import BertConfig

    ctvit = dict(OFFICIAL_CTVIT if ctvit is None else ctvit)
    unknown = sorted(set(ctvit) - set(_CTVIT_TO_CT_CONFIG) - _CTVIT_TRAINING_ONLY)
    if unknown:
        raise ValueError(f"Unknown CTViT argument(s) {unknown}; known: {sorted(_CTVIT_TO_CT_CONFIG)}.")
    ct_kwargs = {_CTVIT_TO_CT_CONFIG[k]: v for k, v in ctvit.items() if k in _CTVIT_TO_CT_CONFIG}
    text = dict(text or {})
    text.pop("model_type", None)
    return X2CTCLIPConfig(
        ct_config=X2CTCLIPCTConfig(**ct_kwargs),
        text_config=BertConfig(**text),
        towers=["ct", "text"],
        projection_dim=int(dim_latent),
        logit_scale_init_value=float(temperature),
    )


def load_ctclip_config_json(path: str | os.PathLike) -> dict:
    """Read a CT-CLIP configuration JSON: ``{"config": {"ctvit": ..., "text": ..., "dim_latent": ...}}`` (or the inner
    dict directly). Returns the keyword arguments of :func:`ctclip_config`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CT-CLIP configuration file.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({brief_error(err)}).") from None
    inner = data.get("config", data) if isinstance(data, dict) else None
    if not isinstance(inner, dict) or not isinstance(inner.get("ctvit"), dict):
        raise ValueError(f"{path}: expected a JSON object with 'config': {{'ctvit': {{...}}, 'text': {{...}}, 'dim_latent': N}}.")
    return {
        "ctvit": inner["ctvit"],
        "text": inner.get("text"),
        "dim_latent": inner.get("dim_latent", OFFICIAL_DIM_LATENT),
    }


# CT-CLIP (ClassFine) / CT_LiPro_v2.pt: CT-CLIP's linear-probe classifier (scripts/ct_lipro_inference.py) saves its
# whole module, i.e. the CTCLIP under ``trained_model.`` and an abnormality head ``classifier.{weight,bias}``.
_CLASSIFIER_PREFIX = "trained_model."
_CLASSIFIER_HEAD = ("classifier.weight", "classifier.bias")


def load_ctclip_state_dict(
    checkpoint_path: str | os.PathLike, trust_checkpoint: bool = False
) -> dict[str, torch.Tensor]:
    """Read a CT-CLIP checkpoint: a ``.safetensors`` file, or a torch file (``.pt``/``.pth``/``.bin``, read without
    running code, see :func:`~x2ctclip.checkpoint_loading.read_checkpoint`) holding the state dict itself or a dict
    with a ``"state_dict"`` / ``"model"`` entry. A ``module.`` prefix (DistributedDataParallel) is removed.

    The fine-tuned ClassFine / LiPro file (``CT_LiPro_v2.pt``: CTCLIP under ``trained_model.`` plus a linear
    abnormality head ``classifier.*``) is unwrapped: its CTCLIP keys are kept and the head is dropped (logged), since
    X2CT-CLIP classifies zero-shot from the towers."""
    from .checkpoint_loading import extract_state_dict, read_checkpoint

    path = Path(checkpoint_path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a CT-CLIP checkpoint file (e.g. CT-CLIP_v2.pt).")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CT-CLIP checkpoint file.")
    state = extract_state_dict(read_checkpoint(path, trust_checkpoint=trust_checkpoint), str(path))
    rest = [k for k in state if k not in _CLASSIFIER_HEAD]
    if rest and all(k.startswith(_CLASSIFIER_PREFIX) for k in rest) and _CLASSIFIER_HEAD[0] in state:
        head = tuple(state[_CLASSIFIER_HEAD[0]].shape)
        logger.info("%s: ClassFine/LiPro checkpoint; dropped its %s abnormality head (classifier.*).", path, list(head))
        state = {k[len(_CLASSIFIER_PREFIX):]: v for k, v in state.items() if k not in _CLASSIFIER_HEAD}
    return state


def convert_ctclip_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
) -> Path:
    """Convert a CT-CLIP checkpoint into an :class:`X2CTCLIPModel` folder (safetensors) that ``AutoModel`` loads.

    Args:
        checkpoint_path: ``.pt`` / ``.pth`` / ``.bin`` or ``.safetensors`` CT-CLIP state dict.
        output_dir: folder to write; it must not exist or be empty unless ``overwrite``.
        config_path: CT-CLIP configuration JSON (``{"config": {"ctvit", "text", "dim_latent"}}``); the official
            CT-CLIP configuration when omitted.
        tokenizer_dir: a folder with the report tower's BERT tokenizer (CXR-BERT's), saved next to the weights.
        overwrite: replace a non-empty ``output_dir``.
        trust_checkpoint: unpickle a torch file without restrictions (runs code from the file; only for a trusted
            source). By default only tensors and containers are read.

    Everything is checked before anything is written, and the folder is written under a temporary name and renamed
    at the end, so a failed conversion leaves no half-written ``output_dir``.

    Returns:
        the output folder.
    """
    from transformers import AutoTokenizer
    from transformers.initialization import no_init_weights

    from .modeling_x2ctclip import X2CTCLIPModel

    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(f"{output_dir} exists and is not an empty folder; choose another one or overwrite it.")
    kwargs = load_ctclip_config_json(config_path) if config_path is not None else {}
    state_dict = load_ctclip_state_dict(checkpoint_path, trust_checkpoint=trust_checkpoint)
    # A missing or misshapen temperature is reported by the key check below, with every other problem.
    temperature = state_dict.get("temperature")
    temperature = float(temperature) if temperature is not None and temperature.numel() == 1 else 1.0
    try:
        config = ctclip_config(**kwargs, temperature=temperature)
    except (TypeError, ValueError) as err:  # values of the wrong type or range in the configuration JSON
        raise ValueError(f"{config_path or 'the official CT-CLIP configuration'}: {brief_error(err)}") from None
    converted = convert_ctclip_state_dict(state_dict, config, source=str(checkpoint_path))
    del state_dict

    tokenizer = None
    if tokenizer_dir is not None:
        if not Path(tokenizer_dir).is_dir():
            raise FileNotFoundError(f"{tokenizer_dir}: no such tokenizer folder.")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except Exception as err:
            raise ValueError(f"{tokenizer_dir}: cannot load a tokenizer from it ({brief_error(err)}).") from None
        vocab = config.text_config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(
                f"{tokenizer_dir}: the tokenizer has {len(tokenizer)} tokens but the report tower's vocabulary has "
                f"{vocab} rows; it is not this model's tokenizer."
            )

    with no_init_weights():  # every tensor is overwritten by the checkpoint: skip the random initialisation
        model = X2CTCLIPModel(config)
    model.load_state_dict(converted, strict=True)
    model.eval()

    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where a folder should be, no permission
        raise ValueError(f"{output_dir}: cannot create its folder ({err.strerror or err}).") from None
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return output_dir


__all__ = [
    "DROPPED_KEY_REASONS",
    "ConversionPlan",
    "convert_ctclip_checkpoint",
    "convert_ctclip_state_dict",
    "ctclip_config",
    "expected_state_shapes",
    "load_ctclip_config_json",
    "load_ctclip_state_dict",
    "plan_ctclip_conversion",
]
