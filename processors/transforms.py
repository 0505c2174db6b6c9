"""MONAI for CT-to-tensor pipelines: an ``ImageReader`` and transforms on ``MetaTensor``, built on the processors' own
array functions.

- :class:`CTReader` is a MONAI ``ImageReader`` around :func:`~x2ctclip.processors.volume_io.load_ct` (NIfTI files and
  DICOM series folders): ``LoadImage(reader=CTReader())`` / ``LoadImaged(keys, reader=CTReader())`` give a
  ``MetaTensor`` indexed ``(z, y, x)`` in the package's canonical orientation (CT-RATE's: axis codes ``S, P, L``),
  values in HU, with ``affine`` mapping that index to RAS+ world mm (MONAI's ``space`` "RAS").
- :class:`LoadCT` / :class:`SimulateCXR` / :class:`CTCLIPPreprocess` and their dictionary versions (``...d``) take
  and return ``MetaTensor``, so MONAI's own spatial transforms (``Orientationd``, ``Spacingd``, ``RandFlipd``,
  ``ResizeWithPadOrCropd``, ...) can sit between them: the package transforms read the geometry from the affine,
  whatever orientation and spacing the MONAI transforms left.

The array work itself (CT-CLIP preprocessing, CXR simulation) stays in ``image_processing_volume`` and ``simulation``;
it was measured against MONAI's ``Spacing`` / ``ScaleIntensityRange`` / ``CenterSpatialCrop`` (see
``benchmarks/bench_volume_processor.py`` and docs/monai.md).

>>> from x2ctclip.processors.transforms import ct_pipeline
>>> pipeline = ct_pipeline(X2CTCLIPVolumeProcessor(), cxr_key="cxr")          # doctest: +SKIP
>>> sample = pipeline({"ct": "train_1_a_1.nii.gz"})                            # doctest: +SKIP
>>> sample["ct"].shape, sample["cxr"].shape   # (1, 240, 480, 480) HU/1000, (1, H, W) simulated PA radiograph

Importing MONAI takes seconds, so this module is not imported by ``x2ctclip.processors`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import Compose, MapTransform, Transform
from monai.utils import MetaKeys, SpaceKeys

from .image_processing_volume import X2CTCLIPVolumeProcessor, ctclip_output_size
from .simulation import simulate_cxr
from .volume_io import CTVolume, load_ct

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# RAS <-> LPS: negate the first two world axes (MONAI's ``space`` meta key says which one an affine uses).
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def _stored_or_hu(volume: CTVolume) -> np.ndarray:
    """The voxels in HU: the stored array itself when no rescale is needed (integer CTs stay integer), else float32."""
    return volume.array if (volume.slope == 1.0 and volume.intercept == 0.0) else volume.hu()


def _volume_meta(volume: CTVolume) -> dict[str, Any]:
    shape = np.asarray(volume.shape)
    return {
        MetaKeys.AFFINE: volume.affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: volume.affine.copy(),
        MetaKeys.SPATIAL_SHAPE: shape,
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # MONAI's "no_channel": EnsureChannelFirst adds one
        "pixdim": np.asarray([1.0, *volume.spacing_mm, 1.0, 1.0, 1.0, 1.0]),
        "filename_or_obj": volume.source,
    }


def volume_to_metatensor(volume: CTVolume, channel_first: bool = True) -> MetaTensor:
    """:class:`CTVolume` -> ``MetaTensor`` ``(1, Z, Y, X)`` (or ``(Z, Y, X)``) in HU, canonical orientation, with
    the volume's affine (index -> RAS+ mm) and meta as :class:`CTReader` gives them."""
    meta = _volume_meta(volume)
    affine = torch.as_tensor(meta.pop(MetaKeys.AFFINE))
    # A memory-mapped (read-only) array is copied once: MONAI's transforms may write to the tensor in place.
    array = torch.from_numpy(np.require(_stored_or_hu(volume), requirements=["C", "W"]))
    if channel_first:
        array = array[None]
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = "no_channel"
    return MetaTensor(array, affine=affine, meta=meta)


def metatensor_to_volume(image: Any, source: str | None = None) -> CTVolume:
    """A channel-first ``MetaTensor`` ``(1, ...spatial)`` in HU, in any orientation and spacing its affine describes
    (e.g. after MONAI's ``Orientationd`` / ``Spacingd``), -> a canonical :class:`CTVolume`.

    A :class:`CTVolume` is returned as it is. Raises ``ValueError`` (naming the input) for anything else.
    """
    if isinstance(image, CTVolume):
        return image
    if not isinstance(image, MetaTensor):
        raise ValueError(
            f"{source or 'input'}: expected a MONAI MetaTensor (1, ...) with an affine (load it with LoadCT, or "
            f"LoadImage(reader=CTReader())) or a CTVolume, got {type(image).__name__}."
        )
    name = source or str(image.meta.get("filename_or_obj", "MetaTensor"))
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(
            f"{name}: expected a channel-first CT MetaTensor of shape (1, D, H, W), got {tuple(image.shape)}."
        )
    affine = np.asarray(image.affine.detach().cpu().numpy(), dtype=np.float64)
    if str(image.meta.get(MetaKeys.SPACE, SpaceKeys.RAS)) == str(SpaceKeys.LPS):
        affine = _FLIP_XY @ affine
    array = image.as_tensor().detach()[0].cpu().numpy()
    return load_ct(array, affine=affine, validate=False, source=name)


