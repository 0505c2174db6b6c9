"""The quickstart: the whole X2CT-CLIP recipe on the embedded synthetic data set, in one call.

``x2ctclip quickstart --out DIR`` (or :func:`run_quickstart`) runs, each step skipped when its output already exists
(so a killed run continues where it stopped):

1. generate a synthetic data set in the CT-RATE layout (:mod:`x2ctclip.train.synthetic.writer`): train, valid and a
   held-out test split, each from its own seed -> ``DIR/data/ct_rate``;
2. preprocess it: CT volumes to a small fixed grid and simulated frontal CXRs (``x2ctclip preprocess``)
   -> ``DIR/data/preprocessed``;
3. train a small CT-CLIP: CT tower from scratch, report tower initialised from all-MiniLM-L6-v2 (body frozen, its
   projection trained) -> ``DIR/runs/ctclip``;
4. cache the CT and report latents of every split (``x2ctclip cache-embeddings``) -> ``DIR/data/cache``;
5. train the X2CT-CLIP stage (CXR tower against the frozen towers, beta = gamma = 1) -> ``DIR/runs/x2ct``;
6. train a CXR-only CLIP baseline on the same data and budget (gamma = 0) -> ``DIR/runs/cxr_only``;
7. evaluate both on the held-out test split: zero-shot AUROC per finding and macro, Recall@K CXR->report and
   CXR->CT, paired DeLong tests X2CT-CLIP vs baseline; the CT-CLIP teacher's zero-shot AUROC from the CT
   latents is reported as a reference. Every AUROC and Recall@K gets a 95 % bootstrap interval over the test scans
   and the X2CT-CLIP minus CXR-only differences paired bootstrap intervals; linear probes on the frozen CXR
   latents of both models at 1 %, 10 % and 100 % of the training labels (3 seeds) give the few-shot table
   (:mod:`x2ctclip.train.quickstart_report`, few-shot runs in ``DIR/fewshot``);
8. write ``DIR/model`` (the X2CT-CLIP model with its processor: ``AutoModel.from_pretrained`` /
   ``AutoProcessor.from_pretrained``), ``DIR/metrics.json``, ``DIR/results.md`` and plots.

Presets (:data:`PRESETS`): ``default`` is sized for about 15 minutes on a 2-core CPU; ``tiny`` runs the same steps
in about a minute, for tests. Hyper-parameters were chosen on the validation split; the test split is only used
in step 7.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate.state import AcceleratorState
from transformers import AutoProcessor

from x2ctclip import CT_RATE_FINDINGS, X2CTCLIPModel
from x2ctclip.fileio import atomic_dir, write_atomic, write_json_atomic
from x2ctclip.processors import load_report_tokenizer
from x2ctclip.train import quickstart_report as report
from x2ctclip.train.data.embedding_cache import cache_embeddings
from x2ctclip.train.data.folders import load_embedding_cache, load_preprocessed
from x2ctclip.train.data.preprocess import preprocess_ct_rate
from x2ctclip.train.evaluation.metrics import jsonable, roc_auc
from x2ctclip.train.evaluation.retrieval import retrieval_metrics
from x2ctclip.train.evaluation.uncertainty import delong_test_per_finding
from x2ctclip.train.hub.card_sections import training_info_from_preprocess_config
from x2ctclip.train.hub.demo_assets import write_demo_assets
from x2ctclip.train.hub.folders import finish_model_folder, run_training_info
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate
from x2ctclip.train.training.config import CTCLIPTrainConfig, X2CTTrainConfig
from x2ctclip.train.training.ctclip_stage import train_ctclip
from x2ctclip.train.training.x2ct_stage import embed_cxrs, train_x2ct
from x2ctclip.zero_shot import ZeroShotClassifier

__all__ = ["HARD_ON_PROJECTION", "PRESETS", "QuickstartPreset", "evaluate_cxr_model", "run_quickstart"]

#: Findings a frontal projection shows poorly (small, low-contrast or hidden behind other structures), fixed before
#: any result was seen: coronary calcification, pericardial effusion (looks like cardiomegaly), hiatal hernia and
#: lymph nodes behind the mediastinum, and the fine parenchymal patterns.
HARD_ON_PROJECTION = (
    "Coronary artery wall calcification",
    "Pericardial effusion",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Lung nodule",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Bronchiectasis",
    "Interlobular septal thickening",
)


@dataclass(frozen=True)
class QuickstartPreset:
    """Sizes and training budgets of one quickstart run.

    Attributes:
        n_train / n_valid / n_test: scans per split (one reconstruction each).
        synthetic_shape: (D, H, W) voxels of the generated CTs.
        ct_shape / ct_spacing: (D, H, W) voxels and mm of the preprocessed CTs (the CT tower's input).
        cxr_size: side of the stored simulated CXRs; image_size: side fed to the CXR tower.
        ct_tower: fields of the CT tower config (:class:`x2ctclip.X2CTCLIPCTConfig`).
        cxr_tower: the CXR tower (a transformers vision config with ``model_type``).
        ctclip / x2ct: overrides of :class:`CTCLIPTrainConfig` / :class:`X2CTTrainConfig` (the baseline uses ``x2ct``).
    """

    n_train: int
    n_valid: int
    n_test: int
    synthetic_shape: tuple[int, int, int]
    ct_shape: tuple[int, int, int]
    ct_spacing: tuple[float, float, float]
    cxr_size: int
    image_size: int
    ct_tower: dict[str, Any]
    cxr_tower: dict[str, Any]
    ctclip: dict[str, Any] = field(default_factory=dict)
    x2ct: dict[str, Any] = field(default_factory=dict)
    workers: int = 2


PRESETS: dict[str, QuickstartPreset] = {
    # Each choice below was made on the validation split; the measurements behind them are in docs/training.md,
    # "How the default preset was chosen".
    "default": QuickstartPreset(
        # 800 training scans keep the run inside 15 minutes (twice as many doubled it for a gain within the noise).
        n_train=800, n_valid=150, n_test=250,
        # 128 x 128 in-plane generated CTs give the simulated CXRs 3 mm pixels; the CT tower reads them at 6 mm.
        synthetic_shape=(64, 128, 128), ct_shape=(32, 64, 64), ct_spacing=(10.0, 6.0, 6.0),
        cxr_size=128, image_size=128,
        # 16 x 16 x 8-voxel patches: a 4 x 4 x 4 token grid (8 x 8 x 4 patches did not fit the budget).
        ct_tower=dict(dim=64, codebook_size=16, patch_size=16, temporal_patch_size=8, spatial_depth=1,
                      temporal_depth=1, heads=4, dim_head=16, use_vq=False),
        cxr_tower=dict(model_type="resnet", embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                       layer_type="basic"),
        ctclip=dict(projection_dim=128, per_device_batch_size=64, num_epochs=20, learning_rate=1e-3,
                    weight_decay=0.1, warmup_steps=20, lr_scheduler="cosine", max_text_length=64,
                    text_truncation_side="left", prompt_text_fraction=0.3),
        # One data-loading worker runs the augmentation while the main process runs the CXR tower.
        x2ct=dict(per_device_batch_size=64, num_epochs=20, learning_rate=1e-3, weight_decay=1e-4,
                  warmup_steps=20, lr_scheduler="cosine", num_workers=1),
    ),
    "tiny": QuickstartPreset(
        n_train=24, n_valid=8, n_test=12,
        synthetic_shape=(32, 48, 48), ct_shape=(16, 32, 32), ct_spacing=(16.0, 10.0, 10.0),
        cxr_size=48, image_size=32,
        ct_tower=dict(dim=16, codebook_size=8, patch_size=8, temporal_patch_size=4, spatial_depth=1,
                      temporal_depth=1, heads=2, dim_head=8, use_vq=False),
        cxr_tower=dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
        ctclip=dict(projection_dim=32, per_device_batch_size=8, max_steps=6, learning_rate=1e-3, max_text_length=32,
                    text_truncation_side="left", prompt_text_fraction=0.3),
        x2ct=dict(per_device_batch_size=8, max_steps=6, learning_rate=1e-3),
        workers=0,
    ),
}

#: Per-case arrays of the evaluation results: used for the intervals, not written to metrics.json.
_ARRAYS = ("scores", "labels", "cxr_embeds", "report_embeds", "ct_embeds")


def _peak_memory_mb() -> dict[str, float]:
    """Peak resident memory (MiB) of this process and of its largest finished child (ru_maxrss is KiB on Linux)."""
    unit = 1 / 1024 if os.uname().sysname != "Darwin" else 1 / 2**20
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit,
    }


class _Log:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[quickstart {time.perf_counter() - self.start:6.0f} s] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------- evaluation
def evaluate_cxr_model(model_dir: str | os.PathLike, data_dir: str | os.PathLike, cache_dir: str | os.PathLike,
                       split: str = "test", batch_size: int = 64) -> dict[str, Any]:
    """Zero-shot and retrieval metrics of a saved X2CT-CLIP model on a preprocessed split.

    Returns a dict with ``scores`` (N, 18) zero-shot probabilities, ``labels`` (N, 18), ``auroc`` per finding,
    ``macro_auroc``, Recall@K / MAP@K for CXR->report and CXR->CT (the report and CT latents of the cache), and the
    (N, projection_dim) latents ``cxr_embeds``, ``report_embeds``, ``ct_embeds`` of the same scans in the same order.
    """
    model = X2CTCLIPModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = load_preprocessed(data_dir, split, columns=["VolumeName", "cxr", "labels"])
    cache = load_embedding_cache(cache_dir, split)
    names = [str(n) for n in rows["VolumeName"]]
    position = {str(n): i for i, n in enumerate(cache["VolumeName"])}
    order = np.asarray([position[n] for n in names])
    labels = np.asarray(rows["labels"], dtype=np.int64)
    cxr = embed_cxrs(model, list(rows["cxr"]), processor.image_processor, torch.device("cpu"), batch_size)
    text = torch.from_numpy(np.asarray(cache["text_embeds"], dtype=np.float32)[order])
    ct = torch.from_numpy(np.asarray(cache["ct_embeds"], dtype=np.float32)[order])
    classifier = ZeroShotClassifier(model, processor.tokenizer, max_length=processor.tokenizer.model_max_length)
    scores = classifier.predict_from_embeddings(cxr).probabilities.numpy()
    per_finding = np.asarray(roc_auc(labels, scores, average=None), dtype=np.float64)
    out = {
        "n": len(names),
        "scores": scores,
        "labels": labels,
        "auroc": per_finding,
        "macro_auroc": float(np.nanmean(per_finding)),
        "cxr_embeds": cxr,
        "report_embeds": text,
        "ct_embeds": ct,
    }
    ks = tuple(k for k in (1, 5, 10, 50) if k <= len(names))
    for target, gallery in (("report", text), ("ct", ct)):
        result = retrieval_metrics(cxr, gallery, labels, recall_at=ks, map_at=(1, 5, 10))
        out[f"cxr_to_{target}"] = {"recall": result.recall, "map": result.map, "median_rank": result.median_rank}
    return out


def _teacher_zero_shot(model_dir: Path, cache_dir: Path, split: str) -> dict[str, Any]:
    """The CT-CLIP teacher's zero-shot AUROC from the cached CT latents (what the CXR tower is pulled towards), with
    its ``scores`` and ``labels`` (N, 18) in the cache's order."""
    model = X2CTCLIPModel.from_pretrained(model_dir).eval()
    tokenizer = load_report_tokenizer(model_dir)
    cache = load_embedding_cache(cache_dir, split)
    labels = np.asarray(cache["labels"], dtype=np.int64)
    classifier = ZeroShotClassifier(model, tokenizer, max_length=tokenizer.model_max_length)
    scores = classifier.predict_from_embeddings(np.asarray(cache["ct_embeds"], dtype=np.float32)).probabilities.numpy()
    per_finding = np.asarray(roc_auc(labels, scores, average=None), dtype=np.float64)
    return {"auroc": per_finding, "macro_auroc": float(np.nanmean(per_finding)), "scores": scores, "labels": labels}


# ----------------------------------------------------------------------------------------------------- reporting
def _plots(metrics: dict[str, Any], out: Path, runs: Path) -> list[str]:
    # matplotlib only for the plots, and the Agg backend must be chosen before pyplot is first imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = metrics["models"]
    written = []
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(CT_RATE_FINDINGS))
    for offset, (key, label) in zip((-0.27, 0.0, 0.27), (("x2ct", "X2CT-CLIP (CXR)"), ("cxr_only", "CXR-only CLIP (CXR)"),
                                                          ("ctclip_teacher", "CT-CLIP teacher (CT)"))):
        # Findings without both classes in the test split have no AUROC: no bar.
        ax.bar(x + offset, np.asarray(m[key]["auroc"], dtype=float), 0.27, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [n + (" *" if n in HARD_ON_PROJECTION else "") for n in CT_RATE_FINDINGS], rotation=60, ha="right",
                  fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("zero-shot AUROC (test)")
    ax.set_title("Zero-shot AUROC per finding (* = hard on a projection)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "auroc_per_finding.png", dpi=120)
    plt.close(fig)
    written.append("auroc_per_finding.png")

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, name in zip(axes, ("ctclip", "x2ct", "cxr_only")):
        path = runs / name / "train_log.csv"
        if not path.is_file():
            continue
        with path.open() as f:
            rows = list(csv.DictReader(f))
        for column in ("loss", "loss_ct_text", "loss_cxr_text", "loss_cxr_ct"):
            values = [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
            if values and not (column == "loss" and name == "ctclip"):
                ax.plot(*zip(*values), label=column)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
    written.append("training_curves.png")
    return written


# ----------------------------------------------------------------------------------------------------- main
def run_quickstart(out_dir: str | os.PathLike, preset: str = "default", seed: int = 0, workers: int | None = None,
                   progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run the quickstart into ``out_dir`` (see the module docstring) and return the metrics written to
    ``out_dir/metrics.json``.

    Args:
        preset: a key of :data:`PRESETS`.
        seed: base seed: train / valid / test data use ``seed``, ``seed + 1``, ``seed + 2``; training uses 1024 + seed.
        workers: processes for data generation and preprocessing (default: the preset's).
        progress: tqdm bars. quiet: no step messages.

    One long function on purpose: it is the recipe, read top to bottom, each step a small nested function.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}.")
    p = PRESETS[preset]
    workers = p.workers if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"preset": preset, "seed": int(seed), "settings": json.loads(json.dumps(asdict(p)))}
    record_path = out / "quickstart_config.json"
    if record_path.is_file():
        previous = json.loads(record_path.read_text())
        if previous != record:
            raise ValueError(f"{out}: holds a quickstart run with other settings (preset {previous.get('preset')!r}, "
                             f"seed {previous.get('seed')}); use another --out folder.")
    else:
        write_json_atomic(record_path, record)

    log = _Log(quiet)
    timings: dict[str, float] = {}
    raw, pre, cache = out / "data" / "ct_rate", out / "data" / "preprocessed", out / "data" / "cache"
    runs = out / "runs"
    train_seed = 1024 + int(seed)

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        return result

    # 1. synthetic data set, one seed per split.
    def synthetic():
        for i, (split, n) in enumerate((("train", p.n_train), ("valid", p.n_valid), ("test", p.n_test))):
            counts = {"n_train": 0, "n_valid": 0, "n_test": 0, f"n_{split}": n}
            generate_synthetic_ct_rate(raw, **counts, shape=p.synthetic_shape, seed=int(seed) + i, recons=1,
                                       workers=max(workers, 1), progress=progress)

    log(f"1/8 synthetic CT-RATE layout: {p.n_train} train, {p.n_valid} valid, {p.n_test} test scans -> {raw}")
    timed("synthetic", synthetic)

    # 2. preprocessing: CT grid + simulated CXRs.
    def preprocess():
        preprocess_ct_rate(raw, pre, splits=("train", "valid", "test"), shape=p.ct_shape, spacing=p.ct_spacing,
                           cxr_size=p.cxr_size, workers=workers, progress=progress)

    log(f"2/8 preprocess: CT {p.ct_shape} voxels of {p.ct_spacing} mm, simulated CXRs {p.cxr_size} px -> {pre}")
    timed("preprocess", preprocess)

    common = dict(seed=train_seed, progress_bar=progress, save_steps=0, logging_steps=5, report_to=["csv", "tensorboard"])

    # 3. CT-CLIP stage.
    ctclip_dir = runs / "ctclip" / "model"

    def ctclip():
        config = CTCLIPTrainConfig(output_dir=str(runs / "ctclip"), data_dir=str(pre), ct_preset="small",
                                   ct_config=dict(p.ct_tower), text_model="all-MiniLM-L6-v2",
                                   text_training="projection", resume=_resume(runs / "ctclip"), **{**common, **p.ctclip})
        AcceleratorState._reset_state(True)
        return train_ctclip(config)

    log("3/8 CT-CLIP stage: CT tower from scratch, report tower from all-MiniLM-L6-v2 -> runs/ctclip")
    if not (ctclip_dir / "config.json").is_file():
        result = timed("ctclip", ctclip)
        log(f"    CT-CLIP valid metrics: {_short(result.eval_metrics)}")

    # 4. embedding cache.
    def embed():
        cache_embeddings(ctclip_dir, pre, cache, splits=["train", "valid", "test"], batch_size=32, progress=progress)

    log(f"4/8 cache CT and report latents -> {cache}")
    timed("cache", embed)

    # 5-6. X2CT-CLIP stage and the CXR-only baseline, same data and budget.
    def stage(name: str, gamma: float):
        config = X2CTTrainConfig(
            output_dir=str(runs / name), ctclip_model=str(ctclip_dir), data_dir=str(pre), embedding_cache=str(cache),
            cxr_preset="small", cxr_config=dict(p.cxr_tower), image_size=p.image_size, loss_ct_text_weight=0.0,
            loss_cxr_text_weight=1.0, loss_cxr_ct_weight=gamma, resume=_resume(runs / name), **{**common, **p.x2ct},
        )
        AcceleratorState._reset_state(True)
        return train_x2ct(config)

    for index, (name, gamma, title) in enumerate((("x2ct", 1.0, "X2CT-CLIP stage (beta = gamma = 1)"),
                                                   ("cxr_only", 0.0, "CXR-only CLIP baseline (gamma = 0)"))):
        log(f"{5 + index}/8 {title} -> runs/{name}")
        if not (runs / name / "model" / "config.json").is_file():
            result = timed(name, lambda: stage(name, gamma))
            log(f"    {name} valid metrics: {_short(result.eval_metrics)}")

    # 7. evaluation on the held-out test split.
    log("7/8 evaluate on the held-out test split")

    def evaluate():
        models = {name: evaluate_cxr_model(runs / name / "model", pre, cache, "test") for name in ("x2ct", "cxr_only")}
        models["ctclip_teacher"] = _teacher_zero_shot(ctclip_dir, cache, "test")
        a, b = models["x2ct"], models["cxr_only"]
        delong = delong_test_per_finding(a["labels"], a["scores"], b["scores"], list(CT_RATE_FINDINGS))
        return models, {k: (v.p_value if v is not None else None) for k, v in delong.items()}

    models, delong = timed("evaluate", evaluate)
    metrics = {
        "preset": preset,
        "seed": int(seed),
        "data": {"n_train": p.n_train, "n_valid": p.n_valid, "n_test": p.n_test},
        "models": {name: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()
                          if k not in _ARRAYS} for name, result in models.items()},
        "findings": list(CT_RATE_FINDINGS),
        "hard_on_projection": _hard_summary(models),
        "hard_on_projection_findings": list(HARD_ON_PROJECTION),
        "delong": delong,
    }
    log(f"    bootstrap intervals ({report.BOOTSTRAP_RESAMPLES} resamples of the test scans, paired X2CT-CLIP vs "
        "CXR-only)")
    timed("uncertainty", lambda: _add_intervals(metrics, models))
    log(f"    few-shot linear probes at {', '.join(f'{f:.0%}' for f in report.QUICKSTART_FEWSHOT_FRACTIONS)} of the "
        f"training labels, seeds {list(report.QUICKSTART_FEWSHOT_SEEDS)} -> fewshot/")
    metrics["fewshot"] = timed("fewshot", lambda: report.fewshot_table(
        {name: runs / name / "model" for name in ("x2ct", "cxr_only")}, pre, out / "fewshot", progress=progress))

    # 8. outputs.
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["peak_memory_mb"] = {k: round(v) for k, v in _peak_memory_mb().items()}
    metrics = jsonable(metrics)
    with atomic_dir(out / "model") as tmp:
        shutil.copytree(runs / "x2ct" / "model", tmp, dirs_exist_ok=True)
        write_demo_assets(tmp, pre, cache, progress=progress, distribution="frontal chest radiographs simulated (mean "
                          "projection) from synthetic chest CT phantoms (x2ctclip make-synthetic)")  # valid split only
        _quickstart_card(tmp, runs, pre, metrics)
    write_json_atomic(out / "metrics.json", metrics)
    write_atomic(out / "results.md", report.results_markdown(metrics, HARD_ON_PROJECTION))
    metrics["plots"] = _plots(metrics, out, runs)
    timings["total"] = time.perf_counter() - log.start
    metrics["timings_s"]["total"] = round(timings["total"], 1)
    write_json_atomic(out / "metrics.json", metrics)
    write_atomic(out / "results.md", report.results_markdown(metrics, HARD_ON_PROJECTION))
    log(f"8/8 wrote {out / 'model'}, metrics.json, results.md, {', '.join(metrics['plots'])}")
    return metrics


def _hard_summary(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Macro AUROC over :data:`HARD_ON_PROJECTION` per model, and on how many of those X2CT-CLIP beats CXR-only."""
    hard_idx = [CT_RATE_FINDINGS.index(n) for n in HARD_ON_PROJECTION]
    hard: dict[str, Any] = {k: float(np.nanmean(np.asarray(models[k]["auroc"])[hard_idx]))
                            for k in ("x2ct", "cxr_only", "ctclip_teacher")}
    defined = [j for j in hard_idx
               if np.isfinite(models["x2ct"]["auroc"][j]) and np.isfinite(models["cxr_only"]["auroc"][j])]
    hard["x2ct_better"] = int(sum(models["x2ct"]["auroc"][j] > models["cxr_only"]["auroc"][j] for j in defined))
    hard["n_defined"] = len(defined)
    return hard


def _add_intervals(metrics: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
    """Bootstrap intervals over the test scans (:mod:`x2ctclip.train.quickstart_report`) into ``metrics``: per
    model ``auroc_ci``, ``macro_auroc_ci``, ``hard_macro_auroc_ci`` and ``cxr_to_{report,ct}.recall_ci``; the paired
    X2CT-CLIP minus CXR-only differences under ``comparisons``; the bootstrap settings under ``bootstrap``. The point
    values already in ``metrics`` are left as they are."""
    hard_idx = [CT_RATE_FINDINGS.index(n) for n in HARD_ON_PROJECTION]
    a, b = models["x2ct"], models["cxr_only"]
    pair = [("x2ct", "cxr_only")]
    paired = report.auroc_intervals(a["labels"], {"x2ct": a["scores"], "cxr_only": b["scores"]}, hard_idx, pair)
    teacher = models["ctclip_teacher"]
    # The teacher's scans are in the cache's order: its own (unpaired) bootstrap over the same test scans.
    alone = report.auroc_intervals(teacher["labels"], {"ctclip_teacher": teacher["scores"]}, hard_idx)
    intervals = {**paired["models"], **alone["models"]}
    for name, ci in intervals.items():
        entry = metrics["models"][name]
        entry.update(auroc_ci=ci["auroc_ci"], auroc_n_undefined=ci["auroc_n_undefined"],
                     macro_auroc_ci=ci["macro_auroc_ci"], hard_macro_auroc_ci=ci["subset_macro_auroc_ci"])
    difference = paired["differences"]["x2ct-cxr_only"]
    m = metrics["models"]
    comparisons: dict[str, Any] = {
        "a": "x2ct", "b": "cxr_only", "method": "paired percentile bootstrap over the test scans",
        # Point values: differences of the reported macros (the bootstrap's own estimate is the same up to rounding).
        "macro": {"difference": m["x2ct"]["macro_auroc"] - m["cxr_only"]["macro_auroc"],
                  "difference_ci": difference["macro"]["difference_ci"], "n_findings": len(CT_RATE_FINDINGS)},
        "hard_on_projection": {"difference": metrics["hard_on_projection"]["x2ct"]
                               - metrics["hard_on_projection"]["cxr_only"],
                               "difference_ci": difference["subset"]["difference_ci"],
                               "n_findings": len(HARD_ON_PROJECTION)},
        "per_finding": {name: {**d, "delong_p": metrics["delong"].get(name)}
                        for name, d in zip(CT_RATE_FINDINGS, difference["per_finding"])},
        "retrieval": {},
    }
    for target in ("report", "ct"):
        key = f"cxr_to_{target}"
        ks = [int(k) for k in a[key]["recall"]]
        hits = {name: report.query_hits(models[name]["cxr_embeds"], models[name][f"{target}_embeds"], ks)
                for name in ("x2ct", "cxr_only")}
        retrieval = report.retrieval_intervals(hits, ks, pair)
        for name in ("x2ct", "cxr_only"):
            m[name][key]["recall_ci"] = retrieval["models"][name]["recall_ci"]
        comparisons["retrieval"][key] = retrieval["differences"]["x2ct-cxr_only"]
    metrics["comparisons"] = comparisons
    metrics["bootstrap"] = {"n_resamples": report.BOOTSTRAP_RESAMPLES, "seed": report.BOOTSTRAP_SEED,
                            "confidence": report.CONFIDENCE, "unit": "test scan", "method": "percentile",
                            "skipped": report.skipped_findings(a["labels"])}


def _quickstart_card(folder: Path, runs: Path, pre: Path, metrics: dict[str, Any]) -> None:
    """The model card of DIR/model, from the package's one card builder: the X2CT stage's run record, the held-out
    results measured above (model-index: macro AUROC on the synthetic test split) and the CXR simulation settings."""
    result = json.loads((runs / "x2ct" / "train_result.json").read_text())
    options = yaml.safe_load((runs / "x2ct" / "train_config.yaml").read_text()) or {}
    held_out = report.results_markdown(metrics, HARD_ON_PROJECTION).split("\n", 2)[2].split("\nTimings")[0]
    summary = (
        f"X2CT-CLIP model trained by `x2ctclip quickstart` (preset `{metrics['preset']}`, seed {metrics['seed']}) on a "
        "*synthetic* CT-RATE layout (generated CT volumes, reports and labels; no real patient data), with simulated "
        "CXRs. Its numbers describe that synthetic data only."
    )
    info = run_training_info("X2CT-CLIP quickstart", summary, options, result,
                             "**Held-out synthetic test split (measured by the quickstart):**\n\n" + held_out)
    info["simulation"] = training_info_from_preprocess_config(pre / "preprocess_config.json").get("simulation")
    x2ct = metrics["models"]["x2ct"]
    evaluation = [{
        "task": {"type": "zero-shot-image-classification", "name": "Zero-shot CT findings from simulated CXR"},
        "dataset": {"name": "x2ctclip synthetic CT-RATE layout (held-out test split)", "type": "x2ctclip-synthetic",
                    "split": "test"},
        "metrics": [{"type": "roc_auc", "name": "AUROC (macro)", "config": "macro", "value": x2ct["macro_auroc"]}],
        "n_cases": x2ct.get("n"),
    }] if isinstance(x2ct.get("macro_auroc"), (int, float)) else None
    finish_model_folder(folder, model_id="model", model_name=f"x2ctclip-quickstart-{metrics['preset']}",
                        training_info=info, metrics=evaluation,
                        built_on=[runs / "ctclip" / "model"], tags=["synthetic-data"])


def _resume(run_dir: Path) -> str | None:
    """Continue from the newest checkpoint of an interrupted run, if any."""
    return "latest" if any(run_dir.glob("checkpoint-*")) else None


def _short(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)) or "none"
