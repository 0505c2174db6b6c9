"""Image processor for the CXR tower: chest radiographs -> ``pixel_values`` of shape ``(B, 3, 224, 224)``.

Pipeline per image (the X2CT-CLIP / CXR-CLIP evaluation transform):

1. load (:func:`~.image_io.load_radiograph`): DICOM Modality LUT and VOI LUT / window, ``MONOCHROME1`` inversion,
   ``PatientOrientation`` to the project convention (patient's right on the image's left, head up), grey, min-max to
   [0, 1] per image, bone bright;
2. resize so the shortest side is ``size["shortest_edge"]`` (224), keeping the aspect ratio, with PIL's
   antialiased filter (``resample``, bilinear by default: what ``torchvision.transforms.Resize`` does on PIL images);
3. centre crop to ``crop_size`` (224 x 224; zero padding where the image is smaller, as torchvision's ``CenterCrop``).
   Steps 2 and 3 run as one: only the source region under the crop is resampled (PIL's ``resize(box=...)``, same
   filter weights, so the result equals resize-then-crop), so no ``224 x (224 * aspect)`` intermediate is made;
4. replicate the grey channel to 3 channels;
5. normalise ``(x - image_mean) / image_std``: 0.5 / 0.5 for the Swin-Tiny encoder (CXR-CLIP's default), ImageNet
   statistics (``IMAGENET_DEFAULT_MEAN`` / ``IMAGENET_DEFAULT_STD`` from ``transformers.image_utils``) for ResNet-50.

Simulated CXRs (from CT) are made in the same orientation and intensity convention, so real and simulated images go
through the same processor with no manual mirroring.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs

from .image_io import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, Radiograph, load_radiograph
from .plausibility import RadiographCheck, radiograph_check

__all__ = ["NonFrontalViewWarning", "X2CTCLIPImageProcessor", "X2CTCLIPImageProcessorKwargs"]


def _shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """torchvision's ``Resize(n)`` size: the short side to ``n``, the long side to ``int(n * long / short)``."""
    short, long = sorted((height, width))
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


class NonFrontalViewWarning(UserWarning):
    """Issued for a radiograph whose DICOM tags say it is a lateral or oblique view: the CXR encoder of X2CT-CLIP was
    trained on frontal views (simulated PA projections), so its embedding of such an image is not meaningful."""


class X2CTCLIPImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of :class:`X2CTCLIPImageProcessor` beyond transformers' ``ImagesKwargs``.

    Attributes:
        apply_voi_lut: apply the DICOM VOI LUT / ``WindowCenter`` + ``WindowWidth`` before min-max scaling.
        reorient: flip DICOM images whose ``PatientOrientation`` is not (``L``, ``F``) to the project convention.
        warn_non_frontal: warn (:class:`NonFrontalViewWarning`) when DICOM tags indicate a lateral or oblique view.
        max_pixels: decoded-size budget in pixels, checked from the file header before decoding.
        max_aspect_ratio: largest long-to-short side ratio accepted.
    """

    apply_voi_lut: bool | None
    reorient: bool | None
    warn_non_frontal: bool | None
    max_pixels: int | None
    max_aspect_ratio: float | None


def _size_dict(value: Any, name: str, allow_shortest_edge: bool) -> dict[str, int]:
    """Validate a size parameter and return it as a dict: ``{"height": h, "width": w}``, or ``{"shortest_edge": n}``
    where allowed. An int means ``shortest_edge`` where allowed (``size``), else a square (``crop_size``); a pair of
    ints means (height, width)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        side = int(value)
        value = {"shortest_edge": side} if allow_shortest_edge else {"height": side, "width": side}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if not isinstance(value, dict):
        raise ValueError(f"X2CTCLIPImageProcessor: {name} must be an int or a dict, got {value!r}.")
    value = dict(value)
    allowed = [{"height", "width"}] + [{"shortest_edge"}] * allow_shortest_edge
    if set(value) not in allowed:
        raise ValueError(
            f"X2CTCLIPImageProcessor: {name} must have the keys {' or '.join(map(str, map(sorted, allowed)))}, "
            f"got {sorted(value)}."
        )
    for key, side in value.items():
        if not isinstance(side, (int, np.integer)) or isinstance(side, bool) or side <= 0:
            raise ValueError(f"X2CTCLIPImageProcessor: {name}[{key!r}] must be a positive int, got {side!r}.")
    return {key: int(side) for key, side in value.items()}


