"""The CT-RATE release layout: volume names, table and folder paths, releases, the no-chest lists."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from x2ctclip.findings import CT_RATE_FINDINGS

#: Split names of CT-RATE (``test`` exists only in synthetic sets).
CT_RATE_SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Number of CT-RATE abnormality labels (canonical order: :data:`x2ctclip.CT_RATE_FINDINGS`).
NUM_FINDINGS: int = len(CT_RATE_FINDINGS)

#: The table file of each kind and split in the CT-RATE release (dataset card of ``ibrahimhamamci/CT-RATE`` and
#: CT-CLIP's scripts; recorded in ``tests/fixtures/ct_rate_release_layout.json``). The release spells the validation
#: split "validation" in the reports and metadata names but "valid" in the labels name and the volume folders.
CT_RATE_TABLES: dict[str, dict[str, str]] = {
    "reports": {"train": "radiology_text_reports/train_reports.csv",
                "valid": "radiology_text_reports/validation_reports.csv"},
    "labels": {"train": "multi_abnormality_labels/train_predicted_labels.csv",
               "valid": "multi_abnormality_labels/valid_predicted_labels.csv"},
    "metadata": {"train": "metadata/train_metadata.csv", "valid": "metadata/validation_metadata.csv"},
}
#: Lists of the volumes that are not chest CTs (one entry a line, matched by the last path component).
CT_RATE_NO_CHEST = {"train": "metadata/no_chest_train.txt", "valid": "metadata/no_chest_valid.txt"}
#: ``release`` choices: ``fixed`` = the corrected release in ``{split}_fixed/`` (HU values, full headers),
#: ``original`` = the first release in ``{split}/`` (blank headers, metadata rescale), ``auto`` = fixed when present.
CT_RATE_RELEASES = ("auto", "fixed", "original")
# Splits outside the release (the synthetic "test") follow the train pattern.
_FALLBACK = {"reports": "radiology_text_reports/{split}_reports.csv",
             "labels": "multi_abnormality_labels/{split}_predicted_labels.csv",
             "metadata": "metadata/{split}_metadata.csv"}


def table_path(kind: str, split: str) -> str:
    """Path below the CT-RATE root of the ``kind`` table (reports, labels, metadata) of ``split``."""
    return CT_RATE_TABLES[kind].get(split) or _FALLBACK[kind].format(split=split)


def volume_folder(split: str, release: str) -> str:
    """Top folder of a split's volumes: ``{split}_fixed`` (corrected release) or ``{split}`` (first release)."""
    if release not in ("fixed", "original"):
        raise ValueError(f"release must be 'fixed' or 'original' here, got {release!r}.")
    return f"{split}_fixed" if release == "fixed" else split


def resolve_release(root, split: str, release: str = "auto", *, storage_options=None, fs=None, base=None) -> str:
    """The release a split is read from: ``release`` itself, or for ``"auto"`` ``"fixed"`` when ``{split}_fixed/``
    exists below the root and ``"original"`` otherwise.

    Raises:
        ValueError: an unknown choice, or the chosen folder is absent (naming it and the one present).
    """
    if release not in CT_RATE_RELEASES:
        raise ValueError(f"release must be one of {', '.join(CT_RATE_RELEASES)}, got {release!r}.")
    if fs is None:
        fs, base = resolve_data_root(root, storage_options)
    present = {r: fs.isdir(posixpath.join(base, volume_folder(split, r))) for r in ("fixed", "original")}
    if release == "auto":
        return "fixed" if present["fixed"] or not present["original"] else "original"
    if not present[release]:
        other = "original" if release == "fixed" else "fixed"
        found = (f"; found {posixpath.join(base, volume_folder(split, other))}/ (--release {other})"
                 if present[other] else "")
        raise FileNotFoundError(
            f"{posixpath.join(base, volume_folder(split, release))}/: no {release}-release volume folder{found}."
        )
    return release


