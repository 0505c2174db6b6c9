"""CT-RATE tables (reports, labels, metadata) joined into one record per volume, and reading one volume."""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import numpy as np

from x2ctclip.processors.tokenization import clean_report
from x2ctclip.processors.volume_io import check_hu, decode_nifti
from x2ctclip.train.data.release import (
    CT_RATE_NO_CHEST,
    NUM_FINDINGS,
    TABLES,
    is_local,
    parse_volume_name,
    read_no_chest,
    resolve_data_root,
    resolve_release,
    table_path,
    volume_folder,
    volume_stem,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------- tables
def _read_csv(fs, path: str, what: str, required: bool = True):
    import pandas as pd  # start-up: pandas loads only when a table is read

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

    Longer than 80 lines on purpose: it is the one place where the release's tables meet (reports, labels, metadata, no-
    chest lists), checked column by column in the order they are joined.
    """
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
    import pandas as pd  # start-up: pandas loads only when a table is read

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
    if fs is None:
        fs = fsspec.filesystem("file")
    source = path if is_local(fs) else fs.unstrip_protocol(path)
    blank_spacing = None if math.isnan(xy_spacing) or math.isnan(z_spacing) else (z_spacing, xy_spacing, xy_spacing)
    blank_rescale = None if math.isnan(slope) or math.isnan(intercept) else (slope, intercept)
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            with fs.open(path, "rb") as handle:
                # The project's one NIfTI decoder; the metadata fills in only for a blank (first-release) header.
                volume = decode_nifti(handle, source, blank_header_spacing=blank_spacing,
                                      blank_header_rescale=blank_rescale, max_voxels=max_voxels, blank_header="error")
            break
        except FileNotFoundError:
            raise FileNotFoundError(f"{source}: no such CT file (listed in the CT-RATE tables).") from None
        except (IsADirectoryError, NotADirectoryError, PermissionError):
            raise
        except OSError as err:  # a dropped connection: the whole file is read again (the decoder streams it once)
            if attempt == READ_ATTEMPTS:
                raise OSError(f"{source}: reading failed {READ_ATTEMPTS} times, last: {err}. Rerun the command: "
                              "complete shards are kept and only the rest is read.") from None
            logger.warning("%s: read failed (%s); retry %d of %d.", source, err, attempt, READ_ATTEMPTS - 1)
            time.sleep(READ_RETRY_WAIT_S * attempt)
    if validate:
        check_hu(volume)
        check_air(volume)
    return volume


#: Attempts at reading one volume through fsspec before its I/O error is raised (a remote file system such as the
#: Hub drops connections now and then); a corrupt file (``ValueError``) is never retried.
READ_ATTEMPTS: int = 3
#: Seconds waited before retry k (times k).
READ_RETRY_WAIT_S: float = 2.0


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
_MAX_CACHED_TABLES = 4


class TableRef:
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
        while len(TABLES) >= _MAX_CACHED_TABLES:
            TABLES.pop(next(iter(TABLES)))
        TABLES[self.key] = records
        return records

    def records(self) -> dict[str, dict[str, Any]]:
        cached = TABLES.get(self.key)
        if cached is None:
            cached = self.store(ct_rate_table(self.root, self.split, storage_options=self.storage_options,
                                              release=self.release, keep_non_chest=self.keep_non_chest))
        return cached


def ct_rate_records(names: list[str], table: TableRef) -> Iterator[dict[str, Any]]:
    """The generator of :func:`stream_ct_rate`: ``names`` is this worker's list of file shards (volume names)."""
    records = table.records()
    for name in names:
        try:
            yield dict(records[name])
        except KeyError:
            raise ValueError(f"{table.root}: volume {name} is no longer in the {table.split} tables.") from None
