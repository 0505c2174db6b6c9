"""Calibration (x2ctclip.train.evaluation.calibration): fits vs scipy / scikit-learn, thresholds, ECE, diagrams, Calibrator."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from x2ctclip.train.evaluation.calibration import (
    Calibrator,
    expected_calibration_error,
    fit_platt,
    fit_temperature,
    reliability_curve,
    reliability_diagram,
    sensitivity_thresholds,
    youden_thresholds,
)


def _overconfident(n=600, n_findings=4, seed=0):
    """Logits three times too large, with an offset: a miscalibrated but informative model."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_findings)) < rng.uniform(0.1, 0.5, n_findings)).astype(np.float64)
    z = 3.0 * (y + rng.normal(0, 1, y.shape)) - 1.5
    return y, z


def test_temperature_matches_scipy():
    y, z = _overconfident()
    temperatures = fit_temperature(z, y)
    for j in range(z.shape[1]):
        loss = lambda a: np.mean(np.logaddexp(0, a * z[:, j]) - y[:, j] * a * z[:, j])  # noqa: E731
        ref = minimize_scalar(loss, bounds=(1e-2, 1e2), method="bounded", options={"xatol": 1e-12})
        assert temperatures[j] == pytest.approx(1 / ref.x, rel=1e-6)
    assert (temperatures > 1.5).all()  # over-confident logits need T > 1
    assert isinstance(fit_temperature(z[:, 0], y[:, 0]), float)


def test_platt_matches_sklearn_logistic_regression():
    y, z = _overconfident(seed=1)
    slopes, intercepts = fit_platt(z, y, smoothed_targets=False)
    for j in range(z.shape[1]):
        lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(z[:, j : j + 1], y[:, j])
        assert slopes[j] == pytest.approx(lr.coef_[0, 0], rel=1e-6)
        assert intercepts[j] == pytest.approx(lr.intercept_[0], rel=1e-6, abs=1e-8)


