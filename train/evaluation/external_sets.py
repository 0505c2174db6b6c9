"""External validation collections: real chest X-rays (PNG, JPEG, DICOM) with labels for some of the 18 findings.

A collection is a CSV file, or a folder holding one (``labels.csv``, or its only ``*.csv``), with one row per image:

- an **image column** (``image``, ``image_path``, ``path``, ``file``, ``filename``, ``dicom_path``, ... or the name
  passed as ``image_column``): a path to a PNG / JPEG / TIFF / DICOM file, absolute or relative to the CSV's folder;
- optional **case id** (``VolumeName``, ``id``, ``image_id``, ``study_id``, ``dicom_id``, ...; default: the file stem);
- optional **report text** (``report``, ``report_text``, ``text``, ...) for CXR <-> report retrieval;
- **label columns**, matched to the findings by a *mapping* (below). Values: ``1`` / ``0`` (also ``1.0``, ``true`` /
  ``false``, ``yes`` / ``no``, ``positive`` / ``negative``, ``present`` / ``absent``); blank, ``nan``, ``-1`` and
  ``uncertain`` mean **not annotated** (NaN: the case is left out of that label's metrics, as CheXpert's "U-ignore").

Column names are compared case-insensitively after turning every run of non-alphanumeric characters into one space,
so ``Pleural_Effusion``, ``pleural effusion`` and ``PLEURAL-EFFUSION`` are the same column.

Mappings (``mapping=``):

- ``"auto"`` (default): the 18 CT-RATE findings, each matched by its name or an alias in :data:`FINDING_ALIASES`
  (e.g. ``Effusion`` -> Pleural effusion, ``Support devices`` -> Medical material). Findings without a column are
  NaN and excluded from every metric.
- ``"mimic-ct"``: MIMIC-CT's 11 labels (:data:`MIMIC_CT_FINDINGS`), same matching.
- ``"radchest-ct"``: the merged 15-label set used to test on RAD-ChestCT (:data:`RADCHEST_CT_MAPPING`), e.g. the
  label ``calcification`` = arterial wall calcification OR coronary artery wall calcification.
- a dict ``{column: finding or [findings]}`` (or a path to a JSON file holding one): your own columns.

A label made of several findings is positive when any of them is (labels), and the model's score for it is the
**maximum** of its findings' probabilities (:meth:`ExternalDataset.scores_from_findings`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from x2ctclip.findings import CT_RATE_FINDINGS

__all__ = [
    "FINDING_ALIASES",
    "IMAGE_SUFFIXES",
    "MAPPINGS",
    "MIMIC_CT_FINDINGS",
    "RADCHEST_CT_MAPPING",
    "ExternalDataset",
    "LabelTarget",
    "load_external",
    "normalize_column",
    "parse_label",
]

#: Other names of each finding accepted as column headers (besides the finding name itself). Only synonyms: a
#: broader label (e.g. NIH's "Hernia", any hernia) is not an alias of a narrower finding.
FINDING_ALIASES: dict[str, tuple[str, ...]] = {
    "Medical material": ("medical device", "medical devices", "support devices", "support device"),
    "Arterial wall calcification": ("arterial calcification", "vascular calcification", "arterial wall calcifications"),
    "Cardiomegaly": ("enlarged heart", "cardiac enlargement"),
    "Pericardial effusion": (),
    "Coronary artery wall calcification": ("coronary artery calcification", "coronary calcification"),
    "Hiatal hernia": ("hiatus hernia",),
    "Lymphadenopathy": ("adenopathy", "lymph node enlargement", "enlarged lymph nodes"),
    "Emphysema": (),
    "Atelectasis": (),
    "Lung nodule": ("nodule", "pulmonary nodule", "lung nodules", "nodules"),
    "Lung opacity": ("opacity", "airspace opacity"),
    "Pulmonary fibrotic sequela": ("fibrosis", "pulmonary fibrosis", "fibrotic sequela"),
    "Pleural effusion": ("effusion",),
    "Mosaic attenuation pattern": ("mosaic attenuation",),
    "Peribronchial thickening": ("bronchial wall thickening", "peribronchial cuffing"),
    "Consolidation": (),
    "Bronchiectasis": (),
    "Interlobular septal thickening": ("septal thickening",),
}

#: MIMIC-CT (real MIMIC-CXR frontal images paired with CT reports of the same admission): its 11 labels.
MIMIC_CT_FINDINGS: tuple[str, ...] = (
    "Arterial wall calcification",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

#: RAD-ChestCT labels as merged for the X2CT-CLIP external test: label -> the CT-RATE findings it covers.
RADCHEST_CT_MAPPING: dict[str, tuple[str, ...]] = {
    "calcification": ("Arterial wall calcification", "Coronary artery wall calcification"),
    "cardiomegaly": ("Cardiomegaly",),
    "pericardial_effusion": ("Pericardial effusion",),
    "hernia": ("Hiatal hernia",),
    "lymphadenopathy": ("Lymphadenopathy",),
    "emphysema": ("Emphysema",),
    "atelectasis": ("Atelectasis",),
    "nodule": ("Lung nodule",),
    "opacity": ("Lung opacity",),
    "fibrosis": ("Pulmonary fibrotic sequela",),
    "pleural_effusion": ("Pleural effusion",),
    "bronchial_wall_thickening": ("Peribronchial thickening",),
    "consolidation": ("Consolidation",),
    "bronchiectasis": ("Bronchiectasis",),
    "septal_thickening": ("Interlobular septal thickening",),
}

MAPPINGS = ("auto", "mimic-ct", "radchest-ct")

#: File suffixes read as images (DICOM files may also have no suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", "")

_IMAGE_COLUMNS = ("image", "image path", "path", "file", "filename", "file name", "image file", "file path",
                  "dicom", "dicom path", "png path", "jpg path", "img", "img path")  # fmt: skip
_NAME_COLUMNS = ("volumename", "volume name", "id", "image id", "study id", "dicom id", "case id", "case", "name")
_REPORT_COLUMNS = ("report", "report text", "reports", "text", "radiology report", "findings impressions")
_POSITIVE = {"1", "1.0", "true", "yes", "y", "positive", "pos", "present"}
_NEGATIVE = {"0", "0.0", "-0", "false", "no", "n", "negative", "neg", "absent"}
_MISSING = {"", "nan", "na", "n/a", "none", "null", "-1", "-1.0", "uncertain", "u"}


def normalize_column(name: str) -> str:
    """Case- and punctuation-insensitive form of a column header: ``"Pleural_Effusion"`` -> ``"pleural effusion"``."""
    return re.sub(r"[^a-z0-9]+", " ", str(name).lower()).strip()


def parse_label(value: Any) -> float:
    """One label cell -> 1.0, 0.0 or NaN (not annotated); ValueError for anything else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    text = str(value).strip().lower()
    if text in _POSITIVE:
        return 1.0
    if text in _NEGATIVE:
        return 0.0
    if text in _MISSING:
        return math.nan
    raise ValueError(f"cannot read {value!r} as a label")


