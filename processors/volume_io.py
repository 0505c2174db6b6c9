"""Loading chest CT volumes (NIfTI, DICOM series, arrays) into one explicit orientation: :func:`load_ct`.

Every loader returns a :class:`CTVolume` (:mod:`.ct_volume`: the canonical orientation ``array[z, y, x]``, CT-RATE's,
and why) from a NIfTI file (:mod:`.nifti_io`), a DICOM series folder (:mod:`.dicom_series`) or an array. The names of
those modules are re-exported here, the import path of the first release.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .ct_volume import (
    CANONICAL_AXCODES,
    CT_RATE_NIFTI_AXCODES,
    DEFAULT_MAX_HU,
    PLAUSIBLE_SPACING_MM,
    CTVolume,
    check_budget,
    check_hu,
    check_spacing_plausible,
    ct_rate_affine,
    volume_from_array,
)
from .dicom_series import read_dicom_series
from .nifti_io import NIFTI_TRAILING_MARGIN, decode_nifti, is_nifti_path, read_nifti

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
        check_budget(volume.shape, max_voxels, volume.source)
    elif isinstance(ct, (str, os.PathLike)):
        path = Path(ct)
        if path.is_dir():
            volume = read_dicom_series(path, spacing=spacing, rescale=rescale, max_voxels=max_voxels)
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder.")
        elif is_nifti_path(path):
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
            check_budget(shape, max_voxels, name)
        volume = volume_from_array(
            ct, spacing=spacing, affine=affine, orientation=orientation, rescale=rescale, source=name
        )
    if validate:
        check_hu(volume, max_hu=max_hu)
    return volume
