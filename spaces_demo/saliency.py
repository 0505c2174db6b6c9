"""Saliency maps for display: smoothing and resizing a gradient x input map, and its overlay on the radiograph."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def smooth_map(attribution: torch.Tensor, sigma_fraction: float = 1 / 56) -> torch.Tensor:
    """Gaussian smoothing of an ``(h, w)`` attribution map (sigma = ``sigma_fraction`` of the side, e.g. 4 px at
    224): gradient x input is speckled at the pixel level; the smoothed map shows regions."""
    h, w = attribution.shape
    sigma = max(sigma_fraction * max(h, w), 0.5)
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = attribution.float()[None, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[0, 0]


def upsample_map(attribution: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(h, w)`` map to ``shape`` (the displayed image's size), float32."""
    out = F.interpolate(attribution[None, None].float(), size=tuple(shape), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out[0, 0].numpy(), dtype=np.float32)


def overlay_saliency(view: np.ndarray, attribution: np.ndarray, opacity: float = 0.65) -> np.ndarray:
    """``(H, W, 3)`` uint8: the grey ``view`` with the signed map on top (red: towards "present", blue: towards
    "absent"), its opacity proportional to the magnitude relative to the 99th percentile of ``|map|``."""
    if view.shape != attribution.shape:
        raise ValueError(f"view {view.shape} and map {attribution.shape} differ in size.")
    grey = np.repeat(np.clip(view, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    scale = float(np.quantile(np.abs(attribution), 0.99)) if attribution.size else 0.0
    if not math.isfinite(scale) or scale <= 0:
        return (grey * 255).round().astype(np.uint8)
    m = np.clip(attribution / scale, -1.0, 1.0)
    red, blue = np.array([0.95, 0.1, 0.05], np.float32), np.array([0.1, 0.35, 1.0], np.float32)
    colour = np.where(m[..., None] >= 0, red, blue)
    alpha = (opacity * np.abs(m))[..., None]
    return ((grey * (1 - alpha) + colour * alpha) * 255).round().clip(0, 255).astype(np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float image in [0, 1] -> uint8 for display."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
