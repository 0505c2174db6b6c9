"""x2ctclip: chest X-ray models that detect CT-level abnormalities (X2CT-CLIP), as Hugging Face transformers models.

Importing this package registers the configs and models with the transformers auto classes.
"""

from .configuration_x2ctclip import X2CTCLIPConfig, X2CTCLIPCTConfig
from .findings import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES

__version__ = "0.1.0"

__all__ = ["X2CTCLIPConfig", "X2CTCLIPCTConfig", "CT_RATE_FINDINGS", "DEFAULT_PROMPT_TEMPLATES"]
