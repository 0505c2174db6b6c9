"""Zero-shot classification scoring: per-finding AUROC with intervals, thresholds, reports, markdown."""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from x2ctclip.fileio import write_atomic
from x2ctclip.train import distributed
from x2ctclip.train.evaluation.cases import Cases
from x2ctclip.train.evaluation.external_sets import target_scores
from x2ctclip.train.evaluation.metrics import (
    ClassificationReport,
    FindingMetrics,
    average_precision,
    jsonable,
    load_metric,
    precision_recall_f1,
    roc_auc,
)
from x2ctclip.train.evaluation.models import (
    LoadedModel,
    compute_logits,
    encode_images,
    load_model,
    probabilities_from_logits,
)
from x2ctclip.train.evaluation.provenance import SOURCE, provenance_record, write_report


# ---------------------------------------------------------------------------------------------------------- scores
@dataclass
class _Scored:
    latents: torch.Tensor
    logits: np.ndarray  # (N, F) uncalibrated, model findings
    probabilities: np.ndarray  # (N, F) calibrated when available
    scores: np.ndarray  # (N, T) per target


def encode_images_ranked(loaded: LoadedModel, images: Any, batch_size: int = 64,
                         progress: bool | None = None) -> torch.Tensor:  # fmt: skip
    """:func:`encode_images` of every image, the batches dealt across the ranks of a ``torchrun`` job (contiguous
    blocks on batch boundaries, :func:`x2ctclip.train.distributed.batch_block`) and gathered in order: the same
    ``(N, projection_dim)`` latents as one process (each batch is the one a single process would run)."""
    if distributed.world_size() == 1:
        return encode_images(loaded, images, batch_size, progress)
    start, stop = distributed.batch_block(len(images), batch_size)
    local = encode_images(loaded, images[start:stop], batch_size, progress if distributed.is_main() else False)
    return distributed.gather_rows(local)


def _score(loaded: LoadedModel, cases: Cases, batch_size: int, progress: bool | None,
           latents: torch.Tensor | None = None) -> _Scored:  # fmt: skip
    if latents is None:
        latents = encode_images_ranked(loaded, cases.images, batch_size, progress)
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
    from x2ctclip.train.evaluation.uncertainty import bootstrap_ci

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
    by the package's ``evaluate`` modules (``train/evaluation/hf_metrics/*``, loaded offline by ``evaluate.load`` on their paths:
    :func:`~x2ctclip.train.evaluation.metrics.load_metric`), so a reader reproduces every number with ``evaluate.load``.

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


def fmt_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _with_ci(value: Any, ci: dict | None) -> str:
    text = fmt_number(value)
    if ci and ci.get("low") is not None and math.isfinite(ci["low"]) and math.isfinite(ci["high"]):
        text += f" [{fmt_number(ci['low'])}, {fmt_number(ci['high'])}]"
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
    cxr_embeds: torch.Tensor | None = None,
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
        loaded / cxr_embeds: an already loaded model and its CXR latents of ``cases`` (skips those steps).

    Returns:
        The record written to the JSON file.
    """
    model_dir = Path(model_dir)
    loaded = loaded or load_model(model_dir, device, ensemble)
    # The forward passes use every rank; the metrics and the files are rank 0's, sent to the others.
    scored = _score(loaded, cases, batch_size, progress, cxr_embeds)
    other = other_scores = None
    if compare is not None:
        other = load_model(compare, device, ensemble)
        other_scores = _score(other, cases, batch_size, progress).scores
    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    return distributed.on_main_then_broadcast(lambda: _classification_record(
        loaded, cases, scored.scores, out, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed,
        confidence=confidence, other=other, other_scores=other_scores, progress=progress))


def _classification_record(loaded: LoadedModel, cases: Cases, scores: np.ndarray, out: Path, *, threshold, n_bootstrap,
                           seed, confidence, other, other_scores, progress) -> dict[str, Any]:  # fmt: skip
    """Metrics, intervals and the optional comparison of :func:`evaluate_classification`; writes its files."""
    from x2ctclip.train.evaluation.calibration import expected_calibration_error
    from x2ctclip.train.evaluation.uncertainty import bootstrap_ci, delong_test_per_finding

    labels = cases.labels
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
        **provenance_record("evaluate zeroshot", seed),
        "model": loaded.describe(),
        "data": cases.source,
        "bootstrap": {"n_resamples": n_bootstrap, "confidence": confidence, "seed": seed,
                      "method": "percentile, cases resampled with replacement"},  # fmt: skip
        "results": [entry],
    }
    if other is not None:
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

    stem = f"zeroshot_{cases.tag}"
    write_atomic(out / f"{stem}_predictions.csv", _predictions_csv(cases.names, cases.target_names, scores))
    return write_report(out, stem, record, classification_markdown, predictions=f"{stem}_predictions.csv")


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
            f"{_with_ci(row['average_precision'], per_ap[j])} | {fmt_number(row['f1'])} | {fmt_number(row['threshold'])} |"
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
        lines += ["", f"Expected calibration error (15 bins): macro {fmt_number(e['macro'])}, pooled {fmt_number(e['pooled'])}."]
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
            lines.append(f"| {name} | {fmt_number(d['auc_a'])} | {fmt_number(d['auc_b'])} | {fmt_number(d['difference'])} "
                         f"[{fmt_number(d['difference_low'])}, {fmt_number(d['difference_high'])}] | {fmt_number(d['p_value'], 4)} |")
        diff = comparison.get("auroc_macro_difference")
        macro = f"{fmt_number(comparison['auroc_macro_a'])} vs {fmt_number(comparison['auroc_macro_b'])}"
        if diff:
            macro += f", difference {_with_ci(diff['estimate'], diff)} (paired bootstrap)"
        lines += ["", f"Macro AUROC: {macro}. P-values are not corrected for multiple comparisons."]
    return "\n".join(lines) + "\n"
