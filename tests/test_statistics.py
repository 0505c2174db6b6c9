"""Bootstrap intervals and the DeLong test (x2ctclip.train.evaluation.uncertainty)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from x2ctclip.train.evaluation.metrics import roc_auc
from x2ctclip.train.evaluation.uncertainty import (
    bootstrap_ci,
    delong_covariance,
    delong_test,
    delong_test_per_finding,
)

# ---------------------------------------------------------------------------------------------------------------
# Published reference: R pROC's `aSAH` data set (Turck et al., Intensive Care Med 2010;36:107-115: 113 patients
# with aneurysmal subarachnoid haemorrhage, 41 with a poor outcome), columns outcome (Good = 0, Poor = 1), wfns
# (WFNS grade 1-5, ordinal: many ties), s100b and ndka (biomarkers), in the data set's row order.
# Expected values: pROC's own test suite (tests/testthat/test-auc.R, test-var.R, test-cov.R, test-roc.test.R of
# github.com/xrobin/pROC); roc.test(wfns, s100b) -> Z = 2.209, p = 0.02718 is also pROC's documented example.
# ---------------------------------------------------------------------------------------------------------------
# fmt: off
ASAH_OUTCOME = [
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0,
    1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0,
    0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0,
]
ASAH_WFNS = [
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2, 1, 1, 3, 4, 2, 1, 4, 5, 4, 1,
    4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1, 2, 2, 2, 1, 5, 1, 1, 2, 5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2,
    1, 4, 2, 1, 2, 3, 2, 4, 2, 1, 4, 5, 1, 1, 5, 4, 2, 2, 1, 1, 1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1, 1,
]
ASAH_S100B = [
    0.13, 0.14, 0.10, 0.04, 0.13, 0.10, 0.47, 0.16, 0.18, 0.10, 0.12, 0.10, 0.44, 0.71, 0.04, 0.08, 0.49, 0.04, 0.07,
    0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11, 0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09,
    0.96, 0.25, 0.50, 0.46, 0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.10, 0.14,
    0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.30, 0.03, 0.09, 0.04, 0.23, 0.70, 0.09, 0.27, 0.71, 0.08, 0.26, 0.08, 0.16,
    0.09, 0.13, 0.10, 0.08, 0.11, 0.33, 0.11, 0.28, 0.07, 0.10, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.10, 0.15, 0.08,
    0.14, 0.10, 0.07, 0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.50, 0.48,
]
ASAH_NDKA = [
    3.01, 8.54, 8.09, 10.42, 17.40, 12.75, 6.00, 13.20, 15.54, 6.01, 15.96, 17.86, 5.18, 8.90, 13.41, 20.75, 11.60,
    16.11, 32.37, 54.82, 32.41, 49.94, 40.34, 9.47, 6.29, 12.53, 6.54, 6.30, 80.30, 12.80, 9.80, 9.81, 9.85, 18.21,
    5.03, 14.04, 21.93, 8.02, 7.42, 8.38, 6.59, 9.63, 13.12, 7.96, 14.34, 41.43, 7.63, 7.06, 12.59, 13.56, 3.87,
    9.44, 7.66, 12.98, 419.19, 27.19, 22.27, 9.95, 21.22, 11.73, 10.40, 58.83, 6.39, 11.09, 12.22, 13.67, 17.21,
    22.63, 12.90, 9.70, 21.57, 8.23, 72.57, 15.54, 10.51, 10.60, 14.57, 5.19, 9.63, 4.61, 21.48, 17.30, 12.71, 9.44,
    11.07, 19.46, 10.83, 5.37, 11.97, 7.75, 9.83, 10.55, 28.49, 8.53, 12.57, 12.90, 46.83, 11.68, 12.67, 9.01, 9.57,
    34.06, 11.72, 14.26, 47.61, 11.67, 24.58, 10.33, 13.87, 15.89, 22.43, 6.79, 13.45,
]
# fmt: on
PROC_AUC = {"wfns": 0.823678861788618, "ndka": 0.611957994579946, "s100b": 0.7314}  # s100b: 4 digits (docs)
PROC_VAR = {"wfns": 0.00146991470882363, "ndka": 0.0031908105493913, "s100b": 0.00266868245717244}
PROC_COV = {("wfns", "ndka"): -0.000532967856762438, ("ndka", "s100b"): -0.000756164938056579,
            ("s100b", "wfns"): 0.00119615567376754}  # fmt: skip
# roc.test(a, b): Z, p, 95 % interval of AUC(a) - AUC(b)
PROC_TEST = {
    ("wfns", "s100b"): (2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka"): (2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b"): (-1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
}
ASAH = {"wfns": ASAH_WFNS, "ndka": ASAH_NDKA, "s100b": ASAH_S100B}


def test_asah_data_is_complete():
    assert len(ASAH_OUTCOME) == 113 and sum(ASAH_OUTCOME) == 41
    assert all(len(v) == 113 for v in ASAH.values())


def test_delong_reproduces_proc_on_asah():
    names = ["wfns", "ndka", "s100b"]
    aucs, cov = delong_covariance(ASAH_OUTCOME, np.stack([ASAH[k] for k in names], axis=1))
    assert aucs[0] == pytest.approx(PROC_AUC["wfns"], rel=1e-12)
    assert aucs[1] == pytest.approx(PROC_AUC["ndka"], rel=1e-12)
    assert aucs[2] == pytest.approx(PROC_AUC["s100b"], abs=5e-5)
    for i, name in enumerate(names):
        assert cov[i, i] == pytest.approx(PROC_VAR[name], rel=1e-10)
    for (a, b), value in PROC_COV.items():
        assert cov[names.index(a), names.index(b)] == pytest.approx(value, rel=1e-10)
    for (a, b), (z, p, low, high) in PROC_TEST.items():
        result = delong_test(ASAH_OUTCOME, ASAH[a], ASAH[b])
        assert result.z == pytest.approx(z, rel=1e-10)
        assert result.p_value == pytest.approx(p, rel=1e-9)
        assert (result.difference_low, result.difference_high) == pytest.approx((low, high), rel=1e-9)
        assert result.auc_a - result.auc_b == pytest.approx(result.difference)
        assert (result.n_positive, result.n_negative) == (41, 72)
    # the published, rounded example of pROC's documentation
    example = delong_test(ASAH_OUTCOME, ASAH["s100b"], ASAH["wfns"])
    assert round(example.z, 3) == -2.209 and round(example.p_value, 5) == 0.02718
    assert (round(example.auc_a, 4), round(example.auc_b, 4)) == (0.7314, 0.8237)


def _slow_delong(y, scores):
    """DeLong et al. (1988) structural components, straight from the definition: O(n_pos * n_neg) per model."""
    y = np.asarray(y)
    x_all, y_all = scores[y == 1], scores[y == 0]
    m, n = len(x_all), len(y_all)
    v10, v01, aucs = [], [], []
    for r in range(scores.shape[1]):
        x, z = x_all[:, r], y_all[:, r]
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    return np.array(aucs), s10 / m + s01 / n


@pytest.mark.parametrize("seed,prevalence", [(0, 0.5), (1, 0.1), (2, 0.9)])
def test_fast_delong_equals_slow_estimator(seed, prevalence):
    rng = np.random.default_rng(seed)
    n = 300
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    base = y + rng.normal(0, 1.2, n)
    scores = np.stack(
        [base + rng.normal(0, 0.5, n), np.round(base + rng.normal(0, 1.0, n), 1), rng.integers(0, 4, n)], axis=1
    )  # continuous, rounded (ties), and a 4-level ordinal score
    aucs, cov = delong_covariance(y, scores)
    ref_aucs, ref_cov = _slow_delong(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-10)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, scores[:, r]) for r in range(3)], atol=1e-12)
    # single-model variance
    a1, v1 = delong_covariance(y, scores[:, 1])
    assert v1[0, 0] == pytest.approx(ref_cov[1, 1], abs=1e-12) and a1[0] == pytest.approx(ref_aucs[1])


def test_delong_edge_cases():
    y = np.array([0, 0, 1, 1, 0, 1, np.nan])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, np.nan])
    same = delong_test(y, s, s)
    assert (same.z, same.p_value, same.difference) == (0.0, 1.0, 0.0)
    monotone = delong_test(y, s, np.exp(3 * np.nan_to_num(s)))  # same ranking -> same AUC
    assert monotone.p_value == 1.0
    dropped = delong_test(y[:-1], s[:-1], s[:-1] ** 2)
    assert dropped.n_positive == 3 and dropped.n_negative == 3
    json.dumps(same.to_dict(), allow_nan=False)
    assert same.covariance_matrix[0][1] == same.covariance
    with pytest.raises(ValueError, match="both classes"):
        delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="0 / 1"):
        delong_test([0, 2, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="shape"):
        delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2])
    with pytest.raises(ValueError, match="finite"):
        delong_test([0, 1, 1], [0.1, np.nan, 0.3], [0.3, 0.2, 0.1])


def test_delong_per_finding():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 3)) < 0.3).astype(float)
    y[:, 1] = 0.0
    y[:20, 2] = np.nan
    a = y + rng.normal(0, 1, y.shape)
    b = y + rng.normal(0, 2, y.shape)
    out = delong_test_per_finding(y, a, b, finding_names=["x", "y", "z"])
    assert out["y"] is None
    assert out["x"].z == pytest.approx(delong_test(y[:, 0], a[:, 0], b[:, 0]).z)
    assert out["z"].n_positive + out["z"].n_negative == 180


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------------------


def test_bootstrap_mean_matches_normal_theory():
    rng = np.random.default_rng(0)
    x = rng.normal(10.0, 2.0, 400)
    ci = bootstrap_ci(np.mean, x, n_resamples=1000, seed=1)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.std == pytest.approx(se, rel=0.1)
    assert ci.low == pytest.approx(x.mean() - 1.96 * se, abs=0.2 * se)
    assert ci.high == pytest.approx(x.mean() + 1.96 * se, abs=0.2 * se)
    assert ci.n_resamples == 1000 and ci.method == "percentile" and ci.confidence == 0.95


def test_bootstrap_resamples_are_the_documented_draws():
    rng = np.random.default_rng(4)
    y = (rng.random(150) < 0.4).astype(int)
    s = y + rng.normal(0, 1, 150)
    n_res, seed = 200, 7
    ci = bootstrap_ci(roc_auc, y, s, n_resamples=n_res, seed=seed)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_res, len(y)))
    reference = np.array([roc_auc_score(y[i], s[i]) for i in idx])
    low, high = np.percentile(reference, [2.5, 97.5])
    assert (ci.low, ci.high) == pytest.approx((low, high), abs=1e-12)
    assert ci.std == pytest.approx(reference.std(ddof=1), abs=1e-12)
    assert ci.n_redrawn == 0 and ci.estimate == pytest.approx(roc_auc_score(y, s))


def test_vectorized_bootstrap_equals_loop_and_handles_dicts_and_arrays():
    rng = np.random.default_rng(5)
    y = (rng.random((120, 4)) < 0.4).astype(float)
    s = y + rng.normal(0, 1, y.shape)

    def metric(yy, ss):
        return {"macro": roc_auc(yy, ss, "macro"), "per_finding": roc_auc(yy, ss, None)}

    loop = bootstrap_ci(metric, y, s, n_resamples=300, seed=2)
    vec = bootstrap_ci(metric, y, s, n_resamples=300, seed=2, vectorized=True, batch_size=64)
    assert set(loop) == {"macro", "per_finding"} and len(loop["per_finding"]) == 4
    assert (vec["macro"].low, vec["macro"].high) == pytest.approx((loop["macro"].low, loop["macro"].high), abs=1e-12)
    for a, b in zip(vec["per_finding"], loop["per_finding"]):
        assert (a.low, a.high, a.std) == pytest.approx((b.low, b.high, b.std), abs=1e-12)
    json.dumps({k: (v.to_dict() if hasattr(v, "to_dict") else [c.to_dict() for c in v]) for k, v in vec.items()})
    # torch inputs work too
    t = bootstrap_ci(roc_auc, torch.from_numpy(y), torch.from_numpy(s), n_resamples=300, seed=2)
    assert t.low == pytest.approx(loop["macro"].low)


def test_single_class_resamples_are_redrawn_or_counted():
    y = np.array([1, 1] + [0] * 14, dtype=float)  # two positives: ~1 resample in 8 has none
    s = np.linspace(0, 1, 16)[::-1]
    redraw = bootstrap_ci(roc_auc, y, s, n_resamples=400, seed=0)
    assert redraw.n_redrawn > 0 and redraw.n_undefined == 0
    ignore = bootstrap_ci(roc_auc, y, s, n_resamples=400, seed=0, on_undefined="ignore")
    assert ignore.n_redrawn == 0 and ignore.n_undefined > 0
    assert ignore.n_undefined <= redraw.n_redrawn  # same first draws; re-draws can be undefined again
    assert np.isfinite([redraw.low, redraw.high, ignore.low, ignore.high]).all()
    # stratified resampling keeps both classes in every resample: nothing to redraw
    seen = []

    def counting_auc(yy, ss):
        seen.append(int(yy.sum()))
        return roc_auc(yy, ss)

    strat = bootstrap_ci(counting_auc, y, s, n_resamples=100, seed=0, strata=y)
    assert strat.n_redrawn == 0 and set(seen) == {2}


def test_bootstrap_std_agrees_with_delong_standard_error():
    y = np.array(ASAH_OUTCOME)
    s = np.array(ASAH_NDKA)
    ci = bootstrap_ci(roc_auc, y, s, n_resamples=1000, seed=1024, vectorized=True)
    assert ci.std == pytest.approx(math.sqrt(PROC_VAR["ndka"]), rel=0.15)


def test_bootstrap_bad_inputs():
    with pytest.raises(ValueError, match="first"):
        bootstrap_ci(roc_auc, np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(np.mean, np.zeros(5), n_resamples=1)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.mean, np.zeros(5), confidence=95)
    with pytest.raises(ValueError, match="strata"):
        bootstrap_ci(np.mean, np.zeros(5), strata=[0, 1])
    with pytest.raises(ValueError, match="on_undefined"):
        bootstrap_ci(np.mean, np.zeros(5), on_undefined="drop")
    with pytest.raises(ValueError, match="vectorized"):
        bootstrap_ci(np.mean, np.arange(10.0), vectorized=True)  # np.mean over everything: one value per batch
