"""The folders that preprocessing and the embedding cache write: loading them (memory-mapped Arrow), their
configs, the collator, and the sampler that keeps one reconstruction per scan in a batch."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from x2ctclip.train.data.release import NUM_FINDINGS, group_key
from x2ctclip.train.data.shards import ShardedSplitWriter
from x2ctclip.train.data.streaming import select_one_recon_per_scan

#: File name of the parameters of a preprocessed folder (``OUT/preprocess_config.json``).
PREPROCESS_CONFIG = "preprocess_config.json"
#: File name of the parameters of an embedding cache (``CACHE/cache_config.json``).
EMBEDDING_CACHE_CONFIG = "cache_config.json"


# ------------------------------------------------------------------------------------------- preprocessed datasets
def preprocessed_features(shape: Sequence[int], cxr_size: int):
    """``datasets.Features`` of a preprocessed split (docs/data_pipeline.md, "Preprocessing once"): ``ct`` int16
    ``shape`` (D, H, W) in HU, ``cxr`` uint8 ``(cxr_size, cxr_size)``."""
    # start-up: datasets loads only when a folder is read or written
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
    # start-up: datasets loads only when a folder is read or written
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
    from datasets import load_from_disk  # start-up: datasets loads only when a folder is read or written

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
        self.groups = len({group_key(n, level) for n in self.names})
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
