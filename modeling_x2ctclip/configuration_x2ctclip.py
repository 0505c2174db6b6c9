"""Configurations of the X2CT-CLIP towers, nested in one composite config the way ``CLIPConfig`` nests its towers.

- ``ct_config``: :class:`X2CTCLIPCTConfig`, the CT-CLIP 3D encoder (CTViT).
- ``text_config``: any transformers BERT-style config (default: CXR-BERT, i.e. a BERT-base ``BertConfig``).
- ``cxr_config``: any transformers vision backbone config (default: Swin-Tiny patch4/window7/224 as in CXR-CLIP).
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .findings import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES


class X2CTCLIPCTConfig(PreTrainedConfig):
    r"""Configuration of the CT-CLIP 3D encoder (CTViT encoder path).

    Input ``ct_values`` has shape ``(B, channels, num_frames, image_size, image_size)`` = ``(B, 1, D, H, W)``:
    HU / 1000 clipped to [-1, 1], resampled to 1.5 mm (D) x 0.75 mm x 0.75 mm.
    The encoder cuts it into ``temporal_patch_size x patch_size x patch_size`` patches, giving a token grid of
    ``t x h x w = num_frames/temporal_patch_size x image_size/patch_size x image_size/patch_size``.

    Args:
        dim: token width.
        codebook_size: number of codes of the cosine vector quantiser (only the codebook is used on the encoder path).
        image_size: in-plane size H = W of the input, in voxels.
        patch_size: in-plane patch size, in voxels; must divide ``image_size``.
        temporal_patch_size: patch size along depth, in slices; must divide ``num_frames``.
        num_frames: depth D of the input, in slices. The weights do not depend on it (the pooled latent averages
            over depth), but inputs must be a multiple of ``temporal_patch_size``.
        spatial_depth / temporal_depth: number of layers of the spatial and the temporal transformer.
        heads / dim_head: attention heads and per-head width.
        attn_logit_scale: fixed multiplier of the cosine-similarity attention logits (8 in CT-CLIP).
        ff_mult: feed-forward expansion (inner width is ``int(ff_mult * 2 / 3 * dim)``, GEGLU).
        use_vq: pass tokens through the vector quantiser, as CT-CLIP does.
        channels: input channels (1 for CT).
        patch_embedding: how voxels become tokens. ``"linear"`` (CT-CLIP, and what its weights load into): each
            patch is flattened and projected by one linear map. ``"conv"``: a strided convolutional stem of
            ``len(stem_channels)`` 3x3x3 convolutions with GELU (each halves an axis while its patch factor is even)
            and a last convolution whose kernel and stride are the remaining factors. It reaches the same token grid,
            but a lesion much smaller than a patch is detected wherever it lies in the patch, which one linear map of
            the whole patch cannot do (used by small towers trained from scratch on coarse grids).
        stem_channels: output channels of the stem's 3x3x3 convolutions (``patch_embedding="conv"`` only).
    """

    model_type = "x2ctclip_ct"
    base_config_key = "ct_config"

    dim: int = 512
    codebook_size: int = 8192
    image_size: int = 480
    patch_size: int = 20
    temporal_patch_size: int = 10
    num_frames: int = 240
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    attn_logit_scale: float = 8.0
    ff_mult: float = 4.0
    use_vq: bool = True
    channels: int = 1
    patch_embedding: str = "linear"
    stem_channels: list[int] | tuple[int, ...] = (16, 32)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        for name in ("dim", "image_size", "patch_size", "temporal_patch_size", "num_frames", "heads", "dim_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"X2CTCLIPCTConfig.{name} must be a positive integer, got {value!r}.")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"X2CTCLIPCTConfig: patch_size ({self.patch_size}) must divide image_size ({self.image_size})."
            )
        if self.num_frames % self.temporal_patch_size != 0:
            raise ValueError(
                f"X2CTCLIPCTConfig: temporal_patch_size ({self.temporal_patch_size}) must divide num_frames "
                f"({self.num_frames}), the depth of the input in slices."
            )
        if self.patch_embedding not in ("linear", "conv"):
            raise ValueError(
                f"X2CTCLIPCTConfig.patch_embedding must be 'linear' or 'conv', got {self.patch_embedding!r}."
            )
        channels = list(self.stem_channels)
        if not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"X2CTCLIPCTConfig.stem_channels must be positive integers, got {self.stem_channels!r}.")
        self.stem_channels = channels

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)`` of an input of ``num_frames`` slices."""
        return (
            self.num_frames // self.temporal_patch_size,
            self.image_size // self.patch_size,
            self.image_size // self.patch_size,
        )

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled CT feature (mean over depth, flattened ``h * w * dim``) fed to the projection."""
        _, h, w = self.grid_size
        return h * w * self.dim


# CXR-CLIP / X2CT-CLIP Swin-Tiny: patch 4, window 7, 224 x 224, embed 96, depths 2-2-6-2, heads 3-6-12-24.
_SWIN_TINY = {
    "image_size": 224,
    "patch_size": 4,
    "num_channels": 3,
    "embed_dim": 96,
    "depths": [2, 2, 6, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
}


TOWERS = ("cxr", "ct", "text")


class X2CTCLIPConfig(PreTrainedConfig):
    r"""Composite X2CT-CLIP configuration: three towers, their projections and the tri-modal loss.

    Args:
        text_config: report tower config (a transformers ``BertConfig`` or any encoder with a [CLS] token).
        cxr_config: CXR tower config, any transformers vision backbone (Swin, ResNet, ViT, ...). Its token or
            feature map output is mean-pooled.
        ct_config: :class:`X2CTCLIPCTConfig`.
        towers: which towers the model builds, a subset of ``["cxr", "ct", "text"]`` (all by default). A
            converted CT-CLIP checkpoint has ``["ct", "text"]``; a deployed CXR classifier may have ``["cxr", "text"]``.
        projection_dim: width of the shared latent space (512 in CT-CLIP).
        loss_ct_text_weight: alpha, weight of L(CT, report). Paper default 0.
        loss_cxr_text_weight: beta, weight of L(CXR, report). Paper default 1.
        loss_cxr_ct_weight: gamma, weight of L(CXR, CT). Paper default 1.
        logit_scale_init_value: initial log logit scale (CT-CLIP's ``temperature``; the scale is ``exp`` of it).
        freeze_ct_model / freeze_text_model: freeze the CT / report tower and its projection (X2CT-CLIP stage).
        freeze_logit_scale: keep the logit scale fixed (X2CT-CLIP uses CT-CLIP's frozen temperature).
        cxr_projection_bias: bias in the CXR projection. CXR-CLIP's projection has one; the X2CT-CLIP authors drop it
            (default False); True keeps it when assembling from a CXR-CLIP checkpoint.
        findings: names of the abnormalities the model classifies zero-shot, in label order.
        prompt_templates: zero-shot prompt pairs ``(positive, negative)`` with ``{}`` for the finding name.
        calibration: per-finding calibration and operating thresholds fitted on a validation split
            (``x2ctclip evaluate calibrate``; a ``Calibrator.to_dict()``), used by ``predict``. ``None``: uncalibrated.
    """

    model_type = "x2ctclip"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "cxr_config": SubConfigSpec(config_class=AutoConfig, model_type="swin", init_kwargs=dict(_SWIN_TINY)),
        "ct_config": X2CTCLIPCTConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    cxr_config: dict | PreTrainedConfig | None = None
    ct_config: dict | X2CTCLIPCTConfig | None = None
    towers: list[str] | None = None
    projection_dim: int = 512
    loss_ct_text_weight: float = 0.0
    loss_cxr_text_weight: float = 1.0
    loss_cxr_ct_weight: float = 1.0
    logit_scale_init_value: float = 1.0
    freeze_ct_model: bool = True
    freeze_text_model: bool = True
    freeze_logit_scale: bool = True
    cxr_projection_bias: bool = False
    findings: list[str] | None = None
    prompt_templates: list[list[str]] | None = None
    calibration: dict | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.towers is None:
            self.towers = list(TOWERS)
        if self.findings is None:
            self.findings = list(CT_RATE_FINDINGS)
        if self.prompt_templates is None:
            self.prompt_templates = [list(pair) for pair in DEFAULT_PROMPT_TEMPLATES]
        self.validate_architecture()

    def validate_architecture(self):
        unknown = [t for t in self.towers if t not in TOWERS]
        if unknown or not self.towers or len(set(self.towers)) != len(self.towers):
            raise ValueError(f"X2CTCLIPConfig.towers must be a non-empty subset of {list(TOWERS)}, got {self.towers!r}.")
        if not isinstance(self.projection_dim, int) or self.projection_dim <= 0:
            raise ValueError(f"X2CTCLIPConfig.projection_dim must be a positive integer, got {self.projection_dim!r}.")
        for name in ("loss_ct_text_weight", "loss_cxr_text_weight", "loss_cxr_ct_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"X2CTCLIPConfig.{name} must be >= 0, got {getattr(self, name)}.")
        for pair in self.prompt_templates:
            if len(pair) != 2 or any("{}" not in p for p in pair):
                raise ValueError(
                    f"X2CTCLIPConfig.prompt_templates must hold (positive, negative) pairs with '{{}}' for the "
                    f"finding, got {pair!r}."
                )
        if len(set(self.findings)) != len(self.findings):
            raise ValueError("X2CTCLIPConfig.findings holds duplicate names.")

    def to_dict(self) -> dict:
        """The config as saved. ``register_for_auto_class`` records one auto class per model class, so
        ``save_pretrained`` writes only ``AutoModel``; a model with a CXR and a report tower also serves
        ``AutoModelForZeroShotImageClassification`` (the transformers pipeline loads through it), same class."""
        output = super().to_dict()
        auto_map = output.get("auto_map")
        towers = output.get("towers") or []
        zero_shot = "AutoModelForZeroShotImageClassification"
        if isinstance(auto_map, dict) and "AutoModel" in auto_map and zero_shot not in auto_map:
            if "cxr" in towers and "text" in towers and str(auto_map["AutoModel"]).endswith(".X2CTCLIPModel"):
                output["auto_map"] = {**auto_map, zero_shot: auto_map["AutoModel"]}
        return output

    @property
    def loss_weights(self) -> dict[str, float]:
        """alpha (CT-report), beta (CXR-report), gamma (CXR-CT)."""
        return {
            "ct_text": float(self.loss_ct_text_weight),
            "cxr_text": float(self.loss_cxr_text_weight),
            "cxr_ct": float(self.loss_cxr_ct_weight),
        }


__all__ = ["X2CTCLIPCTConfig", "X2CTCLIPConfig"]