@dataclass(frozen=True)
class LabelTarget:
    """One label of an external collection and the model findings it corresponds to.

    Attributes:
        name: the label's name (the finding name for the 18-finding mappings, the collection's own otherwise).
        findings: the CT-RATE findings it covers; the model's score is the maximum of their probabilities.
        column: the CSV column it was read from (None: no column, all NaN).
    """

    name: str
    findings: tuple[str, ...]
    column: str | None = None


@dataclass
class ExternalDataset:
    """An external validation collection read by :func:`load_external`.

    Attributes:
        source: the CSV file.
        images: absolute image paths, one per case.
        names: case ids.
        labels: ``(n_cases, n_targets)`` float: 1, 0 or NaN (not annotated).
        targets: the labels (:class:`LabelTarget`), in the column order of ``labels``.
        reports: report text per case, or None.
        mapping: the mapping's name (``"auto"``, ``"mimic-ct"``, ``"radchest-ct"`` or ``"custom"``).
        unmatched: targets of the mapping without a column (all NaN).
    """

    source: Path
    images: list[str]
    names: list[str]
    labels: np.ndarray
    targets: list[LabelTarget]
    reports: list[str] | None = None
    mapping: str = "auto"
    unmatched: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def annotated(self) -> list[str]:
        """Targets with at least one annotated case."""
        return [t.name for j, t in enumerate(self.targets) if (~np.isnan(self.labels[:, j])).any()]

    def scores_from_findings(self, scores: Any, findings: Sequence[str]) -> np.ndarray:
        """Model scores ``(n_cases, len(findings))`` (probabilities) -> ``(n_cases, n_targets)``: each target gets the
        maximum over its findings. ValueError when the model lacks a finding a target needs."""
        return target_scores(scores, findings, self.targets)

    def labels_for_findings(self, findings: Sequence[str]) -> np.ndarray:
        """Labels as ``(n_cases, len(findings))`` in the model's finding order: NaN for findings without a
        single-finding target (a merged label cannot be attributed to one of its findings)."""
        out = np.full((len(self), len(findings)), np.nan)
        index = {f: i for i, f in enumerate(findings)}
        for j, target in enumerate(self.targets):
            if len(target.findings) == 1 and target.findings[0] in index:
                out[:, index[target.findings[0]]] = self.labels[:, j]
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: source, mapping, columns, annotated counts per target."""
        return {
            "source": str(self.source),
            "mapping": self.mapping,
            "n_cases": len(self),
            "has_reports": self.reports is not None,
            "targets": [
                {
                    "name": t.name,
                    "findings": list(t.findings),
                    "column": t.column,
                    "n_positive": int(np.nansum(self.labels[:, j] == 1)),
                    "n_negative": int(np.nansum(self.labels[:, j] == 0)),
                }
                for j, t in enumerate(self.targets)
            ],
            "unmatched": list(self.unmatched),
        }


def target_scores(scores: Any, findings: Sequence[str], targets: Sequence[LabelTarget]) -> np.ndarray:
    """``(n_cases, len(findings))`` scores -> ``(n_cases, len(targets))``, max over each target's findings."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(findings):
        raise ValueError(f"scores must have shape (n_cases, {len(findings)}), got {s.shape}.")
    index = {f: i for i, f in enumerate(findings)}
    out = np.empty((s.shape[0], len(targets)))
    for j, target in enumerate(targets):
        missing = [f for f in target.findings if f not in index]
        if missing:
            raise ValueError(f"the model has no finding {missing[0]!r}, which label {target.name!r} needs; "
                             f"its findings are {list(findings)}.")  # fmt: skip
        out[:, j] = s[:, [index[f] for f in target.findings]].max(axis=1)
    return out


