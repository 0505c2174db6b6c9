"""Published checkpoints load as published.

Files are built in exactly the layouts recorded (with their sources) in ``fixtures/published_layouts.json``:
CXR-CLIP's ``swint_mcc.tar`` / ``r50_mcc.tar`` (wrapper dict with optimizer and scheduler state and an omegaconf
config whose lists are ``ListConfig``; Swin under transformers-4.26 names with saved ``relative_position_index``;
torchvision ResNet names; projection with bias) and CT-CLIP's v2 / VocabFine / LiPro (ClassFine) files.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer, ResNetConfig, ResNetModel, SwinConfig, SwinModel

from x2ctclip import X2CTCLIPModel
from x2ctclip.assembly import (
    SWIN_4X_RENAMES,
    assemble_x2ctclip,
    rename_swin_key,
    swin_renaming_rules,
    torchvision_resnet_to_hf,
)
from x2ctclip.checkpoint_loading import read_checkpoint
from x2ctclip.train.cli.app import main as cli_main
from tiny_configs import TINY_SWIN, tiny_config

LAYOUTS = json.loads((Path(__file__).parent / "fixtures" / "published_layouts.json").read_text())
CXR_CLIP = LAYOUTS["cxr_clip"]
CT_CLIP = LAYOUTS["ct_clip"]
# A ResNet-50-shaped backbone (bottleneck blocks, depths 3-4-6-3 as torchvision's resnet50) at tiny widths.
TINY_R50 = dict(model_type="resnet", embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[3, 4, 6, 3],
                layer_type="bottleneck")
PROJ_DIM = 16


# ------------------------------------------------------------------------------------------------ building files
def _cxrclip_config():
    """The training config as CXR-CLIP stores it: nested DictConfig turned into dict, list values left ListConfig."""
    omegaconf = pytest.importorskip("omegaconf", reason="CXR-CLIP checkpoints carry an omegaconf config (test extra)")
    example = {k: v for k, v in CXR_CLIP["config_example"].items() if not k.startswith("_")}
    cfg = omegaconf.OmegaConf.create(example)
    omegaconf.OmegaConf.resolve(cfg)

    def to_dict(node):
        return {k: to_dict(v) for k, v in node.items()} if isinstance(node, omegaconf.DictConfig) else node

    config = to_dict(cfg)
    assert isinstance(config["list_values"]["resize"], omegaconf.ListConfig)  # as in the published files
    return config


def _save_cxrclip(path: Path, model_state: dict[str, torch.Tensor]) -> Path:
    """torch.save a CXR-CLIP checkpoint: the recorded wrapper keys, a real AdamW and LambdaLR state, the config."""
    generator = torch.Generator().manual_seed(7)
    model_state = dict(model_state)
    for key in CXR_CLIP["other_model_keys"]:  # text side and logit scale: present, ignored by X2CT-CLIP
        model_state[key] = torch.randn(4, 4, generator=generator) if key.endswith("weight") else torch.randn(
            4, generator=generator) if key.endswith("bias") else torch.tensor(math.log(1 / 0.07))
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=5e-5, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    layer(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    blob = {"model": model_state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "config": _cxrclip_config(), "epoch": 15, "train_loss": 1.25}
    assert list(blob) == CXR_CLIP["wrapper_keys"]
    torch.save(blob, path)
    return path


def _relative_position_index(window: int) -> torch.Tensor:
    """Swin's relative position index for a ``window`` x ``window`` window (w^2, w^2), as 4.26 saved it."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def _swin_426_state(config: SwinConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Swin encoder state dict under transformers-4.26 names (the fixture's), shapes from ``config``."""
    g = torch.Generator().manual_seed(seed)
    layout, w, embed = CXR_CLIP["swin"], config.window_size, config.embed_dim
    shapes = {
        "embeddings.patch_embeddings.projection.weight": (embed, config.num_channels, config.patch_size,
                                                          config.patch_size),
        "embeddings.patch_embeddings.projection.bias": (embed,), "embeddings.norm.weight": (embed,),
        "embeddings.norm.bias": (embed,),
    }
    state = {name: torch.randn(shapes[name], generator=g) for name in layout["embeddings"]}
    for stage, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
        dim, hidden = embed * 2 ** stage, int(config.mlp_ratio * embed * 2 ** stage)
        block_shapes = {
            "attention.self.relative_position_bias_table": ((2 * w - 1) ** 2, heads),
            "intermediate.dense.weight": (hidden, dim), "intermediate.dense.bias": (hidden,),
            "output.dense.weight": (dim, hidden),
        }
        for block in range(depth):
            prefix = layout["block_prefix"].format(stage=stage, block=block)
            for name in layout["block"]:
                if name.endswith("relative_position_index"):
                    state[prefix + name] = _relative_position_index(w)
                else:
                    shape = block_shapes.get(name, (dim, dim) if name.endswith(".weight") and "layernorm" not in name
                                             else (dim,))
                    state[prefix + name] = torch.randn(shape, generator=g)
        if stage < len(config.depths) - 1:
            reduction, norm_w, norm_b = (n.format(stage=stage) for n in layout["downsample"])
            state[reduction] = torch.randn(2 * dim, 4 * dim, generator=g)
            state[norm_w], state[norm_b] = torch.randn(4 * dim, generator=g), torch.randn(4 * dim, generator=g)
    final = embed * 2 ** (len(config.depths) - 1)
    for name in layout["final"]:
        state[name] = torch.randn(final, generator=g)
    return state


def _swin_config() -> SwinConfig:
    kwargs = dict(TINY_SWIN)
    kwargs.pop("model_type")
    return SwinConfig(**kwargs)


def _projection(width: int, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight_key, bias_key = CXR_CLIP["projection"]
    return {weight_key: torch.randn(PROJ_DIM, width, generator=g), bias_key: torch.randn(PROJ_DIM, generator=g)}


@pytest.fixture(scope="module")
def ctclip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ctclip")
    torch.manual_seed(0)
    X2CTCLIPModel(tiny_config(towers=["ct", "text"])).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def swint_mcc(tmp_path_factory):
    encoder = _swin_426_state(_swin_config())
    state = {CXR_CLIP["swin"]["prefix"] + k: v for k, v in encoder.items()}
    state.update(_projection(_swin_config().hidden_size))
    path = tmp_path_factory.mktemp("cxrclip") / CXR_CLIP["file_names"]["swin"]
    return _save_cxrclip(path, state), encoder, state


# ------------------------------------------------------------------------------------------------ reading
def test_published_wrapper_is_read_without_unrestricted_unpickling(swint_mcc):
    path, _, state = swint_mcc
    # The file really needs the omegaconf classes: plain weights_only loading refuses it.
    with pytest.raises(Exception, match="omegaconf"):
        torch.load(path, weights_only=True)
    blob = read_checkpoint(path)
    assert list(blob) == CXR_CLIP["wrapper_keys"]
    resize = blob["config"]["list_values"]["resize"]
    assert resize == [224, 224] and type(resize) is list  # plain containers, not omegaconf objects
    assert blob["epoch"] == 15 and blob["optimizer"]["param_groups"][0]["initial_lr"] == 5e-5
    assert torch.equal(blob["model"]["image_projection.projection.bias"], state["image_projection.projection.bias"])


def test_without_omegaconf_the_message_says_to_install_it(swint_mcc, monkeypatch):
    import x2ctclip.checkpoint_loading as loading

    real = loading._import_class
    monkeypatch.setattr(loading, "_import_class", lambda name: None if name.startswith("omegaconf.") else real(name))
    with pytest.raises(ValueError, match=r"swint_mcc\.tar: the file holds an omegaconf config.*pip install omegaconf"):
        read_checkpoint(swint_mcc[0])


CODE_RAN: list[str] = []


def _record(tag):
    CODE_RAN.append(tag)
    return tag


class _RunsCode:
    def __reduce__(self):
        return _record, ("ran",)


def test_other_classes_are_refused_by_name_and_trust_flag_is_the_way_past(tmp_path):
    path = tmp_path / "hostile.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode()}, path)
    CODE_RAN.clear()
    with pytest.raises(ValueError, match=r"hostile\.pt: refused to unpickle .*_record.*--trust-checkpoint"):
        read_checkpoint(path)
    assert CODE_RAN == []
    assert read_checkpoint(path, trust_checkpoint=True)["payload"] == "ran"
    assert CODE_RAN == ["ran"]  # what the flag means: code from the file ran


# ------------------------------------------------------------------------------------------------ Swin
def test_every_swin_4x_rule_gives_a_name_of_the_installed_transformers():
    """One check per rule of the explicit table: the renamed 4.26 key is a key of today's SwinModel."""
    model_keys = set(SwinModel(_swin_config()).state_dict())
    block = CXR_CLIP["swin"]["block_prefix"].format(stage=0, block=0)
    for old, _ in SWIN_4X_RENAMES:
        for suffix in ("weight", "bias") if not old.endswith("table") else ("",):
            key = block + old + (f".{suffix}" if suffix else "")
            assert rename_swin_key(key, list(SWIN_4X_RENAMES)) in model_keys, key


