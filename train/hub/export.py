"""Writing a model folder for the Hub: weights, remote code, auto_map, card."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from x2ctclip.fileio import atomic_dir
from x2ctclip.train.hub.card_sections import folder_files, pip_requirements
from x2ctclip.train.hub.cards import build_model_card
from x2ctclip.train.hub.portable import add_zero_shot_auto_map, make_configs_portable
from x2ctclip.train.hub.results import load_evaluation_results
from x2ctclip.train.hub.validation import check_hub_folder


def _py_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.py")}


def _parameter_counts(model: Any) -> dict[str, int]:
    counts = {}
    for tower in ("cxr", "ct", "text"):
        module, projection = getattr(model, f"{tower}_model", None), getattr(model, f"{tower}_projection", None)
        if module is not None:
            counts[tower] = sum(p.numel() for m in (module, projection) if m is not None for p in m.parameters())
    return counts


def save_for_hub(
    model: Any,
    processor: Any,
    out_dir: str | os.PathLike,
    metrics: str | os.PathLike | Mapping | Sequence | None = None,
    training_info: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    model_id: str | None = None,
    overwrite: bool = False,
    **card_kwargs: Any,
) -> Path:
    """Write ``model`` and ``processor`` as a complete Hub repository folder, model card included.

    The folder holds ``config.json`` (``auto_map`` for ``AutoConfig``, ``AutoModel`` and
    ``AutoModelForZeroShotImageClassification``), ``model.safetensors``, the modeling and processing files for remote
    code, the processor and tokenizer files and ``README.md``. It loads with ``AutoModel`` / ``AutoProcessor``
    (``trust_remote_code=True``) where ``x2ctclip`` is not installed, and with
    ``pipeline("zero-shot-image-classification", model=out_dir, trust_remote_code=True)``.

    Args:
        model: an :class:`~x2ctclip.X2CTCLIPModel` with a CXR and a report tower.
        processor: its processor (a ``ProcessorMixin`` with ``image_processor`` = the CXR image processor and
            ``tokenizer`` = the report tokenizer), e.g. ``X2CTCLIPProcessor``.
        out_dir: the folder to write; it must not exist or be empty unless ``overwrite``.
        metrics: evaluation results for the card's ``model-index`` (see :func:`load_evaluation_results`); ``None``
            writes no ``model-index``.
        training_info: what is known about the training run (see :func:`build_model_card`).
        model_id: the Hub id the card's usage example loads (e.g. ``"you/x2ctclip-swin"``).
        overwrite: replace a non-empty ``out_dir``.
        **card_kwargs: ``license``, ``license_name``, ``license_link``, ``base_models``, ``datasets``, ``tags``,
            ``model_name``, ``ctclip_derived`` for :func:`build_model_card`.

    The folder is written under a temporary name next to ``out_dir`` and renamed only after
    :func:`validate_hub_folder` passed, so a failure leaves no half-written repository.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: a model without CXR / report tower, a processor without image processor / tokenizer, a
            non-empty ``out_dir``, two remote-code files with the same name and different content, or a folder
            that fails validation (all problems listed).
    """
    out_dir = Path(out_dir)
    config = getattr(model, "config", None)
    towers = list(getattr(config, "towers", None) or [])
    if config is None or not hasattr(model, "save_pretrained"):
        raise ValueError(f"save_for_hub needs a transformers model (X2CTCLIPModel), got {type(model).__name__}.")
    missing = [t for t in ("cxr", "text") if t not in towers]
    if missing:
        raise ValueError(
            f"save_for_hub packages zero-shot CXR models; this model has no {' and no '.join(missing)} tower "
            f"(towers {towers}). For converted CT-CLIP folders use write_ctclip_model_card."
        )
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise ValueError(
            f"save_for_hub needs a processor with an image_processor (CXR) and a tokenizer (reports), got "
            f"{type(processor).__name__}."
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ValueError(f"{out_dir}: exists and is not an empty folder; choose another one or pass overwrite=True.")
    load_evaluation_results(metrics)  # fail on malformed results before writing anything

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        model_code = _py_digests(tmp)
        processor.save_pretrained(tmp)
        after = _py_digests(tmp)
        clashes = sorted(n for n, digest in model_code.items() if after.get(n) != digest)
        if clashes:
            raise ValueError(
                f"The processing code overwrote model code files with the same name: {clashes}. Remote-code files are "
                "copied flat into one folder, so modeling_x2ctclip/ and processors/ must not share file names."
            )
        add_zero_shot_auto_map(tmp)  # save_for_hub refused models without both towers above
        make_configs_portable(tmp)  # e.g. a tokenizer's name_or_path: the local folder it was loaded from
        card = build_model_card(
            config,
            metrics=metrics,
            training_info=training_info,
            model_id=model_id or out_dir.name,
            files=folder_files(tmp) + [("README.md", None)],
            requirements=pip_requirements(tmp),
            parameter_counts=_parameter_counts(model),
            logit_scale=float(model.logit_scale.detach()) if hasattr(model, "logit_scale") else None,
            **card_kwargs,
        )
        card.save(tmp / "README.md")
        check_hub_folder(tmp)
    return out_dir
