"""CT volume loading (NIfTI, DICOM series, arrays) in CT-RATE's orientation and X2CTCLIPVolumeProcessor.

The oracle for the processor is CT-CLIP's original preprocessing as re-implemented in
``benchmarks/bench_volume_processor.py`` (nibabel float64, transpose, float64 trilinear resampling, clip, crop/pad).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x2ctclip.processors import X2CTCLIPVolumeProcessor, ct_rate_affine, load_ct
from x2ctclip.processors import nifti_io, volume_io


REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    path = REPO / "benchmarks" / "bench_volume_processor.py"
    spec = importlib.util.spec_from_file_location("bench_volume_processor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ctclip_reference_preprocess = _bench_module().ctclip_reference_preprocess


# ------------------------------------------------------------------------------------------------------ fixtures
def chest_phantom_hu(shape_xyz=(70, 64, 30), seed=0) -> np.ndarray:
    """A small chest-like HU volume in CT-RATE's nibabel index order (x, y, z): air, body, lungs, a spine."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_xyz
    x = np.linspace(-1, 1, nx)[:, None, None]
    y = np.linspace(-1, 1, ny)[None, :, None]
    z = np.linspace(0, 1, nz)[None, None, :]
    hu = np.full(shape_xyz, -1024.0)
    hu[np.broadcast_to((x / 0.9) ** 2 + (y / 0.7) ** 2 < 1, shape_xyz)] = 40
    lungs = (((np.abs(x) - 0.45) / 0.3) ** 2 + (y / 0.5) ** 2 < 1) & (z < 0.9)
    hu[np.broadcast_to(lungs, shape_xyz)] = -850
    hu[np.broadcast_to((x / 0.12) ** 2 + ((y - 0.5) / 0.12) ** 2 < 1, shape_xyz)] = 900
    hu[np.broadcast_to((x / 0.05) ** 2 + ((y - 0.5) / 0.05) ** 2 < 1, shape_xyz)] = 1600  # above the window
    hu += rng.normal(0, 20, shape_xyz)
    return np.round(hu).astype(np.int16)


def save_ct_rate_style(path: Path, hu_xyz: np.ndarray, spacing_xyz, blank_header: bool) -> None:
    """CT-RATE's layout: (x, y, z) index order with axis codes L, P, S; stored = HU + 1024.

    ``blank_header``: the first release (no orientation, no rescale in the header: slope/intercept from the CSV);
    otherwise a fixed-header file (LPS affine in qform/sform, scl_slope = 1, scl_inter = -1024).
    """
    stored = (hu_xyz.astype(np.int32) + 1024).astype(np.int16)
    if blank_header:  # no affine: nibabel writes qform_code = sform_code = 0 and only the voxel sizes
        img = nib.Nifti1Image(stored, None)
        img.header.set_zooms(spacing_xyz)
    else:
        img = nib.Nifti1Image(stored, np.diag([-spacing_xyz[0], -spacing_xyz[1], spacing_xyz[2], 1.0]))
        img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(path))


CT_IOP = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]  # a scanner that stores the image rotated by 180 degrees


