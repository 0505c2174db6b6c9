"""Cache the frozen CT and report latents of a preprocessed CT-RATE folder (``x2ctclip cache-embeddings``).

X2CT-CLIP keeps CT-CLIP's CT tower and report tower frozen, so their latents are the same every epoch: computing
them once per reconstruction turns each training step into a CXR-tower step (``benchmarks/bench_cached_training.py``
measures the saving). The cache is ``CACHE/{split}/`` (``datasets.save_to_disk`` layout), one row per
reconstruction, in the order of the preprocessed split::

    VolumeName, scan_id, labels int8[18], ct_embeds float32[projection_dim], text_embeds float32[projection_dim]

``ct_embeds`` / ``text_embeds`` are ``model.get_ct_features(...).pooler_output`` /
``model.get_text_features(...).pooler_output`` L2-normalised (what :class:`x2ctclip.X2CTCLIPModel` compares).
``CACHE/cache_config.json`` records the model folder, the SHA-256 of its ``config.json`` and weights index, the
tokenizer, the data folder and its preprocessing parameters.

Resumable and atomic: the rows are planned as shards of ``shard_size`` rows; each shard is written under a temporary
name and renamed when complete, so a run killed at any moment leaves only complete shards, and a restart computes
only the missing ones (with the same batches, hence bit-identical latents on the same device). Restarting against
another model, tokenizer or data folder is refused.

Under ``torchrun --nproc_per_node N`` every rank loads the frozen towers (eval mode, no gradients) on its own device
(``cuda:LOCAL_RANK`` by default) and computes the shards ``i`` with ``i % N == r``, one batch at a time; batches never
cross a shard, so the latents are those of one process. Rank 0 finalises each split; ``cache_config.json`` records
``world_size``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from x2ctclip.fileio import write_json_atomic
from x2ctclip.train import distributed
from x2ctclip.train.data.folders import (
    EMBEDDING_CACHE_CONFIG,
    PREPROCESS_CONFIG,
    ct_values_from_ct,
    embedding_cache_features,
    load_preprocessed,
    read_ct,
    read_folder_config,
)
from x2ctclip.train.data.preprocess import RUN_KEYS
from x2ctclip.train.data.shards import config_fingerprint, finish_split, open_split_writer, plan_shards
from x2ctclip.train.progress import progress_bar

__all__ = ["cache_embeddings", "model_fingerprint"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """SHA-256 of a model folder's ``config.json`` and of its weights' size and first MiB (cheap, yet changes when
    the model is retrained or replaced)."""
    folder = Path(model_dir)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for name in _WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(str(path.stat().st_size).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def _parse_device(device):
    """``None`` -> CUDA when available, else CPU; a name torch does not know, or an absent CUDA -> ``ValueError``."""
    import torch

    if device is None:  # under torchrun: this rank's GPU
        return torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps).") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine.")
    return parsed


def _load_model(model_dir: Path, device):
    from x2ctclip import X2CTCLIPModel

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a folder saved by X2CTCLIPModel.save_pretrained.")
    model = X2CTCLIPModel.from_pretrained(str(model_dir))
    missing = [t for t in ("ct", "text") if getattr(model, f"{t}_model") is None]
    if missing:
        raise ValueError(f"{model_dir}: the model has no {' / '.join(missing)} tower (towers {model.config.towers}).")
    return model.to(device).eval().requires_grad_(False)  # frozen towers


def _load_tokenizer(model_dir: Path, tokenizer: str | os.PathLike | None):
    from x2ctclip.processors.tokenization import load_report_tokenizer

    source = Path(tokenizer) if tokenizer is not None else model_dir
    try:
        return load_report_tokenizer(source), str(source)
    except FileNotFoundError as error:
        if tokenizer is None:
            raise FileNotFoundError(f"{model_dir}: no tokenizer files in the model folder; pass --tokenizer DIR ({error})") from None
        raise


def _check_ct_shape(model, shape: Sequence[int], data_dir: Path) -> None:
    ct = model.config.ct_config
    depth, height, width = (int(n) for n in shape)
    if height != ct.image_size or width != ct.image_size or depth % ct.temporal_patch_size:
        raise ValueError(
            f"{data_dir}: volumes of {depth} x {height} x {width} do not fit the model's CT tower, which takes "
            f"D x {ct.image_size} x {ct.image_size} with D a multiple of {ct.temporal_patch_size}; preprocess again "
            "with a matching --shape."
        )


def _text_length(model, tokenizer) -> int:
    limits = [512, int(getattr(model.config.text_config, "max_position_embeddings", 512))]
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 10**6:
        limits.append(int(tokenizer.model_max_length))
    return min(limits)


def _write_owned_shards(writer, encode, split: str, shard_size: int, progress) -> tuple[int, float]:
    """This rank's pending shards; returns ``(volumes computed, seconds)``."""
    mine = distributed.owned(range(writer.num_shards))
    pending = writer.pending_owned()
    total = sum(len(writer.plan[i]) for i in mine)
    done_rows = total - sum(len(writer.plan[i]) for i in pending)
    starts = np.cumsum([0] + [len(s) for s in writer.plan])
    where = f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.world_size() > 1 else ""
    began = time.perf_counter()
    disable = None if progress is None else not progress
    with progress_bar(total, done_rows, f"cache {split}{where}", "vol", disable) as bar:
        for index in pending:
            rows = encode(int(starts[index]), int(starts[index + 1]), bar=bar)
            writer.write_shard(index, rows, writer_batch_size=shard_size)
    return total - done_rows, time.perf_counter() - began


