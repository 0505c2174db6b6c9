"""Hub citizenship: save_for_hub folders, model cards (metadata, model-index, runnable usage snippet), local
validation, the push command (dry run and a mocked HfApi) and the card of converted CT-CLIP folders."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from tiny_configs import TINY_TEXT, tiny_config
from transformers import AutoImageProcessor, AutoTokenizer

from x2ctclip import X2CTCLIPModel
from x2ctclip.processors import X2CTCLIPImageProcessor, X2CTCLIPProcessor, build_wordpiece_tokenizer
from x2ctclip.train.hub.metadata import DEFAULT_TAGS
from x2ctclip.train.hub.results import _REPORT_METRICS
from x2ctclip.train.hub.validation import _model_index_problems, check_hub_folder, validate_card, validate_hub_folder
from x2ctclip.train.hub.push import push_folder
from x2ctclip.train.hub.export import save_for_hub
from x2ctclip.train.hub.card_sections import training_info_from_preprocess_config
from x2ctclip.train.hub.cards import write_ctclip_model_card
from x2ctclip.train.cli.app import main as cli_main
from x2ctclip.train.evaluation.metrics import classification_report

# Custom findings and prompts: what the card and the pipeline show must come from the config, not from defaults.
FINDINGS = ["Cardiomegaly", "Pleural effusion", "Emphysema", "Lung nodule"]
PROMPTS = [["Findings show {}.", "Findings show no {}."], ["{} is present.", "{} is not present."]]
IMAGE_SIZE = 32  # TINY_SWIN input size


def tiny_tokenizer():
    texts = [t.format(f) for f in FINDINGS for pair in PROMPTS for t in pair] + ["There is no acute finding."]
    return build_wordpiece_tokenizer(texts, vocab_size=300, alphabet=None, model_max_length=TINY_TEXT["max_position_embeddings"])


def tiny_model_and_processor(seed: int = 0, **overrides):
    tokenizer = tiny_tokenizer()
    config = tiny_config(
        text_config=dict(TINY_TEXT, vocab_size=len(tokenizer)),
        findings=list(FINDINGS),
        prompt_templates=[list(p) for p in PROMPTS],
        logit_scale_init_value=math.log(30.0),  # spread the scores of the random tiny model
        **overrides,
    )
    torch.manual_seed(seed)
    model = X2CTCLIPModel(config).eval()
    processor = X2CTCLIPProcessor(
        image_processor=X2CTCLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE),
        tokenizer=tokenizer,
        max_length=TINY_TEXT["max_position_embeddings"],
    )
    return model, processor


def evaluation_json(path: Path) -> dict:
    """An evaluation file with numbers *computed* by x2ctclip.train.evaluation.metrics on toy labels and scores."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(40, len(FINDINGS))).astype(float)
    y[:, 3] = 0  # a finding without positives: its AUROC / AP are undefined and must stay off the card
    scores = np.clip(y * 0.3 + rng.random(y.shape) * 0.7, 0, 1)
    report = classification_report(y, scores, FINDINGS).to_dict()
    content = {
        "results": [
            {
                "task": {"type": "zero-shot-image-classification", "name": "Zero-shot CT findings from CXR"},
                "dataset": {"name": "Toy test set", "type": "x2ctclip/toy-cxr", "split": "test"},
                "report": report,
                "source": {"name": "tests/test_hub.py"},
            }
        ]
    }
    path.write_text(json.dumps(content))
    return report


