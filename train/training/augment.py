"""Training augmentation of chest X-rays, as the X2CT-CLIP code did it: RandomResizedCrop (area scale 0.8-1.1),
CLAHE (clip limit 4) and a ColorJitter-like brightness/contrast jitter, then normalisation to ``pixel_values``.

Every transform is an array transform ``(image, rng) -> image`` on one grey image of shape ``(H, W)``; the random ones
draw from the ``numpy.random.Generator`` they are given. The trainers seed that generator from
``(seed, epoch, position of the row in the global batch)``, so the augmentation of a row does not depend on the
number of processes or data-loading workers, nor on where a run was resumed.

:class:`CLAHE` is implemented here (numpy) because the project does not depend on OpenCV. It follows the classic
algorithm (Zuiderveld 1994, as OpenCV's ``createCLAHE``): the image is cut into ``tile_grid x tile_grid`` tiles, each
tile's 256-bin histogram is clipped at ``clip_limit x (pixels per tile) / 256`` with the excess spread evenly over all
bins, the clipped histogram's cumulative sum becomes the tile's grey-level map, and each pixel is mapped by bilinear
interpolation between the maps of the four nearest tile centres.

Why not MONAI's transforms (docs/monai.md): MONAI has no CLAHE, its random crops draw each side independently (not
torchvision's area and log aspect ratio), its ``RandAdjustContrast`` is a gamma curve, and its ``Randomizable`` keeps
one ``RandomState`` per transform instead of the per-row generator above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from x2ctclip.train.training.config import check_ct_augmentation

__all__ = [
    "CLAHE",
    "CTTrainAugmentation",
    "CXRTrainAugmentation",
    "RandomBrightnessContrast",
    "RandomResizedCrop",
    "clahe",
    "sample_rng",
    "to_pixel_values",
]


def sample_rng(*keys: int) -> np.random.Generator:
    """A generator seeded by a tuple of non-negative integers, e.g. ``(seed, epoch, position)``."""
    return np.random.default_rng([int(k) for k in keys])


class CTTrainAugmentation:
    """Stage-1 augmentation of one CT volume ``ct_values`` (1, D, H, W) in HU / 1000: a random translation of up to
    ``max_shift`` voxels per axis (the uncovered border is air, -1) and a random gain and offset of up to
    ``intensity_jitter`` (values stay clipped to [-1, 1]).

    Without it a small CT tower memorises the few hundred training volumes (stage-1 training loss 1.3 against 6.3 on
    the validation split in the default quickstart) instead of learning the findings. No flips: the reports name
    sides and lobes.
    """

    def __init__(self, max_shift: Sequence[int] = (0, 0, 0), intensity_jitter: float = 0.0):
        check_ct_augmentation(max_shift, intensity_jitter, names=("max_shift", "intensity_jitter"))
        self.max_shift = tuple(max_shift)
        self.intensity_jitter = float(intensity_jitter)

    @property
    def active(self) -> bool:
        return any(self.max_shift) or self.intensity_jitter > 0

    def __call__(self, ct_values: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if ct_values.dim() != 4:
            raise ValueError(f"ct_values must be (1, D, H, W), got shape {tuple(ct_values.shape)}.")
        out = ct_values
        if any(self.max_shift):
            shifts = [int(rng.integers(-m, m + 1)) for m in self.max_shift]
            out = torch.full_like(ct_values, -1.0)
            src, dst = [slice(None)], [slice(None)]
            for shift, n in zip(shifts, ct_values.shape[1:]):
                src.append(slice(max(0, -shift), n - max(0, shift)))
                dst.append(slice(max(0, shift), n - max(0, -shift)))
            out[tuple(dst)] = ct_values[tuple(src)]
        if self.intensity_jitter > 0:
            j = self.intensity_jitter
            gain, offset = 1.0 + float(rng.uniform(-j, j)), float(rng.uniform(-j, j))
            out = (out * gain + offset).clamp_(-1.0, 1.0)
        return out


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name}: expected a grey image of shape (H, W), got shape {image.shape}.")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {image.shape}.")
    return image


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of a float (H, W) image to ``size`` = (height, width)."""
    if image.shape == tuple(size):
        return image.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].numpy()


