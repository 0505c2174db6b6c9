"""The few-shot protocol: methods, label fractions and seeds, and the fractions drawn by iterative stratification."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from iterstrat.ml_stratifiers import IterativeStratification


FEWSHOT_FRACTIONS = (0.01, 0.025, 0.05, 0.1, 1.0)
FEWSHOT_SEEDS = (1024, 1234, 4321, 5678, 8765)
METHODS = ("linear", "lora")


# ---------------------------------------------------------------------------------------------------------- splits
def iterative_stratification(labels: Any, proportions: Sequence[float], seed: int | np.random.Generator = 0,
                             exact_sizes: bool = True) -> np.ndarray:  # fmt: skip
    """Sechidis et al. (2011) iterative stratification of multi-label examples into folds of given proportions.

    The assignment is ``iterstrat``'s (``iterstrat.ml_stratifiers.IterativeStratification``, the algorithm behind its
    multi-label splitters). The algorithm favours the label shares over the fold sizes, which on small sets can miss
    the sizes by several examples; with ``exact_sizes`` the sizes are then made exact (largest-remainder shares of
    ``n``) by moving the examples that disturb the label counts least (:func:`_exact_sizes`, not in iterstrat).

    Args:
        labels: ``(n, n_labels)`` 0/1 (NaN counts as 0).
        proportions: one share per fold, summing to 1.
        seed: seed or NumPy generator (a generator is advanced by one draw).
        exact_sizes: make the fold sizes exact (see above).

    Returns:
        ``(n,)`` fold index of every example.
    """
    y = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) > 0.5
    if y.ndim != 2:
        raise ValueError(f"labels must have shape (n, n_labels), got {y.shape}.")
    p = np.asarray(proportions, dtype=np.float64)
    if p.ndim != 1 or len(p) < 2 or (p < 0).any() or not math.isclose(p.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"proportions must be >= 0 and sum to 1, got {list(proportions)}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # iterstrat walks the examples in their given order and breaks ties with a RandomState: a random order first
    # makes the seed decide more than the ties.
    order = rng.permutation(len(y))
    state = np.random.RandomState(int(rng.integers(2**32)))
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = IterativeStratification(y[order], p.copy(), state)  # boolean labels: it indexes with them
    return _exact_sizes(y, fold, p) if exact_sizes else fold


def _exact_sizes(y: np.ndarray, fold: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Move examples between folds until each has its largest-remainder share of ``len(y)``; each move takes, from an
    over-full fold to an under-full one, the example whose move leaves the per-label counts closest to the wanted
    ones (so the stratification is kept as far as the sizes allow)."""
    n = len(y)
    raw = p * n
    target = np.floor(raw).astype(np.int64)
    target[np.argsort(-(raw - target), kind="stable")[: n - target.sum()]] += 1
    want = p[:, None] * y.sum(0)[None, :]
    counts = np.stack([y[fold == k].sum(0) for k in range(len(p))]).astype(np.float64)
    sizes = np.bincount(fold, minlength=len(p))
    fold = fold.copy()
    while (sizes != target).any():
        src = int(np.argmax(sizes - target))
        dst = int(np.argmin(sizes - target))
        members = np.flatnonzero(fold == src)
        yi = y[members].astype(np.float64)
        # change of sum |counts - want| over the two folds if each member moved
        cost = (np.abs(counts[src] - yi - want[src]).sum(1) + np.abs(counts[dst] + yi - want[dst]).sum(1)
                - np.abs(counts[src] - want[src]).sum() - np.abs(counts[dst] - want[dst]).sum())  # fmt: skip
        i = members[int(np.argmin(cost))]
        fold[i] = dst
        counts[src] -= y[i]
        counts[dst] += y[i]
        sizes[src] -= 1
        sizes[dst] += 1
    return fold


@dataclass
class FewShotSplit:
    """Row indices of one few-shot subset: ``train`` and ``valid`` (hold-out), and the scan counts."""

    train: np.ndarray
    valid: np.ndarray
    n_scans_train: int
    n_scans_valid: int


def fewshot_split(labels: Any, fraction: float, seed: int, groups: Sequence[Any] | None = None,
                  valid_fraction: float = 0.2, min_scans: int = 5) -> FewShotSplit:  # fmt: skip
    """Draw a stratified subset of ``fraction`` of the scans and hold ``valid_fraction`` of it out.

    Args:
        labels: ``(n_rows, n_findings)`` labels of the training rows.
        fraction: share of the scans in (0, 1]; ``1.0`` uses every scan.
        seed: the subset's seed (the hold-out uses a generator derived from it).
        groups: ``(n_rows,)`` scan ids: rows of a scan go together (default: every row is its own scan).
        valid_fraction: share of the subset's scans held out for early stopping.
        min_scans: smallest subset (so tiny fractions of small sets still have a train and a hold-out part).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}.")
    y = np.asarray(labels, dtype=np.float64)
    groups = list(range(len(y))) if groups is None else list(groups)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} rows.")
    first: dict[Any, int] = {}
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
        members.setdefault(g, []).append(i)
    units = list(first)
    unit_labels = y[[first[g] for g in units]]
    n_units = len(units)
    if n_units < 2:
        raise ValueError(f"few-shot splits need at least 2 scans, got {n_units}.")
    rng = np.random.default_rng(seed)
    n_subset = n_units if fraction >= 1 else min(n_units, max(int(round(fraction * n_units)), min_scans, 2))
    if n_subset < n_units:
        share = n_subset / n_units
        chosen = np.flatnonzero(iterative_stratification(unit_labels, [share, 1 - share], rng) == 0)
    else:
        chosen = np.arange(n_units)
    part = iterative_stratification(unit_labels[chosen], [1 - valid_fraction, valid_fraction], rng)
    train_units, valid_units = chosen[part == 0], chosen[part == 1]
    if len(valid_units) == 0 or len(train_units) == 0:  # tiny subsets: move one scan over
        if len(valid_units) == 0:
            valid_units, train_units = train_units[-1:], train_units[:-1]
        else:
            train_units, valid_units = valid_units[-1:], valid_units[:-1]
    if len(train_units) == 0 or len(valid_units) == 0:
        raise ValueError(f"a subset of {len(chosen)} scans cannot be split into a train and a hold-out part.")

    def rows(selected: np.ndarray) -> np.ndarray:
        return np.sort(np.asarray([r for u in selected for r in members[units[u]]], dtype=np.int64))

    return FewShotSplit(rows(train_units), rows(valid_units), len(train_units), len(valid_units))
