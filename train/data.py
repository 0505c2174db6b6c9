"""The data layer: CT-RATE as Hugging Face ``datasets``, streamed, preprocessed once, or reduced to cached latents.

Three views of one data set, none of which holds it in memory:

- :func:`stream_ct_rate`: a ``datasets.IterableDataset`` over the raw CT-RATE layout (a local folder, a ``file://``
  URL or a Hub dataset repository ``hf://datasets/{org}/{repo}[@{revision}]/{folder}``). Every file is opened through
  fsspec (``huggingface_hub.HfFileSystem`` for ``hf://``), one at a time, when the iteration reaches it: nothing is
  downloaded ahead. The dataset is sharded by file (one shard per reconstruction), so DataLoader workers and
  ``datasets.distributed.split_dataset_by_node`` receive disjoint sets of files.
- :func:`load_preprocessed`: the memory-mapped Arrow folders written once by ``x2ctclip preprocess``
  (:mod:`x2ctclip.train.preprocess`): fixed-size int16 HU volumes and simulated 8-bit CXRs.
- :func:`load_embedding_cache`: the frozen CT and report latents written by ``x2ctclip cache-embeddings``
  (:mod:`x2ctclip.train.embedding_cache`).

CT-RATE layout (the release's real names, :data:`CT_RATE_TABLES`; recorded in
``tests/fixtures/ct_rate_release_layout.json``)::

    {root}/{split}_fixed/{split}_{patient}/{split}_{patient}_{scan}/{stem}.nii.gz   corrected release (HU headers)
    {root}/{split}/...                                                               first release (blank headers)
    {root}/radiology_text_reports/train_reports.csv | validation_reports.csv   VolumeName, Findings_EN, Impressions_EN
    {root}/multi_abnormality_labels/train_predicted_labels.csv | valid_predicted_labels.csv  VolumeName + 18 labels
    {root}/metadata/train_metadata.csv | validation_metadata.csv   VolumeName, RescaleSlope, RescaleIntercept,
                                                                  XYSpacing "[x, y]", ZSpacing, NumberofSlices, ...
    {root}/metadata/no_chest_train.txt | no_chest_valid.txt        volumes that are not chest CTs (left out)

``release="auto"`` reads ``{split}_fixed`` when present (:func:`resolve_release`).

Tables are joined on the volume name without its ``.nii.gz`` suffix (the released CSVs spell it with the suffix).

Header or metadata, decided from each file by the project's one NIfTI decoder
(:func:`x2ctclip.processors.volume_io.decode_nifti`): a header with an orientation (``qform_code`` or ``sform_code``
> 0; the corrected release) gives the affine and ``scl_slope`` / ``scl_inter`` (values already HU: the metadata
rescale is not applied again); a blank header (the first release) is read in CT-RATE's orientation with the metadata
spacing (``XYSpacing`` in-plane, ``ZSpacing`` between slices) and ``RescaleSlope`` / ``RescaleIntercept``. A
``ZSpacing`` that is NaN falls back to the in-plane spacing, as the X2CT-CLIP preprocessing did. Every volume is then
checked to be plausible HU (:func:`x2ctclip.processors.volume_io.check_hu`) with air near -1000 HU (:func:`check_air`).

"Experiment" batching (X2CT-CLIP's ``batch_style="experiment"``): a CT-RATE scan (``{split}_{patient}_{scan}``, an
"experiment") has one or more reconstructions of the same acquisition; each epoch uses one random reconstruction per
scan, so a batch never holds two reconstructions of one scan (they would be false negatives of each other in the
contrastive loss). :func:`one_recon_per_scan` and :class:`UniqueScanBatchSampler` do this for the map-style datasets;
``stream_ct_rate(..., one_recon_per_scan=True, epoch=e)`` for the stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from x2ctclip.findings import CT_RATE_FINDINGS

__all__ = [
    "CT_RATE_SPLITS",
    "EMBEDDING_CACHE_CONFIG",
    "NUM_FINDINGS",
    "PREPROCESS_CONFIG",
    "CTRateName",
    "ShardedSplitWriter",
    "UniqueScanBatchSampler",
    "check_air",
    "ct_rate_table",
    "ct_values_from_ct",
    "embedding_cache_features",
    "load_embedding_cache",
    "load_preprocessed",
    "one_recon_per_scan",
    "parse_volume_name",
    "preprocessed_collator",
    "preprocessed_features",
    "read_ct",
    "read_ct_rate_volume",
    "resolve_data_root",
    "select_one_recon_per_scan",
    "stream_ct_rate",
    "volume_stem",
    "CT_RATE_TABLES",
    "CT_RATE_NO_CHEST",
    "CT_RATE_RELEASES",
    "read_no_chest",
    "resolve_release",
    "table_path",
    "volume_folder",
]

#: Split names of CT-RATE (``test`` exists only in synthetic sets).
CT_RATE_SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Number of CT-RATE abnormality labels (canonical order: :data:`x2ctclip.CT_RATE_FINDINGS`).
NUM_FINDINGS: int = len(CT_RATE_FINDINGS)
#: File name of the parameters of a preprocessed folder (``OUT/preprocess_config.json``).
PREPROCESS_CONFIG = "preprocess_config.json"
#: File name of the parameters of an embedding cache (``CACHE/cache_config.json``).
EMBEDDING_CACHE_CONFIG = "cache_config.json"

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


def _group_key(name: str, level: str) -> str:
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
    import fsspec

    url = os.fspath(root)
    if not url:
        raise ValueError("The data root is empty; give a folder or an hf://datasets/... URL.")
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, base.rstrip("/") or "/"


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


# ----------------------------------------------------------------------------------------------------------- tables
def _read_csv(fs, path: str, what: str, required: bool = True):
    import pandas as pd

    if not fs.exists(path):
        if required:
            folder = posixpath.dirname(path)
            try:
                found = sorted(posixpath.basename(p) for p in fs.ls(folder, detail=False) if p.endswith(".csv"))
            except (FileNotFoundError, OSError):
                found = []
            instead = f"found instead: {', '.join(found)}" if found else f"{folder}/ holds no CSV"
            raise FileNotFoundError(f"{path}: the CT-RATE {what} table is missing ({instead}).")
        return None
    with fs.open(path, "rb") as handle:
        try:
            return pd.read_csv(handle)
        except Exception as error:  # pandas' ParserError, EmptyDataError, UnicodeDecodeError ...
            raise ValueError(f"{path}: cannot read the {what} CSV ({type(error).__name__}: {error}).") from None


def _keyed(frame, path: str):
    if "VolumeName" not in frame.columns:
        raise ValueError(f"{path}: no 'VolumeName' column (columns: {list(frame.columns)[:8]}).")
    keys = frame["VolumeName"].astype(str).map(volume_stem)
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: {len(duplicated)} duplicated VolumeName values, e.g. {duplicated.iloc[0]!r}.")
    return frame.set_index(keys.rename("stem"))


def _parse_xy_spacing(value: Any, path: str, name: str) -> float:
    """``"[0.75, 0.75]"`` (CT-RATE's XYSpacing) -> 0.75 mm (the first value: pixels are square in CT-RATE)."""
    if isinstance(value, (int, float, np.number)):
        return float(value)
    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", str(value))
    if not numbers:
        raise ValueError(f"{path}: XYSpacing of {name} is {value!r}, expected '[x, y]' in mm.")
    return float(numbers[0])


def ct_rate_table(
    root: str | os.PathLike,
    split: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    require_metadata: bool = False,
    release: str = "auto",
    keep_non_chest: bool = False,
    info: dict | None = None,
):
    """Reports, labels and metadata of one split joined by volume name: a ``pandas.DataFrame``, one row per volume.

    Columns: ``VolumeName`` (as spelled in the reports CSV), ``scan_id``, ``path`` (below the root), ``report``
    (:func:`x2ctclip.processors.tokenization.clean_report` of Findings + Impressions), ``labels`` (int8 array of 18,
    canonical order, read by position), ``slope``, ``intercept``, ``xy_spacing``, ``z_spacing`` (mm; NaN where the
    metadata table is absent; a NaN ``ZSpacing`` is replaced by the in-plane spacing, as X2CT-CLIP did). Sorted by
    volume name. Volumes missing from the reports or the labels table are left out with a warning.

    ``release`` (``auto``/``fixed``/``original``, :func:`resolve_release`) chooses the volume folder of ``path``
    (``{split}_fixed/`` or ``{split}/``); the volumes of the split's ``no_chest`` list are left out unless
    ``keep_non_chest``. When ``info`` is a dict it receives ``release`` and ``non_chest_excluded`` (a count).

    Raises:
        FileNotFoundError: a required table is missing.
        ValueError: a table lacks a column, has duplicated or malformed volume names, or non-binary labels.
    """
    from x2ctclip.processors.tokenization import clean_report

    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string such as 'train', got {split!r}.")
    fs, base = resolve_data_root(root, storage_options)
    chosen = resolve_release(root, split, release, fs=fs, base=base)
    folder = volume_folder(split, chosen)
    paths = {key: posixpath.join(base, table_path(key, split)) for key in ("reports", "labels", "metadata")}
    # The first release's volumes need the metadata (blank headers: spacing and rescale come from it).
    require_metadata = require_metadata or chosen == "original"
    reports = _keyed(_read_csv(fs, paths["reports"], "reports"), paths["reports"])
    labels = _keyed(_read_csv(fs, paths["labels"], "labels"), paths["labels"])
    metadata = _read_csv(fs, paths["metadata"], "metadata", required=require_metadata)
    metadata = _keyed(metadata, paths["metadata"]) if metadata is not None else None

    for column in ("Findings_EN", "Impressions_EN"):
        if column not in reports.columns:
            raise ValueError(f"{paths['reports']}: no '{column}' column (columns: {list(reports.columns)[:8]}).")
    label_columns = [c for c in labels.columns if c != "VolumeName"]
    if len(label_columns) < NUM_FINDINGS:
        raise ValueError(
            f"{paths['labels']}: {len(label_columns)} label columns after VolumeName, expected {NUM_FINDINGS} "
            "(the CT-RATE findings in canonical order)."
        )
    label_values = labels[label_columns[:NUM_FINDINGS]].to_numpy()
    bad = ~np.isin(label_values, (0, 1))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"{paths['labels']}: label {label_columns[col]!r} of {labels.index[row]} is {label_values[row, col]!r}, "
            "expected 0 or 1."
        )
    label_of = dict(zip(labels.index, label_values.astype(np.int8)))

    keys = reports.index.intersection(labels.index)
    for name, table in (("reports", reports), ("labels", labels)):
        dropped = table.index.difference(keys)
        if len(dropped):
            other = "labels" if name == "reports" else "reports"
            warnings.warn(
                f"{paths[name]}: {len(dropped)} volumes have no row in the {other} table and are left out "
                f"(e.g. {dropped[0]!r}).",
                stacklevel=2,
            )
    excluded = 0
    if not keep_non_chest:
        no_chest = read_no_chest(fs, base, split)
        excluded = int(keys.isin(list(no_chest)).sum())
        keys = keys[~keys.isin(list(no_chest))]
        if excluded:
            import logging

            logging.getLogger(__name__).warning(
                "%s: %d %s volumes are in %s (not chest CTs) and are left out (--keep-non-chest keeps them).",
                root, excluded, split, CT_RATE_NO_CHEST[split])
    if info is not None:
        info.update(release=chosen, non_chest_excluded=excluded)
    rows = []
    for stem in sorted(keys):
        parsed = parse_volume_name(stem)
        if parsed.split != split:
            raise ValueError(f"{paths['reports']}: volume {stem!r} does not belong to the split {split!r}.")
        report_row = reports.loc[stem]
        slope = intercept = xy = z = math.nan
        if metadata is not None and stem in metadata.index:
            meta = metadata.loc[stem]
            slope = float(meta.get("RescaleSlope", math.nan))
            intercept = float(meta.get("RescaleIntercept", math.nan))
            if "XYSpacing" in meta.index and not (isinstance(meta["XYSpacing"], float) and math.isnan(meta["XYSpacing"])):
                xy = _parse_xy_spacing(meta["XYSpacing"], paths["metadata"], stem)
            z = float(meta.get("ZSpacing", math.nan))
            if math.isnan(z) and not math.isnan(xy):
                z = xy  # X2CT-CLIP's fallback for the CT-RATE volumes whose ZSpacing is missing
        rows.append(
            {
                "VolumeName": str(report_row["VolumeName"]),
                "scan_id": parsed.scan_id,
                "path": f"{folder}/{parsed.relpath.split('/', 1)[1]}",
                "report": clean_report(report_row["Findings_EN"], report_row["Impressions_EN"]),
                "labels": label_of[stem],
                "slope": slope,
                "intercept": intercept,
                "xy_spacing": xy,
                "z_spacing": z,
            }
        )
    import pandas as pd

    columns = ["VolumeName", "scan_id", "path", "report", "labels", "slope", "intercept", "xy_spacing", "z_spacing"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------------- reading a CT
def read_ct_rate_volume(
    path: str,
    *,
    fs=None,
    slope: float = math.nan,
    intercept: float = math.nan,
    xy_spacing: float = math.nan,
    z_spacing: float = math.nan,
    max_voxels: int | None = None,
    validate: bool = True,
):
    """Read one CT-RATE ``.nii``/``.nii.gz`` file through fsspec into a canonical
    :class:`x2ctclip.processors.volume_io.CTVolume` (``(z, y, x)``, integer stored values + slope/intercept).

    The same code reads a local file and a file of a Hub repository: the bytes come from ``fs.open(path)``. The
    header is used when it has an orientation; otherwise the CT-RATE metadata (``slope``/``intercept`` to HU, spacings
    in mm) fills in, as described in the module docstring.

    Args:
        path: file path in ``fs``'s notation (a local path when ``fs`` is ``None``).
        fs: an fsspec filesystem (default: the local one).
        slope, intercept: the metadata RescaleSlope / RescaleIntercept (NaN: unknown).
        xy_spacing, z_spacing: the metadata spacings in mm (NaN: unknown).
        max_voxels: refuse larger volumes (``ValueError``), checked on the header before decoding the data.
        validate: check the values are plausible HU (:func:`x2ctclip.processors.volume_io.check_hu`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: corrupt/truncated file, a header without orientation and no metadata spacing, values not in HU.
    """
    from x2ctclip.processors.volume_io import check_hu, decode_nifti

    if fs is None:
        import fsspec

        fs = fsspec.filesystem("file")
    source = path if _is_local(fs) else fs.unstrip_protocol(path)
    blank_spacing = None if math.isnan(xy_spacing) or math.isnan(z_spacing) else (z_spacing, xy_spacing, xy_spacing)
    blank_rescale = None if math.isnan(slope) or math.isnan(intercept) else (slope, intercept)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: no such CT file (listed in the CT-RATE tables).") from None
    with handle:
        # The project's one NIfTI decoder; the metadata fills in only for a blank (first-release) header.
        volume = decode_nifti(handle, source, blank_header_spacing=blank_spacing, blank_header_rescale=blank_rescale,
                              max_voxels=max_voxels, blank_header="error")
    if validate:
        check_hu(volume)
        check_air(volume)
    return volume


#: HU band of air (lungs and outside the body) in a chest CT; CT-RATE volumes hold much of it. A volume with
#: almost nothing there was rescaled twice (the corrected release's HU with the metadata intercept applied again:
#: air at about -2000 HU) or not at all (air at about 0 or +1000 stored values).
AIR_BAND_HU: tuple[float, float] = (-1150.0, -850.0)
#: Least fraction of the voxels (sampled) that must lie in :data:`AIR_BAND_HU`.
MIN_AIR_FRACTION: float = 0.01


def check_air(volume) -> float:
    """Raise ``ValueError`` (naming the file and the numbers) unless at least :data:`MIN_AIR_FRACTION` of the
    voxels lie in :data:`AIR_BAND_HU`; return that fraction. Samples every 4th voxel along each axis."""
    sample = volume.array[::4, ::4, ::4].astype(np.float32) * np.float32(volume.slope) + np.float32(volume.intercept)
    lo, hi = AIR_BAND_HU
    fraction = float(((sample >= lo) & (sample <= hi)).mean()) if sample.size else 0.0
    if fraction < MIN_AIR_FRACTION:
        dark = sample[sample < -500]
        if dark.size:
            counts, edges = np.histogram(dark, bins=np.arange(float(dark.min()), -499.0, 50.0) if dark.min() < -550
                                         else 1)
            peak = f"the most common value below -500 HU is about {edges[int(np.argmax(counts))]:.0f} HU"
        else:
            peak = f"nothing is below -500 HU (darkest {float(sample.min()):.0f} HU)"
        raise ValueError(
            f"{volume.source}: not plausible HU after rescale (slope={volume.slope:g}, intercept={volume.intercept:g}):"
            f" {100 * fraction:.2f}% of the voxels are air ({lo:g} to {hi:g} HU), {peak}; a chest CT has air near "
            "-1000 HU (metadata rescale applied to an already-HU file, or the wrong release?)."
        )
    return fraction


# -------------------------------------------------------------------------------------------------------- streaming
_TABLES: dict[tuple, dict[str, dict[str, Any]]] = {}  # per-process cache of joined tables, see _TableRef
_MAX_CACHED_TABLES = 4


class _TableRef:
    """A picklable handle on the joined tables of one split (:func:`ct_rate_table`), read once per process.

    ``stream_ct_rate`` gives the generator the list of volume names (its file shards) and this handle rather than
    the table itself: datasets hashes and re-splits ``gen_kwargs`` (at construction, per worker, per epoch), which
    for CT-RATE's 50,000 reports (about 100 MB of text) would cost seconds each time. Forked DataLoader workers
    inherit the parent's copy; spawned ones read the CSVs once.
    """

    def __init__(self, root, split: str, storage_options: Mapping[str, Any] | None, release: str = "auto",
                 keep_non_chest: bool = False):
        self.root, self.split = os.fspath(root), split
        self.storage_options = dict(storage_options or {})
        self.release, self.keep_non_chest = release, bool(keep_non_chest)

    @property
    def key(self) -> tuple:
        return (self.root, self.split, json.dumps(self.storage_options, sort_keys=True, default=str), self.release,
                self.keep_non_chest)

    def store(self, table) -> dict[str, dict[str, Any]]:
        records = {}
        for row in table.to_dict(orient="records"):
            row["labels"] = [int(v) for v in row["labels"]]
            records[volume_stem(row["VolumeName"])] = row
        while len(_TABLES) >= _MAX_CACHED_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[self.key] = records
        return records

    def records(self) -> dict[str, dict[str, Any]]:
        cached = _TABLES.get(self.key)
        if cached is None:
            cached = self.store(ct_rate_table(self.root, self.split, storage_options=self.storage_options,
                                              release=self.release, keep_non_chest=self.keep_non_chest))
        return cached


def _ct_rate_records(names: list[str], table: _TableRef) -> Iterator[dict[str, Any]]:
    """The generator of :func:`stream_ct_rate`: ``names`` is this worker's list of file shards (volume names)."""
    records = table.records()
    for name in names:
        try:
            yield dict(records[name])
        except KeyError:
            raise ValueError(f"{table.root}: volume {name} is no longer in the {table.split} tables.") from None


def _stream_features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "VolumeName": Value("string"),
            "scan_id": Value("string"),
            "path": Value("string"),
            "report": Value("string"),
            "labels": Sequence(Value("int8"), length=NUM_FINDINGS),
            "slope": Value("float64"),
            "intercept": Value("float64"),
            "xy_spacing": Value("float64"),
            "z_spacing": Value("float64"),
        }
    )


