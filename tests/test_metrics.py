"""Classification metrics (x2ctclip.train.evaluation.metrics) and the offline `evaluate` modules, checked against scikit-learn."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub / evaluate

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from x2ctclip.train.evaluation import metrics as M


def _data(n=400, n_findings=6, seed=0, rounded=True):
    """Multi-label data with varied prevalence; rounding the scores creates many ties."""
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.05, 0.5, n_findings)
    y = (rng.random((n, n_findings)) < prevalence).astype(np.float64)
    s = y * rng.normal(1.0, 1.0, (n, n_findings)) + rng.normal(0.0, 1.0, (n, n_findings))
    if rounded:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("rounded", [False, True])
def test_auroc_and_ap_match_sklearn(rounded):
    y, s = _data(rounded=rounded)
    np.testing.assert_allclose(M.roc_auc_per_finding(y, s), skm.roc_auc_score(y, s, average=None), atol=1e-12)
    np.testing.assert_allclose(
        M.average_precision_per_finding(y, s), skm.average_precision_score(y, s, average=None), atol=1e-12
    )
    for average in ("macro", "micro", "weighted"):
        assert M.roc_auc(y, s, average) == pytest.approx(skm.roc_auc_score(y, s, average=average), abs=1e-12)
        assert M.average_precision(y, s, average) == pytest.approx(
            skm.average_precision_score(y, s, average=average), abs=1e-12
        )


def test_single_finding_and_all_ties():
    y, s = _data(n_findings=1)
    value = M.roc_auc_per_finding(y[:, 0], s[:, 0])
    assert isinstance(value, float)
    assert value == pytest.approx(skm.roc_auc_score(y[:, 0], s[:, 0]), abs=1e-12)
    # Constant scores: every pair is a tie, AUROC 0.5, AP = prevalence (sklearn agrees).
    const = np.zeros_like(s[:, 0])
    assert M.roc_auc(y[:, 0], const) == pytest.approx(0.5)
    assert M.average_precision(y[:, 0], const) == pytest.approx(skm.average_precision_score(y[:, 0], const))


def test_single_class_finding_is_nan_and_excluded_from_macro():
    y, s = _data()
    y[:, 2] = 0.0  # no positive
    y[:, 4] = 1.0  # no negative
    per = M.roc_auc_per_finding(y, s)
    assert np.isnan(per[2]) and np.isnan(per[4])
    keep = [0, 1, 3, 5]
    assert M.roc_auc(y, s, "macro") == pytest.approx(skm.roc_auc_score(y[:, keep], s[:, keep]), abs=1e-12)
    assert M.roc_auc(y, s, "weighted") == pytest.approx(
        skm.roc_auc_score(y[:, keep], s[:, keep], average="weighted"), abs=1e-12
    )
    assert M.average_precision(y, s, "macro") == pytest.approx(
        skm.average_precision_score(y[:, keep], s[:, keep]), abs=1e-12
    )
    # micro pools every annotated pair, single-class findings included
    assert M.roc_auc(y, s, "micro") == pytest.approx(skm.roc_auc_score(y.ravel(), s.ravel()), abs=1e-12)
    report = M.classification_report(y, 1 / (1 + np.exp(-s)))
    assert report.excluded_findings == ["finding_2", "finding_4"]
    as_json = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert as_json["findings"][2]["auroc"] is None
    # Nothing defined at all -> NaN, not an exception.
    assert np.isnan(M.roc_auc(np.zeros((5, 2)), np.ones((5, 2))))


def test_nan_labels_are_masked_per_finding():
    y, s = _data(seed=1)
    rng = np.random.default_rng(2)
    y[rng.random(y.shape) < 0.3] = np.nan
    y[:, 5] = np.nan  # a finding the test set does not annotate at all
    s_nan = s.copy()
    s_nan[np.isnan(y)] = np.nan  # scores of unannotated entries are ignored, even if NaN
    per = M.roc_auc_per_finding(y, s_nan)
    ap = M.average_precision_per_finding(y, s_nan)
    for j in range(5):
        v = ~np.isnan(y[:, j])
        assert per[j] == pytest.approx(skm.roc_auc_score(y[v, j], s[v, j]), abs=1e-12)
        assert ap[j] == pytest.approx(skm.average_precision_score(y[v, j], s[v, j]), abs=1e-12)
    assert np.isnan(per[5])
    assert M.roc_auc(y, s, "macro") == pytest.approx(np.mean(per[:5]), abs=1e-12)
    flat = ~np.isnan(y.ravel())
    assert M.roc_auc(y, s, "micro") == pytest.approx(skm.roc_auc_score(y.ravel()[flat], s.ravel()[flat]), abs=1e-12)
    assert M.average_precision(y, s, "micro") == pytest.approx(
        skm.average_precision_score(y.ravel()[flat], s.ravel()[flat]), abs=1e-12
    )
    pr = M.precision_recall_f1(y, s, 0.0, average=None)
    for j in range(5):
        v = ~np.isnan(y[:, j])
        assert pr["f1"][j] == pytest.approx(skm.f1_score(y[v, j], s[v, j] >= 0.0))


def test_batched_inputs_equal_a_loop_and_torch_inputs_work():
    y, s = _data(n=120, n_findings=4)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(y), size=(5, len(y)))
    yb, sb = y[idx], s[idx]  # (5, n, F): five bootstrap-like resamples
    for average in (None, "macro", "micro", "weighted"):
        batched = M.roc_auc(yb, sb, average)
        looped = np.stack([np.asarray(M.roc_auc(yb[b], sb[b], average)) for b in range(5)])
        np.testing.assert_allclose(batched, looped, atol=1e-12)
        batched = M.average_precision(yb, sb, average)
        looped = np.stack([np.asarray(M.average_precision(yb[b], sb[b], average)) for b in range(5)])
        np.testing.assert_allclose(batched, looped, atol=1e-12)
    f1_b = M.f1_score(yb, sb, 0.2, "macro")
    np.testing.assert_allclose(f1_b, [M.f1_score(yb[b], sb[b], 0.2, "macro") for b in range(5)])
    yt, st = torch.from_numpy(y), torch.from_numpy(s).float().requires_grad_()
    assert M.roc_auc(yt, st) == pytest.approx(M.roc_auc(y, s.astype(np.float32)), abs=1e-12)


@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted"])
def test_threshold_metrics_match_sklearn(average):
    y, s = _data(seed=4)
    p = 1 / (1 + np.exp(-s))
    for threshold in (0.5, np.linspace(0.3, 0.7, y.shape[1])):
        ours = M.precision_recall_f1(y, p, threshold, average)
        pred = p >= threshold
        prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        np.testing.assert_allclose(ours["precision"], prec, atol=1e-12)
        np.testing.assert_allclose(ours["recall"], rec, atol=1e-12)
        np.testing.assert_allclose(ours["f1"], f1, atol=1e-12)
        if average is None:
            spec = [skm.recall_score(1 - y[:, j], ~pred[:, j]) for j in range(y.shape[1])]
            np.testing.assert_allclose(ours["specificity"], spec, atol=1e-12)
            np.testing.assert_array_equal(ours["support"], y.sum(0))


def test_zero_division_nan_excludes_findings():
    y, s = _data(seed=5)
    p = 1 / (1 + np.exp(-s))
    threshold = np.full(y.shape[1], 0.5)
    threshold[1] = 2.0  # nothing predicted positive: precision 0/0
    zero = M.precision_recall_f1(y, p, threshold, None)
    nan = M.precision_recall_f1(y, p, threshold, None, zero_division=float("nan"))
    assert zero["precision"][1] == 0.0 and np.isnan(nan["precision"][1])
    macro_nan = M.precision_recall_f1(y, p, threshold, "macro", zero_division=float("nan"))
    assert macro_nan["precision"] == pytest.approx(np.mean(np.delete(zero["precision"], 1)))


def test_confusion_counts_one_finding():
    counts = M.confusion_counts([1, 0, 1, 0, np.nan], [0.9, 0.6, 0.2, 0.1, 0.99], 0.5)
    assert counts == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}


def test_bad_inputs_raise_clear_errors():
    y, s = _data(n=20, n_findings=2)
    with pytest.raises(ValueError, match="same shape"):
        M.roc_auc(y, s[:, :1])
    with pytest.raises(ValueError, match="0 / 1"):
        M.roc_auc(y * 2, s)
    bad = s.copy()
    bad[0, 0] = np.nan
    y[0, 0] = 1
    with pytest.raises(ValueError, match="finite"):
        M.roc_auc(y, bad)
    with pytest.raises(ValueError, match="average"):
        M.roc_auc(y, s, "samples")
    with pytest.raises(ValueError, match="threshold"):
        M.f1_score(y, s, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="numeric"):
        M.roc_auc(y, [["a", "b"]] * 20)
    with pytest.raises(ValueError, match="finding_names"):
        M.classification_report(y, s, finding_names=["only one"])


def test_classification_report_round_trips_to_strict_json():
    y, s = _data(seed=6)
    p = 1 / (1 + np.exp(-s))
    names = [f"f{j}" for j in range(y.shape[1])]
    report = M.classification_report(y, p, finding_names=names, threshold=0.4)
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert [f["name"] for f in d["findings"]] == names
    assert d["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, p))
    assert d["f1_micro"] == pytest.approx(skm.f1_score(y, p >= 0.4, average="micro"))
    assert d["findings"][0]["threshold"] == 0.4
    assert d["findings"][3]["n_positive"] == int(y[:, 3].sum())


# ---------------------------------------------------------------------------------------------------------------
# Offline evaluate modules
# ---------------------------------------------------------------------------------------------------------------


def test_every_local_metric_script_is_shipped():
    for name in M.LOCAL_METRICS:
        assert M.local_metric_path(name).is_file()
    with pytest.raises(ValueError, match="unknown local metric"):
        M.local_metric_path("roc_auc")


def test_evaluate_modules_offline_match_sklearn(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    y, s = _data(n=200, seed=7)
    p = 1 / (1 + np.exp(-s))

    auroc = M.load_metric("multilabel_auroc")
    # accumulate in two batches, as an evaluation loop would
    auroc.add_batch(predictions=s[:120].tolist(), references=y[:120].tolist())
    auroc.add_batch(predictions=s[120:].tolist(), references=y[120:].tolist())
    out = auroc.compute()
    assert out["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert out["roc_auc_micro"] == pytest.approx(skm.roc_auc_score(y, s, average="micro"), abs=1e-12)
    assert out["roc_auc_weighted"] == pytest.approx(skm.roc_auc_score(y, s, average="weighted"), abs=1e-12)
    np.testing.assert_allclose(out["roc_auc_per_finding"], skm.roc_auc_score(y, s, average=None), atol=1e-12)

    ap = M.load_metric("multilabel_average_precision")
    names = [f"f{j}" for j in range(y.shape[1])]
    out = ap.compute(predictions=s, references=y, finding_names=names)
    assert out["average_precision_macro"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert out["average_precision_per_finding"]["f0"] == pytest.approx(
        skm.average_precision_score(y[:, 0], s[:, 0]), abs=1e-12
    )

    thr = M.load_metric("multilabel_threshold_metrics")
    out = thr.compute(predictions=p, references=y, threshold=0.5)
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, p >= 0.5, average="macro"), abs=1e-12)
    assert out["micro_precision"] == pytest.approx(skm.precision_score(y, p >= 0.5, average="micro"), abs=1e-12)
    json.dumps(out, allow_nan=False)


def test_evaluate_auroc_module_handles_missing_labels(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    y, s = _data(n=100, n_findings=3, seed=8)
    y[:, 1] = np.nan
    out = M.load_metric("multilabel_auroc").compute(predictions=s, references=y)
    assert out["roc_auc_per_finding"][1] is None
    assert out["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y[:, [0, 2]], s[:, [0, 2]]), abs=1e-12)


def test_evaluate_command_report_comes_from_the_evaluate_modules_and_equals_the_kernels():
    """`x2ctclip evaluate zeroshot` builds its report with the package's evaluate modules (evaluate.load on their
    paths): the same numbers as the NumPy kernels, NaN labels and a single-class finding included."""
    from x2ctclip.train.evaluation.classification import classification_report_via_evaluate
    from x2ctclip.train.evaluation.metrics import classification_report, jsonable

    rng = np.random.default_rng(7)
    labels = (rng.random((60, 4)) < [0.2, 0.4, 0.5, 0.0]).astype(float)
    labels[rng.random((60, 4)) < 0.1] = np.nan
    scores = np.clip(0.5 * labels + rng.random((60, 4)) * 0.7, 0, 1)
    scores[np.isnan(scores)] = 0.3
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    names = ["a", "b", "c", "never"]
    via_modules = classification_report_via_evaluate(labels, scores, names, thresholds)
    direct = classification_report(labels, scores, names, threshold=thresholds)
    assert jsonable(via_modules.to_dict()) == jsonable(direct.to_dict())
    assert via_modules.excluded_findings == ["never"] and 0.5 < via_modules.auroc_macro <= 1.0
