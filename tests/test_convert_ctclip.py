"""CT-CLIP -> X2CT-CLIP conversion: key coverage of the official checkpoint, parity with the original CT-CLIP numbers
(../shared/reference/ctclip, produced by CT-CLIP's own code), error reporting, and the ``x2ctclip convert-ctclip`` CLI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, BertTokenizer

import x2ctclip.modeling_ct as modeling_ct
from x2ctclip import X2CTCLIPModel
from x2ctclip.convert_ctclip import (
    convert_ctclip_checkpoint,
    convert_ctclip_state_dict,
    ctclip_config,
    load_ctclip_config_json,
    plan_ctclip_conversion,
)
from x2ctclip.train.cli.app import main as cli_main

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ctclip"
TINY_WEIGHTS = REFERENCE / "ctclip_tiny.ctclip_state_dict.safetensors"
TINY_IO = REFERENCE / "ctclip_tiny.io.safetensors"
TINY_CONFIG = REFERENCE / "ctclip_tiny.json"
FULL_KEYS = REFERENCE / "ctclip_full_keys.json"


@pytest.fixture(scope="module")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"needs the CT-CLIP reference vectors in {REFERENCE}, absent on this machine")
    return REFERENCE


@pytest.fixture(scope="module")
def tiny_state_dict(reference) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(TINY_WEIGHTS))


@pytest.fixture(scope="module")
def tiny_io(reference) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(TINY_IO))


@pytest.fixture(scope="module")
def tiny_config(reference):
    return ctclip_config(**load_ctclip_config_json(TINY_CONFIG), temperature=2.0)


@pytest.fixture(scope="module")
def converted_dir(reference, tmp_path_factory) -> Path:
    return convert_ctclip_checkpoint(TINY_WEIGHTS, tmp_path_factory.mktemp("conv") / "ctclip-tiny", config_path=TINY_CONFIG)


# ----------------------------------------------------------------------------------------- key coverage (no weights)
def test_official_checkpoint_keys_are_all_accounted_for(reference):
    """Every key of the official CT-CLIP checkpoint maps or is knowingly dropped, and every tensor of the model is fed."""
    shapes = json.loads(FULL_KEYS.read_text())["state_dict_keys"]
    shapes["text_transformer.embeddings.position_ids"] = [1, 512]  # saved by transformers 4.30
    plan = plan_ctclip_conversion(shapes, ctclip_config())  # raises on unknown / missing / mismatched
    assert set(plan.mapping) | set(plan.dropped) == set(shapes)
    assert not set(plan.mapping) & set(plan.dropped)
    assert plan.mapping["to_visual_latent.weight"] == ["ct_projection.weight"]
    assert plan.mapping["temperature"] == ["logit_scale"]
    assert plan.mapping["text_transformer.pooler.dense.weight"] == ["text_model.pooler.dense.weight"]
    assert plan.mapping["visual_transformer.enc_temporal_transformer.layers.3.1.to_kv.weight"] == [
        "ct_model.temporal_encoder.layers.3.attention.k_proj.weight",
        "ct_model.temporal_encoder.layers.3.attention.v_proj.weight",
    ]
    dropped = set(plan.dropped)
    for key in (
        "to_visual_latent_extra.weight",
        "to_text_latent_extra.weight",
        "visual_transformer.to_pixels.0.weight",
        "visual_transformer.to_pixels_first_frame.0.bias",
        "visual_transformer.to_patch_emb_first_frame.2.weight",
        "visual_transformer.vq._codebook.cluster_size",
        "visual_transformer.vq._codebook.initted",
        "text_transformer.embeddings.position_ids",
    ):
        assert key in dropped, key
    # nothing of the encoder's trained path is dropped
    assert not any(k.endswith(("to_q.weight", "to_kv.weight", "dsconv.weight", "q_scale", "norm.gamma")) for k in dropped
                   if ".context_norm." not in k)


def test_key_problems_are_listed(reference):
    shapes = json.loads(FULL_KEYS.read_text())["state_dict_keys"]
    shapes["visual_transformer.enc_spatial_transformer.layers.0.1.to_qq.weight"] = [256, 512]
    del shapes["to_text_latent.weight"]
    shapes["to_visual_latent.weight"] = [512, 1000]
    with pytest.raises(ValueError) as err:
        plan_ctclip_conversion(shapes, ctclip_config(), source="bad.pt")
    message = str(err.value)
    assert "bad.pt" in message
    assert "layers.0.1.to_qq.weight" in message
    assert "text_projection.weight" in message  # missing
    assert "to_visual_latent.weight: checkpoint [512, 1000], model expects [512, 294912]" in message


def test_config_json_rejects_unknown_ctvit_arguments(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": {"ctvit": {"dim": 64, "wobble": 3}, "dim_latent": 8}}))
    with pytest.raises(ValueError, match="wobble"):
        ctclip_config(**load_ctclip_config_json(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="c.json"):
        load_ctclip_config_json(path)


# ----------------------------------------------------------------------------------------- parity with CT-CLIP
def test_converted_model_reproduces_ctclip(converted_dir, tiny_io):
    model = AutoModel.from_pretrained(converted_dir).eval()
    assert isinstance(model, X2CTCLIPModel)
    assert model.config.towers == ["ct", "text"] and model.cxr_model is None
    with torch.no_grad():
        ct = model.get_ct_features(tiny_io["volume"])
        text = model.get_text_features(tiny_io["input_ids"], tiny_io["attention_mask"])
    diffs = {
        "ct_encoded_tokens": (ct.last_hidden_state - tiny_io["ct_encoded_tokens"]).abs().max().item(),
        "image_latents": (F.normalize(ct.pooler_output, dim=-1) - tiny_io["image_latents"]).abs().max().item(),
        "text_latents": (F.normalize(text.pooler_output, dim=-1) - tiny_io["text_latents"]).abs().max().item(),
        "temperature_exp": (model.logit_scale.exp() - tiny_io["temperature_exp"]).abs().max().item(),
    }
    print("max |x2ctclip - CT-CLIP|:", diffs)
    assert all(value <= 1e-4 for value in diffs.values()), diffs


def test_ct_tower_alone_reproduces_ctclip_tokens(tiny_state_dict, tiny_io, tiny_config):
    converted = convert_ctclip_state_dict(tiny_state_dict, tiny_config)
    ct_model = modeling_ct.X2CTCLIPCTModel(tiny_config.ct_config).eval()
    ct_model.load_state_dict({k[len("ct_model."):]: v for k, v in converted.items() if k.startswith("ct_model.")})
    with torch.no_grad():
        tokens = ct_model(tiny_io["volume"]).last_hidden_state
    torch.testing.assert_close(tokens, tiny_io["ct_encoded_tokens"], rtol=0, atol=1e-4)


def _temporal_peg_on_the_true_grid(self, hidden_states, grid_shape):
    """The temporal PEG without CT-CLIP's view quirk: tokens laid out (b h w) t are permuted to (b, t, h, w)."""
    b, t, h, w = grid_shape
    n, length, dim = hidden_states.shape
    if length == h * w:  # spatial transformer: the view is already right
        return _ORIGINAL_PEG(self, hidden_states, grid_shape)
    grid = hidden_states.reshape(b, h, w, t, dim).permute(0, 3, 1, 2, 4).reshape(b * t, h * w, dim)
    out = _ORIGINAL_PEG(self, grid, grid_shape)
    return out.reshape(b, t, h, w, dim).permute(0, 2, 3, 1, 4).reshape(n, length, dim)


