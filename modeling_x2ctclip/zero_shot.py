"""Zero-shot classification of the CT-RATE findings from chest X-rays (or any embedding in the shared space).

For each finding ``f`` and prompt template pair ``(positive, negative)`` (e.g. ``"There is {}."`` /
``"There is no {}."``), the image embedding is compared with both prompt embeddings, the two scaled cosine
similarities go through a softmax, and the positive share is the template's probability of ``f``:

    p_t(f) = softmax(s * [cos(x, e_pos), cos(x, e_neg)])[0] = sigmoid(s * (cos(x, e_pos) - cos(x, e_neg)))

with ``s = exp(model.logit_scale)``, as CT-CLIP and X2CT-CLIP do. **Prompt ensemble** (several templates):
``ensemble="probabilities"`` (default) averages the per-template probabilities ``p_t``;
``ensemble="embeddings"`` averages the L2-normalised prompt embeddings of each side over templates and
renormalises them (CLIP's prompt ensembling), then applies the softmax once. With one template both are the same.

All prompts are encoded **once** (:meth:`ZeroShotClassifier.encode_prompts`, cached): classifying N images costs N
image forwards plus one pass over the ``n_templates * n_findings * 2`` prompts, not a text pass per image and
finding (``benchmarks/bench_zeroshot.py`` measures the difference). Call ``encode_prompts(force=True)`` after
changing the text tower's weights.

This module is part of the library (it moved here from ``x2ctclip.train.zeroshot``, which re-exports it with a
DeprecationWarning for one release) and imports nothing from the training package.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.utils import ModelOutput  # = transformers.modeling_outputs.ModelOutput, without modeling_utils

__all__ = ["ENSEMBLES", "ZeroShotClassifier", "ZeroShotOutput", "build_prompts"]

ENSEMBLES = ("probabilities", "embeddings")


@dataclass
class ZeroShotOutput(ModelOutput):
    r"""Zero-shot predictions.

    Args:
        probabilities (`(B, n_findings)`): ensemble probability that each finding is present.
        logits (`(B, n_findings)`): log-odds of ``probabilities`` (clamped to +-30); the input of
            :func:`x2ctclip.calibration.apply_calibration` (and of the training package's ``Calibrator`` fit).
        per_template_probabilities (`(B, n_templates, n_findings)`): probability under each prompt template.
        image_embeds (`(B, projection_dim)`): the L2-normalised embeddings that were classified: CXR latents
            (``cxr_embeds`` elsewhere) or CT latents (``ct_embeds``), so the name stays modality-neutral, as CLIP's.
    """

    probabilities: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    per_template_probabilities: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


def build_prompts(findings: Sequence[str], templates: Sequence[Sequence[str]]) -> list[str]:
    """Prompt texts in the order ``[template][finding][positive, negative]`` (flattened), names inserted as given."""
    prompts = []
    for pair in templates:
        if len(pair) != 2 or any("{}" not in t for t in pair):
            raise ValueError(f"prompt templates must be (positive, negative) pairs with '{{}}', got {pair!r}.")
        for finding in findings:
            prompts.extend(t.format(finding) for t in pair)
    return prompts


class ZeroShotClassifier:
    """Zero-shot multi-label classifier on top of an :class:`x2ctclip.X2CTCLIPModel` (or any model with the same API).

    The model must provide ``get_text_features(input_ids=..., attention_mask=...).pooler_output`` and
    ``get_cxr_features(pixel_values=...).pooler_output`` (projected, un-normalised ``(B, projection_dim)``), a
    ``logit_scale`` parameter holding the *log* of the logit scale, and ``config.findings`` /
    ``config.prompt_templates`` (used unless ``findings`` / ``prompt_templates`` are given).

    Args:
        model: the model; it is switched to eval mode while encoding and restored afterwards.
        tokenizer: the report tokenizer of the text tower.
        findings: names, in label order (default ``model.config.findings``).
        prompt_templates: ``(positive, negative)`` pairs with ``{}`` (default ``model.config.prompt_templates``).
        ensemble: ``"probabilities"`` or ``"embeddings"`` (see the module docstring).
        max_length: prompt token limit (prompts are padded to the longest in a batch, not to 512: with the
            attention mask the [CLS] embedding does not depend on the padding).
        batch_size: images per forward pass in :meth:`predict` (and prompts per pass).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        findings: Sequence[str] | None = None,
        prompt_templates: Sequence[Sequence[str]] | None = None,
        ensemble: str = "probabilities",
        max_length: int = 64,
        batch_size: int = 64,
    ):
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}.")
        for name in ("get_text_features", "get_cxr_features", "logit_scale"):
            if not hasattr(model, name):
                raise ValueError(f"the model has no {name!r}; ZeroShotClassifier needs an X2CTCLIPModel-like model.")
        config = getattr(model, "config", None)
        self.findings = list(findings if findings is not None else getattr(config, "findings", None) or [])
        templates = prompt_templates if prompt_templates is not None else getattr(config, "prompt_templates", None)
        self.prompt_templates = [tuple(t) for t in (templates or [])]
        if not self.findings:
            raise ValueError("no findings: pass findings=... or use a model whose config lists them.")
        if not self.prompt_templates:
            raise ValueError("no prompt templates: pass prompt_templates=... or set config.prompt_templates.")
        self.prompts = build_prompts(self.findings, self.prompt_templates)  # validates the templates
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}.")
        self.model = model
        self.tokenizer = tokenizer
        self.ensemble = ensemble
        self.max_length = max_length
        self.batch_size = batch_size
        self._text_embeds: torch.Tensor | None = None  # (n_templates, n_findings, 2, D), L2-normalised

    @property
    def n_findings(self) -> int:
        return len(self.findings)

    @property
    def n_templates(self) -> int:
        return len(self.prompt_templates)

    def _device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration):
            return torch.device("cpu")

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = bool(getattr(self.model, "training", False))
        if hasattr(self.model, "eval"):
            self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            if was_training:
                self.model.train()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(len(texts), projection_dim)`` (float32), in batches of ``batch_size``."""
        device = self._device()
        chunks = []
        with self._eval_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out = self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
                )
                chunks.append(F.normalize(out.pooler_output.float(), dim=-1))
        return torch.cat(chunks)

    def encode_prompts(self, force: bool = False) -> torch.Tensor:
        """Encodes every prompt once and caches the result.

        Returns:
            ``(n_templates, n_findings, 2, projection_dim)`` L2-normalised embeddings; index 0 / 1 of the third axis
            is the positive / negative prompt.
        """
        if self._text_embeds is None or force:
            embeds = self.encode_texts(self.prompts)
            self._text_embeds = embeds.reshape(self.n_templates, self.n_findings, 2, -1)
        return self._text_embeds

    def clear_cache(self) -> None:
        """Drops the cached prompt embeddings (they are recomputed on the next prediction)."""
        self._text_embeds = None

    def predict_from_embeddings(self, image_embeds: torch.Tensor) -> ZeroShotOutput:
        """Classifies precomputed image embeddings ``(B, projection_dim)`` (normalised or not).

        Any embedding of the shared latent space works: CXR embeddings (``get_cxr_features``), or CT embeddings
        for CT-CLIP-style zero-shot classification of volumes.
        """
        if not isinstance(image_embeds, torch.Tensor):
            image_embeds = torch.as_tensor(image_embeds)
        text = self.encode_prompts()
        if image_embeds.ndim != 2 or image_embeds.shape[1] != text.shape[-1]:
            raise ValueError(
                f"image_embeds must have shape (B, {text.shape[-1]}) (the projection width), got "
                f"{tuple(image_embeds.shape)}."
            )
        with torch.inference_mode():
            x = F.normalize(image_embeds.to(device=text.device, dtype=text.dtype), dim=-1)
            scale = self.model.logit_scale.detach().float().exp().to(text.device)
            # (B, T, F, 2): scaled cosine similarity with every prompt
            sims = scale * torch.einsum("bd,tfkd->btfk", x, text)
            per_template = sims.softmax(dim=-1)[..., 0]
            if self.ensemble == "probabilities":
                probs = per_template.mean(dim=1)
            else:
                mean_text = F.normalize(text.mean(dim=0), dim=-1)  # (F, 2, D)
                probs = (scale * torch.einsum("bd,fkd->bfk", x, mean_text)).softmax(dim=-1)[..., 0]
            logits = (torch.log(probs) - torch.log1p(-probs)).clamp(-30.0, 30.0)
        return ZeroShotOutput(
            probabilities=probs, logits=logits, per_template_probabilities=per_template, image_embeds=x
        )

    def encode_images(self, pixel_values: torch.Tensor, progress: bool | None = None) -> torch.Tensor:
        """Projected, un-normalised CXR embeddings ``(N, projection_dim)`` of ``pixel_values`` ``(N, 3, H, W)``."""
        if isinstance(pixel_values, Mapping):  # a BatchFeature / dict from the image processor
            if "pixel_values" not in pixel_values:
                raise ValueError(f"no 'pixel_values' among the inputs {sorted(pixel_values)}.")
            pixel_values = pixel_values["pixel_values"]
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a (N, 3, H, W) tensor, got {shape}.")
        device = self._device()
        n = pixel_values.shape[0]
        show = progress if progress is not None else n > 8 * self.batch_size
        chunks = []
        with self._eval_mode():
            for start in tqdm(range(0, n, self.batch_size), desc="zero-shot", unit="batch", disable=not show):
                batch = pixel_values[start : start + self.batch_size].to(device)
                chunks.append(self.model.get_cxr_features(pixel_values=batch).pooler_output.float())
        return torch.cat(chunks)

    def predict(self, pixel_values: torch.Tensor, progress: bool | None = None) -> ZeroShotOutput:
        """Classifies CXRs ``pixel_values`` ``(N, 3, H, W)`` (preprocessed by the CXR image processor)."""
        return self.predict_from_embeddings(self.encode_images(pixel_values, progress))

    __call__ = predict
