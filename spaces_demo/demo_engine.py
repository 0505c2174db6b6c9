"""Inference behind the X2CT-CLIP Gradio demo, free of any Gradio import so that it can be tested directly.

:class:`DemoEngine` loads a saved X2CT-CLIP folder once and answers two kinds of request:

- :meth:`DemoEngine.analyse_radiograph`: a chest X-ray file (PNG, JPEG or DICOM, ``MONOCHROME1`` included) ->
  the 18 CT-RATE findings as probabilities (calibrated where the folder carries a calibration, else raw zero-shot
  probabilities, labelled as such), operating thresholds, a saliency map over the radiograph for one finding, the
  most similar reports of a gallery, and the input checks that failed.
- :meth:`DemoEngine.analyse_ct`: a chest CT (NIfTI, or a zip of one DICOM series) -> its simulated radiographs in
  both simulation modes, the CXR tower's predictions on them, and the CT tower's predictions where the model has one.

Files the engine reads from the model folder, besides the weights, config and processor (all optional):

- ``calibration.json``: a :class:`x2ctclip.train.evaluation.calibration.Calibrator` dict (``Calibrator.to_dict()``) for the
  CXR zero-shot logits, or ``{"cxr": {...}, "ct": {...}}`` with one calibrator per tower.
- ``report_gallery.safetensors``: cached report latents for retrieval (:class:`ReportGallery`).
- ``cxr_reference.safetensors``: CXR latents of in-distribution radiographs for the input check
  (:class:`LatentReference`); without it, the reference is computed at start-up from CXRs simulated from synthetic
  chest CT phantoms (:mod:`x2ctclip.train.synthetic.writer`).

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
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from x2ctclip.train.hub.demo_assets import ASSETS_FILE, GALLERY_FILE, REFERENCE_FILE, save_latents  # noqa: F401

logger = logging.getLogger("x2ctclip.demo")

CALIBRATION_FILE = "calibration.json"
#: What an out-of-distribution flag means, shown on the page next to the training distribution.
FLAG_MEANING = ("a flag means the model's latent of the upload lies outside what it saw in training, so its numbers "
                "are withheld: they would not be reliable")
#: Radiographs whose sides differ more than this are refused from the header, before decoding (no real one does).
MAX_ASPECT = 4.0
#: A zip member compressed more than this ratio is refused before extraction (DICOM compresses about 2-10x).
MAX_ZIP_RATIO = 200
SIMULATION_MODES = ("mean", "beer_lambert")
#: Human-readable names of the simulation modes (``x2ctclip.processors.simulation``).
MODE_TITLES = {"mean": "mean projection (X2CT-CLIP)", "beer_lambert": "Beer-Lambert attenuation"}

# DICOM Modality values of projection radiographs: computed / digital radiography, and "RG" (radiographic imaging).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "DR"})
# Modalities that are certainly not a chest radiograph (others, e.g. OT or SC secondary captures, are not judged).
OTHER_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "US", "MG", "XA", "RF", "IO", "PX", "ES", "XC", "OP", "SM"})
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "RIB", "HEART", "MEDIASTINUM", "TORSO")


# ---------------------------------------------------------------------------------------------------------- errors
class InputError(ValueError):
    """An upload the demo refuses (wrong type, corrupt, empty, too large); ``str(error)`` is the message to show."""


@dataclass(frozen=True)
class Issue:
    """A failed input check. ``code`` is stable (tests and API users match on it); ``message`` is for people."""

    code: str
    message: str


@dataclass(frozen=True)
class Limits:
    """Upload limits. Sizes in bytes (MB = 10**6 bytes), pixels and voxels as counts.

    Attributes:
        max_image_bytes: largest radiograph file (default 50 MB).
        max_image_pixels: largest radiograph in pixels, checked on the header before decoding (default 100 MP).
        min_image_side: smallest radiograph side in pixels.
        max_ct_bytes: largest CT upload, NIfTI or zip (default 500 MB); the server-wide upload limit is the same.
        max_ct_voxels: largest CT in voxels, checked on headers before decoding (default 200 M: 512 x 512 x 760).
        max_zip_members: most files in a DICOM zip.
        max_zip_bytes: most bytes a DICOM zip may expand to (counted while extracting, not taken from its header).
    """

    max_image_bytes: int = 50 * 10**6
    max_image_pixels: int = 100 * 10**6
    min_image_side: int = 64
    max_ct_bytes: int = 500 * 10**6
    max_ct_voxels: int = 200 * 10**6
    max_zip_members: int = 4000
    max_zip_bytes: int = 2 * 10**9

    def describe(self) -> str:
        return (
            f"radiographs up to {self.max_image_bytes / 1e6:g} MB and {self.max_image_pixels / 1e6:g} megapixels; "
            f"CTs up to {self.max_ct_bytes / 1e6:g} MB and {self.max_ct_voxels / 1e6:g} million voxels"
        )


# ------------------------------------------------------------------------------------------------- file sniffing
def sniff_file_type(path: str | os.PathLike) -> str:
    """What a file is, from its first bytes (never from its name alone): ``"dicom"``, ``"png"``, ``"jpeg"``,
    ``"nifti"`` (uncompressed), ``"gzip"``, ``"zip"``, ``"empty"`` or ``"unknown"``. A file named ``*.dcm`` without
    the DICOM preamble counts as ``"dicom"`` (old files omit it)."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(352)
    if not head:
        return "empty"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if path.suffix.lower() in (".dcm", ".dicom", ".dic"):
        return "dicom"
    return "unknown"


