"""Checkpoints: a run killed with SIGKILL and resumed with ``resume: latest`` ends with exactly the weights of an
uninterrupted run; checkpoints are complete or ignored; the CSV log matches."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scripts.train_fixtures import make_x2ct_inputs, x2ct_config

from x2ctclip.train.training.trackers import CSVLogger
from x2ctclip.train.training.trainer import find_checkpoint
from x2ctclip.train.training.x2ct_stage import train_x2ct

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.slow
def test_sigkill_then_resume_latest_equals_uninterrupted_run(tmp_path):
    inputs = make_x2ct_inputs(tmp_path / "inputs")
    # Dropout-free tiny Swin, augmentation on: the resumed run must also replay the augmentation draws.
    common = dict(max_steps=6, save_steps=2, save_total_limit=2, logging_steps=1)
    reference = train_x2ct(x2ct_config(inputs, tmp_path / "reference", **common))
    assert reference.global_step == 6

    run = tmp_path / "killed"
    config = x2ct_config(inputs, run, **common)
    run.mkdir()
    config.to_yaml(run / "run.yaml")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_until_killed.py"), str(run / "run.yaml"), "5"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (run / "model").exists()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000002", "checkpoint-0000004"]
    # A half-written checkpoint (as left by a kill during saving) is ignored and cleaned up.
    (run / ".tmp-checkpoint-0000006").mkdir()
    (run / "checkpoint-0000009").mkdir()  # no trainer_state.json: incomplete, never chosen
    assert find_checkpoint(run, "latest").name == "checkpoint-0000004"

    config.resume = "latest"
    resumed = train_x2ct(config)
    assert resumed.global_step == 6 and resumed.resumed_from.endswith("checkpoint-0000004")
    assert not (run / ".tmp-checkpoint-0000006").exists()

    expected = load_file(str(tmp_path / "reference" / "model" / "model.safetensors"))
    got = load_file(str(run / "model" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # The log has each step once, with the values of the uninterrupted run.
    ref_rows = (tmp_path / "reference" / "train_log.csv").read_text().splitlines()
    rows = (run / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    loss_col = ref_rows[0].split(",").index("loss")
    assert [r.split(",")[loss_col] for r in rows[1:]] == [r.split(",")[loss_col] for r in ref_rows[1:]]


def test_resume_refuses_another_batch_layout(tmp_path):
    inputs = make_x2ct_inputs(tmp_path / "inputs")
    train_x2ct(x2ct_config(inputs, tmp_path / "run", max_steps=2, save_steps=1))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    with pytest.raises(ValueError, match="global batch"):
        train_x2ct(x2ct_config(inputs, tmp_path / "run", max_steps=3, per_device_batch_size=2, resume="latest"))
    with pytest.raises(FileNotFoundError):
        find_checkpoint(tmp_path / "run", str(tmp_path / "nope"))


def test_csv_logger_grows_header_and_truncates(tmp_path):
    log = CSVLogger(tmp_path / "log.csv")
    log.log(1, {"loss": 1.0})
    log.log(2, {"loss": 0.5, "lr": 0.1})
    log.log(3, {"loss": 0.25})
    log.truncate(2)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines == ["step,loss,lr", "1,1.0,", "2,0.5,0.1"]
