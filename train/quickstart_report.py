"""The quickstart's uncertainty, comparison and few-shot report (what :mod:`x2ctclip.train.quickstart` adds to its
point estimates), and its ``results.md``.

- :func:`auroc_intervals`: 95 % percentile bootstrap intervals of the zero-shot AUROC (per finding, macro over the 18
  findings, macro over the findings hard on a projection) of one or more models scored on the *same* test scans, and
  of the paired differences between models. Scans are resampled with replacement (seeded); every model and every
  difference is computed on the same resampled scans, so a difference's interval carries the correlation between
  the models (paired bootstrap). A finding that has a single class in a resample has no AUROC there: it is left out
  of that resample's macro averages (NaN-safe) and counted (:func:`skipped_findings`).
- :func:`retrieval_intervals`: the same for Recall@K, resampling the *query* scans against the fixed gallery of all
  test scans (a resampled gallery would hold duplicates of the paired item).
- :func:`fewshot_table`: a linear probe on the frozen CXR latents of each model at 1 %, 10 % and 100 % of the training
  labels (iterative stratification over scans, 3 seeds), scored by macro AUROC on the held-out test split. It is the
  ``x2ctclip fewshot`` protocol (:func:`x2ctclip.train.fewshot.run.run_fewshot`) restricted to those fractions and
  seeds.
- :func:`results_markdown`: ``results.md`` (and the held-out section of the model card).

The bootstrap is :func:`x2ctclip.train.evaluation.uncertainty.bootstrap_ci` (percentile method, ``on_undefined=
"ignore"``); the few-shot subsets and probe are :mod:`x2ctclip.train.fewshot`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.evaluation.metrics import roc_auc_per_finding
from x2ctclip.train.evaluation.retrieval import retrieval_metrics
from x2ctclip.train.evaluation.uncertainty import bootstrap_ci

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "QUICKSTART_FEWSHOT_FRACTIONS",
    "QUICKSTART_FEWSHOT_SEEDS",
    "auroc_intervals",
    "fewshot_table",
    "headline",
    "results_markdown",
    "retrieval_intervals",
    "skipped_findings",
]

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 1024
CONFIDENCE = 0.95
QUICKSTART_FEWSHOT_FRACTIONS = (0.01, 0.1, 1.0)
#: The first three seeds of the few-shot protocol (:data:`x2ctclip.train.fewshot.splits.FEWSHOT_SEEDS`), written out
#: so that importing this module does not import iterstrat and scikit-learn (a test checks they agree).
QUICKSTART_FEWSHOT_SEEDS = (1024, 1234, 4321)


def _nan_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite entries; NaN where there is none (no "empty slice" warning)."""
    defined = np.isfinite(values)
    count = defined.sum(axis=-1)
    total = np.where(defined, values, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _interval(ci) -> list[float] | None:
    return None if not (np.isfinite(ci.low) and np.isfinite(ci.high)) else [float(ci.low), float(ci.high)]


# ----------------------------------------------------------------------------------------------------- AUROC
def auroc_intervals(labels: Any, scores: dict[str, Any], subset: Sequence[int], pairs: Sequence[tuple[str, str]] = (),
                    n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                    confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Bootstrap intervals of the zero-shot AUROC of models scored on the same scans, and of paired differences.

    Args:
        labels: ``(n_scans, n_findings)`` 0/1 labels (NaN: not annotated).
        scores: model name -> ``(n_scans, n_findings)`` scores of the same scans in the same order.
        subset: finding columns of the second macro average (the findings hard on a projection).
        pairs: ``(a, b)`` model names whose difference ``a - b`` is wanted, on the same resampled scans.
        n_resamples / seed / confidence: of the percentile bootstrap (``Generator(seed)``; resample ``r`` is row ``r``
            of ``integers(0, n_scans, (n_resamples, n_scans))``, as :func:`bootstrap_ci` documents).

    Returns:
        ``{"models": {name: {"auroc", "auroc_ci", "macro_auroc", "macro_auroc_ci", "subset_macro_auroc",
        "subset_macro_auroc_ci", "auroc_n_undefined"}}, "differences": {"a-b": {"per_finding": [...], "macro":
        {...}, "subset": {...}}}}``; an interval is ``[low, high]`` or None where the value is undefined on the data.
    """
    names = list(scores)
    y = np.asarray(labels, dtype=np.float64)
    arrays = [np.asarray(scores[n], dtype=np.float64) for n in names]
    subset = list(subset)
    for a, b in pairs:
        if a not in scores or b not in scores:
            raise ValueError(f"pair ({a!r}, {b!r}) names a model without scores; models: {names}.")

    def metric(y_true, *model_scores):
        per = [roc_auc_per_finding(y_true, s) for s in model_scores]
        out = {}
        for name, p in zip(names, per):
            out[f"{name}|per_finding"] = p
            out[f"{name}|macro"] = _nan_mean(p)
            out[f"{name}|subset"] = _nan_mean(p[..., subset])
        for a, b in pairs:
            # Same labels -> the same findings are undefined for both models, so a difference of the macros is the
            # macro of the per-finding differences.
            d = per[names.index(a)] - per[names.index(b)]
            out[f"{a}-{b}|per_finding"] = d
            out[f"{a}-{b}|macro"] = _nan_mean(d)
            out[f"{a}-{b}|subset"] = _nan_mean(d[..., subset])
        return out

    ci = bootstrap_ci(metric, y, *arrays, n_resamples=n_resamples, confidence=confidence, seed=seed,
                      on_undefined="ignore", vectorized=True)
    models = {}
    for name in names:
        per = ci[f"{name}|per_finding"]
        models[name] = {
            "auroc": [c.estimate for c in per],
            "auroc_ci": [_interval(c) for c in per],
            "auroc_n_undefined": [c.n_undefined for c in per],
            "macro_auroc": ci[f"{name}|macro"].estimate,
            "macro_auroc_ci": _interval(ci[f"{name}|macro"]),
            "subset_macro_auroc": ci[f"{name}|subset"].estimate,
            "subset_macro_auroc_ci": _interval(ci[f"{name}|subset"]),
        }
    differences = {}
    for a, b in pairs:
        key = f"{a}-{b}"
        differences[key] = {
            "per_finding": [{"difference": c.estimate, "difference_ci": _interval(c)} for c in ci[f"{key}|per_finding"]],
            "macro": {"difference": ci[f"{key}|macro"].estimate, "difference_ci": _interval(ci[f"{key}|macro"])},
            "subset": {"difference": ci[f"{key}|subset"].estimate, "difference_ci": _interval(ci[f"{key}|subset"])},
        }
    return {"models": models, "differences": differences}


def skipped_findings(labels: Any, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """How often the resamples of :func:`auroc_intervals` (same ``n_resamples`` and ``seed``) drew a single class
    for a finding that has both classes on the full data (that finding is then left out of that resample's macro).

    Returns ``{"undefined_on_full_data": [finding indices], "resamples_with_skipped_findings": int,
    "mean_findings_skipped": float, "max_findings_skipped": int}``.
    """
    y = np.asarray(labels, dtype=np.float64)
    n = y.shape[0]
    # bootstrap_ci's documented draw without strata and with on_undefined="ignore" (no re-draws): row r of
    # Generator(seed).integers(0, n, (n_resamples, n)) is resample r.
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))

    def both_classes(values: np.ndarray) -> np.ndarray:
        annotated = ~np.isnan(values)
        positive = (values == 1).sum(axis=-2)
        return (positive > 0) & (positive < annotated.sum(axis=-2))

    full = both_classes(y)
    skipped = (~both_classes(y[idx]) & full).sum(axis=-1)  # (n_resamples,)
    return {
        "undefined_on_full_data": [int(j) for j in np.flatnonzero(~full)],
        "resamples_with_skipped_findings": int((skipped > 0).sum()),
        "mean_findings_skipped": float(skipped.mean()),
        "max_findings_skipped": int(skipped.max(initial=0)),
    }


# ----------------------------------------------------------------------------------------------------- retrieval
def query_hits(query: Any, gallery: Any, ks: Sequence[int]) -> np.ndarray:
    """``(n_queries, len(ks))`` 0/1: whether query ``i``'s paired gallery item ``i`` is in its top K (the per-query
    terms of :func:`retrieval_metrics`' Recall@K, which is their mean)."""
    n = len(query)
    hits = np.empty((n, len(ks)))
    for i in range(n):
        result = retrieval_metrics(query[i : i + 1], gallery, targets=[i], recall_at=tuple(ks), map_at=(1,))
        hits[i] = [result.recall[k] for k in ks]
    return hits


def retrieval_intervals(hits: dict[str, np.ndarray], ks: Sequence[int], pairs: Sequence[tuple[str, str]] = (),
                        n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Bootstrap intervals of Recall@K from per-query hits (:func:`query_hits`) of models queried with the same scans,
    and of the paired differences; the query scans are resampled, the gallery is fixed.

    Returns ``{"models": {name: {"recall": {K: value}, "recall_ci": {K: [low, high]}}}, "differences": {"a-b": {K:
    {"difference", "difference_ci"}}}}``.
    """
    names = list(hits)

    def metric(*per_query):
        means = [h.mean(axis=-2) for h in per_query]
        out = {name: m for name, m in zip(names, means)}
        for a, b in pairs:
            out[f"{a}-{b}"] = means[names.index(a)] - means[names.index(b)]
        return out

    ci = bootstrap_ci(metric, *[np.asarray(hits[n], dtype=np.float64) for n in names], n_resamples=n_resamples,
                      confidence=confidence, seed=seed, on_undefined="ignore", vectorized=True)
    models = {name: {"recall": {str(k): c.estimate for k, c in zip(ks, ci[name])},
                     "recall_ci": {str(k): _interval(c) for k, c in zip(ks, ci[name])}} for name in names}
    differences = {f"{a}-{b}": {str(k): {"difference": c.estimate, "difference_ci": _interval(c)}
                                for k, c in zip(ks, ci[f"{a}-{b}"])} for a, b in pairs}
    return {"models": models, "differences": differences}


# ----------------------------------------------------------------------------------------------------- few-shot
def fewshot_table(model_dirs: dict[str, str | os.PathLike], data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  fractions: Sequence[float] = QUICKSTART_FEWSHOT_FRACTIONS,
                  seeds: Sequence[int] = QUICKSTART_FEWSHOT_SEEDS, progress: bool = True) -> dict[str, Any]:
    """Linear probes on the frozen CXR latents of each model (``x2ctclip fewshot``, method ``linear``), trained on
    ``fractions`` of the training split's scans (iterative stratification, one subset per seed; 20 % of it held out
    for early stopping) and scored by macro AUROC on the test split. Each model's runs go to ``out_dir/<name>``
    (``fewshot.json``, ``fewshot.md``, the heads); a rerun reuses them.

    Returns ``{name: {str(fraction): {"mean", "sd", "per_seed", "n_train_scans"}}, "seeds": [...], "fractions":
    [...], "metric": ..., "eval_split": "test"}``; ``sd`` is the sample standard deviation over the seeds.
    """
    # iterstrat imports scikit-learn (about 1.5 s): loaded only when the table is computed, not with the CLI.
    from x2ctclip.train.fewshot.run import run_fewshot

    table: dict[str, Any] = {}
    for name, model_dir in model_dirs.items():
        record = run_fewshot(model_dir, data_dir, os.path.join(out_dir, name), methods=("linear",),
                             fractions=fractions, seeds=seeds, train_split="train", eval_split="test",
                             progress=progress)
        rows = {}
        for fraction in sorted({float(f) for f in fractions}):
            runs = [r for r in record["runs"] if r["method"] == "linear" and r["fraction"] == fraction]
            values = np.asarray([np.nan if r["metrics"]["auroc_macro"] is None else r["metrics"]["auroc_macro"]
                                 for r in runs], dtype=np.float64)
            finite = values[np.isfinite(values)]
            rows[str(fraction)] = {
                "mean": float(finite.mean()) if len(finite) else None,
                "sd": float(finite.std(ddof=1)) if len(finite) > 1 else None,
                "per_seed": {str(r["seed"]): r["metrics"]["auroc_macro"] for r in runs},
                "n_train_scans": float(np.mean([r["n_scans_train"] for r in runs])),
            }
        table[name] = rows
    table.update(seeds=[int(s) for s in seeds], fractions=[float(f) for f in fractions], eval_split="test",
                 metric="macro AUROC of a linear probe on the frozen, L2-normalised CXR latents")
    return table


# ----------------------------------------------------------------------------------------------------- results.md
def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _with_ci(value, ci, digits: int = 3) -> str:
    if value is None or ci is None:
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _comparison_lines(metrics: dict[str, Any], hard_findings: Sequence[str]) -> list[str]:
    m, c, boot = metrics["models"], metrics["comparisons"], metrics["bootstrap"]
    skipped = boot["skipped"]
    level = f"{boot['confidence']:.0%}"
    undefined = skipped["undefined_on_full_data"]
    note = (
        f"Intervals: {level} percentile bootstrap over the {m['x2ct']['n']} test scans ({boot['n_resamples']} "
        f"resamples, seed {boot['seed']}); differences are paired (both models on the same resampled scans). "
        f"{skipped['resamples_with_skipped_findings']} of {boot['n_resamples']} resamples drew a single class for "
        f"at least one finding (on average {skipped['mean_findings_skipped']:.2f}, at most "
        f"{skipped['max_findings_skipped']} findings): such a finding is left out of that resample's macro averages"
    )
    if undefined:
        note += f"; {len(undefined)} findings have a single class on the whole test split and no AUROC"
    return [
        note + ".",
        "",
        f"| X2CT-CLIP minus CXR-only CLIP (zero-shot AUROC) | difference [{level} CI] |",
        "|---|---|",
        f"| macro over all 18 findings | {_with_ci(c['macro']['difference'], c['macro']['difference_ci'])} |",
        (f"| macro over the {len(hard_findings)} findings hard on a projection | "
         f"{_with_ci(c['hard_on_projection']['difference'], c['hard_on_projection']['difference_ci'])} |"),
        "",
    ]


def _fewshot_lines(fewshot: dict[str, Any]) -> list[str]:
    lines = [
        (f"Few-shot: linear probe on the frozen CXR latents, macro AUROC on the test split, mean ± sd over seeds "
         f"{', '.join(str(s) for s in fewshot['seeds'])} (training subsets by iterative stratification over scans, at "
         "least 5 scans each, 20 % of them held out for early stopping; train scans: the rest, mean over seeds)."),
        "",
        "| training labels | train scans | X2CT-CLIP | CXR-only CLIP |",
        "|---|---|---|---|",
    ]
    for fraction in fewshot["fractions"]:
        key = str(float(fraction))
        cells = []
        for name in ("x2ct", "cxr_only"):
            row = fewshot[name][key]
            cells.append(_fmt(row["mean"]) + (f" ± {row['sd']:.3f}" if row["sd"] is not None else ""))
        scans = fewshot["x2ct"][key]["n_train_scans"]
        lines.append(f"| {fraction:.0%} | {scans:.0f} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def headline(metrics: dict[str, Any]) -> str:
    """One line of the headline numbers with their intervals (what ``x2ctclip quickstart`` prints last)."""
    m, c = metrics["models"], metrics["comparisons"]
    return (f"Zero-shot macro AUROC from CXR (test, 95 % CI): X2CT-CLIP "
            f"{_with_ci(m['x2ct']['macro_auroc'], m['x2ct']['macro_auroc_ci'])}; CXR-only baseline "
            f"{_with_ci(m['cxr_only']['macro_auroc'], m['cxr_only']['macro_auroc_ci'])}; difference "
            f"{_with_ci(c['macro']['difference'], c['macro']['difference_ci'])} (hard on a projection: "
            f"{_with_ci(c['hard_on_projection']['difference'], c['hard_on_projection']['difference_ci'])}); "
            f"CT-CLIP teacher from CT {_with_ci(m['ctclip_teacher']['macro_auroc'], m['ctclip_teacher']['macro_auroc_ci'])}")


def results_markdown(metrics: dict[str, Any], hard_findings: Sequence[str]) -> str:
    """``results.md`` of a quickstart ``metrics.json`` record: per-finding and macro AUROC with their intervals, the
    paired comparison, the retrieval and few-shot tables, timings. The card takes the part between the second line
    and the ``Timings`` line."""
    m = metrics["models"]
    lines = [
        f"# X2CT-CLIP quickstart results ({metrics['preset']} preset, seed {metrics['seed']})",
        "",
        (f"Held-out synthetic test split: {m['x2ct']['n']} scans. Zero-shot AUROC from the simulated chest X-ray "
         "(prompt pairs, no labels used) with its bootstrap interval; the CT column is the CT-CLIP teacher "
         "classifying the CT volume itself."),
        "",
        "| finding | X2CT-CLIP (CXR) | CXR-only CLIP (CXR) | DeLong p | CT-CLIP teacher (CT) | hard on a projection |",
        "|---|---|---|---|---|---|",
    ]
    for j, name in enumerate(CT_RATE_FINDINGS):
        cells = [_with_ci(m[k]["auroc"][j], m[k]["auroc_ci"][j]) for k in ("x2ct", "cxr_only", "ctclip_teacher")]
        p = metrics["delong"].get(name)
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {_fmt(p, 3)} | {cells[2]} | "
                     f"{'yes' if name in hard_findings else ''} |")
    hard = metrics["hard_on_projection"]
    macro = [_with_ci(m[k]["macro_auroc"], m[k]["macro_auroc_ci"]) for k in ("x2ct", "cxr_only", "ctclip_teacher")]
    hard_cells = [_with_ci(hard[k], m[k]["hard_macro_auroc_ci"]) for k in ("x2ct", "cxr_only", "ctclip_teacher")]
    lines += [
        f"| **macro (18)** | **{macro[0]}** | **{macro[1]}** | | {macro[2]} | |",
        (f"| macro, hard on a projection ({len(hard_findings)}) | {hard_cells[0]} | {hard_cells[1]} | | "
         f"{hard_cells[2]} | |"),
        "",
        (f"X2CT-CLIP beats the CXR-only baseline on {hard['x2ct_better']} of the {hard['n_defined']} hard findings "
         "(point estimates; see the DeLong p-values and the paired intervals, uncorrected for multiple comparisons)."),
        "",
    ]
    lines += _comparison_lines(metrics, hard_findings)
    lines += ["| retrieval (test, gallery = all test scans) | X2CT-CLIP | CXR-only CLIP | difference |",
              "|---|---|---|---|"]
    for target in ("report", "ct"):
        key = f"cxr_to_{target}"
        for k in m["x2ct"][key]["recall"]:
            a, b = m["x2ct"][key], m["cxr_only"][key]
            d = metrics["comparisons"]["retrieval"][key][k]
            lines.append(f"| CXR->{target} Recall@{k} | {_with_ci(a['recall'][k], a['recall_ci'][k])} | "
                         f"{_with_ci(b['recall'][k], b['recall_ci'][k])} | "
                         f"{_with_ci(d['difference'], d['difference_ci'])} |")
    lines += ["", "Recall intervals resample the query scans; the gallery stays the whole test split.", ""]
    lines += _fewshot_lines(metrics["fewshot"])
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["timings_s"].items()),
              f"Peak memory (MiB): {metrics['peak_memory_mb']}", ""]
    return "\n".join(lines)
