"""What the Space demo (``spaces_demo/``) needs next to a model, written from the VALIDATION split only.

:func:`write_demo_assets` (``x2ctclip demo-assets MODEL_DIR --data PREPROCESSED_DIR [--cache CACHE_DIR]``) writes
into the model folder:

- ``calibration.json`` (and ``calibration`` in ``config.json``): per-finding temperature scaling and Youden
  operating thresholds, fitted by :func:`x2ctclip.train.evaluation.calibrate.calibrate` (``x2ctclip evaluate calibrate``)
  on the validation split; its report goes to ``MODEL_DIR/evaluation/calibration_valid.*``.
- ``report_gallery.safetensors``: the validation reports (metadata ``reports`` / ``names``, JSON lists) and their
  L2-normalised latents ``text_embeds`` ``(N, D)`` (from the embedding cache when given, else the report tower).
- ``cxr_reference.safetensors``: ``cxr_embeds`` ``(N, D)``, the L2-normalised latents of the model's own validation
  CXRs: the reference of the demo's out-of-distribution check.
- ``demo_assets.json``: the split, counts, the acceptance share of the check and the one-line description of the
  training distribution the demo shows.

The test split is never read, so held-out test CXRs stay an honest check of the demo. The file names and
:func:`save_latents` come from :mod:`x2ctclip.assets` (re-exported here), where the demo reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from x2ctclip.assets import ASSETS_FILE, CALIBRATION_FILE, GALLERY_FILE, REFERENCE_FILE, save_latents
from x2ctclip.train.data.folders import PREPROCESS_CONFIG, read_folder_config
from x2ctclip.train.evaluation.calibrate import calibrate
from x2ctclip.train.evaluation.cases import preprocessed_cases
from x2ctclip.train.evaluation.models import encode_images, load_model
from x2ctclip.train.evaluation.provenance import write_json
from x2ctclip.train.evaluation.retrieval_report import cache_latents, tower_latents

# The file names and the latent format live in the library (the demo reads them without this package); re-exported
# here so the old import path keeps working.
from x2ctclip.train.hub.folders import refresh_model_folder

__all__ = ["ASSETS_FILE", "CALIBRATION_FILE", "DEFAULT_ACCEPT_SHARE", "GALLERY_FILE", "REFERENCE_FILE", "save_latents", "write_demo_assets"]

#: Share of in-distribution CXRs the demo's out-of-distribution limit accepts (its out-of-fold quantile).
DEFAULT_ACCEPT_SHARE = 0.975


def _describe_distribution(data: Path, source: dict[str, Any]) -> str:
    config = read_folder_config(data, PREPROCESS_CONFIG)
    mode = source.get("simulation") or config.get("cxr_mode") or "mean"
    how = {"mean": "mean projection", "beer_lambert": "Beer-Lambert attenuation"}.get(str(mode), str(mode))
    view = config.get("cxr_view") or "frontal"
    root = Path(str(config.get("source_root") or data)).name
    cts = f"the chest CTs of {root!r}"
    return f"{view} chest radiographs simulated ({how}) from {cts}"


def write_demo_assets(model_dir: str | os.PathLike, data: str | os.PathLike, cache: str | os.PathLike | None = None,
                      *, split: str = "valid", distribution: str | None = None,
                      accept_share: float = DEFAULT_ACCEPT_SHARE, batch_size: int = 64, device: str | None = None,
                      progress: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the demo's calibration, report gallery and input-check reference into ``model_dir`` (see the module
    docstring) from ``split`` of the preprocessed folder ``data``; returns the ``demo_assets.json`` record.

    Args:
        cache: embedding cache of ``data`` (``x2ctclip cache-embeddings``) for the report latents; default: the
            model's own report tower.
        distribution: the one-line description of the training distribution (default: from ``data``'s config).
        accept_share: share of in-distribution CXRs the out-of-distribution limit accepts, in (0.5, 1).
    """
    model_dir, data = Path(model_dir), Path(data)
    if split == "test":
        raise ValueError("demo assets come from the validation split; the test split stays held out.")
    if not 0.5 < accept_share < 1:
        raise ValueError(f"accept_share must be in (0.5, 1), got {accept_share}.")
    cases = preprocessed_cases(data, split)
    if len(cases) < 3:
        raise ValueError(f"{data / split}: {len(cases)} cases; the demo assets need at least 3.")
    calibration = calibrate(model_dir, cases, method="temperature", thresholds="youden", batch_size=batch_size,
                            device=device, progress=progress, on_saved=refresh_model_folder)  # fmt: skip
    loaded = load_model(model_dir, device, calibrated=False)
    cxr = encode_images(loaded, cases.images, batch_size, progress)
    if cache is not None:
        reports = cache_latents(Path(cache), split, cases.names, cxr.shape[1])["report"]
        report_origin = f"embedding cache {Path(cache).name}"
    else:
        reports = tower_latents(loaded, cases, "report", batch_size, progress)
        report_origin = "the model's report tower"
    distribution = distribution or _describe_distribution(data, cases.source)
    source = f"{len(cases)} {split}-split CXRs of the training distribution ({distribution})"
    save_latents(model_dir / REFERENCE_FILE, "cxr_embeds", cxr, {"source": source, "split": split,
                                                                 "accept_share": str(accept_share)})  # fmt: skip
    gallery_meta = {"format_version": "1", "reports": json.dumps(cases.reports), "names": json.dumps(cases.names),
                    "source": f"{len(cases)} {split}-split reports of {data.resolve().name} ({report_origin})"}
    save_latents(model_dir / GALLERY_FILE, "text_embeds", F.normalize(reports.float(), dim=-1), gallery_meta)
    record = {
        "split": split,
        "data": str(data.resolve()),
        "n_cases": len(cases),
        "distribution": distribution,
        "accept_share": accept_share,
        "calibration": {"method": calibration["method"], "threshold_method": calibration["threshold_method"],
                        "ece_after_macro": calibration["ece"]["after"]["macro"]},
        "files": [REFERENCE_FILE, GALLERY_FILE, CALIBRATION_FILE],
        "report_latents": report_origin,
    }
    write_json(model_dir / ASSETS_FILE, record)
    return record