def write_dicom_series(folder: Path, stored_kji: np.ndarray, iop, first_ipp, pixel_spacing, dz, slope, intercept):
    """Write single-frame CT slices (slice k, row j, column i) with pydicom, in shuffled file order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    series, study = generate_uid(), generate_uid()
    order = list(range(stored_kji.shape[0]))
    random.Random(0).shuffle(order)
    for n, k in enumerate(order):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = n + 1  # deliberately unrelated to the position
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(first_ipp) + k * dz * normal]
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = float(dz)
        ds.Rows, ds.Columns = stored_kji.shape[1], stored_kji.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored_kji[k], dtype="<i2").tobytes()
        ds.save_as(folder / f"IM{n:04d}_{uid[-6:]}", enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file")


def dicom_affine_ras(iop, first_ipp, pixel_spacing, dz) -> np.ndarray:
    """NIfTI affine (RAS+) of the (column i, row j, slice k) grid of a DICOM series."""
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]
    lps[:3, 1] = col_dir * pixel_spacing[0]
    lps[:3, 2] = np.cross(row_dir, col_dir) * dz
    lps[:3, 3] = first_ipp
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.fixture(scope="module")
def ct_rate_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctrate") / "valid_1_a_1.nii.gz"
    save_ct_rate_style(path, chest_phantom_hu(), (0.8, 0.8, 2.0), blank_header=True)
    return path


def small_processor(**kwargs) -> X2CTCLIPVolumeProcessor:
    kwargs.setdefault("target_shape", (24, 64, 56))
    return X2CTCLIPVolumeProcessor(**kwargs)


# ----------------------------------------------------------------------------------------------- orientation
def test_ct_rate_file_is_read_without_reorientation(tmp_path):
    hu = chest_phantom_hu()
    path = tmp_path / "fixed_header.nii.gz"
    save_ct_rate_style(path, hu, (0.8, 0.7, 2.0), blank_header=False)
    volume = load_ct(path)
    assert volume.array.dtype == np.int16 and volume.array.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(volume.hu(), hu.T.astype(np.float32))  # data.T: no flip, no permutation
    assert volume.spacing_mm == pytest.approx((2.0, 0.7, 0.8))
    assert nib.aff2axcodes(volume.affine) == volume_io.CANONICAL_AXCODES == ("S", "P", "L")
    assert (volume.slope, volume.intercept) == (1.0, -1024.0)
    # the first CT-RATE release (blank header) is read the same way, with a warning and the CSV rescale
    blank = tmp_path / "blank_header.nii.gz"
    save_ct_rate_style(blank, hu, (0.8, 0.7, 2.0), blank_header=True)
    with pytest.warns(UserWarning, match="no orientation"):
        old = load_ct(blank, rescale=(1.0, -1024.0))
    np.testing.assert_array_equal(old.hu(), volume.hu())
    # ... and the metadata spacings give the same affine through ct_rate_affine
    explicit = load_ct(blank, rescale=(1.0, -1024.0), affine=ct_rate_affine(0.8, 2.0))
    np.testing.assert_array_equal(explicit.array, old.array)
    # written back, the volume is again a CT-RATE-layout file
    nib.save(volume.to_nifti(), str(tmp_path / "written.nii.gz"))
    written = nib.load(str(tmp_path / "written.nii.gz"))
    np.testing.assert_array_equal(written.get_fdata(), hu.astype(np.float64))
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")


def test_anatomical_directions_of_the_canonical_axes(tmp_path):
    """A marker at the patient's left, posterior, superior corner lands at the largest (x, y, z) indices."""
    hu = np.full((20, 18, 16), -1000, dtype=np.int16)  # identity affine: i -> R, j -> A, k -> S (RAS)
    hu[1, 2, 14] = 1000  # small i = patient's left, small j = posterior, large k = superior
    path = tmp_path / "ras.nii"
    nib.save(nib.Nifti1Image(hu, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    volume = load_ct(path)
    z, y, x = np.unravel_index(np.argmax(volume.array), volume.shape)
    assert (z, y, x) == (14, 18 - 1 - 2, 20 - 1 - 1)
    assert nib.aff2axcodes(volume.affine) == ("S", "P", "L")
    world = volume.affine @ np.array([z, y, x, 1.0])
    np.testing.assert_allclose(world[:3], [1.0, 2.0, 14.0])  # the marker stays where it was in the world


def test_dicom_series_gives_the_same_tensor_as_its_nifti_conversion(tmp_path):
    hu_xyz = chest_phantom_hu((40, 36, 12), seed=1)
    stored_kji = (hu_xyz.T.astype(np.int32) + 1024).astype(np.int16)  # (slice, row, column)
    stored_kji[3, 5, 7] = 3000  # a marker: slice 3, row 5, column 7
    iop, ipp, ps, dz = CT_IOP, np.array([120.0, 95.0, -300.0]), (0.7, 0.8), 2.5
    write_dicom_series(tmp_path / "series", stored_kji, iop, ipp, ps, dz, slope=1.0, intercept=-1024.0)
    nifti = tmp_path / "converted.nii.gz"
    img = nib.Nifti1Image(stored_kji.transpose(2, 1, 0), dicom_affine_ras(iop, ipp, ps, dz))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(nifti))
    # and the same data resampled to nibabel's canonical RAS layout
    ras = tmp_path / "ras.nii.gz"
    nib.save(nib.as_closest_canonical(img), str(ras))

    from_dicom = load_ct(tmp_path / "series")
    from_nifti = load_ct(nifti)
    from_ras = load_ct(ras)
    for other in (from_nifti, from_ras):
        np.testing.assert_array_equal(from_dicom.hu(), other.hu())
        np.testing.assert_allclose(from_dicom.affine, other.affine, atol=1e-4)
        assert from_dicom.spacing_mm == pytest.approx(other.spacing_mm)
    assert from_dicom.spacing_mm == pytest.approx((2.5, 0.7, 0.8))
    # the marker's world position (LPS) decides where it lands: IOP flips rows and columns, slices go superior
    marker_lps = ipp + 7 * 0.8 * np.array(iop[:3]) + 5 * 0.7 * np.array(iop[3:]) + 3 * dz * np.array([0, 0, 1.0])
    z, y, x = np.unravel_index(np.argmax(from_dicom.array), from_dicom.shape)
    world_ras = from_dicom.affine @ np.array([z, y, x, 1.0])
    np.testing.assert_allclose(world_ras[:3], marker_lps * [-1, -1, 1], atol=1e-4)
    assert (z, y, x) == (3, 36 - 1 - 5, 40 - 1 - 7)

    processor = small_processor(target_shape=(16, 40, 40))
    out = [processor(src)["ct_values"] for src in (tmp_path / "series", nifti, ras)]
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)


