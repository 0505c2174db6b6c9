"""Hugging Face Hub packaging: a saved X2CT-CLIP folder as a complete, honest Hub model repository.

- :func:`save_for_hub` writes ``model.safetensors``, ``config.json`` (with ``auto_map`` for ``AutoConfig``,
  ``AutoModel`` and ``AutoModelForZeroShotImageClassification``), the modeling and processing files for remote code,
  the processor and tokenizer files and a ``README.md`` model card, then checks the folder
  (:func:`validate_hub_folder`) before it appears under its final name.
- :func:`build_model_card` / :func:`write_ctclip_model_card` make the cards (``huggingface_hub.ModelCard`` from
  ``resources/model_card_template.md``): metadata (license, ``library_name``, ``pipeline_tag``, tags, base models,
  data sets, a ``model-index`` only with results read from an evaluation JSON), intended use and limits, how the
  training CXRs were simulated, the prompt set of the config, and a usage snippet that runs against the folder.
- :func:`validate_card` checks card metadata locally (no network: ``ModelCard.validate`` posts to the Hub).
- :func:`push_folder` uploads with ``HfApi.create_repo`` + ``HfApi.upload_folder``; ``dry_run=True`` lists the files
  (with sizes) that would go up and validates everything without any network access.

The evaluation JSON read by :func:`load_evaluation_results` is documented in ``docs/hub.md``. The commands that write
model folders (quickstart, train, assemble, convert-ctclip, evaluate calibrate) finish them through
:mod:`x2ctclip.train.hub_folders`, which uses this module's card builder and folder check.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = [
    "CTCLIP_CITATION",
    "CTCLIP_LICENSE",
    "DEFAULT_TAGS",
    "EvaluationResult",
    "FolderCheck",
    "PushResult",
    "X2CTCLIP_CITATION",
    "build_ctclip_model_card",
    "build_model_card",
    "check_hub_folder",
    "list_upload_files",
    "load_evaluation_results",
    "push_folder",
    "save_for_hub",
    "training_info_from_preprocess_config",
    "usage_snippet",
    "validate_card",
    "validate_hub_folder",
    "write_ctclip_model_card",
]

TEMPLATE_PATH = Path(__file__).resolve().parent / "resources" / "model_card_template.md"

#: CT-CLIP and CT-RATE are released under CC BY-NC-SA 4.0. Its ShareAlike clause covers derivative weights, so every
#: model whose CT or report tower comes from CT-CLIP (all X2CT-CLIP models of the paper) carries it by default.
CTCLIP_LICENSE = "cc-by-nc-sa-4.0"
PIPELINE_TAG = "zero-shot-image-classification"
LIBRARY_NAME = "transformers"
ZERO_SHOT_AUTO_CLASS = "AutoModelForZeroShotImageClassification"
DEFAULT_TAGS = ("x2ctclip", "clip", "medical-imaging", "radiology", "chest-x-ray", "computed-tomography", "custom_code")
CTCLIP_DATASET = "ibrahimhamamci/CT-RATE"
CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"

X2CTCLIP_CITATION = """@article{you2025x2ctclip,
  title   = {X2CT-CLIP: Enable Multi-Abnormality Detection in Computed Tomography from Chest Radiography via
             Tri-Modal Contrastive Learning},
  author  = {You, Jianzhong and Gao, Yuan and Kim, Sangwook and Mcintosh, Chris},
  journal = {arXiv preprint arXiv:2503.02162},
  year    = {2025}
}"""

CTCLIP_CITATION = """@article{hamamci2024ctclip,
  title   = {Developing Generalist Foundation Models from a Multimodal Dataset for 3D Computed Tomography},
  author  = {Hamamci, Ibrahim Ethem and Er, Sezgin and others},
  journal = {arXiv preprint arXiv:2403.17834},
  year    = {2024}
}"""

# License identifiers the Hub accepts in card metadata (https://huggingface.co/docs/hub/repositories-licenses); the
# ones a medical-imaging model plausibly uses. Anything else must be "other" with license_name and license_link.
HUB_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0",
        "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "gpl-3.0",
        "lgpl-3.0", "agpl-3.0", "mpl-2.0", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
        "llama2", "llama3", "gemma", "unlicense", "other",
    }
)  # fmt: skip
_LICENSE_NAMES = {
    "cc-by-nc-sa-4.0": ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    "apache-2.0": ("Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
    "mit": ("MIT License", "https://opensource.org/licenses/MIT"),
}


def _is_repo_id(value: Any) -> bool:
    """``owner/name`` as ``huggingface_hub.utils.validate_repo_id`` accepts it (a bare name is not a full Hub id)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or value.count("/") != 1:
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


# Remote-code import names whose pip distribution has another name.
_PIP_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "skimage": "scikit-image"}
_HIDDEN_UPLOAD_PATTERNS = [".*", "*/.*", "__pycache__", "*/__pycache__/*", "__pycache__/*", "*.pyc"]

