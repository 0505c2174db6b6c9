"""Tiny on-disk inputs for the trainer tests: preprocessed shards, a CT-CLIP model folder and an embedding cache,
in the formats of docs/data_pipeline.md, made directly (no CT simulation) so that each test builds them in well under a second.

Rows carry signal: finding ``k`` of a row brightens band ``k`` of its CT and of its CXR and is named in its report,
so a few training steps lower the loss. Importable from tests (``from scripts.train_fixtures import ...``) and from
the subprocess scripts next to this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from tiny_configs import TINY_CT, TINY_TEXT  # noqa: E402

from x2ctclip import CT_RATE_FINDINGS, X2CTCLIPConfig, X2CTCLIPModel  # noqa: E402

CT_SHAPE = (8, 16, 16)
CXR_SIZE = 40
PROJECTION_DIM = 16


def rows_for_split(split: str, n_scans: int, seed: int, recons: int = 2) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_scans):
        labels = (rng.random(len(CT_RATE_FINDINGS)) < 0.3).astype(np.int8)
        report = " ".join(
            f"There is {f.lower()}." if y else f"No {f.lower()}." for f, y in zip(CT_RATE_FINDINGS, labels)
        )
        for recon in range(1, recons + 1):
            ct = rng.normal(-600, 80, CT_SHAPE)
            cxr = rng.normal(90, 15, (CXR_SIZE, CXR_SIZE))
            for k in np.flatnonzero(labels):
                ct[:, (k % 8) * 2, :] += 400
                cxr[(k % 10) * 4 : (k % 10) * 4 + 4, :] += 60
            rows.append(
                {
                    "VolumeName": f"{split}_{patient}_a_{recon}",
                    "scan_id": f"{split}_{patient}_a",
                    "labels": labels.tolist(),
                    "report": report,
                    "ct": np.clip(ct, -1000, 1000).astype(np.int16),
                    "cxr": np.clip(cxr, 0, 255).astype(np.uint8),
                }
            )
    return rows


def make_preprocessed(root: Path, scans: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``root/{split}/`` shards and ``root/preprocess_config.json``; ``scans`` = scans per split (2 recons each)."""
    from datasets import Dataset

    from x2ctclip.train.data.folders import preprocessed_features

    root = Path(root)
    scans = scans or {"train": 12, "valid": 6}
    features = preprocessed_features(CT_SHAPE, CXR_SIZE)
    for i, (split, n) in enumerate(scans.items()):
        rows = rows_for_split(split, n, seed + 100 * i)
        columns = {key: [r[key] for r in rows] for key in rows[0]}
        Dataset.from_dict(columns, features=features).save_to_disk(str(root / split))
    config = {"volume_processor": {"target_shape": list(CT_SHAPE)}, "cxr_size": CXR_SIZE, "source": "test fixture"}
    (root / "preprocess_config.json").write_text(json.dumps(config))
    return root


def make_ctclip_model(folder: Path, seed: int = 0) -> Path:
    """A tiny CT-CLIP folder (CT and report towers, no tokenizer)."""
    import torch

    torch.manual_seed(seed)
    config = X2CTCLIPConfig(
        towers=["ct", "text"], ct_config=dict(TINY_CT, use_vq=False), text_config=dict(TINY_TEXT),
        projection_dim=PROJECTION_DIM, logit_scale_init_value=2.0,
    )
    X2CTCLIPModel(config).save_pretrained(folder)
    return Path(folder)


def make_cache(cache: Path, model_dir: Path, data: Path, splits=("train", "valid")) -> Path:
    """An embedding cache of ``model_dir``'s CT and report towers on ``data`` (reports tokenised by characters)."""
    import torch
    from datasets import Dataset

    from x2ctclip.train.data.folders import embedding_cache_features, load_preprocessed

    model = X2CTCLIPModel.from_pretrained(model_dir).eval()
    for split in splits:
        ds = load_preprocessed(data, split)
        with torch.no_grad():
            ct = torch.from_numpy(np.stack(ds["ct"]).astype(np.float32) / 1000)[:, None]
            ct_embeds = torch.nn.functional.normalize(model.get_ct_features(ct).pooler_output, dim=-1)
            ids = torch.tensor([[2 + (ord(ch) % 90) for ch in r[:60].ljust(60)] for r in ds["report"]])
            text_embeds = torch.nn.functional.normalize(model.get_text_features(ids).pooler_output, dim=-1)
        columns = {
            "VolumeName": list(ds["VolumeName"]),
            "scan_id": list(ds["scan_id"]),
            "labels": [list(map(int, x)) for x in ds["labels"]],
            "ct_embeds": ct_embeds.numpy().tolist(),
            "text_embeds": text_embeds.numpy().tolist(),
        }
        Dataset.from_dict(columns, features=embedding_cache_features(PROJECTION_DIM)).save_to_disk(str(Path(cache) / split))
    (Path(cache) / "cache_config.json").write_text(json.dumps({"model": str(model_dir), "data": str(data)}))
    return Path(cache)


def make_x2ct_inputs(root: Path) -> dict[str, Path]:
    root = Path(root)
    data = make_preprocessed(root / "data")
    model = make_ctclip_model(root / "ctclip")
    cache = make_cache(root / "cache", model, data)
    return {"data": data, "ctclip": model, "cache": cache}


def x2ct_config(inputs: dict[str, Path], output_dir: Path, **overrides):
    from x2ctclip.train.training.config import X2CTTrainConfig

    values = dict(
        output_dir=str(output_dir), ctclip_model=str(inputs["ctclip"]), data_dir=str(inputs["data"]),
        embedding_cache=str(inputs["cache"]), cxr_preset="tiny", image_size=32, per_device_batch_size=4,
        max_steps=6, learning_rate=1e-3, save_steps=0, logging_steps=1, progress_bar=False,
        report_to=["csv"], eval_split=None,
    )
    values.update(overrides)
    return X2CTTrainConfig(**values)


def one_process_run_and_two_process_config(tmp_path: Path, max_steps: int) -> Path:
    """Train the x2ct stage in this process at a per-device batch of 8 (``tmp_path/one``) and write the same run
    for 2 processes at a per-device batch of 4 (same global batch) as ``tmp_path/two/run.yaml``; returns its path."""
    from accelerate.state import AcceleratorState

    from x2ctclip.train.training.x2ct_stage import train_x2ct

    AcceleratorState._reset_state(True)
    inputs = make_x2ct_inputs(tmp_path / "inputs")
    common = dict(max_steps=max_steps, save_steps=0, logging_steps=1)
    train_x2ct(x2ct_config(inputs, tmp_path / "one", per_device_batch_size=8, **common))
    AcceleratorState._reset_state(True)
    config = x2ct_config(inputs, tmp_path / "two", per_device_batch_size=4, **common)
    (tmp_path / "two").mkdir()
    config.to_yaml(tmp_path / "two" / "run.yaml")
    return tmp_path / "two" / "run.yaml"


def launch(command: list[str], env: dict, timeout: float = 300) -> tuple[int, str, str]:
    """Run a multi-process launcher in its own process group (a timeout kills the launcher *and* its workers) ->
    ``(returncode, stdout, stderr)``."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, stdout, stderr


def run_launcher(command: list[str], env: dict, timeout: float = 300) -> None:
    """:func:`launch`, and assert it succeeded, with the end of its stderr."""
    returncode, _, stderr = launch(command, env, timeout)
    assert returncode == 0, stderr[-4000:]
