"""What the demo accepts as an upload, checked before and while a file is read (no Gradio, no model).

- :func:`sniff_file_type`: what a file is, from its first bytes;
- :func:`load_radiograph_upload`: a chest X-ray (PNG, JPEG, DICOM) -> the loaded radiograph and the checks that
  failed; sizes and sides are refused from the header before any pixel is decoded;
- :func:`load_ct_upload`: a chest CT (NIfTI, ``.nii.gz``, or a zip of one DICOM series) -> the volume and the checks
  that failed; zip members are extracted under generated names with their bytes counted (zip and gzip bombs stop
  before they fill memory or disk).

Limits are in :class:`Limits`; a file that cannot be analysed at all raises :class:`InputError`, whose text is the
message for the person who uploaded it; a check that failed on a file that can be read is an :class:`Issue`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError

from x2ctclip.processors import load_ct, load_radiograph

try:  # isal's gzip reader is several times faster; it is a dependency of x2ctclip, but the standard library works too
    from isal import igzip as _gzip
except ImportError:
    _gzip = gzip

#: Radiographs whose sides differ more than this are refused from the header, before decoding (no real one does).
MAX_ASPECT = 4.0
#: A zip member compressed more than this ratio is refused before extraction (DICOM compresses about 2-10x).
MAX_ZIP_RATIO = 200
# Modalities that are certainly not a chest radiograph (others, e.g. OT or SC secondary captures, are not judged).
OTHER_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "US", "MG", "XA", "RF", "IO", "PX", "ES", "XC", "OP", "SM"})
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "RIB", "HEART", "MEDIASTINUM", "TORSO")


# ---------------------------------------------------------------------------------------------------------- errors
class InputError(ValueError):
    """An upload the demo refuses (wrong type, corrupt, empty, too large); ``str(error)`` is the message to show."""


@dataclass(frozen=True)
class Issue:
    """A failed input check. ``code`` is stable (tests and API users match on it); ``message`` is for people."""

    code: str
    message: str


@dataclass(frozen=True)
class Limits:
    """Upload limits. Sizes in bytes (MB = 10**6 bytes), pixels and voxels as counts.

    Attributes:
        max_image_bytes: largest radiograph file (default 50 MB).
        max_image_pixels: largest radiograph in pixels, checked on the header before decoding (default 100 MP).
        min_image_side: smallest radiograph side in pixels.
        max_ct_bytes: largest CT upload, NIfTI or zip (default 500 MB); the server-wide upload limit is the same.
        max_ct_voxels: largest CT in voxels, checked on headers before decoding (default 200 M: 512 x 512 x 760).
        max_zip_members: most files in a DICOM zip.
        max_zip_bytes: most bytes a DICOM zip may expand to (counted while extracting, not taken from its header).
    """

    max_image_bytes: int = 50 * 10**6
    max_image_pixels: int = 100 * 10**6
    min_image_side: int = 64
    max_ct_bytes: int = 500 * 10**6
    max_ct_voxels: int = 200 * 10**6
    max_zip_members: int = 4000
    max_zip_bytes: int = 2 * 10**9

    def describe(self) -> str:
        return (
            f"radiographs up to {self.max_image_bytes / 1e6:g} MB and {self.max_image_pixels / 1e6:g} megapixels; "
            f"CTs up to {self.max_ct_bytes / 1e6:g} MB and {self.max_ct_voxels / 1e6:g} million voxels"
        )


# ------------------------------------------------------------------------------------------------- file sniffing
def sniff_file_type(path: str | os.PathLike) -> str:
    """What a file is, from its first bytes (never from its name alone): ``"dicom"``, ``"png"``, ``"jpeg"``,
    ``"nifti"`` (uncompressed), ``"gzip"``, ``"zip"``, ``"empty"`` or ``"unknown"``. A file named ``*.dcm`` without
    the DICOM preamble counts as ``"dicom"`` (old files omit it)."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(352)
    if not head:
        return "empty"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if path.suffix.lower() in (".dcm", ".dicom", ".dic"):
        return "dicom"
    return "unknown"


_TYPE_NAMES = {
    "zip": "a zip archive",
    "gzip": "a gzip file (a compressed NIfTI CT?)",
    "nifti": "a NIfTI volume",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "dicom": "a DICOM file",
    "unknown": "an unknown file type",
}