# Headline keys of a ``ClassificationReport`` (x2ctclip.train.metrics) -> (Hub metric type, config, display name).
_REPORT_METRICS = {
    "auroc_macro": ("roc_auc", "macro", "AUROC (macro)"),
    "auroc_micro": ("roc_auc", "micro", "AUROC (micro)"),
    "auroc_weighted": ("roc_auc", "weighted", "AUROC (weighted)"),
    "average_precision_macro": ("average_precision", "macro", "Average precision (macro)"),
    "average_precision_micro": ("average_precision", "micro", "Average precision (micro)"),
    "average_precision_weighted": ("average_precision", "weighted", "Average precision (weighted)"),
    "f1_macro": ("f1", "macro", "F1 (macro)"),
    "f1_micro": ("f1", "micro", "F1 (micro)"),
    "precision_macro": ("precision", "macro", "Precision (macro)"),
    "precision_micro": ("precision", "micro", "Precision (micro)"),
    "recall_macro": ("recall", "macro", "Recall (macro)"),
    "recall_micro": ("recall", "micro", "Recall (micro)"),
}


# --------------------------------------------------------------------------------------------------------------
# Evaluation results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Measured results of one model on one data set (one ``model-index`` entry).

    Attributes:
        dataset_name / dataset_type: display name and Hub id (or short identifier) of the test set.
        metrics: ``(type, name, value, config)`` tuples; ``value`` is a float.
        task_type / task_name: the Hub task (default ``zero-shot-image-classification``).
        dataset_split / dataset_config / dataset_revision: optional data set details.
        per_finding: optional rows ``{"name", "auroc", "average_precision", "n_positive", "n_negative"}``.
        n_cases: number of test cases, when known.
        source_name / source_url: where the numbers come from (a paper, a script), when known.
    """

    dataset_name: str
    dataset_type: str
    metrics: list[tuple[str, str, float, str | None]]
    task_type: str = PIPELINE_TAG
    task_name: str | None = None
    dataset_split: str | None = None
    dataset_config: str | None = None
    dataset_revision: str | None = None
    per_finding: list[dict[str, Any]] = field(default_factory=list)
    n_cases: int | None = None
    source_name: str | None = None
    source_url: str | None = None

    def to_eval_results(self) -> list[EvalResult]:
        return [
            EvalResult(
                task_type=self.task_type,
                task_name=self.task_name,
                dataset_type=self.dataset_type,
                dataset_name=self.dataset_name,
                dataset_split=self.dataset_split,
                dataset_config=self.dataset_config,
                dataset_revision=self.dataset_revision,
                metric_type=metric_type,
                metric_name=name,
                metric_value=value,
                metric_config=config,
                # The Hub's model-index needs a URL with a source name; a name alone stays in the card's text.
                source_name=self.source_name if self.source_url else None,
                source_url=self.source_url,
            )
            for metric_type, name, value, config in self.metrics
        ]


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _parse_metrics(raw: Any, where: str) -> list[tuple[str, str, float, str | None]]:
    """Metrics as a list of ``{"type", "value", "name"?, "config"?}`` or a flat ``{key: value}`` dict."""
    metrics = []
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            number = _finite_number(value)
            if number is None:
                continue  # undefined (NaN / None) or not a number (e.g. a nested table): nothing to report
            metric_type, config, name = _REPORT_METRICS.get(key, (key, None, key))
            metrics.append((metric_type, name, number, config))
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or "type" not in item or "value" not in item:
                raise ValueError(f"{where}: metrics[{i}] must be an object with 'type' and 'value', got {item!r}.")
            number = _finite_number(item["value"])
            if number is None:
                raise ValueError(f"{where}: metrics[{i}] ({item['type']}) has a non-numeric value {item['value']!r}.")
            metrics.append((str(item["type"]), str(item.get("name") or item["type"]), number, item.get("config")))
    else:
        raise ValueError(f"{where}: 'metrics' must be a list of objects or a {{name: value}} object, got {type(raw).__name__}.")
    return metrics


def _parse_entry(entry: Any, where: str) -> EvaluationResult:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}.")
    dataset = entry.get("dataset")
    if isinstance(dataset, str):
        dataset = {"name": dataset, "type": dataset}
    if not isinstance(dataset, Mapping) or not dataset.get("name") or not dataset.get("type"):
        raise ValueError(
            f"{where}: needs 'dataset': {{'name': ..., 'type': ...}} (a display name and the Hub id or identifier of "
            "the test set); results without a named data set are not put on a model card."
        )
    report = entry.get("report")
    if report is not None and not isinstance(report, Mapping):
        raise ValueError(f"{where}: 'report' must be a ClassificationReport dict (ClassificationReport.to_dict()).")
    raw_metrics = entry.get("metrics")
    if raw_metrics is None and report is not None:
        raw_metrics = {k: report.get(k) for k in _REPORT_METRICS if k in report}
    if raw_metrics is None:
        raise ValueError(f"{where}: needs 'metrics' (or a 'report' holding them).")
    metrics = _parse_metrics(raw_metrics, where)
    if not metrics:
        raise ValueError(f"{where}: no finite metric value to report.")
    task = entry.get("task") or {}
    if isinstance(task, str):
        task = {"type": task}
    source = entry.get("source") or {}
    if isinstance(source, str):
        source = {"name": source}
    per_finding = []
    for row in (report or {}).get("findings") or []:
        if isinstance(row, Mapping) and "name" in row:
            per_finding.append({k: row.get(k) for k in ("name", "auroc", "average_precision", "n_positive", "n_negative")})
    n_cases = entry.get("n_cases", (report or {}).get("n_cases"))
    return EvaluationResult(
        dataset_name=str(dataset["name"]),
        dataset_type=str(dataset["type"]),
        dataset_split=dataset.get("split"),
        dataset_config=dataset.get("config"),
        dataset_revision=dataset.get("revision"),
        metrics=metrics,
        task_type=str(task.get("type") or PIPELINE_TAG),
        task_name=task.get("name"),
        per_finding=per_finding,
        n_cases=int(n_cases) if isinstance(n_cases, (int, float)) and not isinstance(n_cases, bool) else None,
        source_name=source.get("name"),
        source_url=source.get("url"),
    )


def load_evaluation_results(source: str | os.PathLike | Mapping | Sequence | None) -> list[EvaluationResult]:
    """Read measured evaluation results (the format is in ``docs/hub.md``).

    Args:
        source: a path to a JSON file, or its parsed content: ``{"results": [entry, ...]}``, a list of entries, or
            one entry. An entry is ``{"dataset": {"name", "type", "split"?, "config"?, "revision"?},
            "metrics": [{"type", "value", "name"?, "config"?}] | {key: value}, "report"?: ClassificationReport dict,
            "task"?: {"type", "name"}, "source"?: {"name", "url"}, "n_cases"?}``. ``None`` gives no results.

    Returns:
        One :class:`EvaluationResult` per entry; NaN / missing values are left out (never filled in).

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: naming the file and entry, for malformed content.
    """
    if source is None:
        return []
    where = "evaluation results"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: evaluation results file not found.")
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable JSON file ({err}).") from None
        where = str(path)
    if isinstance(source, Mapping) and "results" in source:
        source = source["results"]
    entries = [source] if isinstance(source, Mapping) else source
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise ValueError(f"{where}: expected a list of results, got {type(entries).__name__}.")
    return [_parse_entry(entry, f"{where}: results[{i}]") for i, entry in enumerate(entries)]


# --------------------------------------------------------------------------------------------------------------
# Card sections
# --------------------------------------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _sub(config: dict, key: str) -> dict:
    value = config.get(key) or {}
    return value if isinstance(value, dict) else _config_dict(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _towers_details(config: dict, parameter_counts: Mapping[str, int] | None, logit_scale: float | None = None) -> str:
    towers = config.get("towers") or ["cxr", "ct", "text"]
    rows = []
    if "cxr" in towers:
        cxr = _sub(config, "cxr_config")
        size = cxr.get("image_size")
        detail = f"`{cxr.get('model_type')}` backbone, token / feature-map mean pooled"
        if size:
            detail += f"; input {size} x {size} px, 3 channels"
        rows.append(("CXR (chest X-ray)", detail))
    if "ct" in towers:
        ct = _sub(config, "ct_config")
        rows.append(
            (
                "CT (3D)",
                f"CT-CLIP CTViT: {ct.get('num_frames')} x {ct.get('image_size')} x {ct.get('image_size')} voxels"
                # CT-CLIP's grid is 1.5 x 0.75 x 0.75 mm; another grid's spacing is in the processor config.
                + (" (1.5 x 0.75 x 0.75 mm)" if (ct.get("num_frames"), ct.get("image_size")) == (240, 480) else "")
                + f", patches {ct.get('temporal_patch_size')} x {ct.get('patch_size')} x "
                f"{ct.get('patch_size')}, width {ct.get('dim')}, {ct.get('spatial_depth')} spatial + "
                f"{ct.get('temporal_depth')} temporal layers",
            )
        )
    if "text" in towers:
        text = _sub(config, "text_config")
        rows.append(
            (
                "Report text",
                f"`{text.get('model_type')}` encoder, {text.get('num_hidden_layers')} layers, width "
                f"{text.get('hidden_size')}, vocabulary {text.get('vocab_size')}; [CLS] state",
            )
        )
    table = _table(("Tower", "Architecture"), rows)
    scale = (
        f"`exp(logit_scale)` = {math.exp(logit_scale):.4g} in these weights" if logit_scale is not None
        else "`exp(logit_scale)`"
    )
    lines = [
        table,
        "",
        f"- Shared latent space: {config.get('projection_dim')}-d, L2-normalised; cosine similarities are scaled by {scale}.",
        f"- Towers in this checkpoint: `{towers}`.",
    ]
    if "cxr" in towers:
        frozen = [name for tower, name, key in (("ct", "CT", "freeze_ct_model"), ("text", "report", "freeze_text_model"))
                  if tower in towers and config.get(key)]  # fmt: skip
        lines.append(
            "- Training loss weights (alpha CT-report, beta CXR-report, gamma CXR-CT): "
            f"{_fmt(config.get('loss_ct_text_weight'))}, {_fmt(config.get('loss_cxr_text_weight'))}, "
            f"{_fmt(config.get('loss_cxr_ct_weight'))}; frozen towers: {', '.join(frozen) or 'none'}."
        )
    if parameter_counts:
        lines.append("- Parameters: " + ", ".join(f"{k} {v:,}" for k, v in parameter_counts.items()) + ".")
    return "\n".join(lines)


def _prompts_section(config: dict) -> str:
    findings = list(config.get("findings") or [])
    templates = [list(p) for p in config.get("prompt_templates") or []]
    lines = [
        f"The model scores {len(findings)} findings (`config.findings`, in label order):",
        "",
        _table(("#", "Finding"), [(i, f) for i, f in enumerate(findings)]),
        "",
        "Zero-shot prompt pairs (`config.prompt_templates`, `{}` is replaced by the finding name). A finding's "
        "probability is the softmax over its (positive, negative) pair of image-text logits; the first pair is the "
        "default:",
        "",
        _table(("Positive prompt", "Negative prompt"), [(f"`{p}`", f"`{n}`") for p, n in templates]),
    ]
    if templates and "cxr" in (config.get("towers") or []):
        lines += [
            "",
            "The `zero-shot-image-classification` pipeline's own default template (`\"This is a photo of {}.\"`) is not "
            f"what this model was aligned with: pass `hypothesis_template=\"{templates[0][0]}\"` (the first positive "
            "prompt) as in the example below.",
        ]
    return "\n".join(lines)


def _evaluation_section(results: Sequence[EvaluationResult]) -> str:
    if not results:
        return (
            "No evaluation results were supplied with this checkpoint, so this card reports none and has no "
            "`model-index`. Evaluate it on your own data before drawing any conclusion."
        )
    parts = []
    for result in results:
        title = f"### {result.dataset_name}"
        if result.dataset_split:
            title += f" ({result.dataset_split})"
        parts.append(title)
        details = [f"data set `{result.dataset_type}`", f"task `{result.task_type}`"]
        if result.n_cases is not None:
            details.append(f"{result.n_cases} cases")
        if result.source_name or result.source_url:
            details.append("source: " + (f"[{result.source_name or result.source_url}]({result.source_url})" if result.source_url else result.source_name))
        parts += ["", "; ".join(details) + ".", "", _table(("Metric", "Value"), [(m[1], m[2]) for m in result.metrics])]
        if result.per_finding:
            rows = [
                (r["name"], "n/a" if r.get("auroc") is None else r["auroc"],
                 "n/a" if r.get("average_precision") is None else r["average_precision"],
                 r.get("n_positive", ""), r.get("n_negative", ""))
                for r in result.per_finding
            ]  # fmt: skip
            parts += ["", _table(("Finding", "AUROC", "Average precision", "Positives", "Negatives"), rows)]
        parts.append("")
    return "\n".join(parts).rstrip()


def _training_section(training_info: Mapping[str, Any] | None, has_cxr: bool = True) -> str:
    method = (
        "X2CT-CLIP (You et al. 2025) trains only the CXR encoder and its projection. Each training CXR is *simulated* "
        "from a chest CT of CT-RATE, and is aligned by contrastive learning (symmetric InfoNCE) with the CT-CLIP "
        "embeddings of the same CT volume and of its radiology report, both produced by frozen CT-CLIP towers. In the "
        "paper's recipe a simulated CXR is made by clipping the CT to [-1000, 1000] HU, resampling it to 1 mm "
        "isotropic voxels, taking the mean along the anterior-posterior axis (a parallel-beam approximation of a "
        "frontal radiograph, without scatter or detector modelling), rotating it upright, scaling it to 8 bits and "
        "resizing it to 224 x 224 px."
    )
    if not has_cxr:
        method = (
            "A CT-CLIP stage trains the CT tower and the report tower (or only its projection) with the symmetric "
            "InfoNCE loss between CT volumes and their radiology reports; it has no chest X-ray tower."
        )
    if not training_info:
        return (
            f"{method}\n\n**This checkpoint came without a record of its training run** (no data set, simulation or "
            "hyper-parameters were supplied when it was saved), so nothing is claimed here about how its weights "
            "were obtained."
        )
    info = dict(training_info)
    lines = [method, ""]
    description = info.pop("description", None) or info.pop("dataset_description", None)
    if description:
        lines += [str(description), ""]
    simulation = info.pop("simulation", None)
    if simulation:
        lines.append("**How this checkpoint's training CXRs were simulated** (recorded at preprocessing):")
        lines.append("")
        mode = simulation.get("cxr_mode") if isinstance(simulation, Mapping) else None
        if mode in _SIMULATION_MODES:
            lines += [_SIMULATION_MODES[mode], ""]
        if isinstance(simulation, Mapping):
            lines.append(_table(("Setting", "Value"), sorted(simulation.items())))
        else:
            lines.append(str(simulation))
        lines.append("")
    hyper = info.pop("hyperparameters", None)
    if hyper:
        lines += ["**Training hyper-parameters:**", "", _table(("Setting", "Value"), sorted(dict(hyper).items())), ""]
    info.pop("datasets", None)
    info.pop("base_models", None)
    if info:
        lines += ["**Other recorded details:**", "", _table(("Key", "Value"), sorted(info.items())), ""]
    return "\n".join(lines).rstrip()


_SIMULATION_MODES = {
    "mean": (
        "Mode `mean` (X2CT-CLIP's): HU clipped to the window below, averaged along the anterior-posterior axis, "
        "resampled to 1 mm pixels, shown upright with the patient's right on the image's left, min-max scaled to 8 bits."
    ),
    "beer_lambert": (
        "Mode `beer_lambert`: linear attenuation mu = mu_water (1 + HU / 1000) (air 0) integrated along the "
        "anterior-posterior ray, giving the log-scaled transmission -ln(I / I0) (bone and heart bright, lungs dark), "
        "shown upright with the patient's right on the image's left, min-max scaled to 8 bits."
    ),
}
# Keys of preprocess_config.json that describe the machine or the run rather than the simulation.
_NOT_SIMULATION = ("source_root", "splits", "versions", "format_version")


def training_info_from_preprocess_config(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """``training_info`` for :func:`save_for_hub` from the ``preprocess_config.json`` of ``x2ctclip preprocess``.

    Keeps what describes the simulated CXRs and the CT preprocessing (``cxr_mode``, ``cxr_view``, ``cxr_size``,
    ``shape``, ``spacing``, the volume processor's HU window, ...) and drops local paths, split sizes and library
    versions, which say nothing about the model and should not be published (``source_root`` is a local path).

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable file.
    """
    if not isinstance(source, Mapping):
        path = Path(source)
        if path.is_dir():
            path = path / "preprocess_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no preprocess_config.json (written by x2ctclip preprocess).")
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable JSON file ({err}).") from None
        if not isinstance(source, Mapping):
            raise ValueError(f"{path}: expected a JSON object.")
    simulation = {}
    for key, value in source.items():
        if key in _NOT_SIMULATION:
            continue
        if key == "volume_processor" and isinstance(value, Mapping):
            for name in ("hu_min", "hu_max", "target_spacing", "target_shape", "clip_before_resample"):
                if name in value:
                    simulation[f"volume_processor.{name}"] = value[name]
        else:
            simulation[key] = value
    return {"simulation": simulation}


def _requirements(folder: Path | None) -> list[str]:
    """pip names of the third-party packages the folder's remote code imports."""
    if folder is None:
        return []
    from transformers.dynamic_module_utils import get_imports

    names: set[str] = set()
    local = {p.stem for p in folder.glob("*.py")}
    for path in folder.glob("*.py"):
        for module in get_imports(path):
            top = module.split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in local and top != "__future__":
                names.add(_PIP_NAMES.get(top, top))
    return sorted(names)


def usage_snippet(model_id: str, config: Mapping[str, Any]) -> str:
    """The card's Python example (fenced). It runs as is against a saved folder, offline, with ``model_id`` set to
    the folder and a frontal chest X-ray saved as ``frontal_cxr.png`` in the working directory."""
    towers = config.get("towers") or []
    if "cxr" in towers:
        body = f'''import torch
from transformers import AutoModel, AutoProcessor, pipeline

model_id = "{model_id}"  # this repository, or the path of a local copy
image = "frontal_cxr.png"  # a frontal (PA/AP) chest X-ray; the processor also reads DICOM

model = AutoModel.from_pretrained(model_id, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)

# Zero-shot detection: each finding's probability is the softmax over its (positive, negative) prompt pair.
findings = model.config.findings
positive, negative = model.config.prompt_templates[0]
prompts = [template.format(finding) for finding in findings for template in (positive, negative)]
inputs = processor(images=image, text=prompts, return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model(**inputs).logits_per_image  # (1, 2 * len(findings))
probabilities = logits.view(len(findings), 2).softmax(dim=-1)[:, 0]
for finding, probability in zip(findings, probabilities.tolist()):
    print(f"{{finding:<36}} {{probability:.3f}}")

# The transformers pipeline ranks candidate findings against one another (one softmax over the candidates).
classifier = pipeline("zero-shot-image-classification", model=model_id, trust_remote_code=True)
print(classifier(image, candidate_labels=list(findings[:4]), hypothesis_template=positive))'''
    else:
        body = f'''import torch
from transformers import AutoModel, AutoTokenizer

model_id = "{model_id}"  # this repository, or the path of a local copy
model = AutoModel.from_pretrained(model_id, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)  # config.json names remote code

# A CT volume as CT-CLIP expects it: (batch, 1, depth, height, width), HU / 1000 clipped to [-1, 1],
# 1.5 x 0.75 x 0.75 mm voxels (x2ctclip's X2CTCLIPVolumeProcessor makes it from NIfTI or DICOM).
# The zero volume below only shows the shape: replace it with a real preprocessed CT.
ct = model.config.ct_config
ct_values = torch.zeros(1, 1, ct.num_frames, ct.image_size, ct.image_size)

# Zero-shot detection: each finding's probability is the softmax over its (positive, negative) prompt pair.
findings = model.config.findings
positive, negative = model.config.prompt_templates[0]
prompts = [template.format(finding) for finding in findings for template in (positive, negative)]
text = tokenizer(prompts, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(ct_values=ct_values, input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    logits = logits.logits_per_ct_text  # (1, 2 * len(findings))
probabilities = logits.view(len(findings), 2).softmax(dim=-1)[:, 0]
for finding, probability in zip(findings, probabilities.tolist()):
    print(f"{{finding:<36}} {{probability:.3f}}")'''
    return f"```python\n{body}\n```"


def _usage_section(model_id: str, config: Mapping[str, Any], requirements: Sequence[str]) -> str:
    towers = config.get("towers") or []
    lines = []
    if requirements:
        lines += [
            "The code this repository ships for `trust_remote_code=True` imports "
            f"`{', '.join(requirements)}`:",
            "",
            "```bash",
            "pip install " + " ".join(sorted(set(requirements) | {"transformers", "torch"})),
            "```",
            "",
        ]
    lines.append(usage_snippet(model_id, config))
    if "cxr" in towers:
        lines += [
            "",
            "The image processor resizes the shortest side to the model's input size, centre-crops, replicates the grey "
            "channel and normalises; the CXR is expected in the usual radiographic display (patient's right on the "
            "image's left, bone bright). The pipeline opens images with `transformers.image_utils.load_image` (PNG, "
            "JPEG, URLs); pass DICOM files to the processor instead.",
        ]
    return "\n".join(lines)


_FILE_ROLES = [
    (r"^config\.json$", "model configuration (towers, findings, prompt templates) with `auto_map` for remote code"),
    (r"^model(-\d+-of-\d+)?\.safetensors$", "weights (safetensors)"),
    (r"^model\.safetensors\.index\.json$", "index of the weight shards"),
    (r"^(modeling|configuration)_.*\.py$|^(loss|findings|modeling_ct)\.py$", "model code (remote code)"),
    (r"^processor_config\.json$", "processor configuration (image processor and their settings)"),
    (r"^preprocessor_config\.json$", "image processor configuration"),
    (r"^(processing|image_processing)_.*\.py$|^.*_io\.py$|^tokenization.*\.py$", "processing code (remote code)"),
    (r"^tokenizer(_config)?\.json$|^vocab\.txt$|^special_tokens_map\.json$", "report tokenizer"),
    (r"^README\.md$", "this model card"),
]


def _files_section(files: Sequence[tuple[str, int | None]]) -> str:
    if not files:
        return "(written next to this card by `save_pretrained`)"
    rows = []
    for name, size in files:
        role = next((r for pattern, r in _FILE_ROLES if re.search(pattern, name)), "")
        if name.endswith(".py") and not role:
            role = "remote code"
        rows.append((f"`{name}`", "" if size is None else _human_size(size), role))
    return _table(("File", "Size", "Content"), rows)


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _license_section(license: str, license_name: str | None, license_link: str | None, ctclip_derived: bool) -> str:
    name, link = _LICENSE_NAMES.get(license, (license_name or license, license_link))
    text = f"[{name}]({link})" if link else f"`{name}`"
    lines = [f"License: {text} (`{license}`)."]
    if ctclip_derived:
        lines += [
            "",
            "CT-CLIP's weights and the CT-RATE data set are released under CC BY-NC-SA 4.0 (non-commercial, "
            "ShareAlike, attribution: cite the CT-CLIP paper below). Weights derived from them are shared under the "
            "same terms.",
        ]
    return "\n".join(lines)


def _list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _render(card_data: ModelCardData, **sections: Any) -> ModelCard:
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(f"{TEMPLATE_PATH}: the model card template is missing from the installation.")
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **sections)


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
    config = _config_dict(config)
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
    results = load_evaluation_results(metrics)
    towers = config.get("towers") or ["cxr", "ct", "text"]
    has_cxr = "cxr" in towers
    model_name = model_name or (model_id.split("/")[-1] if model_id else "x2ctclip-model")
    model_id = model_id or model_name
    info = dict(training_info or {})
    base = _list(base_models) + [m for m in _list(info.get("base_models")) if m not in _list(base_models)]
    data = _list(datasets) + [d for d in _list(info.get("datasets")) if d not in _list(datasets)]
    default_tags = [t for t in DEFAULT_TAGS if has_cxr or t != "chest-x-ray"]
    all_tags = default_tags + [t for t in (tags or []) if t not in default_tags]
    bad_ids = [name for name in base + data if not _is_repo_id(name)]
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
    problems = _license_problems(license, license_name, license_link)
    if problems:
        raise ValueError("; ".join(problems))
    summary = (
        f"**{model_name}** is an [X2CT-CLIP](https://arxiv.org/abs/2503.02162) model: a chest X-ray (CXR) encoder "
        "aligned with the CT and report encoders of [CT-CLIP](https://arxiv.org/abs/2403.17834) in one latent space, "
        f"so that it scores {len(config.get('findings') or [])} abnormalities labelled on chest CT (the CT-RATE "
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
            f"{len(config.get('findings') or [])} listed findings zero-shot from a CT volume. These towers are the "
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
    cites = ([X2CTCLIP_CITATION] if has_cxr else []) + ([CTCLIP_CITATION] if ctclip_derived or not has_cxr else [])
    citation = "```bibtex\n" + "\n\n".join(cites) + "\n```"
    return _render(
        card_data,
        model_name=model_name,
        summary=summary,
        cxr_note=cxr_note if has_cxr else "",
        has_cxr=has_cxr,
        model_details=_towers_details(config, parameter_counts, logit_scale),
        intended_use=intended,
        limitations=limitations,
        training_section=training_text if training_text is not None else _training_section(training_info, has_cxr),
        prompts_section=_prompts_section(config),
        evaluation_section=_evaluation_section(results),
        usage_section=_usage_section(model_id, config, requirements),
        files_section=_files_section(files),
        license_section=_license_section(license, license_name, license_link, ctclip_derived),
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


# --------------------------------------------------------------------------------------------------------------
# Validation (local, no network)
# --------------------------------------------------------------------------------------------------------------


def _license_problems(license: Any, license_name: Any, license_link: Any) -> list[str]:
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
        from huggingface_hub import metadata_load

        path = Path(card)
        if not path.is_file():
            return [f"{path}: no model card"]
        try:  # the raw YAML, so that a malformed model-index gets a precise message below
            data = metadata_load(path)
        except Exception as err:  # YAML errors have many types
            return [f"{path}: the card's metadata block cannot be parsed ({type(err).__name__}: {err})"]
        if not isinstance(data, dict):
            return [f"{path}: the card has no YAML metadata block"]
    problems = _license_problems(data.get("license"), data.get("license_name"), data.get("license_link"))
    if data.get("library_name") != LIBRARY_NAME:
        problems.append(f"metadata 'library_name' must be '{LIBRARY_NAME}', got {data.get('library_name')!r}")
    tags = data.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
        problems.append("metadata 'tags' must be a non-empty list of strings")
    if towers is not None and "cxr" in towers and data.get("pipeline_tag") != PIPELINE_TAG:
        problems.append(f"metadata 'pipeline_tag' must be '{PIPELINE_TAG}' for a model with a CXR tower, got {data.get('pipeline_tag')!r}")
    for key in ("base_model", "datasets"):
        for value in _list(data.get(key)):
            if not _is_repo_id(value):
                problems.append(f"metadata '{key}' entry {value!r} is not a Hub id ('owner/name')")
    index = data.get("model-index")
    if index is not None:
        problems += _model_index_problems(index)
        if not problems:
            from huggingface_hub.repocard_data import model_index_to_eval_results

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
                if not isinstance(metric, dict) or not metric.get("type") or _finite_number(metric.get("value")) is None:
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

    from transformers.dynamic_module_utils import get_relative_imports

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
            from safetensors import safe_open

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
_PROSE_PATH = re.compile(r"(?<![\w:/.~])/(?:[\w.-]+/)+[\w.-]+")
_TEMP_NAME = re.compile(r"\.tmp-|(?<![\w])\.tmp\b|tmp-model")


def _local_path_problems(folder: Path) -> list[str]:
    """Absolute local paths or temporary folder names in the card and the JSON configuration files: they name the
    machine that wrote the folder and mean nothing to a Hub user."""
    problems = []
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        for pattern, what in ((_PROSE_PATH, "an absolute local path"), (_TEMP_NAME, "a temporary folder name")):
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


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------


def _folder_files(folder: Path) -> list[tuple[str, int]]:
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file()
    )


def _py_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.py")}


def _add_auto_map_entries(folder: Path, towers: Sequence[str]) -> None:
    """``register_for_auto_class`` records one auto class per model class, so ``save_pretrained`` writes only
    ``AutoModel``; the pipeline loads through ``AutoModelForZeroShotImageClassification``, which maps to the same class."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    auto_map = config.setdefault("auto_map", {})
    if "cxr" in towers and ZERO_SHOT_AUTO_CLASS not in auto_map and "AutoModel" in auto_map:
        auto_map[ZERO_SHOT_AUTO_CLASS] = auto_map["AutoModel"]
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _parameter_counts(model: Any) -> dict[str, int]:
    counts = {}
    for tower in ("cxr", "ct", "text"):
        module, projection = getattr(model, f"{tower}_model", None), getattr(model, f"{tower}_projection", None)
        if module is not None:
            counts[tower] = sum(p.numel() for m in (module, projection) if m is not None for p in m.parameters())
    return counts


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
    os.replace(tmp, out_dir)


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

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
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
        _add_auto_map_entries(tmp, towers)
        from .hub_folders import _make_configs_portable

        _make_configs_portable(tmp)  # e.g. a tokenizer's name_or_path: the local folder it was loaded from
        card = build_model_card(
            config,
            metrics=metrics,
            training_info=training_info,
            model_id=model_id or out_dir.name,
            files=_folder_files(tmp) + [("README.md", None)],
            requirements=_requirements(tmp),
            parameter_counts=_parameter_counts(model),
            logit_scale=float(model.logit_scale.detach()) if hasattr(model, "logit_scale") else None,
            **card_kwargs,
        )
        card.save(tmp / "README.md")
        check_hub_folder(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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
        from tqdm.auto import tqdm

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
    logit_scale = None
    if (out_dir / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(out_dir / "model.safetensors"), framework="pt") as handle:
            if "logit_scale" in handle.keys():
                logit_scale = float(handle.get_tensor("logit_scale"))
    card = build_ctclip_model_card(
        config,
        source_checkpoint=source_checkpoint,
        checkpoint_sha256=digest,
        model_id=model_id or out_dir.name,
        metrics=metrics,
        files=[f for f in _folder_files(out_dir) if f[0] != "README.md"] + [("README.md", None)],
        requirements=_requirements(out_dir),
        has_tokenizer=has_tokenizer,
        logit_scale=logit_scale,
    )
    problems = validate_card(card, towers=towers)
    if problems:
        raise ValueError("The CT-CLIP model card is invalid: " + "; ".join(problems))
    from .hub_folders import _make_configs_portable

    _make_configs_portable(out_dir)  # e.g. the tokenizer's name_or_path: the folder it was copied from
    tmp = out_dir / ".README.md.tmp"
    card.save(tmp)
    os.replace(tmp, out_dir / "README.md")
    return out_dir / "README.md"


# --------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------


def list_upload_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """``(path in repo, size in bytes)`` of the files :func:`push_folder` uploads: everything in ``folder`` except
    hidden files, ``__pycache__`` and what ``huggingface_hub`` never uploads (``.git``, its cache)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = Path(folder)
    files = _folder_files(folder)
    patterns = _HIDDEN_UPLOAD_PATTERNS + list(DEFAULT_IGNORE_PATTERNS)
    return list(filter_repo_objects(files, ignore_patterns=patterns, key=lambda item: item[0]))


@dataclass
class PushResult:
    """What :func:`push_folder` did (or, with ``dry_run``, would do)."""

    repo_id: str
    files: list[tuple[str, int]]
    dry_run: bool
    warnings: list[str] = field(default_factory=list)
    url: str | None = None
    card_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _snippet_model_id(readme: Path) -> str | None:
    match = re.search(r'^model_id = "([^"]*)"', readme.read_text(encoding="utf-8"), re.MULTILINE)
    return match.group(1) if match else None


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> PushResult:
    """Upload a Hub model folder: validate it locally, then ``create_repo`` (``exist_ok``) and ``upload_folder``.

    Args:
        folder: a folder made by :func:`save_for_hub` (or a converted CT-CLIP folder with its card).
        repo_id: ``owner/name`` on the Hub.
        private: create the repository private.
        dry_run: only validate and list the files (no network access at all).
        token: Hub token (default: the logged-in user's).
        commit_message: the upload's commit message.
        api: an ``huggingface_hub.HfApi`` (default: a new one); tests pass a mock.

    Raises:
        ValueError: an invalid ``repo_id`` or a folder that fails :func:`validate_hub_folder`.
    """
    folder = Path(folder)
    if not _is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repository id of the form 'owner/name'.")
    check = check_hub_folder(folder)
    warnings = list(check.warnings)
    snippet_id = _snippet_model_id(folder / "README.md")
    if snippet_id is not None and snippet_id != repo_id:
        warnings.append(
            f"README.md: the usage example loads {snippet_id!r}, not {repo_id!r}; rebuild the card with "
            f"model_id={repo_id!r} (save_for_hub) if users should copy it verbatim"
        )
    files = list_upload_files(folder)
    metadata = ModelCard.load(folder / "README.md").data.to_dict()
    result = PushResult(repo_id=repo_id, files=files, dry_run=dry_run, warnings=warnings, card_metadata=metadata)
    if dry_run:
        return result
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message or f"Upload {folder.name} with x2ctclip",
        ignore_patterns=list(_HIDDEN_UPLOAD_PATTERNS),
    )
    result.url = str(getattr(repo, "url", repo) or f"https://huggingface.co/{repo_id}")
    return result
