"""The linear probe on frozen CXR features."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn



# ---------------------------------------------------------------------------------------------------------- probe
@dataclass
class LinearProbeConfig:
    """Linear-probe hyper-parameters (X2CT-CLIP's: AdamW 5e-2, batch 4096, 100 epochs, patience 20).

    ``weight_decay`` is not given by the paper; 1e-4 is this project's choice (the X2CT-CLIP training value)."""

    learning_rate: float = 5e-2
    weight_decay: float = 1e-4
    batch_size: int = 4096
    max_epochs: int = 100
    patience: int = 20


@dataclass
class LinearProbeResult:
    """A fitted head: ``weight`` ``(n_findings, dim)``, ``bias`` ``(n_findings,)`` of the best epoch (1-based) and
    the per-epoch hold-out losses."""

    weight: torch.Tensor
    bias: torch.Tensor
    best_epoch: int
    epochs: int
    best_valid_loss: float
    valid_losses: list[float] = field(default_factory=list)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    annotated = ~torch.isnan(labels)
    loss = F.binary_cross_entropy_with_logits(logits, torch.where(annotated, labels, 0.0), reduction="none")
    return (loss * annotated).sum() / annotated.sum().clamp_min(1)


def train_linear_probe(train_x: Any, train_y: Any, valid_x: Any, valid_y: Any, config: LinearProbeConfig | None = None,
                       seed: int = 0, device: str | torch.device | None = None) -> LinearProbeResult:  # fmt: skip
    """Fit a linear multi-label head on frozen latents with early stopping on the hold-out loss.

    Args:
        train_x / valid_x: ``(n, dim)`` latents (L2-normalised here).
        train_y / valid_y: ``(n, n_findings)`` 0/1 labels, NaN = not annotated.
        config: :class:`LinearProbeConfig`.
        seed: initialisation and batch order.
    """
    config = config or LinearProbeConfig()
    device = torch.device(device or "cpu")
    x = F.normalize(torch.as_tensor(np.asarray(train_x), dtype=torch.float32), dim=-1).to(device)
    y = torch.as_tensor(np.asarray(train_y, dtype=np.float32)).to(device)
    vx = F.normalize(torch.as_tensor(np.asarray(valid_x), dtype=torch.float32), dim=-1).to(device)
    vy = torch.as_tensor(np.asarray(valid_y, dtype=np.float32)).to(device)
    if x.ndim != 2 or y.shape != (x.shape[0], y.shape[-1]) or len(x) == 0:
        raise ValueError(f"train latents {tuple(x.shape)} and labels {tuple(y.shape)} do not pair up.")
    if len(vx) == 0 or vy.shape[0] != len(vx):
        raise ValueError("the hold-out set is empty or its labels do not pair up with its latents.")
    generator = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(x.shape[1])  # nn.Linear's default initialisation, from a local generator
    head = nn.Linear(x.shape[1], y.shape[1]).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
        head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=generator))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    best = (math.inf, 0, head.weight.detach().clone(), head.bias.detach().clone())
    losses, since = [], 0
    for epoch in range(1, config.max_epochs + 1):
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), config.batch_size):
            rows = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            masked_bce(head(x[rows]), y[rows]).backward()
            optimizer.step()
        with torch.no_grad():
            loss = float(masked_bce(head(vx), vy))
        losses.append(loss)
        if loss < best[0] - 1e-7:
            best, since = (loss, epoch, head.weight.detach().clone(), head.bias.detach().clone()), 0
        else:
            since += 1
            if since >= config.patience:
                break
    return LinearProbeResult(best[2].cpu(), best[3].cpu(), best[1], len(losses), best[0], losses)
