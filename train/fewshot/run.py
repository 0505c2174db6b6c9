"""``x2ctclip fewshot``: every method x fraction x seed run, resumable, scored on the held-out split, with its
summary, markdown and plot."""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from x2ctclip.fileio import write_atomic
from x2ctclip.train.data.embedding_cache import model_fingerprint
from x2ctclip.train.data.folders import load_preprocessed
from x2ctclip.train.evaluation.metrics import classification_report, jsonable
from x2ctclip.train.evaluation.models import compute_logits, encode_images, load_model
from x2ctclip.train.evaluation.provenance import package_versions
from x2ctclip.train.fewshot.lora import (
    LoraTrainConfig,
    base_classifier,
    peft_logits,
    run_name,
    save_adapter,
    train_lora,
)
from x2ctclip.train.fewshot.probe import LinearProbeConfig, train_linear_probe
from x2ctclip.train.fewshot.splits import FEWSHOT_FRACTIONS, FEWSHOT_SEEDS, METHODS, fewshot_split

HEADLINE = ("auroc_macro", "auroc_micro", "auroc_weighted", "average_precision_macro", "average_precision_micro",
            "f1_macro", "f1_micro", "precision_macro", "recall_macro")  # fmt: skip


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
    # start-up: matplotlib loads only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # start-up: matplotlib loads only when a figure is drawn


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


def _check_protocol(methods: Sequence[str], fractions: Sequence[float], seeds: Sequence[int]):
    """``(methods, fractions, seeds)`` deduplicated (fractions sorted); ``ValueError`` for an impossible protocol."""
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
    return methods, fractions, seeds


def _finished_runs(record_path: Path, settings: dict[str, Any]) -> dict[str, dict]:
    """Runs of an earlier ``fewshot.json`` made with the same settings (fractions, seeds and methods may differ),
    by run name; {} when there is none or its settings differ."""
    previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    if previous is None:
        return {}
    same = {k: v for k, v in previous.get("settings", {}).items() if k not in ("fractions", "seeds", "methods")}
    return {r["name"]: r for r in previous.get("runs", [])} if same == jsonable(settings) else {}


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
    methods, fractions, seeds = _check_protocol(methods, fractions, seeds)
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
    done = _finished_runs(record_path, settings)
    settings.update(fractions=fractions, seeds=seeds, methods=methods)

    images = ImageRows(train)
    test_images = ImageRows(test)
    train_latents = encode_images(loaded, images, batch_size, progress)
    test_latents = encode_images(loaded, test_images, batch_size, progress)
    zero_shot = None
    if loaded.kind == "zeroshot" and loaded.has_tower("text") and loaded.tokenizer is not None:
        zero_shot = _metrics(test_labels, compute_logits(loaded, test_latents), names)

    record = {"settings": settings, "versions": package_versions(), "n_eval": len(test), "zero_shot": zero_shot,
              "runs": [], "summary": []}  # fmt: skip

    def save_record():
        record["summary"] = _summary(record["runs"])
        write_atomic(record_path, json.dumps(jsonable(record), indent=2) + "\n")

    jobs = [(f, s) for f in fractions for s in seeds]
    for fraction, seed in tqdm(jobs, desc="few-shot runs", unit="subset", disable=progress is False):
        wanted = [m for m in methods if run_name(m, fraction, seed) not in done]
        for m in methods:
            if m not in wanted:
                record["runs"].append(done[run_name(m, fraction, seed)])
        if not wanted:
            continue
        split = fewshot_split(train_labels, fraction, seed, groups, valid_fraction, min_scans)
        fit = train_linear_probe(train_latents[split.train], train_labels[split.train], train_latents[split.valid],
                                 train_labels[split.valid], probe, seed, loaded.device)  # fmt: skip
        base = {"fraction": fraction, "seed": seed, "n_rows_train": len(split.train), "n_rows_valid": len(split.valid),
                "n_scans_train": split.n_scans_train, "n_scans_valid": split.n_scans_valid}  # fmt: skip
        if "linear" in wanted:
            logits = (F.normalize(test_latents, dim=-1) @ fit.weight.T + fit.bias).numpy()
            name = run_name("linear", fraction, seed)
            (out / "heads").mkdir(exist_ok=True)
            save_file({"weight": fit.weight.contiguous(), "bias": fit.bias.contiguous()},
                      str(out / "heads" / f"{name}.safetensors"))  # fmt: skip
            record["runs"].append({"name": name, "method": "linear", **base, "best_epoch": fit.best_epoch,
                                   "epochs": fit.epochs, "best_valid_loss": fit.best_valid_loss,
                                   "metrics": _metrics(test_labels, logits, names)})  # fmt: skip
            save_record()
        if "lora" in wanted:
            classifier = base_classifier(model_dir)
            classifier.set_classifier(fit.weight, fit.bias)
            peft_model, result = train_lora(classifier, loaded.image_processor, images, train_labels, split.train,
                                            split.valid, lora, seed, loaded.device, progress)  # fmt: skip
            logits = peft_logits(peft_model, loaded.image_processor, test_images, np.arange(len(test)),
                                  lora.batch_size, loaded.device).numpy()  # fmt: skip
            name = run_name("lora", fraction, seed)
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