class CTReader(ImageReader):
    """MONAI ``ImageReader`` of CT volumes through :func:`~x2ctclip.processors.volume_io.load_ct`: ``.nii`` /
    ``.nii.gz`` files and DICOM series folders.

    ``get_data`` returns the array ``(Z, Y, X)`` in the canonical orientation (axis codes ``S, P, L``; CT-RATE's) in
    HU (integer stored values stay integer when no rescale is needed) and MONAI meta with ``affine`` (index -> RAS+
    mm), ``spatial_shape``, ``pixdim`` (mm, ``(z, y, x)``) and ``space`` "RAS". Several files are stacked on a new
    first (channel) axis, as MONAI's readers do. Keyword arguments go to :func:`load_ct` (``spacing``, ``rescale``,
    ``max_voxels``, ``validate``, ``max_hu``).
    """

    def __init__(self, **load_kwargs: Any):
        super().__init__()
        self.load_kwargs = load_kwargs

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return bool(names) and all(
            Path(n).is_dir() or str(n).lower().endswith(_NIFTI_SUFFIXES) for n in names
        )

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs: Any):
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        volumes = [load_ct(n, **{**self.load_kwargs, **kwargs}) for n in names]
        return volumes if len(volumes) > 1 else volumes[0]

    def get_data(self, img: CTVolume | Sequence[CTVolume]) -> tuple[np.ndarray, dict]:
        volumes = [img] if isinstance(img, CTVolume) else list(img)
        meta = _volume_meta(volumes[0])
        arrays = [_stored_or_hu(v) for v in volumes]
        if len(arrays) == 1:
            return arrays[0], meta
        if any(v.shape != volumes[0].shape for v in volumes):
            raise ValueError(f"{volumes[0].source}: cannot stack CTs of shapes {[v.shape for v in volumes]}.")
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays), meta


class LoadCT(Transform):
    """Load a CT (NIfTI path, DICOM series folder, :class:`CTVolume`, or an array with ``spacing`` / ``affine``)
    into a ``MetaTensor`` ``(1, Z, Y, X)`` in HU in the canonical orientation, as ``LoadImage(reader=CTReader(),
    ensure_channel_first=True, dtype=None)`` gives. Errors are :func:`load_ct`'s one-line messages."""

    def __init__(self, **load_kwargs: Any):
        self.load_kwargs = load_kwargs

    def __call__(self, ct: Any) -> MetaTensor:
        if isinstance(ct, MetaTensor):
            return ct
        volume = load_ct(ct, **self.load_kwargs) if not isinstance(ct, CTVolume) else ct
        return volume_to_metatensor(volume)


class CTCLIPPreprocess(Transform):
    """CT ``MetaTensor`` ``(1, ...)`` in HU (any orientation / spacing in its affine) -> ``MetaTensor``
    ``(1, D, H, W)`` float32: HU clipped and scaled (HU / 1000 in [-1, 1]), resampled to the processor's spacing
    (mm), centre-cropped or padded, exactly as ``X2CTCLIPVolumeProcessor``; its affine maps the output index (CT-CLIP's
    ``(z, x, y)`` layout) to RAS+ mm on the resampled grid."""

    def __init__(self, processor: X2CTCLIPVolumeProcessor | None = None, device: str | torch.device | None = None):
        self.processor = processor if processor is not None else X2CTCLIPVolumeProcessor()
        self.device = device

    def output_affine(self, volume: CTVolume) -> np.ndarray:
        """Index ``(d, h, w)`` of the processed tensor -> RAS+ mm (torch's ``align_corners=False`` grid, then the
        centre crop's start ``(n - t) // 2`` or the pad's ``(t - n) // 2`` voxels before)."""
        to_zyx = np.eye(4)[:, [0, 2, 1, 3]]  # (z, x, y, 1) -> (z, y, x, 1)
        affine = volume.affine @ to_zyx
        shape = (volume.shape[0], volume.shape[2], volume.shape[1])
        spacing = (volume.spacing_mm[0], volume.spacing_mm[2], volume.spacing_mm[1])
        resampled = ctclip_output_size(shape, spacing, self.processor.target_spacing)
        step = np.eye(4)
        for axis, (n_in, n_out, t) in enumerate(zip(shape, resampled, self.processor.target_shape)):
            scale = n_in / n_out
            shift = (n_out - t) // 2 if n_out >= t else -((t - n_out) // 2)
            step[axis, axis] = scale
            step[axis, 3] = scale * (shift + 0.5) - 0.5
        return affine @ step

    def __call__(self, image: Any) -> MetaTensor:
        volume = metatensor_to_volume(image)
        out = self.processor.process_volume(volume, device=self.device).unsqueeze(0)
        meta = dict(image.meta) if isinstance(image, MetaTensor) else {"filename_or_obj": volume.source}
        affine = self.output_affine(volume)
        meta.pop(MetaKeys.AFFINE, None)
        meta.update({MetaKeys.SPATIAL_SHAPE: np.asarray(out.shape[1:]), MetaKeys.SPACE: SpaceKeys.RAS})
        return MetaTensor(out, affine=torch.as_tensor(affine), meta=meta)


