"""Contrastive losses of X2CT-CLIP: symmetric InfoNCE per modality pair, weighted sum over pairs.

Negatives span every process: embeddings are all-gathered with :func:`gather_with_grad`, whose backward pass
sends each process the gradient of its own rows (``torch.distributed.nn.functional.all_gather``). A plain
``all_gather`` / ``accelerator.gather`` would cut the graph and silently drop half of the gradient.

Each process computes the loss of its *local* rows against the *global* columns ("local loss"). The mean of the
per-process losses equals the single-process loss at the global batch, and after the usual data-parallel gradient
averaging (DDP, or an explicit all-reduce / world size) the gradients equal the single-process gradients too.
Per-process batches must have the same size (use ``drop_last=True``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, D) from every process along dim 0 -> (world * B, D), keeping the autograd graph."""
    _, world = _distributed_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b``.

    Args:
        a, b: (B, D) L2-normalised embeddings; row i of ``a`` pairs with row i of ``b``.
        logit_scale: the multiplicative scale (already exponentiated), a scalar.
        gather: use the rows of every process as negatives when ``torch.distributed`` is initialised.

    Returns:
        Scalar: 0.5 * (CE(a -> b) + CE(b -> a)), averaged over this process's rows.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"contrastive_loss needs two (B, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    rank, world = _distributed_world()
    if gather and world > 1:
        all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    else:
        all_a, all_b, rank = a, b, 0
    labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
    # cross_entropy uses log-softmax (logsumexp), numerically stable unlike exp/log by hand.
    loss_a = F.cross_entropy(logit_scale * a @ all_b.t(), labels)
    loss_b = F.cross_entropy(logit_scale * b @ all_a.t(), labels)
    return 0.5 * (loss_a + loss_b)


class X2CTCLIPLoss(nn.Module):
    """Weighted tri-modal loss: alpha * L(CT, report) + beta * L(CXR, report) + gamma * L(CXR, CT).

    Pairs whose weight is 0 or whose embeddings are missing are skipped. ``forward`` returns the total and the
    per-pair terms (unweighted) so that they can be logged.
    """

    PAIRS = {"ct_text": ("ct", "text"), "cxr_text": ("cxr", "text"), "cxr_ct": ("cxr", "ct")}

    def __init__(self, weights: dict[str, float], gather: bool = True):
        super().__init__()
        unknown = set(weights) - set(self.PAIRS)
        if unknown:
            raise ValueError(f"Unknown loss pair(s) {sorted(unknown)}; expected {sorted(self.PAIRS)}.")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.gather = gather

    def forward(
        self,
        logit_scale: torch.Tensor,
        cxr: torch.Tensor | None = None,
        ct: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        weights: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """``weights``, when given, replace the construction-time weights for this call (the model passes its
        config's at every call, so a config changed after the model was built takes effect)."""
        weights = self.weights if weights is None else weights
        embeds = {"cxr": cxr, "ct": ct, "text": text}
        terms: dict[str, torch.Tensor] = {}
        total = None
        for name, (x, y) in self.PAIRS.items():
            weight = float(weights.get(name, 0.0))
            if weight == 0.0 or embeds[x] is None or embeds[y] is None:
                continue
            terms[name] = contrastive_loss(embeds[x], embeds[y], logit_scale, gather=self.gather)
            total = weight * terms[name] if total is None else total + weight * terms[name]
        return total, terms


__all__ = ["X2CTCLIPLoss", "contrastive_loss", "gather_with_grad"]
