"""Assemble an X2CT-CLIP model from pretrained towers, as the paper did.

- CT and report towers (with their projections and logit scale) from a converted CT-CLIP folder
  (``x2ctclip convert-ctclip``), or any saved :class:`X2CTCLIPModel` that has them.
- CXR tower from any transformers vision checkpoint folder (e.g. a local copy of
  ``microsoft/swin-tiny-patch4-window7-224``) or just a vision config (random initialisation).
- Optionally, the CXR tower and projection initialised from a CXR-CLIP checkpoint (``swint_mcc.tar``,
  ``r50_mcc.tar``) as CXR-CLIP saved it: its ``image_encoder.*`` keys (Swin under transformers-4.x names, renamed;
  torchvision ResNet names, mapped) and ``image_projection.projection.weight`` (the bias is dropped unless
  ``cxr_projection_bias=True``). See docs/published_weights.md.

This module is a loading utility and is not shipped as remote code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from .checkpoint_loading import brief_error, extract_state_dict, read_checkpoint
from .configuration_x2ctclip import X2CTCLIPConfig
from .modeling_x2ctclip import X2CTCLIPModel

logger = logging.getLogger(__name__)

def _load_state_dict(path: str | os.PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    return extract_state_dict(read_checkpoint(path, trust_checkpoint=trust_checkpoint), str(path))


# torchvision ResNet names -> transformers ResNetModel names (CXR-CLIP's r50 encoder is a torchvision resnet50).
_TV_RESNET_RULES = [
    (r"^conv1\.", "embedder.embedder.convolution."),
    (r"^bn1\.", "embedder.embedder.normalization."),
    (r"^layer(\d+)\.(\d+)\.downsample\.0\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution."),
    (r"^layer(\d+)\.(\d+)\.downsample\.1\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization."),
    (r"^layer(\d+)\.(\d+)\.conv(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution."),
    (r"^layer(\d+)\.(\d+)\.bn(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization."),
]


def torchvision_resnet_to_hf(key: str) -> str | None:
    """Map one torchvision ResNet key to its transformers ``ResNetModel`` name (None for the unused ``fc``)."""
    if key.startswith("fc."):
        return None
    for pattern, repl in _TV_RESNET_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(key)


# Swin parameter names as transformers 4.x saved them (CXR-CLIP pinned 4.26.1) -> the names of transformers 5.
# Used when the installed transformers exposes no Swin conversion mapping of its own (see swin_renaming_rules).
SWIN_4X_RENAMES = (
    ("attention.self.query", "attention.q_proj"),
    ("attention.self.key", "attention.k_proj"),
    ("attention.self.value", "attention.v_proj"),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
)


def swin_renaming_rules() -> list[tuple[str, str]]:
    """(old, new) renamings from Swin's 4.x parameter names to the installed transformers' names, applied in order
    (each first match replaced once, as transformers does). Taken from transformers' own checkpoint conversion
    mapping when it has one for ``swin``; otherwise :data:`SWIN_4X_RENAMES`."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        mapping = get_checkpoint_conversion_mapping("swin") or []
        rules = [(r.source_patterns[0], r.target_patterns[0]) for r in mapping
                 if len(r.source_patterns) == 1 and len(r.target_patterns) == 1]
    except (ImportError, AttributeError):
        rules = []
    return rules or list(SWIN_4X_RENAMES)


def rename_swin_key(key: str, rules: list[tuple[str, str]] | None = None) -> str:
    """One Swin 4.x key under the installed transformers' names (unchanged when no rule matches)."""
    for old, new in swin_renaming_rules() if rules is None else rules:
        key = re.sub(old, new, key, count=1)
    return key


_REL_INDEX = "relative_position_index"


def _check_relative_position_index(key: str, value: torch.Tensor, buffers: dict[str, torch.Tensor], source: str):
    """A saved ``relative_position_index`` is derived from the window size: it must equal the model's own buffer of
    the same block (which the model recomputes, so the saved copy is dropped)."""
    block = key[: key.index(".attention.")] if ".attention." in key else key.rsplit(".", 1)[0]
    candidates = [name for name in buffers if name.startswith(block + ".") and name.endswith(_REL_INDEX)]
    if len(candidates) != 1:
        raise ValueError(f"{source}: {key} has no matching relative_position_index in the CXR backbone.")
    ours = buffers[candidates[0]]
    # transformers 4.x kept it as (w^2, w^2); newer versions store it flat (w^4,): compare the values in order.
    if ours.numel() != value.numel() or not torch.equal(ours.flatten().cpu(), value.flatten().to(ours.dtype)):
        raise ValueError(
            f"{source}: {key} differs from the model's (window size or image size of the checkpoint and of the CXR "
            "config disagree)."
        )


