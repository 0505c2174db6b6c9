"""Multi-label classification metrics for the 18 CT-RATE findings (AUROC, average precision, F1 / precision / recall).

Conventions shared by every function here:

- ``y_true`` and ``y_score`` have shape ``(n_cases,)`` (one finding), ``(n_cases, n_findings)``, or
  ``(*batch, n_cases, n_findings)``; leading batch dimensions are computed independently in one vectorised pass
  (the bootstrap in :mod:`x2ctclip.train.evaluation.uncertainty` uses this for its resamples). NumPy arrays, torch tensors
  and nested lists are accepted; results are NumPy arrays / Python floats.
- Labels are 0 / 1. **NaN labels mean "not annotated"** (e.g. a finding an external test set does not label):
  those cases are masked out of that finding only.
- Scores may be probabilities or logits for the ranking metrics (AUROC, AP); the threshold metrics compare the
  scores with the threshold you pass (``score >= threshold`` is positive), so pass probabilities with 0.5 or logits
  with 0.0. Scores must be finite wherever the label is annotated.
- **A finding whose annotated cases hold a single class** (no positive or no negative) has no defined AUROC or AP:
  it gets NaN and is *excluded* from the macro and weighted averages (scikit-learn raises instead). Micro averages
  pool every annotated (case, finding) pair, so such findings still contribute there.
- Ties in scores count one half (midranks), exactly as :func:`sklearn.metrics.roc_auc_score`. Average precision is
  scikit-learn's step-wise definition ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds.

The same metrics are shipped as offline ``evaluate`` modules, see :func:`load_metric`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "AVERAGES",
    "LOCAL_METRICS",
    "ClassificationReport",
    "FindingMetrics",
    "average_precision",
    "average_precision_per_finding",
    "classification_report",
    "confusion_counts",
    "f1_score",
    "jsonable",
    "load_metric",
    "local_metric_path",
    "precision_recall_f1",
    "roc_auc",
    "roc_auc_per_finding",
    "to_numpy",
]

AVERAGES = ("macro", "micro", "weighted")

# Local `evaluate` metric modules shipped in train/evaluation/hf_metrics/<name>/<name>.py (see load_metric).
LOCAL_METRICS = (
    "multilabel_auroc",
    "multilabel_average_precision",
    "multilabel_threshold_metrics",
    "retrieval",
)


# ----------------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------------


def to_numpy(x: Any, name: str = "input", dtype: Any = np.float64) -> np.ndarray:
    """Converts a NumPy array, torch tensor (any device, with or without grad) or nested list to a NumPy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if dtype is not None and str(x.dtype) == "torch.bfloat16":
            x = x.float()  # NumPy has no bfloat16
        x = x.numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric array-like, got {type(x).__name__}: {err}") from None


def check_labels(y: np.ndarray, name: str = "y_true") -> np.ndarray:
    """Validates 0/1/NaN labels; returns the boolean mask of annotated entries."""
    valid = ~np.isnan(y)
    bad = valid & (y != 0) & (y != 1)
    if bad.any():
        values = np.unique(y[bad])[:5]
        raise ValueError(f"{name} must hold 0 / 1 labels (NaN = not annotated); found values {values.tolist()}.")
    return valid