def test_array_inputs_with_affine_or_orientation_match_the_file(ct_rate_file):
    reference = load_ct(ct_rate_file, rescale=(1.0, -1024.0), affine=ct_rate_affine(0.8, 2.0))
    data = np.asarray(nib.load(str(ct_rate_file)).dataobj).astype(np.int16) - 1024
    by_affine = load_ct(data, affine=ct_rate_affine(0.8, 2.0))
    by_codes = load_ct(torch.from_numpy(data), spacing=(0.8, 0.8, 2.0), orientation="LPS")
    canonical = load_ct(np.ascontiguousarray(data.T), spacing=(2.0, 0.8, 0.8))
    for volume in (by_affine, by_codes, canonical):
        np.testing.assert_array_equal(volume.hu(), reference.hu())
        assert volume.spacing_mm == pytest.approx(reference.spacing_mm)


def test_gzip_fallback_without_isal_gives_the_same_volume(ct_rate_file, monkeypatch):
    fast = load_ct(ct_rate_file, rescale=(1.0, -1024.0), affine=ct_rate_affine(0.8, 2.0))
    monkeypatch.setattr(nifti_io, "_igzip", None)  # the NIfTI decoder falls back to the standard gzip
    slow = load_ct(ct_rate_file, rescale=(1.0, -1024.0), affine=ct_rate_affine(0.8, 2.0))
    np.testing.assert_array_equal(fast.array, slow.array)


# ------------------------------------------------------------------------------------ CT-CLIP equivalence
@pytest.mark.parametrize("clip_first", [False, True], ids=["training-order", "inference-order"])
@pytest.mark.parametrize("target_shape", [(24, 64, 56), (45, 81, 67), (31, 30, 77)], ids=["crop", "pad", "mixed"])
def test_matches_original_ctclip_preprocessing(ct_rate_file, clip_first, target_shape):
    expected = ctclip_reference_preprocess(
        ct_rate_file, 1.0, -1024.0, 0.8, 2.0, clip_first=clip_first, target_shape=target_shape
    )
    processor = small_processor(target_shape=target_shape, clip_before_resample=clip_first)
    got = processor(ct_rate_file, rescale=(1.0, -1024.0), affine=ct_rate_affine(0.8, 2.0))["ct_values"]
    assert got.shape == (1, 1, *target_shape) and got.dtype == torch.float32
    assert (got - expected[None]).abs().max().item() < 1e-3
    assert got.min() >= -1 and got.max() <= 1


