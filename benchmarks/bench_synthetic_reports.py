"""Realism of the synthetic reports: a text classifier trained ONLY on generated reports, tested on real ones.

For each of the 18 CT-RATE labels a TF-IDF + logistic regression classifier is trained on ``--n`` generated reports
(Findings_EN + Impressions_EN, with their generated labels) and evaluated (AUROC) on the 800 real, hand-labelled
CT-RATE reports in ``../shared/data/ct_rate_reports/train.csv``. It also prints the fraction of real-report word tokens
whose word occurs in the generated vocabulary. No real text is used for training and none is written anywhere.

Generating reports needs no volumes: :func:`x2ctclip.train.synthetic.study.plan_study` draws labels, finding details and
the report (a few milliseconds per study).

Usage::

    python benchmarks/bench_synthetic_reports.py [--n 6000] [--ngram 2]
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "ct_rate_reports" / "train.csv"
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


def generated_reports(n: int, seed: int = 0):
    from x2ctclip.train.synthetic.writer import _split_scans
    from x2ctclip.train.synthetic.study import plan_study

    texts, labels = [], []
    for patient, scan in _split_scans(seed, "train", n):  # patients and follow-up scans as in the data set
        p = plan_study(seed, "train", patient, scan, (32, 48, 48))
        texts.append(p["report"]["Findings_EN"] + " " + p["report"]["Impressions_EN"])
        labels.append(p["labels"])
    return texts, np.asarray(labels)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from x2ctclip import CT_RATE_FINDINGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=6000, help="generated reports to train on")
    parser.add_argument("--ngram", type=int, default=2, help="largest n-gram (1 = plain bag of words)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=REAL)
    args = parser.parse_args(argv)
    if not args.csv.exists():
        raise SystemExit(f"{args.csv} not found: this benchmark needs the shared CT-RATE reports")
    real = pd.read_csv(args.csv)
    real_text = real["report_text"].astype(str).tolist()
    real_y = real[list(CT_RATE_FINDINGS)].to_numpy()

    t0 = time.perf_counter()
    gen_text, gen_y = generated_reports(args.n, args.seed)
    print(f"generated {args.n} reports in {time.perf_counter() - t0:.1f} s")

    vec = TfidfVectorizer(ngram_range=(1, args.ngram), min_df=2, sublinear_tf=True, lowercase=True)
    x_gen = vec.fit_transform(gen_text)
    x_real = vec.transform(real_text)
    rows = []
    for j, name in enumerate(CT_RATE_FINDINGS):
        y = gen_y[:, j]
        clf = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced").fit(x_gen, y)
        score = clf.decision_function(x_real)
        rows.append((name, int(real_y[:, j].sum()), roc_auc_score(real_y[:, j], score)))
    print(f"\nTF-IDF (1-{args.ngram}-grams) + logistic regression per label, trained on generated reports, "
          f"tested on {len(real_text)} real CT-RATE reports")
    print(f"{'finding':36s} {'real positives':>14s} {'AUROC':>7s}")
    for name, npos, auc in rows:
        print(f"{name:36s} {npos:14d} {auc:7.3f}")
    macro = float(np.mean([r[2] for r in rows]))
    print(f"{'macro AUROC':36s} {'':14s} {macro:7.3f}")

    gen_vocab = {t for text in gen_text for t in TOKEN.findall(text.lower())}
    real_tokens = [t for text in real_text for t in TOKEN.findall(text.lower())]
    covered = sum(t in gen_vocab for t in real_tokens)
    real_types = set(real_tokens)
    print(f"\nvocabulary: generated {len(gen_vocab)} word types; real reports {len(real_types)} types, "
          f"{len(real_tokens)} tokens")
    print(f"real-report word tokens covered by the generated vocabulary: {covered / len(real_tokens):.3f}; "
          f"word types covered: {len(real_types & gen_vocab) / len(real_types):.3f}")
    missing = Counter(t for t in real_tokens if t not in gen_vocab)
    print("most frequent uncovered real words:", ", ".join(w for w, _ in missing.most_common(40)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
