"""X2CTCLIPImageProcessor and the radiograph loader: real DICOM CXR, DICOM LUTs, file formats, errors, fuzzing."""

import copy
import warnings

import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from transformers import AutoImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from x2ctclip.processors.image_io import load_radiograph, min_max_scale
from x2ctclip.processors.image_processing_cxr import NonFrontalViewWarning, X2CTCLIPImageProcessor

# The loader's [0, 1] image, untouched; 4 x 100 test strips allowed (max_aspect_ratio=0: no aspect limit).
RAW = dict(do_resize=False, do_center_crop=False, do_normalize=False, max_aspect_ratio=0)


@pytest.fixture(scope="module")
def rg1():
    """The real computed radiograph RG1_UNCR.dcm from pydicom-data (PA chest, MONOCHROME1, 15 bit), never
    downloaded: pydicom's data manager finds it in the installed pydicom-data package."""
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("needs the pydicom-data package (RG1_UNCR.dcm), which is not installed")
    return path


@pytest.fixture(scope="module")
def rg1_small(rg1):
    """RG1 with its pixels subsampled 8x (245 x 231) for the tag-manipulation tests, all tags kept."""
    ds = pydicom.dcmread(rg1)
    small = np.ascontiguousarray(ds.pixel_array[::8, ::8])
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    return ds


