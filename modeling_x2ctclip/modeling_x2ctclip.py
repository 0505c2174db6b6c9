"""The composite X2CT-CLIP model: CXR, CT and report towers with projections into one latent space.

Tower inputs:
- CXR: ``pixel_values`` (B, 3, H, W), normalised as the CXR processor does (224 x 224, mean = std = 0.5 for Swin).
- CT: ``ct_values`` (B, 1, D, H, W), HU / 1000 clipped to [-1, 1], 1.5 x 0.75 x 0.75 mm (D x H x W), as CT-CLIP.
- Report: ``input_ids`` / ``attention_mask`` (B, L) from the report tower's BERT WordPiece tokenizer.

``get_cxr_features`` / ``get_ct_features`` / ``get_text_features`` follow the transformers 5 convention: they return
the tower's ``BaseModelOutputWithPooling`` whose ``pooler_output`` is replaced by the *projected, un-normalised*
embedding, shape (B, projection_dim). ``get_image_features`` is ``get_cxr_features`` under the name ``CLIPModel`` uses
(the image of an image-text model is the radiograph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from .configuration_x2ctclip import X2CTCLIPConfig
from .loss import X2CTCLIPLoss
from .modeling_ct import X2CTCLIPCTModel


@dataclass
class X2CTCLIPOutput(ModelOutput):
    r"""Output of :class:`X2CTCLIPModel`. Every field is ``None`` when its modalities were not given.

    Args:
        loss (`()`): weighted loss alpha * ct_text + beta * cxr_text + gamma * cxr_ct (when ``return_loss``).
        loss_ct_text / loss_cxr_text / loss_cxr_ct (`()`): the unweighted symmetric InfoNCE of each pair.
        logits_per_image (`(B_cxr, B_text)`): scaled CXR-report similarities (named as in CLIP so that the
            transformers zero-shot-image-classification pipeline can drive the model); ``logits_per_text`` is its
            transpose.
        logits_per_cxr_ct (`(B_cxr, B_ct)`) / logits_per_ct_cxr: scaled CXR-CT similarities.
        logits_per_ct_text (`(B_ct, B_text)`) / logits_per_text_ct: scaled CT-report similarities.
        cxr_embeds / ct_embeds / text_embeds (`(B, projection_dim)`): L2-normalised embeddings.
        cxr_model_output / ct_model_output / text_model_output: the towers' raw outputs (when run).
    """

    loss: torch.FloatTensor | None = None
    loss_ct_text: torch.FloatTensor | None = None
    loss_cxr_text: torch.FloatTensor | None = None
    loss_cxr_ct: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_cxr_ct: torch.FloatTensor | None = None
    logits_per_ct_cxr: torch.FloatTensor | None = None
    logits_per_ct_text: torch.FloatTensor | None = None
    logits_per_text_ct: torch.FloatTensor | None = None
    cxr_embeds: torch.FloatTensor | None = None
    ct_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    cxr_model_output: Any = None
    ct_model_output: Any = None
    text_model_output: Any = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def feature_width(config) -> int:
    """Width of a backbone's last feature: ``hidden_sizes[-1]`` for CNNs (ResNet, ConvNeXt), else ``hidden_size``."""
    sizes = getattr(config, "hidden_sizes", None)
    if isinstance(sizes, (list, tuple)) and sizes:
        return int(sizes[-1])
    if getattr(config, "hidden_size", None):
        return int(config.hidden_size)
    raise ValueError(f"Cannot tell the feature width of a {type(config).__name__}: it has neither hidden_sizes nor hidden_size.")


def mean_pool_tokens(last_hidden_state: torch.Tensor) -> torch.Tensor:
    """Mean over tokens (B, N, C) -> (B, C), or over the feature map (B, C, H, W) -> (B, C)."""
    if last_hidden_state.dim() == 3:
        return last_hidden_state.mean(dim=1)
    if last_hidden_state.dim() == 4:
        return last_hidden_state.mean(dim=(2, 3))
    raise ValueError(f"Expected CXR backbone features of shape (B, N, C) or (B, C, H, W), got {tuple(last_hidden_state.shape)}.")


