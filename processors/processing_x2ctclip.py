"""``X2CTCLIPProcessor``: one processor for the three X2CT-CLIP inputs, like ``CLIPProcessor`` for two.

- ``images`` (chest X-rays) -> ``pixel_values`` ``(B, 3, 224, 224)``, by
  :class:`~.image_processing_cxr.X2CTCLIPImageProcessor`;
- ``volumes`` (chest CTs) -> ``ct_values`` ``(B, 1, D, H, W)``, by
  :class:`~.image_processing_volume.X2CTCLIPVolumeProcessor`;
- ``text`` (reports or prompts) -> ``input_ids`` / ``attention_mask`` ``(B, max_length)`` via the report tokenizer,
  CT-CLIP style (cleaned by :func:`~.tokenization.clean_report`, 512 tokens, ``padding="max_length"``, truncation).

Saving and loading
------------------
``save_pretrained`` writes ``processor_config.json`` (both image processors' parameters and this class's text
parameters), the tokenizer files, and copies this file and the modules it imports next to them with an ``auto_map``,
so the folder loads with ``AutoProcessor.from_pretrained(folder)`` once ``x2ctclip.processors`` is imported, and with
``AutoProcessor.from_pretrained(folder, trust_remote_code=True)`` where x2ctclip is not installed (Hub remote code).

The volume processor is a second image processor, so its attribute name must contain ``image_processor`` for
transformers to recognise it (``volume_image_processor``; :attr:`X2CTCLIPProcessor.volume_processor` is an alias).
transformers 5.24 loads such a secondary sub-processor by looking its class name up with
``ProcessorMixin.get_possibly_dynamic_module``, which searches transformers itself and then the classes registered with
the auto classes; when the class is not registered (any remote-code session, where ``x2ctclip.processors`` was never
imported) that search reaches ``VIDEO_PROCESSOR_MAPPING``, which has no ``_extra_content`` in 5.24, and loading crashes
with ``AttributeError``. This class overrides the lookup to resolve its own sub-processor classes first, which are
importable wherever this module is. transformers 5.25 loads every sub-processor through ``AutoImageProcessor``
instead, which finds a remote-code class only through the ``auto_map`` of its nested config: both image processors
register for ``AutoImageProcessor``, so the folder loads with either version.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_cxr import X2CTCLIPImageProcessor
from .image_processing_volume import X2CTCLIPVolumeProcessor
from .tokenization import REPORT_TOKENIZER_KWARGS, clean_report

__all__ = ["X2CTCLIPProcessor"]

# Keyword arguments of `__call__` that go to the tokenizer (the others go to the image or the volume processor).
_TEXT_KWARGS = frozenset(
    {
        "max_length", "padding", "truncation", "add_special_tokens", "pad_to_multiple_of", "padding_side",
        "return_attention_mask", "return_token_type_ids", "return_special_tokens_mask", "return_length", "verbose",
    }
)  # fmt: skip


class X2CTCLIPProcessor(ProcessorMixin):
    r"""Wraps the CXR image processor, the CT volume processor and the report tokenizer into one processor.

    Args:
        image_processor: the chest X-ray processor (default: a new :class:`X2CTCLIPImageProcessor`).
        volume_image_processor: the CT processor (default: a new :class:`X2CTCLIPVolumeProcessor`).
        tokenizer: the report tower's BERT tokenizer (see :mod:`.tokenization`: ``load_report_tokenizer`` or
            ``build_wordpiece_tokenizer``). Required.
        clean_text: pass every text through :func:`~.tokenization.clean_report` (removes ``" ' ( )``, normalises
            whitespace, maps ``"Not given."`` to ``""``) as CT-CLIP did for reports.
        max_length / padding / truncation: tokenizer settings (CT-CLIP: 512, ``"max_length"``, ``True``).

    Example::

        >>> processor = X2CTCLIPProcessor(tokenizer=load_report_tokenizer("all-MiniLM-L6-v2"))
        >>> batch = processor(images=["cxr.dcm"], volumes=["ct.nii.gz"], text=["There is no pleural effusion."])
        >>> sorted(batch)
        ['attention_mask', 'ct_values', 'input_ids', 'pixel_values']
    """

    def __init__(
        self,
        image_processor: X2CTCLIPImageProcessor | None = None,
        volume_image_processor: X2CTCLIPVolumeProcessor | None = None,
        tokenizer: Any = None,
        clean_text: bool = True,
        max_length: int = REPORT_TOKENIZER_KWARGS["max_length"],
        padding: bool | str = REPORT_TOKENIZER_KWARGS["padding"],
        truncation: bool | str = REPORT_TOKENIZER_KWARGS["truncation"],
        **kwargs: Any,
    ) -> None:
        if tokenizer is None:
            raise ValueError(
                "X2CTCLIPProcessor needs the report tokenizer, e.g. "
                "tokenizer=load_report_tokenizer('all-MiniLM-L6-v2') or build_wordpiece_tokenizer(texts, vocab_size) "
                "from x2ctclip.processors."
            )
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
            raise ValueError(f"X2CTCLIPProcessor: max_length must be a positive int, got {max_length!r}.")
        image_processor = X2CTCLIPImageProcessor() if image_processor is None else image_processor
        volume_image_processor = X2CTCLIPVolumeProcessor() if volume_image_processor is None else volume_image_processor
        super().__init__(image_processor, volume_image_processor, tokenizer, **kwargs)
        self.clean_text = bool(clean_text)
        self.max_length = max_length
        self.padding = padding
        self.truncation = truncation

    @property
    def volume_processor(self) -> X2CTCLIPVolumeProcessor:
        """The CT volume processor (stored as ``volume_image_processor``, see the module docstring)."""
        return self.volume_image_processor

    @staticmethod
    def get_possibly_dynamic_module(module_name: str):
        """Resolve a sub-processor class by name: this processor's own classes first (they are importable wherever
        this module is, including as Hub remote code), then transformers' registries."""
        own = {cls.__name__: cls for cls in (X2CTCLIPImageProcessor, X2CTCLIPVolumeProcessor)}
        if module_name in own:
            return own[module_name]
        return ProcessorMixin.get_possibly_dynamic_module(module_name)

    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[dict, dict, dict]:
        image_keys = set(X2CTCLIPImageProcessor._PARAMETERS)
        volume_keys = set(inspect.signature(self.volume_image_processor.preprocess).parameters) - {
            "self", "volumes", "return_tensors", "args", "kwargs",
        }  # fmt: skip
        image_kwargs, volume_kwargs, text_kwargs = {}, {}, {}
        for key, value in kwargs.items():
            if key in image_keys:
                image_kwargs[key] = value
            elif key in volume_keys:
                volume_kwargs[key] = value
            elif key in _TEXT_KWARGS:
                text_kwargs[key] = value
            else:
                raise ValueError(
                    f"X2CTCLIPProcessor: unknown argument {key!r}; image arguments: {sorted(image_keys)}, volume "
                    f"arguments: {sorted(volume_keys)}, text arguments: {sorted(_TEXT_KWARGS)}."
                )
        return image_kwargs, volume_kwargs, text_kwargs

    def _prepare_text(self, text: Any) -> str | list[str]:
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, Sequence) or not texts:
            raise ValueError(f"X2CTCLIPProcessor: text must be a string or a non-empty list of strings, got {text!r}.")
        for i, item in enumerate(texts):
            if not isinstance(item, str):
                raise ValueError(f"X2CTCLIPProcessor: text[{i}] is a {type(item).__name__}, not a string.")
        if self.clean_text:
            texts = [clean_report(item) for item in texts]
        return list(texts)

    def __call__(
        self,
        images: Any = None,
        volumes: Any = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Process any combination of chest X-rays, CT volumes and texts into one ``BatchFeature``.

        Args:
            images: one chest X-ray or a list (paths, DICOM, PIL, arrays, tensors) -> ``pixel_values``
                ``(B_img, 3, 224, 224)``.
            volumes: one CT or a list (NIfTI paths, DICOM series folders, arrays, tensors) -> ``ct_values``
                ``(B_ct, 1, D, H, W)``.
            text: one string or a list (reports or prompts) -> ``input_ids`` and ``attention_mask``
                ``(B_text, max_length)``.
            return_tensors: ``"pt"`` (default) or ``"np"``.
            **kwargs: per-call options, routed by name to the image processor (``size``, ``crop_size``,
                ``image_mean``, ...), the volume processor (``spacing``, ``affine``, ``rescale``, ...) or the
                tokenizer (``max_length``, ``padding``, ``truncation``, ...).

        Raises:
            ValueError: when nothing is given, for unknown keyword arguments, and for bad inputs (from the
                sub-processors, naming the file and the problem).
        """
        if images is None and volumes is None and text is None:
            raise ValueError("X2CTCLIPProcessor: give at least one of images, volumes or text.")
        image_kwargs, volume_kwargs, text_kwargs = self._split_kwargs(kwargs)
        data: dict[str, Any] = {}
        if text is not None:
            settings = {"max_length": self.max_length, "padding": self.padding, "truncation": self.truncation}
            settings.update(return_token_type_ids=False, **text_kwargs)
            data.update(self.tokenizer(self._prepare_text(text), return_tensors=return_tensors, **settings))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        if volumes is not None:
            data.update(self.volume_image_processor(volumes, return_tensors=return_tensors, **volume_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "ct_values", "input_ids", "attention_mask"]


# `save_pretrained` copies this file and its relative imports into the folder and writes an `auto_map`, so the folder
# loads with `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` without x2ctclip installed.
X2CTCLIPProcessor.register_for_auto_class("AutoProcessor")
