"""Reading chest radiographs (CXR) from files, PIL images, DICOM datasets, NumPy arrays and torch tensors.

Everything is turned into one :class:`Radiograph`: a 2-D float32 array in [0, 1] where 0 is the least attenuating
structure of the image (air, drawn black) and 1 the most attenuating (bone, drawn white), in the project's single
orientation convention.

Orientation convention (shared with the CT-to-CXR simulation)
------------------------------------------------------------
Radiological display of a frontal (PA) view: the patient faces the viewer, so the **patient's right is on the image's
left** (low column index), and the **head is up** (low row index). This is how PA radiographs are read and stored by
PACS, so real CXRs need no manual mirroring. For DICOM files the processor checks ``PatientOrientation`` (0020,0020):
its first value names the patient direction of increasing column index (``L`` in this convention) and its second the
direction of increasing row index (``F``, feet); an image stored as ``R`` or ``H`` is flipped to the convention
(``reorient=True``). PNG/JPEG files, PIL images and arrays carry no such tag and are taken to be in the convention.

Intensity conventions
---------------------
- DICOM: stored values -> Modality LUT (``ModalityLUTSequence`` or ``RescaleSlope``/``RescaleIntercept``) -> VOI LUT
  (``VOILUTSequence`` or the first ``WindowCenter``/``WindowWidth``) -> min-max to [0, 1] -> inverted when
  ``PhotometricInterpretation`` is ``MONOCHROME1`` (where the smallest value is drawn white).
- Colour inputs (RGB, RGBA, palette, YBR DICOM) become grey by ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B); an
  alpha channel is ignored. A greyscale radiograph saved as RGB has R = G = B, so this returns that grey exactly.
- Every image is min-max scaled on its own (after windowing), so the bit depth (8, 12, 15, 16 bit) does not matter.
- JPEG / TIFF / PNG files (and PIL images) with an EXIF ``Orientation`` tag are turned upright first
  (``PIL.ImageOps.exif_transpose``), as every photo viewer shows them.

Limits (checked from the header, before the pixels are decoded; see docs/limits_and_checks.md)
--------------------------------------------------------------------------------------------
- ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS` = 36 M pixels, e.g. 6000 x 6000; the largest digital chest
  detectors give about 4300 x 4300 = 18.5 M): a larger image is refused with a ``ValueError`` naming the file and
  its size, before PIL or pydicom decodes it (the peak memory of an image at the limit: docs/limits_and_checks.md).
- ``max_aspect_ratio`` (default :data:`DEFAULT_MAX_ASPECT_RATIO` = 4): a radiograph longer than 4 times its width
  (or wider than 4 times its height) is refused with its size; real chest radiographs are between about 1:1.5 and
  1.5:1. ``None`` switches either check off.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_PIXELS",
    "DICOM_SUFFIXES",
    "FRONTAL_VIEW_POSITIONS",
    "LATERAL_VIEW_POSITIONS",
    "OBLIQUE_VIEW_POSITIONS",
    "Radiograph",
    "check_image_size",
    "is_dicom_file",
    "load_radiograph",
    "min_max_scale",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
#: DICOM ``ViewPosition`` (0018,5101) values of a frontal chest view, which the CXR encoder expects.
FRONTAL_VIEW_POSITIONS = frozenset({"PA", "AP"})
#: ``ViewPosition`` values of a lateral view (DICOM defined terms ``LL``/``RL`` and spellings seen in the wild).
LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"})
#: ``ViewPosition`` values of an oblique view.
OBLIQUE_VIEW_POSITIONS = frozenset({"RLO", "LLO", "RAO", "LAO", "RPO", "LPO"})

#: Largest image (pixels) decoded by default: 36 M (6000 x 6000), about twice the largest chest detectors.
DEFAULT_MAX_PIXELS = 36_000_000
#: Largest ratio of the long to the short side accepted by default (real chest radiographs: about 1.5 at most).
DEFAULT_MAX_ASPECT_RATIO = 4.0

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Radiograph:
    """A loaded chest radiograph.

    Attributes:
        pixels: ``(H, W)`` float32 in [0, 1]; 0 = least attenuating (air, black), 1 = most attenuating (bone, white);
            patient's right on the image's left, head up.
        source: the file name, or a description of the in-memory input (used in error messages and warnings).
        view: ``"frontal"``, ``"lateral"``, ``"oblique"`` or ``"unknown"`` (from DICOM tags; ``"unknown"`` for
            inputs without them).
        view_position: the DICOM ``ViewPosition`` as stored (``None`` when absent).
    """

    pixels: np.ndarray
    source: str
    view: str = "unknown"
    view_position: str | None = None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has a DICOM suffix or the ``DICM`` magic bytes at offset 128 (DICOM Part 10)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def min_max_scale(array: np.ndarray, source: str = "image") -> np.ndarray:
    """Scale ``array`` to [0, 1] (its minimum to 0, its maximum to 1) as float32; a constant image becomes all 0.

    Raises:
        ValueError: for an empty array, NaN or infinite values.
    """
    array = np.asarray(array)
    if array.size == 0:
        raise ValueError(f"{source}: the image is empty (shape {tuple(array.shape)}).")
    values = array.astype(np.float64, copy=False)
    if np.isnan(values).any():
        raise ValueError(f"{source}: the image contains NaN values.")
    if not np.isfinite(values).all():
        raise ValueError(f"{source}: the image contains infinite values.")
    low, high = float(values.min()), float(values.max())
    span = high - low
    if not math.isfinite(span):
        # Values near the float64 limits: bring them to a safe range first so that max - min does not overflow.
        values = values / max(abs(low), abs(high))
        low, high = float(values.min()), float(values.max())
        span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / span).astype(np.float32)


def check_image_size(
    height: int,
    width: int,
    source: str,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    channels: int = 1,
) -> None:
    """Refuse an image of ``height x width`` pixels (``channels`` samples each) that exceeds the decoded-size budget
    ``max_pixels`` or whose long side is more than ``max_aspect_ratio`` times its short side.

    Called with the sizes a file's header promises, before the pixels are decoded; ``None`` disables a check.

    Raises:
        ValueError: naming ``source`` and giving the numbers.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"{source}: the image is empty ({height} x {width} pixels).")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"{source}: {height} x {width} = {height * width:,} pixels (x {channels} channel(s)) is more than the "
            f"decoded-size budget max_pixels={max_pixels:,} (about 6000 x 6000; real chest radiographs are at most "
            "about 4300 x 4300)."
        )
    if max_aspect_ratio is not None:
        ratio = max(height, width) / min(height, width)
        if ratio > max_aspect_ratio:
            raise ValueError(
                f"{source}: {height} x {width} pixels has an aspect ratio of {ratio:.1f}:1, beyond the "
                f"{max_aspect_ratio:g}:1 any chest radiograph has (max_aspect_ratio)."
            )


