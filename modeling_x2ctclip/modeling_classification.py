"""Supervised abnormality classifier on the X2CT-CLIP chest X-ray tower (linear probe / LoRA few-shot adaptation).

:class:`X2CTCLIPForAbnormalityClassification` is the CXR tower and its projection of an :class:`X2CTCLIPModel`
followed by one linear layer on the **L2-normalised** latent (the X2CT-CLIP linear-probe protocol)::

    pixel_values (B, 3, H, W) -> CXR backbone -> token / feature-map mean -> projection (B, projection_dim)
        -> L2 normalisation -> classifier (projection_dim -> n_findings) -> logits (B, n_findings)

It uses the composite :class:`X2CTCLIPConfig` (with ``towers=["cxr"]``, ``id2label`` / ``label2id`` from
``config.findings`` and ``problem_type="multi_label_classification"``), so ``AutoModelForImageClassification`` and the
transformers ``image-classification`` pipeline (sigmoid scores for multi-label problems) load it. The loss is the
binary cross-entropy with logits over the annotated labels (``NaN`` labels are left out).

``config.calibration`` (optional) holds a per-finding calibration in the format of
``x2ctclip.train.evaluation.calibration.Calibrator.to_dict()`` (written by ``x2ctclip evaluate calibrate``)::

    {"format_version": 1, "method": "temperature" | "platt" | "identity", "slope": [F], "intercept": [F],
     "thresholds": [F] (null = no threshold), "threshold_method": "youden" | ..., "finding_names": [F]}

:meth:`X2CTCLIPForAbnormalityClassification.predict` applies it: ``probability = sigmoid(slope * logit + intercept)``,
``prediction = probability >= threshold``. (This file is shipped as Hub remote code and cannot import the training
package, hence its own small reader of that dict.)
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.modeling_outputs import ImageClassifierOutput, ModelOutput

from .calibration import apply_calibration, calibration_thresholds, check_calibration
from .configuration_x2ctclip import X2CTCLIPConfig
from .modeling_x2ctclip import X2CTCLIPPreTrainedModel, feature_width, mean_pool_tokens

__all__ = [
    "X2CTCLIPClassificationOutput",
    "X2CTCLIPClassificationPrediction",
    "X2CTCLIPForAbnormalityClassification",
    "classification_config",
]



def _renamed_embeds(cxr_embeds: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``cxr_embeds``, or the deprecated ``image_embeds`` keyword popped from ``kwargs`` (one release)."""
    if "image_embeds" not in kwargs:
        return cxr_embeds
    old = kwargs.pop("image_embeds")
    warnings.warn("The image_embeds argument is now cxr_embeds.", DeprecationWarning, stacklevel=3)
    if cxr_embeds is not None and old is not None:
        raise ValueError("Give cxr_embeds or its old name image_embeds, not both.")
    return old if cxr_embeds is None else cxr_embeds


@dataclass
class X2CTCLIPClassificationOutput(ImageClassifierOutput):
    r"""Output of :class:`X2CTCLIPForAbnormalityClassification`.

    Args:
        loss (`()`): mean binary cross-entropy with logits over the annotated labels (when ``labels`` are given).
        logits (`(B, n_findings)`): log-odds of each finding (before any calibration).
        hidden_states / attentions: the CXR backbone's (when requested and supported by the backbone).
        cxr_embeds (`(B, projection_dim)`): the L2-normalised CXR latents the classifier reads (the name of the
            composite model's output; ``image_embeds``, the first release's name, still reads them with a
            ``DeprecationWarning``).
    """

    cxr_embeds: torch.FloatTensor | None = None

    @property
    def image_embeds(self) -> torch.FloatTensor | None:
        warnings.warn("X2CTCLIPClassificationOutput.image_embeds is now cxr_embeds.", DeprecationWarning, stacklevel=2)
        return self.cxr_embeds


@dataclass
class X2CTCLIPClassificationPrediction(ModelOutput):
    r"""Output of :meth:`X2CTCLIPForAbnormalityClassification.predict`.

    Args:
        probabilities (`(B, n_findings)`): calibrated probabilities (``sigmoid(logits)`` when the config carries no
            calibration).
        predictions (`(B, n_findings)` bool): ``probabilities >= thresholds``; a finding with a NaN threshold is never
            positive.
        thresholds (`(n_findings,)`): the operating points used (the calibration's, else 0.5 or the one passed).
        logits (`(B, n_findings)`): uncalibrated log-odds.
    """

    probabilities: torch.FloatTensor | None = None
    predictions: torch.BoolTensor | None = None
    thresholds: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


def classification_config(config: X2CTCLIPConfig, findings: list[str] | None = None) -> X2CTCLIPConfig:
    """A copy of an X2CT-CLIP config set up for :class:`X2CTCLIPForAbnormalityClassification`: only the CXR tower,
    ``id2label`` / ``label2id`` from the findings (``findings`` or ``config.findings``), multi-label problem type.
    The prompt templates, the other towers' sub-configs and any ``auto_map`` are kept (the folder still documents
    the model it came from)."""
    config = copy.deepcopy(config)
    if "cxr" not in config.towers:
        raise ValueError(f"the config has no CXR tower (towers {config.towers}); nothing to classify images with.")
    if findings is not None:
        findings = [str(f) for f in findings]
        if not findings or len(set(findings)) != len(findings):
            raise ValueError(f"findings must be non-empty and unique, got {findings!r}.")
        config.findings = findings
    config.towers = ["cxr"]
    _set_labels(config)
    return config