class X2CTCLIPPreTrainedModel(PreTrainedModel):
    config: X2CTCLIPConfig
    config_class = X2CTCLIPConfig
    base_model_prefix = "x2ctclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, X2CTCLIPModel):
            std = self.config.initializer_range
            for proj in (module.cxr_projection, module.ct_projection, module.text_projection):
                if proj is not None:
                    nn.init.normal_(proj.weight, std=std)
                    if proj.bias is not None:
                        nn.init.zeros_(proj.bias)
            with torch.no_grad():
                module.logit_scale.fill_(self.config.logit_scale_init_value)


class X2CTCLIPModel(X2CTCLIPPreTrainedModel):
    """CXR, CT and report towers aligned in one latent space (X2CT-CLIP).

    Towers listed in ``config.freeze_*`` get ``requires_grad=False`` and stay in eval mode even under
    ``model.train()``, so that their embeddings equal the cached ones and dropout never touches them.
    """

    def __init__(self, config: X2CTCLIPConfig):
        super().__init__(config)
        towers = set(config.towers)
        dim = config.projection_dim
        self.cxr_model = self.cxr_projection = None
        self.ct_model = self.ct_projection = None
        self.text_model = self.text_projection = None
        if "cxr" in towers:
            self.cxr_model = AutoModel.from_config(config.cxr_config)
            self.cxr_projection = nn.Linear(feature_width(config.cxr_config), dim, bias=config.cxr_projection_bias)
        if "ct" in towers:
            self.ct_model = X2CTCLIPCTModel(config.ct_config)
            self.ct_projection = nn.Linear(config.ct_config.pooled_dim, dim, bias=False)
        if "text" in towers:
            self.text_model = AutoModel.from_config(config.text_config)
            self.text_projection = nn.Linear(feature_width(config.text_config), dim, bias=False)
        # Log of the logit scale (CT-CLIP's `temperature`): logits = exp(logit_scale) * cos-similarity.
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.loss_fn = X2CTCLIPLoss(config.loss_weights)
        self.post_init()
        self.apply_freezing()

    # ----------------------------------------------------------------------------------------------- freezing
    def frozen_modules(self) -> list[nn.Module]:
        modules = []
        if self.config.freeze_ct_model and self.ct_model is not None:
            modules += [self.ct_model, self.ct_projection]
        if self.config.freeze_text_model and self.text_model is not None:
            modules += [self.text_model, self.text_projection]
        return modules

    def apply_freezing(self) -> None:
        """Apply ``config.freeze_*``: frozen towers lose their gradients and are kept in eval mode."""
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()
        self.logit_scale.requires_grad_(not self.config.freeze_logit_scale)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading replaces the parameters, which resets their requires_grad flags: freeze again afterwards.
        model = super().from_pretrained(*args, **kwargs)
        if isinstance(model, tuple):  # output_loading_info=True
            model[0].apply_freezing()
        else:
            model.apply_freezing()
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def _require(self, tower: str) -> None:
        if getattr(self, f"{tower}_model") is None:
            raise ValueError(
                f"This X2CT-CLIP model has no {tower} tower (config.towers = {self.config.towers}); "
                f"it cannot encode {tower} inputs."
            )

    # ----------------------------------------------------------------------------------------------- features
    def get_cxr_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Encode chest X-rays ``pixel_values`` (B, 3, H, W).

        Returns the backbone output with ``pooler_output`` = projected token-mean embedding (B, projection_dim).
        """
        self._require("cxr")
        outputs = self.cxr_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        pooled = mean_pool_tokens(outputs.last_hidden_state)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.cxr_projection(pooled),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """``CLIPModel.get_image_features``'s name and return type (transformers 5): the same as
        :meth:`get_cxr_features`, i.e. the backbone output with ``pooler_output`` = projected, un-normalised embedding
        (B, projection_dim) of ``pixel_values`` (B, 3, H, W)."""
        return self.get_cxr_features(pixel_values, **kwargs)

    def get_ct_features(self, ct_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Encode CT volumes ``ct_values`` (B, 1, D, H, W), HU/1000 in [-1, 1].

        Returns the CT tower output with ``pooler_output`` = projected embedding (B, projection_dim) and
        ``last_hidden_state`` = the quantised token grid (B, t, h, w, dim); ``output_attentions=True`` (eager attention)
        adds the tower's ``attentions`` (see :class:`X2CTCLIPCTModelOutput`).
        """
        self._require("ct")
        outputs = self.ct_model(ct_values=ct_values, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.ct_projection(outputs.pooler_output),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Encode report text ``input_ids`` (B, L). ``pooler_output`` = projected [CLS] state (B, projection_dim)."""
        self._require("text")
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
            **kwargs,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.text_projection(outputs.last_hidden_state[:, 0]),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    # ----------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        ct_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        ct_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> X2CTCLIPOutput | tuple:
        """Encode any subset of the three modalities, compare every pair present and (optionally) compute the loss.

        Args:
            pixel_values: CXRs (B, 3, H, W).
            ct_values: CT volumes (B, 1, D, H, W); or give ``ct_embeds`` (B, projection_dim), e.g. from a cache.
            input_ids / attention_mask / token_type_ids: reports (B, L); or give ``text_embeds`` (B, projection_dim).
            return_loss: compute the weighted contrastive loss over the pairs present (rows pair up by index).
            output_attentions / output_hidden_states: passed to every tower run; their outputs carry the attentions
                (eager attention) and hidden states (``cxr_model_output`` etc.).
        """
        if ct_values is not None and ct_embeds is not None:
            raise ValueError("Give either ct_values or ct_embeds, not both.")
        if input_ids is not None and text_embeds is not None:
            raise ValueError("Give either input_ids or text_embeds, not both.")
        out = X2CTCLIPOutput()
        cxr = ct = text = None
        # Only flags that were set are passed, so a tower keeps its own config defaults otherwise.
        extra = {k: v for k, v in (("output_attentions", output_attentions),
                                   ("output_hidden_states", output_hidden_states)) if v is not None}  # fmt: skip
        if pixel_values is not None:
            out.cxr_model_output = self.get_cxr_features(pixel_values, **extra)
            cxr = out.cxr_model_output.pooler_output
        if ct_values is not None:
            out.ct_model_output = self.get_ct_features(ct_values, **extra)
            ct = out.ct_model_output.pooler_output
        elif ct_embeds is not None:
            ct = ct_embeds
        if input_ids is not None:
            out.text_model_output = self.get_text_features(input_ids, attention_mask, token_type_ids, **extra)
            text = out.text_model_output.pooler_output
        elif text_embeds is not None:
            text = text_embeds
        if cxr is None and ct is None and text is None:
            raise ValueError("X2CTCLIPModel.forward needs at least one of pixel_values, ct_values/ct_embeds, input_ids/text_embeds.")

        cxr, ct, text = (F.normalize(x, dim=-1) if x is not None else None for x in (cxr, ct, text))
        out.cxr_embeds, out.ct_embeds, out.text_embeds = cxr, ct, text
        scale = self.logit_scale.exp()
        if cxr is not None and text is not None:
            out.logits_per_image = scale * cxr @ text.t()
            out.logits_per_text = out.logits_per_image.t()
        if cxr is not None and ct is not None:
            out.logits_per_cxr_ct = scale * cxr @ ct.t()
            out.logits_per_ct_cxr = out.logits_per_cxr_ct.t()
        if ct is not None and text is not None:
            out.logits_per_ct_text = scale * ct @ text.t()
            out.logits_per_text_ct = out.logits_per_ct_text.t()
        if return_loss:
            # Weights from the config at each call: a trainer that changes the config needs no new loss_fn.
            weights = self.config.loss_weights
            out.loss, terms = self.loss_fn(scale, cxr=cxr, ct=ct, text=text, weights=weights)
            if out.loss is None:
                raise ValueError(
                    f"return_loss=True but no pair with a non-zero weight is present (weights {self.config.loss_weights})."
                )
            out.loss_ct_text = terms.get("ct_text")
            out.loss_cxr_text = terms.get("cxr_text")
            out.loss_cxr_ct = terms.get("cxr_ct")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()


__all__ = ["X2CTCLIPModel", "X2CTCLIPOutput", "X2CTCLIPPreTrainedModel", "mean_pool_tokens"]
