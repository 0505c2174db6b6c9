"""x2ctclip.train.data.embedding_cache / ``x2ctclip cache-embeddings``: latents equal the towers' outputs, one row per
volume, resumption after SIGKILL gives the uninterrupted result, and refusals (other model, shapes, tokenizer)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_configs import TINY_TEXT, tiny_config

from x2ctclip import X2CTCLIPModel
from x2ctclip.processors import build_wordpiece_tokenizer, tokenize_reports
from x2ctclip.train.data.folders import EMBEDDING_CACHE_CONFIG, PREPROCESS_CONFIG, ct_values_from_ct, load_embedding_cache, load_preprocessed
from x2ctclip.train.data import preprocess as P
from x2ctclip.train.data.embedding_cache import cache_embeddings
from x2ctclip.train.cli.app import main as cli_main

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 16, 16)  # the tiny CT tower's input
SPACING = (40.0, 24.0, 24.0)  # mm: the whole synthetic chest (16 x 32 x 32 voxels, ~330 x 380 x 380 mm)


def _synthetic(root):
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    generate_synthetic_ct_rate(root, n_train=3, n_valid=2, shape=(16, 32, 32), seed=1, recons=2, progress=False)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_rate")
    _synthetic(root)
    out = tmp_path_factory.mktemp("pre") / "out"
    P.preprocess_ct_rate(root, out, splits=("train", "valid"), shape=SHAPE, spacing=SPACING, cxr_size=16, progress=False)
    return out


def _save_model(folder: Path, reports, seed: int = 0) -> Path:
    tokenizer = build_wordpiece_tokenizer(reports, vocab_size=200, alphabet=None,
                                          model_max_length=TINY_TEXT["max_position_embeddings"])
    torch.manual_seed(seed)
    model = X2CTCLIPModel(tiny_config(text_config=dict(TINY_TEXT, vocab_size=len(tokenizer))))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(preprocessed, tmp_path_factory):
    reports = [str(r) for r in load_preprocessed(preprocessed, "train", columns=["report"])["report"]]
    return _save_model(tmp_path_factory.mktemp("model"), reports)


@pytest.fixture(scope="module")
def cache(model_dir, preprocessed, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "cache"
    cache_embeddings(model_dir, preprocessed, out, batch_size=4, shard_size=4, device="cpu", progress=False)
    return out


def _assert_same(a, b):
    assert a.num_rows == b.num_rows
    for column in ("VolumeName", "scan_id", "labels", "ct_embeds", "text_embeds"):
        assert np.array_equal(np.asarray(a[column]), np.asarray(b[column])), column


def test_latents_are_the_towers_outputs(cache, model_dir, preprocessed):
    model = X2CTCLIPModel.from_pretrained(model_dir).eval()
    from x2ctclip.processors import load_report_tokenizer

    tokenizer = load_report_tokenizer(model_dir)
    config = json.loads((cache / EMBEDDING_CACHE_CONFIG).read_text())
    assert config["parameters"]["max_length"] == TINY_TEXT["max_position_embeddings"]
    assert config["parameters"]["model"] == str(model_dir.resolve()) and config["parameters"]["projection_dim"] == 16
    assert config["splits"] == {"train": {"num_rows": 6}, "valid": {"num_rows": 4}}
    for split in ("train", "valid"):
        rows = load_preprocessed(preprocessed, split)
        cached = load_embedding_cache(cache, split)
        assert [str(n) for n in cached["VolumeName"]] == [str(n) for n in rows["VolumeName"]]  # one row per volume
        assert np.array_equal(np.asarray(cached["labels"]), np.asarray(rows["labels"]))
        assert cached[0]["ct_embeds"].dtype == np.float32 and cached[0]["ct_embeds"].shape == (16,)
        with torch.inference_mode():
            ct = model.get_ct_features(ct_values_from_ct(rows[:]["ct"])).pooler_output
            tokens = tokenize_reports(tokenizer, [str(r) for r in rows[:]["report"]], max_length=64)
            text = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output
        np.testing.assert_allclose(np.asarray(cached["ct_embeds"]), F.normalize(ct, dim=-1).numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(cached["text_embeds"]), F.normalize(text, dim=-1).numpy(), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(cached["ct_embeds"]), axis=1), 1.0, atol=1e-6)


def test_refusals(cache, model_dir, preprocessed, tmp_path):
    other = _save_model(tmp_path / "other", ["another tokenizer vocabulary"], seed=1)
    with pytest.raises(ValueError, match="model_fingerprint"):
        cache_embeddings(other, preprocessed, cache, device="cpu", progress=False)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, no_tokenizer / name)
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        cache_embeddings(no_tokenizer, preprocessed, tmp_path / "c1", device="cpu", progress=False)
    # With --tokenizer it works (and equals the cache made with the model folder's own tokenizer).
    cache_embeddings(no_tokenizer, preprocessed, tmp_path / "c2", splits=["valid"], tokenizer=model_dir,
                     batch_size=4, shard_size=4, device="cpu", progress=False)
    _assert_same(load_embedding_cache(tmp_path / "c2", "valid"), load_embedding_cache(cache, "valid"))
    big = tmp_path / "big"
    P.preprocess_ct_rate(json.loads((preprocessed / PREPROCESS_CONFIG).read_text())["source_root"], big,
                         splits=("valid",), shape=(8, 32, 32), spacing=SPACING, cxr_size=16, progress=False)
    with pytest.raises(ValueError, match="8 x 32 x 32 do not fit"):
        cache_embeddings(model_dir, big, tmp_path / "c3", device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="test"):
        cache_embeddings(model_dir, preprocessed, tmp_path / "c4", splits=["test"], device="cpu", progress=False)


_SLOW_RUN = """
import sys, time
from x2ctclip import X2CTCLIPModel
original = X2CTCLIPModel.get_ct_features
def slow(self, *args, **kwargs):  # a slow CT tower, so that the kill lands in the middle of the run
    time.sleep(0.4)
    return original(self, *args, **kwargs)
