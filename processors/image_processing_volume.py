"""``X2CTCLIPVolumeProcessor``: CT volumes -> ``ct_values`` exactly as CT-CLIP's weights expect them.

CT-CLIP's preprocessing (read from its public loaders; see ``benchmarks/bench_volume_processor.py`` for a faithful
re-implementation used as the test oracle): HU = slope * stored + intercept; nibabel array transposed to
``(z, x, y)`` without reorientation; trilinear resampling (``F.interpolate``, ``align_corners=False``) to
(1.5, 0.75, 0.75) mm with new size ``int(n * (spacing / target))``; HU clipped to [-1000, 1000]; divided by 1000;
centre crop / pad (value -1) to 240 x 480 x 480. The training loader resampled before clipping, the inference
loader clipped first (``clip_before_resample``).

This processor gives the same numbers (to float32 rounding) for a CT-RATE file, and brings every other input (any
NIfTI orientation, DICOM series, arrays with an affine) to CT-RATE's orientation first (:mod:`.volume_io`). It is
faster and lighter because it decodes gzip with igzip, keeps the stored integers (no float64, no full float copy:
trilinear interpolation is done as a z pass slice by slice and an in-plane ``F.interpolate`` pass that writes
CT-CLIP's ``(z, x, y)`` layout directly from a free transposed view), and rescales/clips/scales in place on the
resampled grid.

Output ``ct_values``: ``(B, 1, D, H, W)`` float32 in [-1, 1]; D runs inferior -> superior, H the patient's right ->
left, W anterior -> posterior (CT-CLIP's layout of CT-RATE volumes); 1.5 x 0.75 x 0.75 mm voxels by default.

Example::

    >>> processor = X2CTCLIPVolumeProcessor()
    >>> processor("valid_1_a_1.nii.gz")["ct_values"].shape                        # a CT-RATE file
    torch.Size([1, 1, 240, 480, 480])
    >>> processor(["ct.nii.gz", "dicom/series_folder/"], device="cuda")          # any orientation, DICOM
    >>> processor(hu_array, spacing=(0.8, 0.8, 2.0), orientation="LPS")          # a nibabel-ordered array
    >>> processor(old_release_file, affine=ct_rate_affine(0.75, 1.5), rescale=(1.0, -1024.0))  # blank header
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .plausibility import ChestCTCheck, chest_ct_check
from .volume_io import DEFAULT_MAX_HU, CTVolume, load_ct


__all__ = ["X2CTCLIPVolumeProcessor", "ctclip_output_size", "resample_trilinear", "resample_trilinear_cpu"]


def ctclip_output_size(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> list[int]:
    """CT-CLIP's resampled size ``int(n * (s / t))`` per axis (at least 1 voxel)."""
    return [max(1, int(int(n) * (float(s) / float(t)))) for n, s, t in zip(shape, spacing, target_spacing)]


def resample_trilinear(
    volume: torch.Tensor, spacing: Sequence[float], target_spacing: Sequence[float]
) -> torch.Tensor:
    """Trilinear resampling of a ``(D, H, W)`` (or ``(B, C, D, H, W)``) float tensor to ``target_spacing`` (mm).

    Same grid as CT-CLIP (``F.interpolate``, ``align_corners=False``, size ``int(n * s / t)``). ``volume`` may be a
    strided view (e.g. a transpose); torch reads it in place and writes a contiguous result.
    """
    squeeze = volume.dim() == 3
    x = volume[None, None] if squeeze else volume
    size = ctclip_output_size(x.shape[-3:], spacing, target_spacing)
    out = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return out[0, 0] if squeeze else out


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation with ``align_corners=False`` (torch's formula:
    ``src = max((dst + 0.5) * n_in / n_out - 0.5, 0)``, the upper neighbour clamped to the last voxel)."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resample_trilinear_cpu(
    array_zyx: np.ndarray,
    spacing_zxy: Sequence[float],
    target_spacing: Sequence[float],
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """:func:`resample_trilinear` of ``array_zyx.transpose(0, 2, 1)`` for a C-contiguous ``(z, y, x)`` numpy array of
    any real dtype, computed on the CPU in two passes that together are trilinear interpolation.

    Pass 1 interpolates along z slice by slice (two input slices -> one float32 slice, optionally clipped to
    ``clip`` first), so no full-size float copy of the input is made; pass 2 is ``F.interpolate(mode="bilinear")``
    on the transposed ``(x, y)`` planes. Trilinear interpolation is separable, so the result equals
    ``F.interpolate(mode="trilinear")`` up to float32 rounding (tested), at about half its time and memory.

    Returns:
        ``(D', H', W')`` float32 tensor in CT-CLIP's ``(z, x, y)`` layout on CT-CLIP's grid.
    """
    n_z, n_y, n_x = array_zyx.shape
    size = ctclip_output_size((n_z, n_x, n_y), spacing_zxy, target_spacing)
    i0, i1, w = _linear_weights(n_z, size[0])
    planes = np.empty((size[0], n_y, n_x), dtype=np.float32)
    low = np.empty((n_y, n_x), dtype=np.float32)
    high = np.empty((n_y, n_x), dtype=np.float32)
    for d in range(size[0]):
        low[...] = array_zyx[i0[d]]
        high[...] = array_zyx[i1[d]]
        if clip is not None:
            np.clip(low, clip[0], clip[1], out=low)
            np.clip(high, clip[0], clip[1], out=high)
        high -= low  # planes[d] = low * (1 - w) + high * w, written as low + (high - low) * w
        high *= w[d]
        np.add(low, high, out=planes[d])
    x = torch.from_numpy(planes).transpose(1, 2)[:, None]  # (z', 1, x, y): a strided view, read in place
    return F.interpolate(x, size=size[1:], mode="bilinear", align_corners=False)[:, 0]


