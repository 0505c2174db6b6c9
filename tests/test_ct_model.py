"""The CT tower (CT-CLIP's CTViT encoder path) on tiny configurations: shapes, input / config validation, save / load,
and the numerical equivalence of its memory-saving shortcuts with the direct computations they replace.

Parity with the original CT-CLIP numbers is in tests/test_convert_ctclip.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_configs import TINY_CT
from transformers import AutoModel

import x2ctclip.modeling_ct as modeling_ct
from x2ctclip import X2CTCLIPCTConfig
from x2ctclip.modeling_ct import X2CTCLIPCTModel, X2CTCLIPCTModelOutput


class X2CTCLIPCTModelTester:
    """Builds a tiny config and inputs (transformers' model tester pattern)."""

    def __init__(self, batch_size: int = 2, **overrides):
        self.batch_size = batch_size
        self.config_kwargs = {**TINY_CT, **overrides}

    def get_config(self) -> X2CTCLIPCTConfig:
        return X2CTCLIPCTConfig(**self.config_kwargs)

    def prepare_inputs(self, config: X2CTCLIPCTConfig, num_frames: int | None = None, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        d = num_frames or config.num_frames
        shape = (self.batch_size, config.channels, d, config.image_size, config.image_size)
        return torch.rand(shape, generator=g) * 2 - 1

    def build(self, seed: int = 0) -> tuple[X2CTCLIPCTModel, torch.Tensor]:
        torch.manual_seed(seed)
        config = self.get_config()
        return X2CTCLIPCTModel(config).eval(), self.prepare_inputs(config, seed=seed)


@pytest.fixture
def tester() -> X2CTCLIPCTModelTester:
    return X2CTCLIPCTModelTester()


def test_output_shapes(tester):
    model, ct = tester.build()
    config = model.config
    t, h, w = config.grid_size
    with torch.no_grad():
        out = model(ct, output_hidden_states=True)
    assert isinstance(out, X2CTCLIPCTModelOutput)
    assert out.last_hidden_state.shape == (2, t, h, w, config.dim)
    assert out.pooler_output.shape == (2, config.pooled_dim) == (2, h * w * config.dim)
    assert len(out.hidden_states) == 1 + config.spatial_depth + config.temporal_depth
    assert all(x.shape == (2, t, h, w, config.dim) for x in out.hidden_states)
    # pooler_output is the depth-mean of the token grid flattened in (h, w, dim) order
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(1).reshape(2, -1))
    with torch.no_grad():
        as_tuple = model(ct, return_dict=False)
    assert len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)


def test_quantised_tokens_are_the_nearest_codes(tester):
    model, ct = tester.build()
    with torch.no_grad():
        tokens = model(ct).last_hidden_state
        model_no_vq = X2CTCLIPCTModel(X2CTCLIPCTConfig(**{**tester.config_kwargs, "use_vq": False})).eval()
        model_no_vq.load_state_dict({k: v for k, v in model.state_dict().items() if "quantizer" not in k})
        raw = model_no_vq(ct).last_hidden_state
    codebook = model.quantizer.codebook
    nearest = (F.normalize(raw, dim=-1) @ F.normalize(codebook, dim=-1).t()).argmax(-1)
    torch.testing.assert_close(tokens, codebook[nearest], rtol=0, atol=0)
    # the codes are stored as unit vectors, and the output is the stored vector itself
    torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(tokens.shape[:-1]))


def test_quantiser_chunking_matches_one_pass(tester, monkeypatch):
    model, ct = tester.build()
    with torch.no_grad():
        expected = model(ct).last_hidden_state
        monkeypatch.setattr(modeling_ct, "_VQ_CHUNK", 3)
        chunked = model(ct).last_hidden_state
    torch.testing.assert_close(chunked, expected, rtol=0, atol=0)


def test_batch_items_are_independent(tester):
    """A volume's encoding must not depend on the other volumes of the batch (guards every reshape / permute)."""
    model, ct = tester.build()
    with torch.no_grad():
        batched = model(ct, output_hidden_states=True)
        single = model(ct[1:], output_hidden_states=True)
    torch.testing.assert_close(batched.pooler_output[1:], single.pooler_output, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.hidden_states[-1][1:], single.hidden_states[-1], rtol=1e-5, atol=1e-6)


def test_other_depths_keep_the_pooled_width(tester):
    model, _ = tester.build()
    config = model.config
    ct = tester.prepare_inputs(config, num_frames=3 * config.temporal_patch_size)
    with torch.no_grad():
        out = model(ct)
    assert out.last_hidden_state.shape[1] == 3
    assert out.pooler_output.shape == (2, config.pooled_dim)


