"""Portable model-folder configs: no absolute local path and no temporary folder name in a saved configuration.

A configuration written by ``save_pretrained`` records where its towers were loaded from (``_name_or_path``, a
tokenizer's ``name_or_path``); on the Hub such a path names the machine that trained the model, or a temporary folder
that no longer exists. :func:`make_configs_portable` rewrites them with :func:`portable_reference`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from x2ctclip.fileio import write_atomic
from x2ctclip.train.hub.metadata import ZERO_SHOT_AUTO_CLASS
from x2ctclip.processors.tokenization import MINILM_NAMES, minilm_model_dir

__all__ = ["add_zero_shot_auto_map", "make_configs_portable", "portable_reference"]

# JSON files whose string values may record where a tower was loaded from (tokenizer.json only holds the vocabulary).
_CONFIG_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def _known_hub_ids() -> dict[str, str]:
    """Local folders of models shipped as packages -> the Hub id they are a copy of."""
    known = {}
    try:
        known[str(Path(minilm_model_dir()).resolve())] = MINILM_NAMES[1]
    except Exception:  # the MiniLM package is optional: nothing to map then
        pass
    return known


def portable_reference(value: str, folder: Path | None = None) -> str:
    """What a saved configuration should record instead of a local path ``value``.

    A Hub id stays; a shipped model's folder becomes its Hub id (all-MiniLM-L6-v2); a path inside ``folder`` becomes
    relative to it; any other local path becomes its last component (a folder name says what it was without naming
    the machine that trained it). Temporary names (``.tmp-*``, ``.name.xxxx``) become the empty string.
    """
    if not isinstance(value, str) or not value or not os.path.isabs(value):
        return value
    path = Path(value)
    known = _known_hub_ids().get(str(path.resolve()) if path.exists() else str(path))
    if known:
        return known
    if folder is not None:
        try:
            return path.resolve().relative_to(folder.resolve()).as_posix() or "."
        except ValueError:
            pass
    name = path.name
    return "" if name.startswith(".") else name


def _scrub(value: Any, folder: Path, changed: list[str], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, folder, changed, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, folder, changed, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and os.path.isabs(value) and value.count("/") >= 2:
        new = portable_reference(value, folder)
        if new != value:
            changed.append(where)
        return new
    return value


def make_configs_portable(folder: Path) -> list[str]:
    """Rewrite absolute local paths in the folder's JSON configuration files; returns the keys changed."""
    changed: list[str] = []
    for name in _CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        before = len(changed)
        data = _scrub(data, folder, changed, name)
        if len(changed) > before:
            write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return changed


def add_zero_shot_auto_map(folder: str | os.PathLike) -> dict[str, Any]:
    """Give ``folder/config.json`` the ``auto_map`` entry the zero-shot pipeline loads through; return the config.

    ``register_for_auto_class`` records one auto class per model class, so ``save_pretrained`` writes ``AutoModel``
    only; ``pipeline("zero-shot-image-classification")`` loads ``AutoModelForZeroShotImageClassification``, which
    maps to the same class. Only a model with a CXR and a report tower classifies zero-shot. The configuration's
    ``to_dict`` writes the entry on save; this keeps it for folders saved by an older version.
    """
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    towers = config.get("towers") or []
    auto_map = config.get("auto_map") or {}
    if "cxr" in towers and "text" in towers and "AutoModel" in auto_map and ZERO_SHOT_AUTO_CLASS not in auto_map:
        auto_map[ZERO_SHOT_AUTO_CLASS] = auto_map["AutoModel"]
        config["auto_map"] = auto_map
        write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config
