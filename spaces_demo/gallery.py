"""The demo's report gallery: the reports most similar to an upload's latent, and the report CSVs it is built from.

A gallery is stored as one safetensors file (:data:`x2ctclip.assets.GALLERY_FILE`, the latent format of
:mod:`x2ctclip.assets`): ``text_embeds`` ``(N, D)`` with the reports and names as JSON lists in the metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from x2ctclip.assets import load_latents, save_latents
from x2ctclip.processors import clean_report


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
        embeds, meta = load_latents(path, "text_embeds")
        try:
            reports = json.loads(meta["reports"])
            names = json.loads(meta.get("names", "null")) or [f"report {i + 1}" for i in range(len(reports))]
        except (KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: the gallery metadata has no readable 'reports' list ({error}).") from None
        return cls(embeds, [str(r) for r in reports], [str(n) for n in names], meta.get("source", str(path)))


def read_report_csv(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Reports and names from a CSV: a ``report`` column, or CT-RATE's ``Findings_EN`` + ``Impressions_EN`` (cleaned
    as CT-CLIP did); names from ``VolumeName`` / ``name`` / ``id`` when present, else the row number."""
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