_ORIGINAL_PEG = modeling_ct.X2CTCLIPCTPositionalConvolution.forward


def _keys_from_normalised_input(self, hidden_states, attn_bias=None, output_attentions=False):
    """Attention without CT-CLIP's quirk: keys and values read the normalised input too."""
    normed = F.layer_norm(hidden_states, hidden_states.shape[-1:], self.norm.weight)
    n, length, _ = hidden_states.shape
    split = lambda y: y.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
    q = F.normalize(split(self.q_proj(normed)), dim=-1) * self.q_scale
    k = F.normalize(split(self.k_proj(normed)), dim=-1) * self.k_scale
    mask = None if attn_bias is None else attn_bias.unsqueeze(0)
    out = F.scaled_dot_product_attention(q, k, split(self.v_proj(normed)), attn_mask=mask, scale=self.logit_scale)
    return self.out_proj(out.transpose(1, 2).reshape(n, length, -1)), None  # (output, weights) as the module returns


@pytest.mark.parametrize(
    "target, replacement",
    [
        (modeling_ct.X2CTCLIPCTPositionalConvolution, _temporal_peg_on_the_true_grid),
        (modeling_ct.X2CTCLIPCTAttention, _keys_from_normalised_input),
    ],
    ids=["temporal-peg-view", "unnormalised-keys"],
)
def test_reference_detects_a_missing_quirk(tiny_state_dict, tiny_io, tiny_config, monkeypatch, target, replacement):
    """The parity test is sharp: "fixing" either CT-CLIP quirk changes the quantised tokens."""
    converted = convert_ctclip_state_dict(tiny_state_dict, tiny_config)
    ct_model = modeling_ct.X2CTCLIPCTModel(tiny_config.ct_config).eval()
    ct_model.load_state_dict({k[len("ct_model."):]: v for k, v in converted.items() if k.startswith("ct_model.")})
    monkeypatch.setattr(target, "forward", replacement)
    with torch.no_grad():
        tokens = ct_model(tiny_io["volume"]).last_hidden_state
    assert (tokens - tiny_io["ct_encoded_tokens"]).abs().max() > 1e-2


