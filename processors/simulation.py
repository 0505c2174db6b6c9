"""Chest radiographs simulated from CT: X2CT-CLIP's mean projection and a Beer-Lambert attenuation model.

Orientation convention shared with real radiographs (and with the CXR image processor):

* frontal view: :data:`CXR_ORIENTATION` = ``"PA, patient right on image left, head up"`` -- the radiological
  display of a posterior-anterior chest radiograph: row 0 is the most superior row, column 0 the patient's right.
* lateral view: :data:`LATERAL_ORIENTATION` = ``"left lateral, anterior on image left, head up"``.

Inputs are read with :func:`.volume_io.load_ct` (NIfTI path, DICOM series folder, array with spacing and affine or
orientation, :class:`.volume_io.CTVolume`), i.e. brought to the canonical ``(z, y, x)`` = (superior, posterior,
patient-left) orientation first, so the image orientation above holds for every input. For batches of volumes
already in that orientation (CPU or GPU tensors) use :func:`simulate_cxr_batch`.

Modes:

* ``"mean"`` (X2CT-CLIP): HU clipped to ``[hu_min, hu_max]``, mean along the anterior-posterior axis (lateral:
  left-right), resampled to ``pixel_spacing_mm`` (1 mm: X2CT-CLIP's isotropic 1 mm grid), oriented as above. The
  original resamples the whole CT to 1 mm and then averages (SimpleITK ``MeanProjectionImageFilter``); averaging
  first and resampling the 2-D image is the same linear operation along the other two axes, and along the ray it
  averages the CT voxels instead of their 1 mm interpolants (correlation with the original > 0.999, see tests).
  Pixels: mean HU.
* ``"beer_lambert"``: linear attenuation ``mu = mu_water * (1 + HU / 1000)``, clipped at 0 (air 0), integrated in
  mm along the ray; the transmitted intensity is ``I / I0 = exp(-integral)``. Pixels: the line integral
  ``-ln(I / I0)`` (dimensionless), i.e. a log-scaled radiograph where bone and heart are bright and lungs dark.

With ``normalize=True`` (default) each image is min-max scaled to [0, 1] (X2CT-CLIP then stored 8-bit images).

Memory budget: the output image (after resampling to ``pixel_spacing_mm``) may have at most ``max_pixels`` pixels
(default :data:`DEFAULT_MAX_IMAGE_PIXELS` = 16 M, a 4 x 4 m field of view at 1 mm; a whole-body CT gives about
0.5 x 2 m = 1 M). The size is computed from the header's shape and spacing before anything is allocated, so a
header with absurd spacing (150-300 mm, 1e4 mm) is a ``ValueError`` naming the source and the numbers instead of a
multi-GB allocation or a ``MemoryError``.

Example::

    >>> cxr = simulate_cxr("ct.nii.gz")                                  # (H, W) float32, 1 mm pixels, PA
    >>> lateral = simulate_cxr("dicom/series/", mode="beer_lambert", view="lateral")
    >>> batch = simulate_cxr_batch(hu.cuda(), spacing_mm=(1.5, 0.75, 0.75), mode="beer_lambert")  # (B, H, W)

Note on X2CT-CLIP's own images: the authors rotated their projection of CT-RATE's ``(i, j, k)`` array upright with
``np.rot90`` (image columns = CT-RATE ``i`` = this module's ``x``, so the patient's right on the image left given
CT-RATE's headers) and mirrored external real radiographs "to match" their simulations. Images made here follow the
standard convention above and are never mirrored; mirror real images only to reproduce their published numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence, Union

import numpy as np
import torch

from .volume_io import DEFAULT_MAX_HU, CTVolume, load_ct


Array = Union[np.ndarray, torch.Tensor]


__all__ = [
    "CXR_ORIENTATION",
    "LATERAL_ORIENTATION",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "MU_WATER_PER_MM",
    "check_image_budget",
    "resample_image",
    "simulate_cxr",
    "simulate_cxr_batch",
]

#: Orientation of every frontal image this module returns (and of real radiographs in this package).
CXR_ORIENTATION = "PA, patient right on image left, head up"
#: Orientation of lateral images.
LATERAL_ORIENTATION = "left lateral, anterior on image left, head up"
#: Linear attenuation coefficient of water in 1/mm at about 70 keV (0.193 / cm), a typical chest-radiograph energy.
MU_WATER_PER_MM = 0.0193
#: Largest simulated image (pixels) by default: 16 M, e.g. 4000 x 4000 mm at 1 mm pixels (float32: 64 MB).
DEFAULT_MAX_IMAGE_PIXELS = 16_000_000

_MODES = ("mean", "beer_lambert")
_VIEWS = {"frontal": 1, "lateral": 2}  # the axis of the canonical (z, y, x) array the rays run along


def _check_mode_view(mode: str, view: str) -> int:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
    if view not in _VIEWS:
        raise ValueError(f"view must be one of {tuple(_VIEWS)}, got {view!r}.")
    return _VIEWS[view]


def _readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without the non-writable warning: the tensor is only read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _integer_bounds(dtype, lo: float | None, hi: float | None) -> tuple[int | None, int | None] | None:
    """``(lo, hi)`` as integers inside ``dtype``'s range if clamping integer data there is exact, else ``None``."""
    if not all(b is None or float(b).is_integer() for b in (lo, hi)):
        return None
    info = np.iinfo(dtype)
    return tuple(None if b is None else int(min(max(b, info.min), info.max)) for b in (lo, hi))  # type: ignore