def convert_cxrclip_state_dict(
    state_dict: dict[str, torch.Tensor],
    source: str = "checkpoint",
    cxr_model: torch.nn.Module | None = None,
    keep_projection_bias: bool = False,
) -> dict[str, torch.Tensor]:
    """Map a CXR-CLIP state dict to ``cxr_model.*`` / ``cxr_projection.*`` names.

    CXR-CLIP (kakaobrain/cxr-clip) stores the Swin/ViT encoder as ``image_encoder.image_encoder.<transformers keys>``
    (transformers 4.26 names), the ResNet-50 encoder as ``image_encoder.resnet.<torchvision keys>`` and the linear
    projection as ``image_projection.projection.{weight,bias}``. Text-side keys and ``logit_scale`` are ignored
    (X2CT-CLIP uses the CT report tower).

    Args:
        state_dict: the ``model`` entry of a CXR-CLIP checkpoint.
        source: name used in messages (the checkpoint path).
        cxr_model: the CXR backbone the weights are for. When given, Swin 4.x names are renamed to its names
            (see :func:`swin_renaming_rules`) and saved ``relative_position_index`` buffers are checked against its
            own and dropped.
        keep_projection_bias: keep the projection bias (as ``cxr_projection.bias``, needs
            ``cxr_projection_bias=True``). By default it is dropped, as the X2CT-CLIP authors' loader does.

    Raises:
        ValueError: image-side keys this converter does not know, or no encoder / projection weight at all.
    """
    model_keys = set(cxr_model.state_dict()) if cxr_model is not None else None
    buffers = dict(cxr_model.named_buffers()) if cxr_model is not None else {}
    rules = swin_renaming_rules() if cxr_model is not None else []
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("image_encoder.image_encoder."):
            name = key[len("image_encoder.image_encoder."):]
            if name.endswith(_REL_INDEX) and cxr_model is not None and name not in model_keys:
                _check_relative_position_index(name, value, buffers, source)
                continue
            if model_keys is not None and name not in model_keys:
                name = rename_swin_key(name, rules)
            out["cxr_model." + name] = value
        elif key.startswith("image_encoder.resnet."):
            try:
                new = torchvision_resnet_to_hf(key[len("image_encoder.resnet."):])
            except KeyError:
                unknown.append(key)
                continue
            if new is not None:
                out["cxr_model." + new] = value
        elif key == "image_projection.projection.weight":
            out["cxr_projection.weight"] = value
        elif key == "image_projection.projection.bias":
            if keep_projection_bias:
                out["cxr_projection.bias"] = value
            else:
                logger.info(
                    "%s: dropped image_projection.projection.bias (X2CT-CLIP's CXR projection has no bias; "
                    "cxr_projection_bias=True keeps it).", source,
                )
        elif key.startswith("image_encoder.") or key.startswith("image_projection."):
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: CXR-CLIP keys this converter does not know: {sorted(unknown)}")
    if "cxr_projection.weight" not in out or not any(k.startswith("cxr_model.") for k in out):
        raise ValueError(
            f"{source}: not a CXR-CLIP checkpoint (needs image_encoder.* and image_projection.projection.weight keys)."
        )
    return out


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' weight-loading progress bar is noise on stderr for a command that reports in one line."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _looks_like_hub_id(path: str | os.PathLike) -> bool:
    """``owner/name`` that is not a local path: from_pretrained may fetch it from the Hub."""
    text = str(path)
    return not os.path.isabs(text) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None


def _load_ctclip_folder(path: str | os.PathLike) -> X2CTCLIPModel:
    """The saved model in ``path``; a missing, empty or foreign folder is a one-line ``ValueError`` naming it."""
    path = Path(path)
    if not path.exists() and _looks_like_hub_id(path):
        try:
            with _no_progress_bars():
                return X2CTCLIPModel.from_pretrained(str(path))
        except Exception as err:  # offline, no such repo, not an X2CT-CLIP model
            raise ValueError(f"{path}: no such folder, and not loadable as a Hub model ({brief_error(err)}).") from None
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder (a converted CT-CLIP model, see x2ctclip convert-ctclip).")
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder (give the folder x2ctclip convert-ctclip wrote).")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json, not a saved model folder (see x2ctclip convert-ctclip).")
    try:
        config = X2CTCLIPConfig.from_pretrained(path)
    except Exception as err:  # a broken or foreign config.json
        raise ValueError(f"{path}: config.json is not an X2CT-CLIP configuration ({brief_error(err)}).") from None
    if getattr(config, "model_type", None) != X2CTCLIPConfig.model_type:
        raise ValueError(f"{path}: config.json is a {config.model_type!r} model, not an X2CT-CLIP model.")
    if not any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                      "pytorch_model.bin")):
        raise ValueError(f"{path}: no model weights (model.safetensors) in the folder.")
    try:
        with _no_progress_bars():
            return X2CTCLIPModel.from_pretrained(path)
    except Exception as err:  # truncated or mismatched weights
        raise ValueError(f"{path}: cannot load the saved model ({brief_error(err)}).") from None


