"""Label statistics of real CT-RATE reports -> ``train/resources/ct_rate_label_stats.json``, and a check of the
synthetic label sampler against them.

What it computes from ``../shared/data/ct_rate_reports/train.csv`` (800 hand-labelled CT-RATE reports; only the 18
0/1 label columns are read, never the text):

* the 18 prevalences and the 18 x 18 co-occurrence matrix ``P(label_i = 1 and label_j = 1)``,
* a generative model of the joint distribution: a chain of logistic conditionals in the canonical label order,
  ``logit P(y_k = 1 | y_<k) = b_k + sum_j w_kj y_j``, each fitted with L2-regularised logistic regression
  (``C`` below). Sampling the chain in order draws label vectors with the real prevalences and co-occurrences
  (including combinations never seen among the 800 reports).

Usage::

    python benchmarks/bench_synthetic_label_stats.py            # compare the stored JSON / sampler with the CSV
    python benchmarks/bench_synthetic_label_stats.py --write    # (re)compute and write the JSON, then compare

The generator reads only the JSON: it never needs ``../shared`` at run time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "ct_rate_reports" / "train.csv"
OUT = ROOT / "train" / "resources" / "ct_rate_label_stats.json"
C = 2.0  # inverse L2 strength of each conditional; 2.0 keeps marginals within ~1 point of the data


def load_labels(csv_path: Path) -> np.ndarray:
    import pandas as pd

    from x2ctclip import CT_RATE_FINDINGS

    frame = pd.read_csv(csv_path)
    missing = [name for name in CT_RATE_FINDINGS if name not in frame.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing label columns {missing}")
    return frame[list(CT_RATE_FINDINGS)].to_numpy().astype(np.int64)


def fit_stats(y: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    from x2ctclip import CT_RATE_FINDINGS

    n, k = y.shape
    prevalence = y.mean(axis=0)
    cooc = (y.T @ y) / n
    intercepts, coefficients = [], []
    for j in range(k):
        if j == 0:
            p = prevalence[0]
            intercepts.append(float(np.log(p / (1 - p))))
            coefficients.append([])
            continue
        model = LogisticRegression(C=C, max_iter=2000).fit(y[:, :j], y[:, j])
        intercepts.append(float(model.intercept_[0]))
        coefficients.append([round(float(c), 6) for c in model.coef_[0]])
    return {
        "description": "Label statistics of 800 hand-labelled CT-RATE chest CT reports (numbers only). "
        "chain: logit P(y_k=1 | y_<k) = intercepts[k] + sum_j coefficients[k][j] * y_j, canonical order.",
        "source": "ibrahimethemhamamci/CT-CLIP text_classifier/data/train.csv (labels only), CC BY-NC-SA 4.0",
        "script": "benchmarks/bench_synthetic_label_stats.py",
        "n_reports": int(n),
        "findings": list(CT_RATE_FINDINGS),
        "prevalence": [round(float(p), 6) for p in prevalence],
        "cooccurrence": [[round(float(v), 6) for v in row] for row in cooc],
        "chain": {"C": C, "intercepts": [round(v, 6) for v in intercepts], "coefficients": coefficients},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--write", action="store_true", help=f"recompute and write {OUT.relative_to(ROOT)}")
    parser.add_argument("--draws", type=int, default=20000)
    args = parser.parse_args(argv)
    if not args.csv.exists():
        raise SystemExit(f"{args.csv} not found: this script needs the shared CT-RATE reports")
    y = load_labels(args.csv)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(fit_stats(y), indent=1) + "\n")
        print(f"wrote {OUT}")

    from x2ctclip import CT_RATE_FINDINGS
    from x2ctclip.train.synthetic.findings import sample_labels

    rng = np.random.default_rng(0)
    draws = sample_labels(rng, args.draws).astype(np.float64)  # int8 products would overflow
    real_p, syn_p = y.mean(0), draws.mean(0)
    real_c, syn_c = (y.T @ y) / len(y), (draws.T @ draws) / len(draws)
    print(f"{'finding':36s} {'real':>6s} {'sampled':>8s}")
    for name, a, b in zip(CT_RATE_FINDINGS, real_p, syn_p):
        print(f"{name:36s} {a:6.3f} {b:8.3f}")
    off = ~np.eye(len(real_p), dtype=bool)
    print(f"prevalence: max |diff| {np.abs(real_p - syn_p).max():.3f}")
    print(f"co-occurrence P(i and j), off-diagonal: max |diff| {np.abs(real_c - syn_c)[off].max():.3f}, "
          f"mean |diff| {np.abs(real_c - syn_c)[off].mean():.4f}")
    real_corr, syn_corr = np.corrcoef(y.T), np.corrcoef(draws.T)
    print(f"phi correlation, off-diagonal: mean |diff| {np.abs(real_corr - syn_corr)[off].mean():.3f}; "
          f"corr(real phi, sampled phi) = {np.corrcoef(real_corr[off], syn_corr[off])[0, 1]:.3f}")
    print(f"mean positives per study: real {y.sum(1).mean():.2f}, sampled {draws.sum(1).mean():.2f}; "
          f"all-negative: real {np.mean(y.sum(1) == 0):.3f}, sampled {np.mean(draws.sum(1) == 0):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