def make_dicom(pixels, photometric="MONOCHROME2", **tags) -> Dataset:
    """A minimal single-frame DICOM dataset around ``pixels`` ((H, W) unsigned integers)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, generate_uid(), "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def save_dicom(ds: Dataset, path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)


# -- the real radiograph ----------------------------------------------------------------------------------------------
def test_real_monochrome1_cxr_lungs_dark_bones_bright(rg1):
    processor = X2CTCLIPImageProcessor()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFrontalViewWarning)  # RG1 is a PA view: no warning
        pixel_values = processor(rg1)["pixel_values"]
    assert isinstance(pixel_values, torch.Tensor) and pixel_values.dtype == torch.float32
    assert tuple(pixel_values.shape) == (1, 3, 224, 224)
    assert torch.equal(pixel_values[0, 0], pixel_values[0, 1]) and torch.equal(pixel_values[0, 0], pixel_values[0, 2])
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1  # mean = std = 0.5 maps [0, 1] to [-1, 1]
    grey = (pixel_values[0, 0].numpy() + 1) / 2
    right_lung, left_lung = grey[50:150, 30:85].mean(), grey[50:150, 140:195].mean()
    mediastinum_and_spine = grey[40:200, 102:122].mean()
    # Air-filled lungs are dark, the spine and mediastinum bright: a MONOCHROME1 image read without inversion would
    # give the opposite.
    assert mediastinum_and_spine > right_lung + 0.15 and mediastinum_and_spine > left_lung + 0.15


def test_real_cxr_inversion_and_window_are_applied(rg1_small):
    processor = X2CTCLIPImageProcessor(**RAW)
    as_stored = processor(rg1_small, return_tensors="np")["pixel_values"][0, 0]
    ds = copy.deepcopy(rg1_small)
    ds.PhotometricInterpretation = "MONOCHROME2"
    not_inverted = processor(ds, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(as_stored, 1 - not_inverted, atol=1e-6)
    # RG1's own window (centre 15000, width 30000) spans all its stored values (874 to 26479), so it is linear here.
    unwindowed = processor(rg1_small, apply_voi_lut=False, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(unwindowed, 1 - min_max_scale(rg1_small.pixel_array), atol=1e-6)
    np.testing.assert_allclose(unwindowed, as_stored, atol=1e-5)
    # A narrower window saturates the values outside it.
    ds.PhotometricInterpretation, ds.WindowCenter, ds.WindowWidth = "MONOCHROME1", 12000, 6000
    narrow = processor(ds, return_tensors="np")["pixel_values"][0, 0]
    saturated = np.mean((narrow == 0) | (narrow == 1))
    assert saturated > 0.2 and np.mean((as_stored == 0) | (as_stored == 1)) < 0.01


@pytest.mark.parametrize(
    "orientation, flip",
    [(["L", "F"], lambda a: a), (["R", "F"], lambda a: a[:, ::-1]), (["L", "H"], lambda a: a[::-1]),
     (["R", "H"], lambda a: a[::-1, ::-1])],
)  # fmt: skip
def test_patient_orientation_brings_images_to_the_convention(rg1_small, orientation, flip):
    processor = X2CTCLIPImageProcessor(**RAW)
    reference = processor(rg1_small, return_tensors="np")["pixel_values"][0, 0]  # stored as ["L", "F"]
    ds = copy.deepcopy(rg1_small)
    ds.PatientOrientation = orientation
    stored_flipped = copy.deepcopy(ds)
    stored_flipped.PixelData = np.ascontiguousarray(flip(rg1_small.pixel_array)).tobytes()
    np.testing.assert_array_equal(processor(stored_flipped, return_tensors="np")["pixel_values"][0, 0], reference)
    untouched = processor(stored_flipped, reorient=False, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_array_equal(untouched, flip(reference))


@pytest.mark.parametrize(
    "tags, view",
    [({"ViewPosition": "LL"}, "lateral"), ({"ViewPosition": "RL"}, "lateral"), ({"ViewPosition": "RAO"}, "oblique"),
     ({"ViewPosition": "", "PatientOrientation": ["A", "F"]}, "lateral")],
)  # fmt: skip
def test_lateral_and_oblique_views_warn(rg1_small, tmp_path, tags, view):
    ds = copy.deepcopy(rg1_small)
    for key, value in tags.items():
        setattr(ds, key, value)
    path = save_dicom(ds, tmp_path / "side.dcm")
    assert load_radiograph(path).view == view
    with pytest.warns(NonFrontalViewWarning, match=f"side.dcm.*{view} view"):
        X2CTCLIPImageProcessor()(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFrontalViewWarning)
        X2CTCLIPImageProcessor(warn_non_frontal=False)(path)


# -- DICOM lookup tables ----------------------------------------------------------------------------------------------
def test_rescale_slope_intercept_and_window():
    stored = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (4, 1))  # 4 x 100 ramp
    ds = make_dicom(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=401)
    out = X2CTCLIPImageProcessor(**RAW)(ds, return_tensors="np")["pixel_values"][0, 0]
    values = stored.astype(float) * 2 - 1000  # modality LUT: -1000 .. 980
    # DICOM linear window, centre 0, width 401: values <= -200 map to the bottom, >= 200 to the top.
    expected = np.clip((values - (0 - 0.5)) / 400 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # Without the window the ramp stays linear over the whole range.
    unwindowed = X2CTCLIPImageProcessor(**RAW, apply_voi_lut=False)(ds, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(unwindowed, (values + 1000) / 1980, atol=1e-6)


def test_modality_lut_sequence_is_applied():
    stored = np.tile(np.arange(8, dtype=np.uint16), (2, 1))
    lut = Dataset()
    lut.LUTDescriptor = [8, 0, 16]  # 8 entries, first stored value 0, 16-bit output
    lut.ModalityLUTType = "US"
    lut.LUTData = [0, 100, 200, 300, 1000, 1100, 1200, 1300]  # non-linear: a jump between 3 and 4
    ds = make_dicom(stored, ModalityLUTSequence=[lut])
    out = X2CTCLIPImageProcessor(**RAW)(ds, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(out[0], np.array(lut.LUTData) / 1300, atol=1e-6)


def test_unknown_photometric_interpretation_and_missing_pixels_raise(tmp_path):
    ds = make_dicom(np.zeros((4, 4)), photometric="MONOCHROME3")
    with pytest.raises(ValueError, match=r"bad\.dcm.*PhotometricInterpretation 'MONOCHROME3'"):
        X2CTCLIPImageProcessor()(save_dicom(ds, tmp_path / "bad.dcm"))
    del ds.PixelData
    ds.PhotometricInterpretation = "MONOCHROME2"
    with pytest.raises(ValueError, match=r"nopix\.dcm.*no pixel data"):
        X2CTCLIPImageProcessor()(save_dicom(ds, tmp_path / "nopix.dcm"))


def test_truncated_and_empty_and_non_dicom_files_raise(rg1, tmp_path):
    data = open(rg1, "rb").read()
    (tmp_path / "cut_pixels.dcm").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut_header.dcm").write_bytes(data[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.dcm").write_bytes(b"this is not a DICOM file" * 20)
    for name, problem in [("cut_pixels.dcm", "cannot"), ("cut_header.dcm", "DICOM"), ("empty.png", "empty"),
                          ("text.dcm", "DICOM")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"{name}.*{problem}"):
            X2CTCLIPImageProcessor()(str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        X2CTCLIPImageProcessor()(str(tmp_path / "missing.png"))


# -- other file formats and in-memory inputs --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    """A 60 x 80 grey test image (uint8): a bright vertical bar on a gradient, so left-right mirroring shows."""
    grey = np.tile(np.linspace(20, 120, 80), (60, 1))
    grey[:, 50:58] = 250
    return grey.astype(np.uint8)


def _values(image, **kwargs):
    return X2CTCLIPImageProcessor(**kwargs)(image, return_tensors="np")["pixel_values"]


def test_png_jpeg_pil_numpy_torch_inputs_agree(phantom, tmp_path):
    reference = _values(phantom)
    assert reference.shape == (1, 3, 224, 224) and reference.dtype == np.float32
    rgb = np.repeat(phantom[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full_like(phantom[..., None], 128)], axis=-1)
    Image.fromarray(phantom).save(tmp_path / "grey8.png")
    Image.fromarray(phantom.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # 16-bit PNG (mode I;16)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(phantom).save(tmp_path / "grey.jpg", quality=95)
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    palette = Image.fromarray(phantom)
    palette.putpalette([level for level in range(256) for _ in range(3)])  # an 8-bit palette image of grey levels
    assert palette.mode == "P"
    exact = [
        str(tmp_path / "grey8.png"), tmp_path / "grey16.png", str(tmp_path / "rgb.png"), str(tmp_path / "rgba.png"),
        Image.fromarray(phantom), palette, phantom.astype(np.float64) / 3, rgb, rgba,
        np.moveaxis(rgb, -1, 0), torch.from_numpy(phantom), torch.from_numpy(rgb).permute(2, 0, 1).half(),
    ]  # fmt: skip
    for image in exact:
        np.testing.assert_allclose(_values(image), reference, atol=2e-3, err_msg=repr(type(image)))
    np.testing.assert_allclose(_values(str(tmp_path / "grey.jpg")), reference, atol=0.1)  # lossy


def test_batches_list_and_4d(phantom):
    pixel_values = X2CTCLIPImageProcessor()([phantom, phantom.T.copy(), Image.fromarray(phantom)])["pixel_values"]
    assert tuple(pixel_values.shape) == (3, 3, 224, 224)
    stacked = X2CTCLIPImageProcessor()(torch.stack([torch.from_numpy(phantom)] * 2)[:, None])["pixel_values"]
    assert tuple(stacked.shape) == (2, 3, 224, 224)
    torch.testing.assert_close(stacked[0], pixel_values[0])


def test_resize_shortest_edge_and_center_crop_geometry():
    # A 100 x 300 image: the short side goes to 224 and the long side to int(224 * 3) = 672, then the centre 224
    # columns are kept. Marking columns 140..159 (the centre 20 of 300) must land in the centre of the crop.
    image = np.zeros((100, 300), dtype=np.float32)
    image[:, 140:160] = 1
    out = _values(image, do_normalize=False)[0, 0]
    columns = np.where(out[112] > 0.5)[0]
    assert 112 - 2 <= columns.mean() <= 112 + 2 and 40 <= len(columns) <= 50  # 20 px * 2.24 ~ 45 px
    # Smaller than the crop without resizing: zero padding around the image, as torchvision's CenterCrop.
    small = _values(np.ones((10, 10)), do_resize=False, do_normalize=False)[0, 0]
    assert small.shape == (224, 224) and small.sum() == 0  # a constant image scales to 0


def test_imagenet_normalisation_and_overrides(phantom):
    processor = X2CTCLIPImageProcessor(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    unit = _values(phantom, do_normalize=False)[0]
    out = processor(phantom, return_tensors="np")["pixel_values"][0]
    for channel in range(3):
        np.testing.assert_allclose(
            out[channel], (unit[channel] - IMAGENET_DEFAULT_MEAN[channel]) / IMAGENET_DEFAULT_STD[channel], atol=1e-5
        )
    assert processor(phantom, crop_size=32, size=32)["pixel_values"].shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="unknown argument"):
        processor(phantom, sise=32)
    with pytest.raises(ValueError, match="image_std must be positive"):
        X2CTCLIPImageProcessor(image_std=0)
    with pytest.raises(ValueError, match="crop_size must have the keys"):
        X2CTCLIPImageProcessor(crop_size={"shortest_edge": 3})


def test_save_and_load_pretrained_keeps_every_parameter(tmp_path, phantom):
    import x2ctclip.processors  # noqa: F401  (registers the classes with AutoImageProcessor)

    processor = X2CTCLIPImageProcessor(
        size=256, crop_size={"height": 240, "width": 200}, resample=3, image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD, apply_voi_lut=False, reorient=False, warn_non_frontal=False,
    )  # fmt: skip
    processor.save_pretrained(tmp_path)
    for loaded in (X2CTCLIPImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded).__name__ == "X2CTCLIPImageProcessor"
        assert loaded.to_dict() == processor.to_dict()
        expected = processor(phantom, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(loaded(phantom, return_tensors="np")["pixel_values"], expected)


# -- bad arrays and fuzzing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "array, problem",
    [(np.full((8, 8), np.nan), "NaN"), (np.array([1.0, np.inf]).reshape(1, 2), "infinite"), (np.zeros(5), "1 dim"),
     (np.zeros((2, 3, 4, 5, 6)), "5 dim"), (np.zeros((5, 6, 7)), "1, 3 or 4 channels"), (np.zeros((0, 4)), "empty"),
     (np.zeros((4, 4), dtype=complex), "pixel type"), (np.array([["a"]]), "pixel type")],
)  # fmt: skip
def test_bad_arrays_raise_value_error(array, problem):
    with pytest.raises(ValueError, match=problem):
        X2CTCLIPImageProcessor()(array)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="unsupported input type"):
        X2CTCLIPImageProcessor()(object())
    with pytest.raises(ValueError, match="empty list"):
        X2CTCLIPImageProcessor()([])


_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64, np.bool_])


@st.composite
def _arrays(draw):
    """Mostly image-like shapes ((H, W), (H, W, C), (C, H, W) with C in 1..5), plus any shape of 1 to 4 axes."""
    side = st.integers(1, 12)
    image_like = st.one_of(
        st.tuples(side, side),
        st.tuples(side, side, st.integers(1, 5)),
        st.tuples(st.integers(1, 5), side, side),
    )
    any_shape = st.integers(1, 4).flatmap(lambda n: st.tuples(*[st.integers(0, 9)] * n))
    shape = draw(st.one_of(image_like, image_like, any_shape))
    return draw(hnp.arrays(draw(_DTYPES), shape))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=_arrays())
def test_fuzz_arrays_only_value_error_and_finite_output(array):
    processor = X2CTCLIPImageProcessor()
    try:
        pixel_values = processor(array, return_tensors="np")["pixel_values"]
    except ValueError:
        return
    assert pixel_values.shape[1:] == (3, 224, 224) and pixel_values.dtype == np.float32
    assert np.isfinite(pixel_values).all()
    assert pixel_values.min() >= -1 - 1e-6 and pixel_values.max() <= 1 + 1e-6


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "I;16", "I", "F", "RGB", "RGBA", "CMYK", "YCbCr"])
def test_every_pil_mode_gives_a_finite_three_channel_image(mode, phantom):
    image = Image.fromarray(phantom)
    image = image.convert("I").point(lambda v: v * 200).convert("I;16") if mode == "I;16" else image.convert(mode)
    pixel_values = _values(image)
    assert pixel_values.shape == (1, 3, 224, 224) and np.isfinite(pixel_values).all()
    if mode not in ("1", "P", "PA", "CMYK"):  # these modes quantise or re-encode the grey levels
        np.testing.assert_allclose(pixel_values, _values(phantom), atol=0.02)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".png", ".jpg", ".dcm", ".tif", ""]))
def test_fuzz_random_files_raise_value_error_naming_the_file(tmp_path, data, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"random{suffix}"):
        X2CTCLIPImageProcessor()(str(path))


# -- hostile sizes, EXIF and plausibility (issue 15) ------------------------------------------------------------------
def _png_claiming_size(path, width: int, height: int) -> str:
    """A real 1 x 1 PNG written by PIL whose IHDR (and its CRC) is rewritten to claim ``width x height``: the
    header promises a huge image that the file does not hold (what a decompression bomb's header looks like)."""
    import struct
    import zlib

    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))  # type + 13 B
    path.write_bytes(bytes(data))
    return str(path)


