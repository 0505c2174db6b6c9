"""Convert a CT-RATE layout once into fixed-size Arrow shards (``x2ctclip preprocess DATA_ROOT OUT``).

Decoding a CT-RATE ``.nii.gz`` and resampling it costs seconds per volume; training reads every volume many times.
This command does that work once and writes ``OUT/{split}/`` (a ``datasets.save_to_disk`` folder, read memory-mapped
by :func:`x2ctclip.train.data.folders.load_preprocessed`), one row per reconstruction (the format of
docs/data_pipeline.md, "Preprocessing once")::

    VolumeName, scan_id, labels int8[18], report (cleaned Findings + Impressions),
    ct  int16 (D, H, W): HU after X2CTCLIPVolumeProcessor (clip [-1000, 1000], target spacing, crop/pad with -1000)
    cxr uint8 (S, S):    simulated frontal CXR, min-max scaled to 8 bits, padded to a square, resized to S x S

``ct / 1000`` with a channel axis is the volume processor's ``ct_values`` up to the rounding to whole HU (at most
0.5 HU, 5e-4 in ``ct_values``). ``OUT/preprocess_config.json`` records the processor parameters, the simulation mode,
the CXR size, the source root and the library versions.

Memory stays flat: a volume is decoded, processed and appended to the current shard, which is flushed to disk every
few rows (:class:`x2ctclip.train.data.shards.ShardedSplitWriter`); with ``workers`` > 1 at most ``2 * workers`` processed
volumes wait in memory. Resumable and atomic: each shard is written under a temporary name and renamed when complete;
a restart skips complete shards. The same code reads a local folder and ``hf://datasets/...``.

Under ``torchrun --nproc_per_node N`` (:mod:`x2ctclip.train.distributed`) rank ``r`` writes the shards ``i`` with
``i % N == r`` of each split (with its own ``workers`` pool), and rank 0 finalises the split once every rank is done;
the rows, their order and their values are those of one process. ``preprocess_config.json`` records ``world_size``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from x2ctclip.fileio import write_atomic, write_json_atomic
from x2ctclip.train import distributed
from x2ctclip.train.data.folders import PREPROCESS_CONFIG, preprocessed_features
from x2ctclip.train.data.release import resolve_data_root
from x2ctclip.train.data.shards import (
    SKIPPED,
    ShardedSplitWriter,
    config_fingerprint,
    finish_split,
    open_split_writer,
    plan_shards,
)
from x2ctclip.train.data.tables import ct_rate_table, read_ct_rate_volume
from x2ctclip.train.progress import progress_bar

__all__ = ["DEFAULT_SHAPE", "DEFAULT_SPACING", "preprocess_ct_rate", "simulate_cxr_uint8", "to_uint8_square"]

#: CT-CLIP's input grid: 240 x 480 x 480 voxels (D, H, W) of 1.5 x 0.75 x 0.75 mm.
DEFAULT_SHAPE: tuple[int, int, int] = (240, 480, 480)
DEFAULT_SPACING: tuple[float, float, float] = (1.5, 0.75, 0.75)
#: Target size of a shard's Arrow file; rows per shard = this / bytes per row (at least 1).
DEFAULT_SHARD_BYTES = 500 * 2**20
#: The chest-CT check runs on volumes at most this coarse, ``(z, y, x)`` mm (coarser ones are kept unjudged).
CHEST_CHECK_MAX_SPACING_MM: tuple[float, float, float] = (10.0, 5.0, 5.0)
#: Rows buffered by the Arrow writer before a flush (bounded by bytes as well).
_FLUSH_BYTES = 32 * 2**20
#: Top-level keys of ``preprocess_config.json`` that describe a run, not the data (a resumed run may change them).
RUN_KEYS = ("splits", "versions", "world_size")


def to_uint8_square(image: np.ndarray, size: int) -> np.ndarray:
    """A 2-D projection -> ``(size, size)`` uint8: padded to a square with its darkest value (air), resized with PIL's
    antialiased bilinear filter, then min-max scaled to [0, 255]. Padding keeps the anatomy's aspect ratio; scaling
    last makes every stored image span the full 8-bit range."""
    from PIL import Image

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"to_uint8_square: expected a 2-D image, got shape {image.shape}.")
    if not np.isfinite(image).all():
        raise ValueError("to_uint8_square: the simulated CXR holds NaN or infinite values.")
    height, width = image.shape
    side = max(height, width)
    square = np.full((side, side), image.min(), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = image
    resized = np.asarray(Image.fromarray(square, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    lo, hi = float(resized.min()), float(resized.max())
    scaled = (resized - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(resized)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def simulate_cxr_uint8(volume, *, mode: str = "mean", size: int = 256) -> np.ndarray:
    """Simulated frontal CXR of a :class:`~x2ctclip.processors.volume_io.CTVolume` as ``(size, size)`` uint8, in
    the CXR orientation convention of :func:`x2ctclip.processors.simulate_cxr` (patient's right on the image's left,
    head up, bone bright)."""
    from x2ctclip.processors.simulation import simulate_cxr

    # The volume was checked to be HU when it was read; simulate_cxr's own check would scan it again.
    return to_uint8_square(simulate_cxr(volume, mode=mode, view="frontal", validate=False), size)


class _VolumeWorker:
    """Turns one table row into one preprocessed row (picklable: runs in worker processes)."""

    def __init__(self, root, storage_options, processor_kwargs: Mapping[str, Any], cxr_mode: str, cxr_size: int,
                 check_chest: bool = True):
        self.check_chest = bool(check_chest)
        self.root = os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self.processor_kwargs = dict(processor_kwargs)
        self.cxr_mode, self.cxr_size = cxr_mode, int(cxr_size)
        self._state = None

    def __getstate__(self):
        return {**self.__dict__, "_state": None}

    def _setup(self):
        from x2ctclip.processors.image_processing_volume import X2CTCLIPVolumeProcessor

        fs, base = resolve_data_root(self.root, self.storage_options)
        self._state = (fs, base, X2CTCLIPVolumeProcessor(**self.processor_kwargs))

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        import posixpath

        import torch

        if self._state is None:
            self._setup()
        fs, base, processor = self._state
        volume = read_ct_rate_volume(
            posixpath.join(base, record["path"]),
            fs=fs,
            slope=record["slope"],
            intercept=record["intercept"],
            xy_spacing=record["xy_spacing"],
            z_spacing=record["z_spacing"],
            max_voxels=processor.max_voxels,
        )
        # The chest check is calibrated on clinical grids (docs/limits_and_checks.md); a grid coarser than
        # CHEST_CHECK_MAX_SPACING_MM blurs the lungs into the chest wall, so such volumes are not judged (kept).
        fine_enough = all(s <= m for s, m in zip(volume.spacing_mm, CHEST_CHECK_MAX_SPACING_MM))
        if self.check_chest and fine_enough:
            from x2ctclip.processors.plausibility import chest_ct_check

            check = chest_ct_check(volume)
            if not check.plausible:  # left out of the shard and listed (OUT/{split}/skipped.csv), not an error
                return {"VolumeName": record["VolumeName"], SKIPPED: check.reason}
        with torch.inference_mode():
            ct_values = processor.process_volume(volume)
        # HU = ct_values * hu_scale (1000): whole HU fit int16 exactly; rounding moves a value by at most 0.5 HU.
        ct = torch.round(ct_values * processor.hu_scale).to(torch.int16).numpy()
        cxr = simulate_cxr_uint8(volume, mode=self.cxr_mode, size=self.cxr_size)
        return {
            "VolumeName": record["VolumeName"],
            "scan_id": record["scan_id"],
            "labels": np.asarray(record["labels"], dtype=np.int8),
            "report": record["report"],
            "ct": ct,
            "cxr": cxr,
        }


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one volume per process: process-level parallelism, no thread oversubscription


def _processed_rows(worker: _VolumeWorker, records: Sequence[Mapping[str, Any]], executor, window: int) -> Iterator:
    """Rows of ``records`` in order; with an executor at most ``window`` volumes are in flight or waiting."""
    if executor is None:
        for record in records:
            yield worker(record)
        return
    pending: deque = deque()
    iterator = iter(records)
    for record in iterator:
        pending.append(executor.submit(worker, record))
        if len(pending) >= window:
            break
    while pending:
        row = pending.popleft().result()
        for record in iterator:  # refill one slot
            pending.append(executor.submit(worker, record))
            break
        yield row


def _counted(rows: Iterator, bar) -> Iterator:
    for row in rows:
        yield row
        bar.update(1)


def _versions() -> dict[str, str]:
    import datasets
    import nibabel
    import torch

    import x2ctclip

    return {
        "x2ctclip": x2ctclip.__version__,
        "datasets": datasets.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
    }


def _check_volumes_present(data_root, storage_options, tables) -> None:
    """Every volume the tables list must exist (one recursive listing per split folder), before anything is written:
    a partial download fails here naming a missing file, not after hours of preprocessing."""
    import posixpath

    fs, base = resolve_data_root(data_root, storage_options)
    for split, table in tables.items():
        folders = sorted({p.split("/", 1)[0] for p in table["path"]})
        present = set()
        for folder in folders:
            root = posixpath.join(base, folder)
            # Matched on what follows "/{folder}/", so that a listing spelling the root differently (a revision
            # resolved or not, a leading slash) still matches.
            marker = f"/{folder}/"
            for found in fs.find(root):
                found = "/" + str(found).lstrip("/")
                if marker in found:
                    present.add(folder + "/" + found.rsplit(marker, 1)[1])
        missing = [p for p in table["path"] if p not in present]
        if missing:
            raise FileNotFoundError(
                f"{posixpath.join(base, missing[0])}: no such CT file, listed in the {split} tables "
                f"({len(missing)} of {len(table)} listed volumes are missing; download them or drop the split)."
            )


def _open_config(out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The record of ``OUT/preprocess_config.json``: checked against ``params`` on every rank (a folder of another
    run is refused), written by rank 0 with this run's versions and ``world_size``."""
    config_path = out / PREPROCESS_CONFIG
    record = json.loads(config_path.read_text()) if config_path.is_file() else None
    if record is not None:
        previous = {k: v for k, v in record.items() if k not in RUN_KEYS}
        if previous != params:
            changed = sorted(k for k in params if previous.get(k) != params[k])
            raise ValueError(f"{out}: preprocessed with other parameters ({', '.join(changed)} differ); use a new OUT.")
    else:
        record = {**params, "splits": {}}
    record["versions"] = _versions()
    record["world_size"] = distributed.world_size()
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config_path, record)
    return record


