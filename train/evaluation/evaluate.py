"""``evaluate_all``: every step of ``x2ctclip evaluate all`` on one model folder and one set of cases.

Under ``torchrun`` the forward passes are dealt across the ranks and gathered in order (the numbers are those of one
process); the calibration fit, the metrics and every file are rank 0's (:mod:`x2ctclip.train.distributed`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from x2ctclip.fileio import write_atomic
from x2ctclip.train import distributed
from x2ctclip.train.evaluation.calibrate import calibrate, calibration_markdown
from x2ctclip.train.evaluation.cases import external_cases, preprocessed_cases
from x2ctclip.train.evaluation.classification import (
    classification_markdown,
    encode_images_ranked,
    evaluate_classification,
)
from x2ctclip.train.evaluation.metrics import (
    jsonable,
)
from x2ctclip.train.evaluation.models import load_model
from x2ctclip.train.evaluation.provenance import provenance_record, write_json
from x2ctclip.train.evaluation.retrieval_report import evaluate_retrieval, retrieval_markdown


# ---------------------------------------------------------------------------------------------------------- all
def evaluate_all(
    model_dir: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    split: str = "test",
    calibration_split: str | None = "valid",
    cache: str | os.PathLike | None = None,
    external: str | os.PathLike | None = None,
    mapping: Any = "auto",
    out_dir: str | os.PathLike | None = None,
    method: str = "temperature",
    thresholds: str | float | None = "youden",
    threshold: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 1024,
    confidence: float = 0.95,
    compare: str | os.PathLike | None = None,
    ensemble: str = "probabilities",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
    dataset_name: str | None = None,
    dataset_type: str | None = None,
    save: bool = True,
    on_saved: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Everything in order (``x2ctclip evaluate all``): calibration on ``calibration_split`` of ``data`` (None: keep
    the folder's calibration), then classification with intervals and retrieval on ``split`` of ``data`` (retrieval
    only when a cache or the towers give CT / report latents), then the same on the ``external`` collection.
    ``save=False`` fits and reports the calibration without storing it (the later steps then use the folder's own);
    ``on_saved(model_dir)`` runs once it is stored (see :func:`~x2ctclip.train.evaluation.calibrate.save_calibration`).
    Writes ``evaluation.json`` (all Hub results together) and ``evaluation.md``."""
    if data is None and external is None:
        raise ValueError("evaluate all needs --data PREPROCESSED and / or --external CSV_OR_FOLDER.")
    model_dir = Path(model_dir)
    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    records: dict[str, Any] = {}
    common = dict(batch_size=batch_size, device=device, progress=progress)
    if data is not None and calibration_split:
        valid = preprocessed_cases(data, calibration_split, dataset_name, dataset_type)
        # Rank 0 alone (it stores the calibration in the model folder); the others wait for it, then load it.
        records["calibration"] = distributed.on_main_then_broadcast(lambda: calibrate(
            model_dir, valid, out, method=method, thresholds=thresholds, save=save, ensemble=ensemble,
            on_saved=on_saved, **common))
    sets = []
    if data is not None:
        sets.append(preprocessed_cases(data, split, dataset_name, dataset_type))
    if external is not None:
        sets.append(external_cases(external, mapping, require_labels=True))
    results, skipped = [], []
    loaded = load_model(model_dir, device, ensemble)  # after the calibration step: with its calibration
    for cases in sets:
        latents = encode_images_ranked(loaded, cases.images, batch_size, progress)
        record = evaluate_classification(model_dir, cases, out, threshold=threshold, n_bootstrap=n_bootstrap,
                                         seed=seed, confidence=confidence, compare=compare, ensemble=ensemble,
                                         loaded=loaded, cxr_embeds=latents, **common)  # fmt: skip
        records[f"zeroshot_{cases.tag}"] = record
        results += record["results"]
        try:
            record = evaluate_retrieval(model_dir, cases, out, cache=cache if cases.preprocessed is not None else None,
                                        loaded=loaded, cxr_embeds=latents, **common)  # fmt: skip
        except ValueError as err:
            skipped.append(f"retrieval on {cases.tag}: {err}")
            continue
        records[f"retrieval_{cases.tag}"] = record
        results += record["results"]
    summary = {
        **provenance_record("evaluate all", seed),
        "model": loaded.describe(),
        "files": {name: r.get("files") for name, r in records.items()},
        "skipped": skipped,
        "results": results,
    }
    if distributed.is_main():
        _write_summary(out, model_dir, summary, records, skipped)
    distributed.barrier()  # evaluation.md exists on return, on every rank
    return jsonable({**summary, "records": records})


def _write_summary(out: Path, model_dir: Path, summary: dict[str, Any], records: dict[str, Any],
                   skipped: list[str]) -> None:  # fmt: skip
    write_json(out / "evaluation.json", summary)
    parts = [f"# Evaluation of `{model_dir}`", ""]
    if "calibration" in records:
        parts.append(calibration_markdown(records["calibration"]))
    for name, record in records.items():
        if name.startswith("zeroshot_"):
            parts.append(classification_markdown(record))
        elif name.startswith("retrieval_"):
            parts.append(retrieval_markdown(record))
    if skipped:
        parts.append("Skipped: " + "; ".join(skipped) + "\n")
    write_atomic(out / "evaluation.md", "\n".join(parts))
