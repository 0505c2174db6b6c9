"""Assemble an X2CT-CLIP model from pretrained towers, as the paper did.

- CT and report towers (with their projections and logit scale) from a converted CT-CLIP folder
  (``x2ctclip convert-ctclip``), or any saved :class:`X2CTCLIPModel` that has them.
- CXR tower from any transformers vision checkpoint folder (e.g. a local copy of
  ``microsoft/swin-tiny-patch4-window7-224``) or just a vision config (random initialisation).
- Optionally, the CXR tower and projection initialised from a CXR-CLIP checkpoint (``swint_mcc``, ``r50_mcc``):
  its ``image_encoder.*`` and ``image_projection.projection.weight`` keys.

This module is a loading utility and is not shipped as remote code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from .configuration_x2ctclip import X2CTCLIPConfig
from .modeling_x2ctclip import X2CTCLIPModel


def _load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err}).") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors.")
    return obj


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


def convert_cxrclip_state_dict(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map a CXR-CLIP state dict to ``cxr_model.*`` / ``cxr_projection.weight`` names.

    Swin/ViT encoders are stored as ``image_encoder.image_encoder.<transformers keys>``; the ResNet-50 encoder as
    ``image_encoder.resnet.<torchvision keys>``. Text-side keys are ignored (X2CT-CLIP uses the CT report tower).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("image_encoder.image_encoder."):
            out["cxr_model." + key[len("image_encoder.image_encoder."):]] = value
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
        elif key.startswith("image_encoder.") or key.startswith("image_projection."):
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: CXR-CLIP keys this converter does not know: {sorted(unknown)}")
    if "cxr_projection.weight" not in out or not any(k.startswith("cxr_model.") for k in out):
        raise ValueError(
            f"{source}: not a CXR-CLIP checkpoint (needs image_encoder.* and image_projection.projection.weight keys)."
        )
    return out


def assemble_x2ctclip(
    ctclip_path: str | os.PathLike,
    cxr_path: str | os.PathLike | None = None,
    cxr_config: PreTrainedConfig | dict | None = None,
    cxrclip_checkpoint: str | os.PathLike | None = None,
    **config_overrides,
) -> X2CTCLIPModel:
    """Build an X2CT-CLIP model: CT and report towers from ``ctclip_path``, CXR tower from ``cxr_path``.

    Args:
        ctclip_path: folder of a saved :class:`X2CTCLIPModel` with CT and report towers (a converted CT-CLIP).
        cxr_path: folder of a transformers vision checkpoint (config.json + weights) for the CXR backbone.
        cxr_config: instead of ``cxr_path``, a vision config (or dict with ``model_type``); random initialisation.
        cxrclip_checkpoint: optional CXR-CLIP ``.pt``/``.safetensors`` whose image encoder and projection
            initialise the CXR tower (loaded after ``cxr_path``).
        config_overrides: other :class:`X2CTCLIPConfig` fields (loss weights, freezing, prompts...).

    Returns:
        An :class:`X2CTCLIPModel` with ``towers == ["cxr", "ct", "text"]``; CT and report towers frozen by default.
    """
    source = X2CTCLIPModel.from_pretrained(ctclip_path)
    missing = [t for t in ("ct", "text") if t not in source.config.towers]
    if missing:
        raise ValueError(f"{ctclip_path}: this model has no {' and no '.join(missing)} tower; convert a CT-CLIP checkpoint first.")
    backbone = None
    if cxr_path is not None:
        backbone = AutoModel.from_pretrained(cxr_path)
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
    config = X2CTCLIPConfig(**base)
    model = X2CTCLIPModel(config)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("cxr_model.", "cxr_projection."))}
    if backbone is not None:
        state.update({f"cxr_model.{k}": v for k, v in backbone.state_dict().items()})
    if cxrclip_checkpoint is not None:
        state.update(convert_cxrclip_state_dict(_load_state_dict(cxrclip_checkpoint), str(cxrclip_checkpoint)))
    result = model.load_state_dict(state, strict=False)
    expected_missing = set() if (backbone is not None or cxrclip_checkpoint is not None) else {
        k for k in model.state_dict() if k.startswith(("cxr_model.", "cxr_projection."))
    }
    if cxrclip_checkpoint is None:
        expected_missing |= {k for k in model.state_dict() if k.startswith("cxr_projection.")}
    missing_keys = sorted(set(result.missing_keys) - expected_missing)
    if missing_keys or result.unexpected_keys:
        raise ValueError(
            f"Towers do not fit the assembled model: missing {missing_keys[:20]}, unexpected {sorted(result.unexpected_keys)[:20]}."
        )
    model.apply_freezing()
    return model.eval()


__all__ = ["assemble_x2ctclip", "convert_cxrclip_state_dict", "torchvision_resnet_to_hf"]
