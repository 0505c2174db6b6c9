"""LoRA (peft) adaptation of the CXR tower, and saving / loading adapters."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from x2ctclip import X2CTCLIPForAbnormalityClassification, X2CTCLIPModel
from x2ctclip.train.fewshot.probe import masked_bce
from x2ctclip.train.fewshot.splits import METHODS


# ---------------------------------------------------------------------------------------------------------- LoRA
@dataclass
class LoraTrainConfig:
    """LoRA hyper-parameters (this project's defaults; the X2CT-CLIP paper has no LoRA experiment).

    ``target_modules``: module names (default :func:`lora_target_modules`); ``include_mlp`` adds the transformer
    MLP layers to the default attention projections."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 20
    patience: int = 5
    target_modules: list[str] | None = None
    include_mlp: bool = False


@dataclass
class LoraResult:
    """``best_epoch`` 0 means no epoch improved on the starting point (the adapters are then the identity)."""

    best_epoch: int
    epochs: int
    best_valid_loss: float
    valid_losses: list[float]
    target_modules: list[str]
    trainable_parameters: int


_ATTENTION_LEAVES = {"q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "qkv", "proj"}


def lora_target_modules(model: nn.Module, include_mlp: bool = False) -> list[str]:
    """Names (in ``model``, which has a ``cxr_model``) of the CXR-tower modules LoRA adapts.

    - Transformer backbones (Swin, ViT): the ``nn.Linear`` layers of the attention blocks, i.e. the query / key /
      value and output projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` in transformers 5; ``query``,
      ``key``, ``value``, ``attention.output.dense`` before). ``include_mlp`` adds the MLP layers (``mlp.fc1`` /
      ``mlp.fc2``, or ``intermediate.dense`` / ``output.dense``). Patch merging and embeddings are left out.
    - Convolutional backbones (ResNet): the ``nn.Conv2d`` layers of the residual blocks; the stem
      (``embedder``) and the 1x1 shortcut projections are left out.

    Raises ValueError when the tower has neither (pass ``target_modules`` yourself).
    """
    tower = getattr(model, "cxr_model", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no cxr_model; LoRA targets the CXR tower.")
    linear, mlp, conv = [], [], []
    for name, module in tower.named_modules():
        dotted = f".{name}."
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear):
            if ".attention." in dotted or ".attn." in dotted:
                if leaf in _ATTENTION_LEAVES or name.endswith("output.dense"):
                    linear.append(name)
            elif ".mlp." in dotted or ".intermediate." in dotted or name.endswith("output.dense"):
                mlp.append(name)
        elif isinstance(module, nn.Conv2d):
            if not any(part in dotted for part in (".embedder.", ".embeddings.", ".shortcut.", ".downsample.", ".stem.")):
                conv.append(name)
    names = linear + (mlp if include_mlp else []) if linear else conv
    if not names:
        raise ValueError(f"no attention projection or residual-block convolution found in the "
                         f"{type(tower).__name__} CXR tower; pass LoraTrainConfig(target_modules=[...]).")  # fmt: skip
    return [f"cxr_model.{n}" for n in names]


def _freeze_batch_norm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def peft_logits(model: nn.Module, image_processor: Any, images: Any, rows: np.ndarray, batch_size: int,
                 device: torch.device) -> torch.Tensor:  # fmt: skip
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        batch = [np.asarray(im) for im in images.take(rows[start : start + batch_size])]
        pixel_values = image_processor(batch, return_tensors="pt")["pixel_values"].to(device)
        out.append(model(pixel_values=pixel_values, return_dict=True).logits.float().cpu())
    return torch.cat(out)


def train_lora(classifier: nn.Module, image_processor: Any, images: Any, labels: Any, train_rows: np.ndarray,
               valid_rows: np.ndarray, config: LoraTrainConfig | None = None, seed: int = 0,
               device: str | torch.device | None = None, progress: bool | None = None):  # fmt: skip
    """LoRA fine-tuning of an :class:`~x2ctclip.X2CTCLIPForAbnormalityClassification` (its head included).

    Args:
        classifier: the model to adapt (wrapped by PEFT; its base weights are not changed).
        image_processor: turns ``images`` into ``pixel_values``.
        images: object with ``take(rows) -> list of images`` (e.g. :class:`ImageRows`).
        labels: ``(n_rows, n_findings)`` labels of all rows; ``train_rows`` / ``valid_rows`` select from them.
        config: :class:`LoraTrainConfig`.

    Returns:
        ``(peft_model, LoraResult)``: the PEFT model with the adapter weights of the best hold-out epoch.
    """
    # start-up: peft loads only for LoRA runs
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = config or LoraTrainConfig()
    device = torch.device(device or "cpu")
    targets = list(config.target_modules or lora_target_modules(classifier, config.include_mlp))
    torch.manual_seed(int(seed))  # LoRA's A matrices are initialised from the global generator
    peft_model = get_peft_model(classifier, LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                                       target_modules=targets, modules_to_save=["classifier"]))
    peft_model.to(device)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    generator = torch.Generator().manual_seed(int(seed))
    valid_y = y[valid_rows]

    def state():
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}

    def valid_loss() -> float:
        logits = peft_logits(peft_model, image_processor, images, valid_rows, config.batch_size, device)
        return float(masked_bce(logits, valid_y))

    # Epoch 0 is the starting point (LoRA's B matrices are zero: the base model with the initial head), so the
    # adapters are only kept when they improve on it.
    best = (valid_loss(), 0, state())
    losses, since = [], 0
    bar = tqdm(range(1, config.max_epochs + 1), desc="LoRA", unit="epoch", disable=progress is False, leave=False)
    for epoch in bar:
        peft_model.train()
        _freeze_batch_norm(peft_model)
        order = np.asarray(train_rows)[torch.randperm(len(train_rows), generator=generator).numpy()]
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            batch = [np.asarray(im) for im in images.take(rows)]
            pixel_values = image_processor(batch, return_tensors="pt")["pixel_values"].to(device)
            optimizer.zero_grad(set_to_none=True)
            peft_model(pixel_values=pixel_values, labels=y[rows].to(device), return_dict=True).loss.backward()
            optimizer.step()
        loss = valid_loss()
        losses.append(loss)
        bar.set_postfix(valid_loss=f"{loss:.4f}")
        if loss < best[0] - 1e-7:
            best, since = (loss, epoch, state()), 0
        else:
            since += 1
            if since >= config.patience:
                break
    set_peft_model_state_dict(peft_model, best[2])
    peft_model.eval()
    n_trainable = sum(p.numel() for p in trainable)
    return peft_model, LoraResult(best[1], len(losses), best[0], losses, targets, n_trainable)