def read_no_chest(fs, base: str, split: str) -> set[str]:
    """Stems listed in the split's ``no_chest`` list (empty when the release has none for the split)."""
    rel = CT_RATE_NO_CHEST.get(split)
    if rel is None or not fs.exists(posixpath.join(base, rel)):
        return set()
    with fs.open(posixpath.join(base, rel), "rb") as handle:
        text = handle.read().decode("utf-8", errors="replace")
    # Public loaders match an entry by its last path component, with or without .nii.gz.
    return {volume_stem(line.strip().replace("\\", "/").rsplit("/", 1)[-1])
            for line in text.splitlines() if line.strip()}
_NAME = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<patient>[A-Za-z0-9]+)_(?P<scan>[A-Za-z0-9]+)_(?P<recon>[A-Za-z0-9]+)$")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


# ------------------------------------------------------------------------------------------------------------ names
def volume_stem(name: str) -> str:
    """``"train_1_a_1.nii.gz"`` -> ``"train_1_a_1"`` (the join key of the CT-RATE tables)."""
    name = str(name).strip()
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class CTRateName:
    """The parts of a CT-RATE volume name ``{split}_{patient}_{scan}_{recon}`` (e.g. ``valid_53_a_1``)."""

    split: str
    patient: str
    scan: str
    recon: str

    @property
    def stem(self) -> str:
        """``{split}_{patient}_{scan}_{recon}``."""
        return f"{self.split}_{self.patient}_{self.scan}_{self.recon}"

    @property
    def patient_id(self) -> str:
        """``{split}_{patient}``."""
        return f"{self.split}_{self.patient}"

    @property
    def scan_id(self) -> str:
        """``{split}_{patient}_{scan}``: one scan (X2CT-CLIP's "experiment"), one or more reconstructions."""
        return f"{self.split}_{self.patient}_{self.scan}"

    @property
    def relpath(self) -> str:
        """Path of the volume below the data root: ``{split}/{patient_id}/{scan_id}/{stem}.nii.gz``."""
        return f"{self.split}/{self.patient_id}/{self.scan_id}/{self.stem}.nii.gz"


def parse_volume_name(name: str) -> CTRateName:
    """Split a CT-RATE volume name (with or without ``.nii.gz``) into split, patient, scan and reconstruction.

    Raises:
        ValueError: when the name is not ``{split}_{patient}_{scan}_{recon}``.
    """
    match = _NAME.match(volume_stem(name))
    if match is None:
        raise ValueError(
            f"{name!r} is not a CT-RATE volume name: expected '{{split}}_{{patient}}_{{scan}}_{{recon}}' such as "
            "'valid_53_a_1' (optionally with '.nii.gz')."
        )
    return CTRateName(**match.groupdict())


def group_key(name: str, level: str) -> str:
    parsed = parse_volume_name(name)
    if level in ("scan", "experiment"):
        return parsed.scan_id
    if level == "patient":
        return parsed.patient_id
    if level in ("recon", "instance"):
        return parsed.stem
    raise ValueError(f"level must be 'scan' (alias 'experiment'), 'patient' or 'recon' (alias 'instance'), got {level!r}.")


# ------------------------------------------------------------------------------------------------------ filesystems
def resolve_data_root(root: str | os.PathLike, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem and base path of a data root.

    ``root`` is a local path, a ``file://`` URL, a Hub dataset repository ``hf://datasets/{org}/{repo}[@{rev}]/...``
    (``huggingface_hub.HfFileSystem``; pass ``storage_options={"token": ...}`` for gated repositories) or any other
    fsspec URL. Nothing is read or listed here.

    Returns:
        ``(fs, base)``: the filesystem and the root path in that filesystem's own notation (no protocol).
    """
    url = os.fspath(root)
    if not url:
        raise ValueError("The data root is empty; give a folder or an hf://datasets/... URL.")
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, base.rstrip("/") or "/"


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


# -------------------------------------------------------------------------------------------------------- streaming
TABLES: dict[tuple, dict[str, dict[str, Any]]] = {}  # per-process cache of joined tables, see _TableRef