X2CTCLIPModel.get_ct_features = slow
from x2ctclip.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_then_restart_equals_an_uninterrupted_run(cache, model_dir, preprocessed, tmp_path):
    out = tmp_path / "killed"
    argv = ["cache-embeddings", "--model", str(model_dir), "--data", str(preprocessed), "--out", str(out),
            "--split", "train", "--batch-size", "1", "--shard-size", "2", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SLOW_RUN), *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "train" / "data-00000-of-00003.arrow"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert first.exists(), stderr.decode()[-2000:]
    assert process.returncode == -signal.SIGKILL
    shards = sorted(p.name for p in (out / "train").glob("data-*.arrow"))
    assert 1 <= len(shards) < 3 and not (out / "train" / "state.json").exists()  # killed mid-way
    with pytest.raises(FileNotFoundError, match="unfinished"):
        load_embedding_cache(out, "train")

    assert cli_main(argv) == 0  # the restart skips the finished shard and removes any temporary file
    assert not list((out / "train").glob(".data-*"))
    reference = tmp_path / "reference"
    assert cli_main([*argv[:6], str(reference), *argv[7:]]) == 0
    _assert_same(load_embedding_cache(out, "train"), load_embedding_cache(reference, "train"))
    names = [str(n) for n in load_embedding_cache(out, "train")["VolumeName"]]
    assert len(names) == len(set(names)) == 6


@pytest.mark.parametrize("device, message", [("bogus", "'bogus' is not a torch device"),
                                             ("cuda:0", "CUDA is not available")])
def test_bad_device_is_one_line(model_dir, preprocessed, tmp_path, capsys, device, message):
    import torch

    from x2ctclip.train.cli.app import main

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "c"
    code = main(["cache-embeddings", "--model", str(model_dir), "--data", str(preprocessed), "--out", str(out),
                 "--device", device, "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("x2ctclip cache-embeddings: error: device ") and message in err
    assert not out.exists()
