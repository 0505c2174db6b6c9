"""The Gradio Space demo (spaces_demo/): the engine's functions directly, then the API through gradio_client against
a server started here (127.0.0.1, a free port), with a tiny model folder built here."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest
import torch
from PIL import Image
from tiny_configs import TINY_TEXT, tiny_config

from x2ctclip import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES, X2CTCLIPModel
from x2ctclip.processors import (
    X2CTCLIPImageProcessor,
    X2CTCLIPProcessor,
    X2CTCLIPVolumeProcessor,
    build_wordpiece_tokenizer,
)
from x2ctclip.train.evaluation.calibration import Calibrator
from x2ctclip.train.synthetic.study import make_study, plan_study
from x2ctclip.train.synthetic.writer import write_volume
from x2ctclip.zero_shot import build_prompts

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "spaces_demo"))

import demo_engine as de  # noqa: E402

N_FINDINGS = len(CT_RATE_FINDINGS)


# ---------------------------------------------------------------------------------------------- tiny model folder
def write_report_csv(path: Path, n: int = 6) -> Path:
    """CT-RATE-style report CSV of ``n`` synthetic studies (no voxels are rendered)."""
    rows = []
    for patient in range(1, n + 1):
        report = plan_study(7, "valid", patient, 0, (64, 128, 128))["report"]
        rows.append({"VolumeName": f"valid_{patient}_a_1", "Findings_EN": report["Findings_EN"],
                     "Impressions_EN": report["Impressions_EN"]})  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_tiny_model_folder(folder: Path, reports_csv: Path, reference_phantoms: int = 4) -> Path:
    """A tiny X2CT-CLIP folder (all three towers, 32 px CXRs, 8 x 16 x 16 CTs, WordPiece tokenizer) with the
    demo's report gallery and, when ``reference_phantoms`` > 0, its input-check reference stored in it."""
    folder.mkdir(parents=True, exist_ok=True)
    reports = pd.read_csv(reports_csv)
    tokenizer = build_wordpiece_tokenizer(
        build_prompts(CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES) + list(reports["Findings_EN"]), vocab_size=400,
        model_max_length=64,
    )
    torch.manual_seed(0)
    config = tiny_config(text_config=dict(TINY_TEXT, vocab_size=len(tokenizer)), logit_scale_init_value=3.0)
    X2CTCLIPModel(config).save_pretrained(folder)
    X2CTCLIPProcessor(
        image_processor=X2CTCLIPImageProcessor(size=32, crop_size=32),
        volume_image_processor=X2CTCLIPVolumeProcessor(target_shape=(8, 16, 16), target_spacing=(40.0, 24.0, 24.0)),
        tokenizer=tokenizer,
        max_length=64,
    ).save_pretrained(folder)
    engine = de.DemoEngine(folder, gallery=reports_csv, reference_phantoms=0, display_size=64)
    engine.gallery.save(folder / de.GALLERY_FILE)
    if reference_phantoms:
        engine.write_reference(de.simulate_phantom_cxrs(reference_phantoms), f"{reference_phantoms} test phantoms")
    return folder


@pytest.fixture(scope="module")
def reports_csv(tmp_path_factory) -> Path:
    return write_report_csv(tmp_path_factory.mktemp("reports") / "reports.csv")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, reports_csv) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model", reports_csv)


@pytest.fixture(scope="module")
def engine(folder) -> de.DemoEngine:
    return de.DemoEngine(folder, display_size=96)


@pytest.fixture(scope="module")
def rg1() -> str:
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("needs the pydicom-data package (RG1_UNCR.dcm), which is not installed")
    return path


@pytest.fixture(scope="module")
def rg1_small(rg1, tmp_path_factory) -> Path:
    """RG1 (real PA chest CR, MONOCHROME1) subsampled 6x with all its tags: fast and under the API test's limits."""
    ds = pydicom.dcmread(rg1)
    small = np.ascontiguousarray(ds.pixel_array[::6, ::6])
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    path = tmp_path_factory.mktemp("rg1") / "rg1_small.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def chest_like_png(path: Path, size=(160, 150), seed: int = 0) -> Path:
    """A greyscale image (two dark 'lungs' in a bright frame), enough for the loader and the model."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    lungs = ((xx - 0.3) ** 2 / 0.03 + (yy - 0.5) ** 2 / 0.12 < 1) | (
        (xx - 0.7) ** 2 / 0.03 + (yy - 0.5) ** 2 / 0.12 < 1
    )
    image = np.where(lungs, 60, 200) + rng.integers(0, 20, size)
    return png(path, image.astype(np.uint8))


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory) -> tuple[Path, np.ndarray, tuple]:
    """A synthetic chest CT phantom as .nii.gz (48 x 96 x 96 voxels) and its HU array / spacing."""
    study = make_study(seed=3, shape=(48, 96, 96), split="valid", patient=2)
    path = tmp_path_factory.mktemp("ct") / "phantom.nii.gz"
    write_volume(path, study.volumes[0], study.spacings[0], study.origin_lps, -1024.0)
    return path, study.volumes[0], study.spacings[0]


def write_dicom_series_zip(path: Path, hu: np.ndarray, spacing, body_part: str | None = None) -> Path:
    """Zip of an axial DICOM CT series ((z, y, x) HU array, z feet -> head; standard orientation), files nested in a
    folder as scanners export them."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series, study = generate_uid(), generate_uid()
    buffer = io.BytesIO()
    with zipfile.ZipFile(path, "w") as archive:
        for k in range(hu.shape[0]):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
            ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            if body_part:
                ds.BodyPartExamined = body_part
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[0])]
            ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
            ds.Rows, ds.Columns = hu.shape[1:]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
            ds.PixelData = np.ascontiguousarray(hu[k].astype(np.int32) + 1024, dtype="<i2").tobytes()
            buffer.seek(0)
            buffer.truncate()
            ds.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"export/series1/IM{k:04d}", buffer.getvalue())
    return path


