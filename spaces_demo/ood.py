"""The demo's in-distribution check: the Mahalanobis distance of a CXR latent to reference latents.

The reference is the model folder's ``cxr_reference.safetensors`` (:data:`x2ctclip.assets.REFERENCE_FILE`, written
by ``x2ctclip demo-assets`` from the validation split) or, without one, CXRs simulated from synthetic phantoms
(:mod:`phantoms`). A latent beyond the limit is flagged out of distribution and its numbers are withheld.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf


@dataclass
class LatentReference:
    """In-distribution check on L2-normalised CXR latents: Mahalanobis distance to reference latents.

    The covariance is Ledoit-Wolf shrunk (well defined with fewer references than dimensions). The limit is the
    ``quantile`` of the references' *out-of-fold* distances (each reference scored by a fit that did not see it:
    leave-one-out below 20 references, else 5 folds), times ``margin``; a latent beyond it is out of distribution.

    Attributes:
        mean: ``(D,)`` mean latent. precision: ``(D, D)`` inverse shrunk covariance. limit: distance limit.
        n: number of reference latents. source: where they came from (shown to users).
    """

    mean: np.ndarray
    precision: np.ndarray
    limit: float
    n: int
    source: str

    @classmethod
    def fit(
        cls, latents: Any, source: str, quantile: float = 0.99, margin: float = 1.1, folds: int = 5
    ) -> "LatentReference":
        x = F.normalize(torch.as_tensor(np.asarray(latents, dtype=np.float64)), dim=-1).numpy()
        if x.ndim != 2 or len(x) < 3:
            raise ValueError(f"LatentReference needs at least 3 reference latents (N, D), got shape {x.shape}.")
        if not np.isfinite(x).all():
            raise ValueError("LatentReference: the reference latents hold NaN or infinite values.")
        n = len(x)
        k = n if n < 20 else folds
        fold_of = np.arange(n) % k
        held_out = np.empty(n)
        for fold in range(k):
            test = fold_of == fold
            model = LedoitWolf().fit(x[~test])
            held_out[test] = _mahalanobis(x[test], model.location_, model.precision_)
        full = LedoitWolf().fit(x)
        limit = float(np.max(held_out) if n < 20 else np.quantile(held_out, quantile)) * margin
        return cls(mean=full.location_, precision=full.precision_, limit=limit, n=n, source=source)

    def distance(self, latents: Any) -> np.ndarray:
        """Mahalanobis distance of ``(B, D)`` latents (normalised here) to the reference, ``(B,)``."""
        x = F.normalize(torch.as_tensor(np.asarray(latents, dtype=np.float64)), dim=-1).numpy()
        return _mahalanobis(np.atleast_2d(x), self.mean, self.precision)


def _mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = x - mean
    return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, precision, d), 0.0))
