"""Tiny on-disk inputs for the evaluation and few-shot tests: a preprocessed folder (the columns of docs/data_pipeline.md) with
signal in the simulated CXRs, and model folders (tiny towers, WordPiece tokenizer, processor) made in a second.

Finding ``k`` of a row brightens a horizontal band of its CXR (rows ``(k % 9) * 4`` to ``+ 4``) and of its CT, and
is named in its report; rows 0 and 1 of every split are all-positive / all-negative so each finding has both classes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from tiny_configs import TINY_CT, TINY_RESNET, TINY_SWIN, TINY_TEXT  # noqa: E402

from x2ctclip import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES, X2CTCLIPConfig, X2CTCLIPModel  # noqa: E402

CT_SHAPE = (8, 16, 16)
CXR_SIZE = 40
IMAGE_SIZE = 32
PROJECTION_DIM = 16


def split_rows(split: str, n_scans: int, seed: int, recons: int = 1, prevalence: float = 0.35) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_scans):
        labels = (rng.random(len(CT_RATE_FINDINGS)) < prevalence).astype(np.int8)
        if patient < 2:
            labels[:] = 1 - patient
        report = " ".join(f"There is {f.lower()}." if y else f"No {f.lower()}." for f, y in zip(CT_RATE_FINDINGS, labels))
        for recon in range(1, recons + 1):
            ct = rng.normal(-600, 80, CT_SHAPE)
            cxr = rng.normal(80, 12, (CXR_SIZE, CXR_SIZE))
            for k in np.flatnonzero(labels):
                ct[:, k % CT_SHAPE[1], :] += 300
                band = (k % 9) * 4
                cxr[band : band + 4, :] += 50 + 5 * (k // 9)
            rows.append({
                "VolumeName": f"{split}_{patient}_a_{recon}",
                "scan_id": f"{split}_{patient}_a",
                "labels": labels.tolist(),
                "report": report,
                "ct": np.clip(ct, -1000, 1000).astype(np.int16),
                "cxr": np.clip(cxr, 0, 255).astype(np.uint8),
            })  # fmt: skip
    return rows


def make_preprocessed(root: Path, scans: dict[str, int] | None = None, seed: int = 0, recons: int = 1) -> Path:
    """``root/{split}/`` + ``preprocess_config.json`` (with ``shape`` and ``splits``, as ``x2ctclip preprocess``)."""
    from datasets import Dataset

    from x2ctclip.train.data.folders import preprocessed_features

    root = Path(root)
    scans = scans or {"train": 40, "valid": 16, "test": 16}
    features = preprocessed_features(CT_SHAPE, CXR_SIZE)
    for i, (split, n) in enumerate(scans.items()):
        rows = split_rows(split, n, seed + 100 * i, recons)
        columns = {key: [r[key] for r in rows] for key in rows[0]}
        Dataset.from_dict(columns, features=features).save_to_disk(str(root / split))
    config = {"shape": list(CT_SHAPE), "cxr_size": CXR_SIZE, "cxr_mode": "mean", "source": "test fixture",
              "splits": {s: {"num_rows": n * recons} for s, n in scans.items()}}  # fmt: skip
    (root / "preprocess_config.json").write_text(json.dumps(config))
    return root


def tokenizer_for_tests():
    from x2ctclip.processors import build_wordpiece_tokenizer
    from x2ctclip.zero_shot import build_prompts

    texts = build_prompts(CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES)
    texts += [f"There is {f.lower()}. No {f.lower()}." for f in CT_RATE_FINDINGS]
    return build_wordpiece_tokenizer(texts, vocab_size=300, model_max_length=64)


def make_model(folder: Path, towers=("cxr", "text", "ct"), cxr: str = "resnet", seed: int = 0,
               logit_scale: float = 4.0) -> Path:  # fmt: skip
    """A tiny X2CT-CLIP folder with its processor (image size 32, mean = std = 0.5) and tokenizer."""
    import torch

    from x2ctclip.processors import X2CTCLIPImageProcessor, X2CTCLIPProcessor, X2CTCLIPVolumeProcessor

    tokenizer = tokenizer_for_tests()
    torch.manual_seed(seed)
    config = X2CTCLIPConfig(
        towers=list(towers), text_config=dict(TINY_TEXT, vocab_size=len(tokenizer)),
        cxr_config=dict(TINY_RESNET if cxr == "resnet" else TINY_SWIN), ct_config=dict(TINY_CT, use_vq=False),
        projection_dim=PROJECTION_DIM, logit_scale_init_value=logit_scale,
    )  # fmt: skip
    X2CTCLIPModel(config).save_pretrained(folder)
    processor = X2CTCLIPProcessor(
        image_processor=X2CTCLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE),
        volume_image_processor=X2CTCLIPVolumeProcessor(), tokenizer=tokenizer, max_length=64,
    )  # fmt: skip
    processor.save_pretrained(folder)
    return Path(folder)
