"""``x2ctclip preprocess`` / ``cache-embeddings`` / ``evaluate`` under ``torchrun --nproc_per_node 2`` (two CPU
processes, gloo): the output equals the one-process output (rows, order, values), ``world_size`` is recorded, and a
rank killed with SIGKILL after its first shard leaves complete shards that the rerun keeps (not recomputed)."""

import itertools
import json
import os
import sys

import numpy as np
import pytest
import torch
from scripts.train_fixtures import launch
from tiny_configs import TINY_TEXT, tiny_config

from x2ctclip import X2CTCLIPModel
from x2ctclip.processors import build_wordpiece_tokenizer
from x2ctclip.train.data import preprocess as P
from x2ctclip.train.data.embedding_cache import cache_embeddings
from x2ctclip.train.data.folders import (
    EMBEDDING_CACHE_CONFIG,
    PREPROCESS_CONFIG,
    load_embedding_cache,
    load_preprocessed,
)
from x2ctclip.train.distributed import KILL_HOOK_ENV, batch_block, owned

SHAPE = (8, 16, 16)  # the tiny CT tower's input
SPACING = (40.0, 24.0, 24.0)  # mm: the whole synthetic chest (16 x 32 x 32 voxels)
CXR = 16


def _torchrun(args, env_extra=None, timeout=300):
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 -m x2ctclip.train.cli ARGS``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env_extra or {}))
    return launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "x2ctclip.train.cli", *map(str, args)], env, timeout)


def _preprocess_args(root, out):
    return ["preprocess", root, out, "--split", "train", "--split", "valid", "--shape", *SHAPE, "--spacing",
            *SPACING, "--cxr-size", CXR, "--shard-size", 1, "--no-progress"]


@pytest.fixture(scope="module")
def ct_rate(tmp_path_factory):
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    root = tmp_path_factory.mktemp("ct_rate")
    generate_synthetic_ct_rate(root, n_train=3, n_valid=2, shape=(16, 32, 32), seed=2, recons=2, progress=False)
    return root


@pytest.fixture(scope="module")
def one(ct_rate, tmp_path_factory):
    """The one-process reference (a plain call, world_size 1)."""
    out = tmp_path_factory.mktemp("one") / "out"
    P.preprocess_ct_rate(ct_rate, out, splits=("train", "valid"), shape=SHAPE, spacing=SPACING, cxr_size=CXR,
                         shard_size=1, progress=False)
    return out


def _assert_same_split(a, b, columns):
    assert a.num_rows == b.num_rows
    for column in columns:
        x, y = a.with_format("numpy")[column], b.with_format("numpy")[column]
        assert np.array_equal(np.asarray(x), np.asarray(y)), column


def _assert_same_folder(two, one, loader, columns, splits):
    for split in splits:
        _assert_same_split(loader(two, split), loader(one, split), columns)
        # Same finished split: the same shard files listed in the same order, the same features.
        for name in ("state.json", "dataset_info.json"):
            assert json.loads((two / split / name).read_text()) == json.loads((one / split / name).read_text())


PRE_COLUMNS = ("VolumeName", "scan_id", "labels", "report", "ct", "cxr")


def test_helpers_split_work_disjointly_and_in_order():
    assert owned(range(7), 3, 0) == [0, 3, 6] and owned(range(7), 3, 2) == [2, 5]
    for n, batch in ((0, 4), (5, 4), (17, 4), (64, 8)):
        blocks = [batch_block(n, batch, 3, r) for r in range(3)]
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))  # contiguous, in rank order
        assert all(start % batch == 0 or start == n for start, _ in blocks)  # on batch boundaries (or empty)


