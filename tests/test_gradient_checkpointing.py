"""Activation (gradient) checkpointing: the towers give the same gradients with and without it, and both trainer
stages turn it on in the towers they train (``--gradient-checkpointing``) without changing what they learn."""

import argparse

import pytest
import torch
from safetensors.torch import load_file

from scripts.train_fixtures import make_x2ct_inputs, x2ct_config
from tiny_configs import TINY_RESNET, tiny_config

from x2ctclip import X2CTCLIPModel
from x2ctclip.train.training.config import X2CTTrainConfig, add_config_arguments, config_from_args
from x2ctclip.train.training.stage import enable_gradient_checkpointing
from x2ctclip.train.training.x2ct_stage import X2CTStage, train_x2ct

TOWERS = ("cxr", "ct", "text")


def _all_trainable_model() -> X2CTCLIPModel:
    config = tiny_config(
        freeze_ct_model=False, freeze_text_model=False, loss_ct_text_weight=1.0, loss_cxr_text_weight=1.0,
        loss_cxr_ct_weight=1.0, ct_config=dict(tiny_config().ct_config.to_dict(), use_vq=False),
    )
    # No dropout or random layer drop: two backward passes must see the same network.
    config.cxr_config.drop_path_rate = 0.0
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    return X2CTCLIPModel(config).train()


def _gradients(model: X2CTCLIPModel, batch: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**batch, return_loss=True).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _checkpointed_layers(module: torch.nn.Module) -> list[str]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [n for n, m in module.named_modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


def test_every_tower_gives_the_same_gradients_with_checkpointing():
    model = _all_trainable_model()
    g = torch.Generator().manual_seed(1)
    batch = dict(
        pixel_values=torch.randn(3, 3, 32, 32, generator=g),
        ct_values=torch.rand(3, 1, 8, 16, 16, generator=g) * 2 - 1,
        input_ids=torch.randint(2, 99, (3, 12), generator=g),
        attention_mask=torch.ones(3, 12, dtype=torch.long),
    )
    plain = _gradients(model, batch)
    assert enable_gradient_checkpointing(model, TOWERS) == list(TOWERS)
    for tower in TOWERS:  # the CT tower's layers, Swin's and BERT's all recompute now
        assert _checkpointed_layers(getattr(model, f"{tower}_model")), tower
    checkpointed = _gradients(model, batch)
    assert plain.keys() == checkpointed.keys()
    assert any(k.startswith("ct_model.spatial_encoder") for k in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_a_tower_without_checkpointing_is_a_clear_error():
    model = X2CTCLIPModel(tiny_config(cxr=dict(TINY_RESNET)))
    with pytest.raises(ValueError, match="cxr tower \\(ResNetModel\\) does not support it"):
        enable_gradient_checkpointing(model, ["cxr"])


def test_flag_on_the_command_line():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, X2CTTrainConfig)
    assert config_from_args(X2CTTrainConfig, parser.parse_args(["--gradient-checkpointing"])).gradient_checkpointing
    assert not config_from_args(X2CTTrainConfig, parser.parse_args([])).gradient_checkpointing


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_x2ct_inputs(tmp_path_factory.mktemp("gc_inputs"))


def test_x2ct_stage_checkpoints_the_cxr_tower_and_learns_the_same_weights(inputs, tmp_path):
    from accelerate.state import AcceleratorState

    config = x2ct_config(inputs, tmp_path / "gc", gradient_checkpointing=True, max_steps=2)
    stage = X2CTStage(config)
    stage.setup(config)
    model = stage.build_model()
    assert _checkpointed_layers(model.cxr_model)
    assert not _checkpointed_layers(model.ct_model) and not _checkpointed_layers(model.text_model)  # frozen, cached

    AcceleratorState._reset_state(True)
    train_x2ct(x2ct_config(inputs, tmp_path / "plain", max_steps=2))
    AcceleratorState._reset_state(True)
    train_x2ct(config)
    plain = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))
    checkpointed = load_file(str(tmp_path / "gc" / "model" / "model.safetensors"))
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("text_training, towers", [("full", ("ct", "text")), ("frozen", ("ct",))])
def test_ctclip_stage_checkpoints_the_towers_it_trains(tmp_path, text_training, towers):
    from scripts.train_fixtures import make_preprocessed

    from x2ctclip.processors import build_wordpiece_tokenizer
    from x2ctclip.train.data.folders import load_preprocessed
    from x2ctclip.train.training.config import CTCLIPTrainConfig
    from x2ctclip.train.training.ctclip_stage import CTCLIPStage

    data = make_preprocessed(tmp_path / "data", scans={"train": 4})
    reports = list(load_preprocessed(data, "train", columns=["report"])["report"])
    build_wordpiece_tokenizer(reports, vocab_size=300).save_pretrained(tmp_path / "tok")
    config = CTCLIPTrainConfig(
        output_dir=str(tmp_path / "run"), data_dir=str(data), ct_preset="tiny", projection_dim=16, text_model=None,
        text_preset="tiny", tokenizer=str(tmp_path / "tok"), text_training=text_training, max_text_length=64,
        eval_split=None, progress_bar=False, gradient_checkpointing=True,
    )
    stage = CTCLIPStage(config)
    stage.setup(config)
    model = stage.build_model()
    for tower in ("ct", "text"):
        assert bool(_checkpointed_layers(getattr(model, f"{tower}_model"))) == (tower in towers), tower
