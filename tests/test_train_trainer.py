"""The generic training loop with a toy stage: data order across processes, the unused-parameter probe, groups."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from x2ctclip.train.training.config import TrainConfig
from x2ctclip.train.training.sampler import GlobalBatchSampler
from x2ctclip.train.training.trainer import Trainer, parameter_groups
from x2ctclip.train.training.stage import TrainingStage


class ToyStage(TrainingStage):
    """Rows are numbers; the model regresses them with a linear layer and owns an unused parameter."""

    def __init__(self, n_rows=10):
        self.n_rows = n_rows

    def epoch_indices(self, epoch):
        g = torch.Generator().manual_seed(100 + epoch)
        return torch.randperm(self.n_rows, generator=g).tolist()

    def train_dataset(self):
        return {i: {"x": torch.tensor([float(i)])} for i in range(self.n_rows)}

    def build_model(self):
        model = ToyModel()
        return model


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(1, 1)
        self.unused = nn.Linear(1, 1)

    def forward(self, x, return_loss=True):
        return SimpleNamespace(loss=(self.used(x) ** 2).mean())


def test_process_slices_tile_the_one_process_batches():
    stage = ToyStage(n_rows=10)
    one = list(GlobalBatchSampler(stage, batch_size=4, num_processes=1, rank=0, start=0, stop=5))
    two = [list(GlobalBatchSampler(stage, batch_size=2, num_processes=2, rank=r, start=0, stop=5)) for r in (0, 1)]
    # 10 rows, global batch 4: 2 micro-steps per epoch (2 rows dropped), epochs 0, 1 and the first of epoch 2.
    assert [b[0][1] for b in one] == [0, 0, 1, 1, 2]
    for step, batch in enumerate(one):
        assert two[0][step] + two[1][step] == batch
    # Starting at micro-step 3 gives the tail of the same stream (what a resumed run reads).
    assert list(GlobalBatchSampler(stage, 4, 1, 0, start=3, stop=5)) == one[3:]
    with pytest.raises(ValueError, match="lower the batch size"):
        GlobalBatchSampler(stage, 11, 1, 0, 0, 1).locate(0)


def test_probe_finds_parameters_without_gradient():
    stage = ToyStage()
    trainer = Trainer(TrainConfig(output_dir="unused", max_steps=1), stage)
    model = stage.build_model()

    class Keyed:
        def __getitems__(self, keys):
            return [stage.train_dataset()[k[0]] for k in keys]

    unused = trainer._probe_unused_parameters(model, [(0, 0, 0), (1, 0, 1)], Keyed(), torch.device("cpu"))
    assert unused == ["unused.weight", "unused.bias"]
    assert all(p.grad is None for p in model.parameters())


def test_weight_decay_skips_biases_and_frozen_parameters():
    model = ToyModel()
    model.unused.requires_grad_(False)
    groups = parameter_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 1] and [g["weight_decay"] for g in groups] == [0.1, 0.0]
    model.used.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        parameter_groups(model, 0.1)
