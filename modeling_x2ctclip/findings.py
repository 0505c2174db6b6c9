"""The 18 CT-RATE abnormalities and the zero-shot prompt families used with them.

The order is the canonical CT-RATE label order: label CSVs are read by position, so it must never change.
"""

CT_RATE_FINDINGS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

# Prompt pairs (positive, negative); "{}" is replaced by the finding name. The first family is the one the
# original CT-CLIP inference code used, the second the one its validation loop and the X2CT-CLIP code used.
DEFAULT_PROMPT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("There is {}.", "There is no {}."),
    ("{} is present.", "{} is not present."),
)
