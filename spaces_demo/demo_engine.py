"""Inference behind the X2CT-CLIP Gradio demo, free of any Gradio import so that it can be tested directly.

:class:`DemoEngine` loads a saved X2CT-CLIP folder once and answers two kinds of request:

- :meth:`DemoEngine.analyse_radiograph`: a chest X-ray file (PNG, JPEG or DICOM, ``MONOCHROME1`` included) ->
  the 18 CT-RATE findings as probabilities (calibrated where the folder carries a calibration, else raw zero-shot
  probabilities, labelled as such), operating thresholds, a saliency map over the radiograph for one finding, the
  most similar reports of a gallery, and the input checks that failed.
- :meth:`DemoEngine.analyse_ct`: a chest CT (NIfTI, or a zip of one DICOM series) -> its simulated radiographs in
  both simulation modes, the CXR tower's predictions on them, and the CT tower's predictions where the model has one.

The demo is a thin app over the library (``x2ctclip``, ``x2ctclip.processors``); its other files sit next to this one
and are imported as top-level modules, as ``app.py`` imports this one: :mod:`uploads` (file sniffing, limits, upload
checks, :class:`InputError`), :mod:`ood` (the latent check), :mod:`gallery` (report retrieval), :mod:`results`,
:mod:`saliency`, :mod:`charts` and :mod:`phantoms`. Every public name of those is re-exported here, so
``from demo_engine import X`` keeps working.

Files the engine reads from the model folder, besides the weights, config and processor (all optional; names and
formats in :mod:`x2ctclip.assets`):

- ``calibration.json``: the schema of :mod:`x2ctclip.calibration` (what ``Calibrator.to_dict()`` of
  ``x2ctclip evaluate calibrate`` writes) for the CXR zero-shot logits, or ``{"cxr": {...}, "ct": {...}}`` with one
  calibration per tower; applied with :func:`x2ctclip.calibration.apply_calibration`.
- ``report_gallery.safetensors``: cached report latents for retrieval (:class:`ReportGallery`).
- ``cxr_reference.safetensors``: CXR latents of in-distribution radiographs for the input check
  (:class:`LatentReference`); without it, the reference is computed at start-up from CXRs simulated from synthetic
  chest CT phantoms (:mod:`phantoms`, the only path that imports ``x2ctclip.train``).

Limits on uploads are in :class:`Limits`; every refusal is an :class:`InputError` with a message meant for the
person who uploaded the file. Inference runs in ``torch.inference_mode`` except the saliency pass, which takes the
gradient with respect to the input only (all parameters are frozen at load), so concurrent requests share the model
safely.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoProcessor

import x2ctclip.processors  # noqa: F401  (registers the processor classes with AutoProcessor)
from x2ctclip import X2CTCLIPModel
from x2ctclip.assets import ASSETS_FILE, CALIBRATION_FILE, GALLERY_FILE, REFERENCE_FILE, load_latents, save_latents
from x2ctclip.calibration import apply_calibration, check_calibration
from x2ctclip.processors.simulation import simulate_cxr
from x2ctclip.zero_shot import ZeroShotClassifier

# The demo's own modules: files next to this one, imported as app.py imports this one (re-exported: see __all__).
from charts import render_chart
from gallery import ReportGallery, read_report_csv
from ood import LatentReference
from phantoms import simulate_phantom_cxrs
from results import CTResult, Predictions, RadiographResult
from saliency import overlay_saliency, smooth_map, to_uint8, upsample_map
from uploads import (
    CHEST_BODY_PARTS,
    MAX_ASPECT,
    MAX_ZIP_RATIO,
    OTHER_MODALITIES,
    InputError,
    Issue,
    Limits,
    chest_ct_issues,
    load_ct_upload,
    load_radiograph_upload,
    sniff_file_type,
)

__all__ = [
    "ASSETS_FILE", "CALIBRATION_FILE", "CHEST_BODY_PARTS", "FLAG_MEANING", "GALLERY_FILE", "MAX_ASPECT",
    "MAX_ZIP_RATIO", "MODE_TITLES", "OTHER_MODALITIES", "REFERENCE_FILE", "SIMULATION_MODES", "CTResult",
    "DemoEngine", "InputError", "Issue", "LatentReference", "Limits", "Predictions", "RadiographResult",
    "ReportGallery", "calibrate_logits", "calibration_thresholds", "chest_ct_issues", "describe_calibration",
    "load_latents", "overlay_saliency", "read_calibrations", "read_report_csv", "render_chart", "save_latents",
    "simulate_phantom_cxrs", "smooth_map", "sniff_file_type", "to_uint8", "upsample_map",
]  # fmt: skip

logger = logging.getLogger("x2ctclip.demo")

#: What an out-of-distribution flag means, shown on the page next to the training distribution.
FLAG_MEANING = ("a flag means the model's latent of the upload lies outside what it saw in training, so its numbers "
                "are withheld: they would not be reliable")
SIMULATION_MODES = ("mean", "beer_lambert")
#: Human-readable names of the simulation modes (``x2ctclip.processors.simulation``).
MODE_TITLES = {"mean": "mean projection (X2CT-CLIP)", "beer_lambert": "Beer-Lambert attenuation"}

# The old private name of the latent reader (tests and scripts read a folder's latent files with it).
_load_latents = load_latents


def _read_json_file(path: Path) -> Any:
    """The JSON in ``path`` (``{}`` when the file is absent); unreadable JSON is a ValueError naming the file."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error}).") from None


