"""Retrieval metrics (x2ctclip.train.evaluation.retrieval): vectorised version vs the loop reference and hand-worked cases."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from x2ctclip.train.evaluation.metrics import load_metric
from x2ctclip.train.evaluation.retrieval import (
    cross_modal_retrieval,
    label_overlap,
    naive_retrieval_metrics,
    retrieval_metrics,
)


def _pairs(n=150, n_gallery=None, dim=16, noise=1.5, n_labels=18, seed=0):
    rng = np.random.default_rng(seed)
    n_gallery = n if n_gallery is None else n_gallery
    gallery = rng.normal(size=(n_gallery, dim))
    targets = np.arange(n) if n == n_gallery else rng.integers(0, n_gallery, n)
    queries = gallery[targets] + noise * rng.normal(size=(n, dim))
    labels = (rng.random((n_gallery, n_labels)) < 0.15).astype(np.int64)
    return queries, gallery, targets, labels


def _assert_same(a, b):
    assert a.recall.keys() == b.recall.keys() and a.map.keys() == b.map.keys()
    for k in a.recall:
        assert a.recall[k] == pytest.approx(b.recall[k], abs=1e-12), k
    for k in a.map:
        assert a.map[k] == pytest.approx(b.map[k], abs=1e-9), k
    assert a.n_map_queries == b.n_map_queries
    if not np.isnan(a.median_rank):
        assert (a.median_rank, a.mean_rank) == pytest.approx((b.median_rank, b.mean_rank))


@pytest.fixture(scope="module")
def reference_case():
    q, g, _, labels = _pairs()
    return q, g, labels, naive_retrieval_metrics(q, g, labels, recall_at=(1, 5, 10, 50, 100))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_vectorised_matches_loop_reference(reference_case, chunk_size):
    q, g, labels, slow = reference_case
    fast = retrieval_metrics(q, g, labels, recall_at=(1, 5, 10, 50, 100), chunk_size=chunk_size)
    _assert_same(fast, slow)
    assert 0 < fast.recall[5] < fast.recall[50] < 1  # a non-trivial case
    assert fast.n_map_queries < len(q)  # some queries have no positive label and are excluded


def test_k_larger_than_gallery_and_explicit_targets():
    # 60 queries (e.g. reports) for 40 gallery items (e.g. CT volumes): several queries share an item.
    q, g, targets, glabels = _pairs(n=60, n_gallery=40, seed=1)
    qlabels = glabels[targets]
    ks = (1, 5, 39, 40, 100)
    fast = retrieval_metrics(q, g, qlabels, glabels, targets=targets, recall_at=ks, map_at=ks, chunk_size=16)
    slow = naive_retrieval_metrics(q, g, qlabels, glabels, targets=targets, recall_at=ks, map_at=ks)
    _assert_same(fast, slow)
    assert fast.recall[40] == fast.recall[100] == 1.0
    assert fast.map[40] == pytest.approx(fast.map[100])  # K clipped to the gallery size


def test_exclude_self_same_set_retrieval():
    q, _, _, labels = _pairs(n=80, seed=2)
    fast = retrieval_metrics(q, q, labels, exclude_self=True, map_at=(1, 10, 79, 200), chunk_size=32)
    slow = naive_retrieval_metrics(q, q, labels, exclude_self=True, map_at=(1, 10, 79, 200))
    _assert_same(fast, slow)
    assert fast.recall == {} and np.isnan(fast.median_rank)
    with_self = retrieval_metrics(q, q, labels, map_at=(1,))
    assert with_self.map[1] == 1.0  # the query retrieves itself first: overlap 1


def test_hand_worked_example():
    # Three cases in 2-D; queries equal to the gallery, so each query's best match is itself.
    g = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    res = retrieval_metrics(g, g, labels, recall_at=(1, 2), map_at=(1, 2, 3))
    assert res.recall == {1: 1.0, 2: 1.0}
    # Rankings: q0 -> 0, 1, 2 ; q1 -> 1, 0 (0.8) / 2 (0.6) ; q2 (no positive label) excluded from MAP.
    # q0 overlaps with items 0, 1, 2: 1, 1/2, 0 ; q1 overlaps with items 1, 0, 2: 1, 1/2, 0.
    assert res.n_map_queries == 2
    assert res.map[1] == pytest.approx(1.0)
    assert res.map[2] == pytest.approx(0.75)
    assert res.map[3] == pytest.approx(0.5)
    np.testing.assert_allclose(label_overlap(labels[:2], labels), [[1, 0.5, 0], [0.5, 1, 0]])
    assert np.isnan(label_overlap(labels[2:], labels[2:])[0, 0])


def test_torch_inputs_normalisation_and_dict():
    q, g, _, labels = _pairs(n=50, seed=3)
    qt, gt = torch.from_numpy(q).float(), torch.from_numpy(g).float()
    a = retrieval_metrics(qt, gt, torch.from_numpy(labels))
    b = retrieval_metrics(
        torch.nn.functional.normalize(qt, dim=1), torch.nn.functional.normalize(gt, dim=1), labels, normalize=False
    )
    _assert_same(a, b)
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert set(d) >= {"recall@5", "recall@100", "map@1", "map@100", "n_map_queries", "median_rank"}
    no_labels = retrieval_metrics(q, g)
    assert no_labels.map == {} and no_labels.recall[5] == a.recall[5]


def test_cross_modal_both_directions():
    q, g, _, labels = _pairs(n=40, seed=4)
    out = cross_modal_retrieval(q, g, labels, names=("cxr", "report"), recall_at=(5,), map_at=(5,))
    assert set(out) == {"cxr->report", "report->cxr"}
    _assert_same(out["report->cxr"], naive_retrieval_metrics(g, q, labels, recall_at=(5,), map_at=(5,)))


def test_bad_inputs():
    q, g, _, labels = _pairs(n=10, seed=5)
    with pytest.raises(ValueError, match="targets"):
        retrieval_metrics(q, g[:8])
    with pytest.raises(ValueError, match="width"):
        retrieval_metrics(q, g[:, :4])
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, g)
    with pytest.raises(ValueError, match="0 / 1"):
        retrieval_metrics(q, g, labels * 2)
    with pytest.raises(ValueError, match="positive integers"):
        retrieval_metrics(q, g, recall_at=(0,))
    with pytest.raises(ValueError, match="gallery indices"):
        retrieval_metrics(q, g, targets=np.arange(10) + 5)
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(q[:, None], g)


def test_evaluate_retrieval_module_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    q, g, _, labels = _pairs(n=60, seed=6)
    expected = retrieval_metrics(q, g, labels).to_dict()
    metric = load_metric("retrieval", config_name="with_labels")
    metric.add_batch(predictions=q[:30], references=g[:30], labels=labels[:30])
    metric.add_batch(predictions=q[30:], references=g[30:], labels=labels[30:])
    out = metric.compute()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key
    plain = load_metric("retrieval").compute(predictions=q, references=g, recall_at=[5])
    assert plain["recall@5"] == pytest.approx(expected["recall@5"])