def check_upload(path: Any, max_bytes: int, what: str) -> Path:
    """The uploaded file as a :class:`Path`, refused (:class:`InputError`) when missing, empty or over ``max_bytes``
    bytes; ``what`` names the upload in the message ("radiograph", "CT")."""
    if path is None or path == "":
        raise InputError(f"No {what} was uploaded.")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The uploaded {what} could not be found on the server; please upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"The uploaded file {path.name!r} is empty (0 bytes).")
    if size > max_bytes:
        raise InputError(
            f"The uploaded file {path.name!r} is {size / 1e6:.1f} MB; the limit for a {what} is {max_bytes / 1e6:g} MB."
        )
    return path




# ------------------------------------------------------------------------------------------------- radiographs
def load_radiograph_upload(path: Any, limits: Limits) -> tuple[Any, list[Issue]]:
    """Checks and loads an uploaded radiograph -> ``(Radiograph, issues)``; raises :class:`InputError` for
    files that cannot be analysed at all."""
    path = check_upload(path, limits.max_image_bytes, "radiograph")
    kind = sniff_file_type(path)
    if kind in ("zip", "gzip", "nifti"):
        raise InputError(
            f"{path.name!r} is {_TYPE_NAMES[kind]}, not a radiograph; upload CT volumes (NIfTI or a zip of a DICOM "
            "series) in the CT tab."
        )
    if kind not in ("png", "jpeg", "dicom"):
        raise InputError(f"{path.name!r} is {_TYPE_NAMES[kind]}; upload a chest X-ray as PNG, JPEG or DICOM.")
    issues: list[Issue] = []
    if kind == "dicom":
        issues += dicom_header_issues(path, limits)
    else:
        issues += bitmap_issues(path, limits)
    try:
        radiograph = load_radiograph(str(path), source=path.name)
    except (ValueError, OSError) as error:
        raise InputError(f"{path.name!r} cannot be read as a radiograph: {error}") from None
    pixels = radiograph.pixels
    height, width = pixels.shape
    if min(height, width) < limits.min_image_side:
        raise InputError(
            f"{path.name!r} is only {width} x {height} pixels; a chest radiograph needs at least "
            f"{limits.min_image_side} pixels on each side."
        )
    if float(pixels.max()) <= float(pixels.min()):
        raise InputError(f"{path.name!r} is blank: every pixel has the same value.")
    ratio = height / width
    if not 0.6 <= ratio <= 1.6:
        issues.append(Issue("aspect_ratio", f"The image is {width} x {height} pixels (height/width {ratio:.2f}); "
                            "frontal chest radiographs are roughly square (0.6 to 1.6)."))  # fmt: skip
    if radiograph.view in ("lateral", "oblique"):
        position = f" (ViewPosition {radiograph.view_position})" if radiograph.view_position else ""
        issues.append(Issue("view", f"The DICOM tags say this is a {radiograph.view} view{position}; the model "
                            "reads frontal (PA/AP) chest radiographs only."))  # fmt: skip
    return radiograph, issues


def check_header_size(path: Path, limits: Limits, width: int, height: int) -> None:
    """Refuse from the header alone, before any pixel is decoded: too many pixels, or sides no real radiograph
    has (beyond 1:``MAX_ASPECT``; a 64 x 200000 PNG of 17 kB would otherwise decode to gigabytes)."""
    if width * height > limits.max_image_pixels:
        raise InputError(
            f"{path.name!r} is {width} x {height} = {width * height / 1e6:.0f} megapixels; the limit is "
            f"{limits.max_image_pixels / 1e6:g} megapixels."
        )
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > MAX_ASPECT:
        raise InputError(f"{path.name!r} is {width} x {height} pixels (sides 1:{ratio:.0f}); no chest radiograph "
                         f"is beyond 1:{MAX_ASPECT:g}.")  # fmt: skip


