"""`evaluate` module: precision, recall, F1 and specificity of a multi-label classifier at an operating point.

Load it with ``x2ctclip.train.evaluation.metrics.load_metric("multilabel_threshold_metrics")``. The computation is
:func:`x2ctclip.train.evaluation.metrics.precision_recall_f1` (``score >= threshold`` is positive; NaN labels masked).
"""

import evaluate
import numpy as np

from x2ctclip.train.evaluation.metric_modules import multilabel_info
from x2ctclip.train.evaluation.metrics import jsonable, precision_recall_f1

_DESCRIPTION = """Precision, recall (sensitivity), F1 and specificity of every finding at a global or per-finding
threshold, with macro, micro and weighted averages."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per case, one score per finding (probabilities by default).
    references (`list` of `list` of `float`): 0/1 labels of the same shape; NaN marks a finding not annotated.
    threshold (`float` or `list` of `float`, default 0.5): operating point, global or one per finding.
    zero_division (`float`, default 0.0): value of a ratio with a zero denominator.
Returns:
    `{average}_{metric}` for average in macro / micro / weighted and metric in precision / recall / f1 /
    specificity, and per-finding lists `precision`, `recall`, `f1`, `specificity`, `support`.
Examples:
    >>> from x2ctclip.train.evaluation.metrics import load_metric
    >>> m = load_metric("multilabel_threshold_metrics")
    >>> out = m.compute(predictions=[[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]], references=[[1, 0], [0, 1], [0, 1]])
    >>> out["macro_f1"]
    0.8333333333333333
"""

_CITATION = """@article{pedregosa2011scikit,
  title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultilabelThresholdMetrics(evaluate.Metric):
    def _info(self):
        return multilabel_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                               "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_recall_fscore_support.html")

    def _compute(self, predictions, references, threshold=0.5, zero_division=0.0):
        y_score = np.asarray(predictions, dtype=np.float64)
        y_true = np.asarray(references, dtype=np.float64)
        out = {}
        for average in ("macro", "micro", "weighted"):
            values = precision_recall_f1(y_true, y_score, threshold, average, zero_division)
            out.update({f"{average}_{k}": v for k, v in values.items() if k != "support"})
        out.update(precision_recall_f1(y_true, y_score, threshold, None, zero_division))
        return jsonable(out)