def test_matches_original_on_a_fixed_header_file(tmp_path):
    path = tmp_path / "fixed.nii.gz"
    save_ct_rate_style(path, chest_phantom_hu((50, 44, 20), seed=3), (0.7, 0.7, 1.25), blank_header=False)
    expected = ctclip_reference_preprocess(path, 1.0, 0.0, 0.7, 1.25, target_shape=(20, 48, 48))
    got = small_processor(target_shape=(20, 48, 48))(path)["ct_values"]
    assert (got[0] - expected).abs().max().item() < 1e-3


def test_defaults_are_ctclip_and_saved(tmp_path):
    processor = X2CTCLIPVolumeProcessor()
    assert processor.target_spacing == [1.5, 0.75, 0.75] and processor.target_shape == [240, 480, 480]
    assert (processor.hu_min, processor.hu_max, processor.hu_scale, processor.pad_value) == (-1000, 1000, 1000, -1)
    custom = X2CTCLIPVolumeProcessor(
        hu_min=-900, hu_max=500, hu_scale=500, target_spacing=(2, 1, 1), target_shape=(8, 16, 16), pad_value=-2,
        clip_before_resample=True, max_voxels=123456, validate_hu=False, max_hu=4000,
    )
    custom.save_pretrained(tmp_path)
    loaded = X2CTCLIPVolumeProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == custom.to_dict()
    for key in ("hu_min", "hu_max", "hu_scale", "target_spacing", "target_shape", "pad_value", "clip_before_resample",
                "max_voxels", "validate_hu", "max_hu"):
        assert getattr(loaded, key) == getattr(custom, key), key


def test_batches_and_return_types(ct_rate_file):
    processor = small_processor()
    kwargs = dict(rescale=(1.0, -1024.0), affine=ct_rate_affine(0.8, 2.0))
    single = processor(ct_rate_file, **kwargs)["ct_values"]
    volume = load_ct(ct_rate_file, **kwargs)
    # per-item spacing/affine: the file gets CT-RATE's affine, the canonical array of stored values its spacing
    batch = processor(
        [ct_rate_file, volume, torch.from_numpy(volume.array.copy())],
        spacing=[None, None, volume.spacing_mm],
        affine=[ct_rate_affine(0.8, 2.0), None, None],
        rescale=(1.0, -1024.0),
        progress=False,
    )["ct_values"]
    assert batch.shape == (3, 1, 24, 64, 56)
    for item in batch:
        torch.testing.assert_close(item, single[0])
    stacked = torch.from_numpy(np.stack([volume.hu(), volume.hu()]))
    as_np = processor(stacked, spacing=volume.spacing_mm, return_tensors="np")["ct_values"]
    assert isinstance(as_np, np.ndarray) and as_np.shape == (2, 1, 24, 64, 56)
    np.testing.assert_allclose(as_np[0], single[0].numpy(), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resampling_on_gpu_matches_cpu(ct_rate_file):
    processor = small_processor()
    kwargs = dict(rescale=(1.0, -1024.0), affine=ct_rate_affine(0.8, 2.0))
    cpu = processor(ct_rate_file, **kwargs)["ct_values"]
    gpu = processor(ct_rate_file, device="cuda", **kwargs)["ct_values"]
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape_zyx, spacing_zxy", [((13, 17, 11), (2.0, 0.7, 0.8)), ((5, 9, 12), (0.6, 1.9, 0.3))])
@pytest.mark.parametrize("clip", [None, (24.0, 1500.5)])
def test_separable_cpu_resampling_equals_trilinear_interpolate(shape_zyx, spacing_zxy, clip):
    from x2ctclip.processors.image_processing_volume import resample_trilinear, resample_trilinear_cpu

    array = np.random.default_rng(0).integers(-1000, 3000, size=shape_zyx).astype(np.int16)
    got = resample_trilinear_cpu(array, spacing_zxy, (1.5, 0.75, 0.75), clip=clip)
    x = torch.from_numpy(array.astype(np.float32))
    if clip is not None:
        x = x.clamp(*clip)
    expected = resample_trilinear(x.transpose(1, 2), spacing_zxy, (1.5, 0.75, 0.75))
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)  # HU units: float32 rounding only