def _to_grey(array: np.ndarray, source: str) -> np.ndarray:
    """``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in {1, 3, 4} -> ``(H, W)`` float64 (alpha dropped)."""
    if array.ndim == 2:
        grey = array
    elif array.ndim == 3:
        if array.shape[-1] in (1, 3, 4):
            channels_last = array
        elif array.shape[0] in (1, 3, 4):
            channels_last = np.moveaxis(array, 0, -1)
        else:
            raise ValueError(
                f"{source}: a 3-D image must have 1, 3 or 4 channels first or last, got shape {tuple(array.shape)} "
                "(pass a list of 2-D arrays for a batch)."
            )
        if channels_last.shape[-1] == 1:
            grey = channels_last[..., 0]
        else:
            # Channel by channel: peak two (H, W) work arrays instead of an (H, W, 3) float64 copy. float64 keeps
            # the luma of 32-bit integer and float64 inputs exact; smaller types are exact in float32.
            work = np.float64 if channels_last.dtype.itemsize > 2 else np.float32
            grey = channels_last[..., 0].astype(work) * work(_LUMA[0])
            for channel in (1, 2):
                grey += channels_last[..., channel].astype(work) * work(_LUMA[channel])
    else:
        raise ValueError(
            f"{source}: expected a 2-D (H, W) or 3-D (H, W, C) / (C, H, W) image, got {array.ndim} dimensions "
            f"(shape {tuple(array.shape)})."
        )
    if 0 in grey.shape:
        raise ValueError(f"{source}: the image is empty (shape {tuple(array.shape)}).")
    return grey