# ------------------------------------------------------------------------------------------------- calibration
def read_calibrations(path: Path, findings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The calibrations of ``calibration.json`` per tower (``"cxr"``, ``"ct"``), each checked against the model's
    ``findings`` with :func:`x2ctclip.calibration.check_calibration`; ``{}`` when the file is absent.

    A file holding one calibration is the CXR tower's. Raises ValueError: one line naming the file and the problem.
    """
    if not path.is_file():
        return {}
    data = _read_json_file(path)
    per_tower = data if isinstance(data, dict) and data and set(data) <= {"cxr", "ct"} else {"cxr": data}
    calibrations = {}
    for tower, entry in per_tower.items():
        slope = entry.get("slope") if isinstance(entry, dict) else None
        if isinstance(slope, list) and len(slope) != len(findings):
            raise ValueError(f"{path}: the {tower} calibrator has {len(slope)} findings, the model {len(findings)}.")
        try:
            calibrations[tower] = check_calibration(entry, findings)
            calibration_thresholds(entry)  # null or numbers (the library reads them only when applying)
        except (ValueError, TypeError) as error:
            message = str(error).replace("config.calibration", f"the {tower} calibration")
            raise ValueError(f"{path}: {message}") from None
    return calibrations


def calibrate_logits(logits: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(slope * logits + intercept)`` of ``(..., F)`` float64 log-odds, float64, with
    the library's :func:`x2ctclip.calibration.apply_calibration` (a checked calibration: :func:`read_calibrations`)."""
    return apply_calibration(torch.as_tensor(np.asarray(logits, dtype=np.float64)), calibration).numpy()


def calibration_thresholds(calibration: dict[str, Any]) -> np.ndarray | None:
    """``(F,)`` float64 operating thresholds on the calibrated probabilities (null entries -> NaN: no threshold), or
    None when the calibration has none."""
    thresholds = calibration.get("thresholds")
    if thresholds is None:
        return None
    return np.array([math.nan if v is None else float(v) for v in thresholds], dtype=np.float64)


def describe_calibration(calibration: dict[str, Any]) -> str:
    """``"<method> calibration"`` and, where recorded, ``", thresholds: <threshold_method>"``."""
    how = f"{calibration['method']} calibration"
    if calibration.get("threshold_method"):
        how += f", thresholds: {calibration['threshold_method']}"
    return how


# ------------------------------------------------------------------------------------------------------ engine
class DemoEngine:
    """Loads an X2CT-CLIP model folder once and serves the demo's requests.

    Args:
        model_dir: a folder written by ``X2CTCLIPModel.save_pretrained`` + ``X2CTCLIPProcessor.save_pretrained``
            (the quickstart's ``outputs/quickstart/model``); it needs the CXR and report towers.
        gallery: a report CSV (see :func:`read_report_csv`) or gallery ``.safetensors`` file; default: the folder's
            ``report_gallery.safetensors`` if any.
        limits: upload limits.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        reference_phantoms: synthetic CT phantoms to simulate reference CXRs from when the folder has no
            ``cxr_reference.safetensors`` (0: no latent check).
        display_size: side in pixels of the radiograph square shown with its saliency map.

    Attributes:
        calibrators: per tower (``"cxr"``, ``"ct"``) the checked calibration dict of ``calibration.json`` (the
            :mod:`x2ctclip.calibration` schema); empty without the file.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        gallery: str | os.PathLike | None = None,
        limits: Limits | None = None,
        device: str | None = None,
        reference_phantoms: int = 16,
        display_size: int = 448,
    ):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir}: no config.json; this is not a saved X2CT-CLIP model folder.")
        self.limits = limits or Limits()
        self.display_size = int(display_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = X2CTCLIPModel.from_pretrained(str(self.model_dir))
        missing = [t for t in ("cxr", "text") if getattr(model, f"{t}_model") is None]
        if missing:
            raise ValueError(
                f"{self.model_dir}: the demo needs the CXR and report towers; this model has towers "
                f"{model.config.towers} (missing {', '.join(missing)})."
            )
        # Inference only: no parameter needs a gradient, so the saliency pass differentiates the input alone and
        # concurrent requests never write to shared state.
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.findings = list(model.config.findings)
        self.has_ct = model.ct_model is not None
        self.processor = self._load_processor()
        self.image_processor = self.processor.image_processor
        self.classifier = ZeroShotClassifier(self.model, self.processor.tokenizer)
        # Prompts are encoded once, here, before any concurrent request; the cache is then only read. A plain copy
        # (not an inference tensor) is kept for the saliency pass, which needs autograd.
        self.prompt_embeds = self.classifier.encode_prompts().clone()
        self.assets = self._load_assets()
        #: One line naming the distribution the model was trained on (from ``demo_assets.json``), or None.
        self.distribution = self.assets.get("distribution")
        self.calibrators = self._load_calibration()
        self.gallery = self._load_gallery(gallery)
        self.reference = self._load_reference(reference_phantoms)
        logger.info(
            "loaded %s (towers %s) on %s; calibration: %s; gallery: %s; input-check reference: %s",
            self.model_dir, ",".join(model.config.towers), self.device, ",".join(sorted(self.calibrators)) or "none",
            f"{len(self.gallery)} reports" if self.gallery else "none",
            f"{self.reference.n} latents, limit {self.reference.limit:.2f}" if self.reference else "none",
        )

    # ------------------------------------------------------------------------------------------------ loading
    def _load_processor(self):
        try:
            return AutoProcessor.from_pretrained(str(self.model_dir))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise FileNotFoundError(
                f"{self.model_dir}: cannot load the processor (processor_config.json and tokenizer files, written by "
                f"X2CTCLIPProcessor.save_pretrained): {error}"
            ) from None

    def _load_assets(self) -> dict[str, Any]:
        data = _read_json_file(self.model_dir / ASSETS_FILE)
        return data if isinstance(data, dict) else {}

    def _load_calibration(self) -> dict[str, dict[str, Any]]:
        return read_calibrations(self.model_dir / CALIBRATION_FILE, self.findings)

    def _load_gallery(self, gallery: str | os.PathLike | None) -> ReportGallery | None:
        if gallery is None:
            path = self.model_dir / GALLERY_FILE
            return ReportGallery.load(path) if path.is_file() else None
        path = Path(gallery)
        if path.suffix.lower() == ".safetensors":
            loaded = ReportGallery.load(path)
        else:
            reports, names = read_report_csv(path)
            loaded = ReportGallery(self.encode_reports(reports), reports, names, f"built from {path.name}")
        if loaded.embeds.shape[1] != self.model.config.projection_dim:
            raise ValueError(
                f"{path}: gallery latents have width {loaded.embeds.shape[1]}, the model "
                f"{self.model.config.projection_dim}."
            )
        return loaded

    def encode_reports(self, reports: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """L2-normalised report latents ``(N, projection_dim)``: the processor's tokenizer settings (CT-CLIP
        cleaning), padded to the longest report of each batch, truncated to the text tower's length."""
        text_config = self.model.config.text_config
        max_length = min(int(self.processor.max_length), int(getattr(text_config, "max_position_embeddings", 512)))
        chunks = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(reports), batch_size), desc="report gallery", unit="batch",
                              disable=len(reports) <= batch_size):  # fmt: skip
                tokens = self.processor(text=list(reports[start : start + batch_size]), padding="longest",
                                        max_length=max_length)  # fmt: skip
                out = self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
                chunks.append(F.normalize(out.pooler_output.float(), dim=-1).cpu())
        return torch.cat(chunks)

    def _load_reference(self, phantoms: int) -> LatentReference | None:
        path = self.model_dir / REFERENCE_FILE
        if path.is_file():
            latents, meta = load_latents(path, "cxr_embeds")
            # The limit is the out-of-fold quantile at the share the assets were written for (97.5 % by default), no
            # extra margin: the check then accepts that share of held-out CXRs of the training distribution.
            share = float(meta.get("accept_share", self.assets.get("accept_share", 0.975)))
            return LatentReference.fit(latents.numpy(), meta.get("source", f"{len(latents)} CXRs ({path.name})"),
                                       quantile=share, margin=1.0)  # fmt: skip
        if phantoms <= 0:
            return None
        latents = self.encode_images(simulate_phantom_cxrs(phantoms))
        return LatentReference.fit(latents.numpy(), f"{phantoms} CXRs simulated from synthetic chest CT phantoms")

    # --------------------------------------------------------------------------------------------- encoding
    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, 3, h, w)`` model inputs of ``(H, W)`` images in [0, 1] (the folder's image processor)."""
        batch = self.image_processor(list(images), warn_non_frontal=False, return_tensors="pt")
        return batch["pixel_values"].to(self.device)

    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Projected, un-normalised CXR latents ``(B, D)`` of ``(H, W)`` images in [0, 1]."""
        with torch.inference_mode():
            return self.model.get_cxr_features(self.pixel_values(images)).pooler_output.float().cpu()

    def write_reference(self, images: Sequence[np.ndarray], source: str) -> Path:
        """Encode in-distribution radiographs and store them as the folder's ``cxr_reference.safetensors``."""
        latents = F.normalize(self.encode_images(images), dim=-1)
        return save_latents(self.model_dir / REFERENCE_FILE, "cxr_embeds", latents, {"source": source})

    # --------------------------------------------------------------------------------------------- predictions
    def predictions(self, latents: torch.Tensor, tower: str, source: str, raw: bool = False) -> Predictions:
        """Zero-shot probabilities of one latent ``(1, D)`` of ``tower`` (``"cxr"`` or ``"ct"``), calibrated with
        that tower's calibration (:func:`calibrate_logits`) when the folder has one (``raw``: the uncalibrated prompt-pair probabilities)."""
        out = self.classifier.predict_from_embeddings(latents.to(self.device))
        logits = out.logits[0].double().cpu().numpy()
        calibration = self.calibrators.get(tower)
        if raw and calibration is not None:
            how = "raw zero-shot prompt-pair probabilities, uncalibrated (asked for; they saturate)"
            return Predictions(f"{source}, raw zero-shot", out.probabilities[0].double().cpu().numpy(), logits,
                               False, how)  # fmt: skip
        if calibration is None:
            how = "raw zero-shot probabilities (no calibration for this tower in the model folder)"
            return Predictions(source, out.probabilities[0].double().cpu().numpy(), logits, False, how)
        probabilities = calibrate_logits(logits, calibration)
        return Predictions(source, probabilities, logits, True, describe_calibration(calibration),
                           calibration_thresholds(calibration))  # fmt: skip

    def finding_index(self, finding: str | None) -> int:
        if finding is None or finding == "":
            return 0
        if finding not in self.findings:
            raise InputError(f"Unknown finding {finding!r}; choose one of: {', '.join(self.findings)}.")
        return self.findings.index(finding)

    def saliency(self, pixel_values: torch.Tensor, finding: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient x input saliency of one finding's score on the CXR tower.

        The score is the finding's zero-shot log-odds before the softmax, ``exp(logit_scale) * (cos(x, e_pos) -
        cos(x, e_neg))`` averaged over prompt templates; its gradient with respect to ``pixel_values`` ``(1, 3, h,
        w)`` times the input, summed over channels, is the map (positive: the pixel pushes towards "present").

        Returns:
            ``(map (h, w) float32, latent (1, D))``: the latent comes from the same forward pass.
        """
        index = self.finding_index(finding)
        x = pixel_values.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            latent = self.model.get_cxr_features(x).pooler_output
            z = F.normalize(latent.float(), dim=-1)[0]
            prompts = self.prompt_embeds[:, index].to(z.device)  # (T, 2, D)
            scale = self.model.logit_scale.detach().float().exp()
            score = (scale * (prompts[:, 0] @ z - prompts[:, 1] @ z)).mean()
            (grad,) = torch.autograd.grad(score, x)
        attribution = (grad * x.detach()).sum(dim=1)[0]
        return attribution.float().cpu(), latent.detach().float().cpu()

    # -------------------------------------------------------------------------------------------- radiographs
    def load_radiograph(self, path: Any) -> tuple[Any, list[Issue]]:
        """Checks and loads an uploaded radiograph -> ``(Radiograph, issues)`` (:func:`uploads.load_radiograph_upload`
        under this engine's limits); raises :class:`InputError` for files that cannot be analysed at all."""
        return load_radiograph_upload(path, self.limits)

    def model_view(self, pixels: np.ndarray) -> np.ndarray:
        """The square the model sees (the image processor's resize + centre crop), at ``display_size`` pixels."""
        ip = self.image_processor
        crop = ip.crop_size
        scale = self.display_size / max(crop["height"], crop["width"])
        view = pixels
        if ip.do_resize:
            view = ip.resize(view, {k: max(1, round(v * scale)) for k, v in ip.size.items()}, ip.resample)
        if ip.do_center_crop:
            view = ip.center_crop(view, {k: max(1, round(v * scale)) for k, v in crop.items()})
        return np.ascontiguousarray(view, dtype=np.float32)

    def _ood_issue(self, latent: torch.Tensor, what: str) -> tuple[list[Issue], float | None]:
        if self.reference is None:
            return [], None
        distance = float(self.reference.distance(latent.numpy())[0])
        if distance <= self.reference.limit:
            return [], distance
        return [Issue("out_of_distribution", f"The model's latent of {what} is far from its reference chest X-rays "
                      f"(Mahalanobis distance {distance:.1f}, limit {self.reference.limit:.1f}; reference: "
                      f"{self.reference.source}).")], distance  # fmt: skip

    def analyse_radiograph(self, path: Any, finding: str | None = None, show_anyway: bool = False,
                           top_k: int = 5, raw_scores: bool = False) -> RadiographResult:  # fmt: skip
        """Checks, classifies and explains one uploaded radiograph (see :class:`RadiographResult`).

        When a check fails, predictions and saliency are withheld (``withheld=True``) unless ``show_anyway``.
        Probabilities are the calibrated ones when the folder has a calibration; ``raw_scores`` adds the raw
        zero-shot ones, labelled, as ``raw_predictions``.
        """
        finding = self.findings[self.finding_index(finding)]
        radiograph, issues = self.load_radiograph(path)
        pixel_values = self.pixel_values([radiograph.pixels])
        attribution, latent = self.saliency(pixel_values, finding)
        ood, distance = self._ood_issue(latent, "this image")
        issues += ood
        view = self.model_view(radiograph.pixels)
        withheld = bool(issues) and not show_anyway
        result = RadiographResult(view=view, finding=finding, predictions=None, saliency=None, retrieved=[],
                                  issues=issues, ood_distance=distance, withheld=withheld)  # fmt: skip
        if withheld:
            return result
        result.predictions = self.predictions(latent, "cxr", "CXR tower")
        if raw_scores and result.predictions.calibrated:
            result.raw_predictions = self.predictions(latent, "cxr", "CXR tower", raw=True)
        result.saliency = upsample_map(smooth_map(attribution), view.shape)
        if self.gallery is not None:
            result.retrieved = self.gallery.search(latent, top_k)
        return result

    def saliency_for(
        self, path: Any, finding: str | None, show_anyway: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, list[Issue]]:
        """Only the saliency of another finding: ``(view, map or None when withheld, issues)``."""
        finding = self.findings[self.finding_index(finding)]
        radiograph, issues = self.load_radiograph(path)
        attribution, latent = self.saliency(self.pixel_values([radiograph.pixels]), finding)
        issues += self._ood_issue(latent, "this image")[0]
        view = self.model_view(radiograph.pixels)
        if issues and not show_anyway:
            return view, None, issues
        return view, upsample_map(smooth_map(attribution), view.shape), issues

    # ---------------------------------------------------------------------------------------------------- CT
    def load_ct(self, path: Any) -> tuple[Any, list[Issue]]:
        """Checks and loads an uploaded CT (NIfTI or a zip of one DICOM series) -> ``(CTVolume, issues)``
        (:func:`uploads.load_ct_upload` under this engine's limits)."""
        return load_ct_upload(path, self.limits)

    def analyse_ct(self, path: Any, show_anyway: bool = False, top_k: int = 5) -> CTResult:
        """Checks a CT, simulates its radiograph in both modes, and classifies them (and the CT, where the model has
        the CT tower). Predictions are withheld when a check fails unless ``show_anyway``."""
        volume, issues = self.load_ct(path)
        try:
            simulated = {mode: simulate_cxr(volume, mode=mode, validate=False) for mode in SIMULATION_MODES}
        except (ValueError, RuntimeError) as error:
            raise InputError(f"Cannot simulate a radiograph from this CT: {error}") from None
        for mode, image in simulated.items():
            if min(image.shape) < 16 or float(image.max()) <= float(image.min()):
                raise InputError(f"The CT's simulated radiograph ({MODE_TITLES[mode]}) is empty or blank.")
        latents = self.encode_images([simulated[m] for m in SIMULATION_MODES])
        issues += self._ood_issue(latents[:1], "its simulated radiograph")[0]
        withheld = bool(issues) and not show_anyway
        result = CTResult(simulated=simulated, predictions=[], retrieved=[], retrieval_source="", issues=issues,
                          withheld=withheld)  # fmt: skip
        if withheld:
            return result
        for i, mode in enumerate(SIMULATION_MODES):
            result.predictions.append(self.predictions(latents[i : i + 1], "cxr", f"CXR tower, {MODE_TITLES[mode]}"))
        query, result.retrieval_source = latents[:1], "the CXR latent of the mean-projection simulation"
        if self.has_ct:
            ct_values = self.processor.volume_processor(volume, return_tensors="pt")["ct_values"].to(self.device)
            with torch.inference_mode():
                ct_latent = self.model.get_ct_features(ct_values).pooler_output.float().cpu()
            result.predictions.append(self.predictions(ct_latent, "ct", "CT tower"))
            query, result.retrieval_source = ct_latent, "the CT latent"
        else:
            result.notes.append("This model has no CT tower, so only CXR-based predictions are shown.")
        if self.gallery is not None:
            result.retrieved = self.gallery.search(query, top_k)
        return result