def test_decoded_size_budget_is_checked_from_the_header_before_decoding(tmp_path):
    import tracemalloc

    path = _png_claiming_size(tmp_path / "bomb.png", 9000, 9000)  # 81 M pixels promised, 70 bytes on disk
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb\.png: 9000 x 9000 = 81,000,000 pixels .* max_pixels=36,000,000"):
            X2CTCLIPImageProcessor()(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB traced: the pixels were decoded"
    with pytest.raises(ValueError, match="max_pixels=1,000"):
        X2CTCLIPImageProcessor(max_pixels=1000)(np.zeros((40, 40), np.uint8))


def test_real_dicom_radiograph_over_a_budget_is_refused_before_decoding(rg1):
    with pytest.raises(ValueError, match=r"RG1_UNCR\.dcm: 1955 x 1841 = 3,599,155 pixels"):
        load_radiograph(rg1, max_pixels=1_000_000)
    assert load_radiograph(rg1).pixels.shape == (1955, 1841)


@pytest.mark.parametrize("height, width", [(8000, 1), (1, 8000), (64, 200_000), (100, 401)])
def test_aspect_ratio_beyond_4_to_1_is_refused_with_the_numbers(tmp_path, height, width):
    """A 1 x 8000 PNG (86 bytes) used to be resized to 224 x 1.8 M pixels (5.1 GB) before the crop."""
    path = tmp_path / f"strip_{height}x{width}.png"
    Image.new("L", (width, height)).save(path)
    with pytest.raises(ValueError, match=rf"strip_{height}x{width}\.png: {height} x {width} pixels has an aspect "
                                         r"ratio of [0-9.]+:1, beyond the 4:1"):  # fmt: skip
        X2CTCLIPImageProcessor()(str(path))
    assert X2CTCLIPImageProcessor(max_aspect_ratio=0)(str(path))["pixel_values"].shape == (1, 3, 224, 224)


def test_crop_before_resize_equals_resize_then_crop_and_bounds_memory():
    import tracemalloc

    rng = np.random.default_rng(0)
    for shape in [(300, 700), (700, 300), (100, 390), (50, 60), (1000, 997)]:
        pixels = rng.random(shape).astype(np.float32)
        for resample in (0, 1, 2, 3):
            full = X2CTCLIPImageProcessor.resize(pixels, {"shortest_edge": 224}, resample)
            expected = X2CTCLIPImageProcessor.center_crop(full, {"height": 224, "width": 224})
            got = X2CTCLIPImageProcessor.resize_and_crop(pixels, {"shortest_edge": 224}, {"height": 224, "width": 224},
                                                         resample)  # fmt: skip
            np.testing.assert_allclose(got, expected, atol=5e-5, err_msg=f"{shape} filter {resample}")
    # The 2240 x 8736 upscale of a 3.9:1 strip is never materialised (78 MB): the traced peak is that of a square
    # input with the same 2240 x 2240 output.
    processor = X2CTCLIPImageProcessor(size=2240, crop_size=2240)
    peaks = []
    for shape in [(60, 60), (60, 234)]:
        tracemalloc.start()
        try:
            processor(rng.random(shape).astype(np.float32), return_tensors="np")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.1, [f"{p / 1e6:.0f} MB" for p in peaks]


@pytest.mark.parametrize("orientation, turn", [(1, None), (3, Image.Transpose.ROTATE_180),
                                               (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)])
def test_jpeg_exif_orientation_is_applied(tmp_path, phantom, orientation, turn):
    """A JPEG written by PIL with an EXIF Orientation tag is read upright (as photo viewers and PACS show it)."""
    stored = Image.fromarray(phantom)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"exif{orientation}.jpg"
    stored.save(path, exif=exif, quality=100)
    upright = np.asarray(stored if turn is None else stored.transpose(turn), dtype=np.float32)
    got = load_radiograph(str(path)).pixels
    assert got.shape == upright.shape
    np.testing.assert_allclose(got, min_max_scale(upright), atol=0.05)


def test_radiograph_check_on_real_files(rg1, tmp_path):
    """Calibration files: the real PA chest CR passes (as DICOM and as PNG); pydicom-data's extremity CR, CT and
    MR slices, matplotlib's colour photo and MR head slice fail (values in docs/limits_and_checks.md)."""
    import gzip
    from pathlib import Path

    import matplotlib

    from x2ctclip.processors.plausibility import radiograph_check

    processor = X2CTCLIPImageProcessor()
    chest = processor.check_radiograph(rg1)
    assert chest.plausible and chest.modality == "CR" and chest.body_part == "CHEST" and chest.view == "frontal"
    png = tmp_path / "rg1.png"
    Image.fromarray((load_radiograph(rg1).pixels * 255).astype(np.uint8)).save(png)
    as_png = radiograph_check(str(png))
    assert as_png.plausible and as_png.modality is None and as_png.dark_fraction < 0.05, as_png
    reasons = {
        "RG3_UNCR.dcm": "BodyPartExamined EXTREMITY", "CT_small.dcm": "Modality CT",
        "J2K_pixelrep_mismatch.dcm": "Modality CT", "MR_small.dcm": "Modality MR", "US1_UNCR.dcm": "Modality US",
    }  # fmt: skip
    for name, reason in reasons.items():
        path = pydicom.data.get_testdata_file(name, download=False)
        result = radiograph_check(path)
        assert not result.plausible and reason in result.reason, (name, result)
    # The head CT slice as a plain PNG (no tags): caught by its black background.
    head = tmp_path / "head_ct.png"
    pixels = load_radiograph(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False)).pixels
    Image.fromarray((pixels * 255).astype(np.uint8)).save(head)
    result = radiograph_check(str(head))
    assert not result.plausible and "background" in result.reason and result.dark_fraction > 0.5, result
    samples = Path(matplotlib.get_data_path()) / "sample_data"
    photo = radiograph_check(str(samples / "grace_hopper.jpg"))
    assert not photo.plausible and "coloured" in photo.reason and photo.colour_fraction > 0.3, photo
    mr = np.frombuffer(gzip.open(samples / "s1045.ima.gz").read(), "<u2").reshape(256, 256)  # MR head, 16 bit
    result = radiograph_check(mr.astype(np.float32))
    assert not result.plausible and "background" in result.reason, result