def _prepare(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Validates inputs and returns (y, s, valid, squeeze) with y, s of shape (*batch, n, F).

    ``squeeze`` is True when the inputs were 1-D (a single finding), so results should be returned as scalars.
    """
    y = to_numpy(y_true, "y_true")
    s = to_numpy(y_score, "y_score")
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score must have the same shape, got {y.shape} and {s.shape}.")
    if y.ndim == 0:
        raise ValueError("y_true and y_score must have at least one dimension (cases).")
    squeeze = y.ndim == 1
    if squeeze:
        y, s = y[:, None], s[:, None]
    if y.shape[-2] == 0:
        raise ValueError("y_true and y_score hold no cases.")
    valid = check_labels(y)
    if not np.isfinite(s[valid]).all():
        raise ValueError("y_score must be finite (no NaN / inf) wherever the label is annotated.")
    return y, s, valid, squeeze


def _columns(x: np.ndarray) -> np.ndarray:
    """(*batch, n, F) -> (n, prod(batch) * F): every (batch, finding) pair becomes one column."""
    return np.moveaxis(x, -2, 0).reshape(x.shape[-2], -1)


def _uncolumns(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(prod(batch) * F,) -> (*batch, F) for a (*batch, n, F) input shape."""
    return v.reshape(shape[:-2] + shape[-1:])


def _micro_view(x: np.ndarray) -> np.ndarray:
    """(*batch, n, F) -> (*batch, n * F, 1): pools all (case, finding) pairs into one column per batch element."""
    return x.reshape(x.shape[:-2] + (-1, 1))


# ----------------------------------------------------------------------------------------------------------------
# Rank machinery (shared with the DeLong test in statistics.py)
# ----------------------------------------------------------------------------------------------------------------


def _tie_bounds(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last row index of the tie block each row belongs to, for column-wise sorted keys (n, M)."""
    n = sorted_keys.shape[0]
    idx = np.arange(n)[:, None]
    new_block = np.ones(sorted_keys.shape, dtype=bool)
    new_block[1:] = sorted_keys[1:] != sorted_keys[:-1]
    last_of_block = np.ones(sorted_keys.shape, dtype=bool)
    last_of_block[:-1] = new_block[1:]
    start = np.maximum.accumulate(np.where(new_block, idx, 0), axis=0)
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last_of_block, idx, n - 1), axis=0), axis=0), axis=0)
    return start, end


def mid_ranks(scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Midranks (1-based, ties share the mean rank) of each column of ``scores`` (n, M) among its valid rows.

    Invalid rows get NaN. Valid scores must be finite: invalid rows are pushed to the end of each column as +inf.
    """
    if valid is None:
        keys = scores
    else:
        keys = np.where(valid, scores, np.inf)
    order = np.argsort(keys, axis=0, kind="stable")
    sorted_keys = np.take_along_axis(keys, order, axis=0)
    start, end = _tie_bounds(sorted_keys)
    ranks = np.empty_like(keys, dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=0)
    if valid is not None:
        ranks[~valid] = np.nan
    return ranks


def _auroc_columns(y: np.ndarray, s: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann-Whitney AUROC of each column (n, M); returns (auc, n_pos, n_neg), auc NaN for single-class columns."""
    pos = valid & (y == 1)
    n_pos = pos.sum(axis=0)
    n_neg = valid.sum(axis=0) - n_pos
    ranks = mid_ranks(s, valid)
    rank_sum = np.where(pos, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    return auc, n_pos, n_neg


def _ap_columns(y: np.ndarray, s: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average precision of each column (n, M); returns (ap, n_pos, n_neg), ap NaN for single-class columns."""
    # Descending order of score; non-annotated rows go last as +inf keys and carry zero weight.
    keys = np.where(valid, -s, np.inf)
    order = np.argsort(keys, axis=0, kind="stable")
    sorted_keys = np.take_along_axis(keys, order, axis=0)
    y_sorted = np.take_along_axis(np.where(valid & (y == 1), 1.0, 0.0), order, axis=0)
    w_sorted = np.take_along_axis(valid.astype(np.float64), order, axis=0)
    tp = np.cumsum(y_sorted, axis=0)
    fp = np.cumsum(w_sorted - y_sorted, axis=0)
    # Each positive's recall step is credited with the precision at the end of its tie block (threshold = its score).
    _, end = _tie_bounds(sorted_keys)
    tp_end = np.take_along_axis(tp, end, axis=0)
    fp_end = np.take_along_axis(fp, end, axis=0)
    precision_end = tp_end / np.maximum(tp_end + fp_end, 1.0)
    n_pos = y_sorted.sum(axis=0)
    n_neg = w_sorted.sum(axis=0) - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (y_sorted * precision_end).sum(axis=0) / n_pos
    ap = np.where((n_pos > 0) & (n_neg > 0), ap, np.nan)
    return ap, n_pos, n_neg


def _average(values: np.ndarray, support: np.ndarray, average: str) -> np.ndarray:
    """Macro / weighted average over the last axis, ignoring NaN entries (undefined findings)."""
    defined = ~np.isnan(values)
    if average == "macro":
        weights = defined.astype(np.float64)
    elif average == "weighted":
        weights = np.where(defined, support, 0.0).astype(np.float64)
    else:  # pragma: no cover - guarded by callers
        raise ValueError(average)
    total = weights.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.where(defined, values, 0.0) * weights).sum(axis=-1) / total
    return np.where(total > 0, out, np.nan)


def _check_average(average: str | None) -> None:
    if average is not None and average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES} or None, got {average!r}.")


def _scalar(v: Any) -> Any:
    """0-d arrays become Python floats / ints; other arrays pass through."""
    return np.asarray(v).item() if np.ndim(v) == 0 else v


def _ranking_metric(kernel, y_true: Any, y_score: Any, average: str | None) -> float | np.ndarray:
    _check_average(average)
    y, s, valid, squeeze = _prepare(y_true, y_score)
    if average == "micro":
        ym, sm, vm = _micro_view(y), _micro_view(s), _micro_view(valid)
        value, _, _ = kernel(_columns(ym), _columns(sm), _columns(vm))
        return _scalar(_uncolumns(value, ym.shape)[..., 0])
    value, n_pos, _ = kernel(_columns(y), _columns(s), _columns(valid))
    value = _uncolumns(value, y.shape)
    if average is None:
        return _scalar(value[..., 0]) if squeeze else value
    return _scalar(_average(value, _uncolumns(n_pos, y.shape), average))


# ----------------------------------------------------------------------------------------------------------------
# Ranking metrics
# ----------------------------------------------------------------------------------------------------------------


def roc_auc_per_finding(y_true: Any, y_score: Any) -> float | np.ndarray:
    """AUROC of every finding.

    Args:
        y_true: ``(n_cases, n_findings)`` 0/1 labels, NaN = not annotated (or ``(n_cases,)``, or with leading batch
            dimensions ``(*batch, n_cases, n_findings)``).
        y_score: scores of the same shape (probabilities or logits; only their order matters).

    Returns:
        ``(n_findings,)`` (``(*batch, n_findings)``) AUROCs, NaN for findings whose annotated cases hold a single
        class; a float for 1-D inputs.
    """
    return _ranking_metric(_auroc_columns, y_true, y_score, None)


def roc_auc(y_true: Any, y_score: Any, average: str | None = "macro") -> float | np.ndarray:
    """AUROC averaged over findings.

    ``average``: ``"macro"`` (unweighted mean over the findings with both classes), ``"weighted"`` (weighted by the
    number of annotated positives, as scikit-learn), ``"micro"`` (one AUROC over all annotated (case, finding)
    pairs), or None (per finding, same as :func:`roc_auc_per_finding`). NaN when no finding is defined.
    """
    return _ranking_metric(_auroc_columns, y_true, y_score, average)


def average_precision_per_finding(y_true: Any, y_score: Any) -> float | np.ndarray:
    """Average precision (area under the step-wise precision-recall curve) of every finding; NaN if single-class."""
    return _ranking_metric(_ap_columns, y_true, y_score, None)


def average_precision(y_true: Any, y_score: Any, average: str | None = "macro") -> float | np.ndarray:
    """Average precision averaged over findings (``average`` as in :func:`roc_auc`)."""
    return _ranking_metric(_ap_columns, y_true, y_score, average)


# ----------------------------------------------------------------------------------------------------------------
# Threshold metrics
# ----------------------------------------------------------------------------------------------------------------


def _confusion(y: np.ndarray, s: np.ndarray, valid: np.ndarray, threshold: Any) -> dict[str, np.ndarray]:
    thr = to_numpy(threshold, "threshold")
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != y.shape[-1]):
        raise ValueError(
            f"threshold must be a float or one value per finding ({y.shape[-1]}), got shape {thr.shape}."
        )
    if not np.isfinite(thr).all():
        raise ValueError("threshold must be finite.")
    pred = s >= thr
    pos = valid & (y == 1)
    neg = valid & (y == 0)
    return {
        "tp": (pred & pos).sum(axis=-2),
        "fp": (pred & neg).sum(axis=-2),
        "fn": (~pred & pos).sum(axis=-2),
        "tn": (~pred & neg).sum(axis=-2),
    }