def _encode_batches(model, tokenizer, dataset, start: int, stop: int, *, batch_size: int, max_length: int, device,
                    bar, bf16: bool = False):
    """Rows ``start:stop`` of the preprocessed split -> cache rows (a generator; one batch in memory at a time).
    ``bf16``: the towers run under bfloat16 autocast (latents are stored as float32)."""
    import torch
    import torch.nn.functional as F

    from x2ctclip.processors.tokenization import tokenize_reports

    for begin in range(start, stop, batch_size):
        end = min(begin + batch_size, stop)
        batch = dataset.select_columns(["VolumeName", "scan_id", "labels", "report"])[begin:end]
        ct_values = ct_values_from_ct(read_ct(dataset, range(begin, end)), device=device)
        tokens = tokenize_reports(tokenizer, [str(r) for r in batch["report"]], max_length=max_length).to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            ct = model.get_ct_features(ct_values).pooler_output
            text = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output
            ct = F.normalize(ct.float(), dim=-1).cpu().numpy()
            text = F.normalize(text.float(), dim=-1).cpu().numpy()
        for i in range(end - begin):
            yield {
                "VolumeName": str(batch["VolumeName"][i]),
                "scan_id": str(batch["scan_id"][i]),
                "labels": np.asarray(batch["labels"][i], dtype=np.int8),
                "ct_embeds": ct[i],
                "text_embeds": text[i],
            }
        bar.update(end - begin)


