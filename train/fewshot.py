"""Few-shot adaptation of the X2CT-CLIP chest X-ray tower: linear probe and LoRA (``x2ctclip fewshot``).

Protocol (X2CT-CLIP's, for the linear probe):

- **Subsets.** For each fraction (1 %, 2.5 %, 5 %, 10 %, 100 % of the training labels) and each seed (1024, 1234, 4321,
  5678, 8765), a subset of the training *scans* is drawn by iterative stratification (Sechidis et al., 2011:
  :func:`iterative_stratification`), so that every finding keeps its prevalence; 20 % of the subset's scans are held
  out for validation, again stratified. Reconstructions of one scan share its labels and stay together (a scan is
  never in both parts). Subsets have at least ``min_scans`` (5) scans.
- **Linear probe** (:func:`train_linear_probe`): one linear layer (``projection_dim -> 18``) on the frozen,
  L2-normalised CXR latents; binary cross-entropy with logits; AdamW, learning rate 5e-2, batch 4096, up to 100
  epochs, early stopping with patience 20 on the hold-out loss (the weights of the best epoch are kept).
- **LoRA** (:func:`train_lora`, this project's addition): low-rank adapters on the CXR tower's attention projections
  (Swin / ViT: ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, ``query`` / ``key`` / ``value`` / ``output.dense``
  in older transformers) or on the convolutions of the residual blocks (ResNet: ``layer.N.convolution``; stem and
  shortcut convolutions excluded), see :func:`lora_target_modules`; the classification head is trained too
  (``modules_to_save=["classifier"]``) and starts from the linear probe of the same subset (LP-FT, Kumar et al. 2022,
  so the adapters do not start from a random head); early stopping on the hold-out loss counts that start as epoch
  0, so a run never ends worse on the hold-out than its linear probe. Batch-norm statistics stay frozen (the adapters
  are all that is saved, so the base model must not change). Defaults: rank 8, alpha 16, dropout 0.1, AdamW 5e-4,
  batch 32, up to 20 epochs, patience 5.
- **Metrics** on the evaluation split (default ``test``): AUROC macro / micro / weighted, average precision, F1 /
  precision / recall at 0.5 (:func:`x2ctclip.train.metrics.classification_report`), per seed; mean +- sd over seeds.
  The zero-shot AUROC of the same model (prompt pairs of its config) is the flat baseline.

Outputs of :func:`run_fewshot` (``OUT``): ``fewshot.json`` (settings, every run, the summary; rewritten after each
run, and a rerun with the same settings skips the finished runs), ``fewshot.md`` (mean +- sd table),
``fewshot_auroc.png`` (macro AUROC against the fraction), ``heads/linear_f{fraction}_s{seed}.safetensors`` and
``adapters/lora_f{fraction}_s{seed}/`` (PEFT folders). :func:`load_fewshot_classifier` turns either into an
:class:`x2ctclip.X2CTCLIPForAbnormalityClassification` (LoRA merged with ``merge_and_unload`` by default), which
``save_pretrained`` writes as a folder that ``AutoModelForImageClassification.from_pretrained`` loads.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from iterstrat.ml_stratifiers import IterativeStratification
from torch import nn
from tqdm.auto import tqdm

from .metrics import classification_report, jsonable

__all__ = [
    "FEWSHOT_FRACTIONS",
    "FEWSHOT_SEEDS",
    "METHODS",
    "LinearProbeConfig",
    "LinearProbeResult",
    "LoraTrainConfig",
    "LoraResult",
    "fewshot_split",
    "iterative_stratification",
    "load_fewshot_classifier",
    "lora_target_modules",
    "run_fewshot",
    "train_linear_probe",
    "train_lora",
]

FEWSHOT_FRACTIONS = (0.01, 0.025, 0.05, 0.1, 1.0)
FEWSHOT_SEEDS = (1024, 1234, 4321, 5678, 8765)
METHODS = ("linear", "lora")
HEADLINE = ("auroc_macro", "auroc_micro", "auroc_weighted", "average_precision_macro", "average_precision_micro",
            "f1_macro", "f1_micro", "precision_macro", "recall_macro")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- splits
def iterative_stratification(labels: Any, proportions: Sequence[float], seed: int | np.random.Generator = 0,
                             exact_sizes: bool = True) -> np.ndarray:  # fmt: skip
    """Sechidis et al. (2011) iterative stratification of multi-label examples into folds of given proportions.

    The assignment is ``iterstrat``'s (``iterstrat.ml_stratifiers.IterativeStratification``, the algorithm behind its
    multi-label splitters). The algorithm favours the label shares over the fold sizes, which on small sets can miss
    the sizes by several examples; with ``exact_sizes`` the sizes are then made exact (largest-remainder shares of
    ``n``) by moving the examples that disturb the label counts least (:func:`_exact_sizes`, not in iterstrat).

    Args:
        labels: ``(n, n_labels)`` 0/1 (NaN counts as 0).
        proportions: one share per fold, summing to 1.
        seed: seed or NumPy generator (a generator is advanced by one draw).
        exact_sizes: make the fold sizes exact (see above).

    Returns:
        ``(n,)`` fold index of every example.
    """
    y = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) > 0.5
    if y.ndim != 2:
        raise ValueError(f"labels must have shape (n, n_labels), got {y.shape}.")
    p = np.asarray(proportions, dtype=np.float64)
    if p.ndim != 1 or len(p) < 2 or (p < 0).any() or not math.isclose(p.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"proportions must be >= 0 and sum to 1, got {list(proportions)}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # iterstrat walks the examples in their given order and breaks ties with a RandomState: a random order first
    # makes the seed decide more than the ties.
    order = rng.permutation(len(y))
    state = np.random.RandomState(int(rng.integers(2**32)))
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = IterativeStratification(y[order], p.copy(), state)  # boolean labels: it indexes with them
    return _exact_sizes(y, fold, p) if exact_sizes else fold


def _exact_sizes(y: np.ndarray, fold: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Move examples between folds until each has its largest-remainder share of ``len(y)``; each move takes, from an
    over-full fold to an under-full one, the example whose move leaves the per-label counts closest to the wanted
    ones (so the stratification is kept as far as the sizes allow)."""
    n = len(y)
    raw = p * n
    target = np.floor(raw).astype(np.int64)
    target[np.argsort(-(raw - target), kind="stable")[: n - target.sum()]] += 1
    want = p[:, None] * y.sum(0)[None, :]
    counts = np.stack([y[fold == k].sum(0) for k in range(len(p))]).astype(np.float64)
    sizes = np.bincount(fold, minlength=len(p))
    fold = fold.copy()
    while (sizes != target).any():
        src = int(np.argmax(sizes - target))
        dst = int(np.argmin(sizes - target))
        members = np.flatnonzero(fold == src)
        yi = y[members].astype(np.float64)
        # change of sum |counts - want| over the two folds if each member moved
        cost = (np.abs(counts[src] - yi - want[src]).sum(1) + np.abs(counts[dst] + yi - want[dst]).sum(1)
                - np.abs(counts[src] - want[src]).sum() - np.abs(counts[dst] - want[dst]).sum())  # fmt: skip
        i = members[int(np.argmin(cost))]
        fold[i] = dst
        counts[src] -= y[i]
        counts[dst] += y[i]
        sizes[src] -= 1
        sizes[dst] += 1
    return fold


