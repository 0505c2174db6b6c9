"""Loading a model folder for evaluation and encoding radiographs into latents and logits."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoImageProcessor

from x2ctclip import X2CTCLIPForAbnormalityClassification, X2CTCLIPModel
from x2ctclip.processors import load_report_tokenizer
from x2ctclip.train.evaluation.calibration import Calibrator
from x2ctclip.train.evaluation.provenance import file_fingerprint
from x2ctclip.zero_shot import ZeroShotClassifier

CLASSIFIER_ARCHITECTURE = "X2CTCLIPForAbnormalityClassification"


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    """A model folder ready for evaluation.

    Attributes:
        path: the folder.
        model: the :class:`X2CTCLIPModel` or :class:`X2CTCLIPForAbnormalityClassification`, in eval mode.
        kind: ``"zeroshot"`` (prompt pairs) or ``"classifier"`` (supervised head).
        image_processor: the CXR image processor of the folder.
        tokenizer: the report tokenizer (None when the folder has none; required for zero-shot scoring).
        calibrator: :class:`~x2ctclip.train.evaluation.calibration.Calibrator` from ``config.calibration``, or None.
        ensemble: prompt ensemble of zero-shot scoring.
    """

    path: Path
    model: Any
    kind: str
    image_processor: Any
    tokenizer: Any | None
    calibrator: Any | None
    device: torch.device
    ensemble: str = "probabilities"
    _zero_shot: Any = field(default=None, repr=False)

    @property
    def findings(self) -> list[str]:
        return list(self.model.config.findings)

    def has_tower(self, tower: str) -> bool:
        return getattr(self.model, f"{tower}_model", None) is not None

    @property
    def text_max_length(self) -> int:
        limits = [512]
        text_config = getattr(self.model.config, "text_config", None)
        if text_config is not None and getattr(text_config, "max_position_embeddings", None):
            limits.append(int(text_config.max_position_embeddings))
        length = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(length, int) and length < 10**6:
            limits.append(length)
        return min(limits)

    def zero_shot(self):
        if self._zero_shot is None:
            if self.tokenizer is None:
                raise FileNotFoundError(f"{self.path}: no report tokenizer in the folder; zero-shot scoring needs one.")
            self._zero_shot = ZeroShotClassifier(self.model, self.tokenizer, ensemble=self.ensemble,
                                                 max_length=self.text_max_length)  # fmt: skip
        return self._zero_shot

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        out = {
            "path": str(self.path.resolve()),
            "fingerprint": file_fingerprint(self.path),
            "architecture": type(self.model).__name__,
            "kind": self.kind,
            "towers": list(config.towers),
            "findings": self.findings,
            "calibration": None if self.calibrator is None else {
                "method": self.calibrator.method, "threshold_method": self.calibrator.threshold_method},
        }
        if self.kind == "zeroshot":
            out["prompt_templates"] = [list(p) for p in config.prompt_templates]
            out["ensemble"] = self.ensemble
        return out


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | os.PathLike, device: str | torch.device | None = None, ensemble: str = "probabilities",
               calibrated: bool = True) -> LoadedModel:  # fmt: skip
    """Load a model folder for evaluation (model class from ``config.json``'s ``architectures``).

    Args:
        path: the folder (``save_pretrained`` with the processor or image processor and, for zero-shot, a tokenizer).
        device: default CUDA when available.
        ensemble: zero-shot prompt ensemble (``"probabilities"`` or ``"embeddings"``).
        calibrated: use ``config.calibration`` when present (False: raw scores).
    """
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a model folder written by save_pretrained.")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not readable JSON ({err}).") from None
    expected = X2CTCLIPModel.config_class.model_type
    if not isinstance(config, dict) or config.get("model_type") != expected:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_path}: not an X2CT-CLIP model config (model_type {found!r}, expected "
                         f"{expected!r}); expected a folder written by save_pretrained.")  # fmt: skip
    architectures = config.get("architectures") or []
    device = _device(device)
    if CLASSIFIER_ARCHITECTURE in architectures:
        model, kind = X2CTCLIPForAbnormalityClassification.from_pretrained(path), "classifier"
    else:
        model, kind = X2CTCLIPModel.from_pretrained(path), "zeroshot"
        if model.cxr_model is None:
            raise ValueError(f"{path}: the model has no CXR tower (towers {model.config.towers}); nothing to evaluate "
                             "on chest X-rays.")  # fmt: skip
    model = model.to(device).eval()
    calibrator = None
    if calibrated and config.get("calibration") is not None:
        try:
            calibrator = Calibrator.from_dict(config["calibration"])
        except ValueError as err:
            raise ValueError(f"{config_path}: calibration: {err}") from None
        if calibrator.n_findings != len(model.config.findings):
            raise ValueError(f"{config_path}: the calibration has {calibrator.n_findings} findings, the model "
                             f"{len(model.config.findings)}.")  # fmt: skip
    try:
        image_processor = AutoImageProcessor.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as err:
        raise FileNotFoundError(f"{path}: cannot load the CXR image processor (preprocessor_config.json or "
                                f"processor_config.json): {err}") from None  # fmt: skip
    tokenizer = None
    if any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        tokenizer = load_report_tokenizer(path)
    return LoadedModel(path, model, kind, image_processor, tokenizer, calibrator, device, ensemble)


@torch.no_grad()
def encode_images(loaded: LoadedModel, images: Any, batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
    """L2-normalised CXR latents ``(N, projection_dim)`` (float32, CPU) of ``images`` (anything the image processor
    reads: uint8 arrays, file paths, PIL images), in batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = len(images)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc="encode CXRs", unit="batch", disable=progress is False):
        batch = [np.asarray(im) if not isinstance(im, (str, os.PathLike)) else im
                 for im in images[start : start + batch_size]]  # fmt: skip
        pixel_values = loaded.image_processor(batch, return_tensors="pt")["pixel_values"].to(loaded.device)
        latent = loaded.model.get_cxr_features(pixel_values=pixel_values).pooler_output.float()
        chunks.append(F.normalize(latent, dim=-1).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, loaded.model.config.projection_dim)


@torch.no_grad()
def compute_logits(loaded: LoadedModel, latents: torch.Tensor) -> np.ndarray:
    """Uncalibrated per-finding log-odds ``(N, n_findings)``: the zero-shot prompt-pair log-odds, or the head's."""
    if loaded.kind == "zeroshot":
        return loaded.zero_shot().predict_from_embeddings(latents).logits.cpu().double().numpy()
    out = loaded.model(cxr_embeds=latents.to(loaded.device), return_dict=True).logits
    return out.float().cpu().double().numpy()


def probabilities_from_logits(loaded: LoadedModel, logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities when the model carries a calibration, else ``sigmoid(logits)``."""
    if loaded.calibrator is not None:
        return np.asarray(loaded.calibrator.transform(logits), dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