def confusion_counts(y_true: Any, y_score: Any, threshold: float | Sequence[float] | np.ndarray = 0.5) -> dict:
    """Confusion-matrix counts per finding at an operating point (``score >= threshold`` is positive).

    ``threshold`` is a float (all findings) or ``(n_findings,)`` (one per finding). Returns a dict of
    ``(*batch, n_findings)`` integer arrays ``tp``, ``fp``, ``fn``, ``tn`` over annotated cases (ints for 1-D input).
    """
    y, s, valid, squeeze = _prepare(y_true, y_score)
    counts = _confusion(y, s, valid, threshold)
    return {k: int(v[0]) for k, v in counts.items()} if squeeze else counts


def _ratio(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), zero_division)


def precision_recall_f1(
    y_true: Any,
    y_score: Any,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    average: str | None = "macro",
    zero_division: float = 0.0,
) -> dict[str, float | np.ndarray]:
    """Precision, recall (sensitivity), F1 and specificity at an operating point.

    Args:
        threshold: ``score >= threshold`` is positive; a float or one value per finding.
        average: ``"macro"`` (mean over findings), ``"micro"`` (from counts pooled over findings), ``"weighted"``
            (weighted by annotated positives), or None (per finding). Macro and weighted skip NaN entries, which
            only occur with ``zero_division=nan``.
        zero_division: value when a ratio has a zero denominator (e.g. precision when nothing is predicted
            positive); 0.0 matches scikit-learn's default, ``float("nan")`` excludes such findings from averages.

    Returns:
        ``{"precision", "recall", "f1", "specificity"}`` floats (``(*batch,)`` arrays for batched input, or
        ``(n_findings,)`` arrays for ``average=None``), and ``"support"``: annotated positives per finding (or their
        total).
    """
    _check_average(average)
    y, s, valid, squeeze = _prepare(y_true, y_score)
    c = _confusion(y, s, valid, threshold)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    support = tp + fn
    if average == "micro":
        tp, fp, fn, tn = (x.sum(axis=-1) for x in (tp, fp, fn, tn))
    out = {
        "precision": _ratio(tp, tp + fp, zero_division),
        "recall": _ratio(tp, tp + fn, zero_division),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "specificity": _ratio(tn, tn + fp, zero_division),
    }
    if average in ("macro", "weighted"):
        out = {k: _average(v, support, average) for k, v in out.items()}
    if average is None:
        out["support"] = support
        return {k: _scalar(v[..., 0]) for k, v in out.items()} if squeeze else out
    out["support"] = support.sum(axis=-1)
    return {k: _scalar(v) for k, v in out.items()}


