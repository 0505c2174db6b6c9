import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, ResNetConfig, ResNetModel

from x2ctclip import X2CTCLIPModel
from x2ctclip.assembly import assemble_x2ctclip, convert_cxrclip_state_dict, torchvision_resnet_to_hf
from x2ctclip.train.cli.app import main as cli_main
from tiny_configs import TINY_RESNET, TINY_SWIN, tiny_config


@pytest.fixture(scope="module")
def ctclip_dir(tmp_path_factory):
    """A saved model with only CT and report towers, as `x2ctclip convert-ctclip` writes it."""
    path = tmp_path_factory.mktemp("ctclip")
    torch.manual_seed(0)
    X2CTCLIPModel(tiny_config(towers=["ct", "text"], logit_scale_init_value=2.5)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def swin_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("swin")
    config = dict(TINY_SWIN)
    torch.manual_seed(1)
    AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config)).save_pretrained(path)
    return path


def test_assemble_keeps_ctclip_towers_and_cxr_backbone(ctclip_dir, swin_dir):
    model = assemble_x2ctclip(ctclip_dir, cxr_path=swin_dir)
    source = X2CTCLIPModel.from_pretrained(ctclip_dir)
    backbone = AutoModel.from_pretrained(swin_dir)
    assert model.config.towers == ["cxr", "ct", "text"]
    assert model.logit_scale.item() == pytest.approx(2.5)
    for k, v in source.ct_model.state_dict().items():
        assert torch.equal(model.ct_model.state_dict()[k], v)
    assert torch.equal(model.text_projection.weight, source.text_projection.weight)
    for k, v in backbone.state_dict().items():
        assert torch.equal(model.cxr_model.state_dict()[k], v), k
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"cxr_model", "cxr_projection"}


