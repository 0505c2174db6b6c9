"""Open published PyTorch checkpoints without running code from them.

``torch.load(weights_only=True)`` refuses every class that is not a tensor, a container or a number. Published files
carry more: CXR-CLIP saves its omegaconf training configuration next to the weights (nested ``DictConfig`` became
``dict``, but list values stay ``ListConfig``, which pickles its parent config and node objects). Those omegaconf
classes (plain data holders) are allowed through :mod:`torch.serialization`'s safe globals; anything else is refused
with a message that names the class. ``trust_checkpoint=True`` (``--trust-checkpoint`` on the command line) switches to
unrestricted unpickling, which *runs code from the file*: only for files from a source the user trusts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Classes a CXR-CLIP checkpoint's omegaconf config pickles (measured with omegaconf 2.3.0, the version CXR-CLIP pins,
# via torch.serialization.get_unsafe_globals_in_checkpoint), plus the typed nodes omegaconf may use for other values.
OMEGACONF_GLOBALS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
)
# Type objects the omegaconf metadata refers to (key / element types): references to types, no code runs.
_PLAIN_GLOBALS = (dict, list, int, float, str, bool, bytes)

TRUST_HINT = (
    "pass --trust-checkpoint (trust_checkpoint=True) to unpickle it without restrictions, which runs code from the "
    "file: only for a file from a source you trust"
)


def _import_class(dotted: str):
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None


def _safe_globals() -> list:
    import collections
    import typing

    allowed = [cls for cls in map(_import_class, OMEGACONF_GLOBALS) if cls is not None]
    return allowed + [typing.Any, collections.defaultdict, *_PLAIN_GLOBALS]


def _unsafe_globals(path: Path) -> list[str]:
    """Names of the classes the file would need beyond the defaults (zip-format torch files only)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) format or a damaged file: nothing to list
        return []


def to_plain(obj):
    """omegaconf containers -> plain ``dict`` / ``list`` (resolved); everything else unchanged, recursively."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # without omegaconf no omegaconf object can have been loaded
        DictConfig = ListConfig = ()
    if DictConfig and isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def brief_error(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line: torch's and transformers' multi-paragraph messages cut to their
    core (for one-line command errors)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch explains its weights_only default at length before the reason
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n", 1)[0]
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def read_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False):
    """Read a ``.safetensors`` file or a torch file (``.pt`` / ``.pth`` / ``.tar`` / ``.bin``) without running code.

    Returns the stored object with omegaconf containers turned into plain ``dict`` / ``list``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: an empty or unreadable file, or a file that needs classes beyond tensors, containers and the
            omegaconf config classes (the message names them) while ``trust_checkpoint`` is False.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a checkpoint file.")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not a checkpoint.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise ValueError(f"{path}: not a readable safetensors file ({brief_error(err)}).") from None
    if trust_checkpoint:
        logger.warning("%s: unpickled without restrictions (trust_checkpoint): code in the file may have run.", path)
        try:
            return to_plain(torch.load(str(path), map_location="cpu", weights_only=False))
        except Exception as err:
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({brief_error(err)}).") from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in _safe_globals() if hasattr(cls, "__qualname__")}
        needed = [name for name in _unsafe_globals(path) if name not in allowed and name != "typing.Any"]
        if needed and all(name.startswith("omegaconf.") for name in needed) and _import_class(needed[0]) is None:
            raise ValueError(
                f"{path}: the file holds an omegaconf configuration ({', '.join(sorted(needed))}); "
                "install omegaconf (pip install omegaconf) to read it."
            ) from None
        if needed:
            raise ValueError(
                f"{path}: refused to unpickle {', '.join(sorted(needed))} (not plain data); {TRUST_HINT}."
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({brief_error(err)}).") from None
    return to_plain(obj)


WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def extract_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: the object itself or its ``state_dict`` / ``model`` /
    ``model_state_dict`` entry (other entries such as optimizer state and config are ignored); a ``module.`` prefix
    (DistributedDataParallel) on every key is removed."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(
            f"{source}: expected a state dict (names -> tensors) or a dict with a "
            f"{' / '.join(repr(k) for k in WRAPPER_KEYS)} entry holding one."
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


__all__ = ["OMEGACONF_GLOBALS", "brief_error", "extract_state_dict", "read_checkpoint", "to_plain"]