@pytest.mark.slow  # three torchrun launches (~60 s on two shared cores)
def test_two_processes_equal_one_and_a_killed_rank_resumes(ct_rate, one, tmp_path):
    assert json.loads((one / PREPROCESS_CONFIG).read_text())["world_size"] == 1
    out = tmp_path / "two"
    rc, _, stderr = _torchrun(_preprocess_args(ct_rate, out))
    assert rc == 0, stderr[-4000:]
    _assert_same_folder(out, one, load_preprocessed, PRE_COLUMNS, ("train", "valid"))
    config = json.loads((out / PREPROCESS_CONFIG).read_text())
    reference = json.loads((one / PREPROCESS_CONFIG).read_text())
    assert config["world_size"] == 2
    assert {k: v for k, v in config.items() if k != "world_size"} == {
        k: v for k, v in reference.items() if k != "world_size"}

    # Rank 1 kills itself (SIGKILL) right after its first shard (train shard 1); the job fails.
    killed = tmp_path / "killed"
    rc, _, stderr = _torchrun(_preprocess_args(ct_rate, killed), {KILL_HOOK_ENV: "1:1"})
    assert rc != 0
    train = killed / "train"
    assert (train / "data-00001-of-00006.arrow").is_file()
    assert not (train / "state.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in train.glob("data-*.arrow")}
    rc, _, stderr = _torchrun(_preprocess_args(ct_rate, killed))
    assert rc == 0, stderr[-4000:]
    for name, mtime in done.items():
        assert (train / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    _assert_same_folder(killed, one, load_preprocessed, PRE_COLUMNS, ("train", "valid"))
    assert not list(train.glob(".data-*"))  # no temporary file left


@pytest.fixture(scope="module")
def model_dir(one, tmp_path_factory):
    reports = [str(r) for r in load_preprocessed(one, "train", columns=["report"])["report"]]
    tokenizer = build_wordpiece_tokenizer(reports, vocab_size=200, alphabet=None,
                                          model_max_length=TINY_TEXT["max_position_embeddings"])
    torch.manual_seed(0)
    model = X2CTCLIPModel(tiny_config(text_config=dict(TINY_TEXT, vocab_size=len(tokenizer))))
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cache_embeddings_two_processes_equal_one(one, model_dir, tmp_path):
    reference = tmp_path / "cache_one"
    stats = {}
    cache_embeddings(model_dir, one, reference, batch_size=2, shard_size=2, device="cpu", progress=False, stats=stats)
    assert stats["valid"]["volumes"] == 4 and stats["valid"]["world_size"] == 1
    out = tmp_path / "cache_two"
    args = ["cache-embeddings", "--model", model_dir, "--data", one, "--out", out, "--batch-size", 2,
            "--shard-size", 2, "--device", "cpu", "--no-progress"]
    rc, stdout, stderr = _torchrun(args, {KILL_HOOK_ENV: "1:1"})
    assert rc != 0  # rank 1 died after its first shard
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/data-*.arrow")}
    assert done
    rc, stdout, stderr = _torchrun(args)
    assert rc == 0, stderr[-4000:]
    assert "volumes/s over 2 processes" in stdout
    assert all(p.stat().st_mtime_ns == m for p, m in done.items())  # complete shards were kept
    columns = ("VolumeName", "scan_id", "labels", "ct_embeds", "text_embeds")
    _assert_same_folder(out, reference, load_embedding_cache, columns, ("train", "valid"))
    assert json.loads((out / EMBEDDING_CACHE_CONFIG).read_text())["world_size"] == 2
    assert json.loads((reference / EMBEDDING_CACHE_CONFIG).read_text())["world_size"] == 1


def test_evaluate_all_two_processes_equal_one(tmp_path):
    import shutil

    from scripts.eval_fixtures import make_model, make_preprocessed

    from x2ctclip.train.cli.app import main

    data = make_preprocessed(tmp_path / "data", {"valid": 10, "test": 10})
    model = make_model(tmp_path / "model", seed=0)
    one_model, two_model = (shutil.copytree(model, tmp_path / name) for name in ("model_one", "model_two"))
    # Batches of 3: 4 batches of CXRs, CTs and reports per split, dealt 2 + 2 over the ranks.
    common = ["--data", data, "--batch-size", 3, "--n-bootstrap", 20, "--seed", 3, "--no-progress"]
    # The reference runs with the workers' one intra-op thread (torchrun's OMP_NUM_THREADS=1): with two threads the
    # convolutions sum in another order on some CPUs, and last-bit logit differences move the calibration's Newton
    # fit by ~1e-5. What is compared is the split over ranks, not the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["evaluate", "all", "--model", str(one_model), *map(str, common), "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    rc, stdout, stderr = _torchrun(["evaluate", "all", "--model", two_model, *common, "--out", tmp_path / "two"])
    assert rc == 0, stderr[-4000:]
    assert stdout.count("# Evaluation of") == 1  # rank 0 alone prints
    one, two = (json.loads((tmp_path / name / "evaluation.json").read_text()) for name in ("one", "two"))
    assert two["results"] == one["results"] and len(one["results"]) >= 2  # classification and retrieval
    name = "zeroshot_test_predictions.csv"
    assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    for name in ("zeroshot_test.json", "retrieval_test.json"):
        a, b = (json.loads((tmp_path / folder / name).read_text()) for folder in ("one", "two"))
        assert b["results"] == a["results"], name
    # The calibration fitted on rank 0 and stored in the model folder is the one-process calibration.
    config = lambda folder: json.loads((folder / "config.json").read_text())
    assert config(two_model) == config(one_model)


def test_cache_embeddings_bf16_autocast_is_recorded_and_close(one, model_dir, tmp_path):
    cache_embeddings(model_dir, one, tmp_path / "fp32", splits=["valid"], batch_size=2, device="cpu", progress=False)
    cache_embeddings(model_dir, one, tmp_path / "bf16", splits=["valid"], batch_size=2, device="cpu", progress=False,
                     bf16=True)
    full, half = (load_embedding_cache(tmp_path / name, "valid") for name in ("fp32", "bf16"))
    assert json.loads((tmp_path / "bf16" / EMBEDDING_CACHE_CONFIG).read_text())["parameters"]["autocast"] == "bfloat16"
    assert "autocast" not in json.loads((tmp_path / "fp32" / EMBEDDING_CACHE_CONFIG).read_text())["parameters"]
    for column in ("ct_embeds", "text_embeds"):
        a, b = np.asarray(full[column]), np.asarray(half[column])
        assert b.dtype == np.float32 and a.shape == b.shape
        # Both L2-normalised. bf16 keeps 8 mantissa bits; the tiny random towers amplify that for some volumes (a
        # cosine of 0.91 was seen), while unrelated 16-d latents would be near 0.
        cosine = (a * b).sum(-1)
        assert cosine.min() > 0.8 and cosine.mean() > 0.9, (column, cosine)
    with pytest.raises(ValueError, match="autocast"):  # a cache is made one way only
        cache_embeddings(model_dir, one, tmp_path / "bf16", splits=["valid"], batch_size=2, device="cpu",
                         progress=False)
