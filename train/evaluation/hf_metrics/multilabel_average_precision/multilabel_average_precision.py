"""`evaluate` module: multi-label average precision (per finding, macro, micro, weighted), offline.

Load it with ``x2ctclip.train.metrics.load_metric("multilabel_average_precision")``. The computation is
:func:`x2ctclip.train.metrics.average_precision` (scikit-learn's step-wise AP; NaN labels masked; single-class
findings None and excluded from the macro / weighted averages).
"""

import datasets
import evaluate
import numpy as np

from x2ctclip.train.metrics import average_precision, jsonable

_DESCRIPTION = """Average precision (area under the step-wise precision-recall curve) of every finding of a
multi-label classifier, with macro, micro and weighted (by positives) averages."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per case, one score per finding.
    references (`list` of `list` of `float`): 0/1 labels of the same shape; NaN marks a finding not annotated.
    finding_names (`list` of `str`, optional): names used as keys of `average_precision_per_finding`.
Returns:
    `average_precision_macro`, `average_precision_micro`, `average_precision_weighted` and
    `average_precision_per_finding` (None where undefined).
Examples:
    >>> from x2ctclip.train.metrics import load_metric
    >>> ap = load_metric("multilabel_average_precision")
    >>> out = ap.compute(predictions=[[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]], references=[[1, 0], [0, 1], [0, 1]])
    >>> out["average_precision_macro"]
    1.0
"""

_CITATION = """@book{manning2008introduction,
  title={Introduction to Information Retrieval}, author={Manning, Christopher D and Raghavan, Prabhakar and
  Sch{\\"u}tze, Hinrich}, publisher={Cambridge University Press}, year={2008}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultilabelAveragePrecision(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.average_precision_score.html"
            ],
        )

    def _compute(self, predictions, references, finding_names=None):
        y_score = np.asarray(predictions, dtype=np.float64)
        y_true = np.asarray(references, dtype=np.float64)
        per_finding = average_precision(y_true, y_score, average=None)
        if finding_names is not None:
            if len(finding_names) != len(per_finding):
                raise ValueError(f"finding_names has {len(finding_names)} names for {len(per_finding)} findings.")
            per_finding = dict(zip(finding_names, per_finding))
        return jsonable(
            {
                "average_precision_macro": average_precision(y_true, y_score, average="macro"),
                "average_precision_micro": average_precision(y_true, y_score, average="micro"),
                "average_precision_weighted": average_precision(y_true, y_score, average="weighted"),
                "average_precision_per_finding": per_finding,
            }
        )
