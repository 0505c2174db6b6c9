"""Loading chest CT volumes (NIfTI, DICOM series, arrays) into one explicit orientation.

Every loader here returns a :class:`CTVolume` whose ``array`` is C-contiguous and indexed ``array[z, y, x]`` in the
**canonical orientation** of this package, which is the orientation CT-RATE volumes are stored in:

==========  ===========================  =====================================================================
array axis  name                         index increases towards (patient coordinates)
==========  ===========================  =====================================================================
0           ``z`` (slice)                superior (head)            - DICOM +z (LPS)
1           ``y`` (row)                  posterior (back)           - DICOM +y (LPS)
2           ``x`` (column)               the patient's left         - DICOM +x (LPS)
==========  ===========================  =====================================================================

Equivalently: ``array.T`` (index order ``x, y, z``) has nibabel axis codes ``("L", "P", "S")`` -- the pixel grid
of an axial DICOM series with ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``, slices sorted along the slice normal.

Why this is the CT-RATE orientation (facts, then the inference drawn from them):

* CT-RATE was exported from DICOM; its first release had blank NIfTI headers (identity affine) and its metadata
  CSV gives ImagePositionPatient, ImageOrientationPatient, spacings and rescale for each volume. The header fix
  (ibrahimhamamci/CT-RATE discussion #58 and PR #59, ``fix_metadata.py``) added "Spacing, Origin, Direction, pixel
  rescaling" from that metadata to the unchanged arrays, i.e. it describes the stored grid with the DICOM geometry.
* CT-CLIP transposes the nibabel array ``(i, j, k)`` to ``(k, i, j)`` and calls it ``(z, x, y)``; X2CT-CLIP takes the
  mean along ``j`` of the same array to obtain a *frontal* radiograph, so ``j`` is the anterior-posterior axis and
  ``i`` left-right; it rotates ``k`` upwards to put the head up, so ``k`` runs towards the head. Third-party CT-RATE
  converters likewise treat the stored axes as (DICOM column, DICOM row, slice along the normal).
* Hence a CT-RATE file stores the DICOM pixel grid as ``(column, row, slice)``; for the standard axial
  ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]`` its axis codes are ``("L", "P", "S")`` (:data:`CT_RATE_NIFTI_AXCODES`),
  and ``array = data.T`` is a zero-copy, C-contiguous view of nibabel's Fortran-ordered data: no flip, no permutation.
  Left-right cannot be verified without CT-RATE images (a chest is nearly symmetric): this module trusts the header,
  and a header-less file is read as ``LPS``.

CT-CLIP's preprocessing transposes the nibabel array to ``(k, i, j)``, i.e. ``(z, x, y)`` in the table above; the
volume processor (:mod:`.image_processing_volume`) resamples the free transposed view ``array.transpose(0, 2, 1)``
straight into that layout.

Any other input is brought to the canonical orientation by the nearest axis permutation and flips of its affine
(nibabel ``io_orientation``); oblique directions are not resampled (as in CT-CLIP). A DICOM series and its NIfTI
conversion therefore give the same array.

Units: ``spacing_mm`` in millimetres in array order ``(z, y, x)``; intensities in Hounsfield units (HU) after
``slope * array + intercept``. Integer arrays stay integer (no float64 anywhere); ``.nii.gz`` files are decoded with
python-isal (igzip) when installed, else with the standard library.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as nio


try:  # igzip decodes gzip several times faster than zlib; optional (pyproject lists it as a dependency).
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _igzip = None


__all__ = [
    "CANONICAL_AXCODES",
    "CT_RATE_NIFTI_AXCODES",
    "DEFAULT_MAX_HU",
    "CTVolume",
    "NIFTI_TRAILING_MARGIN",
    "PLAUSIBLE_SPACING_MM",
    "check_hu",
    "check_spacing_plausible",
    "ct_rate_affine",
    "decode_nifti",
    "load_ct",
    "read_dicom_series",
    "read_nifti",
    "volume_from_array",
]

#: nibabel axis codes (direction each index increases towards) of ``CTVolume.array`` axes ``(z, y, x)``.
CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")
#: nibabel axis codes of a CT-RATE NIfTI file's own index order ``(i, j, k)``; ``data.T`` is then canonical.
CT_RATE_NIFTI_AXCODES: tuple[str, str, str] = ("L", "P", "S")
#: Largest plausible CT value in HU after rescaling (12-bit CT tops out at 3071 HU); beyond it the data is not HU.
DEFAULT_MAX_HU: float = 5000.0

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_HEADER_BYTES = 544  # enough for a NIfTI-2 header (540) and the NIfTI-1 header plus extension flag (352)


@dataclass(eq=False)
class CTVolume:
    """A CT volume in the canonical orientation (see the module docstring).

    Attributes:
        array: ``(Z, Y, X)`` C-contiguous array of stored values: an integer dtype (HU = ``slope * array +
            intercept``) or float32. Axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis 2 the
            patient's right -> left.
        spacing_mm: voxel spacing in mm, ``(z, y, x)``.
        affine: 4 x 4 float64 matrix mapping an index ``(z, y, x, 1)`` of ``array`` to RAS+ world mm (nibabel
            convention for this index order).
        slope, intercept: rescale to HU.
        source: where the data came from (a path, or a description such as ``"array input #0"``), used in errors.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray = field(default=None)  # type: ignore[assignment]
    slope: float = 1.0
    intercept: float = 0.0
    source: str = "array"

    def __post_init__(self):
        if not isinstance(self.array, np.ndarray) or self.array.ndim != 3:
            raise ValueError(f"{self.source}: CTVolume.array must be a 3-D numpy array, got {_describe(self.array)}.")
        self.spacing_mm = _check_spacing(self.spacing_mm, self.source)
        if self.affine is None:
            self.affine = _diagonal_affine(CANONICAL_AXCODES, self.spacing_mm)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"{self.source}: affine must be 4 x 4, got shape {self.affine.shape}.")
        self.slope, self.intercept = float(self.slope), float(self.intercept)
        if not (math.isfinite(self.slope) and math.isfinite(self.intercept)) or self.slope == 0:
            raise ValueError(f"{self.source}: invalid rescale slope/intercept ({self.slope}, {self.intercept}).")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def num_voxels(self) -> int:
        return int(self.array.size)

    def hu(self) -> np.ndarray:
        """The volume in HU as a new float32 ``(Z, Y, X)`` array (never float64)."""
        out = self.array.astype(np.float32)
        if self.slope != 1.0:
            out *= np.float32(self.slope)
        if self.intercept != 0.0:
            out += np.float32(self.intercept)
        return out

    def hu_range(self) -> tuple[float, float]:
        """``(min, max)`` in HU without building a float copy (NaN if the data holds NaN)."""
        lo, hi = float(self.array.min()), float(self.array.max())
        lo, hi = lo * self.slope + self.intercept, hi * self.slope + self.intercept
        return (min(lo, hi), max(lo, hi))

    def to_nifti(self) -> nib.Nifti1Image:
        """A ``Nifti1Image`` in CT-RATE's file layout (index order ``x, y, z``; no data copy)."""
        swap = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z, 1) -> (z, y, x, 1)
        img = nib.Nifti1Image(self.array.T, self.affine @ swap)
        if self.slope != 1.0 or self.intercept != 0.0:
            img.header.set_slope_inter(self.slope, self.intercept)
        img.header.set_xyzt_units("mm")
        return img


