"""Fuzzing of hostile inputs (issue 15): image sizes and modes (real files written by PIL), image headers that promise
more than the file holds, and NIfTI header fields read through the public ``load_ct`` / ``read_nifti``.

Each example must end in a result or in a ``ValueError`` that names the file, and the memory traced while handling
it (``tracemalloc``: numpy, PIL and Python allocations) must stay under a bound derived from the documented budgets.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
import warnings
import zlib

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from x2ctclip.processors.image_io import DEFAULT_MAX_PIXELS
from x2ctclip.processors.image_processing_cxr import X2CTCLIPImageProcessor
from x2ctclip.processors.volume_io import load_ct, read_nifti

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])  # fmt: skip
MB = 1 << 20


def traced_peak(function):
    """(result or the exception raised, peak traced bytes) of ``function()``."""
    tracemalloc.start()
    try:
        try:
            outcome = function()
        except Exception as error:  # noqa: BLE001 - returned for the caller's assertions
            outcome = error
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------------------- images
MODES = ["1", "L", "LA", "P", "I;16", "I", "F", "RGB", "RGBA", "CMYK"]
FORMATS = {".png": {"1", "L", "LA", "P", "I;16", "I", "RGB", "RGBA"}, ".tif": {"1", "L", "I;16", "I", "F", "RGB",
           "RGBA", "CMYK"}, ".jpg": {"L", "RGB", "CMYK"}}  # fmt: skip


@FAST
@given(height=st.integers(1, 1200), width=st.integers(1, 1200), mode=st.sampled_from(MODES),
       suffix=st.sampled_from(sorted(FORMATS)), seed=st.integers(0, 2**16))  # fmt: skip
def test_image_sizes_and_modes_give_a_result_or_a_value_error_with_bounded_memory(tmp_path, height, width, mode,
                                                                                  suffix, seed):  # fmt: skip
    if mode not in FORMATS[suffix]:
        suffix = ".tif" if mode in FORMATS[".tif"] else ".png"
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    image = noise.convert(mode) if mode != "I;16" else noise.convert("I").point(lambda v: v * 257).convert("I;16")
    path = tmp_path / f"fuzz_{height}x{width}_{mode.replace(';', '')}{suffix}"
    image.save(path)
    outcome, peak = traced_peak(lambda: X2CTCLIPImageProcessor()(str(path), return_tensors="np")["pixel_values"])
    if isinstance(outcome, Exception):
        assert isinstance(outcome, ValueError), repr(outcome)
        assert path.name in str(outcome)
        assert max(height, width) / min(height, width) > 4, f"a plausible image was refused: {outcome}"
    else:
        assert outcome.shape == (1, 3, 224, 224) and np.isfinite(outcome).all()
    # Decoding + float work arrays: at most about 40 bytes per source pixel plus the 224 x 224 outputs.
    assert peak < 40 * height * width + 8 * MB, f"{peak / MB:.1f} MB for {height} x {width} {mode}"


@FAST
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_png_headers_promising_any_size_never_decode_past_the_budget(tmp_path, width, height):
    """A real PNG whose IHDR claims ``width x height``: refused from the header, or decoded when small."""
    path = tmp_path / "claims.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))
    outcome, peak = traced_peak(lambda: X2CTCLIPImageProcessor()(str(path)))
    if (width, height) == (1, 1):  # the file really holds a 1 x 1 image
        assert tuple(outcome["pixel_values"].shape) == (1, 3, 224, 224)
        return
    assert isinstance(outcome, ValueError) and "claims.png" in str(outcome), repr(outcome)
    if width * height > DEFAULT_MAX_PIXELS:
        assert "max_pixels" in str(outcome)
    assert peak < 40 * min(width * height, DEFAULT_MAX_PIXELS) + 8 * MB


# ------------------------------------------------------------------------------------------------- NIfTI headers
def _nifti(tmp_path, name: str, **fields) -> str:
    """A real 24 x 20 x 16 int16 chest-like CT written by nibabel, then header ``fields`` overwritten."""
    array = np.full((24, 20, 16), -1000, np.int16)
    array[4:20, 3:17, :] = 40
    array[7:11, 6:14, 2:14] = -850
    array[13:17, 6:14, 2:14] = -850
    image = nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0]))
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nib.save(image, path)
    raw = path.read_bytes()
    # nibabel rewrites pixdim, scl_* and the form codes from the affine on save: patch the stored header bytes.
    if fields:
        header_bytes = bytearray(raw[:348])
        if "sform_code" in fields:  # qform_code, sform_code (int16 at bytes 252, 254)
            struct.pack_into("<2h", header_bytes, 252, fields["sform_code"], fields["sform_code"])
        if "pixdim" in fields:
            struct.pack_into("<3f", header_bytes, 80, *[float(v) for v in fields["pixdim"]])
        if "scl_slope" in fields:
            struct.pack_into("<f", header_bytes, 112, float(fields["scl_slope"]))
        if "scl_inter" in fields:
            struct.pack_into("<f", header_bytes, 116, float(fields["scl_inter"]))
        raw = bytes(header_bytes) + raw[len(header_bytes) :]
        path.write_bytes(raw)
    return str(path)


_FLOATS = st.one_of(st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e-9, 1e4, 300.0]), st.floats(0.1, 5.0))


def _check_outcome(outcome, name: str):
    if isinstance(outcome, Exception):
        assert isinstance(outcome, (ValueError, FileNotFoundError)), repr(outcome)
        assert name in str(outcome), f"{name!r} not named: {outcome}"
        return None
    assert outcome.array.ndim == 3
    assert all(math.isfinite(s) and s > 0 for s in outcome.spacing_mm), outcome.spacing_mm
    return outcome


@FAST
@given(pixdim=st.tuples(_FLOATS, _FLOATS, _FLOATS), slope=_FLOATS, inter=st.sampled_from([0.0, -1024.0, math.nan,
       math.inf]), qs_code=st.sampled_from([0, 1]))  # fmt: skip
def test_nifti_header_fields_give_a_volume_with_real_geometry_or_a_value_error(tmp_path, pixdim, slope, inter,
                                                                               qs_code):  # fmt: skip
    path = _nifti(tmp_path, "fuzz_header.nii", pixdim=pixdim, scl_slope=slope, scl_inter=inter, sform_code=qs_code)
    outcome, peak = traced_peak(lambda: load_ct(path))
    volume = _check_outcome(outcome, "fuzz_header.nii")
    assert peak < 32 * MB, f"{peak / MB:.1f} MB"
    if volume is not None:
        # Geometry is never invented: the spacing read is the header's (or an error was raised).
        if qs_code == 0:
            assert sorted(round(s, 3) for s in volume.spacing_mm) == sorted(round(float(p), 3) for p in pixdim)
        assert math.isfinite(volume.slope) and volume.slope != 0 and math.isfinite(volume.intercept)


@FAST
@given(dims=st.tuples(st.integers(1, 4096), st.integers(1, 4096), st.integers(1, 4096)),
       datatype=st.sampled_from([2, 4, 8, 16, 64, 512, 768]))  # fmt: skip
def test_nifti_dims_larger_than_the_data_are_refused_with_bounded_memory(tmp_path, dims, datatype):
    """The header promises ``dims`` voxels of ``datatype`` while the file holds 24 x 20 x 16 int16: more than the file
    holds is a truncated-file or budget error naming the file, never an allocation of the promised size."""
    path = tmp_path / "fuzz_dims.nii"
    _nifti(tmp_path, "fuzz_dims.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<8h", raw, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<h", raw, 70, datatype)
    struct.pack_into("<h", raw, 72, {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 512: 16, 768: 32}[datatype])
    path.write_bytes(bytes(raw))
    outcome, peak = traced_peak(lambda: read_nifti(path, max_voxels=50_000_000))
    promised = math.prod(dims) * {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 512: 2, 768: 4}[datatype]
    if not isinstance(outcome, Exception):
        # Only a header that promises no more than the file holds may give a volume (of exactly that size).
        assert promised <= len(raw) - 352 and outcome.array.size == math.prod(dims), (dims, datatype)
    else:
        _check_outcome(outcome, "fuzz_dims.nii")
    assert peak < 32 * MB, f"{peak / MB:.1f} MB for dims {dims}"


def test_nifti_gzip_with_trailing_zeros_is_refused_without_decompressing_them(tmp_path):
    """A valid small .nii.gz followed by 256 MB of zeros in the same gzip stream (about 250 KB on disk)."""
    import gzip

    source = _nifti(tmp_path, "small.nii")
    payload = open(source, "rb").read()
    path = tmp_path / "trailing.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(payload)
        zeros = bytes(16 * MB)
        for _ in range(16):
            fh.write(zeros)
    outcome, peak = traced_peak(lambda: load_ct(str(path)))
    assert isinstance(outcome, ValueError) and "trailing.nii.gz" in str(outcome), repr(outcome)
    assert peak < 64 * MB, f"{peak / MB:.0f} MB"


# ------------------------------------------------------------------------------------------ DICOM radiograph headers
_DICOM_VALUES = {
    "RescaleSlope": st.sampled_from(["1", "0", "x", "inf", "nan", "-1", "1e30", ""]),
    "RescaleIntercept": st.sampled_from(["0", "-1024", "x", "nan", "1e30"]),
    "WindowCenter": st.sampled_from(["100", "0", "x", "nan", "-1e9"]),
    "WindowWidth": st.sampled_from(["200", "0", "-5", "x", "1e-9"]),
    "Rows": st.sampled_from([16, 0, 1, 17, 40000, 65535]),
    "Columns": st.sampled_from([24, 0, 1, 25, 40000, 65535]),
    "BitsStored": st.sampled_from([12, 16, 1, 0, 17]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "XYZ", ""]),
    "NumberOfFrames": st.sampled_from(["1", "2", "0", "x"]),
}


@FAST
@given(fields=st.fixed_dictionaries({}, optional=_DICOM_VALUES))
def test_dicom_radiograph_header_fields_give_a_result_or_a_value_error_naming_the_file(tmp_path, fields):
    """A real 16 x 24 CR file written by pydicom, then header fields set to hostile values (strings as DS / IS
    would hold them): a result, or a ValueError naming the file, with bounded memory."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 10) % 4096
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, generate_uid(), "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    # pydicom refuses to write an invalid DS / IS ("x"): write a unique placeholder of the same VR and overwrite
    # its bytes in the file with the hostile value, padded with spaces as DS / IS allow.
    placeholders = {}
    for i, (key, value) in enumerate(sorted(fields.items())):
        if key != "PhotometricInterpretation" and isinstance(value, str):  # the DS / IS fields
            placeholders[key] = f"{i + 1}.2345678" if key != "NumberOfFrames" else "987654321"
            setattr(ds, key, placeholders[key])
        else:
            setattr(ds, key, value)
    path = tmp_path / "fuzz_header.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    for key, placeholder in placeholders.items():
        assert raw.count(placeholder.encode()) == 1
        raw = raw.replace(placeholder.encode(), fields[key].ljust(len(placeholder)).encode())  # same length
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values it reads
        outcome, peak = traced_peak(lambda: X2CTCLIPImageProcessor()(str(path), return_tensors="np")["pixel_values"])
    if isinstance(outcome, Exception):
        assert isinstance(outcome, ValueError), repr(outcome)
        assert "fuzz_header.dcm" in str(outcome), str(outcome)
    else:
        assert outcome.shape == (1, 3, 224, 224) and np.isfinite(outcome).all()
    assert peak < 32 * MB, f"{peak / MB:.1f} MB"


def test_corrupt_dicom_element_length_does_not_allocate_what_it_claims(tmp_path):
    """A 2 KB DICOM whose value lengths were shifted by an edit (found by the fuzz test above): reading the open
    file made pydicom allocate a buffer of the claimed length (1.4 GB); reading it from memory does not."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, generate_uid(), "CR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 24, 1, "1.2345678"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = ((np.arange(16 * 24, dtype=np.uint16) * 10) % 4096).tobytes()
    path = tmp_path / "shifted.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
        path.write_bytes(path.read_bytes().replace(b"1.2345678", b"MONOCHROME1"))  # 2 bytes longer: lengths shift
        outcome, peak = traced_peak(lambda: X2CTCLIPImageProcessor()(str(path)))
    assert isinstance(outcome, ValueError) and "shifted.dcm" in str(outcome), repr(outcome)
    assert peak < 16 * MB, f"{peak / MB:.0f} MB"
