"""Few-shot adaptation (x2ctclip.train.fewshot.run): stratified subsets, linear probe, LoRA, the fewshot command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scripts.eval_fixtures import make_model, make_preprocessed
from tiny_configs import TINY_RESNET, TINY_SWIN, tiny_config
from transformers import AutoImageProcessor, AutoModelForImageClassification

from x2ctclip import X2CTCLIPForAbnormalityClassification, X2CTCLIPModel
from x2ctclip.train.cli.app import main
from x2ctclip.train.data.folders import load_preprocessed
from x2ctclip.train.fewshot.run import ImageRows
from x2ctclip.train.fewshot.probe import LinearProbeConfig, train_linear_probe
from x2ctclip.train.fewshot.lora import LoraTrainConfig, load_fewshot_classifier, lora_target_modules, train_lora
from x2ctclip.train.fewshot.splits import fewshot_split, iterative_stratification
from x2ctclip.train.evaluation.metrics import roc_auc


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny convolutions are many times faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _labels(n=400, n_labels=6, seed=0):
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5])[:n_labels]
    return (rng.random((n, n_labels)) < prevalence).astype(float)


# ---------------------------------------------------------------------------------------------------- splits
def test_iterative_stratification_keeps_label_shares_better_than_random():
    labels = _labels()
    folds = iterative_stratification(labels, [0.1, 0.9], seed=3)
    assert set(folds) == {0, 1} and abs((folds == 0).sum() - 40) <= 3
    stratified = np.abs(labels[folds == 0].sum(0) - 0.1 * labels.sum(0)).sum()
    rng = np.random.default_rng(0)
    random = np.mean([np.abs(labels[rng.permutation(400)[:40]].sum(0) - 0.1 * labels.sum(0)).sum() for _ in range(50)])
    assert stratified < 0.5 * random
    # every label keeps at least one positive in the small fold (the rarest has 8 in all)
    assert (labels[folds == 0].sum(0) >= 1).all()
    np.testing.assert_array_equal(folds, iterative_stratification(labels, [0.1, 0.9], seed=3))
    assert not np.array_equal(folds, iterative_stratification(labels, [0.1, 0.9], seed=4))
    # three folds, and rows without any label
    labels[:50] = 0
    folds = iterative_stratification(labels, [0.5, 0.3, 0.2], seed=1)
    assert [abs((folds == k).sum() - 400 * p) <= 3 for k, p in enumerate((0.5, 0.3, 0.2))] == [True] * 3
    with pytest.raises(ValueError, match="sum to 1"):
        iterative_stratification(labels, [0.5, 0.6])


def test_iterative_stratification_is_as_balanced_as_the_iterstrat_package():
    iterstrat = pytest.importorskip("iterstrat.ml_stratifiers")
    labels = _labels(2000, seed=2)
    ours, theirs = [], []
    for seed in range(3):
        fold = iterative_stratification(labels, [0.05, 0.95], seed)
        assert (fold == 0).sum() == 100  # exact sizes
        ours.append(np.abs(labels[fold == 0].sum(0) - 0.05 * labels.sum(0)).sum())
        split = iterstrat.MultilabelStratifiedShuffleSplit(n_splits=1, train_size=100, test_size=1900, random_state=seed)
        rows, _ = next(split.split(np.zeros(len(labels)), labels))
        theirs.append(np.abs(labels[rows].sum(0) - 0.05 * labels.sum(0)).sum())
    assert np.mean(ours) <= 1.5 * np.mean(theirs) + 1.0


def test_fewshot_split_keeps_scans_together_and_holds_out_a_fifth():
    labels = np.repeat(_labels(100, seed=1), 2, axis=0)  # 100 scans, two reconstructions each
    groups = [f"scan{i // 2}" for i in range(200)]
    split = fewshot_split(labels, 0.25, seed=1024, groups=groups)
    train_scans = {groups[i] for i in split.train}
    valid_scans = {groups[i] for i in split.valid}
    assert not train_scans & valid_scans
    assert len(split.train) == 2 * len(train_scans) and len(split.valid) == 2 * len(valid_scans)
    assert abs(len(train_scans) + len(valid_scans) - 25) <= 2 and abs(len(valid_scans) - 5) <= 2
    assert (split.n_scans_train, split.n_scans_valid) == (len(train_scans), len(valid_scans))
    again = fewshot_split(labels, 0.25, seed=1024, groups=groups)
    assert np.array_equal(split.train, again.train) and np.array_equal(split.valid, again.valid)
    assert not np.array_equal(split.train, fewshot_split(labels, 0.25, seed=1234, groups=groups).train)
    full = fewshot_split(labels, 1.0, seed=1, groups=groups)
    assert sorted(np.concatenate([full.train, full.valid]).tolist()) == list(range(200))
    tiny = fewshot_split(labels, 0.01, seed=1, groups=groups)  # 1 % of 100 scans -> the 5-scan minimum
    assert tiny.n_scans_train + tiny.n_scans_valid == 5 and tiny.n_scans_valid >= 1
    with pytest.raises(ValueError, match="fraction"):
        fewshot_split(labels, 0.0, seed=1)


# ---------------------------------------------------------------------------------------------------- probe
def _separable(n, seed, dim=16, n_labels=4):
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(99).normal(size=(n_labels, dim))
    y = (rng.random((n, n_labels)) < 0.4).astype(np.float32)
    x = rng.normal(size=(n, dim)) * 0.3 + y @ directions
    return x.astype(np.float32), y


def test_linear_probe_learns_and_stops_early():
    x, y = _separable(200, 0)
    vx, vy = _separable(50, 1)
    tx, ty = _separable(200, 2)
    config = LinearProbeConfig(max_epochs=60, patience=5, batch_size=64)
    fit = train_linear_probe(x, y, vx, vy, config, seed=1024)
    logits = F.normalize(torch.from_numpy(tx), dim=-1) @ fit.weight.T + fit.bias
    assert roc_auc(ty, logits.numpy(), "macro") > 0.95
    # The returned weights are those of the best hold-out epoch.
    valid_logits = F.normalize(torch.from_numpy(vx), dim=-1) @ fit.weight.T + fit.bias
    loss = F.binary_cross_entropy_with_logits(valid_logits, torch.from_numpy(vy))
    assert float(loss) == pytest.approx(fit.best_valid_loss, rel=1e-5)
    assert fit.valid_losses[fit.best_epoch - 1] == fit.best_valid_loss == min(fit.valid_losses)
    again = train_linear_probe(x, y, vx, vy, config, seed=1024)
    assert torch.equal(again.weight, fit.weight)
    # Unlearnable hold-out labels: the hold-out loss soon rises and training stops `patience` epochs later.
    noisy = train_linear_probe(x, y, vx, np.random.default_rng(5).permutation(vy), config, seed=1)
    assert noisy.epochs == noisy.best_epoch + 5 < 60
    # NaN labels are left out of the loss.
    y_nan = y.copy()
    y_nan[::3, 0] = np.nan
    assert np.isfinite(train_linear_probe(x, y_nan, vx, vy, LinearProbeConfig(max_epochs=3), seed=0).best_valid_loss)


# ---------------------------------------------------------------------------------------------------- LoRA
def test_lora_targets_attention_projections_or_block_convolutions():
    swin = X2CTCLIPForAbnormalityClassification(tiny_config(towers=["cxr"]))
    names = lora_target_modules(swin)
    assert len(names) == 4 * sum(TINY_SWIN["depths"])
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(n.startswith("cxr_model.encoder.layers.") and ".attention." in n for n in names)
    with_mlp = lora_target_modules(swin, include_mlp=True)
    assert {n.rsplit(".", 1)[1] for n in with_mlp} - {"q_proj", "k_proj", "v_proj", "o_proj"} == {"fc1", "fc2"}
    resnet = X2CTCLIPForAbnormalityClassification(tiny_config(cxr=TINY_RESNET, towers=["cxr"]))
    convs = lora_target_modules(resnet)
    assert len(convs) == 2 * sum(TINY_RESNET["depths"])  # two 3x3 convolutions per basic block
    assert all(".layer." in n and n.endswith(".convolution") for n in convs)
    assert not any("embedder" in n or "shortcut" in n for n in convs)
    with pytest.raises(ValueError, match="no cxr_model"):
        lora_target_modules(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def fewshot_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    data = make_preprocessed(root / "data", {"train": 24, "test": 8})
    model = make_model(root / "model", cxr="resnet")
    return {"root": root, "data": data, "model": model}


def test_lora_saves_loads_merges_and_leaves_the_base_unchanged(fewshot_inputs, tmp_path):
    model_dir = fewshot_inputs["model"]
    base = X2CTCLIPModel.from_pretrained(model_dir)
    classifier = X2CTCLIPForAbnormalityClassification.from_x2ctclip(base)
    reference = {k: v.clone() for k, v in classifier.state_dict().items()}  # BN running statistics included
    train = load_preprocessed(fewshot_inputs["data"], "train")
    labels = np.asarray(train["labels"], dtype=np.float64)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    images = ImageRows(train)
    peft_model, result = train_lora(classifier, processor, images, labels, np.arange(18), np.arange(18, 24),
                                    LoraTrainConfig(max_epochs=2, batch_size=6), seed=0, progress=False)  # fmt: skip
    assert result.epochs == 2 and result.trainable_parameters > 0 and len(result.target_modules) == 4
    after = peft_model.get_base_model().state_dict()
    checked = 0
    for key, value in reference.items():  # only the adapters and the head copy moved; BN statistics did not
        name = key if key in after else key.replace(".weight", ".base_layer.weight")
        if not key.startswith("classifier"):
            assert torch.equal(after[name], value), key
            checked += 1
    assert checked == len(reference) - 2 and any("running_mean" in k for k in reference)
    pixels = processor([np.asarray(im) for im in images.take(range(6))])["pixel_values"]
    with torch.no_grad():
        expected = peft_model(pixel_values=pixels).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel

    fresh = X2CTCLIPForAbnormalityClassification.from_x2ctclip(X2CTCLIPModel.from_pretrained(model_dir))
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, expected)
        merged = loaded.merge_and_unload().eval()
        assert type(merged) is X2CTCLIPForAbnormalityClassification
        torch.testing.assert_close(merged(pixel_values=pixels).logits, expected, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    auto = AutoModelForImageClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(auto(pixel_values=pixels).logits, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- command
def test_fewshot_command_runs_both_methods_and_resumes(fewshot_inputs, tmp_path, monkeypatch):
    out = tmp_path / "fewshot"
    args = ["fewshot", "--model", str(fewshot_inputs["model"]), "--data", str(fewshot_inputs["data"]), "--method",
            "both", "--fractions", "0.5", "1.0", "--seeds", "1024", "1234", "--epochs", "20", "--patience", "3",
            "--lora-epochs", "1", "--lora-batch-size", "8", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    record = json.loads((out / "fewshot.json").read_text())
    assert len(record["runs"]) == 8  # 2 methods x 2 fractions x 2 seeds
    assert {(r["method"], r["fraction"], r["seed"]) for r in record["runs"]} == {
        (m, f, s) for m in ("linear", "lora") for f in (0.5, 1.0) for s in (1024, 1234)}  # fmt: skip
    half = [r for r in record["runs"] if r["fraction"] == 0.5]
    assert all(abs(r["n_scans_train"] + r["n_scans_valid"] - 12) <= 2 for r in half)  # stratification: sizes +- 2
    assert all(r["n_scans_train"] + r["n_scans_valid"] == 24 for r in record["runs"] if r["fraction"] == 1.0)
    summary = {(s["method"], s["fraction"]): s for s in record["summary"]}
    linear = [r["metrics"]["auroc_macro"] for r in record["runs"] if r["method"] == "linear" and r["fraction"] == 1.0]
    assert summary[("linear", 1.0)]["auroc_macro_mean"] == pytest.approx(np.mean(linear))
    assert summary[("linear", 1.0)]["auroc_macro_sd"] == pytest.approx(np.std(linear, ddof=1))
    assert record["zero_shot"]["auroc_macro"] is not None
    assert record["settings"]["probe"]["learning_rate"] == 5e-2 and record["settings"]["lora"]["max_epochs"] == 1
    assert "± " in (out / "fewshot.md").read_text()
    assert (out / "fewshot_auroc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The stored linear head reproduces the run's test AUROC.
    test = load_preprocessed(fewshot_inputs["data"], "test")
    processor = AutoImageProcessor.from_pretrained(fewshot_inputs["model"])
    pixels = processor(list(test["cxr"]))["pixel_values"]
    run = next(r for r in record["runs"] if r["name"] == "linear_f1_s1234")
    classifier = load_fewshot_classifier(fewshot_inputs["model"], out, "linear", 1.0, 1234)
    with torch.no_grad():
        logits = classifier(pixel_values=pixels).logits.numpy()
    labels = np.asarray(test["labels"], dtype=np.float64)
    assert roc_auc(labels, logits, "macro") == pytest.approx(run["metrics"]["auroc_macro"], abs=1e-6)
    lora = load_fewshot_classifier(fewshot_inputs["model"], out, "lora", 0.5, 1024)
    assert type(lora) is X2CTCLIPForAbnormalityClassification
    assert (out / "adapters" / "lora_f0.5_s1024" / "adapter_config.json").is_file()

    # A rerun with the same settings trains nothing.
    import x2ctclip.train.fewshot.run as fewshot

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(fewshot, "train_linear_probe", fail)
    monkeypatch.setattr(fewshot, "train_lora", fail)
    assert main(args) == 0
    assert len(json.loads((out / "fewshot.json").read_text())["runs"]) == 8


def test_fewshot_command_errors(fewshot_inputs, capsys):
    base = ["fewshot", "--model", str(fewshot_inputs["model"]), "--data", str(fewshot_inputs["data"])]
    assert main(base + ["--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert main(base + ["--eval-split", "valid"]) == 2
    assert "no preprocessed split 'valid'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--fractions", "1.5"])


class _ArrayRows:
    def __init__(self, images):
        self.images = images

    def take(self, rows):
        return [self.images[int(r)] for r in rows]


def test_lora_on_a_swin_tower_trains_only_adapters_and_head():
    from x2ctclip.processors import X2CTCLIPImageProcessor

    torch.manual_seed(0)
    classifier = X2CTCLIPForAbnormalityClassification(tiny_config(towers=["cxr"]))
    rng = np.random.default_rng(0)
    images = _ArrayRows([(rng.random((32, 32)) * 255).astype(np.uint8) for _ in range(8)])
    labels = (rng.random((8, 18)) < 0.5).astype(float)
    head = classifier.classifier.weight.detach().clone()
    # Hold-out = training rows: one epoch surely lowers its loss, so the trained state is the one kept.
    peft_model, result = train_lora(classifier, X2CTCLIPImageProcessor(size=32, crop_size=32), images, labels,
                                    np.arange(8), np.arange(8), LoraTrainConfig(max_epochs=1, batch_size=4,
                                                                                learning_rate=1e-2))  # fmt: skip
    assert result.best_epoch == 1
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and any("classifier.modules_to_save" in n for n in trainable)
    assert result.trainable_parameters == sum(p.numel() for n, p in peft_model.named_parameters() if n in trainable)
    trained_head = peft_model.base_model.model.classifier.modules_to_save["default"].weight
    assert not torch.equal(trained_head, head)  # the head trained
    assert torch.equal(peft_model.base_model.model.classifier.original_module.weight, head)  # the original is kept
