"""Batch samplers: global batches that never put two reconstructions of one scan together."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from torch.utils.data import Dataset, Sampler
from x2ctclip.train.training.stage import TrainingStage


logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- data order
class GlobalBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields this process's micro-batches of keys ``(index, epoch, position)`` from micro-step ``start`` on.

    Epoch ``e`` has ``len(epoch_indices(e)) // global_batch`` micro-steps; micro-step ``j`` of it covers positions
    ``[j * G, (j + 1) * G)`` of the epoch's order (``G = batch_size * num_processes``), of which process ``rank``
    takes ``[j * G + rank * batch_size, j * G + (rank + 1) * batch_size)``.
    """

    def __init__(self, stage: TrainingStage, batch_size: int, num_processes: int, rank: int, start: int, stop: int):
        self.stage = stage
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.rank = rank
        self.start = start
        self.stop = stop
        self.global_batch = batch_size * num_processes

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.stage.epoch_indices(epoch)) // self.global_batch

    def locate(self, micro_step: int) -> tuple[int, int]:
        """(epoch, micro-step within the epoch) of a global micro-step number."""
        epoch = 0
        while True:
            n = self.steps_in_epoch(epoch)
            if n == 0:
                raise ValueError(
                    f"epoch {epoch} has fewer rows ({len(self.stage.epoch_indices(epoch))}) than one global batch "
                    f"({self.global_batch} = per_device_batch_size x processes): lower the batch size."
                )
            if micro_step < n:
                return epoch, micro_step
            micro_step -= n
            epoch += 1

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        if self.start >= self.stop:
            return
        epoch, j = self.locate(self.start)
        done = self.start
        while done < self.stop:
            order = list(self.stage.epoch_indices(epoch))
            n = len(order) // self.global_batch
            while j < n and done < self.stop:
                begin = j * self.global_batch + self.rank * self.batch_size
                yield [(int(order[p]), epoch, p) for p in range(begin, begin + self.batch_size)]
                j += 1
                done += 1
            epoch, j = epoch + 1, 0


class KeyedDataset(Dataset):
    """Wraps the stage's data set so that the DataLoader fetches keys, not integers (a whole micro-batch at once
    through ``__getitems__`` when the stage's data set has it: one Arrow read instead of one per row)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, key):
        return self.dataset[key]

    def __getitems__(self, keys):
        if hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(keys)
        return [self.dataset[k] for k in keys]