# ---------------------------------------------------------------------------------------------------- mappings
def _mapping_targets(mapping: str | Mapping[str, Any] | os.PathLike) -> tuple[str, list[tuple[str, tuple[str, ...], set[str]]]]:
    """(mapping name, [(target name, findings, accepted normalised column names)])."""
    if isinstance(mapping, (str, os.PathLike)) and str(mapping) not in MAPPINGS:
        path = Path(mapping)
        if path.suffix.lower() != ".json":
            raise ValueError(f"mapping must be one of {MAPPINGS}, a dict or a .json file, got {str(mapping)!r}.")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: mapping file not found.")
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable JSON mapping ({err}).") from None
        if not isinstance(mapping, dict):
            raise ValueError(f"{path}: the mapping must be a JSON object {{column: finding or [findings]}}.")

    def aliases(finding: str) -> set[str]:
        return {normalize_column(finding)} | {normalize_column(a) for a in FINDING_ALIASES.get(finding, ())}

    if mapping == "auto":
        return "auto", [(f, (f,), aliases(f)) for f in CT_RATE_FINDINGS]
    if mapping == "mimic-ct":
        return "mimic-ct", [(f, (f,), aliases(f)) for f in MIMIC_CT_FINDINGS]
    if mapping == "radchest-ct":
        out = []
        for name, findings in RADCHEST_CT_MAPPING.items():
            accepted = {normalize_column(name)} | (aliases(findings[0]) if len(findings) == 1 else set())
            out.append((name, findings, accepted))
        return "radchest-ct", out
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"mapping must be one of {MAPPINGS}, a non-empty dict or a .json file, got {mapping!r}.")
    out = []
    for column, findings in mapping.items():
        findings = (findings,) if isinstance(findings, str) else tuple(findings)
        unknown = [f for f in findings if f not in CT_RATE_FINDINGS]
        if not findings or unknown:
            raise ValueError(f"mapping: column {column!r} maps to {list(findings)}; each must be one of the 18 "
                             f"CT-RATE findings ({', '.join(CT_RATE_FINDINGS)}).")  # fmt: skip
        out.append((str(column), findings, {normalize_column(column)}))
    return "custom", out


# ---------------------------------------------------------------------------------------------------- reading
def _find_csv(path: Path) -> Path:
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv"):
            raise ValueError(f"{path}: expected a CSV file (or a folder holding one), got a {path.suffix or 'suffix-less'} file.")
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path}: external collection not found (expected a CSV file or a folder with one).")
    if (path / "labels.csv").is_file():
        return path / "labels.csv"
    csvs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if len(csvs) != 1:
        found = f"found {', '.join(p.name for p in csvs)}" if csvs else "found none"
        raise ValueError(f"{path}: the folder must hold labels.csv or exactly one .csv file listing the images ({found}).")
    return csvs[0]


def _pick_column(columns: list[str], explicit: str | None, candidates: Sequence[str], what: str, csv: Path,
                 required: bool) -> str | None:  # fmt: skip
    by_norm: dict[str, list[str]] = {}
    for c in columns:
        by_norm.setdefault(normalize_column(c), []).append(c)
    if explicit is not None:
        hits = by_norm.get(normalize_column(explicit), [])
        if not hits:
            raise ValueError(f"{csv}: no {what} column {explicit!r}; the columns are {columns}.")
        return hits[0]
    for candidate in candidates:
        if candidate in by_norm:
            return by_norm[candidate][0]
    if required:
        raise ValueError(f"{csv}: no {what} column; name one {', '.join(repr(c) for c in candidates[:6])} (any case) or "
                         f"pass it explicitly. The columns are {columns}.")  # fmt: skip
    return None