_TYPE_NAMES = {
    "zip": "a zip archive",
    "gzip": "a gzip file (a compressed NIfTI CT?)",
    "nifti": "a NIfTI volume",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "dicom": "a DICOM file",
    "unknown": "an unknown file type",
}


def _check_upload(path: Any, max_bytes: int, what: str) -> Path:
    if path is None or path == "":
        raise InputError(f"No {what} was uploaded.")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The uploaded {what} could not be found on the server; please upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"The uploaded file {path.name!r} is empty (0 bytes).")
    if size > max_bytes:
        raise InputError(
            f"The uploaded file {path.name!r} is {size / 1e6:.1f} MB; the limit for a {what} is {max_bytes / 1e6:g} MB."
        )
    return path


# -------------------------------------------------------------------------------------------- latent reference
@dataclass
class LatentReference:
    """In-distribution check on L2-normalised CXR latents: Mahalanobis distance to reference latents.

    The covariance is Ledoit-Wolf shrunk (well defined with fewer references than dimensions). The limit is the
    ``quantile`` of the references' *out-of-fold* distances (each reference scored by a fit that did not see it:
    leave-one-out below 20 references, else 5 folds), times ``margin``; a latent beyond it is out of distribution.

    Attributes:
        mean: ``(D,)`` mean latent. precision: ``(D, D)`` inverse shrunk covariance. limit: distance limit.
        n: number of reference latents. source: where they came from (shown to users).
    """

    mean: np.ndarray
    precision: np.ndarray
    limit: float
    n: int
    source: str

    @classmethod
    def fit(
        cls, latents: Any, source: str, quantile: float = 0.99, margin: float = 1.1, folds: int = 5
    ) -> "LatentReference":
        from sklearn.covariance import LedoitWolf

        x = F.normalize(torch.as_tensor(np.asarray(latents, dtype=np.float64)), dim=-1).numpy()
        if x.ndim != 2 or len(x) < 3:
            raise ValueError(f"LatentReference needs at least 3 reference latents (N, D), got shape {x.shape}.")
        if not np.isfinite(x).all():
            raise ValueError("LatentReference: the reference latents hold NaN or infinite values.")
        n = len(x)
        k = n if n < 20 else folds
        fold_of = np.arange(n) % k
        held_out = np.empty(n)
        for fold in range(k):
            test = fold_of == fold
            model = LedoitWolf().fit(x[~test])
            held_out[test] = _mahalanobis(x[test], model.location_, model.precision_)
        full = LedoitWolf().fit(x)
        limit = float(np.max(held_out) if n < 20 else np.quantile(held_out, quantile)) * margin
        return cls(mean=full.location_, precision=full.precision_, limit=limit, n=n, source=source)

    def distance(self, latents: Any) -> np.ndarray:
        """Mahalanobis distance of ``(B, D)`` latents (normalised here) to the reference, ``(B,)``."""
        x = F.normalize(torch.as_tensor(np.asarray(latents, dtype=np.float64)), dim=-1).numpy()
        return _mahalanobis(np.atleast_2d(x), self.mean, self.precision)


def _mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = x - mean
    return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, precision, d), 0.0))