def cache_embeddings(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    batch_size: int = 8,
    tokenizer: str | os.PathLike | None = None,
    device: str | None = None,
    shard_size: int = 1024,
    progress: bool | None = None,
    bf16: bool = False,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the frozen CT and report towers once over preprocessed splits and store the L2-normalised latents.

    Args:
        model_dir: an X2CT-CLIP model folder (``save_pretrained``) with CT and report towers.
        data_dir: the ``OUT`` folder of ``x2ctclip preprocess``.
        out: the cache folder (created; a folder of an interrupted run with the same inputs is resumed).
        splits: splits to cache (default: every finished split of ``data_dir``).
        batch_size: volumes per forward pass.
        tokenizer: folder of the report tokenizer (default: the model folder).
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA when available).
        shard_size: rows per Arrow shard (the unit of resumption).
        progress: show a tqdm bar (default: tqdm's own choice).
        bf16: run the towers under bfloat16 autocast (recorded in the parameters: a cache is made one way only).
        stats: filled with ``{split: {"volumes": n, "seconds": s, "volumes_per_s": v, "world_size": N}}``: the
            volumes computed by this run over all ranks and the wall time of the slowest rank.

    Returns:
        ``{split: datasets.Dataset}`` of the finished cache splits.

    Raises:
        FileNotFoundError: missing model, tokenizer or preprocessed split.
        ValueError: volumes that do not fit the CT tower, a cache folder of another run, duplicated volume names.
    """
    import torch

    import x2ctclip

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    device = _parse_device(device)
    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    data_config = read_folder_config(data_dir, PREPROCESS_CONFIG)
    if splits is None:
        splits = [s for s in data_config.get("splits", {}) if (data_dir / s / "state.json").is_file()]
        if not splits:
            raise FileNotFoundError(f"{data_dir}: no finished preprocessed split.")
    splits = list(dict.fromkeys(splits))
    model = _load_model(model_dir, device)
    _check_ct_shape(model, data_config["shape"], data_dir)
    report_tokenizer, tokenizer_source = _load_tokenizer(model_dir, tokenizer)
    max_length = _text_length(model, report_tokenizer)

    params = {
        "model": str(model_dir.resolve()),
        "model_fingerprint": model_fingerprint(model_dir),
        "tokenizer": str(Path(tokenizer_source).resolve()),
        "max_length": max_length,
        "data": str(data_dir.resolve()),
        "data_fingerprint": config_fingerprint({k: v for k, v in data_config.items() if k not in RUN_KEYS}),
        "projection_dim": int(model.config.projection_dim),
        "normalized": True,
    }
    if bf16:  # only when on, so that caches made before the option keep their parameters
        params["autocast"] = "bfloat16"
    config_path = out / EMBEDDING_CACHE_CONFIG
    previous = json.loads(config_path.read_text()) if config_path.is_file() else None
    if previous is not None and previous.get("parameters") != params:
        before = previous.get("parameters", {})
        changed = sorted(k for k in {*params, *before} if before.get(k) != params.get(k))
        raise ValueError(f"{out}: a cache made with other inputs ({', '.join(changed)} differ); use a new --out folder.")
    record = previous or {"parameters": params, "splits": {}}
    record["versions"] = {"x2ctclip": x2ctclip.__version__, "torch": torch.__version__}
    record["world_size"] = distributed.world_size()
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config_path, record)
    distributed.barrier()

    features = embedding_cache_features(params["projection_dim"])
    results = {}
    for split in splits:
        dataset = load_preprocessed(data_dir, split, columns=["VolumeName", "scan_id", "labels", "report", "ct"])
        names = [str(n) for n in dataset.with_format(None, columns=["VolumeName"])["VolumeName"]]
        if len(set(names)) != len(names):
            raise ValueError(f"{data_dir / split}: duplicated VolumeName values; the cache needs one row per volume.")
        writer = open_split_writer(out / split, features, plan_shards(names, shard_size), split=split,
                                   fingerprint=config_fingerprint({**params, "split": split}))
        encode = functools.partial(_encode_batches, model, report_tokenizer, dataset, batch_size=batch_size,
                                   max_length=max_length, device=device, bf16=bf16)
        computed = distributed.gather_objects(_write_owned_shards(writer, encode, split, shard_size, progress))

        def summarise(dataset, split=split) -> None:
            record["splits"][split] = {"num_rows": dataset.num_rows}
            write_json_atomic(config_path, record)

        results[split] = finish_split(writer, f"X2CT-CLIP latents of {data_dir / split}", summarise)
        volumes, seconds = sum(n for n, _ in computed), max(t for _, t in computed)
        rate = volumes / seconds if seconds > 0 and volumes else 0.0
        logging.getLogger(__name__).info("cache %s: %d volumes in %.1f s (%.2f volumes/s over %d processes)", split,
                                         volumes, seconds, rate, distributed.world_size())
        if stats is not None:
            stats[split] = {"volumes": volumes, "seconds": seconds, "volumes_per_s": rate,
                            "world_size": distributed.world_size()}
    return results