def load_external(
    path: str | os.PathLike,
    mapping: str | Mapping[str, Any] | os.PathLike = "auto",
    *,
    image_column: str | None = None,
    report_column: str | None = None,
    name_column: str | None = None,
    require_labels: bool = True,
    check_files: bool = True,
) -> ExternalDataset:
    """Read an external validation collection (see the module docstring for the format and the mappings).

    Args:
        path: a CSV (or TSV) file, or a folder with ``labels.csv`` or exactly one ``.csv``.
        mapping: ``"auto"``, ``"mimic-ct"``, ``"radchest-ct"``, a dict ``{column: finding or [findings]}`` or a
            ``.json`` file with one.
        image_column / report_column / name_column: column names, when the defaults do not find them.
        require_labels: raise when no label column matches (False: a collection for report retrieval only).
        check_files: check that every image exists and has an image suffix.

    Raises:
        FileNotFoundError: the collection, the mapping file or an image is missing.
        ValueError: unreadable CSV, missing image column, no label column, unreadable label values, duplicated label
            columns, bad image suffixes; each message names the file (and row / column).
    """
    import pandas as pd  # start-up: pandas loads only when a table is read

    csv = _find_csv(Path(path))
    try:
        frame = pd.read_csv(csv, sep="\t" if csv.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{csv}: not a readable CSV file ({err}).") from None
    if len(frame) == 0:
        raise ValueError(f"{csv}: lists no images.")
    columns = [str(c) for c in frame.columns]
    image_col = _pick_column(columns, image_column, _IMAGE_COLUMNS, "image path", csv, required=True)
    name_col = _pick_column(columns, name_column, _NAME_COLUMNS, "case id", csv, required=False)
    report_col = _pick_column(columns, report_column, _REPORT_COLUMNS, "report", csv, required=report_column is not None)
    reserved = {image_col, name_col, report_col}

    mapping_name, wanted = _mapping_targets(mapping)
    by_norm: dict[str, list[str]] = {}
    for c in columns:
        if c not in reserved:
            by_norm.setdefault(normalize_column(c), []).append(c)
    targets, unmatched, label_columns = [], [], []
    used: dict[str, str] = {}
    for name, findings, accepted in wanted:
        hits = sorted({c for norm in accepted for c in by_norm.get(norm, [])})
        if len(hits) > 1:
            raise ValueError(f"{csv}: columns {hits} all match label {name!r}; keep one (or pass a mapping).")
        column = hits[0] if hits else None
        if column is not None and column in used:
            raise ValueError(f"{csv}: column {column!r} matches both {used[column]!r} and {name!r}.")
        if column is not None:
            used[column] = name
        else:
            unmatched.append(name)
        targets.append(LabelTarget(name, tuple(findings), column))
        label_columns.append(column)
    if require_labels and not used:
        names = ", ".join(repr(n) for n, _, _ in wanted[:4])
        raise ValueError(f"{csv}: no column matches a label of the {mapping_name!r} mapping (e.g. {names}); the columns "
                         f"are {columns}. Rename them, or pass a mapping {{column: finding}}.")  # fmt: skip

    labels = np.full((len(frame), len(targets)), np.nan)
    for j, column in enumerate(label_columns):
        if column is None:
            continue
        for i, value in enumerate(frame[column].tolist()):
            try:
                labels[i, j] = parse_label(value)
            except ValueError as err:
                raise ValueError(f"{csv}: row {i + 2}, column {column!r}: {err} (use 1 / 0; blank, -1 or NaN = not "
                                 "annotated).") from None  # fmt: skip

    base = csv.parent
    images = []
    problems = []
    for i, value in enumerate(frame[image_col].tolist()):
        value = str(value).strip()
        if not value:
            problems.append(f"row {i + 2}: empty image path")
            continue
        image = Path(value).expanduser()
        image = image if image.is_absolute() else base / image
        images.append(str(image))
        if check_files:
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(f"row {i + 2}: {value} is not a PNG / JPEG / TIFF / DICOM file name")
            elif not image.is_file():
                problems.append(f"row {i + 2}: {image} does not exist")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        error = FileNotFoundError if all("does not exist" in p for p in problems) else ValueError
        raise error(f"{csv}: {'; '.join(problems[:5])}{more}.")

    names = [str(v) for v in frame[name_col].tolist()] if name_col else [Path(p).stem for p in images]
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})[:3]
        raise ValueError(f"{csv}: duplicated case ids {duplicated} (column {name_col or 'file stem'!r}).")
    reports = [str(v) for v in frame[report_col].tolist()] if report_col else None
    return ExternalDataset(source=csv, images=images, names=names, labels=labels, targets=targets, reports=reports,
                           mapping=mapping_name, unmatched=unmatched)  # fmt: skip
