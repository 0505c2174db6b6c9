"""The cases an evaluation scores: preprocessed splits and external sets, with their labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from x2ctclip.findings import CT_RATE_FINDINGS
from x2ctclip.train.data.folders import PREPROCESS_CONFIG, load_preprocessed, read_folder_config
from x2ctclip.train.data.shards import config_fingerprint
from x2ctclip.train.evaluation.external_sets import ExternalDataset, LabelTarget, load_external


# ---------------------------------------------------------------------------------------------------------- cases
class _RowImages:
    """The ``cxr`` column of a preprocessed split, read batch by batch (slicing returns uint8 arrays)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(self.dataset[index]["cxr"])
        return self.dataset[int(index)]["cxr"]


@dataclass
class Cases:
    """Cases to evaluate on.

    Attributes:
        names: case ids (``VolumeName`` for preprocessed data).
        images: sliceable sequence of images (uint8 arrays or paths).
        labels: ``(N, n_targets)`` float labels, NaN = not annotated.
        targets: the label columns and the findings each covers.
        reports: report text per case (None when absent).
        dataset: the Hub ``dataset`` entry (``name``, ``type``, ``split``).
        source: provenance (``path``, ``kind``, ``split``, fingerprint, ...).
        preprocessed: the preprocessed split (for CT volumes), when the cases come from one.
    """

    names: list[str]
    images: Any
    labels: np.ndarray
    targets: list[LabelTarget]
    reports: list[str] | None
    dataset: dict[str, Any]
    source: dict[str, Any]
    preprocessed: Any = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def tag(self) -> str:
        """Short name used in output file names: the split, or ``external-<csv stem>``."""
        return self.source.get("tag") or self.source.get("split") or "data"

    def labels_for_findings(self, findings: Sequence[str]) -> np.ndarray:
        """``(N, len(findings))`` labels in the model's order (NaN where no single-finding target covers one)."""
        out = np.full((len(self), len(findings)), np.nan)
        index = {f: i for i, f in enumerate(findings)}
        for j, target in enumerate(self.targets):
            if len(target.findings) == 1 and target.findings[0] in index:
                out[:, index[target.findings[0]]] = self.labels[:, j]
        return out


def preprocessed_cases(data: str | os.PathLike, split: str, dataset_name: str | None = None,
                       dataset_type: str | None = None) -> Cases:  # fmt: skip
    """Cases of a preprocessed split: simulated CXRs (``cxr``), the 18 labels, reports, volume names."""
    data = Path(data)
    dataset = load_preprocessed(data, split)
    if "cxr" not in dataset.column_names:
        raise ValueError(f"{data / split}: no 'cxr' column (simulated chest X-rays); preprocess with CXR simulation.")
    config = read_folder_config(data, PREPROCESS_CONFIG)
    table = dataset.with_format(None, columns=["VolumeName", "report"])
    labels = np.asarray(dataset.with_format("numpy", columns=["labels"])["labels"], dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(CT_RATE_FINDINGS):
        raise ValueError(f"{data / split}: labels must have {len(CT_RATE_FINDINGS)} columns, got shape {labels.shape}.")
    folder = data.resolve().name
    return Cases(
        names=[str(n) for n in table["VolumeName"]],
        images=_RowImages(dataset.with_format("numpy", columns=["cxr"], dtype=None)),
        labels=labels,
        targets=[LabelTarget(f, (f,), f) for f in CT_RATE_FINDINGS],
        reports=[str(r) for r in table["report"]],
        dataset={"name": dataset_name or f"{folder} {split} (simulated CXRs)", "type": dataset_type or folder,
                 "split": split},  # fmt: skip
        source={"path": str(data.resolve()), "kind": "preprocessed", "split": split, "tag": split,
                "fingerprint": config_fingerprint({k: v for k, v in config.items() if k not in ("splits", "versions", "world_size")}),
                "simulation": config.get("cxr_mode") or config.get("simulation"), "n_cases": len(dataset)},  # fmt: skip
        preprocessed=dataset,
    )


def external_cases(collection: str | os.PathLike | ExternalDataset, mapping: Any = "auto",
                   dataset_name: str | None = None, dataset_type: str | None = None,
                   require_labels: bool = True) -> Cases:  # fmt: skip
    """Cases of an external collection (:func:`x2ctclip.train.evaluation.external_sets.load_external`)."""
    ext = collection if isinstance(collection, ExternalDataset) else load_external(collection, mapping,
                                                                                  require_labels=require_labels)
    stem = ext.source.parent.name if ext.source.name == "labels.csv" else ext.source.stem
    return Cases(
        names=list(ext.names),
        images=list(ext.images),
        labels=ext.labels,
        targets=list(ext.targets),
        reports=ext.reports,
        dataset={"name": dataset_name or f"{stem} (external, real CXRs)", "type": dataset_type or stem, "split": "test"},
        source={**ext.describe(), "path": str(ext.source.resolve()), "kind": "external", "tag": f"external-{stem}"},
    )
