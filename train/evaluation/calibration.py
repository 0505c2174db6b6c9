"""Probability calibration and operating points for the per-finding (binary) scores.

- **Temperature scaling** (Guo et al., 2017), one temperature per finding: ``p = sigmoid(z / T)``; ``T > 0``
  minimises the binary cross-entropy on a validation split. Monotone, so AUROC is unchanged.
- **Platt scaling** (Platt, 1999), one slope and intercept per finding: ``p = sigmoid(a z + b)``, fitted by
  logistic regression on the validation split, by default on Platt's smoothed targets
  ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``, which keeps the fit finite when the classes are separable.
- Both are fitted by Newton's method with step halving (the losses are convex in ``1/T`` and in ``(a, b)``; one or
  two parameters per finding, all findings at once), with log-sum-exp losses so large logits cannot overflow.
- **Thresholds** per finding: Youden's J (maximum of sensitivity + specificity - 1) or the highest threshold that
  reaches a target sensitivity; ``probability >= threshold`` is positive.
- **Expected calibration error** (ECE) with ``n_bins`` equal-width bins on [0, 1] (bin k is
  ``[k / n_bins, (k + 1) / n_bins)``, the last bin includes 1): ``sum_k n_k / N * |fraction of positives_k -
  mean probability_k|``, per finding (each finding is a binary problem; this is not the top-label ECE of
  multi-class classifiers).
- :class:`Calibrator` bundles the fitted parameters and thresholds, maps logits to probabilities and serialises to
  a plain JSON-able dict (to store in a model config).

``logits`` here are the per-finding log-odds of a model (for zero-shot CLIP scores, the difference of the scaled
positive- and negative-prompt similarities). NaN labels (findings not annotated) are left out of every fit.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from x2ctclip.calibration import CALIBRATION_METHODS, apply_calibration, check_calibration
from x2ctclip.fileio import open_atomic
from x2ctclip.train.evaluation.metrics import check_labels, jsonable, to_numpy

__all__ = [
    "Calibrator",
    "expected_calibration_error",
    "fit_platt",
    "fit_temperature",
    "reliability_curve",
    "reliability_diagram",
    "sensitivity_thresholds",
    "youden_thresholds",
]


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _prepare_2d(labels: Any, scores: Any, score_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(n,) or (n, F) labels and scores -> (n, F) arrays, valid mask, and whether the input was 1-D."""
    y = to_numpy(labels, "labels")
    s = to_numpy(scores, score_name)
    if y.shape != s.shape:
        raise ValueError(f"labels and {score_name} must have the same shape, got {y.shape} and {s.shape}.")
    squeeze = y.ndim == 1
    if squeeze:
        y, s = y[:, None], s[:, None]
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"labels and {score_name} must have shape (n_cases, n_findings), got {y.shape}.")
    valid = check_labels(y, "labels")
    if not np.isfinite(s[valid]).all():
        raise ValueError(f"{score_name} must be finite (no NaN / inf) wherever the label is annotated.")
    return np.where(valid, y, 0.0), np.where(valid, s, 0.0), valid, squeeze