def test_assemble_from_cxrclip_swin_checkpoint(ctclip_dir, swin_dir, tmp_path):
    backbone = AutoModel.from_pretrained(swin_dir)
    projection = torch.randn(16, backbone.config.hidden_size)
    ckpt = {f"image_encoder.image_encoder.{k}": v + 1.0 for k, v in backbone.state_dict().items()}
    ckpt["image_projection.projection.weight"] = projection
    ckpt["text_encoder.text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(3, 3)  # ignored
    torch.save({"model": ckpt}, tmp_path / "swint_mcc.pt")
    model = assemble_x2ctclip(ctclip_dir, cxr_path=swin_dir, cxrclip_checkpoint=tmp_path / "swint_mcc.pt")
    assert torch.equal(model.cxr_projection.weight, projection)
    name, value = next(iter(backbone.state_dict().items()))
    assert torch.equal(model.cxr_model.state_dict()[name], value + 1.0)


def test_torchvision_resnet_keys_map_onto_transformers_resnet():
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1], layer_type="bottleneck")
    hf_keys = set(ResNetModel(config).state_dict())
    tv_keys = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
               "fc.weight", "fc.bias"]
    for stage, depth in enumerate(config.depths, start=1):
        for block in range(depth):
            for i in (1, 2, 3):
                tv_keys += [f"layer{stage}.{block}.conv{i}.weight"] + [
                    f"layer{stage}.{block}.bn{i}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                ]
            if block == 0:
                tv_keys += [f"layer{stage}.0.downsample.0.weight"] + [
                    f"layer{stage}.0.downsample.1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                ]
    mapped = {torchvision_resnet_to_hf(k) for k in tv_keys} - {None}
    # Every transformers key is covered; the stage-1 shortcut exists in torchvision but not when widths match.
    assert hf_keys <= mapped
    assert all(k.startswith("encoder.stages.0.layers.0.shortcut") for k in mapped - hf_keys)


def test_cxrclip_conversion_errors_are_clear():
    with pytest.raises(ValueError, match="not a CXR-CLIP checkpoint"):
        convert_cxrclip_state_dict({"foo.weight": torch.zeros(1)}, "x.pt")
    with pytest.raises(ValueError, match="does not know"):
        convert_cxrclip_state_dict({"image_encoder.resnet.weird.weight": torch.zeros(1),
                                    "image_projection.projection.weight": torch.zeros(1)}, "x.pt")


def test_assemble_rejects_model_without_ct_tower(tmp_path):
    X2CTCLIPModel(tiny_config(towers=["cxr", "text"])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no ct tower"):
        assemble_x2ctclip(tmp_path, cxr_config=TINY_RESNET)


def test_assemble_cli_with_resnet_config(ctclip_dir, tmp_path, capsys):
    cfg = tmp_path / "resnet.json"
    cfg.write_text(json.dumps(TINY_RESNET))
    out = tmp_path / "assembled"
    assert cli_main(["assemble", str(out), "--ctclip", str(ctclip_dir), "--cxr-config", str(cfg)]) == 0
    model = AutoModel.from_pretrained(out)
    assert model.config.cxr_config.model_type == "resnet" and model.config.towers == ["cxr", "ct", "text"]
    assert "Assembled" in capsys.readouterr().out
    # A non-empty output folder is refused with a clear message and exit code 2.
    assert cli_main(["assemble", str(out), "--ctclip", str(ctclip_dir), "--cxr-config", str(cfg)]) == 2
    assert "not empty" in capsys.readouterr().err


def _bad_cxr_inputs(tmp_path, ctclip_dir):
    (tmp_path / "unknown_type.json").write_text(json.dumps({"model_type": "no-such-model"}))
    (tmp_path / "a_list.json").write_text("[1, 2]")
    (tmp_path / "bad_value.json").write_text(json.dumps({"model_type": "swin", "depths": "x"}))
    (tmp_path / "swin.json").write_text(json.dumps(TINY_SWIN))
    torch.save({"model": {"image_encoder.resnet.conv1.weight": torch.zeros(8, 3, 7, 7),
                          "image_projection.projection.weight": torch.zeros(16, 32)}}, tmp_path / "r50_for_swin.pt")
    swin = ["--cxr-config", str(tmp_path / "swin.json")]
    return {
        "unknown model_type": (["--cxr-config", str(tmp_path / "unknown_type.json")], tmp_path / "unknown_type.json",
                               "not a usable vision config"),
        "not an object": (["--cxr-config", str(tmp_path / "a_list.json")], tmp_path / "a_list.json", "model_type"),
        "bad value": (["--cxr-config", str(tmp_path / "bad_value.json")], tmp_path / "bad_value.json", "depths"),
        "missing config": (["--cxr-config", str(tmp_path / "nope.json")], tmp_path / "nope.json", "no such"),
        "missing --cxr": (["--cxr", str(tmp_path / "nodir")], tmp_path / "nodir", "no such model folder"),
        "--cxr without a vision model": (["--cxr", str(ctclip_dir)], ctclip_dir, "cannot build the CXR tower"),
        "ResNet file for a Swin config": (swin + ["--cxr-clip", str(tmp_path / "r50_for_swin.pt")],
                                          tmp_path / "r50_for_swin.pt", "does not fit the CXR tower"),
        "folder as --cxr-clip": (swin + ["--cxr-clip", str(tmp_path)], tmp_path, "a folder, not a checkpoint"),
    }


@pytest.mark.parametrize("case", ["unknown model_type", "not an object", "bad value", "missing config", "missing --cxr",
                                  "--cxr without a vision model", "ResNet file for a Swin config",
                                  "folder as --cxr-clip"])
def test_assemble_bad_cxr_inputs_give_one_line(case, ctclip_dir, tmp_path, capsys):
    args, path, problem = _bad_cxr_inputs(tmp_path, ctclip_dir)[case]
    out = tmp_path / "out"
    assert cli_main(["assemble", str(out), "--ctclip", str(ctclip_dir), *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"x2ctclip assemble: error: {path}: ") and problem in lines[0], lines[0]
    assert not out.exists()
