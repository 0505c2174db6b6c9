"""The `evaluate calibrate` step: fitting the per-finding calibration on validation and saving it."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from x2ctclip.fileio import write_atomic
from x2ctclip.train.evaluation.calibration import Calibrator, expected_calibration_error, reliability_diagram
from x2ctclip.train.evaluation.cases import Cases
from x2ctclip.train.evaluation.classification import fmt_number
from x2ctclip.train.evaluation.metrics import jsonable
from x2ctclip.train.evaluation.models import CLASSIFIER_ARCHITECTURE, compute_logits, encode_images, load_model
from x2ctclip.train.evaluation.provenance import provenance_record, write_json


# ---------------------------------------------------------------------------------------------------------- calibration
def save_calibration(model_dir: str | os.PathLike, calibration: dict[str, Any] | None, demo_file: bool = True,
                     on_saved: Callable[[Path], Any] | None = None) -> Path:
    """Store a calibration dict (``Calibrator.to_dict()``) as ``calibration`` in ``model_dir/config.json``, atomically
    (the other config entries are kept as they are); None removes it. For zero-shot models (no classifier head) also
    write ``calibration.json``, the file the Space demo reads.

    ``on_saved(model_dir)`` runs once both are written: the commands pass the Hub room's
    ``refresh_model_folder``, so the model card's file table lists ``calibration.json`` (this room does not import
    the Hub room, which imports it)."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json to store the calibration in.")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err}).") from None
    if calibration is None:
        config.pop("calibration", None)
    else:
        config["calibration"] = jsonable(calibration)
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    demo = model_dir / "calibration.json"
    if demo_file and CLASSIFIER_ARCHITECTURE not in (config.get("architectures") or []):
        if calibration is None:
            demo.unlink(missing_ok=True)
        else:
            write_atomic(demo, json.dumps({"cxr": jsonable(calibration)}, indent=2) + "\n")
    if on_saved is not None:
        on_saved(model_dir)
    return path


def calibrate(
    model_dir: str | os.PathLike,
    cases: Cases,
    out_dir: str | os.PathLike | None = None,
    *,
    method: str = "temperature",
    thresholds: str | float | None = "youden",
    n_bins: int = 15,
    save: bool = True,
    ensemble: str = "probabilities",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
    on_saved: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Fit per-finding calibration and operating points on validation cases (``x2ctclip evaluate calibrate``).

    The model's *uncalibrated* log-odds (any calibration already in the folder is ignored) are fitted with
    :class:`~x2ctclip.train.evaluation.calibration.Calibrator` (``method`` ``"temperature"`` or ``"platt"``; ``thresholds``
    ``"youden"`` or a target sensitivity such as 0.9). Writes ``calibration_<tag>.json`` / ``.md`` with the ECE per
    finding before and after, a reliability diagram ``reliability_<tag>.png``, and (``save``) stores the calibration
    in the model folder's ``config.json`` (:func:`save_calibration`, which then calls ``on_saved``).
    """
    model_dir = Path(model_dir)
    loaded = load_model(model_dir, device, ensemble, calibrated=False)
    latents = encode_images(loaded, cases.images, batch_size, progress)
    logits = compute_logits(loaded, latents)
    labels = cases.labels_for_findings(loaded.findings)
    if np.isnan(labels).all():
        raise ValueError("no label of the calibration cases maps to a single model finding; nothing to fit.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrator = Calibrator.fit(logits, labels, method=method, thresholds=thresholds, finding_names=loaded.findings)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    before = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
    after = np.asarray(calibrator.transform(logits), dtype=np.float64)
    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    stem = cases.tag
    diagram = reliability_diagram(out / f"reliability_{stem}.png", labels, before, after, n_bins=n_bins,
                                  title=f"Reliability on {cases.dataset['name']} ({method} scaling)")  # fmt: skip
    per_before = expected_calibration_error(labels, before, n_bins, average=None)
    per_after = expected_calibration_error(labels, after, n_bins, average=None)
    record = {
        **provenance_record("evaluate calibrate"),
        "model": loaded.describe(),
        "data": cases.source,
        "method": method,
        "threshold_method": calibrator.threshold_method,
        "n_bins": n_bins,
        "calibration": calibrator.to_dict(),
        "ece": {
            "before": {"macro": expected_calibration_error(labels, before, n_bins, "macro"),
                       "pooled": expected_calibration_error(labels, before, n_bins, "pooled")},
            "after": {"macro": expected_calibration_error(labels, after, n_bins, "macro"),
                      "pooled": expected_calibration_error(labels, after, n_bins, "pooled")},
            "note": "measured on the cases the calibration was fitted on (in-sample)",
        },
        "findings": [
            {"name": name, "ece_before": per_before[j], "ece_after": per_after[j],
             "slope": calibrator.slope[j], "intercept": calibrator.intercept[j],
             "threshold": None if calibrator.thresholds is None else calibrator.thresholds[j],
             "n_positive": int(np.nansum(labels[:, j] == 1)), "n_negative": int(np.nansum(labels[:, j] == 0))}
            for j, name in enumerate(loaded.findings)
        ],  # fmt: skip
        "notes": notes,
        "saved_to": str((model_dir / "config.json").resolve()) if save else None,
        "files": {"json": f"calibration_{stem}.json", "markdown": f"calibration_{stem}.md", "diagram": diagram.name},
    }
    if save:
        save_calibration(model_dir, calibrator.to_dict(), on_saved=on_saved)
    write_json(out / f"calibration_{stem}.json", record)
    write_atomic(out / f"calibration_{stem}.md", calibration_markdown(record))
    return jsonable(record)


def calibration_markdown(record: dict[str, Any]) -> str:
    record = jsonable(record)
    ece = record["ece"]
    lines = [
        f"# Calibration ({record['method']} scaling, thresholds: {record['threshold_method'] or 'none'})",
        "",
        f"- model: `{record['model']['path']}`" + (f" (saved into `{record['saved_to']}`)" if record["saved_to"] else ""),
        f"- data: `{record['data']['path']}` ({record['data'].get('split', 'external')}), {record['n_bins']} bins",
        f"- ECE macro {fmt_number(ece['before']['macro'])} -> {fmt_number(ece['after']['macro'])}, pooled "
        f"{fmt_number(ece['before']['pooled'])} -> {fmt_number(ece['after']['pooled'])} ({ece['note']})",
        f"- reliability diagram: `{record['files']['diagram']}`",
        "",
        "| finding | n+ | n- | slope | intercept | threshold | ECE before | ECE after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in record["findings"]:
        lines.append(f"| {row['name']} | {row['n_positive']} | {row['n_negative']} | {fmt_number(row['slope'])} | "
                     f"{fmt_number(row['intercept'])} | {fmt_number(row['threshold'])} | {fmt_number(row['ece_before'])} | "
                     f"{fmt_number(row['ece_after'])} |")  # fmt: skip
    if record["notes"]:
        lines += ["", "Notes: " + " ".join(record["notes"])]
    return "\n".join(lines) + "\n"
