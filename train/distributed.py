"""Ranks of a ``torchrun`` job for the data and evaluation commands (``preprocess``, ``cache-embeddings``, ``evaluate``).

``torchrun --nproc_per_node N -m x2ctclip.train.cli CMD ...`` sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``;
:func:`distributed_session` then opens a ``torch.distributed`` process group (NCCL when CUDA is available, else gloo)
for the command and closes it at the end. Without those variables (a plain ``x2ctclip CMD``) nothing is opened and
every helper below acts as the single process of a world of one: ``rank() == 0``, ``world_size() == 1``,
:func:`barrier` does nothing and a gather returns ``[obj]``.

The work split is static and deterministic (no scheduler): shard ``i`` of a split's plan belongs to rank
``i % world_size`` (:func:`owned`); batches of an evaluation are cut into one contiguous block per rank on batch
boundaries (:func:`batch_block`), so each rank runs exactly the batches one process would and the gathered result
equals the one-process result.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "KILL_HOOK_ENV",
    "TIMEOUT_ENV",
    "barrier",
    "batch_block",
    "broadcast_from_main",
    "distributed_session",
    "gather_objects",
    "gather_rows",
    "is_main",
    "local_rank",
    "on_main_then_broadcast",
    "owned",
    "rank",
    "shard_written_hook",
    "world_size",
]

T = TypeVar("T")

#: Minutes a rank waits at a barrier or a collective for the others (default 720: ranks of an unbalanced
#: ``preprocess`` may finish their shards hours apart).
TIMEOUT_ENV = "X2CTCLIP_DIST_TIMEOUT_MIN"
#: Test hook, read only by :func:`shard_written_hook`: ``"RANK:COUNT"`` makes rank ``RANK`` kill itself with SIGKILL
#: right after it has written its ``COUNT``-th shard (the resumption tests simulate a crashed machine with it).
KILL_HOOK_ENV = "X2CTCLIP_TEST_KILL_AFTER_SHARDS"

_shards_written = 0


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an int (set by torchrun).") from None


@contextlib.contextmanager
def distributed_session() -> Iterator[None]:
    """Open a process group when ``torchrun`` started this process with ``WORLD_SIZE`` > 1, close it at the end.

    NCCL (and ``torch.cuda.set_device(LOCAL_RANK)``, so that ``"cuda"`` means this rank's GPU) when CUDA is
    available, gloo on CPU. A group that is already open (a caller's own) is used and left open.
    """
    if _env_world_size() <= 1 or dist.is_initialized():
        yield
        return
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE is set but {name} is not: start the command with torchrun.")
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "nccl"
        torch.cuda.set_device(local_rank())
    minutes = float(os.environ.get(TIMEOUT_ENV, "720"))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes))
    try:
        yield
    finally:
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if world_size() > 1 or "LOCAL_RANK" in os.environ else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def owned(indices: Sequence[int], num_ranks: int | None = None, this_rank: int | None = None) -> list[int]:
    """The shard indices of ``indices`` that belong to a rank: shard ``i`` goes to rank ``i % num_ranks``
    (round robin keeps the ranks' shares within one shard of each other)."""
    num_ranks = world_size() if num_ranks is None else int(num_ranks)
    this_rank = rank() if this_rank is None else int(this_rank)
    return [int(i) for i in indices if int(i) % num_ranks == this_rank]


def batch_block(n: int, batch_size: int, num_ranks: int | None = None, this_rank: int | None = None) -> tuple[int, int]:
    """Rows ``[start, stop)`` of this rank when ``n`` rows are cut into batches of ``batch_size``: the batches are
    dealt as contiguous blocks (rank 0 the first ones), so concatenating the blocks in rank order gives the rows in
    order, and every batch is the one a single process would run (bit-identical outputs)."""
    num_ranks = world_size() if num_ranks is None else int(num_ranks)
    this_rank = rank() if this_rank is None else int(this_rank)
    num_batches = -(-int(n) // int(batch_size))
    per, extra = divmod(num_batches, num_ranks)
    first = this_rank * per + min(this_rank, extra)
    last = first + per + (1 if this_rank < extra else 0)
    return min(first * batch_size, n), min(last * batch_size, n)


def gather_objects(obj: T) -> list[T]:
    """``obj`` of every rank, in rank order (``[obj]`` in a plain run)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's CPU tensor along dim 0 in rank order (with :func:`batch_block`: the rows in order)."""
    if world_size() == 1:
        return tensor
    parts = gather_objects(tensor.cpu())
    return torch.cat(parts)


def broadcast_from_main(obj: T | None) -> T:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj  # type: ignore[return-value]
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main_then_broadcast(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (it may write files) and return its result on every rank; an exception on rank 0 is
    raised on every rank, so no rank is left waiting for the others."""
    if world_size() == 1:
        return fn()
    result: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            result = (True, fn())
        except Exception as error:  # noqa: BLE001 - sent to the other ranks, then raised everywhere
            result = (False, error)
    ok, value = broadcast_from_main(result)
    if not ok:
        raise value
    return value


def shard_written_hook() -> None:
    """Called once per shard a process has finished. Test hook (:data:`KILL_HOOK_ENV`): SIGKILL this process after
    its ``COUNT``-th shard when it is rank ``RANK``; otherwise it only counts."""
    global _shards_written
    _shards_written += 1
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if int(target) == rank() and _shards_written >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
