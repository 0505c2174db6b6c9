"""The Hub metadata this package writes: licenses, pipeline tag, library, tags, citations, the card template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "resources" / "model_card_template.md"

#: CT-CLIP and CT-RATE are released under CC BY-NC-SA 4.0. Its ShareAlike clause covers derivative weights, so every
#: model whose CT or report tower comes from CT-CLIP (all X2CT-CLIP models of the paper) carries it by default.
CTCLIP_LICENSE = "cc-by-nc-sa-4.0"
PIPELINE_TAG = "zero-shot-image-classification"
LIBRARY_NAME = "transformers"
ZERO_SHOT_AUTO_CLASS = "AutoModelForZeroShotImageClassification"
DEFAULT_TAGS = ("x2ctclip", "clip", "medical-imaging", "radiology", "chest-x-ray", "computed-tomography", "custom_code")
CTCLIP_DATASET = "ibrahimhamamci/CT-RATE"
CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"

X2CTCLIP_CITATION = """@article{you2025x2ctclip,
  title   = {X2CT-CLIP: Enable Multi-Abnormality Detection in Computed Tomography from Chest Radiography via
             Tri-Modal Contrastive Learning},
  author  = {You, Jianzhong and Gao, Yuan and Kim, Sangwook and Mcintosh, Chris},
  journal = {arXiv preprint arXiv:2503.02162},
  year    = {2025}
}"""

CTCLIP_CITATION = """@article{hamamci2024ctclip,
  title   = {Developing Generalist Foundation Models from a Multimodal Dataset for 3D Computed Tomography},
  author  = {Hamamci, Ibrahim Ethem and Er, Sezgin and others},
  journal = {arXiv preprint arXiv:2403.17834},
  year    = {2024}
}"""

# License identifiers the Hub accepts in card metadata (https://huggingface.co/docs/hub/repositories-licenses); the
# ones a medical-imaging model plausibly uses. Anything else must be "other" with license_name and license_link.
HUB_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0",
        "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "gpl-3.0",
        "lgpl-3.0", "agpl-3.0", "mpl-2.0", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
        "llama2", "llama3", "gemma", "unlicense", "other",
    }
)  # fmt: skip
LICENSE_NAMES = {
    "cc-by-nc-sa-4.0": ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    "apache-2.0": ("Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
    "mit": ("MIT License", "https://opensource.org/licenses/MIT"),
}


def is_repo_id(value: Any) -> bool:
    """``owner/name`` as ``huggingface_hub.utils.validate_repo_id`` accepts it (a bare name is not a full Hub id)."""
    if not isinstance(value, str) or value.count("/") != 1:
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True
