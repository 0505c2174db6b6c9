"""FSDP runs of the x2ct stage through ``accelerate launch --use_fsdp`` (the launch docs/training.md gives).

On 2 GPUs the stage trains sharded (transformer-based wrap on the towers' layer classes, full state dict for
``save_pretrained``) and ends with the weights of one process at the same global batch. On CPU processes Accelerate
(1.16) does not shard: its state turns FSDP on only for accelerator back ends, so a CPU launch with ``--use_fsdp``
trains as plain gloo data parallelism; the CPU test pins that down, so that the docs are updated the day it changes.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scripts.train_fixtures import one_process_run_and_two_process_config, run_launcher


WORKER = Path(__file__).resolve().parent / "scripts" / "fsdp_train_worker.py"
FSDP_FLAGS = [
    "--use_fsdp", "--fsdp_version", "1", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap", "SwinLayer,X2CTCLIPCTLayer,BertLayer",
    "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_use_orig_params", "true",
    "--fsdp_sharding_strategy", "FULL_SHARD",
]


def _launch(run_yaml: Path, extra_flags: list[str], env: dict) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *FSDP_FLAGS, *extra_flags, str(WORKER),
               str(run_yaml)]
    run_launcher(command, env)


def _two_process_run(tmp_path, extra_flags, env):
    _launch(one_process_run_and_two_process_config(tmp_path, max_steps=2), extra_flags, env)
    records = [json.loads((tmp_path / "two" / f"fsdp_rank{r}.json").read_text()) for r in (0, 1)]
    one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    return records


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP shards only across accelerators; needs 2 GPUs")
def test_fsdp_on_two_gpus_shards_the_cxr_tower_and_matches_one_process(tmp_path):
    records = _two_process_run(tmp_path, [], dict(os.environ))
    for record in records:
        assert record["distributed_type"] == "DistributedType.FSDP"
        assert "SwinLayer" in record["fsdp_units"]


@pytest.mark.slow
def test_fsdp_launch_on_cpu_processes_falls_back_to_gloo_data_parallelism(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the GPU test covers FSDP")
    # sync_module_states must be off on CPU: Accelerate refuses it there ("FSDP parameter initialization with
    # `sync_module_states=True` is not supported on cpu").
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    flags = ["--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false"]
    records = _two_process_run(tmp_path, flags, env)
    for record in records:
        assert record["num_processes"] == 2
        assert record["distributed_type"] == "DistributedType.MULTI_CPU"  # not FSDP: nothing is sharded
        assert record["fsdp_units"] == []
