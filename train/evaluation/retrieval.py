"""Cross-modal and same-modality retrieval metrics: Recall@K and CT-CLIP's label-overlap MAP@K.

Definitions (CT-CLIP / X2CT-CLIP evaluation protocol):

- Similarity is the dot product of L2-normalised embeddings (cosine similarity). Query ``i`` is paired with
  gallery item ``targets[i]`` (default: item ``i``, e.g. the report of the same scan).
- **Recall@K**: fraction of queries whose paired item is among the K most similar gallery items. The rank of the
  paired item is the number of gallery items *strictly* more similar than it, so exact ties are resolved in its
  favour (ties have probability zero with real-valued embeddings). When K >= gallery size every query is a hit.
- **MAP@K**: for each query, the mean over its top-K retrieved items of the label overlap
  ``|A and B| / (|A and B| + |A xor B|)`` (the Jaccard index of the two 0/1 finding vectors, A = query labels,
  B = item labels), then the mean over queries. Queries with no positive label are excluded (the overlap is
  undefined when both vectors are empty). When K exceeds the gallery size, the mean runs over the whole gallery.
- Same-set retrieval (CXR->CXR, CT->CT): pass ``exclude_self=True`` to drop each query's own item
  (``targets[i]``) from its ranking; Recall@K is then undefined and not reported. The original CT-CLIP CT->CT
  script kept the query itself in the gallery (so its top-1 overlap is always 1) and instead dropped gallery
  items without any positive label; ``exclude_self=False`` reproduces the first behaviour, the second is not
  reproduced because it changes the gallery between directions.

The work is done on blocks of ``chunk_size`` queries (a ``(chunk_size, n_gallery)`` score matrix and
``torch.topk``), so memory stays bounded: 10,000 x 10,000 embeddings of width 512 take seconds on a CPU
(``benchmarks/bench_retrieval.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from x2ctclip.train.evaluation.metrics import jsonable

__all__ = [
    "DEFAULT_MAP_AT",
    "DEFAULT_RECALL_AT",
    "RetrievalResult",
    "cross_modal_retrieval",
    "label_overlap",
    "naive_retrieval_metrics",
    "retrieval_metrics",
]

DEFAULT_RECALL_AT = (5, 10, 50, 100)
DEFAULT_MAP_AT = (1, 5, 10, 50, 100)


@dataclass
class RetrievalResult:
    """Retrieval metrics of one direction (queries -> gallery).

    Attributes:
        recall: ``{K: Recall@K}``, values in [0, 1]; empty with ``exclude_self=True``.
        map: ``{K: MAP@K}``, values in [0, 1]; empty when no labels were given.
        n_queries / n_gallery: sizes of the two sets.
        n_map_queries: queries with at least one positive label (the ones MAP averages over).
        median_rank / mean_rank: 1-based rank of the paired item (NaN with ``exclude_self=True``).
    """

    recall: dict[int, float] = field(default_factory=dict)
    map: dict[int, float] = field(default_factory=dict)
    n_queries: int = 0
    n_gallery: int = 0
    n_map_queries: int = 0
    median_rank: float = float("nan")
    mean_rank: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict: ``recall@5``, ..., ``map@1``, ..., sizes and ranks (NaN -> None)."""
        out: dict[str, Any] = {f"recall@{k}": v for k, v in self.recall.items()}
        out.update({f"map@{k}": v for k, v in self.map.items()})
        out.update(
            n_queries=self.n_queries,
            n_gallery=self.n_gallery,
            n_map_queries=self.n_map_queries,
            median_rank=self.median_rank,
            mean_rank=self.mean_rank,
        )
        return jsonable(out)


# ----------------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------------


def _as_tensor(x: Any, name: str, device: torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be numeric array-like, got {type(x).__name__}: {err}") from None
    return t.to(device=device, dtype=dtype)


def _check_embeddings(x: torch.Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, embed_dim), got {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf.")


def _check_ks(ks: Sequence[int], name: str) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"{name} must hold positive integers, got {ks}.")
    return ks


def _binary_labels(x: Any, name: str, n: int, device: torch.device | None) -> torch.Tensor:
    t = _as_tensor(x, name, device, torch.float32)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, n_labels), got {tuple(t.shape)}.")
    if not ((t == 0) | (t == 1)).all():
        raise ValueError(f"{name} must hold 0 / 1 labels (no NaN: retrieval needs every label annotated).")
    return t.bool()


def label_overlap(query_labels: Any, item_labels: Any) -> np.ndarray:
    """Pairwise label overlap ``|A and B| / (|A and B| + |A xor B|)`` (Jaccard), shape (n_query, n_item).

    NaN where both label vectors are empty.
    """
    a = np.asarray(query_labels, dtype=bool)
    b = np.asarray(item_labels, dtype=bool)
    inter = a.astype(np.int64) @ b.T.astype(np.int64)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


