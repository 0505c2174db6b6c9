"""The stage interface the trainer drives, its result and callbacks, and the zero-shot check used while training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from x2ctclip.train.training.config import TrainConfig
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from x2ctclip.train.training.trainer import Trainer

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- stage API
class TrainingStage:
    """What a trainer trains. Subclasses implement the methods that raise ``NotImplementedError``.

    Rows are addressed by *keys* ``(index, epoch, position)``: ``index`` into the stage's training rows, the
    ``epoch`` and the row's ``position`` in that epoch's order (used to seed its augmentation).
    """

    #: Name used in logs and the progress bar.
    name: str = "train"

    def setup(self, config: TrainConfig) -> None:
        """Open data sets, tokenizers, caches (called once, before :meth:`build_model`)."""

    def build_model(self) -> nn.Module:
        """Return the model to train (called after seeding, so random initialisation is reproducible)."""
        raise NotImplementedError

    def train_module(self, model: nn.Module) -> nn.Module:
        """The module whose ``forward(**batch, return_loss=True)`` returns an output with ``.loss`` (DDP wraps it).
        Default: ``model``."""
        return model

    def train_dataset(self) -> Dataset:
        """Map-style data set indexed by keys ``(index, epoch, position)``, returning dicts of tensors."""
        raise NotImplementedError

    def epoch_indices(self, epoch: int) -> Sequence[int]:
        """Ordered row indices of ``epoch`` (deterministic function of the seed and ``epoch``)."""
        raise NotImplementedError

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Stack samples into a batch (default: ``torch.stack`` per key)."""
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}

    def loss_terms(self, output: Any) -> dict[str, torch.Tensor]:
        """Extra scalars of a forward output to log (default: the model's per-pair losses that are set)."""
        terms = {}
        for name in ("loss_ct_text", "loss_cxr_text", "loss_cxr_ct"):
            value = getattr(output, name, None)
            if value is not None:
                terms[name] = value.detach()
        return terms

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Hook after each optimiser step (e.g. clamp the logit scale); ``model`` is unwrapped."""

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation metrics, run on the main process only with the unwrapped model in eval mode ({} for none).

        Must not run collective operations (other processes wait at a barrier meanwhile)."""
        return {}

    def save_final(self, model: nn.Module, folder: Path, result: "TrainResult",
                   state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the final model folder (``save_pretrained``, processor, model card) into ``folder``.

        ``state_dict`` is the model's full state gathered by ``accelerator.get_state_dict`` (which also works when the
        parameters are sharded, e.g. under FSDP); pass it on to ``save_pretrained``."""
        model.save_pretrained(folder, state_dict=state_dict)


class ScanStage(TrainingStage):
    """The base of the two stages: training rows are reconstructions of scans (``self.names``, one per row, set by
    :meth:`setup`), and an epoch takes one reconstruction per scan (:func:`~x2ctclip.train.data.folders.one_recon_per_scan`,
    seeded by ``config.seed`` and the epoch)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.names: list[str] = []
        self._epochs: dict[int, list[int]] = {}

    def epoch_indices(self, epoch: int) -> list[int]:
        order = self._epochs.get(epoch)
        if order is None:
            from x2ctclip.train.data.folders import one_recon_per_scan

            order = one_recon_per_scan(self.names, self.config.seed, epoch)
            if len(self._epochs) >= 4:  # a small memo: the loop asks for the current epoch again and again
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[epoch] = order
        return order


def enable_gradient_checkpointing(model: nn.Module, towers: Sequence[str]) -> list[str]:
    """Turn on activation checkpointing in the trained ``towers`` (names of ``model.{tower}_model``) of the composite
    model; returns the towers it was turned on in.

    Only trained towers matter: a frozen tower runs in eval mode under ``no_grad`` (or not at all when its latents are
    cached), where checkpointing does nothing. The recompute is non-reentrant, so it also gives gradients to layers
    whose inputs need none (the first layer of a tower fed by a frozen stem). ``ValueError`` names a trained tower
    whose transformers class has no checkpointing (e.g. ``ResNetModel``) rather than silently training without it.
    """
    enabled = []
    for tower in towers:
        sub = getattr(model, f"{tower}_model", None)
        if sub is None:
            continue
        if not getattr(sub, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"gradient_checkpointing: the {tower} tower ({type(sub).__name__}) does not support it in transformers; "
                "choose a tower that does (Swin, ViT, BERT, the CT tower) or turn gradient_checkpointing off."
            )
        sub.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        enabled.append(tower)
    if enabled:
        logger.info("gradient checkpointing on in the %s tower(s)", ", ".join(enabled))
    return enabled


def zero_shot_metrics(model, image_embeds, labels, tokenizer, max_length, device,
                      prefix="zeroshot") -> dict[str, float]:  # fmt: skip
    """Zero-shot macro AUROC over the findings present in ``labels`` (with both classes), from ``image_embeds``
    (CXR or CT embeddings, ``(n, projection_dim)``) and the model's prompt pairs
    (:class:`~x2ctclip.train.zeroshot.ZeroShotClassifier`); the validation metric of both stages."""
    from x2ctclip.train.evaluation.metrics import roc_auc
    from x2ctclip.zero_shot import ZeroShotClassifier

    classifier = ZeroShotClassifier(model, tokenizer, max_length=max_length)
    probabilities = classifier.predict_from_embeddings(image_embeds).probabilities.cpu().numpy()
    per_finding = np.asarray(roc_auc(labels, probabilities, average=None), dtype=np.float64)
    if not np.isfinite(per_finding).any():
        return {}
    return {f"{prefix}_macro_auroc": float(np.nanmean(per_finding))}


class TrainerCallback:
    """Hooks called on every process at fixed points of :meth:`Trainer.train` (override the ones you need)."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, logs: dict[str, float]) -> None: ...

    def on_save(self, trainer: "Trainer", step: int, checkpoint: Path) -> None: ...

    def on_train_end(self, trainer: "Trainer", result: "TrainResult") -> None: ...


@dataclass
class TrainResult:
    """Summary of a finished run."""

    global_step: int = 0
    epochs: float = 0.0
    train_loss: float = float("nan")
    train_runtime_s: float = 0.0
    samples_seen: int = 0
    eval_metrics: dict[str, float] = field(default_factory=dict)
    model_dir: str | None = None
    resumed_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