# ------------------------------------------------------------------------------------------------ file handling
def test_sniff_file_type(tmp_path, rg1_small, phantom_ct):
    cases = {
        "a.png": png(tmp_path / "a.png", np.zeros((8, 8), np.uint8)),
        "a.jpg": None,
        "empty": tmp_path / "empty",
        "notes.txt": tmp_path / "notes.txt",
        "a.zip": tmp_path / "a.zip",
    }
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.jpg", format="JPEG")
    cases["a.jpg"] = tmp_path / "a.jpg"
    cases["empty"].write_bytes(b"")
    cases["notes.txt"].write_text("hello")
    with zipfile.ZipFile(cases["a.zip"], "w") as archive:
        archive.writestr("x", "y")
    raw = gzip.decompress(phantom_ct[0].read_bytes())
    (tmp_path / "ct.nii").write_bytes(raw)
    found = {name: de.sniff_file_type(path) for name, path in cases.items()}
    assert found == {"a.png": "png", "a.jpg": "jpeg", "empty": "empty", "notes.txt": "unknown", "a.zip": "zip"}
    assert de.sniff_file_type(rg1_small) == "dicom"
    assert de.sniff_file_type(phantom_ct[0]) == "gzip"
    assert de.sniff_file_type(tmp_path / "ct.nii") == "nifti"


# ----------------------------------------------------------------------------------------------- radiographs
def test_real_monochrome1_radiograph(engine, rg1):
    """The real PA chest radiograph (MONOCHROME1, 15 bit): predictions, saliency, retrieval; no failed check."""
    result = engine.analyse_radiograph(rg1, "Cardiomegaly", show_anyway=True)
    assert [i.code for i in result.issues if i.code != "out_of_distribution"] == []
    p = result.predictions
    assert p.probabilities.shape == (N_FINDINGS,) and np.all((p.probabilities >= 0) & (p.probabilities <= 1))
    assert not p.calibrated and "raw zero-shot" in p.calibration and p.thresholds is None
    np.testing.assert_allclose(p.probabilities, engine.classifier.predict(engine.pixel_values(
        [engine.load_radiograph(rg1)[0].pixels])).probabilities[0].numpy(), atol=1e-6)  # fmt: skip
    assert result.view.shape == (96, 96) and result.saliency.shape == result.view.shape
    assert np.isfinite(result.saliency).all() and np.abs(result.saliency).max() > 0
    # MONOCHROME1 is inverted on loading: the mediastinum (centre column) is brighter than the lungs beside it.
    centre, lungs = result.view[30:70, 42:54].mean(), result.view[30:70, [20, 24, 72, 76]].mean()
    assert centre > lungs
    scores = [s for s, _, _ in result.retrieved]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    expected = torch.nn.functional.normalize(engine.encode_images([engine.load_radiograph(rg1)[0].pixels]), dim=-1)
    assert scores[0] == pytest.approx(float((expected @ engine.gallery.embeds.t()).max()), abs=1e-5)


def test_saliency_is_gradient_times_input_and_depends_on_the_finding(engine, rg1_small):
    pixel_values = engine.pixel_values([engine.load_radiograph(rg1_small)[0].pixels])
    maps = {}
    for finding in ("Cardiomegaly", "Emphysema"):
        attribution, latent = engine.saliency(pixel_values, finding)
        assert attribution.shape == pixel_values.shape[-2:] and torch.isfinite(attribution).all()
        maps[finding] = attribution
        # Gradient x input summed over pixels is the derivative of the score along the input itself:
        # d/dt score((1 + t) x) at t = 0, checked by central differences on the per-template zero-shot log-odds.
        index = engine.findings.index(finding)

        def score(x):
            probs = engine.classifier.predict(x).per_template_probabilities[0, :, index].double()
            return float(torch.log(probs / (1 - probs)).mean())

        eps = 1e-3
        numeric = (score(pixel_values * (1 + eps)) - score(pixel_values * (1 - eps))) / (2 * eps)
        assert float(attribution.sum()) == pytest.approx(numeric, rel=0.05, abs=1e-3)
    assert not torch.allclose(maps["Cardiomegaly"], maps["Emphysema"])
    view, shown, issues = engine.saliency_for(rg1_small, "Emphysema", show_anyway=True)
    assert shown.shape == view.shape == (96, 96) and np.isfinite(shown).all()
    other = engine.saliency_for(rg1_small, "Cardiomegaly", show_anyway=True)[1]
    assert not np.allclose(shown, other)
    with pytest.raises(de.InputError, match="Unknown finding"):
        engine.saliency_for(rg1_small, "Broken leg")


