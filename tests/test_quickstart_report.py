"""The quickstart's bootstrap intervals and paired differences on constructed data whose truth is known."""

import numpy as np
import pytest
import torch

from x2ctclip.train.evaluation.metrics import roc_auc_per_finding
from x2ctclip.train.evaluation.retrieval import retrieval_metrics
from x2ctclip.train.quickstart_report import auroc_intervals, query_hits, retrieval_intervals, skipped_findings


def _data(n=80, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    y[0], y[1] = 0.0, 1.0  # both classes in every finding
    return rng, y


def test_identical_models_differ_by_exactly_zero():
    rng, y = _data()
    a = y + rng.normal(0, 1.0, y.shape)
    # Same ranking of the cases (a monotone transform): the AUROCs are equal on every resample, so the paired
    # difference is 0 with a zero-width interval; an unpaired resampling would give a wide one.
    out = auroc_intervals(y, {"a": a, "b": np.exp(a)}, subset=[0, 1], pairs=[("a", "b")], n_resamples=300)
    d = out["differences"]["a-b"]
    assert d["macro"]["difference"] == 0.0 and d["macro"]["difference_ci"] == [0.0, 0.0]
    assert d["subset"]["difference_ci"] == [0.0, 0.0]
    assert all(f["difference_ci"] == [0.0, 0.0] for f in d["per_finding"])
    low, high = out["models"]["a"]["macro_auroc_ci"]
    assert high - low > 0.02  # the single model's interval is not degenerate


def test_perfect_against_random_model_interval_above_zero():
    rng, y = _data()
    perfect = y + 0.1 * rng.random(y.shape)
    random = rng.random(y.shape)
    out = auroc_intervals(y, {"perfect": perfect, "random": random}, subset=[2], pairs=[("perfect", "random")],
                          n_resamples=300)
    assert out["models"]["perfect"]["macro_auroc"] == 1.0
    assert out["models"]["perfect"]["macro_auroc_ci"] == [1.0, 1.0]
    low, high = out["differences"]["perfect-random"]["macro"]["difference_ci"]
    assert 0.0 < low <= out["differences"]["perfect-random"]["macro"]["difference"] <= high
    assert out["differences"]["perfect-random"]["subset"]["difference_ci"][0] > 0.0
    random_ci = out["models"]["random"]["macro_auroc_ci"]
    assert random_ci[0] < 0.5 + 0.15 and random_ci[1] > 0.5 - 0.15


def test_resamples_are_paired_and_seeded():
    rng, y = _data(n=40, k=3, seed=1)
    a, b = y + rng.normal(0, 1, y.shape), y + rng.normal(0, 1.5, y.shape)
    out = auroc_intervals(y, {"a": a, "b": b}, subset=[0], pairs=[("a", "b")], n_resamples=200, seed=7)
    # Reproduce by hand: one index matrix, used for both models.
    idx = np.random.default_rng(7).integers(0, 40, size=(200, 40))
    diffs = np.array([np.nanmean(roc_auc_per_finding(y[i], a[i]) - roc_auc_per_finding(y[i], b[i])) for i in idx])
    assert out["differences"]["a-b"]["macro"]["difference_ci"] == pytest.approx(
        list(np.percentile(diffs[np.isfinite(diffs)], [2.5, 97.5])))
    again = auroc_intervals(y, {"a": a, "b": b}, subset=[0], pairs=[("a", "b")], n_resamples=200, seed=7)
    assert again == out


def test_single_class_findings_are_skipped_and_counted():
    rng, y = _data(n=30, k=3, seed=2)
    y[:, 1] = 0.0
    y[5, 1] = 1.0  # one positive: most resamples of 30 scans keep it, about a third lose it
    y[:, 2] = 0.0  # no positive at all: no AUROC on the full data
    s = y + rng.normal(0, 0.8, y.shape)
    out = auroc_intervals(y, {"m": s, "n": rng.random(y.shape)}, subset=[1, 2], pairs=[("m", "n")], n_resamples=400)
    m = out["models"]["m"]
    assert m["auroc_ci"][2] is None and np.isnan(m["auroc"][2])
    assert m["macro_auroc"] == pytest.approx(np.nanmean(m["auroc"]))
    assert m["macro_auroc_ci"] is not None and all(np.isfinite(m["macro_auroc_ci"]))
    skipped = skipped_findings(y, n_resamples=400)
    assert skipped["undefined_on_full_data"] == [2]
    expected = int(((y[np.random.default_rng(1024).integers(0, 30, (400, 30))][:, :, 1] == 1).sum(1) == 0).sum())
    assert skipped["resamples_with_skipped_findings"] == expected == m["auroc_n_undefined"][1]
    assert 0 < expected < 400 and skipped["max_findings_skipped"] == 1
    assert skipped["mean_findings_skipped"] == pytest.approx(expected / 400)


def test_interval_brackets_the_estimate():
    rng, y = _data(n=120, k=5, seed=3)
    s = y + rng.normal(0, 1, y.shape)
    m = auroc_intervals(y, {"m": s}, subset=[0, 1], n_resamples=500)["models"]["m"]
    for value, ci in [(m["macro_auroc"], m["macro_auroc_ci"]), (m["subset_macro_auroc"], m["subset_macro_auroc_ci"]),
                      *zip(m["auroc"], m["auroc_ci"])]:
        assert 0.0 <= ci[0] <= value <= ci[1] <= 1.0


def test_unknown_pair_is_an_error():
    _, y = _data()
    with pytest.raises(ValueError, match="names a model without scores"):
        auroc_intervals(y, {"a": y}, subset=[0], pairs=[("a", "b")])


def test_retrieval_hits_and_intervals():
    rng = np.random.default_rng(4)
    gallery = torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32))
    good = gallery + 0.3 * torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32))
    bad = torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32))
    ks = (1, 5, 10)
    hits = {"good": query_hits(good, gallery, ks), "bad": query_hits(bad, gallery, ks)}
    reference = retrieval_metrics(good, gallery, recall_at=ks)
    assert hits["good"].mean(0) == pytest.approx([reference.recall[k] for k in ks])
    out = retrieval_intervals(hits, ks, [("good", "bad"), ("good", "good")], n_resamples=300)
    assert out["models"]["good"]["recall"]["10"] == pytest.approx(reference.recall[10])
    low, high = out["models"]["good"]["recall_ci"]["10"]
    assert low <= reference.recall[10] <= high
    assert out["differences"]["good-bad"]["1"]["difference_ci"][0] > 0.0
    assert out["differences"]["good-good"]["10"]["difference_ci"] == [0.0, 0.0]


def test_fewshot_seeds_are_the_protocols_first_three():
    from x2ctclip.train.fewshot.splits import FEWSHOT_FRACTIONS, FEWSHOT_SEEDS
    from x2ctclip.train.quickstart_report import QUICKSTART_FEWSHOT_FRACTIONS, QUICKSTART_FEWSHOT_SEEDS

    assert QUICKSTART_FEWSHOT_SEEDS == FEWSHOT_SEEDS[:3]
    assert set(QUICKSTART_FEWSHOT_FRACTIONS) <= set(FEWSHOT_FRACTIONS)
