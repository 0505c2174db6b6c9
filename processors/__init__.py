"""x2ctclip.processors: everything that turns files into tensors (CT volumes, CXR images, DICOM, CT-to-CXR
simulation, tokenizer) and the combined ``X2CTCLIPProcessor``. Processors never import the model."""

from transformers import AutoImageProcessor as _AutoImageProcessor
from transformers import AutoProcessor as _AutoProcessor

# Chest X-ray images and report text.
from .image_io import Radiograph, is_dicom_file, load_radiograph
from .image_processing_cxr import NonFrontalViewWarning, X2CTCLIPImageProcessor
from .tokenization import (
    REPORT_TOKENIZER_KWARGS,
    build_wordpiece_tokenizer,
    clean_report,
    load_report_tokenizer,
    minilm_model_dir,
    minilm_tokenizer_dir,
    tokenize_reports,
)

# CT volumes: loading in CT-RATE's orientation, CT-CLIP preprocessing, CT-to-CXR simulation.
from .volume_io import CANONICAL_AXCODES, CT_RATE_NIFTI_AXCODES, CTVolume, check_hu, ct_rate_affine, load_ct
from .image_processing_volume import X2CTCLIPVolumeProcessor
from .simulation import CXR_ORIENTATION, LATERAL_ORIENTATION, simulate_cxr, simulate_cxr_batch

# The combined processor (chest X-rays + CT volumes + report text).
from .processing_x2ctclip import X2CTCLIPProcessor

__all__ = [
    "CANONICAL_AXCODES",
    "CT_RATE_NIFTI_AXCODES",
    "CXR_ORIENTATION",
    "LATERAL_ORIENTATION",
    "REPORT_TOKENIZER_KWARGS",
    "CTVolume",
    "NonFrontalViewWarning",
    "Radiograph",
    "X2CTCLIPImageProcessor",
    "X2CTCLIPProcessor",
    "X2CTCLIPVolumeProcessor",
    "build_wordpiece_tokenizer",
    "check_hu",
    "clean_report",
    "ct_rate_affine",
    "is_dicom_file",
    "load_ct",
    "load_radiograph",
    "load_report_tokenizer",
    "minilm_model_dir",
    "minilm_tokenizer_dir",
    "simulate_cxr",
    "simulate_cxr_batch",
    "tokenize_reports",
]

# Registered under the model types "x2ctclip" (composite) and "x2ctclip_ct" (CT tower) so that AutoImageProcessor and
# AutoProcessor find the classes by the `image_processor_type` / `processor_class` saved in their configs
# (processors never import the model, hence model-type keys rather than config classes).
_AutoImageProcessor.register("x2ctclip", image_processor_classes={"pil": X2CTCLIPImageProcessor}, exist_ok=True)
_AutoImageProcessor.register("x2ctclip_ct", image_processor_classes={"pil": X2CTCLIPVolumeProcessor}, exist_ok=True)
_AutoProcessor.register("x2ctclip", X2CTCLIPProcessor, exist_ok=True)
