"""Synthetic chest CT studies in the exact CT-RATE release layout: the project's embedded default data set.

Nobody can download CT-RATE here, so this module writes a stand-in that the same loader reads::

    OUT_DIR/
      train_fixed/train_1/train_1_a/train_1_a_1.nii.gz    # {split}_{patient}_{scan}_{reconstruction}
      valid_fixed/valid_1/valid_1_a/valid_1_a_1.nii.gz    # (release="original": train/..., valid/...)
      radiology_text_reports/train_reports.csv, validation_reports.csv   # VolumeName ("train_1_a_1.nii.gz"),
                                                           # ClinicalInformation_EN, Technique_EN,
                                                           # Findings_EN, Impressions_EN
      multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv  # VolumeName + 18 labels
      metadata/train_metadata.csv, validation_metadata.csv  # VolumeName, RescaleSlope, RescaleIntercept,
                                                           # XYSpacing "[x, y]", ZSpacing, NumberofSlices, ...
      synthetic_config.json                                # the parameters of each split written

(the real release's names, :data:`x2ctclip.train.data.release.CT_RATE_TABLES`; a synthetic ``test`` split follows the train
pattern). Corrected release (default): int16 HU values, slope 1 / intercept 0 in a full header, while the metadata
keeps the scanner's RescaleIntercept (as CT-RATE's does: it must not be applied again). First release: int16
*stored values* under a blank header, ``HU = stored * RescaleSlope + RescaleIntercept`` from the metadata.
The voxel axes ``(i, j, k)`` of the NIfTI
data array point to the patient's Left, Posterior and Superior (nibabel axis codes ``("L", "P", "S")``, i.e. the
DICOM LPS order of an axial series with slices stored feet to head); the affine maps voxels to RAS+ millimetres
as NIfTI requires (``diag(-sx, -sy, sz)`` plus the origin). Slice ``data[:, :, k].T`` is an axial image in the
radiological display convention (anterior up, patient right on the left), and a mean over ``j`` (the
antero-posterior axis) transposed and flipped vertically is an upright frontal radiograph.

Every study is a deterministic function of ``(seed, split, patient, scan)``: labels are drawn with the real CT-RATE
prevalences and co-occurrences, each positive finding is placed and measured, the chest is rendered in HU at the
requested shape, and a report in the CT-RATE style describes it (:mod:`.synthetic_reports`). Files are written to
a temporary name and renamed, so an interrupted run leaves no corrupt file, and a rerun only renders what is
missing. Public API: :func:`synthesize_study` (in memory), :func:`make_study` (all reconstructions and metadata),
:func:`generate_synthetic_ct_rate` (the folder); the ``x2ctclip make-synthetic`` command wraps the last.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from x2ctclip import CT_RATE_FINDINGS, fileio

from x2ctclip.train.data.release import table_path
from x2ctclip.train.synthetic.study import DEFAULT_SHAPE
from x2ctclip.train.synthetic.study import RECON_KINDS
from x2ctclip.train.synthetic.study import SPLITS
from x2ctclip.train.synthetic.study import check_shape
from x2ctclip.train.synthetic.study import check_spacing
from x2ctclip.train.synthetic.study import metadata_row
from x2ctclip.train.synthetic.study import make_study
from x2ctclip.train.synthetic.study import plan_study

REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
LABEL_COLUMNS = ("VolumeName", *CT_RATE_FINDINGS)
METADATA_COLUMNS = (
    "VolumeName", "Manufacturer", "ManufacturerModelName", "SeriesDescription", "ConvolutionKernel",
    "PatientSex", "PatientAge", "PatientPosition", "KVP", "XRayTubeCurrent", "SliceThickness",
    "Rows", "Columns", "NumberofSlices", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelPaddingValue", "StudyDate",
)
#: Parameters of every split written to a folder (``OUT_DIR/synthetic_config.json``).
SYNTHETIC_CONFIG = "synthetic_config.json"


# ------------------------------------------------------------------------------------------------- writing
def nifti_bytes(stored: np.ndarray, spacing, origin_lps, slope: float, intercept: float, *,
                blank_header: bool = False) -> bytes:
    """A NIfTI-1 file (uncompressed bytes) for ``stored`` int16 values shaped ``(D, H, W)`` ``[z, y, x]``.

    The header carries ``scl_slope``/``scl_inter``, qform = sform (code 1, scanner) and mm units. Written by hand
    rather than with ``nibabel.save`` because nibabel rescales in-memory arrays on save and resets the slope.
    ``blank_header=True`` writes a first-release CT-RATE header instead: no orientation (qform = sform code 0),
    unit pixdim and no scaling (``scl_slope`` 0): spacing and rescale then live only in the metadata table.
    """
    import nibabel as nib

    if stored.dtype != np.int16 or stored.ndim != 3:
        raise ValueError(f"stored values must be a 3-D int16 array, got {stored.dtype} {stored.shape}")
    sz, sy, sx = (float(v) for v in spacing)
    ox, oy, oz = (float(v) for v in origin_lps)
    # Voxel (i, j, k) -> LPS (ox + i sx, oy + j sy, oz + k sz) -> RAS (negate x and y).
    affine = np.array([[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1]], dtype=np.float64)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(stored.shape[::-1])  # (i, j, k) = (x, y, z)
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((sx, sy, sz))
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = intercept
    hdr["vox_offset"] = 352
    hdr["descrip"] = b"x2ctclip synthetic chest CT"
    if blank_header:
        hdr.set_qform(None, code=0)
        hdr.set_sform(None, code=0)
        hdr["qform_code"] = hdr["sform_code"] = 0
        hdr["pixdim"][1:4] = 1.0
        hdr["scl_slope"], hdr["scl_inter"] = 0.0, 0.0
    # NIfTI stores i fastest (Fortran order of (x, y, z)): exactly the C-order bytes of the (z, y, x) array.
    return hdr.binaryblock + b"\x00\x00\x00\x00" + np.ascontiguousarray(stored).tobytes()


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through :func:`x2ctclip.fileio.write_atomic` (fsynced temporary sibling,
    renamed: never a half-written file); creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, payload)


def write_volume(path: Path, hu: np.ndarray, spacing, origin_lps, intercept: float, slope: float = 1.0,
                 compresslevel: int = 1, release: str = "fixed") -> None:
    """Write an int16 HU volume ``(D, H, W)`` as ``.nii.gz``, atomically; deterministic bytes (gzip header without
    time stamp or name). ``release="fixed"`` (CT-RATE's corrected release): the values are HU (slope 1, intercept
    0) with a full header; ``"original"`` (first release): stored values ``(HU - intercept) / slope`` under a blank
    header, the rescale only in the metadata."""
    from isal import igzip

    if release == "fixed":
        slope, intercept = 1.0, 0.0
    elif release != "original":
        raise ValueError(f"release must be 'fixed' or 'original', got {release!r}")
    if hu.dtype == np.int16 and slope == 1.0 and intercept == 0.0:
        stored = hu  # rint((hu - 0) / 1) of int16 values is the values themselves: skip four full-volume passes
    else:
        stored = np.rint((hu.astype(np.float32) - intercept) / slope).astype(np.int16)
    raw = nifti_bytes(stored, spacing, origin_lps, slope, intercept, blank_header=release == "original")
    write_atomic(path, igzip.compress(raw, compresslevel, mtime=0))


def volume_name(split: str, patient: int, scan: int, recon: int) -> str:
    """CT-RATE volume name, e.g. ``train_12_a_1`` (patients and reconstructions from 1, scans a, b, ...)."""
    return f"{split}_{patient}_{chr(ord('a') + scan)}_{recon}"


def volume_path(out_dir: Path, name: str, release: str = "fixed") -> Path:
    """``{split}_fixed/...`` (corrected release, default) or ``{split}/...`` (first release) below ``out_dir``."""
    split, patient, scan, _ = name.split("_")
    top = f"{split}_fixed" if release == "fixed" else split
    return Path(out_dir) / top / f"{split}_{patient}" / f"{split}_{patient}_{scan}" / f"{name}.nii.gz"


def _split_scans(seed: int, split: str, n_scans: int) -> list[tuple[int, int]]:
    """(patient, scan) pairs: most patients have one scan, about 15 % a follow-up scan 'b'."""
    rng = np.random.default_rng([seed, SPLITS.index(split), 10_000])
    out, patient = [], 0
    while len(out) < n_scans:
        patient += 1
        n = 2 if rng.random() < 0.15 else 1
        for s in range(n):
            if len(out) < n_scans:
                out.append((patient, s))
    return out


def _study_task(args) -> list[dict]:
    """Worker: render/write one scan's reconstructions that are missing; return its CSV rows."""
    out_dir, seed, split, patient, scan, shape, n_recons, spacing, release = args
    names = [volume_name(split, patient, scan, r + 1) for r in range(n_recons)]
    paths = [volume_path(out_dir, n, release) for n in names]
    p = plan_study(seed, split, patient, scan, shape, spacing=spacing)
    intercept = p["scanner"][2]
    if not all(path.exists() for path in paths):
        study = make_study(seed, shape, n_recons=n_recons, split=split, patient=patient, scan=scan, planned=p)
        for path, vol, sp in zip(paths, study.volumes, study.spacings):
            if not path.exists():
                write_volume(path, vol, sp, study.origin_lps, intercept, release=release)
        metas = study.metadata
    else:
        metas = []
        for r in range(n_recons):  # metadata from the plan alone (what make_study would produce)
            spec = RECON_KINDS[r % len(RECON_KINDS)]
            sp, d = p["grid"].spacing, p["grid"].shape[0]
            if spec["kind"] == "thick":
                sp, d = (sp[0] * 2, sp[1], sp[2]), d // 2
            manufacturer = p["scanner"][0]
            padding = -2048.0 if manufacturer == "SIEMENS" else (-3024.0 if manufacturer == "TOSHIBA" else None)
            metas.append(metadata_row(p, spec, (d, *p["grid"].shape[1:]), sp, intercept, padding))
    rows = []
    for name, meta in zip(names, metas):
        # The released CT-RATE tables spell VolumeName with the file suffix.
        rows.append({"name": f"{name}.nii.gz", "report": p["report"], "labels": [int(v) for v in p["labels"]],
                     "meta": meta})
    return rows