def _triple(value: Any, name: str) -> list[float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"X2CTCLIPImageProcessor: {name} must be a float or 3 floats, got {value!r}.")
    if name == "image_std" and any(v <= 0 for v in values):
        raise ValueError(f"X2CTCLIPImageProcessor: image_std must be positive, got {values}.")
    return values


class X2CTCLIPImageProcessor(BaseImageProcessor):
    r"""Turns chest radiographs into the CXR encoder's input ``pixel_values`` (``(B, 3, 224, 224)`` float32).

    Accepts PNG/JPEG/TIFF paths, DICOM paths, ``pydicom.Dataset``, PIL images (8/16 bit, grey, RGB, RGBA, palette),
    NumPy arrays and torch tensors (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``, C in {1, 3, 4}); a list or a 4-D
    array/tensor is a batch. See :mod:`.image_io` for the intensity and orientation conventions (patient's right on the
    image's left, head up; bone bright) and the module docstring for the pipeline.

    Args:
        do_resize: resize before cropping.
        size: ``{"shortest_edge": n}`` (keep the aspect ratio; default 224) or ``{"height": h, "width": w}``; an int
            means ``shortest_edge``.
        resample: PIL filter for resizing (default bilinear, antialiased when shrinking).
        do_center_crop: centre crop (zero padding where the image is smaller).
        crop_size: ``{"height": h, "width": w}`` (default 224 x 224); an int means a square.
        do_normalize: apply ``(x - image_mean) / image_std`` per channel to the [0, 1] image.
        image_mean / image_std: 3 floats (default 0.5, the Swin-Tiny CXR-CLIP setting; use
            ``IMAGENET_DEFAULT_MEAN`` / ``IMAGENET_DEFAULT_STD`` for the ResNet-50 encoder).
        apply_voi_lut / reorient / warn_non_frontal: DICOM handling, see :class:`X2CTCLIPImageProcessorKwargs`.
        max_pixels: decoded-size budget (pixels; default 36 M), checked before decoding; ``0`` switches it off.
        max_aspect_ratio: images longer than this many times their width (or wider) are refused (default 4;
            ``0`` switches it off). See docs/limits_and_checks.md.

    Example::

        >>> processor = X2CTCLIPImageProcessor()
        >>> processor(["frontal.dcm", "frontal.png"])["pixel_values"].shape
        torch.Size([2, 3, 224, 224])
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = X2CTCLIPImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: int | dict[str, int] | None = None,
        resample: PILImageResampling | int = PILImageResampling.BILINEAR,
        do_center_crop: bool = True,
        crop_size: int | dict[str, int] | None = None,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        apply_voi_lut: bool = True,
        reorient: bool = True,
        warn_non_frontal: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.do_resize = bool(do_resize)
        self.size = _size_dict(224 if size is None else size, "size", True)
        self.resample = self._check_resample(resample)
        self.do_center_crop = bool(do_center_crop)
        self.crop_size = _size_dict(224 if crop_size is None else crop_size, "crop_size", False)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _triple(0.5 if image_mean is None else image_mean, "image_mean")
        self.image_std = _triple(0.5 if image_std is None else image_std, "image_std")
        self.apply_voi_lut = bool(apply_voi_lut)
        self.reorient = bool(reorient)
        self.warn_non_frontal = bool(warn_non_frontal)
        self.max_pixels = self._check_limit(max_pixels, "max_pixels", int)
        self.max_aspect_ratio = self._check_limit(max_aspect_ratio, "max_aspect_ratio", float)

    _PARAMETERS = (
        "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_normalize", "image_mean", "image_std",
        "apply_voi_lut", "reorient", "warn_non_frontal", "max_pixels", "max_aspect_ratio",
    )  # fmt: skip

    @staticmethod
    def _check_limit(value: Any, name: str, kind: type) -> Any:
        """A budget as stored in the config: a number >= 0 (0 = no limit; ``None`` is read as 0)."""
        if value is None:
            return kind(0)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"X2CTCLIPImageProcessor: {name} must be a number >= 0, got {value!r}.") from None
        if not number >= 0 or (name == "max_aspect_ratio" and 0 < number < 1):
            raise ValueError(f"X2CTCLIPImageProcessor: {name} must be 0 (off) or a number >= 1, got {value!r}.")
        return number

    @staticmethod
    def _check_resample(resample: Any) -> int:
        try:
            return int(PILImageResampling(int(resample)))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"X2CTCLIPImageProcessor: resample must be a PIL resampling filter (0-5), got {resample!r}."
            ) from error

    # -- single-image operations on (H, W) float32 arrays in [0, 1] ---------------------------------------------
    @staticmethod
    def resize(pixels: np.ndarray, size: dict[str, int], resample: int = PILImageResampling.BILINEAR) -> np.ndarray:
        """Resize an ``(H, W)`` float image: the shortest side to ``size["shortest_edge"]`` (the long side to
        ``int(n * long / short)``, as torchvision's ``Resize(n)``), or to ``size["height"] x size["width"]``."""
        from PIL import Image

        height, width = pixels.shape
        if "shortest_edge" in size:
            new_height, new_width = _shortest_edge_size(height, width, size["shortest_edge"])
        else:
            new_height, new_width = size["height"], size["width"]
        if (new_height, new_width) == (height, width):
            return pixels
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))  # mode "F": 32-bit float, no rounding
        resized = np.asarray(image.resize((new_width, new_height), resample=PILImageResampling(resample)))
        # Filters with negative lobes (bicubic, Lanczos) overshoot; keep the [0, 1] range of the 8-bit originals.
        return np.clip(resized, 0.0, 1.0)

    @classmethod
    def resize_and_crop(
        cls,
        pixels: np.ndarray,
        size: dict[str, int],
        crop_size: dict[str, int],
        resample: int = PILImageResampling.BILINEAR,
    ) -> np.ndarray:
        """:meth:`resize` then :meth:`center_crop`, computing only the cropped pixels: the crop window of the resized
        grid is mapped back to a (fractional) source box and only that box is resampled with PIL's
        ``resize(box=...)``, whose filter weights are those of the full resize (same scale, neighbours outside the
        box included), so the result equals resize-then-crop to float32 rounding. Memory: the output size, not
        ``shortest_edge x shortest_edge * aspect``."""
        from PIL import Image

        height, width = pixels.shape
        if "shortest_edge" in size:
            new_height, new_width = _shortest_edge_size(height, width, size["shortest_edge"])
        else:
            new_height, new_width = size["height"], size["width"]
        out_h, out_w = crop_size["height"], crop_size["width"]
        # The crop window in the resized grid, clipped to it (center_crop pads what is missing).
        win_h, win_w = min(out_h, new_height), min(out_w, new_width)
        top, left = int(round((new_height - win_h) / 2.0)), int(round((new_width - win_w) / 2.0))
        if (new_height, new_width) == (height, width):
            return cls.center_crop(pixels, crop_size)
        scale_y, scale_x = height / new_height, width / new_width
        box = (left * scale_x, top * scale_y, (left + win_w) * scale_x, (top + win_h) * scale_y)
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
        window = np.asarray(image.resize((win_w, win_h), resample=PILImageResampling(resample), box=box))
        return cls.center_crop(np.clip(window, 0.0, 1.0), crop_size)

    @staticmethod
    def center_crop(pixels: np.ndarray, crop_size: dict[str, int]) -> np.ndarray:
        """Centre crop an ``(H, W)`` image to ``crop_size``, padding with 0 where it is smaller (torchvision's
        ``CenterCrop``: offsets ``round((H - h) / 2)``)."""
        height, width = pixels.shape
        out_h, out_w = crop_size["height"], crop_size["width"]
        if height < out_h or width < out_w:
            pad_h, pad_w = max(out_h - height, 0), max(out_w - width, 0)
            pixels = np.pad(pixels, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
            height, width = pixels.shape
        top, left = int(round((height - out_h) / 2.0)), int(round((width - out_w) / 2.0))
        return pixels[top : top + out_h, left : left + out_w]

    # -- batch ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _as_list(images: Any) -> list[Any]:
        if images is None:
            raise ValueError("X2CTCLIPImageProcessor: images is None; pass a path, image, array or a list of them.")
        if isinstance(images, (list, tuple)):
            items = list(images)
        elif getattr(images, "ndim", None) == 4 and hasattr(images, "shape"):
            items = list(images)  # a (B, C, H, W) / (B, H, W, C) array or tensor
        else:
            items = [images]
        if not items:
            raise ValueError("X2CTCLIPImageProcessor: got an empty list of images.")
        return items

    def _check_view(self, radiograph: Radiograph) -> None:
        if radiograph.view in ("lateral", "oblique"):
            tag = f"ViewPosition {radiograph.view_position!r}" if radiograph.view_position else "its DICOM tags"
            warnings.warn(
                f"{radiograph.source}: {tag} indicates a {radiograph.view} view, but X2CT-CLIP's CXR encoder expects a "
                "frontal (PA/AP) chest X-ray; its output for this image is not meaningful.",
                NonFrontalViewWarning,
                stacklevel=4,
            )

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """Process one radiograph or a batch into ``BatchFeature({"pixel_values": (B, 3, h, w) float32})``.

        Args:
            images: one input or a list of inputs (see the class docstring); a 4-D array/tensor is a batch.
            return_tensors: ``"pt"`` (default), ``"np"`` or ``None`` (a NumPy array).
            **kwargs: per-call overrides of the constructor parameters (``size``, ``crop_size``, ``image_mean``, ...).

        Raises:
            ValueError: naming the input, for unreadable, empty or malformed images or unknown keyword arguments.
            FileNotFoundError: for a path that does not exist.
        """
        unknown = set(kwargs) - set(self._PARAMETERS)
        # Keys the processor machinery may pass along but that do not change this pipeline.
        unknown -= {"data_format", "input_data_format", "device", "do_convert_rgb", "disable_grouping"}
        if unknown:
            raise ValueError(
                f"X2CTCLIPImageProcessor: unknown argument(s) {sorted(unknown)}; valid: {', '.join(self._PARAMETERS)}."
            )
        options = {name: getattr(self, name) if kwargs.get(name) is None else kwargs[name] for name in self._PARAMETERS}
        size = _size_dict(options["size"], "size", True)
        crop_size = _size_dict(options["crop_size"], "crop_size", False)
        resample = self._check_resample(options["resample"])
        mean = np.asarray(_triple(options["image_mean"], "image_mean"), dtype=np.float32)[:, None, None]
        std = np.asarray(_triple(options["image_std"], "image_std"), dtype=np.float32)[:, None, None]
        max_pixels = self._check_limit(options["max_pixels"], "max_pixels", int) or None
        max_aspect = self._check_limit(options["max_aspect_ratio"], "max_aspect_ratio", float) or None

        outputs = []
        for item in self._as_list(images):
            radiograph = load_radiograph(item, apply_voi_lut=options["apply_voi_lut"], reorient=options["reorient"],
                                         max_pixels=max_pixels, max_aspect_ratio=max_aspect)  # fmt: skip
            if options["warn_non_frontal"]:
                self._check_view(radiograph)
            pixels = radiograph.pixels
            if options["do_resize"] and options["do_center_crop"]:
                pixels = self.resize_and_crop(pixels, size, crop_size, resample)
            elif options["do_resize"]:
                pixels = self.resize(pixels, size, resample)
            elif options["do_center_crop"]:
                pixels = self.center_crop(pixels, crop_size)
            pixels = np.repeat(pixels[None].astype(np.float32), 3, axis=0)
            if options["do_normalize"]:
                pixels = (pixels - mean) / std
            outputs.append(pixels)
        shapes = {o.shape for o in outputs}
        if len(shapes) > 1:
            raise ValueError(
                f"X2CTCLIPImageProcessor: images of different output shapes {sorted(shapes)} cannot form a batch; "
                "enable do_center_crop or resize to a fixed height and width."
            )
        pixel_values = np.stack(outputs).astype(np.float32, copy=False)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def __call__(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def check_radiograph(self, image: Any) -> RadiographCheck:
        """Is ``image`` plausibly a greyscale frontal chest radiograph? Loads it as :meth:`preprocess` does and runs
        :func:`.plausibility.radiograph_check` (colour saturation, DICOM modality and view, aspect ratio, intensity
        spread; measured numbers and thresholds in docs/limits_and_checks.md).

        Returns:
            :class:`.plausibility.RadiographCheck` with the measured numbers, ``plausible`` and ``reason``.
        """
        return radiograph_check(
            image, apply_voi_lut=self.apply_voi_lut, reorient=self.reorient, max_pixels=self.max_pixels or None,
            max_aspect_ratio=self.max_aspect_ratio or None,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["resample"] = int(self.resample)
        return output


# `save_pretrained` copies this file (and image_io.py) next to the config and writes an `auto_map`, so that
# `AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)` works where x2ctclip is not installed.
X2CTCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")
