"""Checks of a model card and a model folder before upload: metadata, model-index, classes, files."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors import safe_open
from transformers.dynamic_module_utils import get_relative_imports

from x2ctclip.train.hub.card_sections import bullet_list
from x2ctclip.train.hub.metadata import HUB_LICENSES, LIBRARY_NAME, PIPELINE_TAG, ZERO_SHOT_AUTO_CLASS, is_repo_id
from x2ctclip.train.hub.results import finite_number

# --------------------------------------------------------------------------------------------------------------
# Validation (local, no network)
# --------------------------------------------------------------------------------------------------------------


def license_problems(license: Any, license_name: Any, license_link: Any) -> list[str]:
    if not license:
        return ["metadata 'license' is missing"]
    if not isinstance(license, str) or license not in HUB_LICENSES:
        return [f"metadata 'license' {license!r} is not a Hub license id (use one of the known ids or 'other')"]
    if license == "other" and not (license_name and license_link):
        return ["metadata 'license: other' needs 'license_name' and 'license_link'"]
    return []


def validate_card(card: ModelCard | str | os.PathLike, *, towers: Sequence[str] | None = None) -> list[str]:
    """Check a model card's metadata locally; returns the problems found (empty when it is fine).

    Checks: required keys (``license``, ``library_name: transformers``, ``tags``; ``pipeline_tag:
    zero-shot-image-classification`` when ``towers`` holds ``"cxr"``), the license id, Hub ids of ``base_model`` and
    ``datasets``, and the ``model-index`` structure (task type, data set name and type, numeric metrics), which is
    also parsed by ``huggingface_hub`` the way the Hub reads it.
    """
    if isinstance(card, ModelCard):
        data = card.data.to_dict()
    else:
        path = Path(card)
        if not path.is_file():
            return [f"{path}: no model card"]
        try:  # the raw YAML, so that a malformed model-index gets a precise message below
            data = metadata_load(path)
        except Exception as err:  # YAML errors have many types
            return [f"{path}: the card's metadata block cannot be parsed ({type(err).__name__}: {err})"]
        if not isinstance(data, dict):
            return [f"{path}: the card has no YAML metadata block"]
    problems = license_problems(data.get("license"), data.get("license_name"), data.get("license_link"))
    if data.get("library_name") != LIBRARY_NAME:
        problems.append(f"metadata 'library_name' must be '{LIBRARY_NAME}', got {data.get('library_name')!r}")
    tags = data.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
        problems.append("metadata 'tags' must be a non-empty list of strings")
    if towers is not None and "cxr" in towers and data.get("pipeline_tag") != PIPELINE_TAG:
        problems.append(f"metadata 'pipeline_tag' must be '{PIPELINE_TAG}' for a model with a CXR tower, got {data.get('pipeline_tag')!r}")
    for key in ("base_model", "datasets"):
        for value in bullet_list(data.get(key)):
            if not is_repo_id(value):
                problems.append(f"metadata '{key}' entry {value!r} is not a Hub id ('owner/name')")
    index = data.get("model-index")
    if index is not None:
        problems += _model_index_problems(index)
        if not problems:
            try:
                model_index_to_eval_results(index)
            except Exception as err:
                problems.append(f"'model-index' is rejected by huggingface_hub ({type(err).__name__}: {err})")
    return problems


def _model_index_problems(index: Any) -> list[str]:
    if not isinstance(index, list) or not index:
        return ["'model-index' must be a non-empty list"]
    problems = []
    for i, model in enumerate(index):
        if not isinstance(model, dict) or not model.get("name"):
            problems.append(f"model-index[{i}] needs a 'name'")
            continue
        results = model.get("results")
        if not isinstance(results, list) or not results:
            problems.append(f"model-index[{i}] needs a non-empty 'results' list")
            continue
        for j, result in enumerate(results):
            where = f"model-index[{i}].results[{j}]"
            if not isinstance(result, dict):
                problems.append(f"{where} must be an object")
                continue
            if not (result.get("task") or {}).get("type"):
                problems.append(f"{where}.task.type is missing")
            dataset = result.get("dataset") or {}
            if not dataset.get("name") or not dataset.get("type"):
                problems.append(f"{where}.dataset needs 'name' and 'type'")
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"{where}.metrics must be a non-empty list")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not metric.get("type") or finite_number(metric.get("value")) is None:
                    problems.append(f"{where}.metrics[{k}] needs a 'type' and a finite numeric 'value'")
    return problems


@dataclass
class FolderCheck:
    """Result of :func:`validate_hub_folder`: ``errors`` make the folder unusable as a Hub repo; ``warnings`` do not."""

    folder: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


_PACKAGE_IMPORT = re.compile(r"^\s*(?:from|import)\s+x2ctclip\b", re.MULTILINE)


def _read_json(path: Path, check: FolderCheck) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        check.errors.append(f"{path.name}: not readable JSON ({err})")
        return None
    if not isinstance(value, dict):
        check.errors.append(f"{path.name}: expected a JSON object")
        return None
    return value


def _check_class_ref(folder: Path, ref: Any, where: str, check: FolderCheck) -> None:
    refs = ref if isinstance(ref, (list, tuple)) else [ref]
    for one in refs:
        if one is None:
            continue
        if not isinstance(one, str) or "." not in one:
            check.errors.append(f"{where}: auto_map entry {one!r} is not 'module.Class'")
            continue
        module, cls = one.split("--")[-1].rsplit(".", 1)
        path = folder / f"{module}.py"
        if not path.is_file():
            check.errors.append(f"{where}: auto_map points at {module}.py, which is not in the folder")
        elif not re.search(rf"^class\s+{re.escape(cls)}\b", path.read_text(encoding="utf-8"), re.MULTILINE):
            check.errors.append(f"{where}: {module}.py defines no class {cls}")


def validate_hub_folder(folder: str | os.PathLike) -> FolderCheck:
    """Check that ``folder`` is a complete Hub repository for this project's models (no network, no model loading).

    Errors: missing / unreadable ``config.json`` or ``auto_map`` entries (``AutoConfig``, ``AutoModel``, and
    ``AutoModelForZeroShotImageClassification`` for a model with a CXR tower) pointing at files or classes that are
    not there; remote-code files whose relative imports are missing or that import the ``x2ctclip`` package; no
    ``model.safetensors`` (or shards) or a pickled ``*.bin``; for a CXR tower, no image processor configuration
    (``processor_config.json`` or ``preprocessor_config.json``) naming its class and remote code; for a report
    tower, no tokenizer files; a missing or invalid ``README.md`` card (:func:`validate_card`).
    """
    folder = Path(folder)
    check = FolderCheck(folder)
    if not folder.is_dir():
        check.errors.append(f"{folder}: not a folder")
        return check
    config_path = folder / "config.json"
    config = _read_json(config_path, check) if config_path.is_file() else None
    if config is None:
        if not config_path.is_file():
            check.errors.append("config.json is missing")
        return check
    towers = config.get("towers") or ["cxr", "ct", "text"]
    auto_map = config.get("auto_map") or {}
    needed = ["AutoConfig", "AutoModel"] + ([ZERO_SHOT_AUTO_CLASS] if "cxr" in towers else [])
    for name in needed:
        if name not in auto_map:
            check.errors.append(f"config.json: auto_map has no {name} entry (remote code cannot load the model)")
    for name, ref in auto_map.items():
        _check_class_ref(folder, ref, f"config.json {name}", check)


    for path in sorted(folder.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        # transformers' own parser: the files it will look for when it loads this module as remote code.
        for module in get_relative_imports(path):
            if not (folder / f"{module}.py").is_file():
                check.errors.append(f"{path.name}: imports .{module}, but {module}.py is not in the folder")
        if _PACKAGE_IMPORT.search(source):
            check.errors.append(f"{path.name}: imports the x2ctclip package; remote code must only use relative imports")

    shards = folder / "model.safetensors.index.json"
    if shards.is_file():
        index = _read_json(shards, check) or {}
        for shard in sorted(set((index.get("weight_map") or {}).values())):
            if not (folder / shard).is_file():
                check.errors.append(f"model.safetensors.index.json: shard {shard} is missing")
    elif not (folder / "model.safetensors").is_file():
        check.errors.append("model.safetensors is missing")
    else:
        try:
            with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
                if not list(handle.keys()):
                    check.errors.append("model.safetensors holds no tensor")
        except Exception as err:
            check.errors.append(f"model.safetensors: unreadable ({type(err).__name__}: {err})")
    for pickled in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        check.errors.append(f"{pickled.name}: pickled weights do not belong in a Hub repo (use safetensors)")

    if "cxr" in towers:
        _check_image_processor(folder, check)
    if "text" in towers:
        if not (folder / "tokenizer_config.json").is_file() or not (
            (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
        ):
            check.errors.append("tokenizer files are missing (tokenizer_config.json and tokenizer.json or vocab.txt)")

    check.errors += _local_path_problems(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        check.errors.append("README.md (the model card) is missing")
    else:
        check.errors += [f"README.md: {p}" for p in validate_card(readme, towers=towers)]
    return check


# An absolute POSIX path in prose: a "/" not preceded by a word character, ":" or "/" (URLs, "and/or"), then at least
# two components; and the temporary names writers use before the final rename.
PROSE_PATH = re.compile(r"(?<![\w:/.~])/(?:[\w.-]+/)+[\w.-]+")
_TEMP_NAME = re.compile(r"\.tmp-|(?<![\w])\.tmp\b|tmp-model")


def _local_path_problems(folder: Path) -> list[str]:
    """Absolute local paths or temporary folder names in the card and the JSON configuration files: they name the
    machine that wrote the folder and mean nothing to a Hub user."""
    problems = []
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        for pattern, what in ((PROSE_PATH, "an absolute local path"), (_TEMP_NAME, "a temporary folder name")):
            found = sorted(set(pattern.findall(text)))
            if found:
                problems.append(f"README.md: names {what} ({', '.join(found[:3])})")

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str) and (
            (os.path.isabs(value) and value.count("/") >= 2) or _TEMP_NAME.search(value)
        ):
            problems.append(f"{where}: {value!r} is a local path or temporary name; record a Hub id or a relative path")

    for name in ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                walk(json.loads(path.read_text(encoding="utf-8")), name)
            except (OSError, json.JSONDecodeError):
                pass  # reported by the checks that read the file
    return problems


def _check_image_processor(folder: Path, check: FolderCheck) -> None:
    """The CXR image processor must be found by ``AutoImageProcessor`` (class name + remote code)."""
    config = None
    processor_file = folder / "processor_config.json"
    if processor_file.is_file():
        processor = _read_json(processor_file, check) or {}
        if isinstance(processor.get("image_processor"), dict):
            config = processor["image_processor"]
        for name, ref in (processor.get("auto_map") or {}).items():
            _check_class_ref(folder, ref, f"processor_config.json {name}", check)
        if "AutoProcessor" not in (processor.get("auto_map") or {}):
            check.warnings.append("processor_config.json: no auto_map AutoProcessor entry (AutoProcessor needs the package)")
    if config is None and (folder / "preprocessor_config.json").is_file():
        config = _read_json(folder / "preprocessor_config.json", check)
    if config is None:
        check.errors.append("no image processor configuration (processor_config.json or preprocessor_config.json)")
        return
    if not config.get("image_processor_type"):
        check.errors.append("image processor configuration has no image_processor_type")
    auto_map = config.get("auto_map") or {}
    if "AutoImageProcessor" not in auto_map:
        check.errors.append(
            "image processor configuration has no auto_map AutoImageProcessor entry: AutoImageProcessor (and the "
            "zero-shot-image-classification pipeline) cannot load it without the x2ctclip package"
        )
    for name, ref in auto_map.items():
        _check_class_ref(folder, ref, f"image processor {name}", check)


def check_hub_folder(folder: str | os.PathLike) -> FolderCheck:
    """:func:`validate_hub_folder`, raising ``ValueError`` that lists every error when there is one."""
    check = validate_hub_folder(folder)
    if check.errors:
        raise ValueError(f"{folder} is not a complete Hub model folder:\n  - " + "\n  - ".join(check.errors))
    return check