def dicom_header_issues(path: Path, limits: Limits) -> list[Issue]:
    """Checks on a DICOM radiograph's header (read without its pixels): size and sides refused as in
    :func:`check_header_size`; a Modality that is certainly not a radiograph, or a BodyPartExamined that is not the
    chest, is an :class:`Issue`."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, OSError, struct.error, ...
        raise InputError(f"{path.name!r} is not a readable DICOM file ({type(error).__name__}).") from None
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_header_size(path, limits, columns, rows)
    issues = []
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in OTHER_MODALITIES:
        issues.append(Issue("modality", f"The DICOM Modality is {modality}, not a radiograph (CR/DX): the model "
                            "reads chest X-rays only."))  # fmt: skip
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
        issues.append(Issue("body_part", f"The DICOM BodyPartExamined is {body_part}, not the chest."))
    return issues


def bitmap_issues(path: Path, limits: Limits) -> list[Issue]:
    """Checks on a PNG / JPEG: size and sides refused from the header (:func:`check_header_size`); a colour image
    (more than 5 % of a 256-px thumbnail with chroma above 0.1) is an :class:`Issue`."""
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            check_header_size(path, limits, width, height)
            if image.mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                return []
            image.draft("RGB", (512, 512))  # JPEG: decode at a reduced size, enough for a colour check
            small = image.convert("RGB")
            small.thumbnail((256, 256))
            rgb = np.asarray(small, dtype=np.float32) / 255.0
    except InputError:
        raise
    except Image.DecompressionBombError:  # PIL refuses at open beyond twice its own limit, above ours
        raise InputError(f"{path.name!r} has more pixels than PIL will decode safely; the limit is "
                         f"{limits.max_image_pixels / 1e6:g} megapixels.") from None  # fmt: skip
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputError(f"{path.name!r} is corrupt or not a readable image ({type(error).__name__}).") from None
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    coloured = float((chroma > 0.1).mean())
    if coloured > 0.05:
        return [Issue("colour", f"{coloured:.0%} of the image is coloured: this looks like a photograph or a "
                      "diagram, not a greyscale radiograph.")]  # fmt: skip
    return []


# -------------------------------------------------------------------------------------------------------- CTs
def load_ct_upload(path: Any, limits: Limits) -> tuple[Any, list[Issue]]:
    """Checks and loads an uploaded CT (NIfTI or a zip of one DICOM series) -> ``(CTVolume, issues)``."""
    path = check_upload(path, limits.max_ct_bytes, "CT")
    kind = sniff_file_type(path)
    if kind in ("png", "jpeg", "dicom"):
        raise InputError(
            f"{path.name!r} is {_TYPE_NAMES[kind]}, a 2-D image; upload radiographs in the X-ray tab, and CTs as "
            "NIfTI (.nii / .nii.gz) or a zip of the DICOM series."
        )
    if kind not in ("zip", "gzip", "nifti"):
        raise InputError(f"{path.name!r} is {_TYPE_NAMES[kind]}; upload a CT as NIfTI (.nii / .nii.gz) or a zip "
                         "of its DICOM series.")  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="x2ctclip-ct-"))
    issues: list[Issue] = []
    try:
        if kind == "zip":
            target, issues = extract_zip(path, workdir, limits)
        else:
            # load_ct tells NIfTI files by their suffix; uploads may have lost it, so link under the right name.
            target = workdir / ("volume.nii.gz" if kind == "gzip" else "volume.nii")
            os.symlink(path.resolve(), target)
        if target.name.endswith(".gz"):
            check_gunzipped_size(target, path.name, limits)
        try:
            volume = load_ct(str(target), max_voxels=limits.max_ct_voxels, source=path.name)
        except FileNotFoundError as error:
            raise InputError(f"{path.name!r}: {error}") from None
        except (ValueError, OSError, EOFError) as error:
            message = str(error).replace(str(target), path.name).replace(str(workdir), path.name)
            raise InputError(f"{path.name!r} cannot be read as a CT volume: {message}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    issues += chest_ct_issues(volume)
    return volume, issues


def check_gunzipped_size(path: Path, name: str, limits: Limits) -> None:
    """Stream-decompress a gzip file counting bytes, refusing it beyond what ``max_ct_voxels`` float64 voxels
    need: the NIfTI reader decompresses the whole stream into memory, so a small "gzip bomb" must stop here."""
    budget = limits.max_ct_voxels * 8 + (1 << 20)
    total = 0
    try:
        with _gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                total += len(chunk)
                if total > budget:
                    raise InputError(f"{name!r} decompresses to more than {budget / 1e6:,.0f} MB, beyond the CT "
                                     f"limit of {limits.max_ct_voxels / 1e6:g} million voxels.")  # fmt: skip
    except InputError:
        raise
    except (OSError, EOFError, ValueError) as error:  # BadGzipFile is an OSError; zlib errors are too
        raise InputError(f"{name!r} is a corrupt or truncated gzip file ({type(error).__name__}).") from None


def extract_zip(path: Path, workdir: Path, limits: Limits) -> tuple[Path, list[Issue]]:
    """Extract a zip of one DICOM series (or one NIfTI) into ``workdir`` under flat generated names (no member
    name is ever used as a path), counting the bytes actually written against the limit."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path.name!r} is a corrupt zip archive ({error}).") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if not members:
            raise InputError(f"{path.name!r} is an empty zip archive.")
        if len(members) > limits.max_zip_members:
            raise InputError(f"{path.name!r} holds {len(members)} files; the limit is {limits.max_zip_members}.")
        niftis = [m for m in members if m.filename.lower().endswith((".nii", ".nii.gz"))]
        if niftis:
            if len(niftis) > 1:
                raise InputError(f"{path.name!r} holds {len(niftis)} NIfTI files; upload one CT at a time.")
            members = niftis
        # Refuse from the central directory before writing a byte: the declared total beyond the limit, or a
        # member compressed beyond any DICOM / NIfTI (a zip bomb). Bytes are still counted while extracting,
        # since the declared sizes may lie.
        declared = sum(m.file_size for m in members)
        if declared > limits.max_zip_bytes:
            raise InputError(f"{path.name!r} expands to more than {limits.max_zip_bytes / 1e6:g} MB (its "
                             f"directory declares {declared / 1e6:,.0f} MB); nothing was extracted.")  # fmt: skip
        for m in members:
            if m.file_size > (1 << 20) and m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1):
                ratio = m.file_size / max(m.compress_size, 1)
                raise InputError(f"{path.name!r}: {m.filename!r} is compressed {ratio:,.0f}x (limit "
                                 f"{MAX_ZIP_RATIO}x): a zip bomb, not a CT; nothing was extracted.")  # fmt: skip
        series = workdir / "series"
        series.mkdir()
        total = 0
        for index, member in enumerate(members):
            name = "volume.nii.gz" if niftis and member.filename.lower().endswith(".gz") else (
                "volume.nii" if niftis else f"{index:06d}.dcm")  # fmt: skip
            target = (workdir if niftis else series) / name
            try:
                with archive.open(member) as source, open(target, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        total += len(chunk)
                        if total > limits.max_zip_bytes:
                            raise InputError(f"{path.name!r} expands to more than {limits.max_zip_bytes / 1e6:g} "
                                             "MB; the limit is reached.")  # fmt: skip
                        sink.write(chunk)
            except InputError:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as error:
                raise InputError(f"{path.name!r}: cannot extract {member.filename!r} ({error}).") from None
    if niftis:
        return target, []
    return series, _series_tag_issues(series)


# --------------------------------------------------------------------------------------------------- CT checks
def chest_ct_issues(volume: Any) -> list[Issue]:
    """Simple checks that a CT shows a chest: at least 120 mm of head-foot coverage and lung-density tissue
    (-950 to -500 HU) making up at least 5 % of the non-air voxels (a chest CT has 15-50 %; head CTs almost none)."""
    issues = []
    depth = volume.shape[0] * volume.spacing_mm[0]
    if depth < 120:
        issues.append(Issue("ct_extent", f"The CT covers {depth:.0f} mm head to foot; a chest CT covers about "
                            "250-400 mm."))  # fmt: skip
    step = max(1, round(max(volume.shape) / 128))  # a subsampled view is enough for a fraction
    hu = volume.array[::step, ::step, ::step].astype(np.float32) * volume.slope + volume.intercept
    tissue = hu > -950
    lung = tissue & (hu < -500)
    fraction = float(lung.sum()) / max(int(tissue.sum()), 1)
    if fraction < 0.05:
        issues.append(Issue("not_chest", f"Only {fraction:.1%} of the scanned tissue has lung density (-950 to -500 "
                            "HU); this does not look like a chest CT (a head or abdominal CT?)."))  # fmt: skip
    return issues


def _series_tag_issues(folder: Path) -> list[Issue]:
    for path in sorted(folder.iterdir()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # non-DICOM members are skipped here and by the series reader
            continue
        body_part = str(ds.get("BodyPartExamined", "") or "").upper()
        modality = str(ds.get("Modality", "") or "").upper()
        issues = []
        if modality and modality != "CT":
            issues.append(Issue("modality", f"The DICOM Modality is {modality}, not CT."))
        if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
            issues.append(Issue("body_part", f"The DICOM BodyPartExamined is {body_part}, not the chest."))
        return issues
    return []
