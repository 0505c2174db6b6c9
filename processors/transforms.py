"""MONAI transforms for CT-to-tensor pipelines, built on the processors' own array functions.

The array work itself (loading in CT-RATE's orientation, CT-CLIP preprocessing, CXR simulation) lives in
``volume_io``, ``image_processing_volume`` and ``simulation`` and was measured against MONAI's ``Spacing`` /
``ScaleIntensityRange`` / ``CenterSpatialCrop`` (see ``benchmarks/bench_volume_processor.py``). This module
exposes those steps as MONAI array transforms and dictionary transforms (``...d``), so they compose with the rest
of MONAI (caching datasets, random augmentation, ``Compose``) the way MONAI users expect:

>>> from x2ctclip.processors.transforms import ct_pipeline
>>> pipeline = ct_pipeline(X2CTCLIPVolumeProcessor(), cxr_key="cxr")          # doctest: +SKIP
>>> sample = pipeline({"ct": "train_1_a_1.nii.gz"})                            # doctest: +SKIP
>>> sample["ct"].shape, sample["cxr"].shape   # (1, 240, 480, 480) HU/1000, (H, W) simulated PA radiograph

Importing MONAI takes seconds, so this module is not imported by ``x2ctclip.processors`` itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, Transform

from .image_processing_volume import X2CTCLIPVolumeProcessor
from .simulation import simulate_cxr
from .volume_io import CTVolume, load_ct


class LoadCT(Transform):
    """Load a CT (NIfTI path, DICOM series folder, or :class:`CTVolume`) into a :class:`CTVolume` in CT-RATE's
    orientation (array (z, y, x), spacing in mm). Keyword arguments go to :func:`load_ct`."""

    def __init__(self, **load_kwargs: Any):
        self.load_kwargs = load_kwargs

    def __call__(self, ct: Any) -> CTVolume:
        return ct if isinstance(ct, CTVolume) else load_ct(ct, **self.load_kwargs)


class CTCLIPPreprocess(Transform):
    """:class:`CTVolume` -> ``(1, D, H, W)`` float32 tensor: HU clipped and scaled (HU / 1000 in [-1, 1]),
    resampled to the processor's spacing (mm), centre-cropped or padded, exactly as ``X2CTCLIPVolumeProcessor``."""

    def __init__(self, processor: X2CTCLIPVolumeProcessor | None = None, device: str | torch.device | None = None):
        self.processor = processor if processor is not None else X2CTCLIPVolumeProcessor()
        self.device = device

    def __call__(self, volume: CTVolume) -> torch.Tensor:
        if not isinstance(volume, CTVolume):
            raise ValueError(f"CTCLIPPreprocess expects a CTVolume (use LoadCT first), got {type(volume).__name__}.")
        return self.processor.process_volume(volume, device=self.device).unsqueeze(0)


class SimulateCXR(Transform):
    """:class:`CTVolume` -> ``(H, W)`` float32 simulated radiograph (see :func:`simulate_cxr`)."""

    def __init__(self, mode: str = "mean", view: str = "frontal", **kwargs: Any):
        self.mode, self.view, self.kwargs = mode, view, kwargs

    def __call__(self, volume: CTVolume) -> torch.Tensor:
        return torch.as_tensor(simulate_cxr(volume, mode=self.mode, view=self.view, **self.kwargs))


class _ApplyToKeys(MapTransform):
    """Apply an array transform to ``keys``, writing to ``output_keys`` (default: in place)."""

    transform: Transform

    def __init__(self, keys: KeysCollection, output_keys: Sequence[Hashable] | None = None, allow_missing_keys: bool = False):
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

    def __init__(self, keys: KeysCollection, output_keys: Sequence[Hashable], mode: str = "mean", view: str = "frontal",
                 allow_missing_keys: bool = False, **kwargs: Any):
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
    """``{key: path}`` -> ``{key: (1, D, H, W) ct_values[, cxr_key: (H, W) simulated CXR]}``, one readable chain:
    load (CT-RATE orientation) -> [simulate the CXR from the loaded HU volume] -> CT-CLIP preprocessing."""
    steps: list[Transform] = [LoadCTd(key, **load_kwargs)]
    if cxr_key is not None:
        steps.append(SimulateCXRd(key, output_keys=[cxr_key], mode=cxr_mode))
    steps.append(CTCLIPPreprocessd(key, processor=processor, device=device))
    return Compose(steps)


__all__ = [
    "CTCLIPPreprocess",
    "CTCLIPPreprocessd",
    "LoadCT",
    "LoadCTd",
    "SimulateCXR",
    "SimulateCXRd",
    "ct_pipeline",
]