def test_explicit_table_agrees_with_transformers_own_mapping():
    keys = list(_swin_426_state(_swin_config()))
    ours = [rename_swin_key(k, list(SWIN_4X_RENAMES)) for k in keys]
    assert ours == [rename_swin_key(k, swin_renaming_rules()) for k in keys]


def test_swint_mcc_as_published_assembles_with_every_tensor_in_place(ctclip_dir, swint_mcc, caplog):
    path, encoder, state = swint_mcc
    with caplog.at_level(logging.INFO, logger="x2ctclip.assembly"):
        model = assemble_x2ctclip(ctclip_dir, cxr_config=TINY_SWIN, cxrclip_checkpoint=path)
    backbone = model.cxr_model.state_dict()
    params = {k: v for k, v in encoder.items() if not k.endswith("relative_position_index")}
    renamed = {rename_swin_key(k): v for k, v in params.items()}
    assert set(renamed) == set(backbone)  # every backbone tensor comes from the file, none twice
    for key, value in renamed.items():
        assert torch.equal(backbone[key], value), key
    # The saved index equals the one the model computes (and is dropped, not loaded).
    for name, buffer in model.cxr_model.named_buffers():
        if name.endswith("relative_position_index"):
            assert torch.equal(buffer.flatten(), _relative_position_index(TINY_SWIN["window_size"]).flatten())
    assert torch.equal(model.cxr_projection.weight, state["image_projection.projection.weight"])
    assert model.cxr_projection.bias is None
    dropped = [r for r in caplog.records if "image_projection.projection.bias" in r.getMessage()]
    assert len(dropped) == 1 and "dropped" in dropped[0].getMessage()


