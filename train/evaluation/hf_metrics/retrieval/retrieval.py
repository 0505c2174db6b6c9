"""`evaluate` module: paired retrieval Recall@K and label-overlap MAP@K (CT-CLIP protocol), offline.

Load it with ``x2ctclip.train.evaluation.metrics.load_metric("retrieval")`` (Recall@K only) or with
``config_name="with_labels"`` (adds a ``labels`` input and MAP@K). Row ``i`` of ``predictions`` (query embedding)
is paired with row ``i`` of ``references`` (gallery embedding); the computation is
:func:`x2ctclip.train.evaluation.retrieval.retrieval_metrics`.
"""

import datasets
import evaluate
import numpy as np

from x2ctclip.train.evaluation.retrieval import DEFAULT_MAP_AT, DEFAULT_RECALL_AT, retrieval_metrics

_DESCRIPTION = """Retrieval of paired items by cosine similarity: Recall@K (the paired item is among the K most
similar) and, with finding labels, MAP@K as defined by CT-CLIP (mean label overlap |A and B| / |A or B| of the top-K
retrieved items; queries without a positive label are excluded)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): query embeddings, one row per query.
    references (`list` of `list` of `float`): gallery embeddings; row i is the item paired with query i.
    labels (`list` of `list` of `int`, config "with_labels" only): 0/1 finding labels of case i (shared by query i
        and item i).
    recall_at (`list` of `int`, default [5, 10, 50, 100]), map_at (`list` of `int`, default [1, 5, 10, 50, 100]).
    exclude_self (`bool`, default False): same-modality retrieval, each query's own item left out.
    normalize (`bool`, default True): L2-normalise the embeddings first (False: they already are).
Returns:
    `recall@K`, `map@K` (with labels), `n_queries`, `n_gallery`, `n_map_queries`, `median_rank`, `mean_rank`.
Examples:
    >>> from x2ctclip.train.evaluation.metrics import load_metric
    >>> m = load_metric("retrieval")
    >>> m.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[[0.9, 0.1], [0.2, 0.8]], recall_at=[1])["recall@1"]
    1.0
"""

_CITATION = """@article{hamamci2024developing,
  title={Developing Generalist Foundation Models from a Multimodal Dataset for 3D Computed Tomography},
  author={Hamamci, Ibrahim Ethem and others}, journal={arXiv preprint arXiv:2403.17834}, year={2024}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    def _info(self):
        features = {
            "predictions": datasets.Sequence(datasets.Value("float32")),
            "references": datasets.Sequence(datasets.Value("float32")),
        }
        if self.config_name == "with_labels":
            features["labels"] = datasets.Sequence(datasets.Value("int8"))
        elif self.config_name != "default":
            raise ValueError(f"unknown config {self.config_name!r} of the retrieval metric: use 'with_labels'.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=["https://github.com/ibrahimethemhamamci/CT-CLIP"],
        )

    def _compute(self, predictions, references, labels=None, recall_at=DEFAULT_RECALL_AT, map_at=DEFAULT_MAP_AT,
                 exclude_self=False, normalize=True):
        result = retrieval_metrics(
            np.asarray(predictions, dtype=np.float32),
            np.asarray(references, dtype=np.float32),
            query_labels=None if labels is None else np.asarray(labels),
            recall_at=recall_at,
            map_at=map_at,
            exclude_self=exclude_self,
            normalize=normalize,
        )
        return result.to_dict()
