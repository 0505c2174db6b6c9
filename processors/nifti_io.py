"""Reading NIfTI CT files (``.nii``, ``.nii.gz``) into a canonical :class:`~.ct_volume.CTVolume`.

The header is checked before any voxel is decoded (memory budget, plausible spacing, scale factors), the data is
streamed in chunks and never beyond what the header announces plus :data:`NIFTI_TRAILING_MARGIN`; ``.nii.gz`` files
are decoded with python-isal (igzip) when installed, else with the standard library. A header with neither qform nor
sform (the first CT-RATE release) is read in CT-RATE's orientation (see :mod:`.ct_volume`).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from .ct_volume import (
    CT_RATE_NIFTI_AXCODES,
    CTVolume,
    canonical_volume,
    check_budget,
    check_spacing_plausible,
    diagonal_affine,
    squeeze_to_3d,
)

try:  # igzip decodes gzip faster than zlib (benchmarks/bench_volume_processor.py); optional, though a dependency.
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _igzip = None

__all__ = ["NIFTI_TRAILING_MARGIN", "decode_nifti", "is_nifti_path", "read_nifti"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_HEADER_BYTES = 544  # enough for a NIfTI-2 header (540) and the NIfTI-1 header plus extension flag (352)


def is_nifti_path(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in _NIFTI_SUFFIXES)


#: Bytes a NIfTI stream may hold beyond ``vox_offset + nbytes`` (writers pad, a few append a small extension);
#: more is refused (a small valid header followed by gigabytes of zeros would otherwise be decompressed whole).
NIFTI_TRAILING_MARGIN: int = 64 * 1024
_CHUNK = 8 << 20  # decode 8 MiB at a time


class _Prefixed(io.RawIOBase):
    """A read-only stream that first returns ``prefix`` (bytes already read to sniff the format), then ``inner``."""

    def __init__(self, prefix: bytes, inner):
        self._prefix, self._inner = prefix, inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n], self._prefix = self._prefix[:n], self._prefix[n:]
            return n
        data = self._inner.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_exactly(fh, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``fh`` in chunks; return how many bytes arrived before the end of the stream."""
    pos = 0
    while pos < len(buffer):
        n = fh.readinto(buffer[pos : pos + _CHUNK])
        if not n:
            break
        pos += n
    return pos


def _open_stream(path: Path):
    return open(path, "rb")


def _parse_nifti_header(raw: bytes, source: str):
    """A nibabel NIfTI-1 or NIfTI-2 header from the first bytes of a file."""
    if len(raw) < 348:
        raise ValueError(f"{source}: file is empty or truncated ({len(raw)} bytes, a NIfTI header needs 348).")
    size_le, size_be = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")
    klass = nib.Nifti2Header if 540 in (size_le, size_be) else nib.Nifti1Header
    try:
        return klass.from_fileobj(io.BytesIO(raw))
    except Exception as exc:  # nibabel raises HeaderDataError, struct errors, ...
        raise ValueError(f"{source}: not a valid NIfTI file ({type(exc).__name__}: {exc}).") from None