def _array_from_numeric(array: Any, source: str, limits: tuple[Any, Any] = (None, None)) -> np.ndarray:
    """A NumPy array (or anything ``np.asarray`` turns into a real-valued array) -> grey float32 in [0, 1];
    ``limits`` = ``(max_pixels, max_aspect_ratio)`` checked on the grey image's size."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{source}: unsupported pixel type {array.dtype} (expected integers, floats or booleans).")
    grey = _to_grey(array, source)
    check_image_size(grey.shape[0], grey.shape[1], source, *limits)
    return min_max_scale(grey, source)


def _exif_upright(image: Any) -> Any:
    """``image`` turned as its EXIF ``Orientation`` tag (0x0112) says (a new image), or ``image`` without one."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block: show the pixels as stored, as viewers do
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _from_pil(image: Any, source: str, limits: tuple[Any, Any] = (None, None)) -> np.ndarray:
    """A PIL image of any mode (1, L, LA, P, PA, I;16*, I, F, RGB, RGBA, CMYK, YCbCr, ...) -> grey in [0, 1]
    (``limits``: ``(max_pixels, max_aspect_ratio)``, checked before any conversion)."""
    check_image_size(image.size[1], image.size[0], source, *limits, channels=len(image.getbands()))
    image = _exif_upright(image)
    mode = image.mode
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "LA":
        image = image.getchannel("L")
    elif mode.startswith("I;16"):
        # 16-bit greyscale PNG/TIFF; np.asarray gives uint16 (with the byte order handled by PIL).
        image = image.convert("I")
    array = np.asarray(image)
    return _array_from_numeric(array, source)


def _view_of(ds: Any) -> tuple[str, str | None]:
    """Classify the DICOM view as frontal / lateral / oblique / unknown from ``ViewPosition``, the
    ``ViewCodeSequence`` meaning and ``PatientOrientation`` (rows running anterior-posterior mean a lateral view)."""
    position = ds.get("ViewPosition", None)
    position = str(position).strip().upper() if position not in (None, "") else None
    if position in LATERAL_VIEW_POSITIONS:
        return "lateral", position
    if position in OBLIQUE_VIEW_POSITIONS:
        return "oblique", position
    if position in FRONTAL_VIEW_POSITIONS:
        return "frontal", position
    codes = ds.get("ViewCodeSequence", None)
    if codes:
        meaning = str(getattr(codes[0], "CodeMeaning", "")).lower()
        if "lateral" in meaning:
            return "lateral", position
        if "oblique" in meaning:
            return "oblique", position
        if "postero-anterior" in meaning or "antero-posterior" in meaning or "frontal" in meaning:
            return "frontal", position
    orientation = _patient_orientation(ds)
    if orientation is not None and orientation[0][:1] in ("A", "P"):
        return "lateral", position
    return "unknown", position


def _patient_orientation(ds: Any) -> tuple[str, str] | None:
    """``PatientOrientation`` (0020,0020) as two upper-case strings, or ``None`` when absent or malformed."""
    value = ds.get("PatientOrientation", None)
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, column = (str(v).strip().upper() for v in value)
    if not row or not column:
        return None
    return row, column