def test_projection_bias_kept_on_request(ctclip_dir, swint_mcc):
    path, _, state = swint_mcc
    model = assemble_x2ctclip(ctclip_dir, cxr_config=TINY_SWIN, cxrclip_checkpoint=path, cxr_projection_bias=True)
    assert torch.equal(model.cxr_projection.bias, state["image_projection.projection.bias"])
    assert torch.equal(model.cxr_projection.weight, state["image_projection.projection.weight"])


def test_mismatched_relative_position_index_is_an_error(ctclip_dir, tmp_path):
    encoder = _swin_426_state(_swin_config())
    key = CXR_CLIP["swin"]["block_prefix"].format(stage=1, block=0) + "attention.self.relative_position_index"
    encoder[key] = encoder[key].flip(0)
    state = {CXR_CLIP["swin"]["prefix"] + k: v for k, v in encoder.items()}
    state.update(_projection(_swin_config().hidden_size))
    path = _save_cxrclip(tmp_path / "swint_mcc.tar", state)
    with pytest.raises(ValueError, match=r"swint_mcc\.tar: encoder\.layers\.1\.blocks\.0\..*_index differs"):
        assemble_x2ctclip(ctclip_dir, cxr_config=TINY_SWIN, cxrclip_checkpoint=path)


def test_swin_checkpoint_for_another_size_is_an_error(ctclip_dir, swint_mcc):
    wider = dict(TINY_SWIN, embed_dim=24)
    with pytest.raises(ValueError, match=r"swint_mcc\.tar: \d+ tensor\(s\) do not fit the CXR tower"):
        assemble_x2ctclip(ctclip_dir, cxr_config=wider, cxrclip_checkpoint=swint_mcc[0])