# ----------------------------------------------------------------------------------------------- bad inputs
def _bad_inputs(tmp: Path, ct_rate_file: Path) -> dict:
    cases = {}
    empty = tmp / "empty.nii.gz"
    empty.write_bytes(b"")
    cases["empty"] = (empty, {}, "empty")
    raw = ct_rate_file.read_bytes()
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    cases["truncated gz"] = (truncated, {}, "truncated|corrupt")
    full = gzip.decompress(raw)
    short = tmp / "short.nii"
    short.write_bytes(full[: len(full) - 1000])
    cases["truncated nii"] = (short, {}, "truncated")
    garbage = tmp / "garbage.nii.gz"
    garbage.write_bytes(os.urandom(5000))
    cases["not gzip"] = (garbage, {}, "NIfTI|gzip|corrupt|header")
    flat = tmp / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 1), np.int16) - 1000, np.eye(4)), str(flat))
    cases["2-D nifti"] = (flat, {}, "2-D image")
    unit = tmp / "normalised.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 8)).astype(np.float32), np.eye(4)), str(unit))
    cases["values in [0, 1]"] = (unit, {}, "normalised")
    cases["max > 5000 HU"] = (ct_rate_file, {"rescale": (10.0, 0.0)}, "not Hounsfield|above")
    cases["no intercept applied"] = (ct_rate_file, {"rescale": (1.0, 0.0)}, "not HU|air")
    nan = tmp / "nan.nii"
    data = np.full((12, 12, 6), -1000, np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    cases["NaN"] = (nan, {}, "NaN")
    cases["over budget"] = (ct_rate_file, {"max_voxels": 10_000}, "memory budget")
    dcm = tmp / "one.dcm"
    write_dicom_series(tmp / "one_slice", np.zeros((1, 8, 8), np.int16), CT_IOP, [0, 0, 0], (1, 1), 1, 1.0, -1024.0)
    next((tmp / "one_slice").glob("IM*")).rename(dcm)
    cases["single DICOM file"] = (dcm, {}, "2-D image")
    write_dicom_series(tmp / "single", np.zeros((1, 8, 8), np.int16), CT_IOP, [0, 0, 0], (1, 1), 1, 1.0, -1024.0)
    cases["one-slice series"] = (tmp / "single", {}, "single slice")
    (tmp / "no_dicom").mkdir()
    (tmp / "no_dicom" / "a.txt").write_text("x")
    cases["folder without DICOM"] = (tmp / "no_dicom", {}, "no DICOM")
    return cases


BAD_CASES = [
    "empty", "truncated gz", "truncated nii", "not gzip", "2-D nifti", "values in [0, 1]", "max > 5000 HU",
    "no intercept applied", "NaN", "over budget", "single DICOM file", "one-slice series", "folder without DICOM",
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, ct_rate_file):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), ct_rate_file)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_file_inputs_raise_value_error_naming_the_file(bad_inputs, case, ct_rate_file):
    path, kwargs, pattern = bad_inputs[case]
    folder = path.parent if path.is_file() else path
    before = sorted(p.name for p in folder.iterdir())
    processor = small_processor(max_voxels=kwargs.pop("max_voxels", 600_000_000))
    if path == ct_rate_file and "affine" not in kwargs:
        kwargs["affine"] = ct_rate_affine(0.8, 2.0)
    with pytest.raises(ValueError, match=pattern) as info:
        processor(path, **kwargs)
    assert str(path) in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_budget_is_checked_before_decoding(ct_rate_file, monkeypatch):
    read = nifti_io._read_exactly  # the NIfTI decoder's own chunked reader

    def header_only(fh, buffer):  # the decoder may read the header, nothing more
        if len(buffer) > nifti_io._HEADER_BYTES:
            raise AssertionError("decoded before the budget check")
        return read(fh, buffer)

    monkeypatch.setattr(nifti_io, "_read_exactly", header_only)
    with pytest.raises(ValueError, match="memory budget"):
        small_processor(max_voxels=1000)(ct_rate_file, affine=ct_rate_affine(0.8, 2.0))