def test_colour_photo_gets_a_warning_instead_of_numbers(engine, tmp_path):
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
    photo = png(tmp_path / "holiday.png", np.kron(blocks, np.ones((24, 24, 1), np.uint8)))
    result = engine.analyse_radiograph(photo)
    assert "colour" in [i.code for i in result.issues]
    assert result.withheld and result.predictions is None and result.saliency is None and result.retrieved == []
    forced = engine.analyse_radiograph(photo, show_anyway=True)
    assert not forced.withheld and forced.predictions is not None and "colour" in [i.code for i in forced.issues]
    grey = engine.analyse_radiograph(chest_like_png(tmp_path / "grey.png"))
    assert "colour" not in [i.code for i in grey.issues]


@pytest.mark.parametrize(
    "tags, code",
    [({"ViewPosition": "LL"}, "view"), ({"Modality": "CT"}, "modality"), ({"BodyPartExamined": "SKULL"}, "body_part")],
)
def test_dicom_tags_that_rule_out_a_frontal_chest_radiograph(engine, rg1_small, tmp_path, tags, code):
    ds = pydicom.dcmread(rg1_small)
    for key, value in tags.items():
        setattr(ds, key, value)
    path = tmp_path / "tagged.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = engine.analyse_radiograph(path)
    assert code in [i.code for i in result.issues] and result.withheld


def test_odd_aspect_ratio_is_flagged(engine, tmp_path):
    result = engine.analyse_radiograph(chest_like_png(tmp_path / "strip.png", size=(100, 400)))
    assert "aspect_ratio" in [i.code for i in result.issues] and result.withheld


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces ``width x height`` pixels, with no image data (a decompression-bomb stand-in)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_radiograph_uploads_give_friendly_errors(engine, folder, tmp_path, phantom_ct, rg1_small):
    good = chest_like_png(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60] + b"\x00garbage" * 20)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(rg1_small).read_bytes()[:2000])
    random_dcm = tmp_path / "random.dcm"
    random_dcm.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    cases = [
        (None, "No radiograph was uploaded"),
        (tmp_path / "missing.png", "could not be found"),
        (tmp_path / "empty.png", "is empty"),
        (corrupt, "cannot be read as a radiograph|corrupt"),
        (truncated, "cannot be read as a radiograph|not a readable DICOM"),
        (random_dcm, "not a readable DICOM|cannot be read"),
        (tmp_path / "table.csv", "unknown file type; upload a chest X-ray as PNG, JPEG or DICOM"),
        (phantom_ct[0], "CT tab"),
        (png(tmp_path / "tiny.png", np.arange(40 * 40, dtype=np.uint8).reshape(40, 40)), "at least 64 pixels"),
        (png(tmp_path / "blank.png", np.full((100, 100), 7, np.uint8)), "blank"),
        (_png_header_only(tmp_path / "large.png", 12000, 10000), "120 megapixels; the limit is 100 megapixels"),
        (_png_header_only(tmp_path / "bomb.png", 20000, 20000), "the limit is 100 megapixels"),
    ]
    for path, message in cases:
        with pytest.raises(de.InputError, match=message):
            engine.analyse_radiograph(path)
    small_limits = de.DemoEngine(folder, limits=de.Limits(max_image_bytes=1000), reference_phantoms=0)
    with pytest.raises(de.InputError, match=r"the limit for a radiograph is 0.001 MB"):
        small_limits.analyse_radiograph(good)


# ------------------------------------------------------------------------------------------------------ CT
def test_ct_nifti_simulations_and_both_towers(engine, phantom_ct):
    result = engine.analyse_ct(phantom_ct[0], show_anyway=True)
    assert [i.code for i in result.issues if i.code != "out_of_distribution"] == []
    assert set(result.simulated) == {"mean", "beer_lambert"}
    for image in result.simulated.values():
        assert image.ndim == 2 and min(image.shape) > 100 and image.min() == 0 and image.max() == 1
    assert not np.allclose(result.simulated["mean"], result.simulated["beer_lambert"])
    sources = [p.source for p in result.predictions]
    assert sources == ["CXR tower, mean projection (X2CT-CLIP)", "CXR tower, Beer-Lambert attenuation", "CT tower"]
    ct_latent = engine.model.get_ct_features(
        engine.processor.volume_processor(str(phantom_ct[0]))["ct_values"]).pooler_output  # fmt: skip
    np.testing.assert_allclose(
        result.predictions[2].probabilities, engine.classifier.predict_from_embeddings(ct_latent).probabilities[0],
        atol=1e-6,
    )
    assert result.retrieval_source == "the CT latent" and len(result.retrieved) == 5


