"""`evaluate` module: multi-label AUROC (per finding, macro, micro, weighted), offline.

Load it with ``x2ctclip.train.evaluation.metrics.load_metric("multilabel_auroc")`` (or ``evaluate.load`` on this file's path).
The computation is :func:`x2ctclip.train.evaluation.metrics.roc_auc`; see that module for the conventions (NaN labels are
masked; single-class findings get NaN and are left out of the macro / weighted averages).
"""

import evaluate

from x2ctclip.train.evaluation.metric_modules import averaged_per_finding, multilabel_info
from x2ctclip.train.evaluation.metrics import roc_auc

_DESCRIPTION = """Area under the ROC curve of every finding of a multi-label classifier, with macro, micro and
weighted (by positives) averages. Findings with a single class among the annotated cases are reported as None and
excluded from the macro and weighted averages."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per case, one score per finding (probabilities or logits).
    references (`list` of `list` of `float`): 0/1 labels of the same shape; NaN marks a finding not annotated.
    finding_names (`list` of `str`, optional): names used as keys of `roc_auc_per_finding`.
Returns:
    `roc_auc_macro`, `roc_auc_micro`, `roc_auc_weighted` (float or None) and `roc_auc_per_finding`
    (list, or dict keyed by finding name; None where undefined).
Examples:
    >>> from x2ctclip.train.evaluation.metric_modules import averaged_per_finding, multilabel_info
from x2ctclip.train.evaluation.metrics import roc_auc
    >>> auroc = load_metric("multilabel_auroc")
    >>> out = auroc.compute(predictions=[[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]], references=[[1, 0], [0, 1], [0, 1]])
    >>> round(out["roc_auc_macro"], 3)
    1.0
"""

_CITATION = """@article{hanley1982meaning,
  title={The meaning and use of the area under a receiver operating characteristic (ROC) curve},
  author={Hanley, James A and McNeil, Barbara J},
  journal={Radiology}, volume={143}, number={1}, pages={29--36}, year={1982}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultilabelAuroc(evaluate.Metric):
    def _info(self):
        return multilabel_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                               "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html")

    def _compute(self, predictions, references, finding_names=None):
        return averaged_per_finding(roc_auc, "roc_auc", predictions, references, finding_names)