def f1_score(
    y_true: Any,
    y_score: Any,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    average: str | None = "macro",
    zero_division: float = 0.0,
) -> float | np.ndarray:
    """F1 at an operating point (see :func:`precision_recall_f1`)."""
    return precision_recall_f1(y_true, y_score, threshold, average, zero_division)["f1"]


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """Converts dataclasses, NumPy scalars / arrays, tuples and non-finite floats into plain JSON types.

    NaN and +-inf become None so that ``json.dumps(..., allow_nan=False)`` (strict JSON) succeeds.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


@dataclass
class FindingMetrics:
    """Metrics of one finding. Rates are in [0, 1]; None / NaN where undefined (single class)."""

    name: str
    auroc: float
    average_precision: float
    precision: float
    recall: float
    f1: float
    specificity: float
    threshold: float
    n_positive: int
    n_negative: int


@dataclass
class ClassificationReport:
    """Multi-label classification metrics of one model on one test set (see :func:`classification_report`)."""

    n_cases: int
    findings: list[FindingMetrics]
    auroc_macro: float
    auroc_micro: float
    auroc_weighted: float
    average_precision_macro: float
    average_precision_micro: float
    average_precision_weighted: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_micro: float
    recall_micro: float
    f1_micro: float
    excluded_findings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (NaN -> None)."""
        return jsonable(self)


