"""The shard plan and the writer of a split: atomic Arrow shards, resumable, finalised once.

Across the ranks of a ``torchrun`` job (:mod:`x2ctclip.train.distributed`): :func:`open_split_writer` lets rank 0
create the folder and its plan before the others check it, :meth:`ShardedSplitWriter.pending_owned` gives each rank
its own unfinished shards (shard ``i`` to rank ``i % world_size``), and :func:`finish_split` has rank 0 finalise the
split once every rank has finished its shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from x2ctclip.fileio import open_atomic, write_atomic
from x2ctclip.train import distributed
from x2ctclip.train.data.release import volume_stem


# ------------------------------------------------------------------------------------------------ writing shards
class _KeepOpen:
    """A write-only view of a file handle whose ``close`` only flushes: pyarrow closes the stream it writes to, and
    :func:`x2ctclip.fileio.open_atomic` must still fsync and rename the handle after that."""

    def __init__(self, handle):
        self._handle = handle
        self.closed = False
        self.mode = "wb"

    def write(self, data) -> int:
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()

    def tell(self) -> int:
        return self._handle.tell()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self._handle.flush()
        self.closed = True


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`x2ctclip.fileio.write_atomic`)."""
    write_atomic(path, text)


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
            atomic_write_text(plan_file, json.dumps(record))

    @property
    def num_shards(self) -> int:
        return len(self.plan)

    def shard_path(self, index: int) -> Path:
        return self.folder / f"data-{index:05d}-of-{self.num_shards:05d}.arrow"

    def is_done(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def pending(self) -> list[int]:
        return [i for i in range(self.num_shards) if not self.is_done(i)]

    def pending_owned(self) -> list[int]:
        """This rank's unfinished shards (all of them in a plain run), with the temporary files a killed run left
        for them removed (never renamed, so never part of the result; other ranks' files are left alone)."""
        mine = distributed.owned(self.pending())
        for index in mine:
            for name in (self.shard_path(index).name, self.skipped_path(index).name):
                for stale in self.folder.glob(f".{name}.*"):
                    stale.unlink(missing_ok=True)
        return mine

    def write_shard(self, index: int, rows: Iterable[Mapping[str, Any]], writer_batch_size: int = 8) -> int:
        """Write shard ``index`` from ``rows`` (dicts matching the features; exactly the planned rows, in order)."""
        from datasets.arrow_writer import ArrowWriter

        final = self.shard_path(index)
        expected = self.plan[index]
        position = written = 0
        skipped: list[dict[str, str]] = []
        # open_atomic: a temporary sibling, renamed to the final name only when the block succeeds.
        with open_atomic(final, "wb") as handle:
            writer = ArrowWriter(features=self.features, stream=_KeepOpen(handle), writer_batch_size=max(1, writer_batch_size))
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
                atomic_write_text(self.skipped_path(index), json.dumps(skipped, indent=2))
            else:
                self.skipped_path(index).unlink(missing_ok=True)
        distributed.shard_written_hook()
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
        atomic_write_text(self.folder / "dataset_info.json", json.dumps({k: info[k] for k in sorted(info)}, indent=2))
        atomic_write_text(self.folder / "state.json", json.dumps(state, indent=2, sort_keys=True))
        return load_from_disk(str(self.folder))


def open_split_writer(folder: str | os.PathLike, features, plan: list[list[str]], *, split: str,
                      fingerprint: str) -> ShardedSplitWriter:
    """:class:`ShardedSplitWriter` on every rank: rank 0 creates the folder and its plan first, the others then check
    the plan against theirs (so no two ranks race to create it)."""
    writer = None
    if distributed.is_main():
        writer = ShardedSplitWriter(folder, features, plan, split=split, fingerprint=fingerprint)
    distributed.barrier()
    if writer is None:
        writer = ShardedSplitWriter(folder, features, plan, split=split, fingerprint=fingerprint)
    return writer


def finish_split(writer: ShardedSplitWriter, description: str, on_main: Callable[[Any], None] | None = None):
    """Wait for every rank's shards, finalise the split on rank 0 (then ``on_main(dataset)`` there: the split's
    summary files), and return the finished split, memory-mapped, on every rank."""
    from datasets import load_from_disk

    distributed.barrier()

    def finalize():
        dataset = writer.finalize(description=description)
        if on_main is not None:
            on_main(dataset)

    distributed.on_main_then_broadcast(finalize)
    return load_from_disk(str(writer.folder))


def plan_shards(names: Sequence[str], shard_size: int) -> list[list[str]]:
    """Consecutive groups of ``shard_size`` names (the last may be shorter)."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}.")
    return [list(names[i : i + shard_size]) for i in range(0, len(names), shard_size)]
