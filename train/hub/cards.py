"""Model cards for X2CT-CLIP and converted CT-CLIP folders, built from the template and the card sections."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from tqdm.auto import tqdm

from x2ctclip.fileio import write_atomic
from x2ctclip.train.hub.card_sections import (
    bullet_list,
    config_dict,
    folder_files,
    pip_requirements,
    render,
    saved_logit_scale,
    section_evaluation,
    section_files,
    section_license,
    section_prompts,
    section_training,
    section_usage,
    towers_details,
)
from x2ctclip.train.hub.metadata import (
    CTCLIP_CITATION,
    CTCLIP_DATASET,
    CTCLIP_LICENSE,
    CXR_BERT,
    DEFAULT_TAGS,
    LIBRARY_NAME,
    PIPELINE_TAG,
    X2CTCLIP_CITATION,
    is_repo_id,
)
from x2ctclip.train.hub.portable import make_configs_portable
from x2ctclip.train.hub.results import load_evaluation_results
from x2ctclip.train.hub.validation import license_problems, validate_card


def _read_training_info(training_info: Mapping[str, Any] | str | os.PathLike | None) -> Mapping[str, Any] | None:
    """``training_info`` as a mapping (a JSON file path is read); ``ValueError`` / ``FileNotFoundError`` naming it."""
    if isinstance(training_info, (str, os.PathLike)):
        path = Path(training_info)
        try:
            training_info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: training info file not found.") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable JSON file ({err}).") from None
    if training_info is not None and not isinstance(training_info, Mapping):
        raise ValueError(f"training_info must be a dict or a JSON file path, got {type(training_info).__name__}.")
    return training_info


def _card_prose(model_name: str, n_findings: int, has_cxr: bool) -> tuple[str, str, str, str]:
    """The card's fixed prose: ``(summary, intended use, limitations, CXR note)`` for an X2CT-CLIP model, or for
    CT and report towers only (``has_cxr=False``)."""
    summary = (
        f"**{model_name}** is an [X2CT-CLIP](https://arxiv.org/abs/2503.02162) model: a chest X-ray (CXR) encoder "
        "aligned with the CT and report encoders of [CT-CLIP](https://arxiv.org/abs/2403.17834) in one latent space, "
        f"so that it scores {n_findings} abnormalities labelled on chest CT (the CT-RATE "
        "findings) from a frontal chest radiograph, zero-shot, by comparing the CXR embedding with report-style "
        "prompts."
    )
    intended = (
        "- Research on transferring CT-level findings to chest radiographs: zero-shot scoring of the listed findings, "
        "CXR-CT-report retrieval, and CXR embeddings (`get_cxr_features`) for linear probes or few-shot heads.\n"
        "- Benchmarking against other CXR models on data you are allowed to use.\n\n"
        "Out of scope: any clinical use (diagnosis, triage, screening, reporting), use on lateral views or on "
        "non-chest images, and decisions about individual patients."
    )
    limitations = (
        "- **Trained on simulated CXRs.** The CXR encoder learnt from radiographs computed from CT volumes (see below), "
        "not from real X-ray exposures. Real radiographs differ (beam hardening, scatter, detector response, "
        "positioning, post-processing); performance on real CXRs is expected to be lower and must be measured.\n"
        "- **Label noise.** CT-RATE's labels were extracted from reports by a RadBERT classifier; about 4 % of the "
        "validation labels change when it is re-run, so metrics have a noise floor.\n"
        "- **Population.** CT-RATE holds non-contrast chest CTs from a single source; the model has not been "
        "characterised on other populations, scanners, children or acquisition protocols.\n"
        "- **Findings.** Only the findings listed below are scored. Many are CT-level findings (e.g. small nodules, "
        "coronary calcification) that may be invisible on a radiograph; a score is a correlate learnt from data, not "
        "evidence that the finding is visible.\n"
        "- **Scores are not calibrated probabilities**; pick operating points on your own validation data."
    )
    cxr_note = (
        "It was trained on CXRs *simulated* from CT volumes; its behaviour on real radiographs has to be validated on "
        "real data first."
    )
    if not has_cxr:
        summary = (
            f"**{model_name}** holds the CT and report encoders of a [CT-CLIP](https://arxiv.org/abs/2403.17834) "
            "model (no chest X-ray tower): it aligns chest CT volumes with their radiology reports and scores the "
            f"{n_findings} listed findings zero-shot from a CT volume. These towers are the "
            "frozen teachers of an X2CT-CLIP chest X-ray encoder."
        )
        intended = (
            "- Research on 3D chest CT: zero-shot scoring of the listed findings from a CT volume, CT-report "
            "retrieval, CT and report embeddings.\n- The frozen CT and report towers of X2CT-CLIP.\n\n"
            "Out of scope: any clinical use, and commercial use where the license is non-commercial."
        )
        limitations = (
            "- CT-RATE's labels were extracted from reports by a RadBERT classifier (about 4 % of validation labels "
            "change when it is re-run).\n- Inputs must be preprocessed as the volume processor of this folder does "
            "(HU window, spacing, crop / pad); other preprocessing silently degrades the scores.\n"
            "- Populations, scanners and protocols other than the training data's are uncharacterised.\n"
            "- Scores are not calibrated probabilities."
        )
    return summary, intended, limitations, cxr_note


def build_model_card(
    config: Any,
    *,
    metrics: str | os.PathLike | Mapping | Sequence | None = None,
    training_info: Mapping[str, Any] | str | os.PathLike | None = None,
    model_id: str | None = None,
    model_name: str | None = None,
    license: str = CTCLIP_LICENSE,
    license_name: str | None = None,
    license_link: str | None = None,
    base_models: str | Sequence[str] | None = None,
    datasets: str | Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    files: Sequence[tuple[str, int]] = (),
    requirements: Sequence[str] = (),
    parameter_counts: Mapping[str, int] | None = None,
    logit_scale: float | None = None,
    ctclip_derived: bool = True,
    training_text: str | None = None,
) -> ModelCard:
    """The one model card builder: every model folder the package writes gets its card from here (an X2CT-CLIP model
    with a CXR tower, a CT-CLIP stage or conversion with CT and report towers only).

    Args:
        config: the model's :class:`~x2ctclip.X2CTCLIPConfig` (or its dict).
        metrics: measured evaluation results, see :func:`load_evaluation_results`; ``None`` -> no ``model-index``.
        training_info: what is known about the training run (a dict or a JSON path): ``datasets`` and
            ``base_models`` (Hub ids, merged into the metadata), ``description``, ``simulation`` (e.g. the
            preprocessing's ``preprocess_config.json``), ``hyperparameters``, and any other key (listed as is).
        model_id: the Hub repository id used in the usage example (default ``"<model_name>"``, a local folder name).
        model_name: the card's title and ``model-index`` name.
        license: Hub license id; CT-CLIP-derived weights are ``cc-by-nc-sa-4.0`` (the default). ``"other"`` needs
            ``license_name`` and ``license_link``.
        base_models / datasets: Hub ids for the metadata (only those given, never guessed).
        tags: extra tags added to :data:`DEFAULT_TAGS`.
        files: ``(name, size in bytes or None)`` of the repository files, for the card's file table.
        requirements: pip names the remote code imports.
        parameter_counts: parameters per tower, for the details section.
        logit_scale: the weights' (log) logit scale, for the details section.
        ctclip_derived: the CT / report towers come from CT-CLIP (adds the CC BY-NC-SA notice and the citation).
        training_text: Markdown for the training section, replacing the one made from ``training_info``.

    Without a CXR tower the card has no ``pipeline_tag`` (no transformers pipeline task takes a CT volume and
    report prompts) and describes CT and report encoders.

    Raises:
        ValueError: for an unknown license, malformed evaluation results, training info or base model / data set
            names that are not Hub ids.
    """
    config = config_dict(config)
    training_info = _read_training_info(training_info)
    results = load_evaluation_results(metrics)
    towers = config.get("towers") or ["cxr", "ct", "text"]
    has_cxr = "cxr" in towers
    model_name = model_name or (model_id.split("/")[-1] if model_id else "x2ctclip-model")
    model_id = model_id or model_name
    info = dict(training_info or {})
    base = bullet_list(base_models) + [m for m in bullet_list(info.get("base_models")) if m not in bullet_list(base_models)]
    data = bullet_list(datasets) + [d for d in bullet_list(info.get("datasets")) if d not in bullet_list(datasets)]
    default_tags = [t for t in DEFAULT_TAGS if has_cxr or t != "chest-x-ray"]
    all_tags = default_tags + [t for t in (tags or []) if t not in default_tags]
    bad_ids = [name for name in base + data if not is_repo_id(name)]
    if bad_ids:
        raise ValueError(f"base_models / datasets must be Hub ids ('owner/name'), got {bad_ids}.")
    eval_results = [r for result in results for r in result.to_eval_results()]
    card_data = ModelCardData(
        license=license,
        license_name=license_name if license == "other" else None,
        license_link=license_link if license == "other" else None,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG if has_cxr else None,
        tags=all_tags,
        base_model=base or None,
        datasets=data or None,
        language=["en"],
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    problems = license_problems(license, license_name, license_link)
    if problems:
        raise ValueError("; ".join(problems))
    summary, intended, limitations, cxr_note = _card_prose(model_name, len(config.get("findings") or []), has_cxr)
    cites = ([X2CTCLIP_CITATION] if has_cxr else []) + ([CTCLIP_CITATION] if ctclip_derived or not has_cxr else [])
    citation = "```bibtex\n" + "\n\n".join(cites) + "\n```"
    return render(
        card_data,
        model_name=model_name,
        summary=summary,
        cxr_note=cxr_note if has_cxr else "",
        has_cxr=has_cxr,
        model_details=towers_details(config, parameter_counts, logit_scale),
        intended_use=intended,
        limitations=limitations,
        training_section=training_text if training_text is not None else section_training(training_info, has_cxr),
        prompts_section=section_prompts(config),
        evaluation_section=section_evaluation(results),
        usage_section=section_usage(model_id, config, requirements),
        files_section=section_files(files),
        license_section=section_license(license, license_name, license_link, ctclip_derived),
        citation_section=citation,
    )


def build_ctclip_model_card(
    config: Any,
    *,
    source_checkpoint: str | os.PathLike | None = None,
    checkpoint_sha256: str | None = None,
    model_id: str | None = None,
    model_name: str | None = None,
    metrics: str | os.PathLike | Mapping | Sequence | None = None,
    files: Sequence[tuple[str, int]] = (),
    requirements: Sequence[str] = (),
    has_tokenizer: bool = True,
    logit_scale: float | None = None,
) -> ModelCard:
    """Model card of a CT-CLIP checkpoint converted with ``x2ctclip convert-ctclip`` (CT and report towers).

    The original license (CC BY-NC-SA 4.0) and the CT-CLIP citation are carried over; the source checkpoint's file
    name, size and SHA-256 (when given) record where the weights came from.
    """
    model_name = model_name or (model_id.split("/")[-1] if model_id else "ct-clip-transformers")
    provenance = ["Converted from the original CT-CLIP checkpoint with `x2ctclip convert-ctclip`; every tensor of the "
                  "encoder path is copied unchanged (the decoder-side tensors CT-CLIP stores are dropped)."]
    if source_checkpoint is not None:
        path = Path(source_checkpoint)
        detail = f"Source file: `{path.name}`"
        if path.is_file():
            detail += f", {path.stat().st_size:,} bytes"
        if checkpoint_sha256:
            detail += f", SHA-256 `{checkpoint_sha256}`"
        provenance.append(detail + ".")
    if not has_tokenizer:
        provenance.append(
            f"**No tokenizer was saved with this conversion.** The report tower needs CXR-BERT's tokenizer (`{CXR_BERT}`); "
            "add it to this folder (`BertTokenizer.from_pretrained(...).save_pretrained(folder)`) before using it."
        )
    training = (
        f"CT-CLIP was trained by its authors on the CT-RATE training split (`{CTCLIP_DATASET}`: 20,000 patients, "
        "non-contrast chest CT volumes paired with their radiology reports); its report tower starts from CXR-BERT "
        f"(`{CXR_BERT}`). Nothing was re-trained here.\n\n" + "\n\n".join(provenance)
    )
    return build_model_card(
        config,
        metrics=metrics,
        model_id=model_id,
        model_name=model_name,
        license=CTCLIP_LICENSE,
        base_models=[CXR_BERT],
        datasets=[CTCLIP_DATASET],
        tags=["ct-clip", "3d"],
        files=files,
        requirements=requirements,
        logit_scale=logit_scale,
        ctclip_derived=True,
        training_text=training,
    )


def write_ctclip_model_card(
    out_dir: str | os.PathLike,
    *,
    source_checkpoint: str | os.PathLike | None = None,
    compute_sha256: bool = False,
    model_id: str | None = None,
    metrics: str | os.PathLike | Mapping | Sequence | None = None,
) -> Path:
    """Write ``README.md`` (the model card) into a folder made by ``x2ctclip convert-ctclip``.

    Args:
        out_dir: the converted folder (``config.json`` with ``towers`` ``["ct", "text"]``, weights, tokenizer).
        source_checkpoint: the CT-CLIP checkpoint it was converted from (its name and size go on the card).
        compute_sha256: also hash the checkpoint (reads the whole file: ~1.7 GB for ``CT-CLIP_v2.pt``).
        model_id: the Hub id the card's usage example loads (default: the folder name).
        metrics: measured results for the ``model-index`` (see :func:`load_evaluation_results`).

    Returns:
        The path of the card. The folder is then checked with :func:`validate_hub_folder`; a missing tokenizer is
        reported on the card (and by the validation) rather than refused, since the tokenizer may be added later.

    Raises:
        FileNotFoundError: no ``config.json`` in ``out_dir``.
        ValueError: the folder's config is not a CT-CLIP conversion (no CT or report tower).
    """
    out_dir = Path(out_dir)
    config_path = out_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no config.json; convert a checkpoint first (x2ctclip convert-ctclip).")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not a readable JSON config ({err}).") from None
    towers = config.get("towers") or []
    if "ct" not in towers or "text" not in towers:
        raise ValueError(f"{config_path}: towers {towers} are not a CT-CLIP conversion (needs 'ct' and 'text').")
    digest = None
    if source_checkpoint is not None and compute_sha256:
        sha = hashlib.sha256()
        size = Path(source_checkpoint).stat().st_size
        with open(source_checkpoint, "rb") as handle, tqdm(
            total=size, unit="B", unit_scale=True, desc="sha256", disable=size < (256 << 20)
        ) as bar:
            for block in iter(lambda: handle.read(1 << 24), b""):
                sha.update(block)
                bar.update(len(block))
        digest = sha.hexdigest()
    has_tokenizer = (out_dir / "tokenizer_config.json").is_file()
    logit_scale = saved_logit_scale(out_dir)
    card = build_ctclip_model_card(
        config,
        source_checkpoint=source_checkpoint,
        checkpoint_sha256=digest,
        model_id=model_id or out_dir.name,
        metrics=metrics,
        files=[f for f in folder_files(out_dir) if f[0] != "README.md"] + [("README.md", None)],
        requirements=pip_requirements(out_dir),
        has_tokenizer=has_tokenizer,
        logit_scale=logit_scale,
    )
    problems = validate_card(card, towers=towers)
    if problems:
        raise ValueError("The CT-CLIP model card is invalid: " + "; ".join(problems))
    make_configs_portable(out_dir)  # e.g. the tokenizer's name_or_path: the folder it was copied from
    write_atomic(out_dir / "README.md", str(card))
    return out_dir / "README.md"
