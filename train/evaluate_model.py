"""The logic of ``x2ctclip evaluate``: classification with confidence intervals, retrieval, calibration.

Every step takes a saved model folder, either an :class:`x2ctclip.X2CTCLIPModel` (findings scored **zero-shot** with
the prompt pairs stored in its config, :class:`~x2ctclip.train.zeroshot.ZeroShotClassifier`) or an
:class:`x2ctclip.X2CTCLIPForAbnormalityClassification` (a supervised head), and a set of cases:

- a preprocessed split (``x2ctclip preprocess``: simulated CXRs, the 18 labels, reports) -> :func:`preprocessed_cases`;
- an external collection of real radiographs (:mod:`x2ctclip.train.external`) -> :func:`external_cases`.

When the model config carries a calibration (``config.calibration``, written by :func:`calibrate`), its probabilities
are reported calibrated and its thresholds are the default operating points. Outputs (``--out``, default
``MODEL/evaluation``), each written to a temporary name and renamed:

- ``zeroshot_<data>.json`` / ``.md`` / ``_predictions.csv``: :func:`evaluate_classification`;
- ``retrieval_<data>.json`` / ``.md``: :func:`evaluate_retrieval`;
- ``calibration_<data>.json`` / ``.md`` / ``reliability_<data>.png``: :func:`calibrate`;
- ``evaluation.json`` / ``.md``: :func:`evaluate_all`.

The JSON files have the shape :func:`x2ctclip.train.hub.load_evaluation_results` reads for the model card
(``{"results": [{"task", "dataset", "report" | "metrics", ...}], ...}``), plus the provenance: model folder and
fingerprint, data folder, split and fingerprint, seed, bootstrap settings, versions and the command line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .external import ExternalDataset, LabelTarget, load_external, target_scores
from .metrics import (
    ClassificationReport,
    FindingMetrics,
    average_precision,
    jsonable,
    load_metric,
    precision_recall_f1,
    roc_auc,
)
from .retrieval import DEFAULT_MAP_AT, DEFAULT_RECALL_AT

__all__ = [
    "Cases",
    "LoadedModel",
    "calibrate",
    "classification_metrics_with_ci",
    "compute_logits",
    "encode_images",
    "evaluate_all",
    "evaluate_classification",
    "evaluate_retrieval",
    "external_cases",
    "load_model",
    "preprocessed_cases",
    "save_calibration",
    "write_atomic",
]

CLASSIFIER_ARCHITECTURE = "X2CTCLIPForAbnormalityClassification"
SOURCE = {"name": "x2ctclip evaluate"}


# ---------------------------------------------------------------------------------------------------------- files
def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace`` (no half-written
    file is ever visible under ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_json(path: Path, record: dict[str, Any]) -> Path:
    return write_atomic(path, json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")


def _fingerprint(path: Path) -> str | None:
    try:
        from .embedding_cache import model_fingerprint

        return model_fingerprint(path)
    except OSError:
        return None


def _versions() -> dict[str, str]:
    import transformers

    import x2ctclip

    return {"x2ctclip": x2ctclip.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _provenance(command: str, seed: int | None = None) -> dict[str, Any]:
    return {
        "command": command,
        "command_line": " ".join(["x2ctclip", *sys.argv[1:]]) if Path(sys.argv[0]).name == "x2ctclip" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": seed,
        "versions": _versions(),
    }


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    """A model folder ready for evaluation.

    Attributes:
        path: the folder.
        model: the :class:`X2CTCLIPModel` or :class:`X2CTCLIPForAbnormalityClassification`, in eval mode.
        kind: ``"zeroshot"`` (prompt pairs) or ``"classifier"`` (supervised head).
        image_processor: the CXR image processor of the folder.
        tokenizer: the report tokenizer (None when the folder has none; required for zero-shot scoring).
        calibrator: :class:`~x2ctclip.train.calibration.Calibrator` from ``config.calibration``, or None.
        ensemble: prompt ensemble of zero-shot scoring.
    """

    path: Path
    model: Any
    kind: str
    image_processor: Any
    tokenizer: Any | None
    calibrator: Any | None
    device: torch.device
    ensemble: str = "probabilities"
    _zero_shot: Any = field(default=None, repr=False)

    @property
    def findings(self) -> list[str]:
        return list(self.model.config.findings)

    def has_tower(self, tower: str) -> bool:
        return getattr(self.model, f"{tower}_model", None) is not None

    @property
    def text_max_length(self) -> int:
        limits = [512]
        text_config = getattr(self.model.config, "text_config", None)
        if text_config is not None and getattr(text_config, "max_position_embeddings", None):
            limits.append(int(text_config.max_position_embeddings))
        length = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(length, int) and length < 10**6:
            limits.append(length)
        return min(limits)

    def zero_shot(self):
        from x2ctclip.zero_shot import ZeroShotClassifier

        if self._zero_shot is None:
            if self.tokenizer is None:
                raise FileNotFoundError(f"{self.path}: no report tokenizer in the folder; zero-shot scoring needs one.")
            self._zero_shot = ZeroShotClassifier(self.model, self.tokenizer, ensemble=self.ensemble,
                                                 max_length=self.text_max_length)  # fmt: skip
        return self._zero_shot

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        out = {
            "path": str(self.path.resolve()),
            "fingerprint": _fingerprint(self.path),
            "architecture": type(self.model).__name__,
            "kind": self.kind,
            "towers": list(config.towers),
            "findings": self.findings,
            "calibration": None if self.calibrator is None else {
                "method": self.calibrator.method, "threshold_method": self.calibrator.threshold_method},
        }
        if self.kind == "zeroshot":
            out["prompt_templates"] = [list(p) for p in config.prompt_templates]
            out["ensemble"] = self.ensemble
        return out


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | os.PathLike, device: str | torch.device | None = None, ensemble: str = "probabilities",
               calibrated: bool = True) -> LoadedModel:  # fmt: skip
    """Load a model folder for evaluation (model class from ``config.json``'s ``architectures``).

    Args:
        path: the folder (``save_pretrained`` with the processor or image processor and, for zero-shot, a tokenizer).
        device: default CUDA when available.
        ensemble: zero-shot prompt ensemble (``"probabilities"`` or ``"embeddings"``).
        calibrated: use ``config.calibration`` when present (False: raw scores).
    """
    from transformers import AutoImageProcessor

    from x2ctclip import X2CTCLIPForAbnormalityClassification, X2CTCLIPModel

    from .calibration import Calibrator

    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a model folder written by save_pretrained.")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not readable JSON ({err}).") from None
    expected = X2CTCLIPModel.config_class.model_type
    if not isinstance(config, dict) or config.get("model_type") != expected:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_path}: not an X2CT-CLIP model config (model_type {found!r}, expected "
                         f"{expected!r}); expected a folder written by save_pretrained.")  # fmt: skip
    architectures = config.get("architectures") or []
    device = _device(device)
    if CLASSIFIER_ARCHITECTURE in architectures:
        model, kind = X2CTCLIPForAbnormalityClassification.from_pretrained(path), "classifier"
    else:
        model, kind = X2CTCLIPModel.from_pretrained(path), "zeroshot"
        if model.cxr_model is None:
            raise ValueError(f"{path}: the model has no CXR tower (towers {model.config.towers}); nothing to evaluate "
                             "on chest X-rays.")  # fmt: skip
    model = model.to(device).eval()
    calibrator = None
    if calibrated and config.get("calibration") is not None:
        try:
            calibrator = Calibrator.from_dict(config["calibration"])
        except ValueError as err:
            raise ValueError(f"{config_path}: calibration: {err}") from None
        if calibrator.n_findings != len(model.config.findings):
            raise ValueError(f"{config_path}: the calibration has {calibrator.n_findings} findings, the model "
                             f"{len(model.config.findings)}.")  # fmt: skip
    try:
        image_processor = AutoImageProcessor.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as err:
        raise FileNotFoundError(f"{path}: cannot load the CXR image processor (preprocessor_config.json or "
                                f"processor_config.json): {err}") from None  # fmt: skip
    tokenizer = None
    if any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        from x2ctclip.processors import load_report_tokenizer

        tokenizer = load_report_tokenizer(path)
    return LoadedModel(path, model, kind, image_processor, tokenizer, calibrator, device, ensemble)


@torch.no_grad()
def encode_images(loaded: LoadedModel, images: Any, batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
    """L2-normalised CXR latents ``(N, projection_dim)`` (float32, CPU) of ``images`` (anything the image processor
    reads: uint8 arrays, file paths, PIL images), in batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = len(images)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc="encode CXRs", unit="batch", disable=progress is False):
        batch = [np.asarray(im) if not isinstance(im, (str, os.PathLike)) else im
                 for im in images[start : start + batch_size]]  # fmt: skip
        pixel_values = loaded.image_processor(batch, return_tensors="pt")["pixel_values"].to(loaded.device)
        latent = loaded.model.get_cxr_features(pixel_values=pixel_values).pooler_output.float()
        chunks.append(F.normalize(latent, dim=-1).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, loaded.model.config.projection_dim)


