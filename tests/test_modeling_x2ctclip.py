import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

from x2ctclip import X2CTCLIPConfig, X2CTCLIPCTConfig, X2CTCLIPModel
from tiny_configs import TINY_CT, TINY_RESNET, TINY_SWIN, tiny_config


class X2CTCLIPModelTester:
    batch = 3
    seq_len = 7

    def __init__(self, cxr=None, **overrides):
        self.config = tiny_config(cxr=cxr, **overrides)

    def inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        cxr_size = getattr(self.config.cxr_config, "image_size", 32)
        ct = self.config.ct_config
        return {
            "pixel_values": torch.randn(self.batch, 3, cxr_size, cxr_size, generator=g),
            "ct_values": torch.rand(self.batch, 1, ct.num_frames, ct.image_size, ct.image_size, generator=g) * 2 - 1,
            "input_ids": torch.randint(5, self.config.text_config.vocab_size, (self.batch, self.seq_len), generator=g),
            "attention_mask": torch.ones(self.batch, self.seq_len, dtype=torch.long),
        }

    def model(self):
        torch.manual_seed(0)
        return X2CTCLIPModel(self.config).eval()


@pytest.fixture(scope="module")
def tester():
    return X2CTCLIPModelTester()


@pytest.mark.parametrize("cxr", [TINY_SWIN, TINY_RESNET], ids=["swin", "resnet"])
def test_feature_shapes(cxr):
    t = X2CTCLIPModelTester(cxr=cxr)
    model, x = t.model(), t.inputs()
    dim = t.config.projection_dim
    with torch.no_grad():
        assert model.get_cxr_features(x["pixel_values"]).pooler_output.shape == (t.batch, dim)
        ct_out = model.get_ct_features(x["ct_values"])
        text_out = model.get_text_features(x["input_ids"], x["attention_mask"])
    grid = t.config.ct_config.grid_size
    assert ct_out.pooler_output.shape == (t.batch, dim)
    assert ct_out.last_hidden_state.shape == (t.batch, *grid, t.config.ct_config.dim)
    assert text_out.pooler_output.shape == (t.batch, dim)


def test_forward_all_modalities_logits_and_loss(tester):
    model, x = tester.model(), tester.inputs()
    with torch.no_grad():
        out = model(**x, return_loss=True)
    b = tester.batch
    for name in ("logits_per_image", "logits_per_text", "logits_per_cxr_ct", "logits_per_ct_text"):
        assert getattr(out, name).shape == (b, b), name
    assert torch.allclose(out.logits_per_text, out.logits_per_image.t())
    for name in ("cxr_embeds", "ct_embeds", "text_embeds"):
        assert torch.allclose(getattr(out, name).norm(dim=-1), torch.ones(b), atol=1e-5)
    scale = model.logit_scale.exp()
    assert torch.allclose(out.logits_per_image, scale * out.cxr_embeds @ out.text_embeds.t())
    # Paper defaults: alpha = 0 (CT-report term not computed), beta = gamma = 1.
    assert out.loss_ct_text is None
    assert torch.allclose(out.loss, out.loss_cxr_text + out.loss_cxr_ct)


def test_loss_weights_from_config():
    t = X2CTCLIPModelTester(loss_ct_text_weight=0.5, loss_cxr_text_weight=2.0, loss_cxr_ct_weight=0.0)
    model, x = t.model(), t.inputs()
    with torch.no_grad():
        out = model(**x, return_loss=True)
    assert out.loss_cxr_ct is None
    assert torch.allclose(out.loss, 0.5 * out.loss_ct_text + 2.0 * out.loss_cxr_text)


def test_cached_embeddings_give_the_same_result(tester):
    model, x = tester.model(), tester.inputs()
    with torch.no_grad():
        full = model(**x, return_loss=True)
        ct_embeds = model.get_ct_features(x["ct_values"]).pooler_output
        text_embeds = model.get_text_features(x["input_ids"], x["attention_mask"]).pooler_output
        cached = model(pixel_values=x["pixel_values"], ct_embeds=ct_embeds, text_embeds=text_embeds, return_loss=True)
    assert torch.allclose(full.loss, cached.loss, atol=1e-6)
    assert torch.allclose(full.logits_per_image, cached.logits_per_image, atol=1e-6)


