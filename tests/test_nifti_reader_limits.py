"""The one NIfTI decoder (``x2ctclip.processors.volume_io.decode_nifti``) on hostile and implausible files: it
decodes at most what the header promises, refuses trailing data, zero / NaN / absurd spacing and invalid scale
factors with one ``ValueError`` naming the file (never nibabel's ``HeaderDataError``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zlib

import nibabel as nib
import numpy as np
import pytest

from x2ctclip.processors import volume_io as V


def _nifti(shape=(8, 8, 6), zooms=(0.8, 0.8, 2.0), oriented=True, slope=1.0, inter=0.0) -> bytes:
    data = np.full(shape, -1000, np.int16)
    data[2:6, 2:6, :] = 40
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms(zooms)
    if oriented:
        affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    raw = bytearray(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    # scl_slope / scl_inter written into the block directly: nibabel's setters refuse the hostile values
    import struct

    struct.pack_into("<ff", raw, 112, slope, inter)
    return bytes(raw)


def test_reads_plain_and_gzip_bytes_and_streams(tmp_path):
    raw = _nifti()
    for payload in (raw, zlib.compress(raw, wbits=31)):
        volume = V.decode_nifti(payload, "mem.nii")
        assert volume.shape == (6, 8, 8) and volume.spacing_mm == pytest.approx((2.0, 0.8, 0.8))
        assert V.decode_nifti(io.BytesIO(payload), "mem.nii").hu().min() == -1000
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(zlib.compress(raw, wbits=31))
    np.testing.assert_array_equal(V.read_nifti(path).array, V.decode_nifti(raw, "x").array)


def test_trailing_data_beyond_the_margin_is_refused(tmp_path):
    path = tmp_path / "long.nii"
    path.write_bytes(_nifti() + b"\0" * 1000)  # a little padding is tolerated
    V.read_nifti(path)
    path.write_bytes(_nifti() + b"\0" * (V.NIFTI_TRAILING_MARGIN + 10))
    with pytest.raises(ValueError, match=r"long.nii: more than 65,536 bytes of data after the"):
        V.read_nifti(path)


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "short.nii.gz"
    path.write_bytes(zlib.compress(_nifti()[:-100], wbits=31))
    with pytest.raises(ValueError, match="short.nii.gz: file is truncated"):
        V.read_nifti(path)


@pytest.mark.slow
def test_gzip_bomb_stays_under_a_gigabyte(tmp_path):
    # A valid small NIfTI followed by 2 GB of zeros in the same gzip stream (a ~2 MB file).
    path = tmp_path / "bomb.nii.gz"
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"\0" * (64 << 20)
    with open(path, "wb") as fh:
        fh.write(comp.compress(_nifti()))
        for _ in range(32):
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())
    assert path.stat().st_size < 16_000_000  # ~9 MB
    code = (
        "import json, resource, sys\n"
        "from x2ctclip.processors.volume_io import load_ct\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_ct(sys.argv[1]); error = ''\n"
        "except ValueError as e:\n    error = str(e)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'growth_kb': after - before, 'error': error}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True,
                                    text=True, timeout=120).stdout)
    assert "bomb.nii.gz: more than 65,536 bytes of data after" in out["error"]
    assert out["growth_kb"] < 1_000_000  # < 1 GB of RSS growth (measured: a few MB)


@pytest.mark.parametrize("zooms", [(0.0, 0.8, 2.0), (float("nan"), 0.8, 2.0), (0.8, 0.8, 300.0)])
@pytest.mark.parametrize("oriented", [True, False])
def test_zero_nan_or_absurd_spacing_is_an_error(zooms, oriented):
    raw = _nifti(zooms=(1.0, 1.0, 1.0), oriented=False)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    header["pixdim"][1:4] = zooms
    if oriented:
        header["qform_code"] = 1  # qform from pixdim and the quaternion
    raw = header.binaryblock + raw[348:]
    with pytest.raises(ValueError, match=r"ct.nii: the .* voxel spacing of .* outside the plausible CT range"):
        V.decode_nifti(raw, "ct.nii", blank_header="quiet")
    # The caller's spacing is taken instead (blank header: the caller's word).
    if not oriented:
        volume = V.decode_nifti(raw, "ct.nii", spacing=(2.0, 0.8, 0.8), blank_header="quiet")
        assert volume.spacing_mm == pytest.approx((2.0, 0.8, 0.8))


@pytest.mark.parametrize("slope, inter", [(float("inf"), 0.0), (1.0, float("inf")), (0.0, -1024.0),
                                          (float("nan"), -1024.0), (1.0, float("-inf"))])
def test_invalid_scale_factors_are_errors(tmp_path, slope, inter):
    path = tmp_path / "scaled.nii"
    path.write_bytes(_nifti(slope=slope, inter=inter))
    with pytest.raises(ValueError, match=r"scaled.nii: invalid NIfTI scale factors"):
        V.load_ct(path)


@pytest.mark.parametrize("slope, inter", [(0.0, 0.0), (float("nan"), float("nan")), (1.0, float("nan"))])
def test_unset_scale_factors_mean_no_scaling(slope, inter):
    volume = V.decode_nifti(_nifti(slope=slope, inter=inter), "ct.nii")
    assert (volume.slope, volume.intercept) == (1.0, 0.0)


def test_blank_header_with_metadata_spacing_and_rescale():
    raw = _nifti(zooms=(1.0, 1.0, 1.0), oriented=False)
    volume = V.decode_nifti(raw, "ct.nii", blank_header_spacing=(2.5, 0.7, 0.7), blank_header_rescale=(1.0, -1024.0))
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.7)) and volume.intercept == -1024.0
    oriented = V.decode_nifti(_nifti(), "ct.nii", blank_header_spacing=(2.5, 0.7, 0.7),
                              blank_header_rescale=(1.0, -1024.0))
    assert oriented.intercept == 0.0 and oriented.spacing_mm == pytest.approx((2.0, 0.8, 0.8))  # header wins
    with pytest.raises(ValueError, match="ct.nii: the NIfTI header has no orientation"):
        V.decode_nifti(raw, "ct.nii", blank_header="error")


def _series(folder, n=6, skip=(), slope=1.0):
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).parent))
    from test_volume_processor import CT_IOP, write_dicom_series

    stored = np.full((n, 8, 8), 24, np.int16)
    stored[:, 3:5, 3:5] = 1064
    write_dicom_series(folder, stored, CT_IOP, [0.0, 0.0, 0.0], (0.8, 0.8), 2.0, slope=slope, intercept=-1024.0)
    for k in skip:  # delete the slice at position k (files are named by a shuffled order: find it by position)
        import pydicom

        for path in folder.glob("IM*"):
            if abs(float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]) - 2.0 * k) < 1e-6:
                path.unlink()
    return folder


def test_dicom_missing_slices_are_an_error_unless_the_gap_rule_is_chosen(tmp_path):
    folder = _series(tmp_path / "gappy", skip=(3,))
    with pytest.raises(ValueError, match=r"gappy: slice spacing varies from 2 to 4 mm .*missing slices"):
        V.read_dicom_series(folder)
    with pytest.warns(UserWarning, match="missing slices"):
        volume = V.read_dicom_series(folder, slice_gaps="median")
    assert volume.shape[0] == 5 and volume.spacing_mm[0] == pytest.approx(2.0)
    assert V.read_dicom_series(_series(tmp_path / "whole")).shape[0] == 6


def test_dicom_rescale_slope_that_is_not_a_number_names_the_file(tmp_path):
    import pydicom

    folder = _series(tmp_path / "bad")
    victim = sorted(folder.glob("IM*"))[2]
    ds = pydicom.dcmread(victim)
    ds.add_new(0x00281053, "LO", "x")  # RescaleSlope; pydicom refuses to write "x" as a DS, a careless tool did not
    ds.save_as(victim)
    with pytest.raises(ValueError, match=rf"{victim.name}: RescaleSlope is 'x', not a number"):
        V.load_ct(folder)


def test_dicom_series_slice_claiming_gigabytes_is_refused_with_bounded_memory(tmp_path):
    """A CT series whose last slice claims 4 GB of pixel data (one edited length field): the reader parses slices from
    their bytes in memory, so the claim costs no allocation (an open file's read of the claimed length would allocate
    it first); the slice then reads as what the file holds, or is refused naming it."""
    import struct
    import tracemalloc

    import pydicom
    from pydicom.data import get_testdata_file

    from x2ctclip.processors.volume_io import read_dicom_series

    source = get_testdata_file("CT_small.dcm", download=False)
    if source is None:
        pytest.skip("needs pydicom-data")
    folder = tmp_path / "series"
    folder.mkdir()
    for index in range(3):
        ds = pydicom.dcmread(source)
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 5.0 * index]
        ds.InstanceNumber = index + 1
        ds.save_as(folder / f"slice{index}.dcm")
    victim = folder / "slice2.dcm"
    raw = bytearray(victim.read_bytes())
    at = raw.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    assert at > 0
    vr = bytes(raw[at + 4 : at + 6])
    if vr in (b"OW", b"OB"):  # explicit VR: 2 reserved bytes, then a 4-byte length
        struct.pack_into("<I", raw, at + 8, 0xFFFFFFF0)
    else:  # implicit VR: a 4-byte length right after the tag
        struct.pack_into("<I", raw, at + 4, 0xFFFFFFF0)
    victim.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        try:
            volume = read_dicom_series(folder)
        except ValueError as error:
            assert "slice2.dcm" in str(error), error
        else:
            assert volume.shape[0] == 3
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB traced"