@torch.no_grad()
def compute_logits(loaded: LoadedModel, latents: torch.Tensor) -> np.ndarray:
    """Uncalibrated per-finding log-odds ``(N, n_findings)``: the zero-shot prompt-pair log-odds, or the head's."""
    if loaded.kind == "zeroshot":
        return loaded.zero_shot().predict_from_embeddings(latents).logits.cpu().double().numpy()
    out = loaded.model(image_embeds=latents.to(loaded.device), return_dict=True).logits
    return out.float().cpu().double().numpy()


def probabilities_from_logits(loaded: LoadedModel, logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities when the model carries a calibration, else ``sigmoid(logits)``."""
    if loaded.calibrator is not None:
        return np.asarray(loaded.calibrator.transform(logits), dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


# ---------------------------------------------------------------------------------------------------------- cases
class _RowImages:
    """The ``cxr`` column of a preprocessed split, read batch by batch (slicing returns uint8 arrays)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(self.dataset[index]["cxr"])
        return self.dataset[int(index)]["cxr"]


@dataclass
class Cases:
    """Cases to evaluate on.

    Attributes:
        names: case ids (``VolumeName`` for preprocessed data).
        images: sliceable sequence of images (uint8 arrays or paths).
        labels: ``(N, n_targets)`` float labels, NaN = not annotated.
        targets: the label columns and the findings each covers.
        reports: report text per case (None when absent).
        dataset: the Hub ``dataset`` entry (``name``, ``type``, ``split``).
        source: provenance (``path``, ``kind``, ``split``, fingerprint, ...).
        preprocessed: the preprocessed split (for CT volumes), when the cases come from one.
    """

    names: list[str]
    images: Any
    labels: np.ndarray
    targets: list[LabelTarget]
    reports: list[str] | None
    dataset: dict[str, Any]
    source: dict[str, Any]
    preprocessed: Any = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def tag(self) -> str:
        """Short name used in output file names: the split, or ``external-<csv stem>``."""
        return self.source.get("tag") or self.source.get("split") or "data"

    def labels_for_findings(self, findings: Sequence[str]) -> np.ndarray:
        """``(N, len(findings))`` labels in the model's order (NaN where no single-finding target covers one)."""
        out = np.full((len(self), len(findings)), np.nan)
        index = {f: i for i, f in enumerate(findings)}
        for j, target in enumerate(self.targets):
            if len(target.findings) == 1 and target.findings[0] in index:
                out[:, index[target.findings[0]]] = self.labels[:, j]
        return out


def preprocessed_cases(data: str | os.PathLike, split: str, dataset_name: str | None = None,
                       dataset_type: str | None = None) -> Cases:  # fmt: skip
    """Cases of a preprocessed split: simulated CXRs (``cxr``), the 18 labels, reports, volume names."""
    from x2ctclip.findings import CT_RATE_FINDINGS

    from .data import PREPROCESS_CONFIG, config_fingerprint, load_preprocessed, read_folder_config

    data = Path(data)
    dataset = load_preprocessed(data, split)
    if "cxr" not in dataset.column_names:
        raise ValueError(f"{data / split}: no 'cxr' column (simulated chest X-rays); preprocess with CXR simulation.")
    config = read_folder_config(data, PREPROCESS_CONFIG)
    table = dataset.with_format(None, columns=["VolumeName", "report"])
    labels = np.asarray(dataset.with_format("numpy", columns=["labels"])["labels"], dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(CT_RATE_FINDINGS):
        raise ValueError(f"{data / split}: labels must have {len(CT_RATE_FINDINGS)} columns, got shape {labels.shape}.")
    folder = data.resolve().name
    return Cases(
        names=[str(n) for n in table["VolumeName"]],
        images=_RowImages(dataset.with_format("numpy", columns=["cxr"], dtype=None)),
        labels=labels,
        targets=[LabelTarget(f, (f,), f) for f in CT_RATE_FINDINGS],
        reports=[str(r) for r in table["report"]],
        dataset={"name": dataset_name or f"{folder} {split} (simulated CXRs)", "type": dataset_type or folder,
                 "split": split},  # fmt: skip
        source={"path": str(data.resolve()), "kind": "preprocessed", "split": split, "tag": split,
                "fingerprint": config_fingerprint({k: v for k, v in config.items() if k not in ("splits", "versions")}),
                "simulation": config.get("cxr_mode") or config.get("simulation"), "n_cases": len(dataset)},  # fmt: skip
        preprocessed=dataset,
    )


def external_cases(collection: str | os.PathLike | ExternalDataset, mapping: Any = "auto",
                   dataset_name: str | None = None, dataset_type: str | None = None,
                   require_labels: bool = True) -> Cases:  # fmt: skip
    """Cases of an external collection (:func:`x2ctclip.train.external.load_external`)."""
    ext = collection if isinstance(collection, ExternalDataset) else load_external(collection, mapping,
                                                                                  require_labels=require_labels)
    stem = ext.source.parent.name if ext.source.name == "labels.csv" else ext.source.stem
    return Cases(
        names=list(ext.names),
        images=list(ext.images),
        labels=ext.labels,
        targets=list(ext.targets),
        reports=ext.reports,
        dataset={"name": dataset_name or f"{stem} (external, real CXRs)", "type": dataset_type or stem, "split": "test"},
        source={**ext.describe(), "path": str(ext.source.resolve()), "kind": "external", "tag": f"external-{stem}"},
    )


# ---------------------------------------------------------------------------------------------------------- scores
@dataclass
class _Scored:
    latents: torch.Tensor
    logits: np.ndarray  # (N, F) uncalibrated, model findings
    probabilities: np.ndarray  # (N, F) calibrated when available
    scores: np.ndarray  # (N, T) per target


def _score(loaded: LoadedModel, cases: Cases, batch_size: int, progress: bool | None,
           latents: torch.Tensor | None = None) -> _Scored:  # fmt: skip
    if latents is None:
        latents = encode_images(loaded, cases.images, batch_size, progress)
    logits = compute_logits(loaded, latents)
    probabilities = probabilities_from_logits(loaded, logits)
    return _Scored(latents, logits, probabilities, target_scores(probabilities, loaded.findings, cases.targets))


def _thresholds(loaded: LoadedModel, cases: Cases, threshold: float | None) -> tuple[np.ndarray, list[str]]:
    """Per-target operating points and where each comes from."""
    n = len(cases.targets)
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}.")
        return np.full(n, float(threshold)), ["fixed"] * n
    values, sources = np.full(n, 0.5), ["default 0.5"] * n
    cal = loaded.calibrator
    if cal is not None and cal.thresholds is not None:
        index = {f: i for i, f in enumerate(loaded.findings)}
        for j, target in enumerate(cases.targets):
            if len(target.findings) == 1 and target.findings[0] in index:
                value = cal.thresholds[index[target.findings[0]]]
                if np.isfinite(value):
                    values[j], sources[j] = value, f"calibration ({cal.threshold_method})"
    return values, sources


def classification_metrics_with_ci(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray,
                                   n_bootstrap: int = 1000, seed: int = 1024, confidence: float = 0.95,
                                   progress: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Percentile bootstrap intervals (cases resampled with replacement, seeded) of the per-target AUROC and AP and of
    the macro / micro / weighted AUROC and AP and macro / micro F1 at ``thresholds``. Returns
    ``{metric: ConfidenceInterval dict or list of them}``; ``{}`` when ``n_bootstrap < 2``."""
    from .statistics import bootstrap_ci

    if n_bootstrap < 2:
        return {}

    def metric(y, s):
        macro = precision_recall_f1(y, s, thresholds, "macro")
        micro = precision_recall_f1(y, s, thresholds, "micro")
        return {
            "auroc": roc_auc(y, s, None),
            "auroc_macro": roc_auc(y, s, "macro"),
            "auroc_micro": roc_auc(y, s, "micro"),
            "auroc_weighted": roc_auc(y, s, "weighted"),
            "average_precision": average_precision(y, s, None),
            "average_precision_macro": average_precision(y, s, "macro"),
            "average_precision_micro": average_precision(y, s, "micro"),
            "average_precision_weighted": average_precision(y, s, "weighted"),
            "f1_macro": macro["f1"],
            "f1_micro": micro["f1"],
        }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of undefined findings
        intervals = bootstrap_ci(metric, labels, scores, n_resamples=n_bootstrap, seed=seed, confidence=confidence,
                                 vectorized=True, progress=bool(progress))  # fmt: skip
    return {k: ([c.__dict__ for c in v] if isinstance(v, list) else v.__dict__) for k, v in intervals.items()}


def classification_report_via_evaluate(labels: np.ndarray, scores: np.ndarray, names: Sequence[str],
                                       thresholds: np.ndarray) -> ClassificationReport:  # fmt: skip
    """The per-finding and averaged AUROC / AP / precision / recall / F1 of ``x2ctclip evaluate zeroshot``, computed
    by the package's ``evaluate`` modules (``train/metrics/*``, loaded offline by ``evaluate.load`` on their paths:
    :func:`~x2ctclip.train.metrics.load_metric`), so a reader reproduces every number with ``evaluate.load``.

    Args:
        labels: ``(n_cases, n_findings)`` 0/1, NaN = not annotated.
        scores: ``(n_cases, n_findings)`` scores, compared with ``thresholds`` (one per finding).
    """
    references, predictions = labels.tolist(), scores.tolist()
    auc = load_metric("multilabel_auroc").compute(predictions=predictions, references=references)
    ap = load_metric("multilabel_average_precision").compute(predictions=predictions, references=references)
    at = load_metric("multilabel_threshold_metrics").compute(
        predictions=predictions, references=references, threshold=[float(t) for t in thresholds]
    )

    def num(value: Any) -> float:  # the modules write undefined values as None (JSON)
        return float("nan") if value is None else float(value)

    annotated = ~np.isnan(labels)
    positives, negatives = (annotated & (labels == 1)).sum(0), (annotated & (labels == 0)).sum(0)
    findings = [
        FindingMetrics(
            name=name, auroc=num(auc["roc_auc_per_finding"][j]),
            average_precision=num(ap["average_precision_per_finding"][j]), precision=num(at["precision"][j]), recall=num(at["recall"][j]), f1=num(at["f1"][j]),
            specificity=num(at["specificity"][j]), threshold=float(thresholds[j]), n_positive=int(positives[j]),
            n_negative=int(negatives[j]),
        )
        for j, name in enumerate(names)
    ]
    return ClassificationReport(
        n_cases=len(labels), findings=findings,
        **{f"auroc_{a}": num(auc[f"roc_auc_{a}"]) for a in ("macro", "micro", "weighted")},
        **{f"average_precision_{a}": num(ap[f"average_precision_{a}"]) for a in ("macro", "micro", "weighted")},
        **{f"{m}_{a}": num(at[f"{a}_{m}"]) for a in ("macro", "micro") for m in ("precision", "recall", "f1")},
        excluded_findings=[f.name for f in findings if math.isnan(f.auroc)],
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _with_ci(value: Any, ci: dict | None) -> str:
    text = _fmt(value)
    if ci and ci.get("low") is not None and math.isfinite(ci["low"]) and math.isfinite(ci["high"]):
        text += f" [{_fmt(ci['low'])}, {_fmt(ci['high'])}]"
    return text


def _predictions_csv(names: list[str], target_names: list[str], scores: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", *target_names])
    for name, row in zip(names, scores):
        writer.writerow([name, *(repr(float(v)) for v in row)])  # shortest exact round trip
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------- zero-shot
def evaluate_classification(
    model_dir: str | os.PathLike,
    cases: Cases,
    out_dir: str | os.PathLike | None = None,
    *,
    threshold: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 1024,
    confidence: float = 0.95,
    compare: str | os.PathLike | None = None,
    ensemble: str = "probabilities",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
    loaded: LoadedModel | None = None,
    cxr_latents: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Per-finding and averaged AUROC / AP / F1 with bootstrap CIs (``x2ctclip evaluate zeroshot``).

    Args:
        model_dir: the model folder (zero-shot X2CT-CLIP or supervised classifier).
        cases: :func:`preprocessed_cases` or :func:`external_cases`.
        out_dir: where to write ``zeroshot_<tag>.json`` / ``.md`` / ``_predictions.csv`` (default
            ``model_dir/evaluation``).
        threshold: one operating point for F1 / precision / recall (default: the calibration's thresholds when the
            model has them, else 0.5).
        n_bootstrap: bootstrap resamples (``0``: no intervals).
        seed / confidence: bootstrap seed and interval level.
        compare: a second model folder scored on the same cases: paired DeLong test per finding and a paired
            bootstrap interval of the macro-AUROC difference.
        ensemble: zero-shot prompt ensemble.
        loaded / cxr_latents: an already loaded model and its CXR latents of ``cases`` (skips those steps).

    Returns:
        The record written to the JSON file.
    """
    from .calibration import expected_calibration_error
    from .statistics import bootstrap_ci, delong_test_per_finding

    model_dir = Path(model_dir)
    loaded = loaded or load_model(model_dir, device, ensemble)
    scored = _score(loaded, cases, batch_size, progress, cxr_latents)
    labels, scores = cases.labels, scored.scores
    thresholds, threshold_sources = _thresholds(loaded, cases, threshold)
    report = classification_report_via_evaluate(labels, scores, cases.target_names, thresholds)
    intervals = classification_metrics_with_ci(labels, scores, thresholds, n_bootstrap, seed, confidence, progress)
    annotated = ~np.isnan(labels)
    ece = None
    if annotated.any():
        ece = {
            "macro": expected_calibration_error(labels, scores, average="macro"),
            "pooled": expected_calibration_error(labels, scores, average="pooled"),
        }
    task = ({"type": "zero-shot-image-classification", "name": "Zero-shot CT findings from chest X-rays"}
            if loaded.kind == "zeroshot" else
            {"type": "image-classification", "name": "CT findings from chest X-rays (supervised head)"})  # fmt: skip
    entry = {
        "task": task,
        "dataset": cases.dataset,
        "report": report.to_dict(),
        "n_cases": len(cases),
        "confidence_intervals": intervals,
        "thresholds": {"values": thresholds, "sources": threshold_sources},
        "calibrated": loaded.calibrator is not None,
        "expected_calibration_error": ece,
        "source": SOURCE,
    }
    record = {
        **_provenance("evaluate zeroshot", seed),
        "model": loaded.describe(),
        "data": cases.source,
        "bootstrap": {"n_resamples": n_bootstrap, "confidence": confidence, "seed": seed,
                      "method": "percentile, cases resampled with replacement"},  # fmt: skip
        "results": [entry],
    }
    if compare is not None:
        other = load_model(compare, device, ensemble)
        other_scores = _score(other, cases, batch_size, progress).scores
        delong = delong_test_per_finding(labels, scores, other_scores, cases.target_names, confidence)
        comparison = {
            "model_b": other.describe(),
            "auroc_macro_a": report.auroc_macro,
            "auroc_macro_b": roc_auc(labels, other_scores, "macro"),
            "delong": {k: (v.to_dict() if v is not None else None) for k, v in delong.items()},
            "multiple_comparisons": "none (per-finding p-values are uncorrected)",
        }
        if n_bootstrap >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                diff = bootstrap_ci(lambda y, a, b: roc_auc(y, a, "macro") - roc_auc(y, b, "macro"), labels, scores,
                                    other_scores, n_resamples=n_bootstrap, seed=seed, confidence=confidence,
                                    vectorized=True)  # fmt: skip
            comparison["auroc_macro_difference"] = diff.__dict__
        record["comparison"] = comparison

    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    stem = f"zeroshot_{cases.tag}"
    write_atomic(out / f"{stem}_predictions.csv", _predictions_csv(cases.names, cases.target_names, scores))
    record["files"] = {"json": f"{stem}.json", "markdown": f"{stem}.md", "predictions": f"{stem}_predictions.csv"}
    _write_json(out / f"{stem}.json", record)
    write_atomic(out / f"{stem}.md", classification_markdown(record))
    return jsonable(record)


def classification_markdown(record: dict[str, Any]) -> str:
    """The markdown table of a :func:`evaluate_classification` record."""
    record = jsonable(record)
    entry = record["results"][0]
    report, ci = entry["report"], entry["confidence_intervals"] or {}
    boot = record["bootstrap"]
    conf = int(round(100 * boot["confidence"]))
    model = record["model"]
    lines = [
        f"# {entry['task']['name']}",
        "",
        f"- model: `{model['path']}` ({model['architecture']}, {model['kind']}"
        f"{', calibrated' if entry['calibrated'] else ''})",
        f"- data: `{record['data']['path']}` ({entry['dataset']['name']}), {report['n_cases']} cases",
        f"- bootstrap: {boot['n_resamples']} resamples, seed {boot['seed']}, {conf} % percentile intervals"
        if boot["n_resamples"] >= 2 else "- bootstrap: none",
        f"- operating points: {', '.join(sorted(set(entry['thresholds']['sources'])))}",
        "",
        f"| finding | n+ | n- | AUROC [{conf} % CI] | AP [{conf} % CI] | F1 | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    per_auc, per_ap = ci.get("auroc") or [None] * len(report["findings"]), ci.get("average_precision") or [None] * len(
        report["findings"])
    for j, row in enumerate(report["findings"]):
        lines.append(
            f"| {row['name']} | {row['n_positive']} | {row['n_negative']} | {_with_ci(row['auroc'], per_auc[j])} | "
            f"{_with_ci(row['average_precision'], per_ap[j])} | {_fmt(row['f1'])} | {_fmt(row['threshold'])} |"
        )
    lines += ["", "| average | AUROC | AP | F1 |", "|---|---|---|---|"]
    for average in ("macro", "micro", "weighted"):
        f1 = report.get(f"f1_{average}")
        lines.append(
            f"| {average} | {_with_ci(report[f'auroc_{average}'], ci.get(f'auroc_{average}'))} | "
            f"{_with_ci(report[f'average_precision_{average}'], ci.get(f'average_precision_{average}'))} | "
            f"{_with_ci(f1, ci.get(f'f1_{average}')) if f1 is not None else 'n/a'} |"
        )
    if report["excluded_findings"]:
        lines += ["", f"Excluded (one class or not annotated): {', '.join(report['excluded_findings'])}."]
    if entry.get("expected_calibration_error"):
        e = entry["expected_calibration_error"]
        lines += ["", f"Expected calibration error (15 bins): macro {_fmt(e['macro'])}, pooled {_fmt(e['pooled'])}."]
    comparison = record.get("comparison")
    if comparison:
        lines += [
            "",
            f"## Paired comparison with `{comparison['model_b']['path']}` (same cases)",
            "",
            "| finding | AUROC A | AUROC B | difference [DeLong CI] | DeLong p |",
            "|---|---|---|---|---|",
        ]
        for name, d in comparison["delong"].items():
            if d is None:
                lines.append(f"| {name} | n/a | n/a | n/a | n/a |")
                continue
            lines.append(f"| {name} | {_fmt(d['auc_a'])} | {_fmt(d['auc_b'])} | {_fmt(d['difference'])} "
                         f"[{_fmt(d['difference_low'])}, {_fmt(d['difference_high'])}] | {_fmt(d['p_value'], 4)} |")
        diff = comparison.get("auroc_macro_difference")
        macro = f"{_fmt(comparison['auroc_macro_a'])} vs {_fmt(comparison['auroc_macro_b'])}"
        if diff:
            macro += f", difference {_with_ci(diff['estimate'], diff)} (paired bootstrap)"
        lines += ["", f"Macro AUROC: {macro}. P-values are not corrected for multiple comparisons."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- retrieval
@torch.no_grad()
def _tower_latents(loaded: LoadedModel, cases: Cases, modality: str, batch_size: int, progress: bool | None):
    """CT or report latents from the model's own towers (L2-normalised, CPU)."""
    from .data import ct_values_from_ct, read_ct

    model = loaded.model
    chunks = []
    n = len(cases)
    bar = tqdm(range(0, n, batch_size), desc=f"encode {modality}", unit="batch", disable=progress is False)
    for start in bar:
        stop = min(start + batch_size, n)
        if modality == "report":
            from x2ctclip.processors.tokenization import tokenize_reports

            tokens = tokenize_reports(loaded.tokenizer, cases.reports[start:stop], max_length=loaded.text_max_length)
            tokens = {k: v.to(loaded.device) for k, v in tokens.items()}
            out = model.get_text_features(tokens["input_ids"], tokens.get("attention_mask"),
                                          tokens.get("token_type_ids")).pooler_output  # fmt: skip
        else:
            ct_values = ct_values_from_ct(read_ct(cases.preprocessed, range(start, stop)), device=loaded.device)
            out = model.get_ct_features(ct_values).pooler_output
        chunks.append(F.normalize(out.float(), dim=-1).cpu())
    return torch.cat(chunks)


def _cache_latents(cache: Path, split: str, names: list[str], dim: int) -> dict[str, torch.Tensor]:
    from .data import load_embedding_cache

    table = load_embedding_cache(cache, split)
    position = {str(n): i for i, n in enumerate(table.with_format(None, columns=["VolumeName"])["VolumeName"])}
    missing = [n for n in names if n not in position]
    if missing:
        raise ValueError(f"{cache / split}: {len(missing)} of the {len(names)} volumes are not in the embedding cache "
                         f"(e.g. {missing[0]!r}); cache the same preprocessed folder.")  # fmt: skip
    order = np.asarray([position[n] for n in names])
    out = {}
    for key, modality in (("ct_embeds", "ct"), ("text_embeds", "report")):
        values = np.asarray(table.with_format("numpy", columns=[key])[key], dtype=np.float32)[order]
        if values.shape[1] != dim:
            raise ValueError(f"{cache}: {key} have width {values.shape[1]}, the model's projection {dim}.")
        out[modality] = F.normalize(torch.from_numpy(values), dim=-1)
    return out


def evaluate_retrieval(
    model_dir: str | os.PathLike,
    cases: Cases,
    out_dir: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    recall_at: Sequence[int] = DEFAULT_RECALL_AT,
    map_at: Sequence[int] = DEFAULT_MAP_AT,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
    loaded: LoadedModel | None = None,
    cxr_latents: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Recall@K and label-overlap MAP@K between CXR, report and CT latents (``x2ctclip evaluate retrieval``).

    CXR latents come from the model. CT and report latents come from the embedding ``cache`` of the same split
    (matched by volume name), else from the model's own CT / report towers when it has them (reports tokenised with
    the folder's tokenizer, CTs read from the preprocessed ``ct`` column). Directions: CXR->report, report->CXR,
    CXR->CT, CT->CXR, CT->report, report->CT, and the same-modality CT->CT and CXR->CXR (each query's own item left
    out, so no Recall@K there). MAP@K needs every label annotated (external collections with missing labels report
    Recall@K only).
    """
    model_dir = Path(model_dir)
    loaded = loaded or load_model(model_dir, device)
    latents: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    latents["cxr"] = cxr_latents if cxr_latents is not None else encode_images(loaded, cases.images, batch_size, progress)
    dim = latents["cxr"].shape[1]
    if cache is not None:
        if cases.preprocessed is None:
            raise ValueError("an embedding cache pairs with preprocessed data (--data), not with an external collection.")
        latents.update(_cache_latents(Path(cache), cases.source["split"], cases.names, dim))
        origin = f"embedding cache {Path(cache).resolve()}"
    else:
        origin = "the model's towers"
        if cases.reports is not None and loaded.has_tower("text") and loaded.tokenizer is not None:
            latents["report"] = _tower_latents(loaded, cases, "report", batch_size, progress)
        else:
            notes.append("no report latents (no cache, and no report text / text tower / tokenizer)")
        if cases.preprocessed is not None and loaded.has_tower("ct") and "ct" in cases.preprocessed.column_names:
            latents["ct"] = _tower_latents(loaded, cases, "ct", batch_size, progress)
        else:
            notes.append("no CT latents (no cache, and no CT volumes / CT tower)")
    labels = cases.labels
    labelled = not np.isnan(labels).any()
    if not labelled:
        notes.append("labels are not all annotated: MAP@K is not computed")
    query_labels = labels.astype(np.int64) if labelled else None
    directions = [("cxr", "report"), ("report", "cxr"), ("cxr", "ct"), ("ct", "cxr"), ("ct", "report"),
                  ("report", "ct"), ("ct", "ct"), ("cxr", "cxr")]  # fmt: skip
    names = {"cxr": "CXR", "report": "report", "ct": "CT"}
    results: dict[str, Any] = {}
    # Computed by the package's `retrieval` evaluate module (evaluate.load on its path), as a reader would.
    metric = load_metric("retrieval", **({"config_name": "with_labels"} if labelled else {}))
    for query, gallery in directions:
        if query not in latents or gallery not in latents:
            continue
        same = query == gallery
        if same and not labelled:
            continue  # own item left out and no labels: neither Recall@K nor MAP@K is defined
        inputs = {"labels": query_labels.tolist()} if labelled else {}
        results[f"{names[query]}->{names[gallery]}"] = metric.compute(
            predictions=latents[query].float().cpu().tolist(), references=latents[gallery].float().cpu().tolist(),
            recall_at=list(recall_at), map_at=list(map_at) if labelled else [], exclude_self=same, normalize=False,
            **inputs,
        )
    if not results:
        raise ValueError(f"{model_dir}: no retrieval direction can be computed ({'; '.join(notes)}); pass --cache.")
    metrics = []
    for direction, values in results.items():
        for key, value in values.items():
            if key.startswith(("recall@", "map@")) and value is not None:
                kind, k = key.split("@")
                metrics.append({"type": f"{kind}_at_{k}", "name": f"{direction} {'Recall' if kind == 'recall' else 'MAP'}@{k}",
                                "value": value})  # fmt: skip
    entry = {
        "task": {"type": "feature-extraction", "name": "Cross-modal retrieval (CXR, report and CT latents)"},
        "dataset": cases.dataset,
        "metrics": metrics,
        "n_cases": len(cases),
        "directions": results,
        "source": SOURCE,
    }
    record = {
        **_provenance("evaluate retrieval"),
        "model": loaded.describe(),
        "data": cases.source,
        "latents": {"cxr": "the model", "ct": origin if "ct" in latents else None,
                    "report": origin if "report" in latents else None},  # fmt: skip
        "recall_at": list(recall_at),
        "map_at": list(map_at) if labelled else [],
        "notes": notes,
        "results": [entry],
    }
    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    stem = f"retrieval_{cases.tag}"
    record["files"] = {"json": f"{stem}.json", "markdown": f"{stem}.md"}
    _write_json(out / f"{stem}.json", record)
    write_atomic(out / f"{stem}.md", retrieval_markdown(record))
    return jsonable(record)


def retrieval_markdown(record: dict[str, Any]) -> str:
    record = jsonable(record)
    entry = record["results"][0]
    recall_at, map_at = record["recall_at"], record["map_at"]
    header = [f"R@{k}" for k in recall_at] + [f"MAP@{k}" for k in map_at] + ["median rank", "queries"]
    lines = [
        "# Retrieval",
        "",
        f"- model: `{record['model']['path']}`",
        f"- data: `{record['data']['path']}` ({entry['dataset']['name']}), {entry['n_cases']} cases",
        f"- CT latents: {record['latents']['ct'] or 'none'}; report latents: {record['latents']['report'] or 'none'}",
        "- same-modality directions leave each query's own item out (no Recall@K)",
        "",
        "| direction | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
    ]
    for direction, values in entry["directions"].items():
        cells = [_fmt(values.get(f"recall@{k}")) for k in recall_at] + [_fmt(values.get(f"map@{k}")) for k in map_at]
        cells += [_fmt(values.get("median_rank"), 1), str(values["n_queries"])]
        lines.append(f"| {direction} | " + " | ".join(cells) + " |")
    if record["notes"]:
        lines += ["", "Notes: " + "; ".join(record["notes"]) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- calibration
def save_calibration(model_dir: str | os.PathLike, calibration: dict[str, Any] | None, demo_file: bool = True) -> Path:
    """Store a calibration dict (``Calibrator.to_dict()``) as ``calibration`` in ``model_dir/config.json``, atomically
    (the other config entries are kept as they are); None removes it. For zero-shot models (no classifier head) also
    write ``calibration.json``, the file the Space demo reads."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json to store the calibration in.")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err}).") from None
    if calibration is None:
        config.pop("calibration", None)
    else:
        config["calibration"] = jsonable(calibration)
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    demo = model_dir / "calibration.json"
    if demo_file and CLASSIFIER_ARCHITECTURE not in (config.get("architectures") or []):
        if calibration is None:
            demo.unlink(missing_ok=True)
        else:
            write_atomic(demo, json.dumps({"cxr": jsonable(calibration)}, indent=2) + "\n")
    from .hub_folders import refresh_model_folder

    refresh_model_folder(model_dir)  # the card's file table lists calibration.json; configs stay portable
    return path