def _preprocess_split(split, table, out: Path, features, worker, executor, workers: int, shard_size: int,
                      flush_rows: int, progress, *, fingerprint: str, data_root, record: dict, info: dict):
    """One split: this rank's pending shards, then (rank 0) the finished split, ``skipped.csv`` and the config."""
    names = list(table["VolumeName"])
    writer = open_split_writer(out / split, features, plan_shards(names, shard_size), split=split,
                               fingerprint=fingerprint)
    records = table.to_dict(orient="records")  # the table's metadata only (paths, labels, reports): no voxels
    mine = distributed.owned(range(writer.num_shards))
    pending = writer.pending_owned()
    total = sum(len(writer.plan[i]) for i in mine)
    done = total - sum(len(writer.plan[i]) for i in pending)
    starts = np.cumsum([0] + [len(s) for s in writer.plan])
    todo = [r for i in pending for r in records[starts[i] : starts[i + 1]]]
    # One pipeline over every pending shard, so that workers stay busy across shard boundaries.
    rows = _processed_rows(worker, todo, executor, 2 * max(workers, 1))
    where = f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.world_size() > 1 else ""
    disable = None if progress is None else not progress
    with progress_bar(total, done, f"preprocess {split}{where}", "vol", disable) as bar:
        for index in pending:
            shard_rows = itertools.islice(rows, len(writer.plan[index]))
            writer.write_shard(index, _counted(shard_rows, bar), writer_batch_size=flush_rows)

    def summarise(dataset) -> None:
        _write_skipped(writer, out / split, data_root, split, len(names))
        # The release actually read (fixed / original), the count of no_chest volumes left out and of volumes
        # that failed the chest check.
        record["splits"][split] = {"num_rows": dataset.num_rows, "num_shards": writer.num_shards,
                                   "num_skipped_not_chest": len(writer.skipped()), **info}
        write_json_atomic(out / PREPROCESS_CONFIG, record)

    return finish_split(writer, f"CT-RATE {split} preprocessed by x2ctclip", summarise)


