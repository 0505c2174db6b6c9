"""The logic of ``x2ctclip evaluate``: classification with confidence intervals, retrieval, calibration.

Every step takes a saved model folder, either an :class:`x2ctclip.X2CTCLIPModel` (findings scored **zero-shot** with
the prompt pairs stored in its config, :class:`~x2ctclip.train.zeroshot.ZeroShotClassifier`) or an
:class:`x2ctclip.X2CTCLIPForAbnormalityClassification` (a supervised head), and a set of cases:

- a preprocessed split (``x2ctclip preprocess``: simulated CXRs, the 18 labels, reports) -> :func:`preprocessed_cases`;
- an external collection of real radiographs (:mod:`x2ctclip.train.evaluation.external_sets`) -> :func:`external_cases`.

When the model config carries a calibration (``config.calibration``, written by :func:`calibrate`), its probabilities
are reported calibrated and its thresholds are the default operating points. Outputs (``--out``, default
``MODEL/evaluation``), each written to a temporary name and renamed:

- ``zeroshot_<data>.json`` / ``.md`` / ``_predictions.csv``: :func:`evaluate_classification`;
- ``retrieval_<data>.json`` / ``.md``: :func:`evaluate_retrieval`;
- ``calibration_<data>.json`` / ``.md`` / ``reliability_<data>.png``: :func:`calibrate`;
- ``evaluation.json`` / ``.md``: :func:`evaluate_all`.

The JSON files have the shape :func:`x2ctclip.train.hub.results.load_evaluation_results` reads for the model card
(``{"results": [{"task", "dataset", "report" | "metrics", ...}], ...}``), plus the provenance: model folder and
fingerprint, data folder, split and fingerprint, seed, bootstrap settings, versions and the command line.

May import: the library and ``x2ctclip.train.data``; ``calibrate`` also rewrites a model folder through
``x2ctclip.train.hub.folders`` (a cycle with ``hub``, docs/architecture.md).
"""