@dataclass
class FewShotSplit:
    """Row indices of one few-shot subset: ``train`` and ``valid`` (hold-out), and the scan counts."""

    train: np.ndarray
    valid: np.ndarray
    n_scans_train: int
    n_scans_valid: int


def fewshot_split(labels: Any, fraction: float, seed: int, groups: Sequence[Any] | None = None,
                  valid_fraction: float = 0.2, min_scans: int = 5) -> FewShotSplit:  # fmt: skip
    """Draw a stratified subset of ``fraction`` of the scans and hold ``valid_fraction`` of it out.

    Args:
        labels: ``(n_rows, n_findings)`` labels of the training rows.
        fraction: share of the scans in (0, 1]; ``1.0`` uses every scan.
        seed: the subset's seed (the hold-out uses a generator derived from it).
        groups: ``(n_rows,)`` scan ids: rows of a scan go together (default: every row is its own scan).
        valid_fraction: share of the subset's scans held out for early stopping.
        min_scans: smallest subset (so tiny fractions of small sets still have a train and a hold-out part).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}.")
    y = np.asarray(labels, dtype=np.float64)
    groups = list(range(len(y))) if groups is None else list(groups)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} rows.")
    first: dict[Any, int] = {}
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
        members.setdefault(g, []).append(i)
    units = list(first)
    unit_labels = y[[first[g] for g in units]]
    n_units = len(units)
    if n_units < 2:
        raise ValueError(f"few-shot splits need at least 2 scans, got {n_units}.")
    rng = np.random.default_rng(seed)
    n_subset = n_units if fraction >= 1 else min(n_units, max(int(round(fraction * n_units)), min_scans, 2))
    if n_subset < n_units:
        share = n_subset / n_units
        chosen = np.flatnonzero(iterative_stratification(unit_labels, [share, 1 - share], rng) == 0)
    else:
        chosen = np.arange(n_units)
    part = iterative_stratification(unit_labels[chosen], [1 - valid_fraction, valid_fraction], rng)
    train_units, valid_units = chosen[part == 0], chosen[part == 1]
    if len(valid_units) == 0 or len(train_units) == 0:  # tiny subsets: move one scan over
        if len(valid_units) == 0:
            valid_units, train_units = train_units[-1:], train_units[:-1]
        else:
            train_units, valid_units = valid_units[-1:], valid_units[:-1]
    if len(train_units) == 0 or len(valid_units) == 0:
        raise ValueError(f"a subset of {len(chosen)} scans cannot be split into a train and a hold-out part.")

    def rows(selected: np.ndarray) -> np.ndarray:
        return np.sort(np.asarray([r for u in selected for r in members[units[u]]], dtype=np.int64))

    return FewShotSplit(rows(train_units), rows(valid_units), len(train_units), len(valid_units))


# ---------------------------------------------------------------------------------------------------------- probe
@dataclass
class LinearProbeConfig:
    """Linear-probe hyper-parameters (X2CT-CLIP's: AdamW 5e-2, batch 4096, 100 epochs, patience 20).

    ``weight_decay`` is not given by the paper; 1e-4 is this project's choice (the X2CT-CLIP training value)."""

    learning_rate: float = 5e-2
    weight_decay: float = 1e-4
    batch_size: int = 4096
    max_epochs: int = 100
    patience: int = 20


@dataclass
class LinearProbeResult:
    """A fitted head: ``weight`` ``(n_findings, dim)``, ``bias`` ``(n_findings,)`` of the best epoch (1-based) and
    the per-epoch hold-out losses."""

    weight: torch.Tensor
    bias: torch.Tensor
    best_epoch: int
    epochs: int
    best_valid_loss: float
    valid_losses: list[float] = field(default_factory=list)


def _masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    annotated = ~torch.isnan(labels)
    loss = F.binary_cross_entropy_with_logits(logits, torch.where(annotated, labels, 0.0), reduction="none")
    return (loss * annotated).sum() / annotated.sum().clamp_min(1)


def train_linear_probe(train_x: Any, train_y: Any, valid_x: Any, valid_y: Any, config: LinearProbeConfig | None = None,
                       seed: int = 0, device: str | torch.device | None = None) -> LinearProbeResult:  # fmt: skip
    """Fit a linear multi-label head on frozen latents with early stopping on the hold-out loss.

    Args:
        train_x / valid_x: ``(n, dim)`` latents (L2-normalised here).
        train_y / valid_y: ``(n, n_findings)`` 0/1 labels, NaN = not annotated.
        config: :class:`LinearProbeConfig`.
        seed: initialisation and batch order.
    """
    config = config or LinearProbeConfig()
    device = torch.device(device or "cpu")
    x = F.normalize(torch.as_tensor(np.asarray(train_x), dtype=torch.float32), dim=-1).to(device)
    y = torch.as_tensor(np.asarray(train_y, dtype=np.float32)).to(device)
    vx = F.normalize(torch.as_tensor(np.asarray(valid_x), dtype=torch.float32), dim=-1).to(device)
    vy = torch.as_tensor(np.asarray(valid_y, dtype=np.float32)).to(device)
    if x.ndim != 2 or y.shape != (x.shape[0], y.shape[-1]) or len(x) == 0:
        raise ValueError(f"train latents {tuple(x.shape)} and labels {tuple(y.shape)} do not pair up.")
    if len(vx) == 0 or vy.shape[0] != len(vx):
        raise ValueError("the hold-out set is empty or its labels do not pair up with its latents.")
    generator = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(x.shape[1])  # nn.Linear's default initialisation, from a local generator
    head = nn.Linear(x.shape[1], y.shape[1]).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
        head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=generator))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    best = (math.inf, 0, head.weight.detach().clone(), head.bias.detach().clone())
    losses, since = [], 0
    for epoch in range(1, config.max_epochs + 1):
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), config.batch_size):
            rows = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            _masked_bce(head(x[rows]), y[rows]).backward()
            optimizer.step()
        with torch.no_grad():
            loss = float(_masked_bce(head(vx), vy))
        losses.append(loss)
        if loss < best[0] - 1e-7:
            best, since = (loss, epoch, head.weight.detach().clone(), head.bias.detach().clone()), 0
        else:
            since += 1
            if since >= config.patience:
                break
    return LinearProbeResult(best[2].cpu(), best[3].cpu(), best[1], len(losses), best[0], losses)


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
def _peft_logits(model: nn.Module, image_processor: Any, images: Any, rows: np.ndarray, batch_size: int,
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
        logits = _peft_logits(peft_model, image_processor, images, valid_rows, config.batch_size, device)
        return float(_masked_bce(logits, valid_y))

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
def _base_classifier(model_dir: str | os.PathLike):
    """An X2CTCLIPForAbnormalityClassification with the CXR tower of the folder (X2CT-CLIP or classifier folder)."""
    from x2ctclip import X2CTCLIPForAbnormalityClassification, X2CTCLIPModel

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a model folder written by save_pretrained.")
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    if "X2CTCLIPForAbnormalityClassification" in architectures:
        return X2CTCLIPForAbnormalityClassification.from_pretrained(model_dir)
    return X2CTCLIPForAbnormalityClassification.from_x2ctclip(X2CTCLIPModel.from_pretrained(model_dir))


def _run_name(method: str, fraction: float, seed: int) -> str:
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
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    name = _run_name(method, fraction, seed)
    base = _base_classifier(model_dir)
    if method == "linear":
        path = run_dir / "heads" / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no linear head for fraction {fraction:g}, seed {seed}.")
        head = load_file(str(path))
        base.set_classifier(head["weight"], head["bias"])
        return base.eval()
    if method == "lora":
        from peft import PeftModel

        path = run_dir / "adapters" / name
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path}: no LoRA adapter for fraction {fraction:g}, seed {seed}.")
        model = PeftModel.from_pretrained(base, str(path)).eval()
        return model.merge_and_unload().eval() if merge else model
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


