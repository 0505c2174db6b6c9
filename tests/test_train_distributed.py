"""Data parallelism: two CPU processes (torchrun, gloo) with half the batch each end with the weights of one process
with the whole global batch (gathered negatives + DDP gradient averaging + each process taking its half)."""

import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from scripts.train_fixtures import one_process_run_and_two_process_config, run_launcher



@pytest.mark.slow
def test_two_processes_equal_one_process_at_the_same_global_batch(tmp_path):
    # Tiny Swin without dropout or stochastic depth, augmentation on (seeded per row, not per process).
    run_yaml = one_process_run_and_two_process_config(tmp_path, max_steps=3)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_launcher([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "-m", "x2ctclip.train.cli", "train", "x2ct", "--config", str(run_yaml)], env)
    one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert one.keys() == two.keys()
    changed = [k for k in one if k.startswith("cxr_")]
    assert changed
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    # The logged losses (mean over processes) match too.
    col = lambda text, name: [r.split(",")[text[0].split(",").index(name)] for r in text[1:]]  # noqa: E731
    log_one = (tmp_path / "one" / "train_log.csv").read_text().splitlines()
    log_two = (tmp_path / "two" / "train_log.csv").read_text().splitlines()
    for a, b in zip(col(log_one, "loss"), col(log_two, "loss")):
        assert abs(float(a) - float(b)) < 1e-4