def _two_classes(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    pos = (valid & (y == 1)).sum(0)
    return (pos > 0) & (valid.sum(0) - pos > 0)


# ----------------------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------------------


def _newton(loss_grad_hess, params: np.ndarray, max_iter: int, tol: float, bounds=None) -> np.ndarray:
    """Vectorised damped Newton minimisation of independent convex problems.

    ``params`` is (F, P); ``loss_grad_hess(params)`` returns loss (F,), gradient (F, P), Hessian (F, P, P).
    Each problem halves its step until the loss does not increase; ``bounds`` (low, high) clip (projected Newton,
    exact for the one-dimensional temperature problem).
    """
    loss, grad, hess = loss_grad_hess(params)
    n_params = params.shape[1]
    for _ in range(max_iter):
        ridge = 1e-10 * np.eye(n_params)
        step = np.linalg.solve(hess + ridge, grad[..., None])[..., 0]
        t = np.ones(len(params))
        active = np.ones(len(params), dtype=bool)
        new = params.copy()
        for _ in range(40):
            candidate = params - t[:, None] * step
            if bounds is not None:
                candidate = np.clip(candidate, *bounds)
            new = np.where(active[:, None], candidate, new)
            new_loss = loss_grad_hess(new)[0]
            worse = active & (new_loss > loss + 1e-12 * np.abs(loss))
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
            active = worse
        else:
            new = np.where(active[:, None], params, new)  # no descent found: stay
        moved = np.abs(new - params).max()
        params = new
        loss, grad, hess = loss_grad_hess(params)
        if moved < tol:
            break
    return params


def fit_temperature(
    logits: Any,
    labels: Any,
    min_temperature: float = 1e-2,
    max_temperature: float = 1e2,
    max_iter: int = 100,
) -> np.ndarray:
    """Per-finding temperatures ``T`` minimising the mean binary cross-entropy of ``sigmoid(logits / T)``.

    Args:
        logits: ``(n_cases, n_findings)`` (or ``(n_cases,)``) validation log-odds.
        labels: 0/1 labels of the same shape; NaN = not annotated (left out).
        min_temperature / max_temperature: the search interval. The optimum sits on a bound when the validation
            split is separable (``T -> 0``) or the logits are anti-correlated with the labels (``T -> inf``).

    Returns:
        ``(n_findings,)`` temperatures (a float for 1-D input); 1.0 for findings with a single class (with a warning).
    """
    y, z, valid, squeeze = _prepare_2d(labels, logits, "logits")
    w = valid.astype(np.float64)
    count = np.maximum(w.sum(0), 1.0)

    def lgh(params):  # params[:, 0] = inverse temperature
        a = params[:, 0]
        u = z * a
        p = _sigmoid(u)
        loss = (w * (np.logaddexp(0.0, u) - y * u)).sum(0) / count
        grad = (w * (p - y) * z).sum(0) / count
        hess = (w * p * (1 - p) * z * z).sum(0) / count
        return loss, grad[:, None], hess[:, None, None]

    ok = _two_classes(y, valid)
    inv = _newton(lgh, np.ones((z.shape[1], 1)), max_iter, 1e-10, bounds=(1 / max_temperature, 1 / min_temperature))
    temperature = np.where(ok, 1.0 / inv[:, 0], 1.0)
    if not ok.all():
        warnings.warn(
            f"fit_temperature: {int((~ok).sum())} finding(s) have a single class on the validation split; their "
            "temperature is left at 1.",
            stacklevel=2,
        )
    return float(temperature[0]) if squeeze else temperature


def fit_platt(
    logits: Any,
    labels: Any,
    smoothed_targets: bool = True,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-finding Platt scaling: slope ``a`` and intercept ``b`` of ``sigmoid(a * logits + b)``.

    Args:
        logits: ``(n_cases, n_findings)`` (or ``(n_cases,)``) validation scores.
        labels: 0/1 labels; NaN = not annotated (left out).
        smoothed_targets: use Platt's targets ``(N+ + 1) / (N+ + 2)`` for positives and ``1 / (N- + 2)`` for
            negatives (finite fit even when the classes are separable). False fits the plain logistic regression.

    Returns:
        ``(slopes, intercepts)``, each ``(n_findings,)`` (floats for 1-D input); slope 1 and intercept 0 for findings
        with a single class (with a warning).
    """
    y, z, valid, squeeze = _prepare_2d(labels, logits, "logits")
    w = valid.astype(np.float64)
    n_pos = (w * y).sum(0)
    n_neg = w.sum(0) - n_pos
    if smoothed_targets:
        t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    else:
        t = y
    count = np.maximum(w.sum(0), 1.0)

    def lgh(params):
        a, b = params[:, 0], params[:, 1]
        u = z * a + b
        p = _sigmoid(u)
        loss = (w * (np.logaddexp(0.0, u) - t * u)).sum(0) / count
        r = w * (p - t)
        grad = np.stack([(r * z).sum(0), r.sum(0)], axis=1) / count[:, None]
        c = w * p * (1 - p)
        h_aa, h_ab, h_bb = (c * z * z).sum(0), (c * z).sum(0), c.sum(0)
        hess = np.stack([np.stack([h_aa, h_ab], -1), np.stack([h_ab, h_bb], -1)], -2) / count[:, None, None]
        return loss, grad, hess

    ok = _two_classes(y, valid)
    start = np.tile([1.0, 0.0], (z.shape[1], 1))
    params = _newton(lgh, start, max_iter, 1e-10)
    slopes = np.where(ok, params[:, 0], 1.0)
    intercepts = np.where(ok, params[:, 1], 0.0)
    if not ok.all():
        warnings.warn(
            f"fit_platt: {int((~ok).sum())} finding(s) have a single class on the validation split; they keep "
            "slope 1 and intercept 0.",
            stacklevel=2,
        )
    if squeeze:
        return float(slopes[0]), float(intercepts[0])
    return slopes, intercepts


# ----------------------------------------------------------------------------------------------------------------
# Operating points
# ----------------------------------------------------------------------------------------------------------------


def _roc_columns(y: np.ndarray, s: np.ndarray, valid: np.ndarray):
    """Per column with both classes annotated: scikit-learn's ROC points (``roc_curve`` with every distinct annotated
    score kept: thresholds descending, ``score >= threshold`` positive); None for single-class columns."""
    from sklearn.metrics import roc_curve  # lazy: the demo imports this module for Calibrator alone

    two = _two_classes(y, valid)
    out = []
    for j in range(s.shape[1]):
        if not two[j]:
            out.append(None)
            continue
        fpr, tpr, thr = roc_curve(y[valid[:, j], j], s[valid[:, j], j], drop_intermediate=False)
        out.append((thr[1:], tpr[1:], fpr[1:]))  # the first point is sklearn's (inf, 0, 0) start, not a score
    return out


def youden_thresholds(labels: Any, scores: Any) -> np.ndarray | float:
    """Per-finding threshold maximising Youden's J = sensitivity + specificity - 1 (``score >= threshold``).

    Candidates are the distinct annotated scores; among equal J the highest threshold (most specific) wins. NaN for
    findings with a single class.
    """
    y, s, valid, squeeze = _prepare_2d(labels, scores, "scores")
    out = np.array([np.nan if c is None else c[0][np.argmax(c[1] - c[2])] for c in _roc_columns(y, s, valid)])
    return float(out[0]) if squeeze else out


def sensitivity_thresholds(labels: Any, scores: Any, target: float = 0.9) -> np.ndarray | float:
    """Per-finding highest threshold whose sensitivity reaches ``target`` (``score >= threshold`` is positive).

    The highest such threshold has the best specificity at that sensitivity. NaN for findings with a single class.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}.")
    y, s, valid, squeeze = _prepare_2d(labels, scores, "scores")
    columns = _roc_columns(y, s, valid)
    out = np.array([np.nan if c is None else c[0][np.argmax(c[1] >= target - 1e-12)] for c in columns])
    return float(out[0]) if squeeze else out