TRAINING_INFO = {
    "datasets": ["ibrahimhamamci/CT-RATE"],
    "base_models": ["microsoft/swin-tiny-patch4-window7-224"],
    "simulation": {"cxr_mode": "mean", "cxr_size": 224, "pixel_spacing_mm": 1.0},
    "hyperparameters": {"learning_rate": 5e-5, "batch_size": 360, "epochs": 50},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny X2CT-CLIP model saved with save_for_hub, with evaluation results and training info."""
    root = tmp_path_factory.mktemp("hub")
    model, processor = tiny_model_and_processor()
    report = evaluation_json(root / "eval.json")
    folder = save_for_hub(
        model, processor, root / "x2ctclip-tiny", metrics=root / "eval.json", training_info=TRAINING_INFO,
        model_id="someone/x2ctclip-tiny",
    )
    return folder, model, processor, report


def test_folder_holds_a_complete_repository(saved):
    folder, model, _, _ = saved
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "processor_config.json", "tokenizer_config.json"} <= files
    assert {"modeling_x2ctclip.py", "configuration_x2ctclip.py", "processing_x2ctclip.py", "image_processing_cxr.py"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert not any(name.startswith(".") for name in files) and not list(folder.parent.glob(".x2ctclip-tiny.*"))
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForZeroShotImageClassification"] == auto_map["AutoModel"] == "modeling_x2ctclip.X2CTCLIPModel"
    check = validate_hub_folder(folder)
    assert check.ok, check.errors
    # In-package loading of every component.
    assert isinstance(AutoImageProcessor.from_pretrained(folder), X2CTCLIPImageProcessor)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.get_vocab() == saved[2].tokenizer.get_vocab()
    loaded = X2CTCLIPModel.from_pretrained(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_card_metadata(saved):
    folder, _, _, report = saved
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-sa-4.0"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "zero-shot-image-classification"
    assert set(DEFAULT_TAGS) <= set(data["tags"])
    assert data["base_model"] == TRAINING_INFO["base_models"] and data["datasets"] == TRAINING_INFO["datasets"]
    assert validate_card(card, towers=["cxr", "ct", "text"]) == []
    # The model-index holds exactly the finite headline numbers of the evaluation file, nothing else.
    (entry,) = data["model-index"]
    (result,) = entry["results"]
    assert result["dataset"] == {"name": "Toy test set", "type": "x2ctclip/toy-cxr", "split": "test"}
    assert result["task"]["type"] == "zero-shot-image-classification"
    on_card = {(m["type"], m.get("config")): m["value"] for m in result["metrics"]}
    expected = {
        (metric_type, config): report[key]
        for key, (metric_type, config, _) in _REPORT_METRICS.items()
        if report.get(key) is not None
    }
    assert on_card == pytest.approx(expected) and len(on_card) == len(result["metrics"])
    assert on_card[("roc_auc", "macro")] == pytest.approx(report["auroc_macro"])


def test_card_text_comes_from_config_and_training_info(saved):
    folder, model, _, report = saved
    text = (folder / "README.md").read_text()
    for finding in FINDINGS:
        assert f"| {finding} |" in text
    for positive, negative in PROMPTS:
        assert f"`{positive}`" in text and f"`{negative}`" in text
    assert f'hypothesis_template="{PROMPTS[0][0]}"' in text
    assert "not a medical device" in text and "Research use only" in text and "simulated" in text
    assert "| cxr_mode | mean |" in text and "Mode `mean` (X2CT-CLIP's)" in text and "| learning_rate | 5e-05 |" in text
    assert "came without a record of its training run" not in text
    # Per-finding table: the finding without positives shows n/a, not a number.
    row = next(line for line in text.splitlines() if line.startswith("| Lung nodule | n/a"))
    assert "| 0 | 40 |" in row
    cardio = next(r for r in report["findings"] if r["name"] == "Cardiomegaly")
    assert f"| Cardiomegaly | {cardio['auroc']:.4g} |" in text
    assert "arXiv:2503.02162" in text and "arXiv:2403.17834" in text
    assert "scaled by `exp(logit_scale)` = 30 in these weights" in text  # read from the model, not the config
    assert f"cxr {sum(p.numel() for m in (model.cxr_model, model.cxr_projection) for p in m.parameters()):,}" in text


def test_training_info_from_a_preprocess_config(tmp_path):
    """The simulation settings recorded by `x2ctclip preprocess` go on the card; local paths and versions do not."""
    record = {
        "format_version": 1, "shape": [240, 480, 480], "spacing": [1.5, 0.75, 0.75], "cxr_mode": "beer_lambert",
        "cxr_view": "frontal", "cxr_size": 224, "ct_dtype": "int16", "ct_unit": "HU",
        "volume_processor": {"hu_min": -1000.0, "hu_max": 1000.0, "target_shape": [240, 480, 480], "pad_value": -1.0},
        "source_root": "/home/someone/private/ct-rate", "splits": {"train": {"num_rows": 3}}, "versions": {"torch": "2"},
    }  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "preprocess_config.json").write_text(json.dumps(record))
    info = training_info_from_preprocess_config(tmp_path / "data")
    assert info == training_info_from_preprocess_config(record)
    model, processor = tiny_model_and_processor()
    folder = save_for_hub(model, processor, tmp_path / "out", training_info=info)
    text = (folder / "README.md").read_text()
    assert "Mode `beer_lambert`" in text and "| cxr_size | 224 |" in text and "| cxr_view | frontal |" in text
    assert "| volume_processor.hu_min | -1000 |" in text and "| spacing | 1.5, 0.75, 0.75 |" in text
    assert "/home/someone" not in text and "num_rows" not in text and "pad_value" not in text
    with pytest.raises(FileNotFoundError, match="preprocess_config.json"):
        training_info_from_preprocess_config(tmp_path / "out")


def test_no_results_means_no_model_index(tmp_path):
    model, processor = tiny_model_and_processor()
    folder = save_for_hub(model, processor, tmp_path / "plain")
    card = ModelCard.load(folder / "README.md")
    assert "model-index" not in card.data.to_dict() and "metrics" not in card.data.to_dict()
    assert "No evaluation results were supplied" in card.text
    assert "came without a record of its training run" in card.text
    assert "base_model" not in card.data.to_dict() and "datasets" not in card.data.to_dict()
    assert 'model_id = "plain"' in card.text


@pytest.mark.parametrize(
    "content, message",
    [
        ({"results": [{"metrics": {"auroc_macro": 0.7}}]}, "needs 'dataset'"),
        ({"results": [{"dataset": {"name": "x", "type": "a/b"}}]}, "needs 'metrics'"),
        ({"results": [{"dataset": {"name": "x", "type": "a/b"}, "metrics": {"auroc_macro": None}}]}, "no finite metric"),
        ({"results": [{"dataset": {"name": "x", "type": "a/b"}, "metrics": [{"type": "roc_auc", "value": "high"}]}]}, "non-numeric"),
    ],
)
def test_bad_evaluation_file_is_refused_before_writing(tmp_path, content, message):
    model, processor = tiny_model_and_processor()
    (tmp_path / "eval.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as info:
        save_for_hub(model, processor, tmp_path / "out", metrics=tmp_path / "eval.json")
    assert "eval.json" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_out_dir_rules_and_bad_inputs(tmp_path):
    model, processor = tiny_model_and_processor()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        save_for_hub(model, processor, tmp_path / "busy")
    save_for_hub(model, processor, tmp_path / "busy", overwrite=True)
    assert not (tmp_path / "busy" / "keep.txt").exists() and (tmp_path / "busy" / "README.md").is_file()
    ct_only, _ = tiny_model_and_processor(towers=["ct", "text"])
    with pytest.raises(ValueError, match="no cxr tower"):
        save_for_hub(ct_only, processor, tmp_path / "ct")
    with pytest.raises(ValueError, match="image_processor"):
        save_for_hub(model, processor.tokenizer, tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        save_for_hub(model, processor, tmp_path / "m", metrics=tmp_path / "missing.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_remote_code_file_name_clash_is_refused(tmp_path):
    """Remote-code files land flat in one folder: a processing file named like a modeling file must be caught."""
    model, processor = tiny_model_and_processor()

    class ClashingProcessor:
        image_processor, tokenizer = processor.image_processor, processor.tokenizer
        _auto_class = "AutoProcessor"

        def save_pretrained(self, folder):
            processor.save_pretrained(folder)
            Path(folder, "loss.py").write_text("# another loss.py\n")

    with pytest.raises(ValueError, match=r"\['loss.py'\]"):
        save_for_hub(model, ClashingProcessor(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _edit_card(folder: Path, tmp_path: Path, edit) -> Path:
    card = ModelCard.load(folder / "README.md")
    edit(card.data)
    path = tmp_path / "README.md"
    card.save(path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: setattr(d, "license", None), "'license' is missing"),
        (lambda d: setattr(d, "license", "cc-by-nc-sa"), "not a Hub license id"),
        (lambda d: setattr(d, "license", "other"), "needs 'license_name' and 'license_link'"),
        (lambda d: setattr(d, "library_name", "open_clip"), "'library_name' must be 'transformers'"),
        (lambda d: setattr(d, "pipeline_tag", "image-classification"), "'pipeline_tag' must be"),
        (lambda d: setattr(d, "tags", []), "'tags' must be a non-empty list"),
        (lambda d: setattr(d, "base_model", ["swin tiny"]), "'base_model' entry 'swin tiny' is not a Hub id"),
    ],
)  # fmt: skip
def test_card_validation_reports_each_problem(saved, tmp_path, edit, message):
    path = _edit_card(saved[0], tmp_path, edit)
    problems = validate_card(path, towers=["cxr", "ct", "text"])
    assert any(message in p for p in problems), problems


def test_malformed_model_index_in_a_card_is_reported(tmp_path):
    import yaml

    meta = {
        "license": "cc-by-nc-sa-4.0", "library_name": "transformers", "tags": ["x2ctclip"],
        "pipeline_tag": "zero-shot-image-classification",
        "model-index": [{"name": "m", "results": [{"task": {"type": "zero-shot-image-classification"},
                                                   "dataset": {"name": "d"}, "metrics": [{"type": "roc_auc"}]}]}],
    }  # fmt: skip
    (tmp_path / "README.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n# card\n")
    problems = validate_card(tmp_path / "README.md", towers=["cxr", "text"])
    assert problems == [
        "model-index[0].results[0].dataset needs 'name' and 'type'",
        "model-index[0].results[0].metrics[0] needs a 'type' and a finite numeric 'value'",
    ]
    (tmp_path / "README.md").write_text("# a card without metadata\n")
    assert validate_card(tmp_path / "README.md") == [f"{tmp_path / 'README.md'}: the card has no YAML metadata block"]


def test_model_index_metric_without_value_is_reported():
    index = [{"name": "m", "results": [{"task": {"type": "t"}, "dataset": {"name": "d", "type": "a/b"},
                                        "metrics": [{"type": "roc_auc", "value": float("nan")}]}]}]  # fmt: skip
    assert _model_index_problems(index) == ["model-index[0].results[0].metrics[0] needs a 'type' and a finite numeric 'value'"]
    assert _model_index_problems([]) == ["'model-index' must be a non-empty list"]


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda f: (f / "tokenizer.json").unlink() or (f / "tokenizer_config.json").unlink(), "tokenizer files are missing"),
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda f: (f / "pytorch_model.bin").write_bytes(b"\x80"), "pickled weights"),
        (lambda f: (f / "loss.py").unlink(), "imports .loss, but loss.py is not in the folder"),
        (lambda f: (f / "README.md").unlink(), "README.md (the model card) is missing"),
        (lambda f: (f / "modeling_x2ctclip.py").write_text("from x2ctclip import X2CTCLIPModel\n"), "defines no class X2CTCLIPModel"),
        (lambda f: (f / "extra.py").write_text("import x2ctclip\n"), "imports the x2ctclip package"),
        (lambda f: _rewrite_json(f / "config.json", lambda c: c["auto_map"].pop("AutoModelForZeroShotImageClassification")),
         "no AutoModelForZeroShotImageClassification entry"),
        (lambda f: _rewrite_json(f / "processor_config.json", lambda c: c["image_processor"].pop("auto_map")),
         "no auto_map AutoImageProcessor entry"),
    ],
)  # fmt: skip
def test_folder_validation_reports_each_problem(saved, tmp_path, breakage, message):
    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    breakage(folder)
    check = validate_hub_folder(folder)
    assert any(message in e for e in check.errors), check.errors
    with pytest.raises(ValueError, match="is not a complete Hub model folder"):
        check_hub_folder(folder)


def _rewrite_json(path: Path, change) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


# ---------------------------------------------------------------------------------------------------- push


def test_push_dry_run_lists_files_and_touches_no_network(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    (folder / ".DS_Store").write_text("x")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "loss.cpython-311.pyc").write_bytes(b"x")
    api = mock.MagicMock()
    result = push_folder(folder, "someone/x2ctclip-tiny", dry_run=True, api=api)
    assert api.mock_calls == []
    expected = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    assert result.files == expected and result.total_bytes == sum(s for _, s in expected)
    assert result.warnings == [] and result.card_metadata["license"] == "cc-by-nc-sa-4.0"
    other = push_folder(folder, "someone/renamed", dry_run=True)
    assert any("'someone/x2ctclip-tiny', not 'someone/renamed'" in w for w in other.warnings)


def test_push_creates_the_repo_and_uploads_the_folder(saved):
    api = mock.MagicMock()
    api.create_repo.return_value = "https://huggingface.co/someone/x2ctclip-tiny"
    result = push_folder(saved[0], "someone/x2ctclip-tiny", private=True, api=api, commit_message="first")
    api.create_repo.assert_called_once_with("someone/x2ctclip-tiny", private=True, exist_ok=True, repo_type="model")
    api.upload_folder.assert_called_once()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "someone/x2ctclip-tiny" and Path(kwargs["folder_path"]) == saved[0]
    assert kwargs["commit_message"] == "first" and kwargs["repo_type"] == "model" and ".*" in kwargs["ignore_patterns"]
    assert result.url == "https://huggingface.co/someone/x2ctclip-tiny" and not result.dry_run


def test_push_refuses_a_broken_folder_before_any_network(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    (folder / "model.safetensors").unlink()
    api = mock.MagicMock()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        push_folder(folder, "someone/x", api=api)
    with pytest.raises(ValueError, match="'owner/name'"):
        push_folder(saved[0], "no-owner", api=api)
    assert api.mock_calls == []


def test_cli_push(saved, tmp_path, capsys):
    assert cli_main(["push", str(saved[0]), "someone/x2ctclip-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Would upload" in out and "model.safetensors" in out and "model-index: 1 result(s)" in out
    size = (saved[0] / "model.safetensors").stat().st_size
    assert f"{size:,d} B" in out and "nothing was uploaded" in out
    assert cli_main(["push", str(tmp_path / "absent"), "someone/x", "--dry-run"]) == 2
    assert "no such model folder" in capsys.readouterr().err
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api_class.return_value.create_repo.return_value = "https://huggingface.co/someone/x2ctclip-tiny"
        assert cli_main(["push", str(saved[0]), "someone/x2ctclip-tiny", "--private", "--token", "t"]) == 0
    api_class.assert_called_once_with(token="t")
    api_class.return_value.create_repo.assert_called_once_with("someone/x2ctclip-tiny", private=True, exist_ok=True, repo_type="model")
    assert "Done: https://huggingface.co/someone/x2ctclip-tiny" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- CT-CLIP


@pytest.fixture(scope="module")
def ctclip_folder(tmp_path_factory):
    """A folder shaped like `x2ctclip convert-ctclip` output: CT + report towers, weights, tokenizer."""
    folder = tmp_path_factory.mktemp("ctclip") / "ct-clip-tiny"
    model, processor = tiny_model_and_processor(towers=["ct", "text"])
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    return folder


def test_ctclip_card_carries_license_and_citation(ctclip_folder, tmp_path):
    checkpoint = tmp_path / "CT-CLIP_v2.pt"
    checkpoint.write_bytes(b"stand-in bytes for the original checkpoint")
    path = write_ctclip_model_card(ctclip_folder, source_checkpoint=checkpoint, compute_sha256=True)
    assert path == ctclip_folder / "README.md" and not list(ctclip_folder.glob(".README*"))
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-sa-4.0" and data["library_name"] == "transformers"
    assert "pipeline_tag" not in data and "model-index" not in data
    assert data["datasets"] == ["ibrahimhamamci/CT-RATE"] and data["base_model"] == ["microsoft/BiomedVLP-CXR-BERT-specialized"]
    assert "arXiv:2403.17834" in card.text and "Hamamci" in card.text and "ShareAlike" in card.text
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in card.text and "`CT-CLIP_v2.pt`" in card.text
    assert "not a medical device" in card.text and "= 30 in these weights" in card.text
    assert "chest-x-ray" not in data["tags"] and "ct-clip" in data["tags"]
    for finding in FINDINGS:
        assert f"| {finding} |" in card.text
    check = validate_hub_folder(ctclip_folder)
    assert check.ok, check.errors


def test_ctclip_card_without_tokenizer_says_so(ctclip_folder, tmp_path):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(ctclip_folder, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    write_ctclip_model_card(folder)
    assert "No tokenizer was saved with this conversion" in (folder / "README.md").read_text()
    assert any("tokenizer files are missing" in e for e in validate_hub_folder(folder).errors)
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_ctclip_model_card(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not a CT-CLIP conversion"):
        write_ctclip_model_card(_cxr_text_folder(tmp_path))


def _cxr_text_folder(tmp_path: Path) -> Path:
    model, _ = tiny_model_and_processor(towers=["cxr", "text"])
    model.save_pretrained(tmp_path / "cxr-text")
    return tmp_path / "cxr-text"


@pytest.mark.shared
def test_ctclip_card_on_a_real_conversion(shared_dir, tmp_path):
    from x2ctclip.convert_ctclip import convert_ctclip_checkpoint

    reference = shared_dir / "reference" / "ctclip"
    checkpoint = reference / "ctclip_tiny.ctclip_state_dict.safetensors"
    folder = convert_ctclip_checkpoint(checkpoint, tmp_path / "converted", config_path=reference / "ctclip_tiny.json")
    write_ctclip_model_card(folder, source_checkpoint=checkpoint, model_id="someone/ct-clip-tiny")
    text = (folder / "README.md").read_text()
    assert f"{checkpoint.stat().st_size:,} bytes" in text and 'model_id = "someone/ct-clip-tiny"' in text
    # The converted folder has no tokenizer here (none given to the converter): the card and the check say so.
    assert "No tokenizer was saved" in text
    assert [e for e in validate_hub_folder(folder).errors if "tokenizer" not in e] == []


# ---------------------------------------------------------------------------------------------------- snippets

SNIPPET_RUNNER = textwrap.dedent(
    """
    import importlib.abc, os, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "x2ctclip" or name.startswith("x2ctclip."):
                raise ModuleNotFoundError(f"x2ctclip is hidden in this test ({name})")

    sys.meta_path.insert(0, HidePackage())
    for snippet, workdir in zip(sys.argv[1::2], sys.argv[2::2]):
        os.chdir(workdir)
        print(f"=== {snippet}", flush=True)
        source = open(snippet).read()
        exec(compile(source, snippet, "exec"), {"__name__": "__main__"})
    """
)


def card_snippet(readme: Path, folder: Path) -> str:
    """The card's Python example, with only its `model_id` pointed at the local folder."""
    (code,) = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    code, n = re.subn(r'^model_id = "[^"]*"', f"model_id = {str(folder)!r}", code, flags=re.MULTILINE)
    assert n == 1
    return code


@pytest.mark.slow
def test_card_snippets_run_offline_without_the_package(saved, ctclip_folder, tmp_path):
    from PIL import Image

    folder = saved[0]
    write_ctclip_model_card(ctclip_folder)
    workdir = tmp_path / "work"
    workdir.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(workdir / "frontal_cxr.png")
    (tmp_path / "x2ct.py").write_text(card_snippet(folder / "README.md", folder))
    (tmp_path / "ctclip.py").write_text(card_snippet(ctclip_folder / "README.md", ctclip_folder))
    (tmp_path / "runner.py").write_text(SNIPPET_RUNNER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [str(tmp_path / "x2ct.py"), str(workdir), str(tmp_path / "ctclip.py"), str(workdir)]
    proc = subprocess.run([sys.executable, str(tmp_path / "runner.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=workdir, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr  # every call passes trust_remote_code
    x2ct_out, ctclip_out = proc.stdout.split("=== ")[1:]
    for out in (x2ct_out, ctclip_out):  # one "<finding> <probability>" line per finding of the config
        for finding in FINDINGS:
            line = next(line for line in out.splitlines() if line.startswith(finding + " "))
            assert 0.0 <= float(line.split()[-1]) <= 1.0
    assert "'label': 'Cardiomegaly'" in x2ct_out and "'score':" in x2ct_out
