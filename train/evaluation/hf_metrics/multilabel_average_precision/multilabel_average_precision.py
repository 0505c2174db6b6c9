"""`evaluate` module: multi-label average precision (per finding, macro, micro, weighted), offline.

Load it with ``x2ctclip.train.evaluation.metrics.load_metric("multilabel_average_precision")``. The computation is
:func:`x2ctclip.train.evaluation.metrics.average_precision` (scikit-learn's step-wise AP; NaN labels masked; single-class
findings None and excluded from the macro / weighted averages).
"""

import evaluate

from x2ctclip.train.evaluation.metric_modules import averaged_per_finding, multilabel_info
from x2ctclip.train.evaluation.metrics import average_precision

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
    >>> from x2ctclip.train.evaluation.metric_modules import averaged_per_finding, multilabel_info
from x2ctclip.train.evaluation.metrics import average_precision
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
        return multilabel_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                               "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.average_precision_score.html")

    def _compute(self, predictions, references, finding_names=None):
        return averaged_per_finding(average_precision, "average_precision", predictions, references, finding_names)