# ---------------------------------------------------------------------------------------------------------- loading
def base_classifier(model_dir: str | os.PathLike):
    """An X2CTCLIPForAbnormalityClassification with the CXR tower of the folder (X2CT-CLIP or classifier folder)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a model folder written by save_pretrained.")
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    if "X2CTCLIPForAbnormalityClassification" in architectures:
        return X2CTCLIPForAbnormalityClassification.from_pretrained(model_dir)
    return X2CTCLIPForAbnormalityClassification.from_x2ctclip(X2CTCLIPModel.from_pretrained(model_dir))


def run_name(method: str, fraction: float, seed: int) -> str:
    return f"{method}_f{fraction:g}_s{seed}"


def portable_base_model_name(model_dir: str | os.PathLike) -> str:
    """What an adapter records as ``base_model_name_or_path``: the Hub id as given when ``model_dir`` is not a local
    folder, else the folder's own name (never an absolute local path, which means nothing on another machine)."""
    path = Path(model_dir)
    if not path.is_dir():
        return str(model_dir)
    return path.resolve().name


def save_adapter(peft_model: Any, model_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the LoRA adapter of ``peft_model`` (``PeftModel.save_pretrained``) with a portable base model name."""
    for adapter_config in peft_model.peft_config.values():
        adapter_config.base_model_name_or_path = portable_base_model_name(model_dir)
    peft_model.save_pretrained(str(path))
    return Path(path)


def load_fewshot_classifier(model_dir: str | os.PathLike, run_dir: str | os.PathLike, method: str, fraction: float,
                            seed: int, merge: bool = True):  # fmt: skip
    """The classifier of one few-shot run of :func:`run_fewshot`.

    Args:
        model_dir: the base model folder the run adapted.
        run_dir: the ``OUT`` folder of the run.
        method: ``"linear"`` (head from ``heads/``) or ``"lora"`` (adapter from ``adapters/``).
        merge: for LoRA, fold the adapters into the weights (``merge_and_unload``) and return a plain
            :class:`~x2ctclip.X2CTCLIPForAbnormalityClassification`; False returns the ``PeftModel``.
    """
    run_dir = Path(run_dir)
    name = run_name(method, fraction, seed)
    base = base_classifier(model_dir)
    if method == "linear":
        path = run_dir / "heads" / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no linear head for fraction {fraction:g}, seed {seed}.")
        head = load_file(str(path))
        base.set_classifier(head["weight"], head["bias"])
        return base.eval()
    if method == "lora":
        from peft import PeftModel  # start-up: peft loads only for LoRA runs

        path = run_dir / "adapters" / name
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path}: no LoRA adapter for fraction {fraction:g}, seed {seed}.")
        model = PeftModel.from_pretrained(base, str(path)).eval()
        return model.merge_and_unload().eval() if merge else model
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