class SimulateCXR(Transform):
    """CT ``MetaTensor`` ``(1, ...)`` in HU (any orientation in its affine) -> ``MetaTensor`` ``(1, H, W)`` float32
    simulated radiograph (see :func:`simulate_cxr`), channel-first for MONAI's 2-D transforms."""

    def __init__(self, mode: str = "mean", view: str = "frontal", **kwargs: Any):
        self.mode, self.view, self.kwargs = mode, view, kwargs

    def __call__(self, image: Any) -> MetaTensor:
        volume = metatensor_to_volume(image)
        cxr = torch.as_tensor(simulate_cxr(volume, mode=self.mode, view=self.view, **self.kwargs))[None]
        return MetaTensor(cxr, meta={"filename_or_obj": volume.source, "view": self.view, "mode": self.mode})


class _ApplyToKeys(MapTransform):
    """Apply an array transform to ``keys``, writing to ``output_keys`` (default: in place)."""

    transform: Transform

    def __init__(self, keys: KeysCollection, output_keys: Sequence[Hashable] | None = None,
                 allow_missing_keys: bool = False):  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        self.output_keys = list(output_keys) if output_keys is not None else list(self.keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"{type(self).__name__}: {len(self.keys)} keys but {len(self.output_keys)} output_keys.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in zip(self.key_iterator(d), self.output_keys):
            d[out_key] = self.transform(d[key])
        return d


class LoadCTd(_ApplyToKeys):
    """Dictionary version of :class:`LoadCT`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **load_kwargs: Any):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.transform = LoadCT(**load_kwargs)


class CTCLIPPreprocessd(_ApplyToKeys):
    """Dictionary version of :class:`CTCLIPPreprocess`."""

    def __init__(self, keys: KeysCollection, processor: X2CTCLIPVolumeProcessor | None = None,
                 device: str | torch.device | None = None, output_keys: Sequence[Hashable] | None = None,
                 allow_missing_keys: bool = False):
        super().__init__(keys, output_keys, allow_missing_keys)
        self.transform = CTCLIPPreprocess(processor, device)


class SimulateCXRd(_ApplyToKeys):
    """Dictionary version of :class:`SimulateCXR`; ``output_keys`` name where the radiographs go."""

    def __init__(self, keys: KeysCollection, output_keys: Sequence[Hashable], mode: str = "mean",
                 view: str = "frontal", allow_missing_keys: bool = False, **kwargs: Any):  # fmt: skip
        super().__init__(keys, output_keys, allow_missing_keys)
        self.transform = SimulateCXR(mode=mode, view=view, **kwargs)


def ct_pipeline(
    processor: X2CTCLIPVolumeProcessor | None = None,
    key: str = "ct",
    cxr_key: str | None = None,
    cxr_mode: str = "mean",
    device: str | torch.device | None = None,
    **load_kwargs: Any,
) -> Compose:
    """``{key: path}`` -> ``{key: (1, D, H, W) ct_values[, cxr_key: (1, H, W) simulated CXR]}`` (``MetaTensor``),
    one readable chain: load (CT-RATE orientation) -> [simulate the CXR from the loaded HU volume] -> CT-CLIP
    preprocessing."""
    steps: list[Transform] = [LoadCTd(key, **load_kwargs)]
    if cxr_key is not None:
        steps.append(SimulateCXRd(key, output_keys=[cxr_key], mode=cxr_mode))
    steps.append(CTCLIPPreprocessd(key, processor=processor, device=device))
    return Compose(steps)


__all__ = [
    "CTCLIPPreprocess",
    "CTCLIPPreprocessd",
    "CTReader",
    "LoadCT",
    "LoadCTd",
    "SimulateCXR",
    "SimulateCXRd",
    "ct_pipeline",
    "metatensor_to_volume",
    "volume_to_metatensor",
]
