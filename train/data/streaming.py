"""`datasets` streaming of a CT-RATE layout, local or `hf://`: one decoded volume at a time."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from x2ctclip.train.data.release import NUM_FINDINGS
from x2ctclip.train.data.tables import TableRef
from x2ctclip.train.data.tables import ct_rate_records
from x2ctclip.train.data.release import group_key
from x2ctclip.train.data.tables import ct_rate_table
from x2ctclip.train.data.tables import read_ct_rate_volume
from x2ctclip.train.data.release import resolve_data_root
from x2ctclip.train.data.release import volume_stem



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
        groups.setdefault(group_key(name, level), []).append(index)
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
            from x2ctclip.train.data.preprocess import simulate_cxr_uint8

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
    handle = TableRef(root, split, storage_options, info["release"], keep_non_chest)
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
        ct_rate_records, features=_stream_features(), gen_kwargs={"names": names, "table": handle}, split=split
    )
    if shuffle_buffer_size is not None:
        dataset = dataset.shuffle(seed=seed, buffer_size=int(shuffle_buffer_size))
    if not decode:
        return dataset
    decoder = _DecodeCT(root, storage_options, volume_processor, cxr_mode, cxr_size, image_processor, validate_hu)
    return dataset.map(decoder, remove_columns=["path", "slope", "intercept", "xy_spacing", "z_spacing"])
