"""The evaluation results schema a model card reads (the evaluation outputs' `results` list)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult
from x2ctclip.train.hub.metadata import PIPELINE_TAG

# Headline keys of a ``ClassificationReport`` (x2ctclip.train.evaluation.metrics) -> (Hub metric type, config, display name).
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


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _parse_metrics(raw: Any, where: str) -> list[tuple[str, str, float, str | None]]:
    """Metrics as a list of ``{"type", "value", "name"?, "config"?}`` or a flat ``{key: value}`` dict."""
    metrics = []
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            number = finite_number(value)
            if number is None:
                continue  # undefined (NaN / None) or not a number (e.g. a nested table): nothing to report
            metric_type, config, name = _REPORT_METRICS.get(key, (key, None, key))
            metrics.append((metric_type, name, number, config))
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or "type" not in item or "value" not in item:
                raise ValueError(f"{where}: metrics[{i}] must be an object with 'type' and 'value', got {item!r}.")
            number = finite_number(item["value"])
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
