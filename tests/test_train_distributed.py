"""Data parallelism: two CPU processes (torchrun, gloo) with half the batch each end with the weights of one process
with the whole global batch (gathered negatives + DDP gradient averaging + each process taking its half)."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from scripts.train_fixtures import make_x2ct_inputs, x2ct_config

from x2ctclip.train.training.x2ct_stage import train_x2ct


@pytest.mark.slow
def test_two_processes_equal_one_process_at_the_same_global_batch(tmp_path):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    inputs = make_x2ct_inputs(tmp_path / "inputs")
    # Tiny Swin without dropout or stochastic depth, augmentation on (seeded per row, not per process).
    common = dict(max_steps=3, save_steps=0, logging_steps=1)
    train_x2ct(x2ct_config(inputs, tmp_path / "one", per_device_batch_size=8, **common))
    AcceleratorState._reset_state(True)

    config = x2ct_config(inputs, tmp_path / "two", per_device_batch_size=4, **common)
    (tmp_path / "two").mkdir()
    config.to_yaml(tmp_path / "two" / "run.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Own process group, so that a timeout kills the launcher *and* its workers.
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "x2ctclip.train.cli", "train", "x2ct", "--config", str(tmp_path / "two" / "run.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-4000:]
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
