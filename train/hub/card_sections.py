"""The sections of a model card (towers, prompts, evaluation, training, usage, files, license)."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open
from transformers.dynamic_module_utils import get_imports

from x2ctclip.train.hub.metadata import LICENSE_NAMES, TEMPLATE_PATH
from x2ctclip.train.hub.results import EvaluationResult

# Remote-code import names whose pip distribution has another name.
_PIP_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "skimage": "scikit-image"}


# --------------------------------------------------------------------------------------------------------------
# Card sections
# --------------------------------------------------------------------------------------------------------------


def config_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _sub(config: dict, key: str) -> dict:
    value = config.get(key) or {}
    return value if isinstance(value, dict) else config_dict(value)


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


def towers_details(config: dict, parameter_counts: Mapping[str, int] | None, logit_scale: float | None = None) -> str:
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


def section_prompts(config: dict) -> str:
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


def section_evaluation(results: Sequence[EvaluationResult]) -> str:
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


def section_training(training_info: Mapping[str, Any] | None, has_cxr: bool = True) -> str:
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
_NOT_SIMULATION = ("source_root", "splits", "versions", "format_version", "world_size")


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


def pip_requirements(folder: Path | None) -> list[str]:
    """pip names of the third-party packages the folder's remote code imports."""
    if folder is None:
        return []
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


def section_usage(model_id: str, config: Mapping[str, Any], requirements: Sequence[str]) -> str:
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


def section_files(files: Sequence[tuple[str, int | None]]) -> str:
    if not files:
        return "(written next to this card by `save_pretrained`)"
    rows = []
    for name, size in files:
        role = next((r for pattern, r in _FILE_ROLES if re.search(pattern, name)), "")
        if name.endswith(".py") and not role:
            role = "remote code"
        rows.append((f"`{name}`", "" if size is None else human_size(size), role))
    return _table(("File", "Size", "Content"), rows)


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def section_license(license: str, license_name: str | None, license_link: str | None, ctclip_derived: bool) -> str:
    name, link = LICENSE_NAMES.get(license, (license_name or license, license_link))
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


def bullet_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def render(card_data: ModelCardData, **sections: Any) -> ModelCard:
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(f"{TEMPLATE_PATH}: the model card template is missing from the installation.")
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **sections)


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------


def saved_logit_scale(folder: Path) -> float | None:
    """The trained ``logit_scale`` in ``folder/model.safetensors`` (read alone, not the whole state), or None."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return float(handle.get_tensor("logit_scale")) if "logit_scale" in handle.keys() else None


def folder_files(folder: Path) -> list[tuple[str, int]]:
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file()
    )