def test_ct_zip_of_a_dicom_series_matches_the_nifti(engine, phantom_ct, tmp_path):
    _, hu, spacing = phantom_ct
    from_nifti = engine.analyse_ct(phantom_ct[0], show_anyway=True)
    from_zip = engine.analyse_ct(write_dicom_series_zip(tmp_path / "series.zip", hu, spacing), show_anyway=True)
    for mode in ("mean", "beer_lambert"):
        np.testing.assert_allclose(from_zip.simulated[mode], from_nifti.simulated[mode], atol=1e-4)
    head = write_dicom_series_zip(tmp_path / "head.zip", hu, spacing, body_part="HEAD")
    assert "body_part" in [i.code for i in engine.analyse_ct(head).issues]


def test_head_ct_is_flagged(engine, tmp_path):
    """An ellipsoidal 'head' (brain, skull, air around it): no lung-density tissue, 180 mm of coverage."""
    z, y, x = np.mgrid[:72, :96, :96].astype(np.float32)
    r = ((z - 36) / 34) ** 2 + ((y - 48) / 40) ** 2 + ((x - 48) / 34) ** 2
    hu = np.where(r < 0.8, 35, np.where(r < 1.0, 1200, -1000)).astype(np.int16)
    path = tmp_path / "head.nii.gz"
    write_volume(path, hu, (2.5, 2.0, 2.0), (0.0, 0.0, 0.0), -1024.0)
    result = engine.analyse_ct(path)
    assert "not_chest" in [i.code for i in result.issues]
    assert result.withheld and result.predictions == [] and set(result.simulated) == {"mean", "beer_lambert"}
    thin = tmp_path / "thin.nii.gz"
    write_volume(thin, hu[:20], (2.5, 2.0, 2.0), (0.0, 0.0, 0.0), -1024.0)
    assert "ct_extent" in [i.code for i in engine.analyse_ct(thin).issues]


def test_bad_ct_uploads_give_friendly_errors(engine, folder, tmp_path, rg1_small, phantom_ct):
    raw = gzip.decompress(phantom_ct[0].read_bytes())
    (tmp_path / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    (tmp_path / "broken.nii.gz").write_bytes(phantom_ct[0].read_bytes()[:5000])
    (tmp_path / "notes.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as archive:  # a member name that climbs out of the folder
        archive.writestr("../../escaped.dcm", b"not dicom")
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.nii.gz", b"x")
        archive.writestr("b.nii.gz", b"y")
    cases = [
        (tmp_path / "truncated.nii.gz", "truncated"),
        (tmp_path / "broken.nii.gz", "corrupt or truncated gzip"),
        (tmp_path / "notes.zip", "corrupt zip"),
        (tmp_path / "empty.zip", "empty zip"),
        (tmp_path / "slip.zip", "no DICOM image slices"),
        (tmp_path / "two.zip", "2 NIfTI files"),
        (rg1_small, "a 2-D image; upload radiographs in the X-ray tab"),
    ]
    for path, message in cases:
        with pytest.raises(de.InputError, match=message):
            engine.analyse_ct(path)
    assert not (tmp_path.parent / "escaped.dcm").exists() and not Path("/tmp/escaped.dcm").exists()
    strict = de.DemoEngine(folder, limits=de.Limits(max_ct_voxels=1000, max_zip_bytes=2000), reference_phantoms=0)
    with pytest.raises(de.InputError, match="more than the memory budget"):  # the header's voxel count
        strict.analyse_ct(phantom_ct[0])
    # A gzip bomb: a header announcing 1000 voxels, then megabytes of zeros; refused while counting, not decoded.
    header = nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)).to_bytes()
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(header + bytes(5_000_000)))
    with pytest.raises(de.InputError, match="decompresses to more than"):
        strict.analyse_ct(tmp_path / "bomb.nii.gz")
    _, hu, spacing = phantom_ct
    with pytest.raises(de.InputError, match="expands to more than"):
        strict.analyse_ct(write_dicom_series_zip(tmp_path / "big.zip", hu[:4], spacing))