# ------------------------------------------------------------------------------------------------ ResNet-50
def _torchvision_keys(depths) -> list[str]:
    """Every key of a torchvision ResNet (bottleneck) without ``fc``, from the fixture's layout."""
    layout = CXR_CLIP["resnet"]

    def expand(names, prefix=""):
        out = []
        for name in names:
            entries = layout["batch_norm_entries"]
            out += [prefix + name] if name.endswith(".weight") else [f"{prefix}{name}.{e}" for e in entries]
        return out

    keys = expand(layout["stem"])
    for stage, depth in enumerate(depths, start=1):
        for block in range(depth):
            names = layout["block"] + (layout["first_block_extra"] if block == 0 else [])
            keys += expand(names, f"layer{stage}.{block}.")
    return keys


def _torchvision_features(tv: dict[str, torch.Tensor], x: torch.Tensor, depths) -> torch.Tensor:
    """torchvision's ResNet (v1.5, stride on conv2) forward up to the global average pool, read from the
    torchvision-named weights alone: what CXR-CLIP's ResNet50.forward returns (B, C)."""
    def bn(h, name):
        return F.batch_norm(h, tv[f"{name}.running_mean"], tv[f"{name}.running_var"], tv[f"{name}.weight"],
                            tv[f"{name}.bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, tv["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for stage, depth in enumerate(depths, start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}."
            stride = 2 if (stage > 1 and block == 0) else 1
            out = F.relu(bn(F.conv2d(h, tv[p + "conv1.weight"]), p + "bn1"))
            out = F.relu(bn(F.conv2d(out, tv[p + "conv2.weight"], stride=stride, padding=1), p + "bn2"))
            out = bn(F.conv2d(out, tv[p + "conv3.weight"]), p + "bn3")
            shortcut = h
            if block == 0:
                shortcut = bn(F.conv2d(h, tv[p + "downsample.0.weight"], stride=stride), p + "downsample.1")
            h = F.relu(out + shortcut)
    return h.mean(dim=(2, 3))


def test_r50_mcc_as_published_computes_torchvision_features(ctclip_dir, tmp_path):
    """torchvision does not import beside this torch, so the torchvision-named weights are made from a transformers
    ResNet's (with non-trivial BatchNorm statistics); the reference forward reads only the torchvision names."""
    kwargs = dict(TINY_R50)
    kwargs.pop("model_type")
    torch.manual_seed(5)
    hf = ResNetModel(ResNetConfig(**kwargs)).eval()
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    hf_state = hf.state_dict()
    tv = {key: hf_state[torchvision_resnet_to_hf(key)].clone() for key in _torchvision_keys(kwargs["depths"])}
    assert len(tv) == len(hf_state)
    state = {CXR_CLIP["resnet"]["prefix"] + k: v for k, v in tv.items()}
    state.update(_projection(kwargs["hidden_sizes"][-1]))
    path = _save_cxrclip(tmp_path / CXR_CLIP["file_names"]["resnet"], state)

    model = assemble_x2ctclip(ctclip_dir, cxr_config=TINY_R50, cxrclip_checkpoint=path)
    for key, value in hf_state.items():
        assert torch.equal(model.cxr_model.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = _torchvision_features(tv, x, kwargs["depths"])
        ours = model.cxr_model(pixel_values=x).pooler_output.flatten(1)
        projected = model.get_cxr_features(x).pooler_output
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    weight = state["image_projection.projection.weight"]
    assert torch.equal(model.cxr_projection.weight, weight)
    torch.testing.assert_close(projected, reference @ weight.T, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the command
def _one_error_line(err: str, command: str, path) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"x2ctclip {command}: error: {path}"), lines[0]
    return lines[0]


def test_assemble_cli_reads_published_file(ctclip_dir, swint_mcc, tmp_path, capsys):
    cfg = tmp_path / "swin.json"
    cfg.write_text(json.dumps(TINY_SWIN))
    out = tmp_path / "assembled"
    argv = ["assemble", str(out), "--ctclip", str(ctclip_dir), "--cxr-config", str(cfg),
            "--cxr-clip", str(swint_mcc[0])]
    assert cli_main(argv + ["--cxr-projection-bias"]) == 0
    model = X2CTCLIPModel.from_pretrained(out)
    assert torch.equal(model.cxr_projection.bias, swint_mcc[2]["image_projection.projection.bias"])


def _bad_ctclip_folders(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "bert"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    return {
        "missing": (tmp_path / "nope", "no such folder"),
        "empty": (empty, "no config.json"),
        "foreign": (foreign, "not an X2CT-CLIP"),
        "broken": (broken, "config.json"),
        "file": (a_file, "not a folder"),
        # owner/name that is no local folder is tried on the Hub (offline in the tests): still one line
        "hub id": (Path("nobody-x2ctclip-test/no-such-model"), "not loadable as a Hub model"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "foreign", "broken", "file", "hub id"])
def test_assemble_bad_ctclip_folder_is_one_line(case, tmp_path, capsys):
    folder, problem = _bad_ctclip_folders(tmp_path)[case]
    cfg = tmp_path / "swin.json"
    cfg.write_text(json.dumps(TINY_SWIN))
    out = tmp_path / "out"
    assert cli_main(["assemble", str(out), "--ctclip", str(folder), "--cxr-config", str(cfg)]) == 2
    assert problem in _one_error_line(capsys.readouterr().err, "assemble", folder)
    assert not out.exists()


def test_assemble_refuses_unsafe_checkpoint_in_one_line(ctclip_dir, tmp_path, capsys):
    path = tmp_path / "swint_mcc.tar"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode()}, path)
    cfg = tmp_path / "swin.json"
    cfg.write_text(json.dumps(TINY_SWIN))
    CODE_RAN.clear()
    rc = cli_main(["assemble", str(tmp_path / "out"), "--ctclip", str(ctclip_dir), "--cxr-config", str(cfg),
                   "--cxr-clip", str(path)])
    assert rc == 2 and CODE_RAN == []
    assert "--trust-checkpoint" in _one_error_line(capsys.readouterr().err, "assemble", path)
    # With the flag the file is unpickled (its code runs); its weights are then no CXR-CLIP encoder: one line again.
    rc = cli_main(["assemble", str(tmp_path / "out"), "--ctclip", str(ctclip_dir), "--cxr-config", str(cfg),
                   "--cxr-clip", str(path), "--trust-checkpoint"])
    assert rc == 2 and CODE_RAN == ["ran"]
    assert "not a CXR-CLIP checkpoint" in _one_error_line(capsys.readouterr().err, "assemble", path)


# ------------------------------------------------------------------------------------------------ CT-CLIP files
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ctclip"


@pytest.fixture(scope="module")
def tiny_ctclip():
    if not REFERENCE.is_dir():
        pytest.skip(f"needs the CT-CLIP reference weights in {REFERENCE}, absent on this machine")
    from safetensors.torch import load_file

    return load_file(str(REFERENCE / "ctclip_tiny.ctclip_state_dict.safetensors")), REFERENCE / "ctclip_tiny.json"


def _converted_state(path: Path, config: Path, out: Path) -> dict[str, torch.Tensor]:
    from x2ctclip.convert_ctclip import convert_ctclip_checkpoint

    return X2CTCLIPModel.from_pretrained(convert_ctclip_checkpoint(path, out, config_path=config)).state_dict()


@pytest.mark.parametrize("variant", list(CT_CLIP["variants"]))
def test_ct_clip_variants_convert_as_published(variant, tiny_ctclip, tmp_path):
    state, config = tiny_ctclip
    layout = CT_CLIP["variants"][variant]
    assert layout["supported"]
    blob = {layout["prefix"] + k: v for k, v in state.items()}
    if layout["extra_keys"]:
        latent = json.loads(config.read_text())["config"].get("dim_latent", 512)
        g = torch.Generator().manual_seed(0)
        for key, shape in layout["extra_keys"].items():
            blob[key] = torch.randn([shape[0]] + ([latent] if len(shape) == 2 else []), generator=g)
    torch.save(blob, tmp_path / variant)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "plain.safetensors"))
    ours = _converted_state(tmp_path / variant, config, tmp_path / "out")
    plain = _converted_state(tmp_path / "plain.safetensors", config, tmp_path / "plain")
    assert set(ours) == set(plain)
    for key in plain:
        assert torch.equal(ours[key], plain[key]), key