def _csv_bytes(columns, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def generate_synthetic_ct_rate(out_dir, n_train: int = 100, n_valid: int = 20, n_test: int = 0,
                               shape=DEFAULT_SHAPE, seed: int = 0, recons: int = 1, workers: int = 1,
                               spacing=None, progress: bool = True, release: str = "fixed") -> dict:
    """Write a synthetic data set in the CT-RATE layout under ``out_dir``.

    ``release="fixed"`` (default) writes CT-RATE's corrected release (``{split}_fixed/`` folders, HU values with
    full headers); ``"original"`` the first release (``{split}/``, blank headers, stored values that need the
    metadata's RescaleSlope/RescaleIntercept). Table names are the release's (``validation_reports.csv``,
    ``valid_predicted_labels.csv``, ``validation_metadata.csv`` ...). The parameters of every split written are
    recorded in ``out_dir/synthetic_config.json``; writing a split again with other parameters is refused (its
    volumes would no longer match the tables).

    Args:
        n_train, n_valid, n_test: scans per split (each with ``recons`` reconstructions); a split with 0 scans is
            not written.
        shape: ``(D, H, W)`` of the first reconstruction. seed: everything is a function of it.
        workers: processes (1 = in this process).

    Returns:
        ``{"volumes": written, "skipped": already present, "rows": {split: n_rows}}``.
    """
    from tqdm.auto import tqdm

    shape = check_shape(shape)
    spacing = check_spacing(spacing)
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if int(n) != n or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if n_train + n_valid + n_test == 0:
        raise ValueError("nothing to generate: n_train, n_valid and n_test are all 0")
    if recons < 1 or recons > 9:
        raise ValueError(f"recons must be between 1 and 9, got {recons}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if release not in ("fixed", "original"):
        raise ValueError(f"release must be 'fixed' or 'original', got {release!r}")
    out_dir = Path(out_dir)
    for parent in (out_dir, *out_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{parent}: exists and is not a directory")
            break
    config_path = out_dir / SYNTHETIC_CONFIG
    record = {"splits": {}}
    if config_path.is_file():
        import json

        try:
            record = json.loads(config_path.read_text())
            record["splits"]  # noqa: B018 - the key must exist
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{config_path}: not a synthetic data set record; use a new folder") from None
    params = {"seed": int(seed), "shape": list(shape), "recons": int(recons),
              "spacing": None if spacing is None else list(spacing), "release": release}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        old = record["splits"].get(split)
        if n and old is not None and old != params:
            differ = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in params.items() if old.get(k) != v)
            raise ValueError(f"{out_dir}: its {split} split was written with other parameters ({differ}); "
                             "use a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        for patient, scan in _split_scans(seed, split, int(n)):
            tasks.append((out_dir, int(seed), split, patient, scan, shape, int(recons), spacing, release))
    existing = sum(volume_path(out_dir, volume_name(t[2], t[3], t[4], r + 1), release).exists()
                   for t in tasks for r in range(recons))
    results = []
    bar = tqdm(total=len(tasks), desc="synthetic CT studies", unit="study", disable=not progress)
    if workers == 1:
        for t in tasks:
            results.append(_study_task(t))
            bar.update()
    else:
        import multiprocessing as mp

        # fork (where available) starts workers instantly with everything imported; the workers only run numpy
        # and scipy, never torch, so forking the parent is safe.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            for rows in pool.imap(_study_task, tasks, chunksize=1):
                results.append(rows)
                bar.update()
    bar.close()

    counts = {}
    for split in SPLITS:
        rows = [r for res, t in zip(results, tasks) if t[2] == split for r in res]
        if not rows:
            continue
        counts[split] = len(rows)
        write_atomic(out_dir / table_path("reports", split), _csv_bytes(
            REPORT_COLUMNS, [[r["name"]] + [r["report"][c] for c in REPORT_COLUMNS[1:]] for r in rows]))
        write_atomic(out_dir / table_path("labels", split), _csv_bytes(
            LABEL_COLUMNS, [[r["name"], *r["labels"]] for r in rows]))
        write_atomic(out_dir / table_path("metadata", split), _csv_bytes(
            METADATA_COLUMNS, [[r["name"]] + [r["meta"][c] for c in METADATA_COLUMNS[1:]] for r in rows]))
        record["splits"][split] = params
        import json

        write_atomic(config_path, json.dumps(record, indent=2).encode())
    total = len(tasks) * recons
    return {"volumes": total - existing, "skipped": existing, "rows": counts}