def _as_tuple(value: Any, n: int, name: str, kind=float) -> tuple:
    values = tuple(kind(v) for v in (value if isinstance(value, (list, tuple)) else [value] * n))
    if len(values) != n:
        raise ValueError(f"{name} must have {n} values, got {value!r}.")
    return values


class X2CTCLIPVolumeProcessor(BaseImageProcessor):
    r"""Turns chest CT volumes (NIfTI paths, DICOM series folders, arrays/tensors, :class:`CTVolume`) into CT-CLIP
    input ``ct_values`` of shape ``(B, 1, D, H, W)``.

    Every argument is saved by ``save_pretrained`` (``preprocessor_config.json``) and restored by
    ``from_pretrained``.

    Args:
        hu_min, hu_max: HU window (default -1000, 1000).
        hu_scale: divisor applied after clipping (default 1000 -> values in [-1, 1]).
        target_spacing: output voxel spacing in mm, ``(D, H, W)`` (default (1.5, 0.75, 0.75)).
        target_shape: output size ``(D, H, W)`` after centre crop / pad (default (240, 480, 480)).
        pad_value: value of padded voxels, after scaling (default -1.0, i.e. air).
        clip_before_resample: clip HU before resampling like CT-CLIP's inference loader (default ``False``: its
            training loader resampled first).
        max_voxels: memory budget: inputs with more voxels, or whose resampled grid would have more, are refused
            with a ``ValueError`` before anything large is allocated (default 600 M voxels: a 512 x 512 x 2000
            int16 CT; on the CPU the processor holds the stored input plus about three float32 grids of the
            resampled size: 0.55 GB peak increase in all for a 512 x 512 x 300 ``.nii.gz``, see the benchmark).
        validate_hu: check inputs look like Hounsfield units (see :func:`.volume_io.check_hu`).
        max_hu: upper bound of that check (HU).
    """

    model_input_names = ["ct_values"]

    def __init__(
        self,
        hu_min: float = -1000.0,
        hu_max: float = 1000.0,
        hu_scale: float = 1000.0,
        target_spacing: Sequence[float] = (1.5, 0.75, 0.75),
        target_shape: Sequence[int] = (240, 480, 480),
        pad_value: float = -1.0,
        clip_before_resample: bool = False,
        max_voxels: int = 600_000_000,
        validate_hu: bool = True,
        max_hu: float = DEFAULT_MAX_HU,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hu_min = float(hu_min)
        self.hu_max = float(hu_max)
        self.hu_scale = float(hu_scale)
        self.target_spacing = list(_as_tuple(target_spacing, 3, "target_spacing", float))
        self.target_shape = list(_as_tuple(target_shape, 3, "target_shape", int))
        self.pad_value = float(pad_value)
        self.clip_before_resample = bool(clip_before_resample)
        self.max_voxels = int(max_voxels)
        self.validate_hu = bool(validate_hu)
        self.max_hu = float(max_hu)
        if not self.hu_min < self.hu_max:
            raise ValueError(f"hu_min ({hu_min}) must be below hu_max ({hu_max}).")
        if self.hu_scale <= 0 or not all(s > 0 for s in self.target_spacing) or min(self.target_shape) < 1:
            raise ValueError("hu_scale, target_spacing and target_shape must be positive.")

    # ------------------------------------------------------------------------------------------------ public API
    def __call__(self, volumes: Any, **kwargs) -> BatchFeature:
        return self.preprocess(volumes, **kwargs)

    def preprocess(
        self,
        volumes: Any,
        spacing: Sequence[float] | Sequence[Sequence[float]] | None = None,
        affine: np.ndarray | Sequence[np.ndarray] | None = None,
        orientation: str | None = None,
        rescale: tuple[float, float] | None = None,
        return_tensors: str | None = "pt",
        device: str | torch.device | None = None,
        progress: bool | None = None,
    ) -> BatchFeature:
        """Preprocess one CT or a batch.

        Args:
            volumes: one input or a list of inputs: a ``.nii``/``.nii.gz`` path, a DICOM series folder, a
                :class:`CTVolume`, or a 3-D array/tensor of HU; a 4-D array/tensor is a batch of such arrays.
            spacing: voxel spacing in mm for array inputs (in the array's axis order), one ``(3,)`` for all or one
                per volume; for files it overrides the header (canonical ``(z, y, x)`` order). CT-CLIP took
                spacings from CT-RATE's metadata CSV (float64) while NIfTI headers hold float32: where
                ``n * spacing / target`` is within rounding of an integer the resampled size ``int(...)`` can
                differ by one voxel, so pass the CSV spacings to reproduce CT-CLIP's grid in every case.
            affine: 4 x 4 voxel -> RAS+ mm matrix of array inputs (one, or one per volume); for files it replaces
                the header's affine. Without it arrays are taken as canonical ``(z, y, x)`` = superior, posterior,
                patient-left (see :mod:`.volume_io`) unless ``orientation`` gives their nibabel axis codes.
            orientation: nibabel axis codes of array inputs, e.g. ``"LPS"`` for a CT-RATE nibabel array.
            rescale: ``(slope, intercept)`` to HU, replacing header values (CT-RATE metadata CSV).
            return_tensors: ``"pt"`` (default) or ``"np"``.
            device: where to resample (e.g. ``"cuda"``); the output stays there. Default CPU.
            progress: show a tqdm bar (default: for batches of more than one volume).

        Returns:
            ``BatchFeature`` with ``ct_values``: ``(B, 1, D, H, W)`` float32 in ``[hu_min, hu_max] / hu_scale``.
        """
        items = self._split_batch(volumes)
        spacings = self._per_item(spacing, len(items), "spacing", depth=1)
        affines = self._per_item(affine, len(items), "affine", depth=2)
        show = progress if progress is not None else len(items) > 1
        iterator = range(len(items))
        if show:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="CT volumes", unit="vol")
        outputs = []
        for i in iterator:
            outputs.append(
                self.preprocess_one(
                    items[i],
                    spacing=spacings[i],
                    affine=affines[i],
                    orientation=orientation,
                    rescale=rescale,
                    device=device,
                    source=f"array input #{i}",
                )
            )
        ct_values = torch.stack(outputs)[:, None]
        if return_tensors in (None, "np"):
            return BatchFeature({"ct_values": ct_values.cpu().numpy()}, tensor_type=return_tensors)
        return BatchFeature({"ct_values": ct_values}, tensor_type=return_tensors)

    def preprocess_one(
        self,
        ct: Any,
        *,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
        orientation: str | None = None,
        rescale: tuple[float, float] | None = None,
        device: str | torch.device | None = None,
        source: str = "array input",
    ) -> torch.Tensor:
        """One CT -> ``(D, H, W)`` float32 tensor (see :meth:`preprocess`)."""
        volume = load_ct(
            ct,
            spacing=spacing,
            affine=affine,
            orientation=orientation,
            rescale=rescale,
            max_voxels=self.max_voxels,
            validate=self.validate_hu,
            max_hu=self.max_hu,
            source=source,
        )
        return self.process_volume(volume, device=device)

    def process_volume(self, volume: CTVolume, device: str | torch.device | None = None) -> torch.Tensor:
        """The whole chain for a canonical :class:`CTVolume` -> ``(D, H, W)`` float32 ``ct_values``.

        Each step's cost on a 512 x 512 x 300 CT is printed by ``benchmarks/bench_volume_processor.py``, with the
        MONAI transforms that could do the same steps and were not used (``Spacing``, ``ScaleIntensityRange``:
        slower, see docs/hand_written.md; ``CenterSpatialCrop``: its start is one voxel off CT-CLIP's when the crop
        size is odd and the input size even).
        """
        # CT-CLIP's layout (z, x, y) is the (z, y, x) array with its in-plane axes swapped: a free view.
        spacing = (volume.spacing_mm[0], volume.spacing_mm[2], volume.spacing_mm[1])
        shape = (volume.shape[0], volume.shape[2], volume.shape[1])
        resampled = ctclip_output_size(shape, spacing, self.target_spacing)
        n_resampled = math.prod(resampled)
        if n_resampled > self.max_voxels:
            raise ValueError(
                f"{volume.source}: resampling {shape} voxels of {tuple(round(s, 4) for s in spacing)} mm to "
                f"{tuple(self.target_spacing)} mm gives {resampled} = {n_resampled:,} voxels, more than the memory "
                f"budget max_voxels={self.max_voxels:,} (wrong spacing?)."
            )
        # HU window in stored units, for clipping before resampling (rescale itself happens on the smaller grid).
        lo = (self.hu_min - volume.intercept) / volume.slope
        hi = (self.hu_max - volume.intercept) / volume.slope
        lo, hi = min(lo, hi), max(lo, hi)

        # 1-2. trilinear resampling of the stored values straight into (z, x, y) on CT-CLIP's grid: on the CPU in two
        #      separable passes without a full float copy; on another device with F.interpolate(mode="trilinear")
        clip = (lo, hi) if self.clip_before_resample else None
        if device is None or torch.device(device).type == "cpu":
            x = resample_trilinear_cpu(volume.array, spacing, self.target_spacing, clip=clip)
        else:
            x = torch.from_numpy(volume.array.astype(np.float32)).to(device)
            if clip is not None:
                x.clamp_(*clip)
            x = resample_trilinear(x.transpose(1, 2), spacing, self.target_spacing)
        # 3. centre crop, CT-CLIP's start index (n - t) // 2 (a view)
        starts = [max((n - t) // 2, 0) for n, t in zip(x.shape, self.target_shape)]
        x = x[tuple(slice(s, s + t) for s, t in zip(starts, self.target_shape))].contiguous()
        # 4. stored units -> HU -> clip -> / hu_scale, in place on the (smaller) resampled grid; dividing last keeps
        #    the window's ends exact (-1000 / 1000 = -1.0)
        if volume.slope != 1.0:
            x.mul_(volume.slope)
        if volume.intercept != 0.0:
            x.add_(volume.intercept)
        x.clamp_(self.hu_min, self.hu_max).div_(self.hu_scale)
        # 5. pad with pad_value, (t - n) // 2 before and the rest after, as CT-CLIP
        if tuple(x.shape) != tuple(self.target_shape):
            pads = []
            for n, t in zip(reversed(x.shape), reversed(self.target_shape)):  # F.pad lists the last axis first
                before = (t - n) // 2
                pads += [before, t - n - before]
            x = F.pad(x, pads, value=self.pad_value)
        return x

    def check_volume(
        self,
        ct: Any,
        *,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
        orientation: str | None = None,
        rescale: tuple[float, float] | None = None,
    ) -> ChestCTCheck:
        """Does ``ct`` cover the chest? Loads it as :meth:`preprocess_one` does (same budget and HU checks) and runs
        :func:`.plausibility.chest_ct_check`: the share of axial slices whose body cross-section is at least 10%
        lung-like air (-950 to -600 HU); a chest CT needs 40% (measured values in docs/limits_and_checks.md).

        Returns:
            :class:`.plausibility.ChestCTCheck` with the measured numbers, ``plausible`` and ``reason``.
        """
        volume = ct if isinstance(ct, CTVolume) else load_ct(
            ct, spacing=spacing, affine=affine, orientation=orientation, rescale=rescale, max_voxels=self.max_voxels,
            validate=self.validate_hu, max_hu=self.max_hu,
        )  # fmt: skip
        return chest_ct_check(volume)

    # ---------------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _split_batch(volumes: Any) -> list:
        if isinstance(volumes, (list, tuple)):
            if len(volumes) == 0:
                raise ValueError("No CT volumes given (empty list).")
            return list(volumes)
        ndim = getattr(volumes, "ndim", None)
        if ndim == 5 and volumes.shape[1] == 1:  # (B, 1, D, H, W)
            volumes = volumes[:, 0]
            ndim = 4
        if ndim == 4:
            return [volumes[i] for i in range(volumes.shape[0])]
        return [volumes]

    @staticmethod
    def _per_item(value: Any, n: int, name: str, depth: int) -> list:
        """Broadcast one value (spacing: depth 1, affine: depth 2) or check a per-item list."""
        if value is None:
            return [None] * n
        arr_ndim = np.ndim(value) if not isinstance(value, (list, tuple)) or len(value) == 0 else None
        if arr_ndim is None:
            try:
                arr_ndim = np.asarray(value, dtype=np.float64).ndim
            except (ValueError, TypeError):
                arr_ndim = depth + 1  # ragged list: one per item
        if arr_ndim == depth:
            return [value] * n
        if len(value) != n:
            raise ValueError(f"{name}: got {len(value)} values for {n} volumes.")
        return list(value)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_processor_class", None)
        return out



# The processor folder's nested config then names this class in an `auto_map`: transformers >= 5.25 loads every
# sub-processor of a ProcessorMixin through AutoImageProcessor, which finds a class outside transformers only there
# (5.24 looked secondary sub-processors up by class name; see processing_x2ctclip).
X2CTCLIPVolumeProcessor.register_for_auto_class("AutoImageProcessor")