def _set_labels(config: X2CTCLIPConfig) -> None:
    """id2label / label2id / problem_type consistent with ``config.findings`` (the classifier's output order)."""
    config.id2label = {i: name for i, name in enumerate(config.findings)}
    config.label2id = {name: i for i, name in enumerate(config.findings)}
    config.problem_type = "multi_label_classification"


class X2CTCLIPForAbnormalityClassification(X2CTCLIPPreTrainedModel):
    """X2CT-CLIP CXR tower + projection + a linear multi-label head on the L2-normalised latent.

    Build it from a trained X2CT-CLIP model with :meth:`from_x2ctclip`, or load a saved folder with
    ``AutoModelForImageClassification.from_pretrained``. ``X2CTCLIPForAbnormalityClassification.from_pretrained`` on
    an :class:`X2CTCLIPModel` folder also works: its CXR tower and projection load, the classifier starts from the
    config's initialisation (normal, std ``initializer_range``; bias 0).

    The module names are those of :class:`X2CTCLIPModel` (``cxr_model``, ``cxr_projection``) plus ``classifier``, so
    the CXR weights are interchangeable and PEFT adapters name ``classifier`` in ``modules_to_save``.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Loading an X2CTCLIPModel folder: the other towers and the logit scale are not used here.
    _keys_to_ignore_on_load_unexpected = [r"^(ct|text)_(model|projection)\.", r"^logit_scale$"]

    def __init__(self, config: X2CTCLIPConfig):
        if "cxr" not in config.towers:
            raise ValueError(
                f"X2CTCLIPForAbnormalityClassification needs a CXR tower; config.towers = {config.towers}."
            )
        if list((config.id2label or {}).values()) != list(config.findings) or config.problem_type is None:
            _set_labels(config)
        super().__init__(config)
        self.num_labels = len(config.findings)
        self.cxr_model = AutoModel.from_config(config.cxr_config)
        self.cxr_projection = nn.Linear(feature_width(config.cxr_config), config.projection_dim,
                                        bias=config.cxr_projection_bias)
        self.classifier = nn.Linear(config.projection_dim, self.num_labels)
        if getattr(config, "calibration", None) is not None:
            check_calibration(config.calibration, list(config.findings))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, X2CTCLIPForAbnormalityClassification):
            std = self.config.initializer_range
            nn.init.normal_(module.cxr_projection.weight, std=std)
            if module.cxr_projection.bias is not None:
                nn.init.zeros_(module.cxr_projection.bias)
            nn.init.normal_(module.classifier.weight, std=std)
            nn.init.zeros_(module.classifier.bias)

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def from_x2ctclip(
        cls,
        model: Any,
        classifier_weight: torch.Tensor | None = None,
        classifier_bias: torch.Tensor | None = None,
        findings: list[str] | None = None,
    ) -> "X2CTCLIPForAbnormalityClassification":
        """A classifier with the CXR tower and projection of ``model`` (an :class:`X2CTCLIPModel`, copied).

        Args:
            model: the trained X2CT-CLIP model (its weights are copied; the model itself is not changed).
            classifier_weight / classifier_bias: optional initial head ``(n_findings, projection_dim)`` /
                ``(n_findings,)``, e.g. a fitted linear probe or the zero-shot prompt difference vectors; default:
                random (normal, std ``config.initializer_range``) weight and zero bias.
            findings: the label names (default ``model.config.findings``).
        """
        if getattr(model, "cxr_model", None) is None or getattr(model, "cxr_projection", None) is None:
            raise ValueError(f"from_x2ctclip needs a model with a CXR tower, got {type(model).__name__}.")
        config = classification_config(model.config, findings)
        new = cls(config)
        new.cxr_model.load_state_dict(model.cxr_model.state_dict())
        new.cxr_projection.load_state_dict(model.cxr_projection.state_dict())
        new.set_classifier(classifier_weight, classifier_bias)
        param = next(model.parameters())
        return new.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def set_classifier(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
        """Replace the head's weight ``(n_findings, projection_dim)`` and / or bias ``(n_findings,)``."""
        for name, value, shape in (("weight", weight, self.classifier.weight.shape),
                                   ("bias", bias, self.classifier.bias.shape)):  # fmt: skip
            if value is None:
                continue
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"classifier {name} must have shape {tuple(shape)}, got {tuple(value.shape)}.")
            if not torch.isfinite(value).all():
                raise ValueError(f"classifier {name} holds NaN or inf.")
            getattr(self.classifier, name).copy_(value)

    # ------------------------------------------------------------------------------------------------ features
    def get_cxr_features(self, pixel_values: torch.Tensor, **kwargs):
        """Same as :meth:`X2CTCLIPModel.get_cxr_features`: the backbone output with ``pooler_output`` = projected,
        un-normalised latent ``(B, projection_dim)``."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        outputs = self.cxr_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.cxr_projection(mean_pool_tokens(outputs.last_hidden_state)),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        """``CLIPModel.get_image_features``'s name and return type (transformers 5): a ``BaseModelOutputWithPooling``
        whose ``pooler_output`` is the projected, *un-normalised* latent ``(B, projection_dim)``; the classifier reads
        its L2 normalisation (``forward(...).cxr_embeds``)."""
        return self.get_cxr_features(pixel_values, **kwargs)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cxr_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> X2CTCLIPClassificationOutput | tuple:
        """Classify chest X-rays.

        Args:
            pixel_values: ``(B, 3, H, W)`` from the CXR image processor.
            labels: ``(B, n_findings)`` 0/1 targets (float or int); ``NaN`` entries are not annotated and left out of
                the loss.
            cxr_embeds: ``(B, projection_dim)`` precomputed CXR latents (normalised here) instead of
                ``pixel_values``, e.g. cached for a linear probe. ``image_embeds=`` (the first release's name) is
                accepted with a ``DeprecationWarning``.
        """
        cxr_embeds = _renamed_embeds(cxr_embeds, kwargs)
        if (pixel_values is None) == (cxr_embeds is None):
            raise ValueError("Give exactly one of pixel_values (B, 3, H, W) and cxr_embeds (B, projection_dim).")
        hidden_states = attentions = None
        if pixel_values is not None:
            extra = {}
            if output_hidden_states:
                extra["output_hidden_states"] = True
            if output_attentions:
                extra["output_attentions"] = True
            features = self.get_cxr_features(pixel_values, **extra)
            embeds = F.normalize(features.pooler_output, dim=-1)
            hidden_states, attentions = features.hidden_states, features.attentions
        else:
            if cxr_embeds.ndim != 2 or cxr_embeds.shape[-1] != self.config.projection_dim:
                raise ValueError(
                    f"cxr_embeds must have shape (B, {self.config.projection_dim}), got {tuple(cxr_embeds.shape)}."
                )
            embeds = F.normalize(cxr_embeds.to(self.classifier.weight.dtype), dim=-1)
        logits = self.classifier(embeds)
        loss = None
        if labels is not None:
            loss = self.loss(logits, labels)
        out = X2CTCLIPClassificationOutput(
            loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions, cxr_embeds=embeds
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy with logits over the annotated entries of ``labels`` (``NaN`` = not annotated)."""
        if labels.shape != logits.shape:
            raise ValueError(f"labels must have shape {tuple(logits.shape)}, got {tuple(labels.shape)}.")
        labels = labels.to(logits.dtype)
        annotated = ~torch.isnan(labels)
        if bool(((labels != 0) & (labels != 1) & annotated).any()):
            raise ValueError("labels must hold 0 / 1 (NaN = not annotated).")
        per_entry = F.binary_cross_entropy_with_logits(logits, torch.where(annotated, labels, 0.0), reduction="none")
        return (per_entry * annotated).sum() / annotated.sum().clamp_min(1)

    # ------------------------------------------------------------------------------------------------ predict
    @property
    def calibration(self) -> dict[str, Any] | None:
        """The calibration dict in the config (``Calibrator.to_dict()`` format), or None."""
        calibration = getattr(self.config, "calibration", None)
        return None if calibration is None else check_calibration(calibration, list(self.config.findings))

    def set_calibration(self, calibration: dict[str, Any] | None) -> None:
        """Store (validated) or remove ``config.calibration``; saved with the config by ``save_pretrained``."""
        self.config.calibration = None if calibration is None else check_calibration(
            dict(calibration), list(self.config.findings)
        )

    @torch.no_grad()
    def predict(
        self,
        pixel_values: torch.Tensor | None = None,
        cxr_embeds: torch.Tensor | None = None,
        threshold: float | None = None,
        **kwargs,
    ) -> X2CTCLIPClassificationPrediction:
        """Calibrated probabilities and decisions.

        Args:
            pixel_values / cxr_embeds: as in :meth:`forward` (``image_embeds=`` too, deprecated).
            threshold: one operating point for every finding, overriding the calibration's thresholds (default: the
                calibration's thresholds when it has them, else 0.5).
        """
        cxr_embeds = _renamed_embeds(cxr_embeds, kwargs)
        if kwargs:
            raise TypeError(f"predict() got unexpected keyword arguments {sorted(kwargs)}.")
        was_training = self.training
        self.eval()
        try:
            logits = self(pixel_values=pixel_values, cxr_embeds=cxr_embeds, return_dict=True).logits.float()
        finally:
            self.train(was_training)
        calibration = self.calibration
        probabilities = apply_calibration(logits, calibration)
        thresholds = calibration_thresholds(calibration, self.num_labels, threshold).to(logits.device)
        predictions = probabilities >= torch.nan_to_num(thresholds, nan=math.inf)
        return X2CTCLIPClassificationPrediction(
            probabilities=probabilities, predictions=predictions, thresholds=thresholds, logits=logits
        )