# ----------------------------------------------------------------------------------------------------- transforms
class RandomResizedCrop:
    """Crop a random region of random area and aspect ratio, resize it to ``size x size`` (torchvision semantics).

    Args:
        size: output side in pixels.
        scale: range of the crop area as a fraction of the image area. Values above 1 are allowed (X2CT-CLIP used
            up to 1.1); a draw that does not fit in the image is redrawn, up to 10 times, before falling back to
            the largest centred crop of an allowed aspect ratio.
        ratio: range of the crop aspect ratio width / height, drawn log-uniformly.
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.8, 1.1), ratio: Sequence[float] = (3 / 4, 4 / 3)):
        if int(size) <= 0:
            raise ValueError(f"RandomResizedCrop: size must be > 0, got {size}.")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomResizedCrop: scale must be (min, max) with 0 < min <= max, got {scale}.")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop: ratio must be (min, max) with 0 < min <= max, got {ratio}.")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of one draw."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        # Fallback (torchvision's): the whole image, cut to the nearest allowed aspect ratio, centred.
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = _check_image(image, "RandomResizedCrop")
        top, left, h, w = self.crop_box(*image.shape, rng)
        crop = image[top : top + h, left : left + w].astype(np.float32)
        return _resize(crop, (self.size, self.size))


def clahe(image: np.ndarray, clip_limit: float = 4.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of an 8-bit grey image.

    Args:
        image: (H, W) ``uint8`` (or values in [0, 255], rounded).
        clip_limit: histogram clip limit relative to a flat histogram (OpenCV's ``clipLimit``); 0 or less gives
            plain adaptive histogram equalisation without clipping.
        tile_grid: tiles per side (OpenCV's ``tileGridSize`` (n, n)).

    Returns:
        The equalised image, (H, W) ``uint8``.
    """
    image = _check_image(image, "clahe")
    if int(tile_grid) <= 0:
        raise ValueError(f"clahe: tile_grid must be > 0, got {tile_grid}.")
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8) if image.dtype != np.uint8 else image
    grid = int(tile_grid)
    height, width = image.shape
    # Pad (reflect) to a multiple of the grid, as OpenCV does, so that every tile has the same number of pixels.
    pad_h, pad_w = (-height) % grid, (-width) % grid
    padded = np.pad(image, ((0, pad_h), (0, pad_w)), mode="reflect") if (pad_h or pad_w) else image
    tile_h, tile_w = padded.shape[0] // grid, padded.shape[1] // grid
    tiles = padded.reshape(grid, tile_h, grid, tile_w).transpose(0, 2, 1, 3).reshape(grid * grid, tile_h * tile_w)
    offsets = (np.arange(grid * grid) * 256)[:, None]
    hist = np.bincount((tiles.astype(np.int64) + offsets).ravel(), minlength=grid * grid * 256)
    hist = hist.reshape(grid * grid, 256).astype(np.float64)
    pixels = tile_h * tile_w
    if clip_limit > 0:
        limit = max(clip_limit * pixels / 256.0, 1.0)
        excess = np.clip(hist - limit, 0, None).sum(axis=1, keepdims=True)
        hist = np.minimum(hist, limit) + excess / 256.0
    lut = np.cumsum(hist, axis=1) * (255.0 / pixels)
    lut = np.clip(lut, 0, 255).reshape(grid, grid, 256)

    # Position of every pixel relative to the tile centres; pixels outside the outer centres use the edge tiles.
    def axis_weights(n: int, tile: int):
        pos = (np.arange(n) + 0.5) / tile - 0.5
        lo = np.clip(np.floor(pos).astype(np.int64), 0, grid - 1)
        hi = np.clip(lo + 1, 0, grid - 1)
        frac = np.clip(pos - lo, 0.0, 1.0)
        return lo, hi, frac

    y0, y1, fy = axis_weights(height, tile_h)
    x0, x1, fx = axis_weights(width, tile_w)
    values = image.astype(np.int64)
    fy, fx = fy[:, None], fx[None, :]
    top = lut[y0[:, None], x0[None, :], values] * (1 - fx) + lut[y0[:, None], x1[None, :], values] * fx
    bottom = lut[y1[:, None], x0[None, :], values] * (1 - fx) + lut[y1[:, None], x1[None, :], values] * fx
    out = top * (1 - fy) + bottom * fy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class CLAHE:
    """Array transform wrapping :func:`clahe` for float images in [0, 255] (deterministic; ``rng`` is unused)."""

    def __init__(self, clip_limit: float = 4.0, tile_grid: int = 8):
        if clip_limit < 0 or int(tile_grid) <= 0:
            raise ValueError(f"CLAHE: clip_limit must be >= 0 and tile_grid > 0, got {clip_limit}, {tile_grid}.")
        self.clip_limit = float(clip_limit)
        self.tile_grid = int(tile_grid)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return clahe(image, self.clip_limit, self.tile_grid).astype(np.float32)