# --------------------------------------------------------------------------------- calibration, gallery, reference
def test_calibration_from_the_model_folder(folder, tmp_path, rg1_small):
    calibrated = tmp_path / "calibrated"
    shutil.copytree(folder, calibrated)
    slope = np.linspace(0.5, 2.0, N_FINDINGS)
    intercept = np.linspace(-1.0, 1.0, N_FINDINGS)
    thresholds = np.linspace(0.2, 0.8, N_FINDINGS)
    thresholds[3] = np.nan
    cxr = Calibrator("platt", slope, intercept, list(CT_RATE_FINDINGS), thresholds, "youden")
    (calibrated / de.CALIBRATION_FILE).write_text(json.dumps(cxr.to_dict()))
    engine = de.DemoEngine(calibrated, reference_phantoms=0)
    p = engine.analyse_radiograph(rg1_small, show_anyway=True).predictions  # whatever the latent check says
    assert p.calibrated and p.calibration == "platt calibration, thresholds: youden"
    np.testing.assert_allclose(p.probabilities, 1 / (1 + np.exp(-(slope * p.logits + intercept))), rtol=1e-9)
    np.testing.assert_allclose(p.thresholds, thresholds)
    # One calibrator per tower; the CT tower's predictions use their own.
    ct = Calibrator("temperature", np.full(N_FINDINGS, 0.5), np.zeros(N_FINDINGS))
    (calibrated / de.CALIBRATION_FILE).write_text(json.dumps({"cxr": cxr.to_dict(), "ct": ct.to_dict()}))
    assert set(de.DemoEngine(calibrated, reference_phantoms=0).calibrators) == {"cxr", "ct"}
    (calibrated / de.CALIBRATION_FILE).write_text(json.dumps(Calibrator.identity(5).to_dict()))
    with pytest.raises(ValueError, match="5 findings, the model 18"):
        de.DemoEngine(calibrated, reference_phantoms=0)


def test_report_gallery_round_trip_and_ranking(engine, tmp_path, reports_csv):
    gallery = engine.gallery
    assert len(gallery) == 6 and gallery.names[0] == "valid_1_a_1"
    loaded = de.ReportGallery.load(gallery.save(tmp_path / "g.safetensors"))
    torch.testing.assert_close(loaded.embeds, gallery.embeds)
    assert loaded.reports == gallery.reports and loaded.names == gallery.names
    query = torch.randn(gallery.embeds.shape[1], generator=torch.Generator().manual_seed(0))
    brute = torch.nn.functional.normalize(query, dim=0) @ gallery.embeds.t()
    top = gallery.search(query, k=3)
    assert [name for _, name, _ in top] == [gallery.names[i] for i in torch.argsort(brute, descending=True)[:3]]
    # the report CSV's two layouts, and a gallery built from a plain 'report' column
    pd.DataFrame({"report": ["There is no effusion.", "  ", "Cardiomegaly is present."]}).to_csv(tmp_path / "r.csv")
    reports, names = de.read_report_csv(tmp_path / "r.csv")
    assert reports == ["There is no effusion.", "Cardiomegaly is present."] and names == ["row 1", "row 3"]
    pd.DataFrame({"text": ["x"]}).to_csv(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="needs a 'report' column"):
        de.read_report_csv(tmp_path / "bad.csv")
    assert de.read_report_csv(reports_csv)[1][0] == "valid_1_a_1"


def test_latent_reference_flags_far_latents():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    for n in (10, 60):  # leave-one-out below 20 references, 5 folds above
        reference = de.LatentReference.fit(centre + 0.05 * rng.normal(size=(n, 16)), "test")
        inside = reference.distance(centre + 0.05 * rng.normal(size=(200, 16)))
        outside = reference.distance(-centre + 0.05 * rng.normal(size=(20, 16)))
        assert np.isfinite(reference.limit) and (inside <= reference.limit).mean() > 0.9
        assert (outside > reference.limit).all()
    with pytest.raises(ValueError, match="at least 3"):
        de.LatentReference.fit(np.ones((2, 4)), "x")


def test_out_of_distribution_latent_withholds_predictions(folder, rg1_small):
    engine = de.DemoEngine(folder, reference_phantoms=0)
    assert engine.reference is not None and engine.reference.n == 4  # the stored reference of the folder
    latent = engine.encode_images([engine.load_radiograph(rg1_small)[0].pixels])
    # A reference around the opposite latent: the real radiograph must then be out of distribution.
    engine.reference = de.LatentReference.fit(-latent.numpy() + 0.01 * np.random.default_rng(0).normal(
        size=(8, latent.shape[1])), "opposite")  # fmt: skip
    result = engine.analyse_radiograph(rg1_small)
    assert [i.code for i in result.issues] == ["out_of_distribution"] and result.withheld
    assert result.ood_distance > engine.reference.limit


def test_chart_and_overlay(engine):
    rng = np.random.default_rng(0)
    preds = [de.Predictions("a", rng.random(N_FINDINGS), np.zeros(N_FINDINGS), True, "x", rng.random(N_FINDINGS)),
             de.Predictions("b", rng.random(N_FINDINGS), np.zeros(N_FINDINGS), False, "y")]  # fmt: skip
    fig = de.render_chart(preds, CT_RATE_FINDINGS, unreliable=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CT_RATE_FINDINGS)
    assert ax.get_title().startswith("NOT RELIABLE") and len(ax.patches) == 2 * N_FINDINGS
    view = rng.random((40, 50)).astype(np.float32)
    overlay = de.overlay_saliency(view, rng.normal(size=(40, 50)).astype(np.float32))
    assert overlay.shape == (40, 50, 3) and overlay.dtype == np.uint8
    flat = de.overlay_saliency(view, np.zeros((40, 50), np.float32))
    assert (flat[..., 0] == flat[..., 1]).all()  # no signal: the grey image alone
    smoothed = de.smooth_map(torch.ones(30, 30))
    torch.testing.assert_close(smoothed, torch.ones(30, 30))