# ---------------------------------------------------------------------------------------------------------- runner
class ImageRows:
    """Random access to the ``cxr`` column of a preprocessed split: ``take(rows)`` -> list of uint8 arrays."""

    def __init__(self, dataset):
        self.dataset = dataset.with_format("numpy", columns=["cxr"], dtype=None)

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, rows: Sequence[int]) -> list[np.ndarray]:
        return list(self.dataset[[int(r) for r in rows]]["cxr"])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(self.dataset[index]["cxr"])
        return self.dataset[int(index)]["cxr"]


def _metrics(labels: np.ndarray, logits: np.ndarray, names: list[str]) -> dict[str, Any]:
    probabilities = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
    report = classification_report(labels, probabilities, names, threshold=0.5).to_dict()
    out = {k: report[k] for k in HEADLINE}
    out["auroc_per_finding"] = {row["name"]: row["auroc"] for row in report["findings"]}
    return out


def _summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = sorted({(r["method"], r["fraction"]) for r in runs}, key=lambda k: (METHODS.index(k[0]), k[1]))
    out = []
    for method, fraction in keys:
        group = [r for r in runs if r["method"] == method and r["fraction"] == fraction]
        row = {"method": method, "fraction": fraction, "n_seeds": len(group),
               "n_train_scans": float(np.mean([r["n_scans_train"] for r in group]))}  # fmt: skip
        for key in HEADLINE:
            values = np.asarray([r["metrics"][key] for r in group if r["metrics"][key] is not None], dtype=np.float64)
            row[f"{key}_mean"] = float(values.mean()) if len(values) else None
            row[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else None
        out.append(row)
    return out


def _markdown(record: dict[str, Any]) -> str:
    record = jsonable(record)
    summary = record["summary"]
    methods = [m for m in METHODS if any(s["method"] == m for s in summary)]
    fractions = sorted({s["fraction"] for s in summary})
    zero = record.get("zero_shot")

    def cell(method, fraction, key="auroc_macro"):
        rows = [s for s in summary if s["method"] == method and s["fraction"] == fraction]
        if not rows or rows[0][f"{key}_mean"] is None:
            return "n/a"
        s = rows[0]
        sd = f" ± {s[f'{key}_sd']:.3f}" if s[f"{key}_sd"] is not None else ""
        return f"{s[f'{key}_mean']:.3f}{sd}"

    settings = record["settings"]
    lines = [
        "# Few-shot adaptation (mean ± sd over seeds)",
        "",
        f"- model: `{settings['model']}`; data: `{settings['data']}` (train split `{settings['train_split']}`, "
        f"evaluated on `{settings['eval_split']}`, {record['n_eval']} cases)",
        f"- seeds: {', '.join(str(s) for s in settings['seeds'])}; hold-out {settings['valid_fraction']:.0%} of each "
        "subset (iterative stratification over scans)",
        f"- zero-shot macro AUROC (baseline): {zero['auroc_macro']:.3f}" if zero else "- zero-shot baseline: n/a",
        "",
        "| training labels | train scans | " + " | ".join(f"{m} macro AUROC" for m in methods)
        + " | " + " | ".join(f"{m} macro AP" for m in methods) + " |",
        "|---|---|" + "---|" * (2 * len(methods)),
    ]
    for fraction in fractions:
        scans = [s["n_train_scans"] for s in summary if s["fraction"] == fraction]
        lines.append(f"| {fraction:.1%} | {scans[0]:.0f} | " + " | ".join(cell(m, fraction) for m in methods) + " | "
                     + " | ".join(cell(m, fraction, "average_precision_macro") for m in methods) + " |")
    return "\n".join(lines) + "\n"


def _plot(record: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .evaluate_model import write_atomic

    record = jsonable(record)
    fig = Figure(figsize=(6, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    fractions = sorted({s["fraction"] for s in record["summary"]})
    for method, colour in zip(METHODS, ("tab:blue", "tab:orange")):
        rows = sorted((s for s in record["summary"] if s["method"] == method and s["auroc_macro_mean"] is not None),
                      key=lambda s: s["fraction"])  # fmt: skip
        if not rows:
            continue
        x = [100 * s["fraction"] for s in rows]
        mean = np.asarray([s["auroc_macro_mean"] for s in rows])
        sd = np.asarray([s["auroc_macro_sd"] or 0.0 for s in rows])
        label = "linear probe" if method == "linear" else "LoRA (CXR tower) + head"
        ax.plot(x, mean, marker="o", color=colour, label=label)
        ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)
    zero = record.get("zero_shot")
    if zero and zero.get("auroc_macro") is not None:
        ax.axhline(zero["auroc_macro"], color="0.3", ls="--", lw=1.2, label="zero-shot (no labels)")
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g} %" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("training labels used (share of the training scans)")
    ax.set_ylabel(f"macro AUROC ({record['settings']['eval_split']})")
    ax.set_title("Few-shot adaptation: mean ± sd over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def run_fewshot(
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = ("linear",),
    fractions: Sequence[float] = FEWSHOT_FRACTIONS,
    seeds: Sequence[int] = FEWSHOT_SEEDS,
    train_split: str = "train",
    eval_split: str = "test",
    valid_fraction: float = 0.2,
    min_scans: int = 5,
    probe: LinearProbeConfig | None = None,
    lora: LoraTrainConfig | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
    save_adapters: bool = True,
) -> dict[str, Any]:
    """The few-shot protocol (module docstring) for every method x fraction x seed; returns the ``fewshot.json``
    record. Finished runs of an earlier call with the same settings are reused."""
    from safetensors.torch import save_file

    from .data import load_preprocessed
    from .embedding_cache import model_fingerprint
    from .evaluate_model import _versions, compute_logits, encode_images, load_model, write_atomic

    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}.")
    fractions = sorted({float(f) for f in fractions})
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}.")
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("give at least one seed.")
    probe, lora = probe or LinearProbeConfig(), lora or LoraTrainConfig()
    model_dir, data, out = Path(model_dir), Path(data), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    loaded = load_model(model_dir, device, calibrated=False)
    names = loaded.findings
    train = load_preprocessed(data, train_split, columns=["scan_id", "labels", "cxr"])
    test = load_preprocessed(data, eval_split, columns=["labels", "cxr"])
    train_labels = np.asarray(train.with_format("numpy", columns=["labels"])["labels"], dtype=np.float64)
    test_labels = np.asarray(test.with_format("numpy", columns=["labels"])["labels"], dtype=np.float64)
    if train_labels.shape[1] != len(names):
        raise ValueError(f"{data}: {train_labels.shape[1]} labels per row; the model has {len(names)} findings.")
    groups = [str(g) for g in train.with_format(None, columns=["scan_id"])["scan_id"]]
    settings = {
        "model": str(model_dir.resolve()), "model_fingerprint": model_fingerprint(model_dir),
        "data": str(data.resolve()), "train_split": train_split, "eval_split": eval_split,
        "valid_fraction": valid_fraction, "min_scans": min_scans, "probe": asdict(probe), "lora": asdict(lora),
        "stratification": "iterative (Sechidis et al. 2011) over scans",
    }  # fmt: skip
    record_path = out / "fewshot.json"
    previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    done: dict[str, dict] = {}
    if previous is not None:
        same = {k: v for k, v in previous.get("settings", {}).items() if k not in ("fractions", "seeds", "methods")}
        if same == jsonable(settings):
            done = {r["name"]: r for r in previous.get("runs", [])}
    settings.update(fractions=fractions, seeds=seeds, methods=methods)

    images = ImageRows(train)
    test_images = ImageRows(test)
    train_latents = encode_images(loaded, images, batch_size, progress)
    test_latents = encode_images(loaded, test_images, batch_size, progress)
    zero_shot = None
    if loaded.kind == "zeroshot" and loaded.has_tower("text") and loaded.tokenizer is not None:
        zero_shot = _metrics(test_labels, compute_logits(loaded, test_latents), names)

    record = {"settings": settings, "versions": _versions(), "n_eval": len(test), "zero_shot": zero_shot,
              "runs": [], "summary": []}  # fmt: skip

    def save_record():
        record["summary"] = _summary(record["runs"])
        write_atomic(record_path, json.dumps(jsonable(record), indent=2) + "\n")

    jobs = [(f, s) for f in fractions for s in seeds]
    for fraction, seed in tqdm(jobs, desc="few-shot runs", unit="subset", disable=progress is False):
        wanted = [m for m in methods if _run_name(m, fraction, seed) not in done]
        for m in methods:
            if m not in wanted:
                record["runs"].append(done[_run_name(m, fraction, seed)])
        if not wanted:
            continue
        split = fewshot_split(train_labels, fraction, seed, groups, valid_fraction, min_scans)
        fit = train_linear_probe(train_latents[split.train], train_labels[split.train], train_latents[split.valid],
                                 train_labels[split.valid], probe, seed, loaded.device)  # fmt: skip
        base = {"fraction": fraction, "seed": seed, "n_rows_train": len(split.train), "n_rows_valid": len(split.valid),
                "n_scans_train": split.n_scans_train, "n_scans_valid": split.n_scans_valid}  # fmt: skip
        if "linear" in wanted:
            logits = (F.normalize(test_latents, dim=-1) @ fit.weight.T + fit.bias).numpy()
            name = _run_name("linear", fraction, seed)
            (out / "heads").mkdir(exist_ok=True)
            save_file({"weight": fit.weight.contiguous(), "bias": fit.bias.contiguous()},
                      str(out / "heads" / f"{name}.safetensors"))  # fmt: skip
            record["runs"].append({"name": name, "method": "linear", **base, "best_epoch": fit.best_epoch,
                                   "epochs": fit.epochs, "best_valid_loss": fit.best_valid_loss,
                                   "metrics": _metrics(test_labels, logits, names)})  # fmt: skip
            save_record()
        if "lora" in wanted:
            classifier = _base_classifier(model_dir)
            classifier.set_classifier(fit.weight, fit.bias)
            peft_model, result = train_lora(classifier, loaded.image_processor, images, train_labels, split.train,
                                            split.valid, lora, seed, loaded.device, progress)  # fmt: skip
            logits = _peft_logits(peft_model, loaded.image_processor, test_images, np.arange(len(test)),
                                  lora.batch_size, loaded.device).numpy()  # fmt: skip
            name = _run_name("lora", fraction, seed)
            if save_adapters:
                save_adapter(peft_model, model_dir, out / "adapters" / name)
            record["runs"].append({"name": name, "method": "lora", **base, "best_epoch": result.best_epoch,
                                   "epochs": result.epochs, "best_valid_loss": result.best_valid_loss,
                                   "trainable_parameters": result.trainable_parameters,
                                   "target_modules": len(result.target_modules),
                                   "metrics": _metrics(test_labels, logits, names)})  # fmt: skip
            save_record()
            del peft_model, classifier
    save_record()
    write_atomic(out / "fewshot.md", _markdown(record))
    _plot(record, out / "fewshot_auroc.png")
    return jsonable(record)