def _naive_attention(attn: modeling_ct.X2CTCLIPCTAttention, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """CT-CLIP's attention written out with explicit logits and softmax."""
    n, length, _ = x.shape
    split = lambda y: y.reshape(n, length, attn.heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    q = split(attn.q_proj(F.layer_norm(x, x.shape[-1:], attn.norm.weight)))
    k, v = split(attn.k_proj(x)), split(attn.v_proj(x))
    q = F.normalize(q, dim=-1) * attn.q_scale
    k = F.normalize(k, dim=-1) * attn.k_scale
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * attn.logit_scale
    if bias is not None:
        logits = logits + bias
    out = torch.einsum("bhij,bhjd->bhid", logits.softmax(-1), v)
    return attn.out_proj(out.transpose(1, 2).reshape(n, length, -1))


def test_sdpa_attention_matches_explicit_softmax(tester):
    model, _ = tester.build()
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():  # move scales and norms away from their identity initialisation
            param.add_(torch.randn_like(param) * 0.1)
        attn = model.spatial_encoder.layers[0].attention
        _, h, w = model.config.grid_size
        x = torch.randn(3, h * w, model.config.dim)
        bias = model.spatial_position_bias(h, w)
        # The attention module returns (output, weights); weights are None unless asked for under eager attention.
        torch.testing.assert_close(attn(x, bias)[0], _naive_attention(attn, x, bias), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn(x)[0], _naive_attention(attn, x, None), rtol=1e-5, atol=1e-5)


def _perturbed(model: X2CTCLIPCTModel) -> X2CTCLIPCTModel:
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():  # move scales and norms away from their identity initialisation
            param.add_(torch.randn_like(param) * 0.1)
    return model


def test_attn_implementation_eager_and_sdpa_agree(tester, tmp_path):
    """``attn_implementation`` is honoured (transformers' own switch) and both paths give the same numbers."""
    model, ct = tester.build()
    _perturbed(model).save_pretrained(tmp_path)
    sdpa = X2CTCLIPCTModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    calls = []
    eager_fn = modeling_ct.eager_attention_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return eager_fn(*args, **kwargs)

    with torch.no_grad():
        a = sdpa(ct, output_hidden_states=True)
        modeling_ct.eager_attention_forward = spy
        try:
            b = eager(ct, output_hidden_states=True)
            sdpa(ct)  # the SDPA model never calls the eager function
        finally:
            modeling_ct.eager_attention_forward = eager_fn
    config = model.config
    assert len(calls) == config.spatial_depth + config.temporal_depth  # eager really ran, once per layer
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, rtol=1e-5, atol=1e-5)
    # Switching in place, as transformers' set_attn_implementation does, gives the eager path too.
    sdpa.set_attn_implementation("eager")
    assert sdpa.spatial_encoder.layers[0].attention.config._attn_implementation == "eager"


def test_output_attentions_under_eager(tester):
    model, ct = tester.build()
    model = _perturbed(model)
    with pytest.raises(ValueError, match="needs eager attention"):
        model(ct, output_attentions=True)
    model.set_attn_implementation("eager")
    config = model.config
    t, h, w = config.grid_size
    with torch.no_grad():
        out = model(ct, output_attentions=True)
        plain = model(ct)
    assert out.attentions is not None and len(out.attentions) == config.spatial_depth + config.temporal_depth
    spatial, temporal = out.attentions[: config.spatial_depth], out.attentions[config.spatial_depth :]
    assert all(a.shape == (2, t, config.heads, h * w, h * w) for a in spatial)
    assert all(a.shape == (2, h * w, config.heads, t, t) for a in temporal)
    for a in out.attentions:  # softmax rows
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    assert plain.attentions is None
    torch.testing.assert_close(out.pooler_output, plain.pooler_output, rtol=0, atol=0)
    # The first spatial layer's weights are the softmax of its logits, recomputed from the patch embeddings.
    with torch.no_grad():
        x0 = model(ct, output_hidden_states=True).hidden_states[0].reshape(2 * t, h * w, config.dim)
        layer = model.spatial_encoder.layers[0]
        x0 = x0 + layer.peg(x0, (2, t, h, w))
        attn = layer.attention
        q = attn._split_heads(attn.q_proj(attn.norm(x0)))
        k = attn._split_heads(attn.k_proj(x0))
        q = F.normalize(q, dim=-1) * attn.q_scale
        k = F.normalize(k, dim=-1) * attn.k_scale
        logits = attn.logit_scale * q @ k.transpose(-1, -2) + model.spatial_position_bias(h, w)
    torch.testing.assert_close(spatial[0], logits.softmax(-1).reshape(2, t, config.heads, h * w, h * w))


def test_position_bias_matches_every_pair_mlp():
    """The bias table gathered per offset equals the MLP applied to every (query, key) pair, as CT-CLIP computes it."""
    torch.manual_seed(0)
    config = X2CTCLIPCTConfig(**{**TINY_CT, "image_size": 40, "patch_size": 8, "heads": 3})
    module = X2CTCLIPCTModel(config).spatial_position_bias
    h = w = 5
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1).float()
    rel = grid[:, None, :] - grid[None, :, :]
    hidden = torch.sign(rel) * torch.log(rel.abs() + 1)
    for layer in module.mlp[:-1]:
        hidden = F.leaky_relu(layer(hidden), 0.1)
    expected = module.mlp[-1](hidden).permute(2, 0, 1)
    with torch.no_grad():
        torch.testing.assert_close(module(h, w), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(ndim=4), "5-D"),
        (dict(channels=2), "channels"),
        (dict(depth_offset=1), "multiple of temporal_patch_size"),
        (dict(size_offset=8), "image_size"),
        (dict(dtype=torch.int64), "floating point"),
    ],
)
def test_bad_inputs_raise_value_error(tester, change, message):
    model, ct = tester.build()
    if "ndim" in change:
        ct = ct[:, 0]
    if "channels" in change:
        ct = ct.repeat(1, change["channels"], 1, 1, 1)
    if "depth_offset" in change:
        ct = ct[:, :, : ct.shape[2] - change["depth_offset"]]
    if "size_offset" in change:
        ct = F.pad(ct, (0, change["size_offset"], 0, change["size_offset"]))
    if "dtype" in change:
        ct = ct.to(change["dtype"])
    with pytest.raises(ValueError, match=message):
        model(ct)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=20, patch_size=8), "patch_size .* must divide image_size"),
        (dict(num_frames=10, temporal_patch_size=4), "temporal_patch_size .* must divide num_frames"),
        (dict(heads=0), "heads must be a positive integer"),
    ],
)
def test_bad_configs_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        X2CTCLIPCTConfig(**{**TINY_CT, **overrides})