# ------------------------------------------------------------------------------------------------------- CLI
def test_without_a_model_the_app_names_the_quickstart_command(monkeypatch, tmp_path, capsys):
    import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "outputs" / "quickstart" / "model")
    assert app.main([]) == 2
    assert "x2ctclip quickstart --out outputs/quickstart" in capsys.readouterr().err
    assert app.main(["--model", str(tmp_path)]) == 2
    assert "not a saved X2CT-CLIP model folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ API through a server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingEngine(de.DemoEngine):
    """Records how many radiograph analyses run at the same time (the queue must bound it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.running = self.most = self.calls = 0

    def analyse_radiograph(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)  # long enough for requests to overlap
            return super().analyse_radiograph(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture(scope="module")
def server(folder):
    import app

    limits = de.Limits(max_image_bytes=2_000_000, max_ct_bytes=3_000_000)
    engine = CountingEngine(folder, limits=limits, display_size=96)
    demo = app.build_demo(engine, concurrency=3)
    _, url, _ = app.launch(demo, engine, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield url, engine
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False, download_files=False)


@pytest.mark.slow
def test_api_twenty_concurrent_requests(server, client, rg1_small, tmp_path):
    from gradio_client import handle_file

    url, engine = server
    files = [rg1_small, chest_like_png(tmp_path / "a.png", seed=1), chest_like_png(tmp_path / "b.png", seed=2)]
    before = engine.calls
    jobs = [client.submit(handle_file(str(files[i % 3])), CT_RATE_FINDINGS[i % N_FINDINGS], True,
                          api_name="/predict_radiograph") for i in range(20)]  # fmt: skip
    results = [job.result(timeout=120) for job in jobs]
    assert engine.calls - before == 20
    assert 2 <= engine.most <= 3  # requests overlapped, never more than the queue's concurrency limit
    for status, chart, view, heat, table, reports in results:
        assert chart["type"] == "matplotlib" and chart["plot"].startswith("data:image/png;base64,")
        assert view["path"].endswith(".png") and heat["path"].endswith(".png")  # files in the server's cache
        assert len(table["data"]) == N_FINDINGS and table["headers"][:2] == ["Finding", "CXR tower"]
        assert len(reports["data"]) == 5
        assert "raw zero-shot probabilities" in status


def test_api_errors_are_friendly_and_the_server_keeps_serving(server, client, tmp_path, rg1_small):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2_500_000))  # above the 2 MB radiograph limit
    for name, message in [("corrupt.png", "corrupt or not a readable image"), ("empty.dcm", "is empty"),
                          ("big.png", "limit for a radiograph is 2 MB")]:  # fmt: skip
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(tmp_path / name)), "Cardiomegaly", False, api_name="/predict_radiograph")
    (tmp_path / "huge.nii.gz").write_bytes(bytes(3_500_000))  # above the server's 3 MB upload limit
    with pytest.raises(Exception, match="(?i)too large|413|exceed|maximum"):
        client.predict(handle_file(str(tmp_path / "huge.nii.gz")), False, api_name="/analyse_ct")
    with pytest.raises(AppError, match="CT tab"):
        client.predict(handle_file(str(write_tiny_gzip(tmp_path / "ct.nii.gz"))), "Cardiomegaly", False,
                       api_name="/predict_radiograph")
    status, *_ = client.predict(handle_file(str(rg1_small)), "Cardiomegaly", True, api_name="/predict_radiograph")
    assert "raw zero-shot" in status


def write_tiny_gzip(path: Path) -> Path:
    path.write_bytes(gzip.compress(b"\x00" * 400))
    return path


def test_api_saliency_and_ct(server, client, rg1_small, phantom_ct):
    import httpx
    from gradio_client import handle_file

    url = server[0].rstrip("/")
    images = []
    for finding in ("Cardiomegaly", "Emphysema"):
        image = client.predict(handle_file(str(rg1_small)), finding, True, api_name="/saliency")
        assert image["url"] == f"{url}/gradio_api/file={image['path']}"
        response = httpx.get(image["url"])
        assert response.status_code == 200  # the server serves what it wrote to its cache
        images.append(np.asarray(Image.open(io.BytesIO(response.content))))
    assert images[0].shape == (96, 96, 3) and not np.array_equal(images[0], images[1])
    status, mean, beer, chart, table, reports = client.predict(handle_file(str(phantom_ct[0])), True,
                                                               api_name="/analyse_ct")  # fmt: skip
    assert table["headers"] == ["Finding", "CXR tower, mean projection (X2CT-CLIP)",
                                "CXR tower, Beer-Lambert attenuation", "CT tower"]  # fmt: skip
    assert len(table["data"]) == N_FINDINGS and mean and beer and chart["type"] == "matplotlib"
    assert "Reports retrieved with the CT latent" in status


def test_no_file_outside_the_upload_cache_is_served(server, folder):
    import httpx

    url = server[0].rstrip("/")
    secrets = ["/etc/passwd", str(folder / "config.json"), str(REPO / "pyproject.toml"), str(Path(__file__))]
    for path in secrets:
        for route in (f"/gradio_api/file={path}", f"/file={path}", f"/gradio_api/file=../../../..{path}"):
            response = httpx.get(url + route)
            assert response.status_code in (403, 404), (route, response.status_code)
            assert "root:" not in response.text


def test_model_may_be_a_hub_id_read_from_the_local_hub_cache(monkeypatch, tmp_path, folder, capsys):
    """``--model owner/name``: huggingface_hub's own snapshot_download resolves it offline from the cache layout
    (models--owner--name/refs/main -> snapshots/<commit>/); a Hub id that is not cached gives one line."""
    import huggingface_hub.constants

    import app

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--x2ctclip-demo"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert app.resolve_model_dir("someone/x2ctclip-demo") == repo / "snapshots" / commit
    monkeypatch.setenv(app.MODEL_ENV, "someone/x2ctclip-demo")
    assert app.resolve_model_dir(None) == repo / "snapshots" / commit
    assert app.main(["--model", "someone/not-cached"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "someone/not-cached: not a local folder, and the Hub repo could not be" in err


# ------------------------------------------------------------------------------------ demo assets (validation)
@pytest.fixture(scope="module")
def assets_folder(tmp_path_factory):
    """A tiny model with ``x2ctclip demo-assets`` run on a tiny preprocessed folder (valid 40, test 40 scans)."""
    from scripts.eval_fixtures import make_model, make_preprocessed

    from x2ctclip.train.cli.app import main

    root = tmp_path_factory.mktemp("assets")
    data = make_preprocessed(root / "data", {"valid": 40, "test": 40})
    model = make_model(root / "model", towers=("cxr", "text"))
    assert main(["demo-assets", str(model), "--data", str(data), "--no-progress"]) == 0
    return model, data


def test_demo_assets_are_written_from_the_validation_split_and_read_by_the_demo(assets_folder):
    from x2ctclip.train.evaluation.calibration import Calibrator
    from x2ctclip.train.data.folders import load_preprocessed
    from x2ctclip.train.evaluation.models import encode_images, load_model

    model, data = assets_folder
    record = json.loads((model / de.ASSETS_FILE).read_text())
    assert record["split"] == "valid" and record["n_cases"] == 40 and record["accept_share"] == 0.975
    assert "simulated (mean projection)" in record["distribution"]
    engine = de.DemoEngine(model, reference_phantoms=0)
    assert engine.distribution == record["distribution"]
    valid = load_preprocessed(data, "valid")
    # the gallery holds the validation reports, in order, with their names
    assert engine.gallery.names == list(valid["VolumeName"]) and engine.gallery.reports == list(valid["report"])
    # the reference is the model's own validation CXR latents; the calibration is evaluate calibrate's
    loaded = load_model(model, calibrated=False)
    latents = encode_images(loaded, [np.asarray(x, np.uint8) for x in valid["cxr"]])
    stored, _ = de._load_latents(model / de.REFERENCE_FILE, "cxr_embeds")
    torch.testing.assert_close(stored, latents, atol=1e-5, rtol=1e-4)
    calibration = json.loads((model / "config.json").read_text())["calibration"]
    assert Calibrator.from_dict(calibration).to_dict() == engine.calibrators["cxr"]  # the checked dict, as stored
    assert engine.calibrators["cxr"]["threshold_method"] == "youden"
    # the limit accepts about the stated share of held-out (TEST split) CXRs of the same distribution
    test = load_preprocessed(data, "test")
    held_out = encode_images(loaded, [np.asarray(x, np.uint8) for x in test["cxr"]])
    accepted = float((engine.reference.distance(held_out.numpy()) <= engine.reference.limit).mean())
    assert accepted >= 0.8, accepted
    # calibrated numbers by default, raw zero-shot ones only on request and labelled
    calibrated = engine.predictions(held_out[:1], "cxr", "CXR tower")
    raw = engine.predictions(held_out[:1], "cxr", "CXR tower", raw=True)
    assert calibrated.calibrated and not raw.calibrated and "raw zero-shot" in raw.source
    assert "uncalibrated" in raw.calibration and not np.allclose(raw.probabilities, calibrated.probabilities)


def test_demo_assets_command_refuses_the_test_split_and_bad_paths(assets_folder, tmp_path):
    import subprocess

    model, data = assets_folder
    for args, message in (([str(model), "--data", str(data), "--split", "test"], "test split stays held out"),
                          ([str(tmp_path / "none"), "--data", str(data)], "no config.json"),
                          ([str(model), "--data", str(tmp_path / "none")], "no such preprocessed folder")):
        run = subprocess.run([sys.executable, "-m", "x2ctclip.train.cli", "demo-assets", *args], capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith("x2ctclip demo-assets: error: ") and message in run.stderr


def test_the_page_names_the_training_distribution_and_what_a_flag_means(assets_folder, folder):
    import app

    line = app._model_summary(de.DemoEngine(assets_folder[0], reference_phantoms=0))
    assert "**Trained on** frontal chest radiographs simulated (mean projection)" in line
    assert "a flag means" in line
    assert "Training distribution not recorded" in app._model_summary(de.DemoEngine(folder, reference_phantoms=0))


# ------------------------------------------------------------------------------------------- hostile uploads
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


def test_hostile_uploads_are_refused_from_headers_and_memory_returns_to_idle(engine, tmp_path):
    """A 64 x 200000 PNG (17 kB; decoded and resized it took the demo from 2.2 to 8.1 GB), a 1 x 8000 strip, a zip
    bomb (one member of zeros declared at 3 GB) and a gzip bomb: each refused before decoding / extracting, and the
    process RSS after the batch is back within 150 MB of its idle level."""
    import app

    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((200000, 64), np.uint8)).save(strip)
    assert strip.stat().st_size < 300_000
    thin = png(tmp_path / "thin.png", np.zeros((1, 8000), np.uint8) + 9)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("slice.dcm", "w", force_zip64=True) as member:
            block = bytes(1 << 24)
            for _ in range(8):  # 128 MB of zeros, about 130 kB compressed
                member.write(block)
    header = nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)).to_bytes()
    gz = tmp_path / "bomb.nii.gz"
    gz.write_bytes(gzip.compress(header + bytes(20_000_000)))
    app.release_memory()
    idle = _rss_mb()
    for _ in range(3):
        for path, message in ((strip, "no chest radiograph is beyond 1:4"), (thin, "no chest radiograph is beyond")):
            with pytest.raises(de.InputError, match=message):
                engine.analyse_radiograph(path)
        with pytest.raises(de.InputError, match="zip bomb, not a CT; nothing was extracted"):
            engine.analyse_ct(bomb)
        with pytest.raises(de.InputError, match="cannot be read as a CT|decompresses to more than|truncated"):
            de.DemoEngine.analyse_ct(engine, gz)
        app.release_memory()
    assert _rss_mb() - idle < 150, (idle, _rss_mb())
    assert not list(Path("/tmp").glob("x2ctclip-ct-*/series/*.dcm"))  # nothing of the bomb left on disk


# --------------------------------------------------------------------- the default main job's model (slow, opt-in)
MAIN_MODEL_ENV = "X2CTCLIP_MAIN_MODEL"


@pytest.fixture(scope="module")
def main_engine():
    """The default quickstart's model (``x2ctclip quickstart --out DIR``; ``$X2CTCLIP_MAIN_MODEL`` = ``DIR/model``,
    which the quickstart writes with its demo assets) and the preprocessed folder its assets came from."""
    path = os.environ.get(MAIN_MODEL_ENV)
    if not path:
        pytest.skip(f"${MAIN_MODEL_ENV} is not set: it names the default quickstart's model folder (.ci/run builds "
                    "one: x2ctclip quickstart --out DIR, then DIR/model)")  # fmt: skip
    model = Path(path)
    assert (model / de.ASSETS_FILE).is_file(), f"{model}: no {de.ASSETS_FILE}; run x2ctclip demo-assets on it"
    data = Path(json.loads((model / de.ASSETS_FILE).read_text())["data"])
    return de.DemoEngine(model, reference_phantoms=0), data


@pytest.mark.slow
def test_main_model_flags_a_real_radiograph_and_withholds_its_numbers(main_engine, rg1):
    engine, _ = main_engine
    result = engine.analyse_radiograph(rg1)
    assert "out_of_distribution" in [i.code for i in result.issues], result.issues
    assert result.withheld and result.predictions is None and result.saliency is None and result.retrieved == []


@pytest.mark.slow
def test_main_model_passes_held_out_simulated_cxrs_with_calibrated_numbers(main_engine, tmp_path):
    from x2ctclip.train.data.folders import load_preprocessed

    engine, data = main_engine
    test = load_preprocessed(data, "test").with_format("numpy", columns=["cxr"], dtype=None)
    valid_names = set(load_preprocessed(data, "valid")["VolumeName"])
    passed = 0
    for i in range(5):
        result = engine.analyse_radiograph(png(tmp_path / f"test_{i}.png", test[i]["cxr"]))
        if result.withheld:
            continue
        passed += 1
        assert result.predictions.calibrated and result.predictions.thresholds is not None
        assert len(result.retrieved) == 5 and {name for _, name, _ in result.retrieved} <= valid_names
    assert passed >= 4, f"{passed} of 5 held-out simulated CXRs passed the input checks"
