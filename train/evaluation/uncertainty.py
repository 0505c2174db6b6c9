"""Uncertainty and significance: bootstrap confidence intervals and the paired DeLong test for AUROC.

- :func:`bootstrap_ci`: percentile bootstrap interval of any metric, resampling *cases* with replacement (1000
  resamples by default, seeded ``numpy.random.Generator``). Resamples where the metric is undefined (e.g. a finding
  drew no positive case, so its AUROC is NaN) are re-drawn; optional stratified resampling keeps the class counts
  fixed. Metrics that accept a leading batch dimension (all of :mod:`x2ctclip.train.evaluation.metrics`) can be evaluated on
  many resamples at once with ``vectorized=True``.
- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUROCs measured on the same
  cases, computed with the fast midrank algorithm of Sun & Xu (2014), O(n log n) instead of O(n_pos * n_neg).
  :func:`delong_covariance` gives the AUROCs and their covariance matrix for any number of models.

The DeLong implementation reproduces R pROC's ``var``, ``cov`` and ``roc.test`` on pROC's ``aSAH`` data set to
1e-12 (``tests/test_statistics.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from x2ctclip.train.evaluation.metrics import check_labels, jsonable, mid_ranks, to_numpy

__all__ = [
    "ConfidenceInterval",
    "DeLongResult",
    "bootstrap_ci",
    "delong_covariance",
    "delong_test",
    "delong_test_per_finding",
]


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ConfidenceInterval:
    """A bootstrap confidence interval of one metric value.

    Attributes:
        estimate: the metric on the full (not resampled) data.
        low / high: percentile interval bounds at ``confidence``.
        std: standard deviation of the bootstrap distribution (bootstrap standard error).
        confidence: e.g. 0.95.
        n_resamples: number of resamples drawn (not counting re-draws).
        n_redrawn: resamples re-drawn because the metric was undefined on them.
        n_undefined: resamples still undefined after ``max_redraws`` rounds (left out of the percentiles).
        method: ``"percentile"``.
    """

    estimate: float
    low: float
    high: float
    std: float
    confidence: float
    n_resamples: int
    n_redrawn: int = 0
    n_undefined: int = 0
    method: str = "percentile"

    def to_dict(self) -> dict:
        """Plain JSON-able dict (NaN -> None)."""
        return jsonable(self)


def _draw(rng: np.random.Generator, count: int, n: int, strata_members: list[np.ndarray] | None) -> np.ndarray:
    """``(count, n)`` case indices drawn with replacement, within each stratum when strata are given."""
    if strata_members is None:
        return rng.integers(0, n, size=(count, n))
    parts = [members[rng.integers(0, len(members), size=(count, len(members)))] for members in strata_members]
    return np.concatenate(parts, axis=1)


class _Flattener:
    """Maps a metric output (float, array, or dict of floats / arrays) to a flat vector and back."""

    def __init__(self, output: Any):
        if isinstance(output, dict):
            self.keys = list(output)
            self.shapes = [np.shape(to_numpy(output[k], f"metric output {k!r}")) for k in self.keys]
        else:
            self.keys = None
            self.shapes = [np.shape(to_numpy(output, "metric output"))]
        for shape in self.shapes:
            if len(shape) > 1:
                raise ValueError("metric_fn must return a float, a 1-D array, or a dict of those.")
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def flatten(self, output: Any, batch: int | None = None) -> np.ndarray:
        """(m,) vector, or (batch, m) for a vectorised call."""
        values = [output[k] for k in self.keys] if self.keys is not None else [output]
        lead = () if batch is None else (batch,)
        parts = []
        for v, size in zip(values, self.sizes):
            a = to_numpy(v, "metric output")
            if a.size != size * (batch or 1):
                raise ValueError(
                    f"metric_fn returned {a.shape} on a resample batch; expected {lead + (size,)} "
                    "(a vectorized metric must return one value per resample in its first dimension)."
                )
            parts.append(a.reshape(lead + (size,)))
        return np.concatenate(parts, axis=-1)

    def unflatten(self, items: list) -> Any:
        out, i = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            chunk = items[i : i + size]
            out.append(chunk[0] if shape == () else chunk)
            i += size
        return dict(zip(self.keys, out)) if self.keys is not None else out[0]


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 1024,
    strata: Any = None,
    on_undefined: str = "redraw",
    max_redraws: int = 100,
    vectorized: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> ConfidenceInterval | list[ConfidenceInterval] | dict[str, Any]:
    """Percentile bootstrap confidence interval of ``metric_fn(*arrays)``, resampling cases with replacement.

    Args:
        metric_fn: computes the metric from arrays whose first dimension is the case dimension; returns a float, a
            1-D array (e.g. AUROC per finding) or a dict of those (several metrics from one resample). NaN means
            "undefined on this resample". To compare two models, return a difference, e.g.
            ``lambda y, a, b: roc_auc(y, a) - roc_auc(y, b)``.
        arrays: NumPy arrays / torch tensors / lists, all with the same first dimension ``n_cases``.
        n_resamples: resamples (each of ``n_cases`` cases drawn with replacement).
        confidence: two-sided interval level; bounds are the ``(1 -/+ confidence) / 2`` percentiles (linear
            interpolation, NumPy's default).
        seed: int or ``numpy.random.Generator``. Without strata, resample ``b`` uses row ``b`` of
            ``Generator.integers(0, n_cases, (n_resamples, n_cases))``.
        strata: optional ``(n_cases,)`` group labels (e.g. the binary label of a single-finding AUROC): cases are
            resampled within each group, so every resample keeps the group sizes.
        on_undefined: ``"redraw"`` (default): a resample on which a value is NaN while the full-data value is not
            (e.g. a finding without positives) is drawn again, up to ``max_redraws`` rounds; what is still
            undefined after that is left out of the percentiles and counted. ``"ignore"``: no re-draws; NaN values
            are left out per value.
        vectorized: call ``metric_fn`` once per batch of resamples with arrays of shape
            ``(batch, n_cases, ...)``; 1-D arrays are passed as ``(batch, n_cases, 1)`` (one column, so a
            ``(n_cases, n_findings)`` metric cannot mistake the batch for the cases). It must return ``(batch,)``
            (or ``(batch, 1)``) per value. All metrics of :mod:`x2ctclip.train.evaluation.metrics` support this.
        batch_size: resamples per vectorised call (default: about 2e7 array elements per call).
        progress: show a tqdm progress bar.

    Returns:
        A :class:`ConfidenceInterval` for a float metric, a list of them for a 1-D array metric, a dict of those
        for a dict metric.

    Longer than 80 lines on purpose: argument checks, the seeded resampling loop and the interval methods share the
    resampled indices; splitting them would pass those arrays around for no gain.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one data array.")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if on_undefined not in ("redraw", "ignore"):
        raise ValueError(f"on_undefined must be 'redraw' or 'ignore', got {on_undefined!r}.")
    data = [a if isinstance(a, np.ndarray) else to_numpy(a, f"array {i}", dtype=None) for i, a in enumerate(arrays)]
    n = data[0].shape[0] if data[0].ndim else 0
    for i, a in enumerate(data):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"all arrays must share their first (case) dimension; array {i} has shape {a.shape}.")
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 cases, got {n}.")
    strata_members = None
    if strata is not None:
        strata = np.asarray(to_numpy(strata, "strata", dtype=None))
        if strata.shape != (n,):
            raise ValueError(f"strata must have shape ({n},), got {strata.shape}.")
        strata_members = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    estimate_out = metric_fn(*data)
    flat = _Flattener(estimate_out)
    estimate = flat.flatten(estimate_out)
    m = estimate.shape[0]
    defined_on_full = ~np.isnan(estimate)

    if batch_size is None:
        per_resample = sum(a.size for a in data)
        batch_size = max(1, min(n_resamples, int(2e7 // max(per_resample, 1))))

    def evaluate(idx: np.ndarray) -> np.ndarray:
        if vectorized:
            out = np.empty((len(idx), m))
            for start in range(0, len(idx), batch_size):
                rows = idx[start : start + batch_size]
                batch = [a[rows][..., None] if a.ndim == 1 else a[rows] for a in data]
                out[start : start + len(rows)] = flat.flatten(metric_fn(*batch), batch=len(rows))
            return out
        return np.stack([flat.flatten(metric_fn(*(a[row] for a in data))) for row in idx])

    idx = _draw(rng, n_resamples, n, strata_members)
    values = np.empty((n_resamples, m))
    step = batch_size if vectorized else max(1, n_resamples // 100)
    with tqdm(total=n_resamples, desc="bootstrap", unit="resample", disable=not progress) as bar:
        for start in range(0, n_resamples, step):
            values[start : start + step] = evaluate(idx[start : start + step])
            bar.update(min(step, n_resamples - start))

    n_redrawn = np.zeros(m, dtype=np.int64)
    if on_undefined == "redraw":
        for _ in range(max_redraws):
            bad_rows = np.flatnonzero((np.isnan(values) & defined_on_full).any(axis=1))
            if len(bad_rows) == 0:
                break
            n_redrawn += (np.isnan(values[bad_rows]) & defined_on_full).sum(axis=0)
            values[bad_rows] = evaluate(_draw(rng, len(bad_rows), n, strata_members))

    alpha = 1.0 - confidence
    undefined = np.isnan(values).sum(axis=0)
    results = []
    for j in range(m):
        column = values[:, j][~np.isnan(values[:, j])]
        if len(column) == 0:
            low = high = std = float("nan")
        else:
            low, high = np.percentile(column, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            std = float(np.std(column, ddof=1)) if len(column) > 1 else float("nan")
        results.append(
            ConfidenceInterval(
                estimate=float(estimate[j]),
                low=float(low),
                high=float(high),
                std=std,
                confidence=confidence,
                n_resamples=n_resamples,
                n_redrawn=int(n_redrawn[j]),
                n_undefined=int(undefined[j]),
            )
        )
    return flat.unflatten(results)


# ----------------------------------------------------------------------------------------------------------------
# DeLong
# ----------------------------------------------------------------------------------------------------------------


def _binary_cases(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validates (n,) labels and (n, k) scores; drops cases with a NaN label; returns (positive mask, scores)."""
    y = to_numpy(y_true, "y_true")
    s = to_numpy(scores, "scores")
    if y.ndim != 1:
        raise ValueError(f"y_true must have shape (n_cases,), got {y.shape}.")
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must have shape ({y.shape[0]}, n_models), got {s.shape}.")
    valid = check_labels(y)
    y, s = y[valid], s[valid]
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN / inf) for every case with a label.")
    pos = y == 1
    if pos.all() or not pos.any():
        raise ValueError("DeLong needs both classes among the labelled cases (at least one positive and one negative).")
    return pos, s


def delong_covariance(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of several models on the same cases and their DeLong covariance matrix (fast midrank algorithm).

    Args:
        y_true: ``(n_cases,)`` 0/1 labels (NaN: case dropped).
        scores: ``(n_cases, n_models)`` (or ``(n_cases,)``) scores, higher = more likely positive.

    Returns:
        ``(aucs, cov)``: ``(n_models,)`` AUROCs (ties count one half) and the ``(n_models, n_models)`` covariance
        ``S10 / n_pos + S01 / n_neg`` of DeLong et al. (1988), as R pROC's ``var`` / ``cov`` compute it.
    """
    pos, s = _binary_cases(y_true, scores)
    x, y = s[pos], s[~pos]  # (m, k) positives, (n, k) negatives
    m, n = x.shape[0], y.shape[0]
    # Sun & Xu (2014): placements from three midrank computations (positives, negatives, all cases).
    tx = mid_ranks(x)
    ty = mid_ranks(y)
    tz = mid_ranks(np.concatenate([x, y], axis=0))
    aucs = (tz[:m].sum(axis=0) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:m] - tx) / n  # per positive: fraction of negatives it outranks (ties 1/2)
    v01 = 1.0 - (tz[m:] - ty) / m  # per negative: fraction of positives that outrank it
    s10 = np.atleast_2d(np.cov(v10, rowvar=False)) if m > 1 else np.zeros((s.shape[1],) * 2)
    s01 = np.atleast_2d(np.cov(v01, rowvar=False)) if n > 1 else np.zeros((s.shape[1],) * 2)
    return aucs, s10 / m + s01 / n


@dataclass
class DeLongResult:
    """Paired DeLong test of AUROC(a) against AUROC(b) on the same cases.

    ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``; ``p_value`` is two-sided (normal approximation);
    ``difference_low`` / ``difference_high`` is the normal-approximation interval of ``auc_a - auc_b`` at
    ``confidence``. When the two score vectors rank the cases identically the variance of the difference is 0:
    then z = 0 and p = 1.
    """

    auc_a: float
    auc_b: float
    difference: float
    variance_a: float
    variance_b: float
    covariance: float
    z: float
    p_value: float
    difference_low: float
    difference_high: float
    confidence: float
    n_positive: int
    n_negative: int

    @property
    def covariance_matrix(self) -> list[list[float]]:
        return [[self.variance_a, self.covariance], [self.covariance, self.variance_b]]

    def to_dict(self) -> dict:
        """Plain JSON-able dict (NaN -> None)."""
        return jsonable(self)


def _normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def _normal_quantile(p: float) -> float:
    from scipy.stats import norm  # scipy ships with scikit-learn

    return float(norm.ppf(p))


def delong_test(y_true: Any, scores_a: Any, scores_b: Any, confidence: float = 0.95) -> DeLongResult:
    """Paired two-sided DeLong test between two models' scores of the same cases.

    Args:
        y_true: ``(n_cases,)`` 0/1 labels (NaN: case dropped).
        scores_a / scores_b: ``(n_cases,)`` scores of model A and model B (probabilities or logits).
        confidence: level of the interval of the AUROC difference.
    """
    a = to_numpy(scores_a, "scores_a")
    b = to_numpy(scores_b, "scores_b")
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores_a and scores_b must both have shape (n_cases,), got {a.shape} and {b.shape}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    aucs, cov = delong_covariance(y_true, np.stack([a, b], axis=1))
    y = to_numpy(y_true, "y_true")
    difference = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    # Round-off can leave a tiny non-zero variance for identical rankings; treat |var| below 1e-15 as zero.
    if var <= 1e-15 * max(1.0, float(cov[0, 0] + cov[1, 1])):
        z = 0.0 if abs(difference) < 1e-15 else math.copysign(math.inf, difference)
        p = 1.0 if z == 0.0 else 0.0
        half = 0.0
    else:
        z = difference / math.sqrt(var)
        p = _normal_two_sided_p(z)
        half = _normal_quantile(0.5 + confidence / 2) * math.sqrt(var)
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=difference,
        variance_a=float(cov[0, 0]),
        variance_b=float(cov[1, 1]),
        covariance=float(cov[0, 1]),
        z=float(z),
        p_value=float(p),
        difference_low=difference - half,
        difference_high=difference + half,
        confidence=confidence,
        n_positive=int(np.nansum(y == 1)),
        n_negative=int(np.nansum(y == 0)),
    )


def delong_test_per_finding(
    y_true: Any,
    scores_a: Any,
    scores_b: Any,
    finding_names: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> dict[str, DeLongResult | None]:
    """:func:`delong_test` for every column of ``(n_cases, n_findings)`` arrays; None for single-class findings.

    NaN labels drop the case from that finding only. No multiple-comparison correction is applied.
    """
    y = to_numpy(y_true, "y_true")
    a = to_numpy(scores_a, "scores_a")
    b = to_numpy(scores_b, "scores_b")
    if y.ndim != 2 or a.shape != y.shape or b.shape != y.shape:
        raise ValueError(
            f"y_true, scores_a and scores_b must share the shape (n_cases, n_findings); got {y.shape}, {a.shape}, "
            f"{b.shape}."
        )
    names = list(finding_names) if finding_names is not None else [f"finding_{j}" for j in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"finding_names has {len(names)} names for {y.shape[1]} findings.")
    out: dict[str, DeLongResult | None] = {}
    for j, name in enumerate(names):
        valid = ~np.isnan(y[:, j])
        labels = y[valid, j]
        if labels.size == 0 or labels.min() == labels.max():
            out[name] = None
            continue
        out[name] = delong_test(labels, a[valid, j], b[valid, j], confidence)
    return out