# ----------------------------------------------------------------------------------------------------------- helpers
def _describe(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__} of shape {tuple(shape)}" if shape is not None else type(obj).__name__


def _check_spacing(spacing: Any, source: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise ValueError(f"{source}: spacing must be three numbers in mm, got {spacing!r}.") from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{source}: spacing must be three positive finite numbers in mm, got {spacing!r}.")
    return values  # type: ignore[return-value]


def _diagonal_affine(axcodes: Sequence[str], spacing: Sequence[float]) -> np.ndarray:
    """Affine of an axis-aligned grid with the given nibabel axis codes and spacing (origin at 0)."""
    ornt = nio.axcodes2ornt(tuple(axcodes))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (world, flip) in enumerate(ornt):
        affine[int(world), axis] = flip * spacing[axis]
    return affine


def ct_rate_affine(xy_spacing: float, z_spacing: float) -> np.ndarray:
    """NIfTI affine of a CT-RATE file's own ``(i, j, k)`` index order (codes ``L, P, S``) from its metadata spacings.

    Use it for CT-RATE files of the first release (blank headers): ``load_ct(path, affine=ct_rate_affine(xy, z))``.
    """
    return _diagonal_affine(CT_RATE_NIFTI_AXCODES, (xy_spacing, xy_spacing, z_spacing))


def _to_canonical(data: np.ndarray, affine: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip ``data`` (any index order, described by ``affine``) to canonical ``(z, y, x)``.

    Returns a C-contiguous array (a view when the input already is canonical and contiguous) and its affine.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{source}: affine must be a finite 4 x 4 matrix, got {affine!r}.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{source}: affine is singular (zero voxel size or collinear axes): {affine[:3, :3]!r}.")
    ornt = nio.io_orientation(affine)
    if np.isnan(ornt).any():
        raise ValueError(f"{source}: the affine does not define three independent axes: {affine[:3, :3]!r}.")
    xform = nio.ornt_transform(ornt, nio.axcodes2ornt(CANONICAL_AXCODES))
    out = nio.apply_orientation(data, xform)  # flips and a transpose: views, no copy
    out_affine = affine @ nio.inv_ornt_aff(xform, data.shape)
    return np.ascontiguousarray(out), out_affine


def _spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def _with_spacing(affine: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Rescale the columns of ``affine`` to the given spacing, keeping directions and origin."""
    out = affine.copy()
    norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out[:3, :3] = affine[:3, :3] / norms * np.asarray(spacing, dtype=np.float64)
    return out


def _check_budget(shape: Sequence[int], max_voxels: int | None, source: str) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.int64))
    if max_voxels is not None and n > max_voxels:
        raise ValueError(
            f"{source}: volume of shape {tuple(int(s) for s in shape)} has {n:,} voxels, more than the memory budget "
            f"max_voxels={max_voxels:,}; refusing before loading it (raise max_voxels if the machine can hold it)."
        )


def _squeeze_to_3d(shape: Sequence[int], source: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:  # NIfTI stores 3-D volumes with trailing singleton dims sometimes
        shape = shape[:-1]
    if len(shape) > 3:
        raise ValueError(f"{source}: expected a 3-D CT volume, got a {len(shape)}-D image of shape {shape}.")
    if len(shape) < 3 or min(shape) < 2:
        raise ValueError(
            f"{source}: this is a 2-D image (shape {shape}), not a CT volume; a CT needs at least 2 voxels along "
            "each of its three axes."
        )
    return shape  # type: ignore[return-value]


def check_hu(volume: CTVolume, max_hu: float = DEFAULT_MAX_HU) -> tuple[float, float]:
    """Raise ``ValueError`` unless ``volume`` plausibly holds Hounsfield units; return its ``(min, max)`` in HU.

    Rejected: NaN/inf values; a maximum above ``max_hu``; values all inside ``[-1, 1]`` (already normalised); a
    volume without anything darker than -200 HU (a chest CT always contains air at about -1000 HU; stored values
    whose RescaleIntercept was not applied start at 0).
    """
    lo, hi = volume.hu_range()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{volume.source}: the volume contains NaN or infinite values.")
    if hi > max_hu:
        raise ValueError(
            f"{volume.source}: maximum {hi:.6g} HU is above {max_hu:g} HU after rescaling (slope={volume.slope:g}, "
            f"intercept={volume.intercept:g}); the values are not Hounsfield units (wrong RescaleSlope/Intercept?)."
        )
    if lo >= -1.0 and hi <= 1.0:
        raise ValueError(
            f"{volume.source}: all values lie in [{lo:.3g}, {hi:.3g}], which looks normalised, not Hounsfield units."
        )
    if lo > -200.0:
        raise ValueError(
            f"{volume.source}: the darkest value is {lo:.6g} HU; a chest CT in Hounsfield units contains air "
            "(about -1000 HU). The values are not HU (RescaleIntercept not applied?)."
        )
    return lo, hi


# ------------------------------------------------------------------------------------------------------------- NIfTI
def _is_nifti_path(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in _NIFTI_SUFFIXES)


#: Bytes a NIfTI stream may hold beyond ``vox_offset + nbytes`` (writers pad, a few append a small extension);
#: more is refused (a small valid header followed by gigabytes of zeros would otherwise be decompressed whole).
NIFTI_TRAILING_MARGIN: int = 64 * 1024
#: Plausible CT voxel spacing in mm (``(min, max)``): header spacing outside it (or zero / NaN) is refused unless
#: the caller passes ``spacing``. Clinical CT: 0.2-1 mm in-plane, 0.5-10 mm between slices; the upper bound leaves
#: room for coarse downsampled volumes (the tiny synthetic sets: up to about 45 mm), not for 150 mm "voxels".
PLAUSIBLE_SPACING_MM: tuple[float, float] = (0.05, 60.0)
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


def check_spacing_plausible(spacing: Sequence[float], source: str, what: str = "header") -> None:
    """Raise ``ValueError`` unless every spacing (mm) is finite and inside :data:`PLAUSIBLE_SPACING_MM`."""
    lo, hi = PLAUSIBLE_SPACING_MM
    values = [float(v) for v in spacing]
    if not all(math.isfinite(v) and lo <= v <= hi for v in values):
        raise ValueError(
            f"{source}: the {what} gives a voxel spacing of {tuple(round(v, 6) for v in values)} mm, outside the "
            f"plausible CT range {lo:g}-{hi:g} mm (zero, NaN or absurd); pass spacing=(z, y, x) mm to override."
        )


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
        raise ValueError(f"{source}: corrupt or truncated file ({type(exc).__name__}: {exc}).") from None
    if got == 0:
        raise ValueError(f"{source}: file is empty.")
    head = bytes(head_buffer[:got])
    header = _parse_nifti_header(head, source)
    # nibabel's header check silently turns a zero pixdim into 1 mm; the unchecked copy keeps what the file says.
    raw_zooms = [float(v) for v in type(header).from_fileobj(io.BytesIO(head), check=False)["pixdim"][1:4]]
    shape = _squeeze_to_3d(header.get_data_shape(), source)
    _check_budget(shape, max_voxels, source)
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
        raise ValueError(f"{source}: corrupt or truncated file ({type(exc).__name__}: {exc}).") from None
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
            affine = _diagonal_affine(CT_RATE_NIFTI_AXCODES, (sx, sy, sz))
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
            affine = _diagonal_affine(CT_RATE_NIFTI_AXCODES, zooms)
    array, canon_affine = _to_canonical(data, affine, source)
    if array.dtype.kind == "f":
        array = _float_to_float32(array, slope, intercept)
        slope, intercept = 1.0, 0.0
    if spacing is not None:
        canon_affine = _with_spacing(canon_affine, _check_spacing(spacing, source))
    return CTVolume(
        array=array,
        spacing_mm=_spacing_from_affine(canon_affine),
        affine=canon_affine,
        slope=slope,
        intercept=intercept,
        source=source,
    )


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


def _float_to_float32(array: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    out = np.array(array, dtype=np.float32, order="C")  # a copy: frombuffer views are read-only
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


# ------------------------------------------------------------------------------------------------------------- DICOM
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
    _check_budget(shape, max_voxels, source)
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
    array, canon_affine = _to_canonical(data, affine, source)
    if spacing is not None:
        canon_affine = _with_spacing(canon_affine, _check_spacing(spacing, source))
    slope, intercept = (slopes[0], intercepts[0]) if data.dtype != np.float32 else (1.0, 0.0)
    return CTVolume(
        array=array,
        spacing_mm=_spacing_from_affine(canon_affine),
        affine=canon_affine,
        slope=slope,
        intercept=intercept,
        source=source,
    )


# ------------------------------------------------------------------------------------------------------------ arrays
def volume_from_array(
    array: Any,
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    orientation: str | Sequence[str] | None = None,
    rescale: tuple[float, float] | None = None,
    source: str = "array",
) -> CTVolume:
    """Wrap a numpy array or torch tensor of HU (or stored values with ``rescale``) as a canonical :class:`CTVolume`.

    The orientation of the input's own index order is given by ``affine`` (4 x 4 voxel -> RAS+ mm, nibabel
    convention: ``nib.load(p).get_fdata()`` with ``img.affine`` works), or by ``orientation`` (nibabel axis codes
    such as ``"LPS"`` for a CT-RATE ``(i, j, k)`` array) together with ``spacing``; with neither, the array is taken
    to be canonical ``(z, y, x)`` already (``"SPL"``). ``spacing`` is in mm in the input's own axis order.
    """
    if hasattr(array, "detach"):  # torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except Exception:
            raise ValueError(f"{source}: expected an array or tensor, got {type(array).__name__}.") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{source}: unsupported array dtype {array.dtype} for a CT volume.")
    shape = _squeeze_to_3d(array.shape, source)
    array = array.reshape(shape)
    if affine is not None:
        if orientation is not None:
            raise ValueError(f"{source}: give either affine or orientation, not both.")
        affine = np.asarray(affine, dtype=np.float64)
        if spacing is not None and affine.shape == (4, 4):
            if not np.allclose(_spacing_from_affine(affine), _check_spacing(spacing, source), rtol=1e-3):
                raise ValueError(f"{source}: spacing {tuple(spacing)} disagrees with the affine's voxel sizes.")
    else:
        if spacing is None:
            raise ValueError(f"{source}: give the voxel spacing in mm (spacing=) or an affine for array inputs.")
        spacing = _check_spacing(spacing, source)
        codes = tuple(orientation) if orientation is not None else CANONICAL_AXCODES
        if len(codes) != 3 or set(codes) - set("LRAPSI"):
            raise ValueError(
                f"{source}: orientation must be three nibabel axis codes such as 'LPS', got {orientation!r}."
            )
        try:
            affine = _diagonal_affine(codes, spacing)
        except Exception:
            raise ValueError(f"{source}: orientation {orientation!r} does not name three distinct axes.") from None
    array, canon_affine = _to_canonical(array, affine, source)
    slope, intercept = (1.0, 0.0) if rescale is None else (float(rescale[0]), float(rescale[1]))
    if array.dtype.kind == "f":
        array = _float_to_float32(array, slope, intercept)
        slope, intercept = 1.0, 0.0
    return CTVolume(
        array=array,
        spacing_mm=_spacing_from_affine(canon_affine),
        affine=canon_affine,
        slope=slope,
        intercept=intercept,
        source=source,
    )


# ------------------------------------------------------------------------------------------------------- dispatcher
def load_ct(
    ct: Any,
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    orientation: str | Sequence[str] | None = None,
    rescale: tuple[float, float] | None = None,
    max_voxels: int | None = None,
    validate: bool = True,
    max_hu: float = DEFAULT_MAX_HU,
    source: str | None = None,
) -> CTVolume:
    """Load any supported CT input into a canonical :class:`CTVolume`.

    Args:
        ct: a :class:`CTVolume`; a path to a ``.nii``/``.nii.gz`` file; a folder holding one DICOM series; or a
            3-D numpy array / torch tensor (then ``spacing`` with optional ``orientation``, or ``affine``).
        spacing, affine, orientation, rescale: see :func:`volume_from_array` (arrays) and :func:`read_nifti`
            (files: overrides of the header); a :class:`CTVolume` already carries them and ignores these.
        max_voxels: memory budget, checked before the data is decoded or copied.
        validate: check the values are plausible HU (:func:`check_hu`).
        max_hu: upper HU bound of that check.
        source: a name used in error messages for array inputs.

    Raises:
        ValueError: bad input (empty/truncated file, 2-D image, values not HU, NaN, over budget, ...), naming it.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(ct, CTVolume):
        volume = ct
        _check_budget(volume.shape, max_voxels, volume.source)
    elif isinstance(ct, (str, os.PathLike)):
        path = Path(ct)
        if path.is_dir():
            volume = read_dicom_series(path, spacing=spacing, rescale=rescale, max_voxels=max_voxels)
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder.")
        elif _is_nifti_path(path):
            volume = read_nifti(path, affine=affine, spacing=spacing, rescale=rescale, max_voxels=max_voxels)
        elif path.suffix.lower() in (".dcm", ".dicom", ""):
            raise ValueError(
                f"{path}: a single DICOM file is a 2-D image, not a CT volume; pass the folder of the whole series."
            )
        else:
            raise ValueError(f"{path}: unsupported CT file type; use .nii, .nii.gz or a DICOM series folder.")
    else:
        name = source or "array input"
        shape = getattr(ct, "shape", None)
        if shape is not None:
            _check_budget(shape, max_voxels, name)
        volume = volume_from_array(
            ct, spacing=spacing, affine=affine, orientation=orientation, rescale=rescale, source=name
        )
    if validate:
        check_hu(volume, max_hu=max_hu)
    return volume