def _from_dicom(
    ds: Any,
    source: str,
    apply_voi_lut: bool,
    reorient: bool,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> Radiograph:
    from pydicom.pixels import apply_color_lut, apply_modality_lut
    from pydicom.pixels import apply_voi_lut as _apply_voi_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError(f"{source}: the DICOM file has no pixel data.")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _MONOCHROME + _COLOUR:
        raise ValueError(
            f"{source}: unsupported DICOM PhotometricInterpretation {photometric or '(missing)'!r}; expected one of "
            f"{', '.join(_MONOCHROME + _COLOUR)}."
        )
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError) as error:
        message = f"{source}: invalid DICOM NumberOfFrames / Rows / Columns / SamplesPerPixel ({error})."
        raise ValueError(message) from None
    if frames != 1:
        raise ValueError(f"{source}: a multi-frame DICOM ({frames} frames) is not a single radiograph.")
    check_image_size(rows, columns, source, max_pixels, max_aspect_ratio, samples)
    try:
        # YBR colour spaces are converted to RGB by pydicom (as_rgb defaults to True).
        array = ds.pixel_array
    except Exception as error:  # pydicom raises many types (ValueError, RuntimeError, NotImplementedError, ...)
        raise ValueError(f"{source}: cannot decode the DICOM pixel data ({type(error).__name__}: {error}).") from error

    try:
        if photometric == "PALETTE COLOR":
            array = apply_color_lut(array, ds)
        elif photometric in _MONOCHROME:
            array = apply_modality_lut(array, ds)
            has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
            if apply_voi_lut and has_voi:
                array = _apply_voi_lut(array, ds)
    except Exception as error:
        message = f"{source}: invalid DICOM lookup table or window ({type(error).__name__}: {error})."
        raise ValueError(message) from error

    pixels = min_max_scale(_to_grey(np.asarray(array), source), source)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels

    if reorient:
        orientation = _patient_orientation(ds)
        if orientation is not None:
            row, column = orientation
            # First value: patient direction of increasing column index, which must point to the patient's left.
            if row.startswith("R"):
                pixels = pixels[:, ::-1]
            # Second value: patient direction of increasing row index, which must point to the feet.
            if column.startswith("H"):
                pixels = pixels[::-1, :]
    view, position = _view_of(ds)
    return Radiograph(np.ascontiguousarray(pixels, dtype=np.float32), source, view, position)


def _read_dicom(path: Path) -> Any:
    """``pydicom.dcmread`` of the file's bytes held in memory: a corrupt element length (up to 4 GB) then reads at most
    what the file holds, where reading the open file would allocate a buffer of the claimed length first (a 2 KB
    corrupt file took 1.4 GB that way)."""
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
        ds.filename = str(path)
        return ds
    except InvalidDicomError as error:
        raise ValueError(f"{path}: not a DICOM file ({error}).") from error
    except Exception as error:  # truncated headers raise EOFError, OSError, struct.error, ...
        raise ValueError(f"{path}: cannot read the DICOM file ({type(error).__name__}: {error}).") from error