def _ray_sums_numpy(stored: np.ndarray, axis: int, lo: float | None, hi: float | None) -> np.ndarray:
    """Sum along ``axis`` (1 or 2) of a ``(Z, Y, X)`` array clamped to ``[lo, hi]``; float32 ``(Z, X or Y)``.

    Works slab by slab through a small reused buffer (no full-size temporary; integer data with integral bounds is
    clamped and summed exactly in integers, with numpy's integer reductions).
    """
    bounds = _integer_bounds(stored.dtype, lo, hi) if stored.dtype.kind in "iu" else None
    if bounds is not None:
        work, acc = (np.int32, np.int64) if stored.dtype.itemsize >= 4 else (stored.dtype, np.int32)
        if stored.dtype.kind == "u" and stored.dtype.itemsize >= 2:
            work = np.int64 if stored.dtype.itemsize >= 4 else np.int32
        lo, hi = bounds
    else:
        work, acc = np.float32, np.float32
    z, y, x = stored.shape
    out = np.empty((z, x if axis == 1 else y), dtype=np.float32)
    slab = max(1, (1 << 22) // (y * x))  # about 4 M voxels per step: stays in cache-friendly sizes
    buffer = np.empty((min(slab, z), y, x), dtype=work)
    for z0 in range(0, z, slab):
        part = stored[z0 : z0 + slab]
        tmp = buffer[: part.shape[0]]
        if lo is None and hi is None:
            tmp[...] = part
        else:
            np.clip(part, lo, hi, out=tmp, casting="unsafe")
        out[z0 : z0 + part.shape[0]] = tmp.sum(axis=axis, dtype=acc)
    return out


def _ray_sums(stored: Array, dim: int, lo: float | None, hi: float | None) -> Array:
    """Sum along ``dim`` of ``(B, Z, Y, X)`` ``stored`` clamped to ``[lo, hi]`` (stored units), float32 result.

    numpy arrays and CPU tensors go through :func:`_ray_sums_numpy`; tensors on other devices use torch (float32).
    """
    if isinstance(stored, np.ndarray):
        return np.stack([_ray_sums_numpy(a, dim - 1, lo, hi) for a in stored])
    if stored.device.type == "cpu":
        if stored.dtype in (torch.bfloat16, torch.float16):  # no numpy bfloat16; float16 sums lose precision
            stored = stored.to(torch.float32)
        return torch.from_numpy(np.stack([_ray_sums_numpy(a, dim - 1, lo, hi) for a in stored.detach().numpy()]))
    stored = stored.to(torch.float32)
    if lo is not None or hi is not None:
        stored = stored.clamp(lo, hi)
    return stored.sum(dim=dim)


def _project(
    stored: Array,
    slope: float,
    intercept: float,
    ray_spacing_mm: Any,
    mode: str,
    dim: int,
    hu_min: float,
    hu_max: float,
    mu_water: float,
) -> Array:
    """Projection of ``(B, Z, Y, X)`` stored values (HU = slope * stored + intercept) along spatial axis ``dim``
    (1 = y, 2 = x); returns ``(B, Z, X or Y)`` float32 in physical units, not yet oriented (numpy or torch, as the
    input). ``ray_spacing_mm``: a number or one per batch element."""
    dim = dim + 1  # skip the batch axis
    if slope <= 0:  # the clamp-in-stored-units trick needs an increasing rescale
        stored = stored.astype(np.float32) if isinstance(stored, np.ndarray) else stored.to(torch.float32)
        stored = stored * slope + intercept
        slope, intercept = 1.0, 0.0
    n = stored.shape[dim]
    if mode == "mean":
        lo, hi = (hu_min - intercept) / slope, (hu_max - intercept) / slope
        return _ray_sums(stored, dim, lo, hi) * (slope / n) + intercept
    # beer_lambert: sum of max(HU, -1000) = slope * sum(max(stored, lo)) + n * intercept; mu >= 0 <=> HU >= -1000
    lo = (-1000.0 - intercept) / slope
    sums = _ray_sums(stored, dim, lo, None) * slope + n * (intercept + 1000.0)
    step = np.asarray(ray_spacing_mm, dtype=np.float32).reshape(-1, 1, 1) * np.float32(mu_water / 1000.0)
    if torch.is_tensor(sums):
        step = torch.from_numpy(step).to(sums.device)
    return sums * step


def _resample_axis(image: Array, axis: int, step: float, size: int) -> Array:
    """Linear resampling along ``axis`` at source positions ``p * step`` (p = 0 .. size-1), edge-clamped."""
    n = image.shape[axis]
    pos = np.minimum(np.arange(size, dtype=np.float64) * step, n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * image.ndim
    shape[axis] = size
    w = (pos - i0).astype(np.float32).reshape(shape)
    if isinstance(image, np.ndarray):
        a, b = np.take(image, i0, axis=axis), np.take(image, i1, axis=axis)
    else:
        device = image.device
        a = image.index_select(axis, torch.from_numpy(i0).to(device))
        b = image.index_select(axis, torch.from_numpy(i1).to(device))
        w = torch.from_numpy(w).to(device)
    return a + (b - a) * w


def _resampled_size(n: int, spacing: float, pixel_spacing_mm: float) -> int:
    return max(1, int(round(n * float(spacing) / pixel_spacing_mm)))


def check_image_budget(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    pixel_spacing_mm: float | None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    source: str = "image",
) -> tuple[int, int]:
    """The ``(H, W)`` a ``shape = (H, W)`` image of ``spacing_mm = (row, column)`` mm gets at ``pixel_spacing_mm``
    (``None``: unchanged), checked against ``max_pixels`` before anything is allocated.

    Raises:
        ValueError: naming ``source``, the spacing and the size, when the image would exceed ``max_pixels`` or a
            spacing / pixel spacing is not a positive finite number.
    """
    values = [float(v) for v in spacing_mm] + ([] if pixel_spacing_mm is None else [float(pixel_spacing_mm)])
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{source}: spacing {tuple(spacing_mm)} mm / pixel_spacing_mm {pixel_spacing_mm} must be "
                         "positive and finite.")  # fmt: skip
    if pixel_spacing_mm is None:
        size = (int(shape[0]), int(shape[1]))
    else:
        size = tuple(_resampled_size(n, s, pixel_spacing_mm) for n, s in zip(shape, spacing_mm))  # type: ignore
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        extent = tuple(round(n * float(s), 1) for n, s in zip(shape, spacing_mm))
        raise ValueError(
            f"{source}: a {int(shape[0])} x {int(shape[1])} projection with {tuple(float(s) for s in spacing_mm)} mm "
            f"pixels covers {extent[0]:g} x {extent[1]:g} mm; at {pixel_spacing_mm} mm it would be {size[0]} x "
            f"{size[1]} = {size[0] * size[1]:,} pixels, more than the budget max_pixels={max_pixels:,} (implausible "
            "CT spacing in the header? Pass spacing=... or a larger max_pixels)."
        )
    return size  # type: ignore[return-value]


def resample_image(
    image: Array,
    spacing_mm: Sequence[float],
    pixel_spacing_mm: float = 1.0,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    source: str = "image",
) -> Array:
    """Resample ``(..., H, W)`` images (numpy or torch) with pixel spacing ``spacing_mm = (row, column)`` in mm to
    square pixels of ``pixel_spacing_mm``.

    SimpleITK's grid: output pixel ``p`` lies at ``p * pixel_spacing_mm`` from the first input pixel centre, output
    size ``round(n * spacing / pixel_spacing_mm)``, linear interpolation (beyond the last input pixel the edge value
    is repeated where SimpleITK would write 0). The output size is checked against ``max_pixels`` first
    (:func:`check_image_budget`).
    """
    check_image_budget(image.shape[-2:], spacing_mm, pixel_spacing_mm, max_pixels, source)
    out = image
    for dim, s in zip((-2, -1), spacing_mm):
        n = out.shape[dim]
        size = _resampled_size(n, s, pixel_spacing_mm)
        if size != n or not math.isclose(float(s), pixel_spacing_mm):
            out = _resample_axis(out, out.ndim + dim, pixel_spacing_mm / float(s), size)
    return out


def _finish(images: Array, normalize: bool) -> Array:
    """Flip head-up (row 0 = most superior slice) and optionally min-max scale each ``(B, H, W)`` image."""
    if isinstance(images, np.ndarray):
        images = images[:, ::-1, :]
        if normalize:
            flat = images.reshape(images.shape[0], -1)
            lo = flat.min(axis=1).reshape(-1, 1, 1)
            hi = flat.max(axis=1).reshape(-1, 1, 1)
            images = (images - lo) / np.maximum(hi - lo, np.float32(1e-12))
        return np.ascontiguousarray(images, dtype=np.float32)
    images = images.flip(-2)
    if normalize:
        flat = images.reshape(images.shape[0], -1)
        lo = flat.amin(dim=1).reshape(-1, 1, 1)
        hi = flat.amax(dim=1).reshape(-1, 1, 1)
        images = (images - lo) / (hi - lo).clamp_min(1e-12)
    return images.contiguous()


def simulate_cxr_batch(
    volumes_hu: torch.Tensor,
    spacing_mm: Sequence[float] | torch.Tensor,
    mode: str = "mean",
    view: str = "frontal",
    *,
    pixel_spacing_mm: float | None = 1.0,
    hu_min: float = -1000.0,
    hu_max: float = 1000.0,
    mu_water: float = MU_WATER_PER_MM,
    normalize: bool = True,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Simulate radiographs from a batch of canonical CT volumes (any device; torch only).

    Args:
        volumes_hu: ``(B, Z, Y, X)`` or ``(Z, Y, X)`` tensor of HU in the canonical orientation (axis 1 = Z runs
            inferior -> superior, Y anterior -> posterior, X patient right -> left; see :mod:`.volume_io`).
        spacing_mm: ``(3,)`` voxel spacing ``(z, y, x)`` in mm shared by the batch, or ``(B, 3)`` per volume (then
            ``pixel_spacing_mm`` must be ``None`` unless all in-plane spacings agree).
        mode, view: see the module docstring.
        pixel_spacing_mm: output pixel size in mm (``None``: the CT's own grid, ``(z, x)`` or ``(z, y)`` spacing).
        hu_min, hu_max: HU window of the ``"mean"`` mode.
        mu_water: attenuation of water in 1/mm (``"beer_lambert"``).
        normalize: min-max scale each image to [0, 1].
        max_pixels: budget of one output image in pixels (``None``: no limit), checked before projecting.

    Returns:
        ``(B, H, W)`` float32 tensor on the input's device in :data:`CXR_ORIENTATION` (frontal) or
        :data:`LATERAL_ORIENTATION` (lateral).
    """
    dim = _check_mode_view(mode, view)
    if not torch.is_tensor(volumes_hu):
        raise ValueError(f"volumes_hu must be a torch tensor, got {type(volumes_hu).__name__}.")
    if volumes_hu.dim() == 3:
        volumes_hu = volumes_hu[None]
    if volumes_hu.dim() != 4 or min(volumes_hu.shape[1:]) < 2:
        raise ValueError(
            f"volumes_hu must be (B, Z, Y, X) with at least 2 voxels per axis, got {tuple(volumes_hu.shape)}."
        )
    spacing = torch.as_tensor(spacing_mm, dtype=torch.float64).reshape(-1, 3)
    if spacing.shape[0] not in (1, volumes_hu.shape[0]) or not bool((spacing > 0).all()):
        raise ValueError(f"spacing_mm must be (3,) or (B, 3) positive mm, got {tuple(spacing.shape)}.")
    if volumes_hu.is_floating_point() and not bool(torch.isfinite(volumes_hu).all()):
        raise ValueError("volumes_hu contains NaN or infinite values.")
    in_plane = spacing[:, [0, 3 - dim]]
    if pixel_spacing_mm is not None:
        if not torch.allclose(in_plane, in_plane[:1].expand_as(in_plane)):
            raise ValueError("Per-volume spacings differ in the image plane; pass pixel_spacing_mm=None.")
        plane_shape = (volumes_hu.shape[1], volumes_hu.shape[4 - dim])
        check_image_budget(plane_shape, in_plane[0].tolist(), pixel_spacing_mm, max_pixels, "volumes_hu")
    images = _project(volumes_hu, 1.0, 0.0, spacing[:, dim], mode, dim, hu_min, hu_max, mu_water)
    if pixel_spacing_mm is not None:
        images = resample_image(images, in_plane[0].tolist(), pixel_spacing_mm, max_pixels=max_pixels,
                                source="volumes_hu")  # fmt: skip
    return _finish(images, normalize)


def simulate_cxr(
    ct: Any,
    mode: str = "mean",
    view: str = "frontal",
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    orientation: str | None = None,
    rescale: tuple[float, float] | None = None,
    pixel_spacing_mm: float | None = 1.0,
    hu_min: float = -1000.0,
    hu_max: float = 1000.0,
    mu_water: float = MU_WATER_PER_MM,
    normalize: bool = True,
    max_voxels: int | None = 600_000_000,
    validate: bool = True,
    max_hu: float = DEFAULT_MAX_HU,
    device: str | torch.device | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Simulate one chest radiograph from one CT.

    Args:
        ct: a ``.nii``/``.nii.gz`` path, a DICOM series folder, a :class:`.volume_io.CTVolume`, or a 3-D array /
            tensor with ``spacing`` (mm, its own axis order) and ``affine`` or ``orientation`` (nibabel axis codes;
            default: canonical ``(z, y, x)``), as for :func:`.volume_io.load_ct`.
        mode: ``"mean"`` (X2CT-CLIP) or ``"beer_lambert"``.
        view: ``"frontal"`` (rays anterior-posterior) or ``"lateral"`` (rays left-right).
        rescale: ``(slope, intercept)`` to HU replacing the file's.
        pixel_spacing_mm: output pixel size in mm (default 1 mm); ``None`` keeps the CT's grid.
        hu_min, hu_max, mu_water, normalize: see :func:`simulate_cxr_batch`.
        max_voxels: memory budget checked before the CT is decoded.
        validate, max_hu: check the CT holds plausible HU.
        device: where to project (e.g. ``"cuda"``); the result is returned as numpy.
        max_pixels: budget of the output image in pixels (default 16 M; ``None``: no limit), checked from the
            header's shape and spacing before projecting or resampling (see the module docstring).

    Returns:
        ``(H, W)`` float32 image in :data:`CXR_ORIENTATION` (frontal) or :data:`LATERAL_ORIENTATION` (lateral).
    """
    dim = _check_mode_view(mode, view)
    volume: CTVolume = load_ct(
        ct,
        spacing=spacing,
        affine=affine,
        orientation=orientation,
        rescale=rescale,
        max_voxels=max_voxels,
        validate=validate,
        max_hu=max_hu,
    )
    plane_shape = (volume.shape[0], volume.shape[3 - dim])
    plane_spacing = (volume.spacing_mm[0], volume.spacing_mm[3 - dim])
    check_image_budget(plane_shape, plane_spacing, pixel_spacing_mm, max_pixels, volume.source)
    stored: Array = volume.array[None]
    if device is not None and torch.device(device).type != "cpu":
        stored = _readonly_tensor(volume.array)[None].to(device)
    images = _project(
        stored, volume.slope, volume.intercept, volume.spacing_mm[dim], mode, dim, hu_min, hu_max, mu_water
    )
    if pixel_spacing_mm is not None:
        images = resample_image(images, plane_spacing, pixel_spacing_mm, max_pixels=max_pixels, source=volume.source)
    images = _finish(images, normalize)[0]
    return images.cpu().numpy() if torch.is_tensor(images) else images