def test_forward_subsets_and_errors(tester):
    model, x = tester.model(), tester.inputs()
    with torch.no_grad():
        out = model(pixel_values=x["pixel_values"], input_ids=x["input_ids"], attention_mask=x["attention_mask"])
    assert out.logits_per_image.shape == (3, 3) and out.logits_per_cxr_ct is None and out.loss is None
    with pytest.raises(ValueError, match="at least one"):
        model()
    with pytest.raises(ValueError, match="no pair"):
        model(pixel_values=x["pixel_values"], return_loss=True)
    with pytest.raises(ValueError, match="either ct_values or ct_embeds"):
        model(ct_values=x["ct_values"], ct_embeds=torch.zeros(3, 16))


def test_frozen_towers_get_no_gradient_and_stay_in_eval(tester):
    model, x = tester.model(), tester.inputs()
    model.train()
    assert model.cxr_model.training
    assert not model.ct_model.training and not model.text_model.training
    out = model(**x, return_loss=True)
    out.loss.backward()
    assert all(p.grad is None for p in model.ct_model.parameters())
    assert all(p.grad is None for p in model.text_model.parameters())
    assert model.logit_scale.grad is None
    assert model.cxr_projection.weight.grad is not None and model.cxr_projection.weight.grad.abs().sum() > 0
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"cxr_model", "cxr_projection"}


def test_unfrozen_ctclip_stage_trains_ct_and_text():
    t = X2CTCLIPModelTester(towers=["ct", "text"], freeze_ct_model=False, freeze_text_model=False,
                            freeze_logit_scale=False, loss_ct_text_weight=1.0)
    model, x = t.model(), t.inputs()
    model.train()
    out = model(ct_values=x["ct_values"], input_ids=x["input_ids"], attention_mask=x["attention_mask"], return_loss=True)
    out.loss.backward()
    assert model.logit_scale.grad is not None
    assert model.ct_projection.weight.grad.abs().sum() > 0
    assert model.cxr_model is None
    with pytest.raises(ValueError, match="no cxr tower"):
        model.get_cxr_features(x["pixel_values"])


def test_logit_scale_initial_value():
    model = X2CTCLIPModelTester(logit_scale_init_value=math.log(1 / 0.07)).model()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="patch_size"):
        X2CTCLIPCTConfig(image_size=100, patch_size=30)
    with pytest.raises(ValueError, match="temporal_patch_size"):
        X2CTCLIPCTConfig(num_frames=25, temporal_patch_size=10)
    with pytest.raises(ValueError, match="towers"):
        X2CTCLIPConfig(towers=["cxr", "mri"])
    with pytest.raises(ValueError, match="prompt_templates"):
        X2CTCLIPConfig(prompt_templates=[["There is {}.", "Nothing here."]])
    with pytest.raises(ValueError, match=">= 0"):
        X2CTCLIPConfig(loss_cxr_ct_weight=-1.0)


def test_default_config_is_the_official_one():
    config = X2CTCLIPConfig()
    assert config.ct_config.dim == 512 and config.ct_config.image_size == 480 and config.ct_config.patch_size == 20
    assert config.ct_config.temporal_patch_size == 10 and config.ct_config.heads == 8 and config.ct_config.dim_head == 32
    assert config.ct_config.spatial_depth == 4 and config.ct_config.temporal_depth == 4
    assert config.ct_config.pooled_dim == 294912  # CT-CLIP's to_visual_latent input width
    assert config.text_config.model_type == "bert" and config.text_config.hidden_size == 768
    assert config.cxr_config.model_type == "swin" and config.cxr_config.hidden_size == 768
    assert config.cxr_config.window_size == 7 and config.cxr_config.depths == [2, 2, 6, 2]
    assert config.loss_weights == {"ct_text": 0.0, "cxr_text": 1.0, "cxr_ct": 1.0}
    assert len(config.findings) == 18