def _read_image_file(
    path: Path,
    source: str,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    image = None
    try:
        image = Image.open(path)  # reads the header only
    except UnidentifiedImageError:
        pass  # reported below
    except Image.DecompressionBombError as error:  # the header promises over twice PIL's MAX_IMAGE_PIXELS
        raise ValueError(
            f"{source}: the header promises more pixels than the decoded-size budget max_pixels="
            f"{max_pixels or 0:,} ({error})"
        ) from None
    except Exception as error:  # truncated headers, ...
        raise ValueError(f"{source}: cannot decode the image file ({type(error).__name__}: {error}).") from error
    if image is not None:
        width, height = image.size
        try:
            check_image_size(height, width, source, max_pixels, max_aspect_ratio, len(image.getbands()))
        except ValueError:
            image.close()
            raise
    try:
        if image is None:
            image = Image.open(path)
        image.load()  # decode now so that truncated files fail here, with the file name
    except UnidentifiedImageError as error:
        raise ValueError(
            f"{source}: unsupported or corrupt image file (not a format PIL can read, nor a DICOM file)."
        ) from error
    except Exception as error:  # corrupt files raise OSError, EOFError, SyntaxError, ValueError, struct.error, ...
        if image is not None:
            image.close()
        raise ValueError(f"{source}: cannot decode the image file ({type(error).__name__}: {error}).") from error
    try:
        return _from_pil(image, source)
    finally:
        image.close()


def load_radiograph(
    image: Any,
    *,
    apply_voi_lut: bool = True,
    reorient: bool = True,
    source: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> Radiograph:
    """Load one chest radiograph as a :class:`Radiograph` (``(H, W)`` float32 in [0, 1], bone bright, patient's
    right on the image's left, head up; EXIF orientation applied).

    Args:
        image: a path (``str`` / ``os.PathLike``) to a PNG, JPEG, TIFF, ... file or a DICOM file (recognised by its
            suffix or its ``DICM`` magic), a ``PIL.Image.Image`` (8 or 16 bit, grey, RGB, RGBA, palette, ...), a
            ``pydicom.Dataset``, or a NumPy array / torch tensor of shape ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``
            with C in {1, 3, 4}.
        apply_voi_lut: apply the DICOM VOI LUT / window (the view the modality intended radiologists to see).
        reorient: flip DICOM images whose ``PatientOrientation`` differs from the convention (see module docstring).
        source: name used in messages (defaults to the file name or the input type).
        max_pixels: decoded-size budget in pixels (default 36 M), checked from the file header before decoding
            (``None``: no limit; see the module docstring).
        max_aspect_ratio: largest long-to-short side ratio (default 4; ``None``: no limit).

    Raises:
        FileNotFoundError: when a path does not exist.
        ValueError: naming the input, for empty, truncated, corrupt or unsupported files, unsupported DICOM
            photometric interpretations, NaN / infinite values, arrays with the wrong number of dimensions, images
            over the size budget or with an aspect ratio beyond ``max_aspect_ratio``.
    """
    limits = (max_pixels, max_aspect_ratio)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file.")
        if path.is_dir():
            raise ValueError(f"{path}: is a folder, not an image file.")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: the file is empty.")
        if is_dicom_file(path):
            return _from_dicom(_read_dicom(path), source or str(path), apply_voi_lut, reorient, *limits)
        return Radiograph(_read_image_file(path, source or str(path), *limits), source or str(path))

    module = type(image).__module__
    type_name = f"{module}.{type(image).__name__}"
    if module.startswith("pydicom."):
        from pydicom import Dataset

        if isinstance(image, Dataset):
            name = source or str(getattr(image, "filename", None) or "<pydicom Dataset>")
            return _from_dicom(image, name, apply_voi_lut, reorient, *limits)
    if module.startswith("PIL."):
        from PIL import Image

        if isinstance(image, Image.Image):
            return Radiograph(_from_pil(image, source or "<PIL image>", limits), source or "<PIL image>")
    if module.startswith("torch"):
        import torch

        if isinstance(image, torch.Tensor):
            name = source or "<torch tensor>"
            tensor = image.detach().cpu()
            if tensor.is_complex():
                raise ValueError(f"{name}: unsupported pixel type {tensor.dtype}.")
            # bfloat16 and float16 go through float32 (NumPy has no bfloat16).
            array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
            return Radiograph(_array_from_numeric(array, name, limits), name)
    if isinstance(image, np.ndarray):
        return Radiograph(_array_from_numeric(image, source or "<numpy array>", limits), source or "<numpy array>")
    raise ValueError(
        f"{source or type_name}: unsupported input type {type_name}; expected a file path, PIL image, pydicom Dataset, "
        "NumPy array or torch tensor."
    )