def test_torch_checkpoint_with_wrapper_entry_and_position_ids(tiny_state_dict, tiny_io, tmp_path):
    state = dict(tiny_state_dict)
    state["text_transformer.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ctclip.pt")
    out = convert_ctclip_checkpoint(tmp_path / "ctclip.pt", tmp_path / "out", config_path=TINY_CONFIG)
    model = X2CTCLIPModel.from_pretrained(out).eval()
    with torch.no_grad():
        text = model.get_text_features(tiny_io["input_ids"], tiny_io["attention_mask"]).pooler_output
    torch.testing.assert_close(F.normalize(text, dim=-1), tiny_io["text_latents"], rtol=0, atol=1e-4)
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")) == ["model.safetensors"]


@pytest.mark.parametrize("key, value", [
    ("visual_transformer.enc_spatial_transformer.layers.0.1.norm.beta", 0.5),
    ("visual_transformer.enc_temporal_transformer.norm_out.beta", -1.0),
])
def test_tensors_the_encoder_assumes_are_checked(tiny_state_dict, tiny_config, key, value):
    state = dict(tiny_state_dict)
    state[key] = torch.full_like(state[key], value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        convert_ctclip_state_dict(state, tiny_config)


def test_non_empty_output_dir_is_refused(reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="not an empty folder"):
        convert_ctclip_checkpoint(TINY_WEIGHTS, out, config_path=TINY_CONFIG)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------------------- CLI
def _write_tokenizer(folder: Path, vocab_size: int) -> Path:
    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    return folder


def test_cli_converts_with_tokenizer(reference, tmp_path, capsys):
    tokenizer_dir = _write_tokenizer(tmp_path / "tok", vocab_size=100)
    out = tmp_path / "converted"
    rc = cli_main(["convert-ctclip", str(TINY_WEIGHTS), str(out), "--config", str(TINY_CONFIG), "--tokenizer", str(tokenizer_dir)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "No tokenizer" not in printed
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    tokenizer = BertTokenizer.from_pretrained(out)
    assert tokenizer("w3 w7")["input_ids"] == [2, 8, 12, 3]
    assert AutoModel.from_pretrained(out).config.towers == ["ct", "text"]
    card = (out / "README.md").read_text()
    assert "cc-by-nc-sa-4.0" in card and "CT-CLIP" in card


def test_cli_without_tokenizer_says_how_to_add_it(reference, tmp_path, capsys):
    rc = cli_main(["convert-ctclip", str(TINY_WEIGHTS), str(tmp_path / "o"), "--config", str(TINY_CONFIG)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "microsoft/BiomedVLP-CXR-BERT-specialized" in printed and "--tokenizer" in printed


def test_cli_bad_checkpoint_exits_2_and_writes_nothing(tiny_state_dict, tmp_path, capsys):
    from safetensors.torch import save_file

    state = dict(tiny_state_dict)
    state["visual_transformer.enc_spatial_transformer.layers.0.1.to_query.weight"] = state.pop(
        "visual_transformer.enc_spatial_transformer.layers.0.1.to_q.weight"
    )
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    out = tmp_path / "parent" / "out"
    rc = cli_main(["convert-ctclip", str(bad), str(out), "--config", str(TINY_CONFIG)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.safetensors" in err
    assert "layers.0.1.to_query.weight" in err  # the unknown key
    assert "ct_model.spatial_encoder.layers.0.attention.q_proj.weight" in err  # the tensor it leaves missing
    assert "Traceback" not in err
    assert not out.exists() and not (out.parent.exists() and os.listdir(out.parent))


def test_cli_unreadable_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    rc = cli_main(["convert-ctclip", str(junk), str(tmp_path / "out")])
    assert rc == 2
    assert "junk.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