# ----------------------------------------------------------------------------------------------------------------
# Calibration error and reliability diagrams
# ----------------------------------------------------------------------------------------------------------------


def _check_probabilities(p: np.ndarray, valid: np.ndarray, name: str) -> None:
    pv = p[valid]
    if (pv < 0).any() or (pv > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1] (apply a sigmoid to logits first).")


def _bin_stats(y: np.ndarray, p: np.ndarray, valid: np.ndarray, n_bins: int):
    """Per column and bin: counts, sum of probabilities, sum of labels -> each (F, n_bins)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    n_findings = p.shape[1]
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)  # [k/M, (k+1)/M), 1.0 in the last bin
    flat = (bins + n_bins * np.arange(n_findings)[None, :])[valid]
    size = n_bins * n_findings
    count = np.bincount(flat, minlength=size).reshape(n_findings, n_bins)
    conf = np.bincount(flat, weights=p[valid], minlength=size).reshape(n_findings, n_bins)
    pos = np.bincount(flat, weights=y[valid], minlength=size).reshape(n_findings, n_bins)
    return count, conf, pos


def expected_calibration_error(
    labels: Any, probabilities: Any, n_bins: int = 15, average: str | None = "macro"
) -> float | np.ndarray:
    """Expected calibration error with ``n_bins`` equal-width bins (see the module docstring for the definition).

    Args:
        labels: ``(n_cases, n_findings)`` (or ``(n_cases,)``) 0/1 labels; NaN = not annotated.
        probabilities: predicted probabilities of the same shape.
        average: ``"macro"`` (mean of the per-finding ECEs over findings with annotated cases), ``"pooled"`` (one
            ECE over all annotated (case, finding) pairs), or None (per finding, NaN where nothing is annotated).
    """
    if average not in ("macro", "pooled", None):
        raise ValueError(f"average must be 'macro', 'pooled' or None, got {average!r}.")
    y, p, valid, squeeze = _prepare_2d(labels, probabilities, "probabilities")
    _check_probabilities(p, valid, "probabilities")
    if average == "pooled":
        y, p, valid = y.reshape(-1, 1), p.reshape(-1, 1), valid.reshape(-1, 1)
    count, conf, pos = _bin_stats(y, p, valid, n_bins)
    total = count.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.abs(pos - conf).sum(1) / total  # sum_k n_k/N |pos_k/n_k - conf_k/n_k|
    ece = np.where(total > 0, ece, np.nan)
    if average == "pooled" or squeeze:
        return float(ece[0])
    if average == "macro":
        return float(np.nanmean(ece)) if np.isfinite(ece).any() else float("nan")
    return ece


def reliability_curve(labels: Any, probabilities: Any, n_bins: int = 15) -> dict[str, list]:
    """Pooled reliability curve: per equal-width bin, its edges, count, mean probability and fraction of positives.

    All annotated (case, finding) pairs are pooled. Empty bins have None mean / fraction (JSON-able dict).
    """
    y, p, valid, _ = _prepare_2d(labels, probabilities, "probabilities")
    _check_probabilities(p, valid, "probabilities")
    count, conf, pos = _bin_stats(y.reshape(-1, 1), p.reshape(-1, 1), valid.reshape(-1, 1), n_bins)
    count, conf, pos = count[0], conf[0], pos[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, conf / count, np.nan)
        frac = np.where(count > 0, pos / count, np.nan)
    return jsonable(
        {
            "bin_edges": np.linspace(0, 1, n_bins + 1),
            "count": count,
            "mean_probability": mean_p,
            "fraction_positive": frac,
        }
    )


def reliability_diagram(
    path: str | os.PathLike,
    labels: Any,
    probabilities: Any,
    calibrated_probabilities: Any = None,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Writes a reliability diagram PNG (pooled over findings), before and optionally after calibration.

    Top: fraction of positives against mean predicted probability per bin, with the diagonal of perfect
    calibration and each curve's pooled ECE in the legend. Bottom: number of (case, finding) pairs per bin.
    Rendered with matplotlib's Agg canvas (no display, no global pyplot state); written to a temporary file in the
    target folder and renamed, so a failed write leaves nothing half-written. Returns the path.
    """
    # matplotlib is imported here, not at the top: only the diagram needs it and it slows every command's start-up.
    # start-up: matplotlib loads only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # start-up: matplotlib loads only when a figure is drawn

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"reliability diagram path must end in .png, got {path}.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist (reliability diagram {path.name}).")
    curves = [("before calibration", probabilities, "tab:red")]
    if calibrated_probabilities is not None:
        curves.append(("after calibration", calibrated_probabilities, "tab:blue"))

    fig = Figure(figsize=(5.5, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    width = 1.0 / n_bins
    for i, (label, probs, color) in enumerate(curves):
        curve = reliability_curve(labels, probs, n_bins)
        ece = expected_calibration_error(labels, probs, n_bins, average="pooled")
        mean_p = np.array([np.nan if v is None else v for v in curve["mean_probability"]])
        frac = np.array([np.nan if v is None else v for v in curve["fraction_positive"]])
        keep = ~np.isnan(mean_p)
        ax.plot(mean_p[keep], frac[keep], marker="o", ms=4, color=color, label=f"{label} (ECE {ece:.3f})")
        offset = (i - (len(curves) - 1) / 2) * width / len(curves)
        ax_hist.bar(centres + offset, curve["count"], width=width / len(curves), color=color, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of positives")
    ax.set_title(title or f"Reliability ({n_bins} equal-width bins, all findings pooled)")
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.set_xlabel("predicted probability")
    ax_hist.set_ylabel("count")
    fig.tight_layout()

    with open_atomic(path, "wb") as handle:
        fig.savefig(handle, format="png")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Calibrator
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Calibrator:
    """Per-finding map from logits to calibrated probabilities, ``p = sigmoid(slope * logit + intercept)``.

    Temperature scaling is ``slope = 1 / T``, ``intercept = 0``; identity is ``slope = 1``, ``intercept = 0``.
    ``thresholds`` (optional) are operating points on the calibrated probabilities (``p >= threshold`` is
    positive). Serialises to a plain JSON-able dict with :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        method: ``"temperature"``, ``"platt"`` or ``"identity"``.
        slope / intercept: one per finding.
        finding_names: optional names, one per finding.
        thresholds: optional per-finding probability thresholds (NaN: none could be chosen).
        threshold_method: how thresholds were chosen, e.g. ``"youden"``, ``"sensitivity>=0.9"``, ``"fixed"``.
    """

    method: str
    slope: list[float]
    intercept: list[float]
    finding_names: list[str] | None = None
    thresholds: list[float] | None = None
    threshold_method: str | None = None
    format_version: int = field(default=1)

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"Calibrator.method must be one of {CALIBRATION_METHODS}, got {self.method!r}.")
        self.slope = [float(v) for v in np.asarray(self.slope, dtype=np.float64).reshape(-1)]
        self.intercept = [float(v) for v in np.asarray(self.intercept, dtype=np.float64).reshape(-1)]
        n = len(self.slope)
        if n == 0 or len(self.intercept) != n:
            raise ValueError(
                f"Calibrator needs one slope and one intercept per finding, got {n} and {len(self.intercept)}."
            )
        if not (np.isfinite(self.slope).all() and np.isfinite(self.intercept).all()):
            raise ValueError("Calibrator slopes and intercepts must be finite.")
        if self.method == "temperature" and (min(self.slope) <= 0 or any(self.intercept)):
            raise ValueError("a temperature Calibrator needs positive slopes (1 / T) and zero intercepts.")
        if self.finding_names is not None:
            self.finding_names = [str(v) for v in self.finding_names]
            if len(self.finding_names) != n:
                raise ValueError(f"Calibrator has {n} findings but {len(self.finding_names)} finding_names.")
        if self.thresholds is not None:
            self.thresholds = [float(v) for v in np.asarray(self.thresholds, dtype=np.float64).reshape(-1)]
            if len(self.thresholds) != n:
                raise ValueError(f"Calibrator has {n} findings but {len(self.thresholds)} thresholds.")

    @property
    def n_findings(self) -> int:
        return len(self.slope)

    @property
    def temperature(self) -> list[float]:
        """Per-finding temperatures ``1 / slope`` (meaningful for the temperature method)."""
        return [1.0 / a for a in self.slope]

    @classmethod
    def identity(cls, n_findings: int, finding_names: Sequence[str] | None = None) -> "Calibrator":
        return cls("identity", [1.0] * n_findings, [0.0] * n_findings, list(finding_names) if finding_names else None)

    @classmethod
    def fit(
        cls,
        logits: Any,
        labels: Any,
        method: str = "temperature",
        thresholds: str | float | None = "youden",
        finding_names: Sequence[str] | None = None,
        smoothed_targets: bool = True,
    ) -> "Calibrator":
        """Fits per-finding calibration (and thresholds) on a validation split.

        Args:
            logits: ``(n_cases, n_findings)`` validation log-odds.
            labels: ``(n_cases, n_findings)`` 0/1 labels, NaN = not annotated.
            method: ``"temperature"``, ``"platt"`` or ``"identity"``.
            thresholds: ``"youden"``, a target sensitivity in (0, 1] (e.g. 0.9), or None; chosen on the calibrated
                validation probabilities.
            smoothed_targets: Platt's smoothed targets (Platt scaling only).
        """
        z = to_numpy(logits, "logits")
        if z.ndim != 2:
            raise ValueError(f"logits must have shape (n_cases, n_findings), got {z.shape}.")
        if method == "temperature":
            slope, intercept = 1.0 / fit_temperature(z, labels), np.zeros(z.shape[1])
        elif method == "platt":
            slope, intercept = fit_platt(z, labels, smoothed_targets=smoothed_targets)
        elif method == "identity":
            slope, intercept = np.ones(z.shape[1]), np.zeros(z.shape[1])
        else:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}.")
        calibrator = cls(method, slope, intercept, list(finding_names) if finding_names is not None else None)
        if thresholds is not None:
            probs = calibrator.transform(z)
            if thresholds == "youden":
                calibrator.thresholds = list(youden_thresholds(labels, probs))
                calibrator.threshold_method = "youden"
            elif isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
                calibrator.thresholds = list(sensitivity_thresholds(labels, probs, float(thresholds)))
                calibrator.threshold_method = f"sensitivity>={float(thresholds):g}"
            else:
                raise ValueError(f"thresholds must be 'youden', a target sensitivity or None, got {thresholds!r}.")
        return calibrator

    def _check_width(self, z: Any, name: str) -> None:
        if z.shape[-1] != self.n_findings:
            raise ValueError(f"{name} has {z.shape[-1]} findings in its last dimension; the Calibrator has "
                             f"{self.n_findings}.")  # fmt: skip

    def transform(self, logits: Any) -> Any:
        """Calibrated probabilities of ``(..., n_findings)`` logits; torch in -> torch out (same device / dtype)."""
        if torch.is_tensor(logits):
            self._check_width(logits, "logits")
            return apply_calibration(logits, {"slope": self.slope, "intercept": self.intercept})
        z = to_numpy(logits, "logits")
        self._check_width(z, "logits")
        return _sigmoid(z * np.asarray(self.slope) + np.asarray(self.intercept))

    __call__ = transform

    def predict(self, logits: Any) -> Any:
        """Binary decisions ``transform(logits) >= thresholds`` (a finding without a threshold is never positive)."""
        if self.thresholds is None:
            raise ValueError("this Calibrator has no thresholds; fit it with thresholds='youden' or a sensitivity.")
        probs = self.transform(logits)
        thr = np.nan_to_num(np.asarray(self.thresholds), nan=np.inf)
        if torch.is_tensor(probs):
            return probs >= torch.tensor(thr, dtype=probs.dtype, device=probs.device)
        return probs >= thr

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN thresholds -> None)."""
        return jsonable(
            {
                "format_version": self.format_version,
                "method": self.method,
                "finding_names": self.finding_names,
                "slope": self.slope,
                "intercept": self.intercept,
                "thresholds": self.thresholds,
                "threshold_method": self.threshold_method,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibrator":
        """Rebuilds a Calibrator from :meth:`to_dict` output; raises ValueError naming what is wrong."""
        check_calibration(data, data.get("finding_names") if isinstance(data, dict) else None, what="Calibrator dict")
        thresholds = data.get("thresholds")
        if thresholds is not None:
            thresholds = [math.nan if v is None else v for v in thresholds]
        try:
            return cls(
                method=data["method"],
                slope=data["slope"],
                intercept=data["intercept"],
                finding_names=data.get("finding_names"),
                thresholds=thresholds,
                threshold_method=data.get("threshold_method"),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid Calibrator dict: {err}") from None
