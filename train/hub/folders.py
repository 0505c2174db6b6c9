"""The one save path of every model folder the package writes (``x2ctclip quickstart``, ``train ctclip``, ``train
x2ct``, ``assemble``, ``convert-ctclip``; ``evaluate calibrate`` edits a folder written by one of them).

:func:`finish_model_folder` turns a ``save_pretrained`` folder into a Hub repository folder: it makes the JSON
configuration portable (no absolute local path, no temporary folder name), checks the ``auto_map``, writes the model
card with :func:`x2ctclip.train.hub.cards.build_model_card` (the one card builder) and validates the result with
:func:`x2ctclip.train.hub.validation.check_hub_folder`. :func:`save_model_folder` does ``save_pretrained`` (model, processor or
its parts) into a temporary sibling, finishes it there and renames it, so a failure leaves no half-written folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import metadata_load

from x2ctclip.fileio import atomic_dir, write_atomic
from x2ctclip.processors.tokenization import MINILM_NAMES
from x2ctclip.train.hub.card_sections import (
    bullet_list,
    folder_files,
    pip_requirements,
    saved_logit_scale,
    section_files,
)
from x2ctclip.train.hub.cards import build_model_card
from x2ctclip.train.hub.metadata import CTCLIP_LICENSE, is_repo_id
from x2ctclip.train.hub.portable import add_zero_shot_auto_map, make_configs_portable, portable_reference
from x2ctclip.train.hub.validation import PROSE_PATH, validate_hub_folder

__all__ = [
    "finish_model_folder",
    "portable_reference",
    "read_card_metadata",
    "refresh_model_folder",
    "run_training_info",
    "save_model_folder",
]

def read_card_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The YAML metadata of ``folder/README.md`` parsed by huggingface_hub ({} without a card)."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {}
    return metadata_load(readme) or {}


def _inherited(source: str | os.PathLike | None) -> tuple[list[str], list[str]]:
    """``(base_models, datasets)`` a model built on ``source`` (a Hub id or a model folder) inherits: the Hub id
    itself, or the card metadata of the folder (its own base models and data sets)."""
    if not source:
        return [], []
    source = str(source)
    if source in MINILM_NAMES:  # shipped offline as a package; it is a copy of this Hub model
        return [MINILM_NAMES[-1]], []
    if not Path(source).exists():
        return ([source] if is_repo_id(source) else []), []
    meta = read_card_metadata(source)
    return bullet_list(meta.get("base_model")), bullet_list(meta.get("datasets"))


def run_training_info(title: str, summary: str, options: Mapping[str, Any], result: Mapping[str, Any],
                      extra: str = "") -> dict[str, Any]:
    """The card's record of one training run (``TrainResult.to_dict()`` and the stage's options): only what the run
    measured or was given; local paths in the options become portable (:func:`portable_reference`)."""
    hyper = {k: portable_reference(v) if isinstance(v, str) else v for k, v in options.items()
             if k not in ("output_dir", "resume") and v is not None}
    description = f"**{title}.** {summary}" + (f"\n\n{extra}" if extra else "")
    # Summaries name the data and teacher folders; on the card they become folder names or Hub ids.
    description = PROSE_PATH.sub(lambda m: portable_reference(m.group(0)) or "(temporary folder)", description)
    info: dict[str, Any] = {"description": description, "hyperparameters": hyper}
    facts = (("global_step", "optimiser steps", None), ("epochs", "epochs", 3),
             ("samples_seen", "training rows seen", None), ("train_runtime_s", "training runtime (s)", 1),
             ("train_loss", "final training loss", 6))
    for key, label, digits in facts:
        value = result.get(key)
        if isinstance(value, (int, float)):
            info[label] = round(float(value), digits) if digits else value
    for key, value in sorted((result.get("eval_metrics") or {}).items()):
        if isinstance(value, (int, float)) and value == value:
            info[f"validation {key} (last evaluation, training data's valid split)"] = round(float(value), 6)
    return info


def finish_model_folder(
    folder: str | os.PathLike,
    *,
    model_id: str | None = None,
    training_info: Mapping[str, Any] | None = None,
    metrics: Any = None,
    base_models: Sequence[str] = (),
    datasets: Sequence[str] = (),
    built_on: Sequence[str | os.PathLike] = (),
    license: str = CTCLIP_LICENSE,
    tags: Sequence[str] = (),
    model_name: str | None = None,
    require_tokenizer: bool = True,
) -> Path:
    """Make a ``save_pretrained`` folder a Hub folder in place (see the module docstring); returns its card path.

    Args:
        folder: the folder (model weights and config already saved; processor / tokenizer saved where they exist).
        model_id: the name the card's usage example loads (a Hub id or the final folder name; never a temporary one).
        training_info: measured facts about the training run for the card (see ``build_model_card``).
        metrics: measured evaluation results for the ``model-index`` (see ``load_evaluation_results``).
        base_models / datasets: Hub ids for the card metadata.
        built_on: Hub ids or model folders the weights come from (e.g. the CT-CLIP teacher): a Hub id is added to
            ``base_model``; a folder passes on its own card's ``base_model`` and ``datasets``.
        license / tags / model_name: for the card.
        require_tokenizer: ``False`` accepts a folder without the report tokenizer (its source had none, as a CT-CLIP
            conversion without ``--tokenizer``); every other check still applies.

    Raises:
        ValueError: the folder fails ``validate_hub_folder`` (every problem listed).
    """
    folder = Path(folder)
    make_configs_portable(folder)
    config = add_zero_shot_auto_map(folder)
    bases, data = list(base_models), list(datasets)
    for source in built_on:
        more_bases, more_data = _inherited(source)
        bases += [b for b in more_bases if b not in bases]
        data += [d for d in more_data if d not in data]
    logit_scale = saved_logit_scale(folder)
    card = build_model_card(
        config,
        metrics=metrics,
        training_info=training_info,
        model_id=model_id or folder.name,
        model_name=model_name,
        license=license,
        base_models=bases,
        datasets=data,
        tags=tags,
        files=[f for f in folder_files(folder) if f[0] != "README.md"] + [("README.md", None)],
        requirements=pip_requirements(folder),
        logit_scale=logit_scale,
    )
    card.save(folder / "README.md")
    check = validate_hub_folder(folder)
    errors = [e for e in check.errors if require_tokenizer or not e.startswith("tokenizer files are missing")]
    if errors:
        raise ValueError(f"{folder} is not a complete Hub model folder:\n  - " + "\n  - ".join(errors))
    return folder / "README.md"


def save_model_folder(
    model: Any,
    out_dir: str | os.PathLike,
    *,
    processor: Any = None,
    image_processor: Any = None,
    tokenizer: Any = None,
    state_dict: Mapping[str, Any] | None = None,
    in_place: bool = False,
    **card: Any,
) -> Path:
    """``save_pretrained`` ``model`` (safetensors) and its processor or parts, then :func:`finish_model_folder`.

    Args:
        model: an X2CT-CLIP transformers model.
        out_dir: the final folder. Replaced atomically: written as a temporary sibling and renamed when complete;
            ``in_place=True`` writes into ``out_dir`` directly (the caller already writes into a temporary folder
            that it renames, as the Trainer does).
        processor / image_processor / tokenizer: what ``save_pretrained``s next to the weights.
        state_dict: the full state (gathered under sharded training), passed on to ``save_pretrained``.
        **card: keyword arguments of :func:`finish_model_folder` (``model_id`` defaults to ``out_dir``'s name).
    """
    out_dir = Path(out_dir)
    card.setdefault("model_id", out_dir.name)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, state_dict=state_dict)
        for part in (processor, image_processor, tokenizer):
            if part is not None:
                part.save_pretrained(folder)
        finish_model_folder(folder, **card)

    if in_place:
        out_dir.mkdir(parents=True, exist_ok=True)
        write(out_dir)
    else:
        with atomic_dir(out_dir) as tmp:
            write(tmp)
    return out_dir


def refresh_model_folder(folder: str | os.PathLike) -> list[str]:
    """After a command added files to a finished folder (``evaluate calibrate``: ``calibration`` in config.json,
    ``calibration.json``): make the configs portable again and rewrite the card's ``## Files`` table from what is in
    the folder, keeping the rest of the card. Returns the folder's remaining Hub-folder errors (an older folder may
    have some; they are the caller's to report, the edit itself is done)."""
    folder = Path(folder)
    make_configs_portable(folder)
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        files = [f for f in folder_files(folder) if f[0] != "README.md"] + [("README.md", None)]
        table = section_files(files)
        new = re.sub(r"(\n## Files\n\n)(.*?)(\n\n## |\Z)", lambda m: m.group(1) + table + m.group(3), text,
                     count=1, flags=re.DOTALL)
        if new != text:
            write_atomic(readme, new)
    return validate_hub_folder(folder).errors