def select_one_recon_per_scan(names: Sequence[str], seed: int, epoch: int, level: str = "scan") -> list[int]:
    """Indices of ``names``: one reconstruction per group (scan by default), chosen at random from ``(seed, epoch)``,
    in a random order of the groups. The choice depends only on ``(seed, epoch)`` and the set of names."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(_group_key(name, level), []).append(index)
    rng = np.random.default_rng([int(seed), int(epoch)])
    keys = sorted(groups)
    order = rng.permutation(len(keys))
    picks = rng.integers(0, np.iinfo(np.int64).max, size=len(keys))
    return [groups[keys[k]][int(picks[k] % len(groups[keys[k]]))] for k in order]


class _DecodeCT:
    """``IterableDataset.map`` function of :func:`stream_ct_rate`: reads a file through fsspec and runs the
    processors. Picklable (DataLoader workers receive a copy); the filesystem is rebuilt from the URL per process."""

    def __init__(self, root, storage_options, volume_processor, cxr_mode, cxr_size, image_processor, validate):
        self.root = os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self.volume_processor = volume_processor
        self.cxr_mode = cxr_mode
        self.cxr_size = cxr_size
        self.image_processor = image_processor
        self.validate = validate
        self._fs = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fs"] = None
        return state

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        if self._fs is None:
            self._fs, self._base = resolve_data_root(self.root, self.storage_options)
        volume = read_ct_rate_volume(
            posixpath.join(self._base, example["path"]),
            fs=self._fs,
            slope=example["slope"],
            intercept=example["intercept"],
            xy_spacing=example["xy_spacing"],
            z_spacing=example["z_spacing"],
            validate=self.validate,
        )
        out: dict[str, Any] = {}
        if self.volume_processor is not None:
            out["ct_values"] = self.volume_processor.process_volume(volume)[None].numpy()
        else:
            out["ct"] = volume.hu()
            out["spacing"] = np.asarray(volume.spacing_mm, dtype=np.float32)
        if self.cxr_mode is not None:
            from x2ctclip.train.preprocess import simulate_cxr_uint8

            cxr = simulate_cxr_uint8(volume, mode=self.cxr_mode, size=self.cxr_size)
            if self.image_processor is not None:
                out["pixel_values"] = self.image_processor(cxr, return_tensors="np")["pixel_values"][0]
            else:
                out["cxr"] = cxr
        return out


def stream_ct_rate(
    root: str | os.PathLike,
    split: str,
    *,
    volume_processor=None,
    cxr_mode: str | None = None,
    cxr_size: int = 256,
    image_processor=None,
    one_recon_per_scan: bool = False,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer_size: int | None = None,
    volume_names: Iterable[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    decode: bool = True,
    validate_hu: bool = True,
    release: str = "auto",
    keep_non_chest: bool = False,
):
    """Stream one split of a CT-RATE layout as a ``datasets.IterableDataset``, reading one file at a time.

    Built with ``IterableDataset.from_generator`` whose ``gen_kwargs`` hold one shard per reconstruction file, so
    ``DataLoader(num_workers=n)`` gives each worker its own files and
    ``datasets.distributed.split_dataset_by_node(ds, rank, world_size)`` gives each node its own files. With
    ``strategy="auto"`` datasets splits by shard only when the number of files is a multiple of ``world_size`` and
    otherwise makes every node read every file and keep one in ``world_size``; pass ``strategy="shards"`` to split by
    file in every case (nodes then differ by at most one volume per epoch).

    Only the tables are read here (a few MB for all of CT-RATE). Volumes are decoded by an ``IterableDataset.map``
    step after the optional shuffle, so the shuffle buffer holds file names, not volumes.

    Args:
        root: data root: a folder, ``file://...``, ``hf://datasets/{org}/{repo}[@{revision}]/{folder}`` or another
            fsspec URL.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        volume_processor: an :class:`x2ctclip.processors.X2CTCLIPVolumeProcessor`; each example then has
            ``ct_values`` ``(1, D, H, W)`` float32. Without one, ``ct`` holds the HU volume ``(Z, Y, X)`` float32
            as stored (canonical orientation) and ``spacing`` its voxel size in mm.
        cxr_mode: simulate a frontal CXR from each CT (``"mean"`` or ``"beer_lambert"``): ``cxr`` ``(S, S)`` uint8 with
            ``S = cxr_size``, or ``pixel_values`` ``(3, H, W)`` when ``image_processor`` is given.
        image_processor: an :class:`x2ctclip.processors.X2CTCLIPImageProcessor` applied to the simulated CXR.
        one_recon_per_scan: keep one random reconstruction per scan, chosen from ``(seed, epoch)``; build the stream
            again with the next ``epoch`` for the next epoch.
        seed: seed of the reconstruction choice and of the shuffle.
        epoch: epoch of the reconstruction choice (``ds.set_epoch`` reshuffles; it cannot change the file list).
        shuffle_buffer_size: shuffle file order and use a shuffle buffer of this many examples (``None``: in order).
        volume_names: only these volumes (names with or without ``.nii.gz``).
        storage_options: fsspec options (e.g. ``{"token": ...}`` for a gated Hub repository).
        decode: ``False`` leaves out the decoding step (the examples then hold the tables' fields and ``path``).
        validate_hu: check each volume is plausible HU.
        release: ``"auto"`` (the corrected ``{split}_fixed/`` folder when present), ``"fixed"`` or ``"original"``.
        keep_non_chest: keep the volumes of the release's ``no_chest`` lists (left out by default).

    Returns:
        A ``datasets.IterableDataset`` with ``VolumeName``, ``scan_id``, ``report``, ``labels`` (int8[18]) and the
        decoded fields above.
    """
    from datasets import IterableDataset

    if cxr_mode is not None and cxr_mode not in ("mean", "beer_lambert"):
        raise ValueError(f"cxr_mode must be None, 'mean' or 'beer_lambert', got {cxr_mode!r}.")
    if image_processor is not None and cxr_mode is None:
        raise ValueError("image_processor needs cxr_mode (the CXR is simulated from each CT).")
    if shuffle_buffer_size is not None and int(shuffle_buffer_size) < 1:
        raise ValueError(f"shuffle_buffer_size must be a positive int or None, got {shuffle_buffer_size!r}.")
    info: dict[str, Any] = {}
    table = ct_rate_table(root, split, storage_options=storage_options, release=release,
                          keep_non_chest=keep_non_chest, info=info)
    import logging

    logging.getLogger(__name__).info("%s %s: %s release (release=%r), %d no_chest volumes left out", root, split,
                                     info["release"], release, info["non_chest_excluded"])
    # The resolved release is fixed here, so every worker reads the same folder.
    handle = _TableRef(root, split, storage_options, info["release"], keep_non_chest)
    handle.store(table)  # the whole split: this process (and forked workers) will not read the CSVs again
    if volume_names is not None:
        wanted = {volume_stem(n) for n in volume_names}
        table = table[table["VolumeName"].map(volume_stem).isin(wanted)]
        missing = wanted - set(table["VolumeName"].map(volume_stem))
        if missing:
            raise ValueError(f"{root}: volumes not in the {split} tables: {sorted(missing)[:5]}.")
    if one_recon_per_scan:
        table = table.iloc[sorted(select_one_recon_per_scan(list(table["VolumeName"]), seed, epoch))]
    if table.empty:
        raise ValueError(f"{root}: the {split} split has no volume with both a report and labels.")
    names = [volume_stem(n) for n in table["VolumeName"]]
    dataset = IterableDataset.from_generator(
        _ct_rate_records, features=_stream_features(), gen_kwargs={"names": names, "table": handle}, split=split
    )
    if shuffle_buffer_size is not None:
        dataset = dataset.shuffle(seed=seed, buffer_size=int(shuffle_buffer_size))
    if not decode:
        return dataset
    decoder = _DecodeCT(root, storage_options, volume_processor, cxr_mode, cxr_size, image_processor, validate_hu)
    return dataset.map(decoder, remove_columns=["path", "slope", "intercept", "xy_spacing", "z_spacing"])


# ------------------------------------------------------------------------------------------- preprocessed datasets
def preprocessed_features(shape: Sequence[int], cxr_size: int):
    """``datasets.Features`` of a preprocessed split (``CONTRACTS.md``): ``ct`` int16 ``shape`` (D, H, W) in HU,
    ``cxr`` uint8 ``(cxr_size, cxr_size)``."""
    from datasets import Array2D, Array3D, Features, Sequence, Value

    return Features(
        {
            "VolumeName": Value("string"),
            "scan_id": Value("string"),
            "labels": Sequence(Value("int8"), length=NUM_FINDINGS),
            "report": Value("string"),
            "ct": Array3D(shape=tuple(int(n) for n in shape), dtype="int16"),
            "cxr": Array2D(shape=(int(cxr_size), int(cxr_size)), dtype="uint8"),
        }
    )


def embedding_cache_features(projection_dim: int):
    """``datasets.Features`` of an embedding-cache split: L2-normalised float32 latents of ``projection_dim``."""
    from datasets import Features, Sequence, Value

    return Features(
        {
            "VolumeName": Value("string"),
            "scan_id": Value("string"),
            "labels": Sequence(Value("int8"), length=NUM_FINDINGS),
            "ct_embeds": Sequence(Value("float32"), length=int(projection_dim)),
            "text_embeds": Sequence(Value("float32"), length=int(projection_dim)),
        }
    )


def _load_split(path: str | os.PathLike, split: str, what: str, config_name: str):
    from datasets import load_from_disk

    folder = Path(path) / split
    if not (folder / "state.json").is_file():
        done = sorted(p.name for p in Path(path).iterdir() if (p / "state.json").is_file()) if Path(path).is_dir() else []
        hint = f" (finished splits: {done})" if done else ""
        if (folder / ShardedSplitWriter.PLAN).is_file():
            hint = " (it is unfinished: run the command again to resume it)"
        raise FileNotFoundError(f"{folder}: no {what} split {split!r} here{hint}; it needs {folder / 'state.json'}.")
    if not (Path(path) / config_name).is_file():
        raise FileNotFoundError(f"{path}: no {config_name}; this is not a folder written by x2ctclip.")
    return load_from_disk(str(folder))


def load_preprocessed(path: str | os.PathLike, split: str, *, columns: Sequence[str] | None = None):
    """A preprocessed split (``x2ctclip preprocess``) as a memory-mapped ``datasets.Dataset`` in numpy format.

    Integer and float columns keep their stored dtypes (``ct`` int16 ``(D, H, W)``, ``cxr`` uint8 ``(S, S)``,
    ``labels`` int8 ``(18,)``); datasets' default numpy format would widen them to int64 and be 4x slower. Turn a
    batch into model inputs with :func:`ct_values_from_ct` or :func:`preprocessed_collator`.

    Args:
        path: the ``OUT`` folder of ``x2ctclip preprocess``.
        split: ``"train"``, ``"valid"``, ...
        columns: only these columns (e.g. ``["cxr", "labels"]`` to skip reading the volumes).
    """
    dataset = _load_split(path, split, "preprocessed", PREPROCESS_CONFIG)
    return dataset.with_format("numpy", columns=list(columns) if columns is not None else None, dtype=None)


def load_embedding_cache(path: str | os.PathLike, split: str):
    """An embedding-cache split (``x2ctclip cache-embeddings``): memory-mapped, numpy format, ``ct_embeds`` and
    ``text_embeds`` float32 ``(projection_dim,)`` L2-normalised, ``labels`` int8 ``(18,)``."""
    return _load_split(path, split, "embedding-cache", EMBEDDING_CACHE_CONFIG).with_format("numpy", dtype=None)


def read_folder_config(path: str | os.PathLike, name: str) -> dict[str, Any]:
    """The JSON parameters (``preprocess_config.json`` / ``cache_config.json``) of a folder written here."""
    file = Path(path) / name
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; {path} is not a folder written by x2ctclip.")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error}).") from None


def ct_values_from_ct(ct, *, hu_scale: float = 1000.0, device=None):
    """Stored int16 HU ``(..., D, H, W)`` -> the volume processor's ``ct_values`` ``(..., 1, D, H, W)`` float32
    tensor (``ct / 1000``). Accepts numpy arrays (read-only memory maps included) and torch tensors; with ``device``
    the int16 data moves first and is converted there (a quarter of the bytes of float32)."""
    import torch

    if not isinstance(ct, torch.Tensor):
        array = np.asarray(ct)
        with warnings.catch_warnings():  # a read-only view (memory map) is only read: the conversion below copies
            warnings.simplefilter("ignore", UserWarning)
            ct = torch.from_numpy(array)
    if device is not None:
        ct = ct.to(device, non_blocking=True)
    # One float32 copy, divided in place (same numbers as `ct / 1000`, half the memory traffic).
    return ct.to(torch.float32, copy=True).div_(float(hu_scale)).unsqueeze(-4)


def read_ct(dataset, indices) -> np.ndarray:
    """``ct`` of rows of a preprocessed split as int16 ``(D, H, W)`` (one index) or ``(B, D, H, W)`` (a list), read
    from the Arrow memory map without datasets' formatter: one row is a zero-copy view of the file (pages are read
    when touched), several rows one copy. Several times faster than ``dataset[i]["ct"]`` for CT-CLIP-sized volumes
    (``benchmarks/bench_loader.py``)."""
    single = isinstance(indices, (int, np.integer))
    rows = [int(indices)] if single else [int(i) for i in indices]
    column = dataset.with_format("arrow", columns=["ct"])[rows].column("ct")
    chunks = [chunk.to_numpy() for chunk in column.chunks if len(chunk)]
    array = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return array[0] if single else array


class _PreprocessedCollator:
    def __init__(self, image_processor, keep, ct_dtype):
        if ct_dtype not in ("float32", "int16"):
            raise ValueError(f"ct_dtype must be 'float32' or 'int16', got {ct_dtype!r}.")
        self.image_processor = image_processor
        self.keep = tuple(keep)
        self.ct_dtype = ct_dtype

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {}
        if "ct" in examples[0]:
            ct = np.stack([np.asarray(e["ct"]) for e in examples])
            if self.ct_dtype == "int16":
                batch["ct"] = torch.from_numpy(ct)
            else:
                batch["ct_values"] = ct_values_from_ct(ct)
        if "cxr" in examples[0]:
            images = [np.asarray(e["cxr"]) for e in examples]
            if self.image_processor is not None:
                batch["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
            else:
                batch["cxr"] = torch.from_numpy(np.stack(images))
        if "labels" in examples[0]:
            batch["labels"] = torch.from_numpy(np.stack([np.asarray(e["labels"]) for e in examples]).astype(np.float32))
        for key in self.keep:
            batch[key] = [e[key] for e in examples]
        return batch


def preprocessed_collator(
    image_processor=None, keep: Sequence[str] = ("VolumeName", "scan_id"), ct_dtype: str = "float32"
):
    """A ``DataLoader`` ``collate_fn`` for :func:`load_preprocessed` rows: ``ct_values`` ``(B, 1, D, H, W)`` float32,
    ``pixel_values`` ``(B, 3, H, W)`` (through ``image_processor``; without one ``cxr`` ``(B, S, S)`` uint8), ``labels``
    ``(B, 18)`` float32, and the ``keep`` columns as lists. Picklable, for DataLoader workers.

    ``ct_dtype="int16"`` returns ``ct`` ``(B, D, H, W)`` int16 instead of ``ct_values``: a quarter of the bytes to
    move from worker processes and to the GPU; convert there with :func:`ct_values_from_ct`."""
    return _PreprocessedCollator(image_processor, keep, ct_dtype)


# ------------------------------------------------------------------------------------------- experiment batching
def one_recon_per_scan(dataset, seed: int, epoch: int, *, level: str = "scan") -> list[int]:
    """Row indices of ``dataset`` (a preprocessed or cached split, or a list of volume names): one random
    reconstruction per scan, chosen from ``(seed, epoch)``, listed in a random order of the scans.

    Consecutive slices of the result are X2CT-CLIP "experiment" batches (unique scans). ``level="patient"`` keeps one
    reconstruction per patient instead (X2CT-CLIP's ``batch_style="patient"``).
    """
    names = list(dataset) if isinstance(dataset, (list, tuple)) else list(dataset.with_format(None)["VolumeName"])
    if not names:
        raise ValueError("one_recon_per_scan: the dataset is empty.")
    return select_one_recon_per_scan(names, seed, epoch, level)


class UniqueScanBatchSampler:
    """``torch.utils.data`` batch sampler of X2CT-CLIP's "experiment" batching: each epoch, one random reconstruction
    per scan, scans in random order, ``batch_size`` scans per batch. Call :meth:`set_epoch` before each epoch
    (as with ``DistributedSampler``); for several processes pass ``num_replicas`` and ``rank``: each gets every
    ``num_replicas``-th batch (the same ``seed`` everywhere keeps them disjoint), and all get the same number of
    batches (surplus batches dropped with ``drop_last``, else the first batches repeated, as ``DistributedSampler``).

    Args:
        names: the ``VolumeName`` of each row (e.g. ``dataset["VolumeName"]``).
        batch_size: scans per batch.
        seed: seed of the choice and order.
        drop_last: drop the last incomplete batch.
        level: ``"scan"`` (default), ``"patient"`` or ``"recon"`` (every reconstruction, X2CT-CLIP's "instance").
    """

    def __init__(
        self,
        names: Sequence[str],
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = False,
        level: str = "scan",
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}.")
        self.names = list(names)
        self.groups = len({_group_key(n, level) for n in self.names})
        self.batch_size, self.seed, self.drop_last, self.level = batch_size, int(seed), bool(drop_last), level
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        order = select_one_recon_per_scan(self.names, self.seed, self.epoch, self.level)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        total = self._num_batches() * self.num_replicas
        # Every replica must run the same number of steps (collectives would hang otherwise): like
        # DistributedSampler, drop the surplus batches (drop_last) or repeat the first ones.
        batches = (batches * (1 + total // max(len(batches), 1)))[:total]
        return batches[self.rank :: self.num_replicas]

    def _num_batches(self) -> int:
        """Batches per replica."""
        full, rest = divmod(self.groups, self.batch_size)
        if self.drop_last:
            return full // self.num_replicas
        return -(-(full + (1 if rest else 0)) // self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return self._num_batches()


# ------------------------------------------------------------------------------------------------ writing shards
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_fingerprint(data: Mapping[str, Any]) -> str:
    """Short SHA-256 of a JSON-serialisable mapping (sorted keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# A row holding this key (and its VolumeName) stands for a planned volume that is left out of the shard, with the
# reason as its value (``x2ctclip preprocess``: a CT that does not cover the chest).
SKIPPED = "_skipped_reason"


class ShardedSplitWriter:
    """Writes one split as a ``save_to_disk`` folder, one Arrow shard at a time, resumably and atomically.

    The split's rows are planned up front as ``num_shards`` shards (the plan is saved in ``_shard_plan.json``).
    Each shard is written by ``datasets.arrow_writer.ArrowWriter`` (the writer ``Dataset.save_to_disk`` uses) to a
    temporary name, flushing every ``writer_batch_size`` rows, then renamed to ``data-{i:05d}-of-{n:05d}.arrow``: a
    shard under its final name is always complete, and memory holds at most ``writer_batch_size`` rows. A restarted
    run skips finished shards and deletes stale temporary files. :meth:`finalize` writes ``state.json`` and
    ``dataset_info.json`` (what ``datasets.load_from_disk`` reads) once every shard is there.
    """

    PLAN = "_shard_plan.json"

    def __init__(self, folder: str | os.PathLike, features, plan: list[list[str]], *, split: str, fingerprint: str):
        if not plan:
            raise ValueError(f"{folder}: nothing to write (the split has no rows).")
        self.folder = Path(folder)
        self.features = features
        self.plan = [list(shard) for shard in plan]
        self.split = split
        self.fingerprint = fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)
        plan_file = self.folder / self.PLAN
        record = {"fingerprint": fingerprint, "shards": self.plan}
        if plan_file.is_file():
            previous = json.loads(plan_file.read_text())
            if previous != record:
                raise ValueError(
                    f"{self.folder}: holds shards of another run (different inputs or parameters: fingerprint "
                    f"{previous.get('fingerprint')} != {fingerprint}, or another set of rows). Use a new output "
                    "folder, or delete this one."
                )
        else:
            if any(self.folder.glob("data-*.arrow")):
                raise ValueError(f"{self.folder}: holds Arrow files not written by this tool; use an empty folder.")
            _atomic_write_text(plan_file, json.dumps(record))
        for stale in self.folder.glob(".data-*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run: never renamed, so never part of the result

    @property
    def num_shards(self) -> int:
        return len(self.plan)

    def shard_path(self, index: int) -> Path:
        return self.folder / f"data-{index:05d}-of-{self.num_shards:05d}.arrow"

    def is_done(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def pending(self) -> list[int]:
        return [i for i in range(self.num_shards) if not self.is_done(i)]

    def write_shard(self, index: int, rows: Iterable[Mapping[str, Any]], writer_batch_size: int = 8) -> int:
        """Write shard ``index`` from ``rows`` (dicts matching the features; exactly the planned rows, in order)."""
        from datasets.arrow_writer import ArrowWriter

        final = self.shard_path(index)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        expected = self.plan[index]
        position = written = 0
        skipped: list[dict[str, str]] = []
        skipped_path = self.skipped_path(index)
        try:
            writer = ArrowWriter(features=self.features, path=str(tmp), writer_batch_size=max(1, writer_batch_size))
            try:
                for row in rows:
                    if position >= len(expected) or volume_stem(row["VolumeName"]) != volume_stem(expected[position]):
                        got = row["VolumeName"]
                        want = expected[position] if position < len(expected) else "nothing"
                        raise RuntimeError(f"{final}: row {position} is {got!r}, the plan says {want!r}.")
                    position += 1
                    if SKIPPED in row:  # a planned volume left out (e.g. not a chest CT): recorded, not written
                        skipped.append({"VolumeName": row["VolumeName"], "reason": str(row[SKIPPED])})
                        continue
                    writer.write(dict(row))
                    written += 1
                if position != len(expected):
                    raise RuntimeError(f"{final}: {position} rows written, the plan has {len(expected)}.")
                writer.finalize()
            finally:
                writer.close()
            # The list of skipped volumes lands before the shard: a finished shard always has its complete list.
            if skipped:
                _atomic_write_text(skipped_path, json.dumps(skipped, indent=2))
            else:
                skipped_path.unlink(missing_ok=True)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return written

    def skipped_path(self, index: int) -> Path:
        """JSON list of the planned volumes of shard ``index`` that were left out (absent when none were)."""
        return self.shard_path(index).with_suffix(".skipped.json")

    def skipped(self) -> list[dict[str, str]]:
        """``[{"VolumeName", "reason"}]`` of every planned volume left out of the finished shards, in plan order."""
        out: list[dict[str, str]] = []
        for index in range(self.num_shards):
            path = self.skipped_path(index)
            if self.is_done(index) and path.is_file():
                out.extend(json.loads(path.read_text()))
        return out

    def finalize(self, description: str = ""):
        """Write ``state.json`` / ``dataset_info.json`` and return the split as a memory-mapped ``Dataset``."""
        from datasets import Dataset, DatasetInfo, load_from_disk

        missing = self.pending()
        if missing:
            raise RuntimeError(f"{self.folder}: shards {missing[:5]} are not written yet.")
        for index, names in enumerate(self.plan):
            rows = Dataset.from_file(str(self.shard_path(index))).num_rows
            path = self.skipped_path(index)
            rows += len(json.loads(path.read_text())) if path.is_file() else 0
            if rows != len(names):
                raise ValueError(f"{self.shard_path(index)}: {rows} rows, expected {len(names)}; delete it and rerun.")
        state = {
            "_data_files": [{"filename": self.shard_path(i).name} for i in range(self.num_shards)],
            "_fingerprint": self.fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": self.split,
        }
        info = asdict(DatasetInfo(description=description, features=self.features))
        _atomic_write_text(self.folder / "dataset_info.json", json.dumps({k: info[k] for k in sorted(info)}, indent=2))
        _atomic_write_text(self.folder / "state.json", json.dumps(state, indent=2, sort_keys=True))
        return load_from_disk(str(self.folder))


def plan_shards(names: Sequence[str], shard_size: int) -> list[list[str]]:
    """Consecutive groups of ``shard_size`` names (the last may be shorter)."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}.")
    return [list(names[i : i + shard_size]) for i in range(0, len(names), shard_size)]


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "vol", disable: bool | None = None):
    """A tqdm bar (shared by the preprocessing and caching commands)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)