def _load_latents(path: Path, name: str) -> tuple[torch.Tensor, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if name not in handle.keys():
                raise ValueError(f"{path}: no tensor {name!r} (found {sorted(handle.keys())}).")
            tensor = handle.get_tensor(name).float()
    except (OSError, RuntimeError) as error:  # safetensors raises SafetensorError (a RuntimeError subclass)
        raise ValueError(f"{path}: not a readable safetensors file ({error}).") from None
    if tensor.ndim != 2:
        raise ValueError(f"{path}: {name} must have shape (N, D), got {tuple(tensor.shape)}.")
    return tensor, metadata


# ------------------------------------------------------------------------------------------------ report gallery
@dataclass
class ReportGallery:
    """Report latents for retrieval: the reports most similar to a query latent by cosine similarity (the dot
    product of L2-normalised latents, as ``x2ctclip.train.evaluation.retrieval`` ranks them).

    Attributes:
        embeds: ``(N, D)`` float32, L2-normalised. reports: N report texts. names: N identifiers. source: origin.
    """

    embeds: torch.Tensor
    reports: list[str]
    names: list[str]
    source: str

    def __post_init__(self):
        if self.embeds.ndim != 2 or len(self.embeds) != len(self.reports) or len(self.reports) != len(self.names):
            raise ValueError(
                f"ReportGallery: {tuple(self.embeds.shape)} latents, {len(self.reports)} reports and "
                f"{len(self.names)} names do not match."
            )
        if len(self.reports) == 0:
            raise ValueError("ReportGallery: the gallery is empty.")
        self.embeds = F.normalize(self.embeds.float(), dim=-1)

    def __len__(self) -> int:
        return len(self.reports)

    def search(self, query: torch.Tensor, k: int = 5) -> list[tuple[float, str, str]]:
        """Top ``k`` ``(cosine similarity, name, report)`` for one query latent ``(D,)`` or ``(1, D)``."""
        q = F.normalize(query.detach().float().reshape(1, -1), dim=-1)
        if q.shape[1] != self.embeds.shape[1]:
            raise ValueError(f"query width {q.shape[1]} differs from the gallery's {self.embeds.shape[1]}.")
        scores = (q @ self.embeds.t())[0]
        top = torch.topk(scores, min(k, len(self)))
        return [(float(s), self.names[i], self.reports[i]) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the gallery as one safetensors file (latents + reports and names as JSON metadata)."""
        meta = {"format_version": "1", "reports": json.dumps(self.reports), "names": json.dumps(self.names),
                "source": self.source}  # fmt: skip
        return save_latents(path, "text_embeds", self.embeds, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReportGallery":
        path = Path(path)
        embeds, meta = _load_latents(path, "text_embeds")
        try:
            reports = json.loads(meta["reports"])
            names = json.loads(meta.get("names", "null")) or [f"report {i + 1}" for i in range(len(reports))]
        except (KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: the gallery metadata has no readable 'reports' list ({error}).") from None
        return cls(embeds, [str(r) for r in reports], [str(n) for n in names], meta.get("source", str(path)))


def read_report_csv(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Reports and names from a CSV: a ``report`` column, or CT-RATE's ``Findings_EN`` + ``Impressions_EN`` (cleaned
    as CT-CLIP did); names from ``VolumeName`` / ``name`` / ``id`` when present, else the row number."""
    import pandas as pd

    from x2ctclip.processors import clean_report

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such report CSV.")
    try:
        frame = pd.read_csv(path)
    except Exception as error:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError, ...
        raise ValueError(f"{path}: cannot read the CSV ({type(error).__name__}: {error}).") from None
    if "report" in frame.columns:
        reports = [clean_report(r) for r in frame["report"]]
    elif "Findings_EN" in frame.columns:
        impressions = frame["Impressions_EN"] if "Impressions_EN" in frame.columns else [None] * len(frame)
        reports = [clean_report(f, i) for f, i in zip(frame["Findings_EN"], impressions)]
    else:
        raise ValueError(f"{path}: needs a 'report' column or CT-RATE's 'Findings_EN' (+ 'Impressions_EN').")
    name_column = next((c for c in ("VolumeName", "name", "id") if c in frame.columns), None)
    names = [str(v) for v in frame[name_column]] if name_column else [f"row {i + 1}" for i in range(len(frame))]
    keep = [i for i, r in enumerate(reports) if r.strip()]
    if not keep:
        raise ValueError(f"{path}: holds no non-empty report.")
    return [reports[i] for i in keep], [names[i] for i in keep]


# ----------------------------------------------------------------------------------------------------- results
@dataclass
class Predictions:
    """Per-finding probabilities from one source (a tower on one input).

    Attributes:
        source: e.g. ``"CXR tower"``. probabilities: ``(F,)`` in [0, 1]. logits: ``(F,)`` zero-shot log-odds.
        calibrated: whether ``probabilities`` went through a calibrator. calibration: its description.
        thresholds: ``(F,)`` operating thresholds (NaN where none) or None when the calibration has none.
    """

    source: str
    probabilities: np.ndarray
    logits: np.ndarray
    calibrated: bool
    calibration: str
    thresholds: np.ndarray | None = None


@dataclass
class RadiographResult:
    """Everything the demo shows for one radiograph.

    Attributes:
        view: ``(S, S)`` float32 in [0, 1]: the square of the radiograph the model sees, at display resolution.
        finding: the finding of the saliency map.
        predictions: the CXR tower's predictions (None when withheld because checks failed).
        saliency: ``(S, S)`` float32 signed map for ``finding`` (None when withheld); positive = evidence for it.
        retrieved: top reports ``(similarity, name, report)``. issues: failed input checks.
        ood_distance: Mahalanobis distance of the latent to the reference (None without a reference).
        withheld: predictions, saliency and reports were withheld because a check failed.
    """

    view: np.ndarray
    finding: str
    predictions: Predictions | None
    saliency: np.ndarray | None
    retrieved: list[tuple[float, str, str]]
    issues: list[Issue]
    ood_distance: float | None = None
    withheld: bool = False
    #: the raw zero-shot probabilities, only when asked for (``raw_scores=True``) and the default is calibrated.
    raw_predictions: Predictions | None = None


@dataclass
class CTResult:
    """Everything the demo shows for one CT: ``simulated[mode]`` ``(H, W)`` float32 in [0, 1] (both modes),
    predictions per source (CXR tower on each simulation, CT tower where present), retrieved reports, issues."""

    simulated: dict[str, np.ndarray]
    predictions: list[Predictions]
    retrieved: list[tuple[float, str, str]]
    retrieval_source: str
    issues: list[Issue]
    notes: list[str] = field(default_factory=list)
    withheld: bool = False


# ------------------------------------------------------------------------------------------------------ engine

def _read_json_file(path: Path) -> Any:
    """The JSON in ``path`` (``{}`` when the file is absent); unreadable JSON is a ValueError naming the file."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error}).") from None

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
        from x2ctclip import X2CTCLIPModel
        from x2ctclip.zero_shot import ZeroShotClassifier

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
        from transformers import AutoProcessor

        import x2ctclip.processors  # noqa: F401  (registers the processor classes with AutoProcessor)

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

    def _load_calibration(self) -> dict[str, Any]:
        from x2ctclip.train.evaluation.calibration import Calibrator

        path = self.model_dir / CALIBRATION_FILE
        if not path.is_file():
            return {}
        data = _read_json_file(path)
        per_tower = data if isinstance(data, dict) and set(data) <= {"cxr", "ct"} and data else {"cxr": data}
        calibrators = {}
        for tower, entry in per_tower.items():
            calibrator = Calibrator.from_dict(entry)
            if calibrator.n_findings != len(self.findings):
                raise ValueError(
                    f"{path}: the {tower} calibrator has {calibrator.n_findings} findings, the model "
                    f"{len(self.findings)}."
                )
            if calibrator.finding_names is not None and list(calibrator.finding_names) != self.findings:
                raise ValueError(f"{path}: the {tower} calibrator's finding names differ from config.findings.")
            calibrators[tower] = calibrator
        return calibrators

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
        from tqdm.auto import tqdm

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
            latents, meta = _load_latents(path, "cxr_embeds")
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
        that tower's calibrator when the folder has one (``raw``: the uncalibrated prompt-pair probabilities)."""
        out = self.classifier.predict_from_embeddings(latents.to(self.device))
        logits = out.logits[0].double().cpu().numpy()
        calibrator = self.calibrators.get(tower)
        if raw and calibrator is not None:
            how = "raw zero-shot prompt-pair probabilities, uncalibrated (asked for; they saturate)"
            return Predictions(f"{source}, raw zero-shot", out.probabilities[0].double().cpu().numpy(), logits,
                               False, how)  # fmt: skip
        if calibrator is None:
            how = "raw zero-shot probabilities (no calibration for this tower in the model folder)"
            return Predictions(source, out.probabilities[0].double().cpu().numpy(), logits, False, how)
        probabilities = np.asarray(calibrator.transform(logits[None]))[0]
        thresholds = np.asarray(calibrator.thresholds, dtype=np.float64) if calibrator.thresholds else None
        how = f"{calibrator.method} calibration"
        if calibrator.threshold_method:
            how += f", thresholds: {calibrator.threshold_method}"
        return Predictions(source, probabilities, logits, True, how, thresholds)

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
        """Checks and loads an uploaded radiograph -> ``(Radiograph, issues)``; raises :class:`InputError` for
        files that cannot be analysed at all."""
        from x2ctclip.processors import load_radiograph

        path = _check_upload(path, self.limits.max_image_bytes, "radiograph")
        kind = sniff_file_type(path)
        if kind in ("zip", "gzip", "nifti"):
            raise InputError(
                f"{path.name!r} is {_TYPE_NAMES[kind]}, not a radiograph; upload CT volumes (NIfTI or a zip of a DICOM "
                "series) in the CT tab."
            )
        if kind not in ("png", "jpeg", "dicom"):
            raise InputError(f"{path.name!r} is {_TYPE_NAMES[kind]}; upload a chest X-ray as PNG, JPEG or DICOM.")
        issues: list[Issue] = []
        if kind == "dicom":
            issues += self._dicom_header_checks(path)
        else:
            issues += self._bitmap_checks(path)
        try:
            radiograph = load_radiograph(str(path), source=path.name)
        except (ValueError, OSError) as error:
            raise InputError(f"{path.name!r} cannot be read as a radiograph: {error}") from None
        pixels = radiograph.pixels
        height, width = pixels.shape
        if min(height, width) < self.limits.min_image_side:
            raise InputError(
                f"{path.name!r} is only {width} x {height} pixels; a chest radiograph needs at least "
                f"{self.limits.min_image_side} pixels on each side."
            )
        if float(pixels.max()) <= float(pixels.min()):
            raise InputError(f"{path.name!r} is blank: every pixel has the same value.")
        ratio = height / width
        if not 0.6 <= ratio <= 1.6:
            issues.append(Issue("aspect_ratio", f"The image is {width} x {height} pixels (height/width {ratio:.2f}); "
                                "frontal chest radiographs are roughly square (0.6 to 1.6)."))  # fmt: skip
        if radiograph.view in ("lateral", "oblique"):
            position = f" (ViewPosition {radiograph.view_position})" if radiograph.view_position else ""
            issues.append(Issue("view", f"The DICOM tags say this is a {radiograph.view} view{position}; the model "
                                "reads frontal (PA/AP) chest radiographs only."))  # fmt: skip
        return radiograph, issues

    def _check_header_size(self, path: Path, width: int, height: int) -> None:
        """Refuse from the header alone, before any pixel is decoded: too many pixels, or sides no real radiograph
        has (beyond 1:``MAX_ASPECT``; a 64 x 200000 PNG of 17 kB would otherwise decode to gigabytes)."""
        if width * height > self.limits.max_image_pixels:
            raise InputError(
                f"{path.name!r} is {width} x {height} = {width * height / 1e6:.0f} megapixels; the limit is "
                f"{self.limits.max_image_pixels / 1e6:g} megapixels."
            )
        ratio = max(width, height) / max(min(width, height), 1)
        if ratio > MAX_ASPECT:
            raise InputError(f"{path.name!r} is {width} x {height} pixels (sides 1:{ratio:.0f}); no chest radiograph "
                             f"is beyond 1:{MAX_ASPECT:g}.")  # fmt: skip

    def _dicom_header_checks(self, path: Path) -> list[Issue]:
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # pydicom raises InvalidDicomError, EOFError, OSError, struct.error, ...
            raise InputError(f"{path.name!r} is not a readable DICOM file ({type(error).__name__}).") from None
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        self._check_header_size(path, columns, rows)
        issues = []
        modality = str(ds.get("Modality", "") or "").upper()
        if modality in OTHER_MODALITIES:
            issues.append(Issue("modality", f"The DICOM Modality is {modality}, not a radiograph (CR/DX): the model "
                                "reads chest X-rays only."))  # fmt: skip
        body_part = str(ds.get("BodyPartExamined", "") or "").upper()
        if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
            issues.append(Issue("body_part", f"The DICOM BodyPartExamined is {body_part}, not the chest."))
        return issues

    def _bitmap_checks(self, path: Path) -> list[Issue]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                self._check_header_size(path, width, height)
                if image.mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                    return []
                image.draft("RGB", (512, 512))  # JPEG: decode at a reduced size, enough for a colour check
                small = image.convert("RGB")
                small.thumbnail((256, 256))
                rgb = np.asarray(small, dtype=np.float32) / 255.0
        except InputError:
            raise
        except Image.DecompressionBombError:  # PIL refuses at open beyond twice its own limit, above ours
            raise InputError(f"{path.name!r} has more pixels than PIL will decode safely; the limit is "
                             f"{self.limits.max_image_pixels / 1e6:g} megapixels.") from None  # fmt: skip
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise InputError(f"{path.name!r} is corrupt or not a readable image ({type(error).__name__}).") from None
        chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
        coloured = float((chroma > 0.1).mean())
        if coloured > 0.05:
            return [Issue("colour", f"{coloured:.0%} of the image is coloured: this looks like a photograph or a "
                          "diagram, not a greyscale radiograph.")]  # fmt: skip
        return []

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
        """Checks and loads an uploaded CT (NIfTI or a zip of one DICOM series) -> ``(CTVolume, issues)``."""
        from x2ctclip.processors import load_ct

        path = _check_upload(path, self.limits.max_ct_bytes, "CT")
        kind = sniff_file_type(path)
        if kind in ("png", "jpeg", "dicom"):
            raise InputError(
                f"{path.name!r} is {_TYPE_NAMES[kind]}, a 2-D image; upload radiographs in the X-ray tab, and CTs as "
                "NIfTI (.nii / .nii.gz) or a zip of the DICOM series."
            )
        if kind not in ("zip", "gzip", "nifti"):
            raise InputError(f"{path.name!r} is {_TYPE_NAMES[kind]}; upload a CT as NIfTI (.nii / .nii.gz) or a zip "
                             "of its DICOM series.")  # fmt: skip
        workdir = Path(tempfile.mkdtemp(prefix="x2ctclip-ct-"))
        issues: list[Issue] = []
        try:
            if kind == "zip":
                target, issues = self._extract_zip(path, workdir)
            else:
                # load_ct tells NIfTI files by their suffix; uploads may have lost it, so link under the right name.
                target = workdir / ("volume.nii.gz" if kind == "gzip" else "volume.nii")
                os.symlink(path.resolve(), target)
            if target.name.endswith(".gz"):
                self._check_gunzipped_size(target, path.name)
            try:
                volume = load_ct(str(target), max_voxels=self.limits.max_ct_voxels, source=path.name)
            except FileNotFoundError as error:
                raise InputError(f"{path.name!r}: {error}") from None
            except (ValueError, OSError, EOFError) as error:
                message = str(error).replace(str(target), path.name).replace(str(workdir), path.name)
                raise InputError(f"{path.name!r} cannot be read as a CT volume: {message}") from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        issues += chest_ct_issues(volume)
        return volume, issues

    def _check_gunzipped_size(self, path: Path, name: str) -> None:
        """Stream-decompress a gzip file counting bytes, refusing it beyond what ``max_ct_voxels`` float64 voxels
        need: the NIfTI reader decompresses the whole stream into memory, so a small "gzip bomb" must stop here."""
        import gzip

        try:
            from isal import igzip as opener
        except ImportError:  # isal is a dependency of x2ctclip, but the standard library works too
            opener = gzip
        budget = self.limits.max_ct_voxels * 8 + (1 << 20)
        total = 0
        try:
            with opener.open(path, "rb") as stream:
                while chunk := stream.read(1 << 24):
                    total += len(chunk)
                    if total > budget:
                        raise InputError(f"{name!r} decompresses to more than {budget / 1e6:,.0f} MB, beyond the CT "
                                         f"limit of {self.limits.max_ct_voxels / 1e6:g} million voxels.")  # fmt: skip
        except InputError:
            raise
        except (OSError, EOFError, ValueError) as error:  # BadGzipFile is an OSError; zlib errors are too
            raise InputError(f"{name!r} is a corrupt or truncated gzip file ({type(error).__name__}).") from None

    def _extract_zip(self, path: Path, workdir: Path) -> tuple[Path, list[Issue]]:
        """Extract a zip of one DICOM series (or one NIfTI) into ``workdir`` under flat generated names (no member
        name is ever used as a path), counting the bytes actually written against the limit."""
        limits = self.limits
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise InputError(f"{path.name!r} is a corrupt zip archive ({error}).") from None
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
            if not members:
                raise InputError(f"{path.name!r} is an empty zip archive.")
            if len(members) > limits.max_zip_members:
                raise InputError(f"{path.name!r} holds {len(members)} files; the limit is {limits.max_zip_members}.")
            niftis = [m for m in members if m.filename.lower().endswith((".nii", ".nii.gz"))]
            if niftis:
                if len(niftis) > 1:
                    raise InputError(f"{path.name!r} holds {len(niftis)} NIfTI files; upload one CT at a time.")
                members = niftis
            # Refuse from the central directory before writing a byte: the declared total beyond the limit, or a
            # member compressed beyond any DICOM / NIfTI (a zip bomb). Bytes are still counted while extracting,
            # since the declared sizes may lie.
            declared = sum(m.file_size for m in members)
            if declared > limits.max_zip_bytes:
                raise InputError(f"{path.name!r} expands to more than {limits.max_zip_bytes / 1e6:g} MB (its "
                                 f"directory declares {declared / 1e6:,.0f} MB); nothing was extracted.")  # fmt: skip
            for m in members:
                if m.file_size > (1 << 20) and m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1):
                    ratio = m.file_size / max(m.compress_size, 1)
                    raise InputError(f"{path.name!r}: {m.filename!r} is compressed {ratio:,.0f}x (limit "
                                     f"{MAX_ZIP_RATIO}x): a zip bomb, not a CT; nothing was extracted.")  # fmt: skip
            series = workdir / "series"
            series.mkdir()
            total = 0
            for index, member in enumerate(members):
                name = "volume.nii.gz" if niftis and member.filename.lower().endswith(".gz") else (
                    "volume.nii" if niftis else f"{index:06d}.dcm")  # fmt: skip
                target = (workdir if niftis else series) / name
                try:
                    with archive.open(member) as source, open(target, "wb") as sink:
                        while chunk := source.read(1 << 20):
                            total += len(chunk)
                            if total > limits.max_zip_bytes:
                                raise InputError(f"{path.name!r} expands to more than {limits.max_zip_bytes / 1e6:g} "
                                                 "MB; the limit is reached.")  # fmt: skip
                            sink.write(chunk)
                except InputError:
                    raise
                except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as error:
                    raise InputError(f"{path.name!r}: cannot extract {member.filename!r} ({error}).") from None
        if niftis:
            return target, []
        return series, _series_tag_issues(series)

    def analyse_ct(self, path: Any, show_anyway: bool = False, top_k: int = 5) -> CTResult:
        """Checks a CT, simulates its radiograph in both modes, and classifies them (and the CT, where the model has
        the CT tower). Predictions are withheld when a check fails unless ``show_anyway``."""
        from x2ctclip.processors.simulation import simulate_cxr

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


# --------------------------------------------------------------------------------------------------- CT checks
def chest_ct_issues(volume: Any) -> list[Issue]:
    """Simple checks that a CT shows a chest: at least 120 mm of head-foot coverage and lung-density tissue
    (-950 to -500 HU) making up at least 5 % of the non-air voxels (a chest CT has 15-50 %; head CTs almost none)."""
    issues = []
    depth = volume.shape[0] * volume.spacing_mm[0]
    if depth < 120:
        issues.append(Issue("ct_extent", f"The CT covers {depth:.0f} mm head to foot; a chest CT covers about "
                            "250-400 mm."))  # fmt: skip
    step = max(1, round(max(volume.shape) / 128))  # a subsampled view is enough for a fraction
    hu = volume.array[::step, ::step, ::step].astype(np.float32) * volume.slope + volume.intercept
    tissue = hu > -950
    lung = tissue & (hu < -500)
    fraction = float(lung.sum()) / max(int(tissue.sum()), 1)
    if fraction < 0.05:
        issues.append(Issue("not_chest", f"Only {fraction:.1%} of the scanned tissue has lung density (-950 to -500 "
                            "HU); this does not look like a chest CT (a head or abdominal CT?)."))  # fmt: skip
    return issues


def _series_tag_issues(folder: Path) -> list[Issue]:
    import pydicom

    for path in sorted(folder.iterdir()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # non-DICOM members are skipped here and by the series reader
            continue
        body_part = str(ds.get("BodyPartExamined", "") or "").upper()
        modality = str(ds.get("Modality", "") or "").upper()
        issues = []
        if modality and modality != "CT":
            issues.append(Issue("modality", f"The DICOM Modality is {modality}, not CT."))
        if body_part and not any(part in body_part for part in CHEST_BODY_PARTS):
            issues.append(Issue("body_part", f"The DICOM BodyPartExamined is {body_part}, not the chest."))
        return issues
    return []


# ---------------------------------------------------------------------------------------------- maps and views
def smooth_map(attribution: torch.Tensor, sigma_fraction: float = 1 / 56) -> torch.Tensor:
    """Gaussian smoothing of an ``(h, w)`` attribution map (sigma = ``sigma_fraction`` of the side, e.g. 4 px at
    224): gradient x input is speckled at the pixel level; the smoothed map shows regions."""
    h, w = attribution.shape
    sigma = max(sigma_fraction * max(h, w), 0.5)
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = attribution.float()[None, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[0, 0]


def upsample_map(attribution: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(h, w)`` map to ``shape`` (the displayed image's size), float32."""
    out = F.interpolate(attribution[None, None].float(), size=tuple(shape), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out[0, 0].numpy(), dtype=np.float32)


def overlay_saliency(view: np.ndarray, attribution: np.ndarray, opacity: float = 0.65) -> np.ndarray:
    """``(H, W, 3)`` uint8: the grey ``view`` with the signed map on top (red: towards "present", blue: towards
    "absent"), its opacity proportional to the magnitude relative to the 99th percentile of ``|map|``."""
    if view.shape != attribution.shape:
        raise ValueError(f"view {view.shape} and map {attribution.shape} differ in size.")
    grey = np.repeat(np.clip(view, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    scale = float(np.quantile(np.abs(attribution), 0.99)) if attribution.size else 0.0
    if not math.isfinite(scale) or scale <= 0:
        return (grey * 255).round().astype(np.uint8)
    m = np.clip(attribution / scale, -1.0, 1.0)
    red, blue = np.array([0.95, 0.1, 0.05], np.float32), np.array([0.1, 0.35, 1.0], np.float32)
    colour = np.where(m[..., None] >= 0, red, blue)
    alpha = (opacity * np.abs(m))[..., None]
    return ((grey * (1 - alpha) + colour * alpha) * 255).round().clip(0, 255).astype(np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float image in [0, 1] -> uint8 for display."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def simulate_phantom_cxrs(n: int, shape: tuple[int, int, int] = (64, 128, 128), seed: int = 4321) -> list[np.ndarray]:
    """``n`` frontal CXRs (mean projection, [0, 1]) simulated from synthetic chest CT phantoms
    (:func:`x2ctclip.train.synthetic.study.make_study`, CT-RATE-like findings drawn at random)."""
    from tqdm.auto import tqdm

    from x2ctclip.processors.simulation import simulate_cxr
    from x2ctclip.train.synthetic.study import make_study

    images = []
    for patient in tqdm(range(n), desc="reference phantoms", unit="CT", disable=n < 4):
        study = make_study(seed=seed, shape=shape, split="valid", patient=patient + 1)
        images.append(simulate_cxr(study.volumes[0], spacing=study.spacings[0], mode="mean"))
    return images


def render_chart(predictions: Sequence[Predictions], findings: Sequence[str], unreliable: bool = False,
                 title: str | None = None):  # fmt: skip
    """A horizontal bar chart (matplotlib ``Figure``, no pyplot state) of one or more prediction sources.

    Bars at or above their finding's operating threshold are drawn dark; thresholds are black ticks (0.5, dashed,
    where the calibration provides none). ``unreliable`` greys and hatches every bar and says so in the title.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(findings)
    k = len(predictions)
    fig = Figure(figsize=(7.6, 0.34 * n * max(1, 0.6 * k) + 1.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / k
    palette = [("#c0392b", "#e6a39b"), ("#2471a3", "#9cc3e0"), ("#7d3c98", "#cdb0db")]
    y = np.arange(n)
    legend = []
    for j, pred in enumerate(predictions):
        offset = (j - (k - 1) / 2) * height
        thresholds = pred.thresholds if pred.thresholds is not None else np.full(n, 0.5)
        positive = pred.probabilities >= np.nan_to_num(thresholds, nan=np.inf)
        dark, light = palette[j % len(palette)]
        colours = ["#9e9e9e" if unreliable else (dark if p else light) for p in positive]
        ax.barh(y + offset, pred.probabilities, height=height * 0.92, color=colours,
                hatch="//" if unreliable else None, edgecolor="white", linewidth=0.4)  # fmt: skip
        state = "calibrated" if pred.calibrated else "uncalibrated"
        legend.append(Patch(facecolor="#9e9e9e" if unreliable else dark, hatch="//" if unreliable else None,
                            label=f"{pred.source} ({state})"))
        for i, t in enumerate(thresholds):
            if np.isfinite(t):
                ax.plot([t, t], [i + offset - height / 2, i + offset + height / 2], color="black", lw=1.6,
                        ls="-" if pred.thresholds is not None else (0, (2, 1.5)))  # fmt: skip
        for i, p in enumerate(pred.probabilities):
            ax.text(min(p + 0.01, 0.9), i + offset, f"{p:.2f}", va="center", fontsize=7, color="#333333")
    ax.set_yticks(y, list(findings), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability; black tick: operating threshold (dashed: 0.5, no calibrated threshold);\n"
                  "dark bar: at or above it", fontsize=8)
    calibrated = all(p.calibrated for p in predictions)
    default = "Calibrated probabilities" if calibrated else (
        "Zero-shot probabilities (uncalibrated)" if not any(p.calibrated for p in predictions)
        else "Probabilities (calibration per source in the legend)")  # fmt: skip
    heading = title or default
    if unreliable:
        heading = "NOT RELIABLE (input checks failed): " + heading
    ax.set_title(heading, fontsize=10, color="#b03a2e" if unreliable else "black")
    ax.grid(axis="x", alpha=0.3)
    # The legend (one line per source) goes under the axes, in space reserved for it by tight_layout's rect.
    fig.legend(handles=legend, loc="lower center", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, (0.2 + 0.16 * k) / fig.get_figheight(), 1, 1))
    return fig
