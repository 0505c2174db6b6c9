"""x2ctclip: chest X-ray models that detect CT-level abnormalities (X2CT-CLIP), as Hugging Face transformers models.

Importing this package registers the configs and models with the transformers auto classes (``AutoConfig``,
``AutoModel``, ``AutoModelForZeroShotImageClassification``, ``AutoModelForImageClassification`` for the supervised
:class:`X2CTCLIPForAbnormalityClassification`) and marks them for remote code, so that ``save_pretrained`` writes
``auto_map`` and copies the modeling files next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForZeroShotImageClassification

from .configuration_x2ctclip import X2CTCLIPConfig, X2CTCLIPCTConfig
from .findings import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES
from .loss import X2CTCLIPLoss, contrastive_loss, gather_with_grad
from .modeling_classification import (
    X2CTCLIPClassificationOutput,
    X2CTCLIPClassificationPrediction,
    X2CTCLIPForAbnormalityClassification,
)
from .modeling_ct import X2CTCLIPCTModel
from .modeling_x2ctclip import X2CTCLIPModel, X2CTCLIPOutput, X2CTCLIPPreTrainedModel

__version__ = "0.1.0"


def _register() -> None:
    for config_class in (X2CTCLIPConfig, X2CTCLIPCTConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
    AutoModel.register(X2CTCLIPCTConfig, X2CTCLIPCTModel, exist_ok=True)
    AutoModel.register(X2CTCLIPConfig, X2CTCLIPModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(X2CTCLIPConfig, X2CTCLIPModel, exist_ok=True)
    X2CTCLIPCTModel.register_for_auto_class("AutoModel")
    X2CTCLIPModel.register_for_auto_class("AutoModel")
    AutoModelForImageClassification.register(X2CTCLIPConfig, X2CTCLIPForAbnormalityClassification, exist_ok=True)
    X2CTCLIPForAbnormalityClassification.register_for_auto_class("AutoModelForImageClassification")


_register()

# The processors register themselves with AutoImageProcessor / AutoProcessor on import; importing them here makes
# `transformers.pipeline(..., model=folder)` work after a plain `import x2ctclip`. (The remote-code modeling files
# never import them: this package file is not shipped.)
from . import processors  # noqa: E402,F401

__all__ = [
    "CT_RATE_FINDINGS",
    "DEFAULT_PROMPT_TEMPLATES",
    "X2CTCLIPCTConfig",
    "X2CTCLIPCTModel",
    "X2CTCLIPClassificationOutput",
    "X2CTCLIPClassificationPrediction",
    "X2CTCLIPForAbnormalityClassification",
    "X2CTCLIPConfig",
    "X2CTCLIPLoss",
    "X2CTCLIPModel",
    "X2CTCLIPOutput",
    "X2CTCLIPPreTrainedModel",
    "contrastive_loss",
    "gather_with_grad",
]
