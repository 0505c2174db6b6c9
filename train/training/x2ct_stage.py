"""Stage 2, the paper's X2CT-CLIP stage: train a CXR tower against the frozen CT and report towers of a CT-CLIP model.

A training row is one reconstruction: its simulated CXR (``cxr`` of the preprocessed shards) and the CT and report
latents of the embedding cache (``ct_embeds``, ``text_embeds``), so a step runs only the CXR tower; no CT volume
is read. Each epoch uses one random reconstruction per scan (batches hold unique scans). The CXR goes through the
X2CT-CLIP augmentation (:mod:`x2ctclip.train.training.augment`); cached latents are never augmented.

Run it with ``x2ctclip train x2ct`` (or :func:`train_x2ct`), under ``accelerate launch`` or ``torchrun`` for several
processes; with ``loss_cxr_ct_weight: 0`` it trains the CXR-only CLIP baseline (CXR vs report).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from x2ctclip.train.training.augment import CXRTrainAugmentation, sample_rng
from x2ctclip.train.training.config import CXR_PRESETS, X2CTTrainConfig, resolve_preset
from x2ctclip.train.training.stage import (
    ScanStage,
    TrainerCallback,
    TrainResult,
    enable_gradient_checkpointing,
    zero_shot_metrics,
)
from x2ctclip.train.training.trainer import Trainer, build_processor, volume_processor_kwargs, write_model_card

logger = logging.getLogger(__name__)

__all__ = ["X2CTStage", "train_x2ct", "embed_cxrs"]


def _require(value: str, name: str) -> str:
    if not value:
        raise ValueError(f"{name} is required (see x2ctclip train x2ct --help).")
    return value


class _CXRRows(Dataset):
    def __init__(self, stage: "X2CTStage"):
        self.stage = stage

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        stage = self.stage
        images = stage.rows[[int(k[0]) for k in keys]]["cxr"]  # one Arrow read for the micro-batch
        items = []
        for (index, epoch, position), cxr in zip(keys, images):
            cache_row = stage.cache_index[int(index)]
            items.append({
                "pixel_values": stage.augmentation(np.asarray(cxr), sample_rng(stage.config.seed, epoch, position)),
                "ct_embeds": stage.ct_embeds[cache_row],
                "text_embeds": stage.text_embeds[cache_row],
            })
        return items


def _cache_rows(cache_names: list[str], names: list[str], cache_dir: str, split: str) -> np.ndarray:
    position = {n: i for i, n in enumerate(cache_names)}
    missing = [n for n in names if n not in position]
    if missing:
        raise ValueError(
            f"{cache_dir}: the embedding cache of split {split!r} lacks {len(missing)} of the {len(names)} volumes of "
            f"the preprocessed data (e.g. {missing[:3]}); rebuild it with x2ctclip cache-embeddings on this data."
        )
    return np.asarray([position[n] for n in names], dtype=np.int64)


class X2CTStage(ScanStage):
    """The X2CT-CLIP stage (see the module docstring). ``config`` is an :class:`X2CTTrainConfig`."""

    name = "x2ct"

    def __init__(self, config: X2CTTrainConfig):
        super().__init__(config)

    # ------------------------------------------------------------------ data
    def setup(self, config: X2CTTrainConfig) -> None:
        from x2ctclip.train.data.folders import load_embedding_cache, load_preprocessed

        ctclip = Path(_require(config.ctclip_model, "ctclip_model"))
        _require(config.data_dir, "data_dir")
        _require(config.embedding_cache, "embedding_cache")
        if not (ctclip / "config.json").is_file():
            raise FileNotFoundError(
                f"{ctclip}: no config.json; ctclip_model must be a saved CT-CLIP/X2CT-CLIP model folder."
            )
        self._check_cache(config)
        self.rows = load_preprocessed(config.data_dir, config.train_split, columns=["cxr"])
        names = load_preprocessed(config.data_dir, config.train_split, columns=["VolumeName"])["VolumeName"]
        self.names = [str(n) for n in names]
        if config.max_train_samples:
            self.names = self.names[: config.max_train_samples]
        cache = load_embedding_cache(config.embedding_cache, config.train_split)
        self.ct_embeds = torch.from_numpy(np.asarray(cache["ct_embeds"], dtype=np.float32))
        self.text_embeds = torch.from_numpy(np.asarray(cache["text_embeds"], dtype=np.float32))
        self.cache_index = _cache_rows([str(n) for n in cache["VolumeName"]], self.names, config.embedding_cache,
                                       config.train_split)
        self.augmentation = CXRTrainAugmentation(
            size=config.image_size, scale=config.crop_scale, ratio=config.crop_ratio,
            clahe_clip_limit=config.clahe_clip_limit, clahe_tile_grid=config.clahe_tile_grid,
            brightness=config.brightness, contrast=config.contrast, mean=config.image_mean, std=config.image_std,
            enabled=config.augment,
        )
        self.tokenizer = None
        if any((ctclip / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
            from x2ctclip.processors import load_report_tokenizer

            self.tokenizer = load_report_tokenizer(ctclip)
        self.text_max_length = 512
        processor_config = ctclip / "processor_config.json"
        if processor_config.is_file():
            self.text_max_length = int(json.loads(processor_config.read_text()).get("max_length", 512))

    def _check_cache(self, config: X2CTTrainConfig) -> None:
        """The cache must hold the latents of *this* CT-CLIP model (``cache_config.json`` records its fingerprint)."""
        from x2ctclip.train.data.embedding_cache import model_fingerprint

        path = Path(config.embedding_cache) / "cache_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{config.embedding_cache}: no cache_config.json; run x2ctclip cache-embeddings first.")
        recorded = json.loads(path.read_text()).get("parameters", {}).get("model_fingerprint")
        if recorded and recorded != model_fingerprint(config.ctclip_model):
            raise ValueError(
                f"{config.embedding_cache}: the latents were computed with another model than {config.ctclip_model} "
                "(its fingerprint differs); recompute the cache with x2ctclip cache-embeddings for this model."
            )

    def train_dataset(self) -> Dataset:
        return _CXRRows(self)

    # ------------------------------------------------------------------ model
    def build_model(self):
        from x2ctclip.assembly import assemble_x2ctclip

        config = self.config
        overrides = dict(
            loss_ct_text_weight=config.loss_ct_text_weight,
            loss_cxr_text_weight=config.loss_cxr_text_weight,
            loss_cxr_ct_weight=config.loss_cxr_ct_weight,
        )
        if config.cxr_model:
            model = assemble_x2ctclip(config.ctclip_model, cxr_path=config.cxr_model,
                                      cxrclip_checkpoint=config.cxrclip_checkpoint, **overrides)
        else:
            cxr_config = resolve_preset(CXR_PRESETS, config.cxr_preset, config.cxr_config, "CXR")
            model = assemble_x2ctclip(config.ctclip_model, cxr_config=cxr_config,
                                      cxrclip_checkpoint=config.cxrclip_checkpoint, **overrides)
        dim = model.config.projection_dim
        if self.ct_embeds.shape[1] != dim:
            raise ValueError(
                f"{config.embedding_cache}: cached latents are {self.ct_embeds.shape[1]}-d but the model projects to "
                f"{dim}; the cache was made with another model."
            )
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model, ["cxr"])  # the only tower a cached step runs
        return model.train()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, device) -> dict[str, float]:
        config = self.config
        if not config.eval_split:
            return {}
        from x2ctclip.train.data.folders import load_embedding_cache, load_preprocessed, one_recon_per_scan

        try:
            rows = load_preprocessed(config.data_dir, config.eval_split, columns=["VolumeName", "cxr", "labels"])
            cache = load_embedding_cache(config.embedding_cache, config.eval_split)
        except FileNotFoundError as err:
            logger.warning("no evaluation: %s", err)
            return {}
        names = [str(n) for n in rows["VolumeName"]]
        keep = one_recon_per_scan(names, config.seed, 0)
        keep = sorted(keep)[: config.max_eval_samples or None]
        cache_rows = _cache_rows([str(n) for n in cache["VolumeName"]], [names[i] for i in keep],
                                 config.embedding_cache, config.eval_split)
        cxr = embed_cxrs(model, [rows[i]["cxr"] for i in keep], self.eval_image_processor(), device,
                         batch_size=config.per_device_batch_size)
        ct = torch.from_numpy(np.asarray(cache["ct_embeds"], dtype=np.float32)[cache_rows]).to(device)
        text = torch.from_numpy(np.asarray(cache["text_embeds"], dtype=np.float32)[cache_rows]).to(device)
        labels = np.stack([np.asarray(rows[i]["labels"]) for i in keep]).astype(np.int64)
        return evaluate_embeddings(model, cxr, ct, text, labels, self.tokenizer, self.text_max_length, device)

    def eval_image_processor(self):
        from x2ctclip.processors import X2CTCLIPImageProcessor

        c = self.config
        return X2CTCLIPImageProcessor(size=c.image_size, crop_size=c.image_size, image_mean=c.image_mean,
                                      image_std=c.image_std)

    # ------------------------------------------------------------------ final folder
    def save_final(self, model, folder: Path, result: TrainResult, state_dict=None) -> None:
        model.save_pretrained(folder, state_dict=state_dict)
        c = self.config
        if self.tokenizer is not None:
            processor = build_processor(self.tokenizer, c.image_size, c.image_mean, c.image_std,
                                        volume_processor_kwargs(c.data_dir), self.text_max_length)
            processor.save_pretrained(folder)
        else:
            self.eval_image_processor().save_pretrained(folder)
        weights = f"alpha={c.loss_ct_text_weight}, beta={c.loss_cxr_text_weight}, gamma={c.loss_cxr_ct_weight}"
        kind = "X2CT-CLIP" if c.loss_cxr_ct_weight > 0 else "CXR-only CLIP baseline (no CT term)"
        summary = (
            f"{kind} model: a chest X-ray tower aligned with the frozen CT and report towers of the CT-CLIP model "
            f"`{c.ctclip_model}` (loss weights {weights}), trained on simulated CXRs of `{c.data_dir}`. "
            "It scores the 18 CT-RATE findings zero-shot from a frontal chest X-ray."
        )
        write_model_card(folder, kind, summary, c, result)


@torch.no_grad()
def embed_cxrs(model, images: list, image_processor, device, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised CXR embeddings (N, projection_dim) of 8-bit images through ``image_processor``."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = [np.asarray(im) for im in images[start : start + batch_size]]
        pixel_values = image_processor(chunk, return_tensors="pt")["pixel_values"].to(device)
        out.append(torch.nn.functional.normalize(model.get_cxr_features(pixel_values).pooler_output.float(), dim=-1))
    return torch.cat(out)


def evaluate_embeddings(model, cxr, ct, text, labels, tokenizer, max_length, device) -> dict[str, float]:
    """Validation metrics from embeddings: losses without cross-process gathering, Recall@K CXR->report and
    CXR->CT, and (with a tokenizer) zero-shot macro AUROC."""
    from x2ctclip.loss import contrastive_loss

    from x2ctclip.train.evaluation.retrieval import retrieval_metrics

    scale = model.logit_scale.exp().float()
    metrics: dict[str, float] = {
        "loss_cxr_text": float(contrastive_loss(cxr, text, scale, gather=False)),
        "loss_cxr_ct": float(contrastive_loss(cxr, ct, scale, gather=False)),
    }
    ks = tuple(k for k in (1, 5, 10, 50) if k < len(cxr)) or (1,)
    for target, emb in (("report", text), ("ct", ct)):
        result = retrieval_metrics(cxr, emb, recall_at=ks, map_at=())
        for k, v in result.recall.items():
            metrics[f"cxr_to_{target}_R@{k}"] = v
    if tokenizer is not None and getattr(model, "text_model", None) is not None:
        metrics.update(zero_shot_metrics(model, cxr, labels, tokenizer, max_length, device))
    return metrics


def train_x2ct(config: X2CTTrainConfig, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run the X2CT-CLIP stage; returns the :class:`TrainResult` (``model_dir`` is the final model folder)."""
    return Trainer(config, X2CTStage(config), callbacks or []).train()
