"""One-call inference: a model folder or Hub id in, per-finding probabilities of chest X-rays (or CTs) out.

    >>> from x2ctclip import X2CTCLIPPredictor
    >>> predictor = X2CTCLIPPredictor.from_pretrained("path/to/x2ctclip-folder")   # or a Hub id
    >>> result = predictor(["cxr1.dcm", "cxr2.png"])                               # files, arrays or PIL images
    >>> result.findings, result.probabilities.shape                                 # 18 CT-RATE names, (2, 18)

The folder must hold an :class:`x2ctclip.X2CTCLIPModel` (``save_pretrained`` / the Hub export) and its
:class:`x2ctclip.processors.X2CTCLIPProcessor` (``AutoProcessor``). Radiographs go through the processor's CXR
image processor and the CXR tower; CT files (``modality="ct"``) through its volume processor and the CT tower. Both
are classified zero-shot against the config's prompts (:class:`x2ctclip.ZeroShotClassifier`); the zero-shot
log-odds are then calibrated with ``config.calibration`` when the config carries one
(:mod:`x2ctclip.calibration`, the schema ``x2ctclip evaluate calibrate`` writes). The calibration was fitted on CXR
scores: for CTs it is applied only when ``calibrate_ct=True``.

Nothing here imports the training package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .calibration import apply_calibration, calibration_thresholds, check_calibration
from .modeling_x2ctclip import X2CTCLIPModel
from .zero_shot import ZeroShotClassifier

__all__ = ["X2CTCLIPPrediction", "X2CTCLIPPredictor"]

MODALITIES = ("cxr", "ct")


@dataclass
class X2CTCLIPPrediction:
    """Per-finding result of :class:`X2CTCLIPPredictor` for N inputs and F findings (F = 18 for CT-RATE).

    Attributes:
        findings: the F finding names, in column order (``config.findings``).
        probabilities: ``(N, F)`` float32 in [0, 1]: calibrated probability that each finding is present when
            ``calibrated`` is True, else the raw zero-shot probability (the same tensor as ``raw_probabilities``).
        raw_probabilities: ``(N, F)`` float32: the zero-shot prompt-ensemble probabilities before calibration.
        logits: ``(N, F)`` float32: log-odds of ``raw_probabilities`` (the input of the calibration).
        thresholds: ``(F,)`` float32 operating points on ``probabilities`` (the calibration's when it has them, else
            0.5 or the ``threshold`` passed); NaN = no operating point for that finding.
        present: ``(N, F)`` bool, ``probabilities >= thresholds`` (a NaN threshold is never present).
        calibrated: whether ``config.calibration`` was applied.
        modality: ``"cxr"`` or ``"ct"``: which tower encoded the inputs.
        embeddings: ``(N, projection_dim)`` float32, the L2-normalised embeddings that were classified.
    """

    findings: list[str]
    probabilities: torch.Tensor
    raw_probabilities: torch.Tensor
    logits: torch.Tensor
    thresholds: torch.Tensor
    present: torch.Tensor
    calibrated: bool
    modality: str
    embeddings: torch.Tensor

    def to_records(self) -> list[dict[str, dict[str, Any]]]:
        """One dict per input: ``{finding: {"probability": float, "present": bool}}`` (JSON-able)."""
        return [
            {
                name: {"probability": float(self.probabilities[i, j]), "present": bool(self.present[i, j])}
                for j, name in enumerate(self.findings)
            }
            for i in range(self.probabilities.shape[0])
        ]


class X2CTCLIPPredictor:
    """Zero-shot (and calibrated) per-finding probabilities from an X2CT-CLIP model and its processor.

    Args:
        model: an :class:`x2ctclip.X2CTCLIPModel` (its ``config.findings``, ``prompt_templates`` and optional
            ``calibration`` are used).
        processor: the :class:`x2ctclip.processors.X2CTCLIPProcessor` saved with it.
        ensemble / batch_size / max_length: passed to :class:`x2ctclip.ZeroShotClassifier`.
    """

    def __init__(self, model: Any, processor: Any, ensemble: str = "probabilities", batch_size: int = 16,
                 max_length: int = 64):  # fmt: skip
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"the processor ({type(processor).__name__}) has no tokenizer; the prompts need one.")
        self.model = model.eval()
        self.processor = processor
        self.classifier = ZeroShotClassifier(model, tokenizer, ensemble=ensemble, batch_size=batch_size,
                                             max_length=max_length)  # fmt: skip
        calibration = getattr(model.config, "calibration", None)
        self.calibration = None if calibration is None else check_calibration(calibration, self.classifier.findings)

    @classmethod
    def from_pretrained(cls, folder_or_hub_id: str | os.PathLike, device: str | torch.device | None = None,
                        **kwargs: Any) -> "X2CTCLIPPredictor":  # fmt: skip
        """Loads the model (:class:`x2ctclip.X2CTCLIPModel`) and the processor (``AutoProcessor``) of a folder or
        Hub id; ``device`` (default: CPU) is where the model runs; other ``kwargs`` go to :meth:`__init__`."""
        from transformers import AutoProcessor

        from . import processors  # noqa: F401  (registers X2CTCLIPProcessor with AutoProcessor)

        model = X2CTCLIPModel.from_pretrained(str(folder_or_hub_id))
        processor = AutoProcessor.from_pretrained(str(folder_or_hub_id))
        if device is not None:
            model = model.to(device)
        return cls(model, processor, **kwargs)

    @property
    def findings(self) -> list[str]:
        return list(self.classifier.findings)

    def __call__(self, inputs: Any, modality: str = "cxr", threshold: float | None = None,
                 calibrate_ct: bool = False) -> X2CTCLIPPrediction:  # fmt: skip
        """Classifies ``inputs``.

        Args:
            inputs: one input or a list. ``modality="cxr"``: radiograph files (DICOM, PNG, JPEG, ...), 2-D arrays or
                PIL images; ``modality="ct"``: CT files (NIfTI, DICOM series folders) or HU arrays ``(D, H, W)``.
            threshold: one operating point on the probabilities for every finding, overriding the calibration's.
            calibrate_ct: apply ``config.calibration`` (fitted on CXR scores) to CT scores too.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}.")
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not items:
            raise ValueError("no inputs to classify.")
        if modality == "cxr":
            pixel_values = self.processor(images=items)["pixel_values"]
            embeds = self.classifier.encode_images(pixel_values)
        else:
            embeds = self._encode_ct(items)
        out = self.classifier.predict_from_embeddings(embeds)
        raw, logits = out.probabilities.float().cpu(), out.logits.float().cpu()
        calibration = self.calibration if modality == "cxr" or calibrate_ct else None
        probabilities = apply_calibration(logits, calibration) if calibration is not None else raw
        thresholds = calibration_thresholds(calibration, len(self.findings), threshold)
        present = probabilities >= torch.nan_to_num(thresholds, nan=float("inf"))
        return X2CTCLIPPrediction(
            findings=self.findings, probabilities=probabilities, raw_probabilities=raw, logits=logits,
            thresholds=thresholds, present=present, calibrated=calibration is not None, modality=modality,
            embeddings=out.image_embeds.float().cpu(),
        )  # fmt: skip

    def _encode_ct(self, items: Sequence[Any]) -> torch.Tensor:
        """Projected CT embeddings ``(N, projection_dim)``, one volume at a time (a CT is ~ 480 x 480 x 240 voxels)."""
        if getattr(self.model, "ct_model", None) is None:
            raise ValueError("this model has no CT tower (config.towers); it cannot classify CT volumes.")
        device = next(self.model.parameters()).device
        chunks = []
        with torch.inference_mode():
            for item in items:
                ct_values = self.processor(volumes=[item])["ct_values"].to(device)
                chunks.append(self.model.get_ct_features(ct_values=ct_values).pooler_output.float())
        return torch.cat(chunks)