def classification_report(
    y_true: Any,
    y_score: Any,
    finding_names: Sequence[str] | None = None,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    zero_division: float = 0.0,
) -> ClassificationReport:
    """All classification metrics of one model: per finding, and macro / micro / weighted averages.

    Args:
        y_true: ``(n_cases, n_findings)`` 0/1 labels, NaN = not annotated.
        y_score: ``(n_cases, n_findings)`` scores; with the default threshold 0.5 these should be probabilities.
        finding_names: names of the findings (default: ``finding_0``, ...).
        threshold: operating point for precision / recall / F1, a float or one per finding.
        zero_division: see :func:`precision_recall_f1`.
    """
    y, s, valid, _ = _prepare(y_true, y_score)
    if y.ndim != 2:
        raise ValueError(f"classification_report expects (n_cases, n_findings) arrays, got shape {y.shape}.")
    n_findings = y.shape[1]
    names = list(finding_names) if finding_names is not None else [f"finding_{i}" for i in range(n_findings)]
    if len(names) != n_findings:
        raise ValueError(f"finding_names has {len(names)} names for {n_findings} score columns.")
    auc = roc_auc_per_finding(y, s)
    ap = average_precision_per_finding(y, s)
    per = precision_recall_f1(y, s, threshold, average=None, zero_division=zero_division)
    micro = precision_recall_f1(y, s, threshold, average="micro", zero_division=zero_division)
    macro = precision_recall_f1(y, s, threshold, average="macro", zero_division=zero_division)
    thr = np.broadcast_to(to_numpy(threshold, "threshold"), (n_findings,))
    pos = (valid & (y == 1)).sum(axis=0)
    neg = (valid & (y == 0)).sum(axis=0)
    findings = [
        FindingMetrics(
            name=names[j],
            auroc=float(auc[j]),
            average_precision=float(ap[j]),
            precision=float(per["precision"][j]),
            recall=float(per["recall"][j]),
            f1=float(per["f1"][j]),
            specificity=float(per["specificity"][j]),
            threshold=float(thr[j]),
            n_positive=int(pos[j]),
            n_negative=int(neg[j]),
        )
        for j in range(n_findings)
    ]
    return ClassificationReport(
        n_cases=int(y.shape[0]),
        findings=findings,
        auroc_macro=roc_auc(y, s, "macro"),
        auroc_micro=roc_auc(y, s, "micro"),
        auroc_weighted=roc_auc(y, s, "weighted"),
        average_precision_macro=average_precision(y, s, "macro"),
        average_precision_micro=average_precision(y, s, "micro"),
        average_precision_weighted=average_precision(y, s, "weighted"),
        precision_macro=float(macro["precision"]),
        recall_macro=float(macro["recall"]),
        f1_macro=float(macro["f1"]),
        precision_micro=float(micro["precision"]),
        recall_micro=float(micro["recall"]),
        f1_micro=float(micro["f1"]),
        excluded_findings=[names[j] for j in range(n_findings) if np.isnan(auc[j])],
    )


# ----------------------------------------------------------------------------------------------------------------
# Offline `evaluate` modules
# ----------------------------------------------------------------------------------------------------------------


def local_metric_path(name: str) -> Path:
    """Path of the shipped ``evaluate`` module script ``train/evaluation/hf_metrics/<name>/<name>.py``."""
    if name not in LOCAL_METRICS:
        raise ValueError(f"unknown local metric {name!r}; choose from: {', '.join(LOCAL_METRICS)}.")
    path = Path(__file__).resolve().with_name("hf_metrics") / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"the evaluate module script {path} is missing from the installed package.")
    return path


def load_metric(name: str, keep_in_memory: bool = True, **kwargs: Any):
    """Loads one of the project's ``evaluate`` metric modules from the package, without the Hub.

    ``evaluate.load("roc_auc")`` downloads its script from the Hub and fails offline; these modules are files inside
    the package, loaded by path, so they work with ``HF_HUB_OFFLINE=1``. ``name`` is one of :data:`LOCAL_METRICS`;
    other keyword arguments go to :func:`evaluate.load` (e.g. ``config_name``). ``keep_in_memory`` defaults to True
    (no Arrow cache files for single-process use); set it False with ``num_process`` / ``process_id`` for
    distributed accumulation.
    """
    import evaluate  # lazy: importing evaluate pulls in datasets

    return evaluate.load(str(local_metric_path(name)), keep_in_memory=keep_in_memory, **kwargs)