def test_save_and_load_round_trip_with_auto_classes(tester, tmp_path):
    model, x = tester.model(), tester.inputs()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert {"modeling_x2ctclip.py", "configuration_x2ctclip.py", "modeling_ct.py", "loss.py", "findings.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"].endswith("X2CTCLIPModel") and auto_map["AutoConfig"].endswith("X2CTCLIPConfig")
    assert isinstance(AutoConfig.from_pretrained(tmp_path), X2CTCLIPConfig)
    for auto_class in (AutoModel, AutoModelForZeroShotImageClassification):
        loaded = auto_class.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, X2CTCLIPModel)
        with torch.no_grad():
            a, b = model(**x, return_loss=True), loaded(**x, return_loss=True)
        assert torch.allclose(a.loss, b.loss) and torch.allclose(a.logits_per_cxr_ct, b.logits_per_cxr_ct)
    assert loaded.config.towers == ["cxr", "ct", "text"] and not loaded.ct_model.training
    # Freezing survives loading (loading replaces parameters and would otherwise reset requires_grad).
    trainable = {n.split(".")[0] for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {"cxr_model", "cxr_projection"}


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, torch

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "x2ctclip" or name.startswith("x2ctclip."):
                raise ModuleNotFoundError(f"x2ctclip is hidden in this test ({name})")

    sys.meta_path.insert(0, HidePackage())
    try:
        import x2ctclip  # noqa: F401
        raise SystemExit("x2ctclip should not be importable here")
    except ModuleNotFoundError:
        pass
    from transformers import AutoModel
    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    x = torch.load(folder + "/inputs.pt")
    with torch.no_grad():
        out = model(**x, return_loss=True)
    torch.save({"loss": out.loss, "logits": out.logits_per_cxr_ct}, folder + "/remote.pt")
    """
)


@pytest.mark.slow
def test_remote_code_loads_without_the_package(tester, tmp_path):
    model, x = tester.model(), tester.inputs()
    model.save_pretrained(tmp_path)
    torch.save(x, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**x, return_loss=True)
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    remote = torch.load(tmp_path / "remote.pt")
    assert torch.allclose(remote["loss"], expected.loss, atol=1e-6)
    assert torch.allclose(remote["logits"], expected.logits_per_cxr_ct, atol=1e-6)


def test_ct_model_registered_with_automodel(tmp_path):
    ct_config = X2CTCLIPCTConfig(**TINY_CT)
    model = AutoModel.from_config(ct_config)
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "X2CTCLIPCTModel"


def test_get_image_features_returns_what_clipmodel_returns(tester):
    """transformers 5's ``CLIPModel.get_image_features`` is the outside definition: a ``BaseModelOutputWithPooling``
    whose ``pooler_output`` is the projected, un-normalised image embedding (the model's forward normalises it)."""
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=8,
    )).eval()
    model, x = tester.model(), tester.inputs()
    with torch.no_grad():
        reference = clip.get_image_features(pixel_values=x["pixel_values"])
        ours = model.get_image_features(pixel_values=x["pixel_values"])
        forward = model(pixel_values=x["pixel_values"], input_ids=x["input_ids"], attention_mask=x["attention_mask"])
    assert type(ours) is type(reference)
    assert ours.pooler_output.shape == (tester.batch, tester.config.projection_dim)
    torch.testing.assert_close(ours.pooler_output, model.get_cxr_features(x["pixel_values"]).pooler_output)
    torch.testing.assert_close(F.normalize(ours.pooler_output, dim=-1), forward.cxr_embeds)


def test_attn_implementation_reaches_the_ct_tower_and_output_attentions(tester, tmp_path):
    model, x = tester.model(), tester.inputs()
    model.save_pretrained(tmp_path)
    eager = X2CTCLIPModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = X2CTCLIPModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.ct_model.config._attn_implementation == "eager"
    assert sdpa.ct_model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        a = eager(**x, output_attentions=True)
        b = sdpa(**x)
    torch.testing.assert_close(a.logits_per_cxr_ct, b.logits_per_cxr_ct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.logits_per_ct_text, b.logits_per_ct_text, rtol=1e-5, atol=1e-5)
    ct_config = tester.config.ct_config
    ct_attentions = a.ct_model_output.attentions
    assert len(ct_attentions) == ct_config.spatial_depth + ct_config.temporal_depth
    assert a.text_model_output.attentions is not None  # BERT's eager attentions come through the same flag
    assert b.ct_model_output.attentions is None
    # transformers' set_attn_implementation on the composite model switches the CT tower's layers too.
    sdpa.set_attn_implementation("eager")
    assert sdpa.ct_model.spatial_encoder.layers[0].attention.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**x, output_attentions=True).ct_model_output.attentions[0], ct_attentions[0])
