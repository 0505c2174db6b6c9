"""Training augmentation: CXR (CLAHE against plain histogram equalisation, crops, jitter, determinism, bad inputs) and
the stage-1 CT translation / intensity jitter."""

import numpy as np
import pytest
import torch

from x2ctclip.train.training.augment import (
    CLAHE,
    CTTrainAugmentation,
    CXRTrainAugmentation,
    RandomBrightnessContrast,
    RandomResizedCrop,
    clahe,
    sample_rng,
    to_pixel_values,
)


def _image(shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(100, 10, shape), 0, 255).astype(np.uint8)


def test_clahe_with_one_tile_and_no_clipping_is_histogram_equalisation():
    image = _image((40, 56))
    hist = np.bincount(image.ravel(), minlength=256)
    expected = np.clip(np.rint(np.cumsum(hist) * 255.0 / image.size), 0, 255).astype(np.uint8)[image]
    np.testing.assert_array_equal(clahe(image, clip_limit=0, tile_grid=1), expected)


def test_clahe_raises_local_contrast_and_keeps_order_within_a_tile():
    image = _image()
    image[:32] = image[:32] // 4  # a dark half and a bright half
    out = clahe(image, clip_limit=4.0, tile_grid=8)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[:32].std() > image[:32].std() and out[32:].std() > image[32:].std()
    # A single tile maps grey levels monotonically.
    one = clahe(image, clip_limit=4.0, tile_grid=1)
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(one.ravel()[order].astype(int)) >= 0)


def test_clahe_clip_limit_bounds_the_contrast_gain():
    image = _image()
    weak, strong = clahe(image, clip_limit=1.0), clahe(image, clip_limit=40.0)
    assert image.std() <= weak.std() + 1.0 < strong.std()


def test_clahe_handles_sizes_not_divisible_by_the_grid_and_constant_images():
    out = clahe(_image((37, 53)), 4.0, 8)
    assert out.shape == (37, 53)
    constant = clahe(np.full((30, 30), 77, np.uint8))
    assert np.unique(constant).size == 1


def test_random_resized_crop_is_seeded_and_bounded():
    crop = RandomResizedCrop(24, scale=(0.8, 1.1))
    boxes = [crop.crop_box(50, 60, sample_rng(1, 0, i)) for i in range(50)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 60
        assert 0.8 * 3000 * 0.85 <= h * w <= 3000  # a draw above the image area is redrawn
    assert boxes == [crop.crop_box(50, 60, sample_rng(1, 0, i)) for i in range(50)]
    assert crop(_image((50, 60)), sample_rng(0)).shape == (24, 24)


def test_brightness_contrast_jitter_stays_in_range():
    jitter = RandomBrightnessContrast(0.2, 0.2)
    for i in range(20):
        out = jitter(_image().astype(np.float32), sample_rng(i))
        assert out.min() >= 0 and out.max() <= 255
    contrast_only = RandomBrightnessContrast(0.0, 0.5)
    image = _image().astype(np.float32)
    assert abs(contrast_only(image, sample_rng(3)).mean() - image.mean()) < 0.5


def test_pipeline_output_and_determinism():
    aug = CXRTrainAugmentation(size=32)
    image = _image((48, 48))
    a, b, c = aug(image, sample_rng(7, 1, 2)), aug(image, sample_rng(7, 1, 2)), aug(image, sample_rng(7, 1, 3))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0 and torch.equal(a[0], a[2])
    plain = CXRTrainAugmentation(size=48, enabled=False)
    assert torch.allclose(plain(image, sample_rng(0)), to_pixel_values(image))


def test_bad_inputs():
    with pytest.raises(ValueError, match="grey image"):
        clahe(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="brightness"):
        RandomBrightnessContrast(1.5, 0.0)
    with pytest.raises(ValueError):
        CLAHE(clip_limit=-1)


def test_ct_translation_moves_the_volume_and_fills_the_border_with_air():
    ct = torch.rand(1, 6, 10, 12) * 2 - 1
    aug = CTTrainAugmentation(max_shift=(1, 3, 3))
    for seed in range(20):
        out = aug(ct, sample_rng(seed))
        rng = sample_rng(seed)
        dz, dy, dx = (int(rng.integers(-m, m + 1)) for m in (1, 3, 3))
        # the same draw shifts the content by (dz, dy, dx) voxels: compare the overlap with np.roll of the input
        rolled = torch.roll(ct, shifts=(dz, dy, dx), dims=(1, 2, 3))
        inner = (slice(None), slice(max(dz, 0), 6 + min(dz, 0)), slice(max(dy, 0), 10 + min(dy, 0)),
                 slice(max(dx, 0), 12 + min(dx, 0)))
        assert torch.equal(out[inner], rolled[inner])
        assert (out == -1).sum() >= abs(dz) * 10 * 12  # the uncovered slab is air
    assert torch.equal(aug(ct, sample_rng(3)), aug(ct, sample_rng(3)))  # seeded
    assert not CTTrainAugmentation().active and torch.equal(CTTrainAugmentation()(ct, sample_rng(0)), ct)


def test_ct_intensity_jitter_is_bounded_and_clipped():
    ct = torch.linspace(-1, 1, 6 * 8 * 8).reshape(1, 6, 8, 8)
    aug = CTTrainAugmentation(intensity_jitter=0.1)
    for seed in range(10):
        out = aug(ct, sample_rng(seed))
        assert out.min() >= -1 and out.max() <= 1
        mid = ct.abs() < 0.5  # away from the clip: |gain * x + offset - x| <= 0.1 |x| + 0.1
        assert ((out - ct)[mid].abs() <= 0.1 * ct[mid].abs() + 0.1 + 1e-6).all()
        assert not torch.equal(out, ct)


def test_ct_augmentation_bad_arguments():
    with pytest.raises(ValueError, match="three voxel counts"):
        CTTrainAugmentation(max_shift=(1, 2))
    with pytest.raises(ValueError, match="intensity_jitter"):
        CTTrainAugmentation(intensity_jitter=1.5)
    with pytest.raises(ValueError, match=r"\(1, D, H, W\)"):
        CTTrainAugmentation(max_shift=(1, 1, 1))(torch.zeros(2, 1, 4, 4, 4), sample_rng(0))