def test_save_and_load_round_trip(tester, tmp_path):
    model, ct = tester.build()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loader in (X2CTCLIPCTModel.from_pretrained, AutoModel.from_pretrained):
        loaded = loader(tmp_path).eval()
        assert isinstance(loaded, X2CTCLIPCTModel)
        with torch.no_grad():
            torch.testing.assert_close(loaded(ct).pooler_output, model(ct).pooler_output, rtol=0, atol=0)
        torch.testing.assert_close(loaded.quantizer.codebook, model.quantizer.codebook, rtol=0, atol=0)


def test_from_config_initialises_every_tensor(tester):
    """``_from_config`` (how a composite model builds its tower) leaves no tensor uninitialised."""
    torch.manual_seed(0)
    model = X2CTCLIPCTModel._from_config(tester.get_config())
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    attn = model.spatial_encoder.layers[0].attention
    torch.testing.assert_close(attn.q_scale, torch.ones_like(attn.q_scale))
    torch.testing.assert_close(model.quantizer.codebook.norm(dim=-1), torch.ones(model.config.codebook_size))
    assert model.embeddings.projection.weight.std() < 5 * model.config.initializer_range


def test_gradient_checkpointing_backward(tester):
    model, ct = tester.build()
    model.train()
    model.activation_checkpointing_enable()
    model(ct).pooler_output.square().mean().backward()
    grad = model.spatial_encoder.layers[0].attention.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_conv_patch_embedding_reaches_the_same_token_grid_and_round_trips(tmp_path):
    tester = X2CTCLIPCTModelTester(patch_embedding="conv", stem_channels=[4, 8])
    model, ct = tester.build()
    config = model.config
    stem = model.embeddings
    assert isinstance(stem, modeling_ct.X2CTCLIPCTConvPatchEmbeddings)
    # patch 4 x 8 x 8 (TINY_CT): two stride-2 layers leave kernel = stride = (1, 2, 2) for the token convolution
    assert [layer.stride for layer in stem.stem if isinstance(layer, torch.nn.Conv3d)] == [(2, 2, 2), (2, 2, 2)]
    assert stem.projection.kernel_size == stem.projection.stride == (1, 2, 2)
    with torch.no_grad():
        out = model(ct)
    assert out.last_hidden_state.shape == (2, *config.grid_size, config.dim)
    assert out.pooler_output.shape == (2, config.pooled_dim)
    # He initialisation keeps the stem's signal (normal(0.02) would shrink it tenfold per layer)
    with torch.no_grad():
        assert stem.stem(ct).std() > 0.1
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.patch_embedding == "conv" and loaded.config.stem_channels == [4, 8]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ct).pooler_output, out.pooler_output, rtol=0, atol=0)


def test_conv_patch_embedding_responds_to_a_small_dense_spot_wherever_it_lies():
    """The reason for the stem: a one-voxel spot moved inside a patch changes the token; the response is not a fixed
    linear template of the whole patch (a gradient flows from every voxel position)."""
    model, _ = X2CTCLIPCTModelTester(patch_embedding="conv", stem_channels=[4, 8]).build()
    ct = torch.full((1, 1, 8, 16, 16), -0.9, requires_grad=True)
    model.embeddings(ct).square().sum().backward()
    assert (ct.grad.abs() > 0).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(patch_embedding="cnn"), "patch_embedding must be 'linear' or 'conv'"),
        (dict(patch_embedding="conv", stem_channels=[4, 0]), "stem_channels must be positive integers"),
    ],
)
def test_bad_stem_configs_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        X2CTCLIPCTConfig(**{**TINY_CT, **overrides})
