import nibabel as nib
import numpy as np
import pytest
import torch

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