def _header_rescale(header, source: str) -> tuple[float, float]:
    """``scl_slope`` / ``scl_inter`` checked: a slope of 0 or NaN with no intercept means "no scaling" (the NIfTI-1
    rule for slope 0, and nibabel's NaN default), a NaN intercept is 0 (as nibabel reads it); an infinite slope or
    intercept, or an intercept without a slope, is an error."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    unset_slope = slope == 0.0 or math.isnan(slope)
    if math.isinf(slope) or math.isinf(inter):
        raise ValueError(f"{source}: invalid NIfTI scale factors scl_slope={slope!r}, scl_inter={inter!r}.")
    if unset_slope:
        if not (inter == 0.0 or math.isnan(inter)):
            raise ValueError(
                f"{source}: invalid NIfTI scale factors: scl_inter={inter!r} with scl_slope={slope!r} (no slope)."
            )
        return 1.0, 0.0
    return slope, 0.0 if math.isnan(inter) else inter


def _raise_read_error(exc: Exception, source: str):
    """A failure while reading the stream: corrupt data (bad gzip, zlib / isal errors, EOF) is a ``ValueError``
    naming the file; an I/O error of the stream itself (a dropped connection of a remote file system) stays an
    ``OSError`` naming it, so that a reader can tell a transient fault from a bad file and retry."""
    if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
        raise OSError(f"{source}: reading failed ({type(exc).__name__}: {exc}).") from exc
    raise ValueError(f"{source}: corrupt or truncated file ({type(exc).__name__}: {exc}).") from None


def decode_nifti(
    stream: Any,
    source: str,
    *,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    rescale: tuple[float, float] | None = None,
    blank_header_spacing: Sequence[float] | None = None,
    blank_header_rescale: tuple[float, float] | None = None,
    max_voxels: int | None = None,
    blank_header: str = "warn",
) -> CTVolume:
    """Decode a NIfTI-1/2 file (``.nii`` or gzip-compressed ``.nii.gz``, detected from its first bytes) from
    ``bytes`` or a binary stream (a file, an fsspec stream) into a canonical :class:`CTVolume`.

    The project's only NIfTI decoder (training, preprocessing and inference all read CTs through it). The stream is
    decoded in chunks, only up to ``vox_offset + nbytes`` of the header plus :data:`NIFTI_TRAILING_MARGIN`: more
    trailing data is an error, and nothing beyond that is ever decompressed.

    Geometry and values:

    - a header with an orientation (``qform_code`` or ``sform_code`` > 0) gives the affine and its ``scl_slope`` /
      ``scl_inter`` (the corrected CT-RATE release: values already in HU);
    - a blank header (both codes 0; the first CT-RATE release) is read in CT-RATE's orientation ``LPS`` with
      ``blank_header_spacing`` ``(z, y, x)`` mm and ``blank_header_rescale`` ``(slope, intercept)`` when given (the
      CT-RATE metadata), else with the header's pixdim and scaling: ``blank_header`` ``"warn"`` (a warning),
      ``"quiet"``, or ``"error"`` (refused: the CT-RATE loaders, where the metadata must give the spacing);
    - ``affine`` / ``spacing`` / ``rescale`` override everything (caller's word);
    - the spacing must lie in :data:`PLAUSIBLE_SPACING_MM` unless ``spacing`` is given; invalid scale factors are
      errors (:func:`_header_rescale`).

    Raises:
        ValueError: empty, truncated, corrupt or over-long stream; not NIfTI; not 3-D; over ``max_voxels``;
            implausible spacing; invalid scale factors -- each message starts with ``source``.

    Longer than 80 lines on purpose: the checks run in the order the bytes arrive (header, budget, spacing, scale
    factors, data, trailing bytes), and splitting them would pass the half-read stream between functions.
    """
    if isinstance(stream, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(bytes(stream))
    try:
        magic = stream.read(2)
        raw = _Prefixed(magic, stream)
        if magic == b"\x1f\x8b":
            fh = _igzip.IGzipFile(fileobj=raw, mode="rb") if _igzip is not None else gzip.GzipFile(fileobj=raw)
        else:
            fh = raw
        head_buffer = bytearray(_HEADER_BYTES)
        got = _read_exactly(fh, memoryview(head_buffer))
    except ValueError:
        raise
    except Exception as exc:  # truncated or corrupt gzip: EOFError, BadGzipFile, zlib / isal errors
        _raise_read_error(exc, source)
    if got == 0:
        raise ValueError(f"{source}: file is empty.")
    head = bytes(head_buffer[:got])
    header = _parse_nifti_header(head, source)
    # nibabel's header check silently turns a zero pixdim into 1 mm; the unchecked copy keeps what the file says.
    raw_zooms = [float(v) for v in type(header).from_fileobj(io.BytesIO(head), check=False)["pixdim"][1:4]]
    shape = squeeze_to_3d(header.get_data_shape(), source)
    check_budget(shape, max_voxels, source)
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf":
        raise ValueError(f"{source}: unsupported NIfTI data type {dtype} for a CT volume.")
    offset = int(header.get_data_offset())
    count = int(np.prod(shape, dtype=np.int64))
    needed = offset + count * dtype.itemsize
    header_slope, header_inter = _header_rescale(header, source)
    oriented = int(header["qform_code"]) > 0 or int(header["sform_code"]) > 0

    # The buffer grows with the data that actually arrives (chunk by chunk), never to the size the header promises
    # up front: a truncated or lying header costs no more memory than the bytes the file holds.
    buffer = bytearray(head)
    try:
        while len(buffer) < needed:
            chunk = fh.read(min(_CHUNK, needed - len(buffer)))
            if not chunk:
                break
            buffer += chunk
        have = len(buffer)
        extra = len(fh.read(NIFTI_TRAILING_MARGIN + 1)) if have >= needed else 0
    except Exception as exc:
        _raise_read_error(exc, source)
    if have < needed:
        raise ValueError(
            f"{source}: file is truncated: the header announces {count:,} voxels of {dtype} ({needed:,} bytes with "
            f"the header) but the data holds {have:,} bytes."
        )
    extra += max(0, got - needed)
    if extra > NIFTI_TRAILING_MARGIN:
        raise ValueError(
            f"{source}: more than {NIFTI_TRAILING_MARGIN:,} bytes of data after the {needed:,} bytes the header "
            "announces (vox_offset + voxels); refusing a file that holds more than its header says."
        )
    data = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))

    slope, intercept = header_slope, header_inter
    if not oriented and blank_header_rescale is not None and all(math.isfinite(v) for v in blank_header_rescale):
        # A blank header is a first-release CT-RATE file: the metadata holds the scanner's rescale.
        slope, intercept = (float(v) for v in blank_header_rescale)
    if rescale is not None:
        slope, intercept = (float(v) for v in rescale)

    if affine is None:
        if oriented:
            affine = header.get_best_affine()
            if spacing is None:
                check_spacing_plausible(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), source)
                if int(header["sform_code"]) == 0:  # the qform's voxel size is pixdim
                    check_spacing_plausible(raw_zooms, source, "header's pixdim")
        elif blank_header_spacing is not None and all(math.isfinite(float(v)) for v in blank_header_spacing):
            sz, sy, sx = (float(v) for v in blank_header_spacing)
            if spacing is None:
                check_spacing_plausible((sz, sy, sx), source, "metadata")
            affine = diagonal_affine(CT_RATE_NIFTI_AXCODES, (sx, sy, sz))
        else:
            if blank_header == "error" and spacing is None:
                raise ValueError(
                    f"{source}: the NIfTI header has no orientation (qform_code = sform_code = 0, as in the first "
                    "CT-RATE release) and no spacing was given for it (no XYSpacing / ZSpacing from the metadata)."
                )
            zooms = raw_zooms
            if spacing is None:
                check_spacing_plausible(zooms, source, "header's pixdim")
            else:
                zooms = [1.0, 1.0, 1.0]  # replaced below by the caller's spacing
            if blank_header == "warn":
                warnings.warn(
                    f"{source}: the NIfTI header has no orientation (qform_code = sform_code = 0); reading it in "
                    f"CT-RATE's orientation {''.join(CT_RATE_NIFTI_AXCODES)}. Pass affine= to override.",
                    stacklevel=3,
                )
            affine = diagonal_affine(CT_RATE_NIFTI_AXCODES, zooms)
    return canonical_volume(data, affine, source, slope=slope, intercept=intercept, spacing=spacing)


def read_nifti(
    path: str | os.PathLike,
    *,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    rescale: tuple[float, float] | None = None,
    max_voxels: int | None = None,
) -> CTVolume:
    """Read a ``.nii`` / ``.nii.gz`` CT into the canonical orientation (:func:`decode_nifti` on the file).

    Args:
        path: the file.
        affine: replaces the header's affine (4 x 4, for the file's own ``(i, j, k)`` index order). A header with
            neither qform nor sform (first CT-RATE release) is read as CT-RATE's orientation, with a warning.
        spacing: replaces the voxel spacing, ``(z, y, x)`` mm in canonical order.
        rescale: ``(slope, intercept)`` replacing the header's ``scl_slope`` / ``scl_inter``.
        max_voxels: refuse (``ValueError``) larger volumes, checked on the header before the data is decoded.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file.")
    with _open_stream(path) as fh:
        return decode_nifti(fh, source, affine=affine, spacing=spacing, rescale=rescale, max_voxels=max_voxels)