def assemble_x2ctclip(
    ctclip_path: str | os.PathLike,
    cxr_path: str | os.PathLike | None = None,
    cxr_config: PreTrainedConfig | dict | None = None,
    cxrclip_checkpoint: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    **config_overrides,
) -> X2CTCLIPModel:
    """Build an X2CT-CLIP model: CT and report towers from ``ctclip_path``, CXR tower from ``cxr_path``.

    Args:
        ctclip_path: folder of a saved :class:`X2CTCLIPModel` with CT and report towers (a converted CT-CLIP).
        cxr_path: folder of a transformers vision checkpoint (config.json + weights) for the CXR backbone.
        cxr_config: instead of ``cxr_path``, a vision config (or dict with ``model_type``); random initialisation.
        cxrclip_checkpoint: optional CXR-CLIP ``.pt``/``.safetensors`` whose image encoder and projection
            initialise the CXR tower (loaded after ``cxr_path``), as CXR-CLIP saved it (``model`` entry next to
            optimizer / scheduler state and its omegaconf config; Swin under transformers 4.x names).
        trust_checkpoint: unpickle ``cxrclip_checkpoint`` without restrictions (runs code from the file); by default
            only tensors, containers and omegaconf config objects are read.
        config_overrides: other :class:`X2CTCLIPConfig` fields (loss weights, freezing, prompts...).

    Returns:
        An :class:`X2CTCLIPModel` with ``towers == ["cxr", "ct", "text"]``; CT and report towers frozen by default.
    """
    source = _load_ctclip_folder(ctclip_path)
    missing = [t for t in ("ct", "text") if t not in source.config.towers]
    if missing:
        raise ValueError(f"{ctclip_path}: this model has no {' and no '.join(missing)} tower; convert a CT-CLIP checkpoint first.")
    backbone = None
    if cxr_path is not None:
        local = Path(cxr_path).exists()
        if (local or not _looks_like_hub_id(cxr_path)) and not (Path(cxr_path) / "config.json").is_file():
            raise FileNotFoundError(f"{cxr_path}: no such model folder (needs config.json and weights).")
        try:
            with _no_progress_bars():
                backbone = AutoModel.from_pretrained(cxr_path)
        except Exception as err:  # transformers raises OSError / ValueError with long messages
            raise ValueError(f"{cxr_path}: cannot load a vision model from it ({brief_error(err)}).") from None
        cxr_config = backbone.config
    elif isinstance(cxr_config, dict):
        cxr_config = dict(cxr_config)
        cxr_config = AutoConfig.for_model(cxr_config.pop("model_type", "swin"), **cxr_config)
    base = source.config.to_dict()
    for key in ("auto_map", "architectures", "transformers_version", "_name_or_path", "model_type"):
        base.pop(key, None)
    base.update(towers=["cxr", "ct", "text"], freeze_ct_model=True, freeze_text_model=True, freeze_logit_scale=True)
    if cxr_config is not None:
        base["cxr_config"] = cxr_config
    else:
        base.pop("cxr_config", None)
    base.update(config_overrides)
    cxr_source = str(cxr_path) if cxr_path is not None else "the CXR config"
    try:
        config = X2CTCLIPConfig(**base)
        model = X2CTCLIPModel(config)
    except (TypeError, ValueError) as err:  # e.g. a folder whose config is no vision backbone
        raise ValueError(f"{cxr_source}: cannot build the CXR tower from it ({brief_error(err)}).") from None
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("cxr_model.", "cxr_projection."))}
    if backbone is not None:
        state.update({f"cxr_model.{k}": v for k, v in backbone.state_dict().items()})
    # Problems are reported under the file the CXR weights came from (the CXR-CLIP checkpoint when one is given).
    where = str(cxrclip_checkpoint) if cxrclip_checkpoint is not None else cxr_source
    if cxrclip_checkpoint is not None:
        state.update(convert_cxrclip_state_dict(
            _load_state_dict(cxrclip_checkpoint, trust_checkpoint), str(cxrclip_checkpoint), cxr_model=model.cxr_model,
            keep_projection_bias=config.cxr_projection_bias,
        ))
    own = model.state_dict()
    mismatched = [f"{k} {list(v.shape)} (model {list(own[k].shape)})" for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(
            f"{where}: {len(mismatched)} tensor(s) do not fit the CXR tower of this config, e.g. {mismatched[:3]}; "
            "do the encoder type and size match --cxr / --cxr-config?"
        )
    result = model.load_state_dict(state, strict=False)
    expected_missing = set() if (backbone is not None or cxrclip_checkpoint is not None) else {
        k for k in own if k.startswith(("cxr_model.", "cxr_projection."))
    }
    if cxrclip_checkpoint is None:
        expected_missing |= {k for k in own if k.startswith("cxr_projection.")}
    else:  # a checkpoint without a projection bias leaves a requested bias at its zero initialisation
        expected_missing.add("cxr_projection.bias")
    missing_keys = sorted(set(result.missing_keys) - expected_missing)
    if missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{where}: does not fit the CXR tower of this config: {len(missing_keys)} tensor(s) missing "
            f"(e.g. {missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. "
            f"{sorted(result.unexpected_keys)[:3]}); do the encoder type and size match --cxr / --cxr-config?"
        )
    model.apply_freezing()
    return model.eval()


__all__ = [
    "SWIN_4X_RENAMES",
    "assemble_x2ctclip",
    "convert_cxrclip_state_dict",
    "rename_swin_key",
    "swin_renaming_rules",
    "torchvision_resnet_to_hf",
]
