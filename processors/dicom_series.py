"""Reading a DICOM CT series (a folder of single-frame slices) into a canonical :class:`~.ct_volume.CTVolume`.

Slices are sorted along the slice normal, their geometry and rescale checked (gaps, duplicates, oblique or
inconsistent orientation), and the pixel grid brought to the canonical orientation, so a series and its NIfTI
conversion give the same array. pydicom is imported when a series is read (it is only needed for DICOM input).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .ct_volume import CTVolume, canonical_volume, check_budget

__all__ = ["DICOM_MAX_SLICE_BYTES", "read_dicom_series"]

#: Slice files are parsed from their bytes in memory: pydicom reading an open file allocates a buffer of an element's
#: claimed length before reading it (a corrupt 2 KB file can claim gigabytes); from memory it reads at most the file.
DICOM_MAX_SLICE_BYTES = 256 << 20


def _dicom_headers(folder: Path) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.stat().st_size > DICOM_MAX_SLICE_BYTES:
            continue  # no single-frame CT slice is this large (a NIfTI or an archive beside the series)
        try:
            ds = pydicom.dcmread(io.BytesIO(path.read_bytes()), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError):
            continue  # not DICOM (e.g. DICOMDIR side files, .DS_Store); truncated ones are caught when read fully
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "PixelSpacing" in ds:
            found.append((path, ds))
    return found


def _dicom_number(ds, path: Path, keyword: str, default: float) -> float:
    """A finite number from a DICOM attribute (``default`` when absent or empty), else an error naming the file."""
    try:
        value = ds.get(keyword, None)
        value = getattr(value, "value", value)
    except Exception as exc:  # pydicom may raise when converting a malformed DS value
        raise ValueError(f"{path}: {keyword} cannot be read ({type(exc).__name__}: {exc}).") from None
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {keyword} is {str(value)!r}, not a number.") from None
    if not math.isfinite(number) or (keyword == "RescaleSlope" and number == 0.0):
        raise ValueError(f"{path}: {keyword} is {number!r}, not a valid rescale value.")
    return number


def read_dicom_series(
    folder: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    rescale: tuple[float, float] | None = None,
    max_voxels: int | None = None,
    slice_gaps: str = "error",
) -> CTVolume:
    """Read one axial DICOM CT series (a folder of single-frame slices) into the canonical orientation.

    Slices are sorted by ImagePositionPatient projected on the slice normal (ImageOrientationPatient row x column);
    the slice spacing is the median distance between consecutive positions. RescaleSlope/RescaleIntercept are
    applied (kept as slope/intercept when all slices agree; otherwise converted to float32 HU per slice).

    Missing slices (a distance between consecutive positions more than 10 % away from the median) are an error
    unless ``slice_gaps="median"``: the documented gap rule that stacks the slices at the median spacing anyway
    (the z extent is then short by the missing slices; a warning says so).

    Args:
        folder: folder holding the series' files (non-DICOM files are ignored; several series are an error).
        spacing: replaces the voxel spacing, ``(z, y, x)`` mm in canonical order.
        rescale: ``(slope, intercept)`` replacing RescaleSlope/RescaleIntercept.
        max_voxels: refuse (``ValueError``) larger series, checked on headers before pixel data is read.
        slice_gaps: ``"error"`` (default) or ``"median"`` (see above).

    Longer than 80 lines on purpose: one pass over the slices checks geometry and rescale as it stacks them; the order
    of those checks is the reading order.
    """
    import pydicom

    if slice_gaps not in ("error", "median"):
        raise ValueError(f"slice_gaps must be 'error' or 'median', got {slice_gaps!r}.")

    folder = Path(folder)
    source = str(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{source}: no such folder.")
    slices = _dicom_headers(folder)
    if not slices:
        subdirs = [p.name for p in folder.iterdir() if p.is_dir()]
        hint = f" (it has sub-folders {subdirs[:5]}; pass the folder of one series)" if subdirs else ""
        raise ValueError(f"{source}: no DICOM image slices with position/orientation found{hint}.")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise ValueError(f"{source}: holds {len(series)} DICOM series ({sorted(series)[:3]}...); pass one series.")

    iop = np.array([float(v) for v in slices[0][1].ImageOrientationPatient], dtype=np.float64)
    for path, ds in slices:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise ValueError(f"{path}: ImageOrientationPatient differs from the rest of the series {source}.")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{path}: multi-frame DICOM files are not supported; export single-frame slices.")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices]) @ normal
    order = np.argsort(positions, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    if len(slices) < 2:
        raise ValueError(f"{source}: holds a single slice, a 2-D image, not a CT volume.")
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        raise ValueError(f"{source}: several slices share one position; the folder mixes acquisitions or is a 2-D set.")
    dz = float(np.median(gaps))
    if np.ptp(gaps) > 0.1 * dz and slice_gaps == "error":
        worst = int(np.argmax(np.abs(gaps - dz)))
        raise ValueError(
            f"{source}: slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm (median {dz:.3g} mm; "
            f"{gaps[worst]:.3g} mm after {slices[worst][0].name}): missing slices? Pass slice_gaps='median' to stack "
            "them at the median spacing anyway."
        )
    if np.ptp(gaps) > 0.1 * dz:
        warnings.warn(
            f"{source}: slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm (missing slices?); "
            f"using the median {dz:.3g} mm.",
            stacklevel=2,
        )
    first = slices[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    shape = (len(slices), rows, cols)
    check_budget(shape, max_voxels, source)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)

    slopes = [_dicom_number(ds, path, "RescaleSlope", 1.0) for path, ds in slices]
    intercepts = [_dicom_number(ds, path, "RescaleIntercept", 0.0) for path, ds in slices]
    uniform = len(set(slopes)) == 1 and len(set(intercepts)) == 1 and rescale is None
    data = None
    for index, (path, _) in enumerate(slices):
        try:
            ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
            pixels = ds.pixel_array
        except Exception as exc:  # truncated pixel data, unsupported compression, ...
            raise ValueError(f"{path}: cannot read pixel data ({type(exc).__name__}: {exc}).") from None
        if pixels.shape != (rows, cols):
            raise ValueError(f"{path}: slice of shape {pixels.shape}, expected {(rows, cols)} like the series.")
        if data is None:
            dtype = pixels.dtype if (uniform and pixels.dtype.kind in "iu") else np.float32
            data = np.empty(shape, dtype=dtype)
        if data.dtype == np.float32:
            s, b = (rescale if rescale is not None else (slopes[index], intercepts[index]))
            data[index] = pixels.astype(np.float32) * np.float32(s) + np.float32(b)
        else:
            data[index] = pixels

    # Index (slice k, row j, column i) -> LPS mm, then to nibabel's RAS+.
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = normal * dz
    affine_lps[:3, 1] = col_dir * row_spacing  # moving down one row goes along the column direction cosines
    affine_lps[:3, 2] = row_dir * col_spacing
    affine_lps[:3, 3] = [float(v) for v in first.ImagePositionPatient]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    # float32 data holds HU already (slices with different rescales, applied per slice above)
    slope, intercept = (slopes[0], intercepts[0]) if data.dtype != np.float32 else (1.0, 0.0)
    return canonical_volume(data, affine, source, slope=slope, intercept=intercept, spacing=spacing)