def _write_skipped(writer: ShardedSplitWriter, folder: Path, data_root, split: str, planned: int) -> None:
    skipped = writer.skipped()
    if not skipped:
        return
    text = io.StringIO()
    table_out = csv.DictWriter(text, fieldnames=["VolumeName", "reason"], lineterminator="\n")
    table_out.writeheader()
    table_out.writerows(skipped)
    write_atomic(folder / "skipped.csv", text.getvalue())
    logging.getLogger(__name__).warning(
        "%s %s: %d of %d volumes do not look like chest CTs and were left out (listed in %s; "
        "--keep-implausible keeps them).", data_root, split, len(skipped), planned, folder / "skipped.csv")


def preprocess_ct_rate(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Sequence[str] = ("train", "valid"),
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    cxr_mode: str = "mean",
    cxr_size: int = 256,
    workers: int = 0,
    shard_size: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    release: str = "auto",
    keep_non_chest: bool = False,
    keep_implausible: bool = False,
) -> dict[str, Any]:
    """Preprocess CT-RATE splits into ``OUT/{split}/`` (see the module docstring).

    Args:
        data_root: a CT-RATE layout: a folder, ``file://...`` or ``hf://datasets/{org}/{repo}[@{rev}]/{folder}``.
        out: output folder (local). A folder of an interrupted run with the same parameters is resumed.
        splits: splits to convert.
        shape: ``(D, H, W)`` voxels after crop/pad.
        spacing: ``(D, H, W)`` target voxel spacing in mm.
        cxr_mode: CT-to-CXR simulation (``"mean"`` as X2CT-CLIP, or ``"beer_lambert"``).
        cxr_size: side of the stored square CXR, in pixels.
        workers: processes decoding volumes (0: in this process).
        shard_size: rows per Arrow shard (default: about 500 MB per shard).
        storage_options: fsspec options for ``data_root`` (e.g. a Hub token).
        progress: show a tqdm bar (default: tqdm's own choice).
        release: ``"auto"`` (the corrected ``{split}_fixed/`` release when present), ``"fixed"`` or ``"original"``;
            the choice per split is logged and recorded in ``preprocess_config.json`` (``release``).
        keep_non_chest: keep the volumes of the release's ``no_chest`` lists (left out, with a count, by default).
        keep_implausible: keep volumes that fail :func:`x2ctclip.processors.plausibility.chest_ct_check` (by default
            they are left out, logged with a count and listed in ``OUT/{split}/skipped.csv`` with the reason).

    Returns:
        ``{split: datasets.Dataset}``, memory-mapped.

    Raises:
        ValueError: bad parameters, a CT file that is corrupt or not HU (naming it), an output folder of another run.
        FileNotFoundError: missing tables or CT files.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive ints (D, H, W), got {shape}.")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers in mm (z, y, x), got {spacing}.")
    if cxr_mode not in ("mean", "beer_lambert"):
        raise ValueError(f"cxr_mode must be 'mean' or 'beer_lambert', got {cxr_mode!r}.")
    if not isinstance(cxr_size, int) or cxr_size < 8:
        raise ValueError(f"cxr_size must be an int >= 8, got {cxr_size!r}.")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}.")
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise ValueError("no split to preprocess.")

    from x2ctclip.processors.image_processing_volume import X2CTCLIPVolumeProcessor

    processor = X2CTCLIPVolumeProcessor(target_shape=shape, target_spacing=spacing)
    processor_kwargs = {k: v for k, v in processor.to_dict().items() if k != "image_processor_type"}
    row_bytes = 2 * math.prod(shape) + cxr_size * cxr_size + 4096
    if shard_size is None:
        shard_size = max(1, DEFAULT_SHARD_BYTES // row_bytes)
    flush_rows = max(1, min(shard_size, _FLUSH_BYTES // row_bytes))

    params = {
        "format_version": 1,
        "shape": list(shape),
        "spacing": list(spacing),
        "cxr_mode": cxr_mode,
        "cxr_view": "frontal",
        "cxr_size": cxr_size,
        "ct_dtype": "int16",
        "ct_unit": "HU",
        "volume_processor": processor_kwargs,
        "source_root": os.fspath(data_root),
    }
    # Every table is read and checked before anything is written.
    infos: dict[str, dict[str, Any]] = {split: {} for split in splits}
    tables = {split: ct_rate_table(data_root, split, storage_options=storage_options, release=release,
                                   keep_non_chest=keep_non_chest, info=infos[split]) for split in splits}
    params["release"] = release
    params["keep_non_chest"] = bool(keep_non_chest)
    params["keep_implausible"] = bool(keep_implausible)
    for split in splits:
        logging.getLogger(__name__).info("%s %s: %s release (--release %s)", data_root, split,
                                         infos[split]["release"], release)
    for split, table in tables.items():
        if table.empty:
            raise ValueError(f"{data_root}: the {split} split has no volume with both a report and labels.")
    # One listing of the data root (rank 0), its error raised on every rank.
    distributed.on_main_then_broadcast(lambda: _check_volumes_present(data_root, storage_options, tables))
    out = Path(out)
    record = _open_config(out, params)
    distributed.barrier()  # the folder and its config exist before any rank writes a shard

    worker = _VolumeWorker(data_root, storage_options, processor_kwargs, cxr_mode, cxr_size,
                           check_chest=not keep_implausible)
    features = preprocessed_features(shape, cxr_size)
    executor = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # The platform's default start method (fork on Linux, spawn on macOS/Windows), as torch's DataLoader; each
        # worker runs torch with one thread, as DataLoader workers do.
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(), initializer=_worker_init)
    results = {}
    try:
        for split in splits:
            results[split] = _preprocess_split(
                split, tables[split], out, features, worker, executor, workers, shard_size, flush_rows, progress,
                fingerprint=config_fingerprint({**params, "split": split, "resolved_release": infos[split]["release"]}),
                data_root=data_root, record=record, info=infos[split],
            )
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return results