def test_ct_clip_tokenizer_layout_lowercases(tiny_ctclip, tmp_path):
    """CT-CLIP builds CXR-BERT's tokenizer as a BertTokenizer with do_lower_case=True: the converted folder keeps it."""
    state, config = tiny_ctclip
    from x2ctclip.convert_ctclip import convert_ctclip_checkpoint

    tok = tmp_path / "cxr-bert"
    tok.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lung", "nodule", "effusion"]
    (tok / "vocab.txt").write_text("\n".join(words) + "\n")
    spec = CT_CLIP["tokenizer"]
    (tok / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": spec["class"],
                                                           "do_lower_case": spec["do_lower_case"]}))
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "ct.safetensors"))
    out = convert_ctclip_checkpoint(tmp_path / "ct.safetensors", tmp_path / "out", config_path=config,
                                    tokenizer_dir=tok)
    tokenizer = BertTokenizer.from_pretrained(out)
    assert tokenizer("Lung NODULE")["input_ids"] == tokenizer("lung nodule")["input_ids"] == [2, 5, 6, 3]


def _convert_cases(tmp_path: Path, tiny_config_path: Path) -> dict[str, tuple[list[str], Path]]:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    wrong_types = tmp_path / "types.json"
    wrong_types.write_text(json.dumps({"config": {"ctvit": {"dim": "wide"}}}))
    no_tok = tmp_path / "no_tokenizer"
    empty_tok = tmp_path / "empty_tokenizer"
    empty_tok.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    good = tmp_path / "good.safetensors"
    return {
        "missing checkpoint": ([str(tmp_path / "nope.pt")], tmp_path / "nope.pt"),
        "empty checkpoint": ([str(empty)], empty),
        "junk checkpoint": ([str(junk)], junk),
        "folder as checkpoint": ([str(folder)], folder),
        "missing config": ([str(good), "--config", str(tmp_path / "nope.json")], tmp_path / "nope.json"),
        "bad config": ([str(good), "--config", str(bad_json)], bad_json),
        "config with wrong types": ([str(good), "--config", str(wrong_types)], wrong_types),
        "missing tokenizer": ([str(good), "--config", str(tiny_config_path), "--tokenizer", str(no_tok)], no_tok),
        "empty tokenizer": ([str(good), "--config", str(tiny_config_path), "--tokenizer", str(empty_tok)], empty_tok),
        "output under a file": ([str(good), "--config", str(tiny_config_path)], blocker / "out"),
    }


CONVERT_CASES = ["missing checkpoint", "empty checkpoint", "junk checkpoint", "folder as checkpoint", "missing config",
                 "bad config", "config with wrong types", "missing tokenizer", "empty tokenizer", "output under a file"]


@pytest.mark.parametrize("case", CONVERT_CASES)
def test_convert_ctclip_bad_input_is_one_line(case, tiny_ctclip, tmp_path, capsys):
    from safetensors.torch import save_file

    state, config = tiny_ctclip
    save_file(state, str(tmp_path / "good.safetensors"))
    args, named = _convert_cases(tmp_path, config)[case]
    out = named if case == "output under a file" else tmp_path / "out"
    assert cli_main(["convert-ctclip", args[0], str(out), *args[1:]]) == 2
    _one_error_line(capsys.readouterr().err, "convert-ctclip", named)
    assert not (tmp_path / "out").exists()
