"""The CT volume of this package (:class:`CTVolume`), its one explicit orientation, and the geometry helpers the
loaders share (:mod:`.volume_io` dispatches; :mod:`.nifti_io` and :mod:`.dicom_series` read files).

Every loader returns a :class:`CTVolume` whose ``array`` is C-contiguous and indexed ``array[z, y, x]`` in the
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

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

__all__ = [
    "CANONICAL_AXCODES",
    "CT_RATE_NIFTI_AXCODES",
    "DEFAULT_MAX_HU",
    "PLAUSIBLE_SPACING_MM",
    "CTVolume",
    "canonical_volume",
    "check_hu",
    "check_spacing_plausible",
    "ct_rate_affine",
    "volume_from_array",
]

#: nibabel axis codes (direction each index increases towards) of ``CTVolume.array`` axes ``(z, y, x)``.
CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")
#: nibabel axis codes of a CT-RATE NIfTI file's own index order ``(i, j, k)``; ``data.T`` is then canonical.
CT_RATE_NIFTI_AXCODES: tuple[str, str, str] = ("L", "P", "S")
#: Largest plausible CT value in HU after rescaling (12-bit CT tops out at 3071 HU); beyond it the data is not HU.
DEFAULT_MAX_HU: float = 5000.0
#: Plausible CT voxel spacing in mm (``(min, max)``): header spacing outside it (or zero / NaN) is refused unless
#: the caller passes ``spacing``. Clinical CT: 0.2-1 mm in-plane, 0.5-10 mm between slices; the upper bound leaves
#: room for coarse downsampled volumes (the tiny synthetic sets: up to about 45 mm), not for 150 mm "voxels".
PLAUSIBLE_SPACING_MM: tuple[float, float] = (0.05, 60.0)


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
        self.spacing_mm = validated_spacing(self.spacing_mm, self.source)
        if self.affine is None:
            self.affine = diagonal_affine(CANONICAL_AXCODES, self.spacing_mm)
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


def validated_spacing(spacing: Any, source: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise ValueError(f"{source}: spacing must be three numbers in mm, got {spacing!r}.") from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{source}: spacing must be three positive finite numbers in mm, got {spacing!r}.")
    return values  # type: ignore[return-value]


def diagonal_affine(axcodes: Sequence[str], spacing: Sequence[float]) -> np.ndarray:
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
    return diagonal_affine(CT_RATE_NIFTI_AXCODES, (xy_spacing, xy_spacing, z_spacing))


def to_canonical(data: np.ndarray, affine: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
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


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def with_spacing(affine: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Rescale the columns of ``affine`` to the given spacing, keeping directions and origin."""
    out = affine.copy()
    norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out[:3, :3] = affine[:3, :3] / norms * np.asarray(spacing, dtype=np.float64)
    return out


def check_budget(shape: Sequence[int], max_voxels: int | None, source: str) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.int64))
    if max_voxels is not None and n > max_voxels:
        raise ValueError(
            f"{source}: volume of shape {tuple(int(s) for s in shape)} has {n:,} voxels, more than the memory budget "
            f"max_voxels={max_voxels:,}; refusing before loading it (raise max_voxels if the machine can hold it)."
        )


def squeeze_to_3d(shape: Sequence[int], source: str) -> tuple[int, int, int]:
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


def check_spacing_plausible(spacing: Sequence[float], source: str, what: str = "header") -> None:
    """Raise ``ValueError`` unless every spacing (mm) is finite and inside :data:`PLAUSIBLE_SPACING_MM`."""
    lo, hi = PLAUSIBLE_SPACING_MM
    values = [float(v) for v in spacing]
    if not all(math.isfinite(v) and lo <= v <= hi for v in values):
        raise ValueError(
            f"{source}: the {what} gives a voxel spacing of {tuple(round(v, 6) for v in values)} mm, outside the "
            f"plausible CT range {lo:g}-{hi:g} mm (zero, NaN or absurd); pass spacing=(z, y, x) mm to override."
        )


def float_to_float32(array: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    out = np.array(array, dtype=np.float32, order="C")  # a copy: frombuffer views are read-only
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def canonical_volume(data: np.ndarray, affine: np.ndarray, source: str, *, slope: float = 1.0, intercept: float = 0.0,
                     spacing: Sequence[float] | None = None) -> CTVolume:
    """The :class:`CTVolume` of ``data`` (any index order, described by ``affine``): canonical orientation, float
    data rescaled to float32 HU, and ``spacing`` (mm, canonical ``(z, y, x)``) replacing the affine's when given."""
    array, canon_affine = to_canonical(data, affine, source)
    if array.dtype.kind == "f":
        array = float_to_float32(array, slope, intercept)
        slope, intercept = 1.0, 0.0
    if spacing is not None:
        canon_affine = with_spacing(canon_affine, validated_spacing(spacing, source))
    return CTVolume(
        array=array,
        spacing_mm=spacing_from_affine(canon_affine),
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
    shape = squeeze_to_3d(array.shape, source)
    array = array.reshape(shape)
    if affine is not None:
        if orientation is not None:
            raise ValueError(f"{source}: give either affine or orientation, not both.")
        affine = np.asarray(affine, dtype=np.float64)
        if spacing is not None and affine.shape == (4, 4):
            if not np.allclose(spacing_from_affine(affine), validated_spacing(spacing, source), rtol=1e-3):
                raise ValueError(f"{source}: spacing {tuple(spacing)} disagrees with the affine's voxel sizes.")
    else:
        if spacing is None:
            raise ValueError(f"{source}: give the voxel spacing in mm (spacing=) or an affine for array inputs.")
        spacing = validated_spacing(spacing, source)
        codes = tuple(orientation) if orientation is not None else CANONICAL_AXCODES
        if len(codes) != 3 or set(codes) - set("LRAPSI"):
            raise ValueError(
                f"{source}: orientation must be three nibabel axis codes such as 'LPS', got {orientation!r}."
            )
        try:
            affine = diagonal_affine(codes, spacing)
        except Exception:
            raise ValueError(f"{source}: orientation {orientation!r} does not name three distinct axes.") from None
    slope, intercept = (1.0, 0.0) if rescale is None else (float(rescale[0]), float(rescale[1]))
    return canonical_volume(array, affine, source, slope=slope, intercept=intercept)