# ----------------------------------------------------------------------------------------------------------------
# Vectorised implementation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def retrieval_metrics(
    query_embeds: Any,
    gallery_embeds: Any,
    query_labels: Any = None,
    gallery_labels: Any = None,
    targets: Any = None,
    recall_at: Sequence[int] = DEFAULT_RECALL_AT,
    map_at: Sequence[int] = DEFAULT_MAP_AT,
    normalize: bool = True,
    exclude_self: bool = False,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> RetrievalResult:
    """Recall@K and label-overlap MAP@K of retrieving ``gallery`` items with ``query`` embeddings.

    Args:
        query_embeds: ``(n_queries, embed_dim)`` embeddings (torch or NumPy).
        gallery_embeds: ``(n_gallery, embed_dim)`` embeddings of the other modality (or the same one).
        query_labels: ``(n_queries, n_labels)`` 0/1 finding labels of the queries, for MAP. Without labels MAP is
            not computed.
        gallery_labels: ``(n_gallery, n_labels)`` labels of the gallery items; default: ``query_labels``, which is
            right when query ``i`` and item ``i`` are the same study (the usual CXR<->report / CXR<->CT case).
        targets: ``(n_queries,)`` index of each query's paired gallery item; default ``arange(n_queries)``
            (requires ``n_queries == n_gallery``).
        recall_at / map_at: the K values.
        normalize: L2-normalise both sets first (set False if they already are).
        exclude_self: drop ``targets[i]`` from query ``i``'s ranking (same-set retrieval); disables Recall@K.
        chunk_size: queries per block; peak memory is about ``chunk_size * n_gallery`` floats.
        device: where to compute (default: the query tensor's device, else CPU).
        progress: show a tqdm bar over blocks.

    Longer than 80 lines on purpose: the chunked loop keeps every metric's running sums local, so the whole similarity
    matrix is never held; :func:`naive_retrieval_metrics` is the readable reference it is tested against.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if device is None:
        device = query_embeds.device if isinstance(query_embeds, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    q = _as_tensor(query_embeds, "query_embeds", device, torch.float32)
    g = _as_tensor(gallery_embeds, "gallery_embeds", device, torch.float32)
    _check_embeddings(q, "query_embeds")
    _check_embeddings(g, "gallery_embeds")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery embeddings differ in width: {q.shape[1]} vs {g.shape[1]}.")
    n_q, n_g = q.shape[0], g.shape[0]
    recall_at = _check_ks(recall_at, "recall_at") if not exclude_self else ()
    map_at = _check_ks(map_at, "map_at")

    if targets is None:
        if n_q != n_g:
            raise ValueError(
                f"{n_q} queries and {n_g} gallery items: pass targets (the paired gallery index of each query)."
            )
        tgt = torch.arange(n_q, device=device)
    else:
        tgt = _as_tensor(targets, "targets", device, torch.int64).reshape(-1)
        if tgt.shape[0] != n_q:
            raise ValueError(f"targets must have one gallery index per query ({n_q}), got {tgt.shape[0]}.")
        if (tgt < 0).any() or (tgt >= n_g).any():
            raise ValueError(f"targets must be gallery indices in [0, {n_g}).")

    with_map = query_labels is not None and len(map_at) > 0
    if with_map:
        ql = _binary_labels(query_labels, "query_labels", n_q, device)
        if gallery_labels is None:
            if n_q != n_g:
                raise ValueError("gallery_labels is required when the query and gallery sets differ in size.")
            gl = ql
        else:
            gl = _binary_labels(gallery_labels, "gallery_labels", n_g, device)
        if gl.shape[1] != ql.shape[1]:
            raise ValueError(f"query and gallery labels differ in width: {ql.shape[1]} vs {gl.shape[1]}.")
        map_query = ql.any(dim=1)
        n_eff = n_g - 1 if exclude_self else n_g
        if n_eff < 1:
            raise ValueError("the gallery is empty once each query's own item is excluded.")
        k_max = min(max(map_at), n_eff)
    elif gallery_labels is not None:
        raise ValueError("gallery_labels given without query_labels.")

    if normalize:
        q = torch.nn.functional.normalize(q, dim=1)
        g = torch.nn.functional.normalize(g, dim=1)
    g_t = g.T.contiguous()

    ranks = torch.empty(n_q, dtype=torch.int64, device=device)
    map_sums = torch.zeros(len(map_at), dtype=torch.float64, device=device)
    starts = range(0, n_q, chunk_size)
    for start in tqdm(starts, desc="retrieval", unit="block", disable=not progress):
        stop = min(start + chunk_size, n_q)
        rows = torch.arange(stop - start, device=device)
        scores = q[start:stop] @ g_t  # (b, n_gallery)
        t = tgt[start:stop]
        if exclude_self:
            scores[rows, t] = -torch.inf
        else:
            paired = scores[rows, t]
            ranks[start:stop] = (scores > paired[:, None]).sum(dim=1)
        if with_map:
            top = torch.topk(scores, k_max, dim=1, largest=True, sorted=True).indices  # (b, k_max)
            qa = ql[start:stop, None, :]  # (b, 1, L)
            gb = gl[top]  # (b, k_max, L)
            inter = (qa & gb).sum(dim=-1)
            union = (qa | gb).sum(dim=-1)
            overlap = inter.double() / union.clamp_min(1).double()  # union >= 1 for queries with a positive
            cum = overlap.cumsum(dim=1)
            keep = map_query[start:stop]
            for i, k in enumerate(map_at):
                kk = min(k, k_max)
                map_sums[i] += (cum[:, kk - 1] / kk)[keep].sum()

    result = RetrievalResult(n_queries=n_q, n_gallery=n_g)
    if not exclude_self:
        ranks_cpu = ranks.cpu()
        result.recall = {k: float((ranks_cpu < k).double().mean()) for k in recall_at}
        one_based = ranks_cpu.double() + 1
        result.median_rank = float(np.median(one_based.numpy()))
        result.mean_rank = float(one_based.mean())
    if with_map:
        n_map = int(map_query.sum())
        result.n_map_queries = n_map
        result.map = {k: (float(map_sums[i]) / n_map if n_map else float("nan")) for i, k in enumerate(map_at)}
    return result


def cross_modal_retrieval(
    embeds_a: Any,
    embeds_b: Any,
    labels: Any = None,
    names: tuple[str, str] = ("a", "b"),
    **kwargs: Any,
) -> dict[str, RetrievalResult]:
    """Both directions of paired retrieval between two aligned sets (row ``i`` of A is paired with row ``i`` of B).

    Returns ``{"<a>-><b>": RetrievalResult, "<b>-><a>": RetrievalResult}``; ``labels`` (shared by both sets,
    ``(n, n_labels)``) enable MAP; other keyword arguments go to :func:`retrieval_metrics`.
    """
    a, b = names
    return {
        f"{a}->{b}": retrieval_metrics(embeds_a, embeds_b, labels, labels, **kwargs),
        f"{b}->{a}": retrieval_metrics(embeds_b, embeds_a, labels, labels, **kwargs),
    }


# ----------------------------------------------------------------------------------------------------------------
# Reference implementation (slow, obviously correct; for tests and the benchmark baseline)
# ----------------------------------------------------------------------------------------------------------------


def naive_retrieval_metrics(
    query_embeds: Any,
    gallery_embeds: Any,
    query_labels: Any = None,
    gallery_labels: Any = None,
    targets: Any = None,
    recall_at: Sequence[int] = DEFAULT_RECALL_AT,
    map_at: Sequence[int] = DEFAULT_MAP_AT,
    exclude_self: bool = False,
) -> RetrievalResult:
    """The same metrics as :func:`retrieval_metrics`, one query at a time with Python loops.

    O(n_queries * n_gallery * log n_gallery) with per-item Python work: only for checking the vectorised version
    on small sets (ties are broken by gallery index here, so inputs must be tie-free to compare ranks).
    """
    q = np.asarray(query_embeds, dtype=np.float64)
    g = np.asarray(gallery_embeds, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    n_q, n_g = len(q), len(g)
    tgt = list(range(n_q)) if targets is None else [int(t) for t in targets]
    ql = None if query_labels is None else np.asarray(query_labels).astype(int).tolist()
    gl = ql if gallery_labels is None else np.asarray(gallery_labels).astype(int).tolist()
    ranks, per_k = [], {k: [] for k in map_at}
    for i in range(n_q):
        scores = [float(np.dot(q[i], g[j])) for j in range(n_g)]
        order = sorted(range(n_g), key=lambda j: -scores[j])
        if exclude_self:
            order = [j for j in order if j != tgt[i]]
        else:
            ranks.append(order.index(tgt[i]))
        if ql is None or sum(ql[i]) == 0:
            continue
        for k in map_at:
            overlaps = []
            for j in order[:k]:
                both = sum(1 for a, b in zip(ql[i], gl[j]) if a == 1 and b == 1)
                differ = sum(1 for a, b in zip(ql[i], gl[j]) if a != b)
                overlaps.append(both / (both + differ))
            per_k[k].append(sum(overlaps) / len(overlaps))
    result = RetrievalResult(n_queries=n_q, n_gallery=n_g)
    if not exclude_self:
        result.recall = {k: sum(r < k for r in ranks) / n_q for k in recall_at}
        result.median_rank = float(np.median(np.asarray(ranks) + 1))
        result.mean_rank = float(np.mean(np.asarray(ranks) + 1))
    if ql is not None:
        result.n_map_queries = len(per_k[map_at[0]]) if map_at else 0
        result.map = {k: (sum(v) / len(v) if v else float("nan")) for k, v in per_k.items()}
    return result
