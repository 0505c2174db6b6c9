"""Applying a per-finding calibration stored in a model config (``config.calibration``); fitting lives elsewhere.

The schema is the one ``x2ctclip.train.evaluation.calibration.Calibrator.to_dict()`` writes (``x2ctclip evaluate calibrate``)::

    {"format_version": 1, "method": "temperature" | "platt" | "identity", "slope": [F], "intercept": [F],
     "thresholds": [F] (null entries: no threshold), "threshold_method": "youden" | ..., "finding_names": [F]}

applied as ``probability = sigmoid(slope * logit + intercept)`` and ``present = probability >= threshold`` (a finding
whose threshold is null / NaN is never present), exactly as
:meth:`x2ctclip.X2CTCLIPForAbnormalityClassification.predict` does. Only ``method``, ``slope`` and ``intercept`` are
required. This module imports neither the models nor the training package (torch only), so the predictor and the demo
can use it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

__all__ = ["CALIBRATION_KEYS", "CALIBRATION_METHODS", "apply_calibration", "calibration_thresholds",
           "check_calibration"]  # fmt: skip

CALIBRATION_KEYS = ("format_version", "method", "finding_names", "slope", "intercept", "thresholds", "threshold_method")
CALIBRATION_METHODS = ("temperature", "platt", "identity")


def check_calibration(calibration: Any, findings: Sequence[str] | None,
                      what: str = "config.calibration") -> dict[str, Any]:
    """Validates a ``Calibrator.to_dict()``-style dict against the model's findings (label order); returns it.

    ``findings=None`` checks the dict on its own (its lists must agree in length with ``slope``); ``what`` names the
    dict in the messages.

    Raises:
        ValueError: one line naming the problem (unknown / missing keys, another format version or method, a list
            whose length is not ``len(findings)``, non-finite slopes / intercepts, finding names in another order).
    """
    if not isinstance(calibration, dict):
        raise ValueError(f"{what} must be a dict (Calibrator.to_dict()), got {type(calibration).__name__}.")
    unknown = set(calibration) - set(CALIBRATION_KEYS)
    missing = [k for k in ("method", "slope", "intercept") if k not in calibration]
    if unknown or missing:
        raise ValueError(f"{what}: unknown keys {sorted(unknown)}, missing keys {missing}.")
    if calibration.get("format_version", 1) != 1:
        raise ValueError(f"{what} format_version {calibration['format_version']} is not supported (1 is).")
    if calibration["method"] not in CALIBRATION_METHODS:
        raise ValueError(f"{what} method must be one of {CALIBRATION_METHODS}, got {calibration['method']!r}.")
    for key in ("slope", "intercept"):
        value = calibration[key]
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            raise ValueError(f"{what} {key} must hold finite numbers.")
    if calibration["method"] == "temperature" and (
        min(calibration["slope"], default=1.0) <= 0 or any(calibration["intercept"])
    ):
        raise ValueError(f"{what}: temperature scaling needs positive slopes (1 / T) and zero intercepts.")
    n = len(findings) if findings is not None else len(calibration["slope"])
    for key in ("slope", "intercept", "thresholds", "finding_names"):
        value = calibration.get(key)
        if value is not None and len(value) != n:
            raise ValueError(f"{what} {key} has {len(value)} entries for {n} findings (one slope and one intercept, "
                             "and at most one threshold and name, per finding).")
    names = calibration.get("finding_names")
    if findings is not None and names is not None and list(names) != list(findings):
        raise ValueError(f"{what} finding_names differ from config.findings (another label order?).")
    return calibration


def apply_calibration(logits: torch.Tensor, calibration: dict[str, Any] | None) -> torch.Tensor:
    """Calibrated probabilities ``sigmoid(slope * logits + intercept)`` of ``(B, F)`` log-odds (same dtype / device);
    ``sigmoid(logits)`` when ``calibration`` is None. ``calibration`` must have passed :func:`check_calibration`."""
    if calibration is None:
        return torch.sigmoid(logits)
    slope = torch.tensor(calibration["slope"], dtype=logits.dtype, device=logits.device)
    intercept = torch.tensor(calibration["intercept"], dtype=logits.dtype, device=logits.device)
    return torch.sigmoid(logits * slope + intercept)


def calibration_thresholds(
    calibration: dict[str, Any] | None, n_findings: int, threshold: float | None = None, default: float = 0.5
) -> torch.Tensor:
    """Per-finding operating points ``(F,)`` float32 on the probabilities: ``threshold`` for all when given, else the
    calibration's thresholds (null -> NaN), else ``default``."""
    if threshold is not None:
        return torch.full((n_findings,), float(threshold))
    if calibration is not None and calibration.get("thresholds") is not None:
        return torch.tensor([math.nan if v is None else float(v) for v in calibration["thresholds"]])
    return torch.full((n_findings,), float(default))