def calibrate(
    model_dir: str | os.PathLike,
    cases: Cases,
    out_dir: str | os.PathLike | None = None,
    *,
    method: str = "temperature",
    thresholds: str | float | None = "youden",
    n_bins: int = 15,
    save: bool = True,
    ensemble: str = "probabilities",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Fit per-finding calibration and operating points on validation cases (``x2ctclip evaluate calibrate``).

    The model's *uncalibrated* log-odds (any calibration already in the folder is ignored) are fitted with
    :class:`~x2ctclip.train.calibration.Calibrator` (``method`` ``"temperature"`` or ``"platt"``; ``thresholds``
    ``"youden"`` or a target sensitivity such as 0.9). Writes ``calibration_<tag>.json`` / ``.md`` with the ECE per
    finding before and after, a reliability diagram ``reliability_<tag>.png``, and (``save``) stores the calibration
    in the model folder's ``config.json`` (:func:`save_calibration`).
    """
    from .calibration import Calibrator, expected_calibration_error, reliability_diagram

    model_dir = Path(model_dir)
    loaded = load_model(model_dir, device, ensemble, calibrated=False)
    latents = encode_images(loaded, cases.images, batch_size, progress)
    logits = compute_logits(loaded, latents)
    labels = cases.labels_for_findings(loaded.findings)
    if np.isnan(labels).all():
        raise ValueError("no label of the calibration cases maps to a single model finding; nothing to fit.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrator = Calibrator.fit(logits, labels, method=method, thresholds=thresholds, finding_names=loaded.findings)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    before = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
    after = np.asarray(calibrator.transform(logits), dtype=np.float64)
    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    stem = cases.tag
    diagram = reliability_diagram(out / f"reliability_{stem}.png", labels, before, after, n_bins=n_bins,
                                  title=f"Reliability on {cases.dataset['name']} ({method} scaling)")  # fmt: skip
    per_before = expected_calibration_error(labels, before, n_bins, average=None)
    per_after = expected_calibration_error(labels, after, n_bins, average=None)
    record = {
        **_provenance("evaluate calibrate"),
        "model": loaded.describe(),
        "data": cases.source,
        "method": method,
        "threshold_method": calibrator.threshold_method,
        "n_bins": n_bins,
        "calibration": calibrator.to_dict(),
        "ece": {
            "before": {"macro": expected_calibration_error(labels, before, n_bins, "macro"),
                       "pooled": expected_calibration_error(labels, before, n_bins, "pooled")},
            "after": {"macro": expected_calibration_error(labels, after, n_bins, "macro"),
                      "pooled": expected_calibration_error(labels, after, n_bins, "pooled")},
            "note": "measured on the cases the calibration was fitted on (in-sample)",
        },
        "findings": [
            {"name": name, "ece_before": per_before[j], "ece_after": per_after[j],
             "slope": calibrator.slope[j], "intercept": calibrator.intercept[j],
             "threshold": None if calibrator.thresholds is None else calibrator.thresholds[j],
             "n_positive": int(np.nansum(labels[:, j] == 1)), "n_negative": int(np.nansum(labels[:, j] == 0))}
            for j, name in enumerate(loaded.findings)
        ],  # fmt: skip
        "notes": notes,
        "saved_to": str((model_dir / "config.json").resolve()) if save else None,
        "files": {"json": f"calibration_{stem}.json", "markdown": f"calibration_{stem}.md", "diagram": diagram.name},
    }
    if save:
        save_calibration(model_dir, calibrator.to_dict())
    _write_json(out / f"calibration_{stem}.json", record)
    write_atomic(out / f"calibration_{stem}.md", calibration_markdown(record))
    return jsonable(record)


def calibration_markdown(record: dict[str, Any]) -> str:
    record = jsonable(record)
    ece = record["ece"]
    lines = [
        f"# Calibration ({record['method']} scaling, thresholds: {record['threshold_method'] or 'none'})",
        "",
        f"- model: `{record['model']['path']}`" + (f" (saved into `{record['saved_to']}`)" if record["saved_to"] else ""),
        f"- data: `{record['data']['path']}` ({record['data'].get('split', 'external')}), {record['n_bins']} bins",
        f"- ECE macro {_fmt(ece['before']['macro'])} -> {_fmt(ece['after']['macro'])}, pooled "
        f"{_fmt(ece['before']['pooled'])} -> {_fmt(ece['after']['pooled'])} ({ece['note']})",
        f"- reliability diagram: `{record['files']['diagram']}`",
        "",
        "| finding | n+ | n- | slope | intercept | threshold | ECE before | ECE after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in record["findings"]:
        lines.append(f"| {row['name']} | {row['n_positive']} | {row['n_negative']} | {_fmt(row['slope'])} | "
                     f"{_fmt(row['intercept'])} | {_fmt(row['threshold'])} | {_fmt(row['ece_before'])} | "
                     f"{_fmt(row['ece_after'])} |")  # fmt: skip
    if record["notes"]:
        lines += ["", "Notes: " + " ".join(record["notes"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- all
def evaluate_all(
    model_dir: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    split: str = "test",
    calibration_split: str | None = "valid",
    cache: str | os.PathLike | None = None,
    external: str | os.PathLike | None = None,
    mapping: Any = "auto",
    out_dir: str | os.PathLike | None = None,
    method: str = "temperature",
    thresholds: str | float | None = "youden",
    threshold: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 1024,
    confidence: float = 0.95,
    compare: str | os.PathLike | None = None,
    ensemble: str = "probabilities",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
    dataset_name: str | None = None,
    dataset_type: str | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Everything in order (``x2ctclip evaluate all``): calibration on ``calibration_split`` of ``data`` (None: keep
    the folder's calibration), then classification with intervals and retrieval on ``split`` of ``data`` (retrieval
    only when a cache or the towers give CT / report latents), then the same on the ``external`` collection.
    ``save=False`` fits and reports the calibration without storing it (the later steps then use the folder's own).
    Writes ``evaluation.json`` (all Hub results together) and ``evaluation.md``."""
    if data is None and external is None:
        raise ValueError("evaluate all needs --data PREPROCESSED and / or --external CSV_OR_FOLDER.")
    model_dir = Path(model_dir)
    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    records: dict[str, Any] = {}
    common = dict(batch_size=batch_size, device=device, progress=progress)
    if data is not None and calibration_split:
        valid = preprocessed_cases(data, calibration_split, dataset_name, dataset_type)
        records["calibration"] = calibrate(model_dir, valid, out, method=method, thresholds=thresholds,
                                           save=save, ensemble=ensemble, **common)  # fmt: skip
    sets = []
    if data is not None:
        sets.append(preprocessed_cases(data, split, dataset_name, dataset_type))
    if external is not None:
        sets.append(external_cases(external, mapping, require_labels=True))
    results, skipped = [], []
    loaded = load_model(model_dir, device, ensemble)  # after the calibration step: with its calibration
    for cases in sets:
        latents = encode_images(loaded, cases.images, batch_size, progress)
        record = evaluate_classification(model_dir, cases, out, threshold=threshold, n_bootstrap=n_bootstrap,
                                         seed=seed, confidence=confidence, compare=compare, ensemble=ensemble,
                                         loaded=loaded, cxr_latents=latents, **common)  # fmt: skip
        records[f"zeroshot_{cases.tag}"] = record
        results += record["results"]
        try:
            record = evaluate_retrieval(model_dir, cases, out, cache=cache if cases.preprocessed is not None else None,
                                        loaded=loaded, cxr_latents=latents, **common)  # fmt: skip
        except ValueError as err:
            skipped.append(f"retrieval on {cases.tag}: {err}")
            continue
        records[f"retrieval_{cases.tag}"] = record
        results += record["results"]
    summary = {
        **_provenance("evaluate all", seed),
        "model": loaded.describe(),
        "files": {name: r.get("files") for name, r in records.items()},
        "skipped": skipped,
        "results": results,
    }
    _write_json(out / "evaluation.json", summary)
    parts = [f"# Evaluation of `{model_dir}`", ""]
    if "calibration" in records:
        parts.append(calibration_markdown(records["calibration"]))
    for name, record in records.items():
        if name.startswith("zeroshot_"):
            parts.append(classification_markdown(record))
        elif name.startswith("retrieval_"):
            parts.append(retrieval_markdown(record))
    if skipped:
        parts.append("Skipped: " + "; ".join(skipped) + "\n")
    write_atomic(out / "evaluation.md", "\n".join(parts))
    return jsonable({**summary, "records": records})

