"""What the shipped ``evaluate`` metric modules (``hf_metrics/<name>/<name>.py``) share.

The three multi-label modules take the same inputs, ``predictions`` and ``references`` as ``(cases, findings)``
float64 rows, and the two threshold-free ones report one score per finding, macro, micro and weighted averages:
:func:`multilabel_info` builds their ``MetricInfo`` and :func:`averaged_per_finding` their result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

from x2ctclip.train.evaluation.metrics import jsonable

__all__ = ["averaged_per_finding", "multilabel_info"]


def multilabel_info(description: str, citation: str, inputs_description: str, reference_url: str
                    ) -> evaluate.MetricInfo:  # fmt: skip
    """``MetricInfo`` of a multi-label metric: float64 sequences ``predictions`` (scores) and ``references``
    (0/1 labels, NaN where a finding is not annotated), one per case."""
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features(
            {
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("float64")),
            }
        ),
        reference_urls=[reference_url],
    )


def averaged_per_finding(score: Callable[..., Any], prefix: str, predictions: Any, references: Any,
                         finding_names: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """``{prefix}_macro / _micro / _weighted`` and ``{prefix}_per_finding`` (a list, or a dict keyed by
    ``finding_names``) of ``score(y_true, y_score, average=...)``, JSON-able (NaN -> None)."""
    y_score = np.asarray(predictions, dtype=np.float64)
    y_true = np.asarray(references, dtype=np.float64)
    per_finding = score(y_true, y_score, average=None)
    if finding_names is not None:
        if len(finding_names) != len(per_finding):
            raise ValueError(f"finding_names has {len(finding_names)} names for {len(per_finding)} findings.")
        per_finding = dict(zip(finding_names, per_finding))
    out = {f"{prefix}_{average}": score(y_true, y_score, average=average) for average in ("macro", "micro", "weighted")}
    return jsonable({**out, f"{prefix}_per_finding": per_finding})