def test_resampled_grid_over_budget_is_refused(ct_rate_file):
    processor = small_processor(max_voxels=2_000_000)
    with pytest.raises(ValueError, match="resampling.*memory budget"):
        processor(ct_rate_file, rescale=(1.0, -1024.0), spacing=(20.0, 8.0, 8.0), affine=ct_rate_affine(0.8, 2.0))


@pytest.mark.parametrize(
    "array, kwargs, pattern",
    [
        (np.zeros((64, 64), np.int16) - 1000, {"spacing": (1, 1)}, "2-D image"),
        (np.zeros((64, 64, 1), np.int16) - 1000, {"spacing": (1, 1, 1)}, "2-D image"),
        (np.zeros((8, 8, 8), np.int16) - 1000, {}, "spacing"),
        (np.zeros((8, 8, 8), np.int16) - 1000, {"spacing": (1, 0, 1)}, "positive"),
        (np.zeros((8, 8, 8), np.int16) - 1000, {"spacing": (1, 1, 1), "orientation": "LPX"}, "axis codes"),
        (np.zeros((8, 8, 8), np.int16) - 1000, {"spacing": (1, 1, 1), "orientation": "LLS"}, "distinct|axes"),
        (np.zeros((8, 8, 8), np.int16) - 1000, {"affine": np.zeros((4, 4))}, "singular"),
        (np.array(["a"] * 8).reshape(2, 2, 2), {"spacing": (1, 1, 1)}, "dtype"),
        (np.zeros((2, 2, 2, 2, 2), np.float32), {"spacing": (1, 1, 1)}, "3-D"),
    ],
)
def test_bad_array_inputs(array, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        small_processor()(array, **kwargs)


# -------------------------------------------------------------------------------------------------- fuzzing
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(*[st.integers(1, 12)] * 3),
    spacing=st.tuples(*[st.floats(0.05, 8.0)] * 3),
    low=st.integers(-3000, 3000),
    span=st.integers(0, 6000),
    dtype=st.sampled_from(["int16", "float32", "float64", "uint8"]),
    special=st.sampled_from([None, "nan", "inf"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_volume_processor(shape, spacing, low, span, dtype, special, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(low, low + span + 1, size=shape).astype(dtype)
    if special and np.dtype(dtype).kind == "f":
        values.flat[0] = np.nan if special == "nan" else np.inf
    processor = X2CTCLIPVolumeProcessor(target_shape=(6, 9, 8), max_voxels=300_000)
    try:
        out = processor(values, spacing=spacing)["ct_values"]
    except ValueError:
        return
    assert out.shape == (1, 1, 6, 9, 8) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= -1.0 and out.max() <= 1.0


@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(*[st.integers(2, 10)] * 3), xy_spacing=st.floats(0.3, 4.0), z_spacing=st.floats(0.3, 6.0),
       target=st.tuples(*[st.integers(1, 12)] * 3), seed=st.integers(0, 1000))
def test_fuzz_against_reference_on_ct_like_arrays(tmp_path_factory, shape, xy_spacing, z_spacing, target, seed):
    """Random small CT-like volumes: the processor equals the original procedure."""
    spacing = (xy_spacing, xy_spacing, z_spacing)
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1100, 1600, size=shape).astype(np.int16)
    hu.flat[0] = -1000
    path = tmp_path_factory.mktemp("fuzz") / "v.nii.gz"
    img = nib.Nifti1Image(hu, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]))
    nib.save(img, str(path))
    processor = X2CTCLIPVolumeProcessor(target_shape=target, target_spacing=(1.5, 0.75, 0.75))
    try:  # spacing as CT-CLIP took it, from the metadata CSV in float64 (the header holds float32)
        got = processor(path, spacing=(z_spacing, xy_spacing, xy_spacing))["ct_values"][0, 0]
    except ValueError:
        return
    assert got.shape == target
    sizes = [int(n * (s / t)) for n, s, t in zip(shape, spacing, (0.75, 0.75, 1.5))]
    if min(sizes) == 0:  # the original crashes on an empty grid; the processor keeps one voxel there
        return
    expected = ctclip_reference_preprocess(path, 1.0, 0.0, xy_spacing, z_spacing, target_shape=target)
    assert (got - expected).abs().max().item() < 1e-3
