"""What the demo returns for a request: per-source predictions, and the whole answer for a radiograph or a CT."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from uploads import Issue


@dataclass
class Predictions:
    """Per-finding probabilities from one source (a tower on one input).

    Attributes:
        source: e.g. ``"CXR tower"``. probabilities: ``(F,)`` in [0, 1]. logits: ``(F,)`` zero-shot log-odds.
        calibrated: whether ``probabilities`` went through a calibrator. calibration: its description.
        thresholds: ``(F,)`` operating thresholds (NaN where none) or None when the calibration has none.
    """

    source: str
    probabilities: np.ndarray
    logits: np.ndarray
    calibrated: bool
    calibration: str
    thresholds: np.ndarray | None = None


@dataclass
class RadiographResult:
    """Everything the demo shows for one radiograph.

    Attributes:
        view: ``(S, S)`` float32 in [0, 1]: the square of the radiograph the model sees, at display resolution.
        finding: the finding of the saliency map.
        predictions: the CXR tower's predictions (None when withheld because checks failed).
        saliency: ``(S, S)`` float32 signed map for ``finding`` (None when withheld); positive = evidence for it.
        retrieved: top reports ``(similarity, name, report)``. issues: failed input checks.
        ood_distance: Mahalanobis distance of the latent to the reference (None without a reference).
        withheld: predictions, saliency and reports were withheld because a check failed.
    """

    view: np.ndarray
    finding: str
    predictions: Predictions | None
    saliency: np.ndarray | None
    retrieved: list[tuple[float, str, str]]
    issues: list[Issue]
    ood_distance: float | None = None
    withheld: bool = False
    #: the raw zero-shot probabilities, only when asked for (``raw_scores=True``) and the default is calibrated.
    raw_predictions: Predictions | None = None


@dataclass
class CTResult:
    """Everything the demo shows for one CT: ``simulated[mode]`` ``(H, W)`` float32 in [0, 1] (both modes),
    predictions per source (CXR tower on each simulation, CT tower where present), retrieved reports, issues."""

    simulated: dict[str, np.ndarray]
    predictions: list[Predictions]
    retrieved: list[tuple[float, str, str]]
    retrieval_source: str
    issues: list[Issue]
    notes: list[str] = field(default_factory=list)
    withheld: bool = False