class RandomBrightnessContrast:
    """ColorJitter's brightness and contrast for grey images in [0, 255], applied in a random order.

    Brightness multiplies by ``b ~ U[1 - brightness, 1 + brightness]``; contrast blends with the image mean,
    ``mean + c * (x - mean)`` with ``c ~ U[1 - contrast, 1 + contrast]``; the result is clipped to [0, 255].
    (ColorJitter's saturation and hue do nothing to a grey image.)
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2):
        if not 0 <= brightness < 1 or not 0 <= contrast < 1:
            raise ValueError(
                f"RandomBrightnessContrast: brightness and contrast must be in [0, 1), got {brightness}, {contrast}."
            )
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = _check_image(image, "RandomBrightnessContrast").astype(np.float32)
        b = rng.uniform(1 - self.brightness, 1 + self.brightness)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        order = rng.permutation(2)
        for op in order:
            if op == 0:
                image = np.clip(image * b, 0, 255)
            else:
                image = np.clip(image.mean() + c * (image - image.mean()), 0, 255)
        return image


def to_pixel_values(
    image: np.ndarray, mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5
) -> torch.Tensor:
    """Grey image in [0, 255] (H, W) -> normalised ``pixel_values`` (3, H, W) float32, as the CXR processor makes."""
    image = _check_image(image, "to_pixel_values")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return ((x[None].expand(3, -1, -1) - mean_t) / std_t).contiguous()


class CXRTrainAugmentation:
    """The X2CT-CLIP training pipeline for one simulated CXR: crop, CLAHE, jitter, normalise.

    Call with an 8-bit grey image (H, W) and a generator; returns ``pixel_values`` (3, size, size) float32.
    With ``enabled=False`` it only resizes and normalises (deterministic), for ablations.
    """

    def __init__(
        self,
        size: int = 224,
        scale: Sequence[float] = (0.8, 1.1),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        clahe_clip_limit: float = 4.0,
        clahe_tile_grid: int = 8,
        brightness: float = 0.2,
        contrast: float = 0.2,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        enabled: bool = True,
    ):
        self.size = int(size)
        self.crop = RandomResizedCrop(size, scale, ratio)
        self.clahe = CLAHE(clahe_clip_limit, clahe_tile_grid) if clahe_clip_limit > 0 else None
        self.jitter = RandomBrightnessContrast(brightness, contrast) if (brightness or contrast) else None
        self.mean, self.std = mean, std
        self.enabled = bool(enabled)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        image = _check_image(image, "CXRTrainAugmentation")
        if not self.enabled:
            return to_pixel_values(_resize(image.astype(np.float32), (self.size, self.size)), self.mean, self.std)
        image = self.crop(image, rng)
        if self.clahe is not None:
            image = self.clahe(image)
        if self.jitter is not None:
            image = self.jitter(image, rng)
        return to_pixel_values(image, self.mean, self.std)
