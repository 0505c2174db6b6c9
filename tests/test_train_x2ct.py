"""The X2CT-CLIP stage trainer on tiny inputs: what trains, what stays frozen, what is saved, reproducibility."""

import json

import pytest
import torch
from safetensors.torch import load_file

from scripts.train_fixtures import make_x2ct_inputs, x2ct_config

from x2ctclip import X2CTCLIPModel
from x2ctclip.modeling_ct import X2CTCLIPCTModel
from x2ctclip.train.training.x2ct_stage import train_x2ct


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_x2ct_inputs(tmp_path_factory.mktemp("x2ct_inputs"))


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_trains_only_the_cxr_tower_and_saves_a_loadable_model(inputs, tmp_path, monkeypatch):
    # A training step must touch no CT: the CT tower's forward is made to fail.
    def no_ct(*args, **kwargs):
        raise AssertionError("the X2CT stage ran the CT tower")

    monkeypatch.setattr(X2CTCLIPCTModel, "forward", no_ct)
    result = train_x2ct(x2ct_config(inputs, tmp_path / "run", max_steps=4))
    assert result.global_step == 4 and result.samples_seen == 16
    assert torch.isfinite(torch.tensor(result.train_loss))

    teacher = load_file(str(inputs["ctclip"] / "model.safetensors"))
    trained = _weights(tmp_path / "run")
    for name, value in teacher.items():  # CT and report towers, projections and logit scale: unchanged
        assert torch.equal(trained[name], value), name
    initial = X2CTCLIPModel.from_pretrained(tmp_path / "run" / "model")
    assert initial.config.towers == ["cxr", "ct", "text"]
    assert initial.config.loss_weights == {"ct_text": 0.0, "cxr_text": 1.0, "cxr_ct": 1.0}
    assert initial.config.freeze_ct_model and initial.config.freeze_text_model

    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(loaded, X2CTCLIPModel)
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "X2CT-CLIP" in card and "gamma=1.0" in card
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 1 + 4
    assert json.loads((tmp_path / "run" / "train_result.json").read_text())["global_step"] == 4


@pytest.mark.slow
def test_same_seed_gives_the_same_weights(inputs, tmp_path):
    a = _weights_after(inputs, tmp_path / "a", seed=5)
    b = _weights_after(inputs, tmp_path / "b", seed=5)
    c = _weights_after(inputs, tmp_path / "c", seed=6)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if k.startswith("cxr_"))


def _weights_after(inputs, run_dir, seed):
    train_x2ct(x2ct_config(inputs, run_dir, seed=seed, max_steps=3))
    return _weights(run_dir)


def test_cxr_only_baseline_and_accumulation(inputs, tmp_path):
    # 12 scans, 4 per micro-batch: 3 micro-batches per epoch; 5 epochs with accumulation 2 -> 7 optimiser steps.
    config = x2ct_config(inputs, tmp_path / "run", loss_cxr_ct_weight=0.0, gradient_accumulation_steps=2, max_steps=0,
                         num_epochs=5, mixed_precision="bf16")
    result = train_x2ct(config)
    assert result.global_step == 7 and result.samples_seen == 56
    header = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[0].split(",")
    assert "loss_cxr_text" in header and "loss_cxr_ct" not in header
    assert X2CTCLIPModel.from_pretrained(tmp_path / "run" / "model").config.loss_cxr_ct_weight == 0.0


def test_bad_inputs_are_clear_errors(inputs, tmp_path):
    with pytest.raises(ValueError, match="ctclip_model is required"):
        train_x2ct(x2ct_config(inputs, tmp_path / "a", ctclip_model=""))
    with pytest.raises(ValueError, match="lower the batch size"):
        train_x2ct(x2ct_config(inputs, tmp_path / "b", per_device_batch_size=64))
    with pytest.raises(ValueError, match="both 0"):
        x2ct_config(inputs, tmp_path / "c", loss_cxr_text_weight=0.0, loss_cxr_ct_weight=0.0)