def test_platt_smoothed_targets_match_weighted_logistic_regression():
    y, z = _overconfident(n=300, n_findings=2, seed=2)
    slopes, intercepts = fit_platt(z, y)
    for j in range(2):
        n_pos, n_neg = y[:, j].sum(), (1 - y[:, j]).sum()
        t = np.where(y[:, j] == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        # a soft target t is a positive copy with weight t plus a negative copy with weight 1 - t
        x2 = np.concatenate([z[:, j], z[:, j]])[:, None]
        y2 = np.concatenate([np.ones(len(t)), np.zeros(len(t))])
        w2 = np.concatenate([t, 1 - t])
        lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(x2, y2, sample_weight=w2)
        assert slopes[j] == pytest.approx(lr.coef_[0, 0], rel=1e-6)
        assert intercepts[j] == pytest.approx(lr.intercept_[0], rel=1e-6)


def test_fits_are_safe_on_separable_extreme_and_degenerate_data():
    y = np.array([0, 0, 0, 1, 1, 1], dtype=float)
    z = np.array([-3, -2, -1, 1, 2, 3], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings
        a, b = fit_platt(z * 1e4, y)  # huge logits, separable: smoothed targets keep the fit finite
        t = fit_temperature(z * 1e4, y)
    assert np.isfinite([a, b, t]).all() and a > 0
    assert 1e-2 - 1e-12 <= fit_temperature(z, y) <= 1e2
    assert fit_temperature(-z, y) == pytest.approx(1e2)  # anti-correlated: the upper bound
    y2 = np.stack([y, np.ones(6)], axis=1)  # second finding: one class only
    z2 = np.stack([z, z], axis=1)
    with pytest.warns(UserWarning, match="single class"):
        temperatures = fit_temperature(z2, y2)
    with pytest.warns(UserWarning, match="single class"):
        slopes, intercepts = fit_platt(z2, y2)
    assert temperatures[1] == 1.0 and (slopes[1], intercepts[1]) == (1.0, 0.0)


def test_nan_labels_are_left_out_of_fits():
    y, z = _overconfident(seed=3)
    y_nan = y.copy()
    y_nan[::3, 1] = np.nan
    keep = ~np.isnan(y_nan[:, 1])
    z_nan = z.copy()
    z_nan[~keep, 1] = np.nan  # ignored where unlabelled
    assert fit_temperature(z_nan, y_nan)[1] == pytest.approx(fit_temperature(z[keep, 1], y[keep, 1]), rel=1e-9)
    assert fit_platt(z_nan, y_nan)[0][1] == pytest.approx(fit_platt(z[keep, 1], y[keep, 1])[0], rel=1e-9)


def test_thresholds_match_roc_curve():
    y, z = _overconfident(seed=4)
    s = np.round(1 / (1 + np.exp(-z)), 2)  # ties
    youden = youden_thresholds(y, s)
    sens = sensitivity_thresholds(y, s, 0.85)
    for j in range(y.shape[1]):
        fpr, tpr, thr = roc_curve(y[:, j], s[:, j], drop_intermediate=False)
        assert youden[j] == thr[np.argmax(tpr - fpr)]
        assert sens[j] == thr[np.argmax(tpr >= 0.85)]
        assert (s[y[:, j] == 1, j] >= sens[j]).mean() >= 0.85
    single = youden_thresholds(np.zeros(5), np.arange(5.0))
    assert np.isnan(single)
    with pytest.raises(ValueError, match="target"):
        sensitivity_thresholds(y, s, 1.5)


def test_ece_hand_example_and_bins():
    y = np.array([0, 0, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 0.95])
    # bins of width 0.1: |0 - .05| * 1/4 + |0 - .15| * 1/4 + |.5 - .95| * 2/4
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.0125 + 0.0375 + 0.225)
    # 1.0 falls in the last bin; 0.1 opens the second bin
    curve = reliability_curve([1, 0, 1], [1.0, 0.1, 0.95], n_bins=10)
    assert curve["count"] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert curve["fraction_positive"][9] == 1.0 and curve["mean_probability"][0] is None
    # perfectly calibrated in expectation: frequencies equal the probabilities bin by bin
    yy = np.array([1] * 2 + [0] * 8 + [1] * 7 + [0] * 3, dtype=float)
    pp = np.array([0.2] * 10 + [0.7] * 10)
    assert expected_calibration_error(yy, pp, n_bins=10) == pytest.approx(0.0)
    y2 = np.stack([y, [1, np.nan, 0, 1]], axis=1)
    p2 = np.stack([p, [0.9, 0.5, 0.1, 0.9]], axis=1)
    per = expected_calibration_error(y2, p2, n_bins=10, average=None)
    assert per[1] == pytest.approx(2 / 3 * 0.1 + 1 / 3 * 0.1)
    assert expected_calibration_error(y2, p2, n_bins=10) == pytest.approx(per.mean())
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(y, p * 2)


def test_calibration_lowers_ece_and_keeps_auroc(tmp_path):
    y, z = _overconfident(n=2000, seed=5)
    y_val, z_val, y_test, z_test = y[:1000], z[:1000], y[1000:], z[1000:]
    before = 1 / (1 + np.exp(-z_test))
    ece_before = expected_calibration_error(y_test, before)
    # temperature scaling only rescales (it cannot remove the offset); Platt scaling fixes both
    for method, factor in (("temperature", 0.9), ("platt", 0.5)):
        calibrator = Calibrator.fit(z_val, y_val, method=method)
        after = calibrator.transform(z_test)
        assert expected_calibration_error(y_test, after) < factor * ece_before
        for j in range(y.shape[1]):
            assert roc_auc_score(y_test[:, j], after[:, j]) == pytest.approx(roc_auc_score(y_test[:, j], z_test[:, j]))
    png = reliability_diagram(tmp_path / "reliability.png", y_test, before, after, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["reliability.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match=".png"):
        reliability_diagram(tmp_path / "x.jpg", y_test, before)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reliability_diagram(tmp_path / "missing" / "x.png", y_test, before)


def test_calibrator_round_trip_torch_and_thresholds():
    y, z = _overconfident(seed=6)
    names = ["a", "b", "c", "d"]
    calibrator = Calibrator.fit(z, y, method="platt", thresholds=0.9, finding_names=names)
    assert calibrator.threshold_method == "sensitivity>=0.9"
    decisions = calibrator.predict(z)
    assert ((decisions & (y == 1)).sum(0) / y.sum(0) >= 0.9).all()
    text = json.dumps(calibrator.to_dict(), allow_nan=False)
    restored = Calibrator.from_dict(json.loads(text))
    assert restored == calibrator
    np.testing.assert_allclose(restored.transform(z), calibrator.transform(z))
    zt = torch.from_numpy(z).to(torch.float32)
    out = restored.transform(zt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == zt.shape
    np.testing.assert_allclose(out.numpy(), calibrator.transform(z), atol=1e-6)
    assert restored.predict(zt).dtype == torch.bool
    temp = Calibrator.fit(z, y, method="temperature", thresholds="youden")
    assert temp.temperature == pytest.approx(list(fit_temperature(z, y)))
    ident = Calibrator.identity(4)
    np.testing.assert_allclose(ident(z), 1 / (1 + np.exp(-z)))


def test_calibrator_validation_errors():
    good = Calibrator.identity(2).to_dict()
    with pytest.raises(ValueError, match="missing"):
        Calibrator.from_dict({"method": "platt"})
    with pytest.raises(ValueError, match="unknown keys"):
        Calibrator.from_dict({**good, "bias": 1})
    with pytest.raises(ValueError, match="one slope and one intercept"):
        Calibrator.from_dict({**good, "intercept": [0.0]})
    with pytest.raises(ValueError, match="finite"):
        Calibrator.from_dict({**good, "slope": [1.0, float("inf")]})
    with pytest.raises(ValueError, match="method"):
        Calibrator.from_dict({**good, "method": "isotonic"})
    with pytest.raises(ValueError, match="format_version"):
        Calibrator.from_dict({**good, "format_version": 7})
    with pytest.raises(ValueError, match="positive slopes"):
        Calibrator("temperature", [-1.0], [0.0])
    with pytest.raises(ValueError, match="findings in its last dimension"):
        Calibrator.identity(2).transform(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="no thresholds"):
        Calibrator.identity(2).predict(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="thresholds must be"):
        Calibrator.fit(np.zeros((4, 1)), np.array([[0], [1], [0], [1]]), thresholds="f1")
