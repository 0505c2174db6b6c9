"""Cross-modal retrieval evaluation of a model folder (CXR to report, CXR to CT) and its markdown."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from x2ctclip.train import distributed
from x2ctclip.train.evaluation.cases import Cases
from x2ctclip.train.evaluation.classification import encode_images_ranked, fmt_number
from x2ctclip.train.evaluation.metrics import (
    jsonable,
    load_metric,
)
from x2ctclip.train.evaluation.models import LoadedModel, load_model
from x2ctclip.train.evaluation.provenance import SOURCE, provenance_record, write_report
from x2ctclip.train.evaluation.retrieval import DEFAULT_MAP_AT, DEFAULT_RECALL_AT


# ---------------------------------------------------------------------------------------------------------- retrieval
@torch.no_grad()
def tower_latents(loaded: LoadedModel, cases: Cases, modality: str, batch_size: int, progress: bool | None):
    """CT or report latents ``(N, projection_dim)`` from the model's own towers (L2-normalised, CPU); under
    ``torchrun`` each rank runs its block of the batches and the blocks are gathered in order."""
    from x2ctclip.train.data.folders import ct_values_from_ct, read_ct

    model = loaded.model
    chunks = []
    first, n = distributed.batch_block(len(cases), batch_size)
    quiet = progress is False or not distributed.is_main()
    bar = tqdm(range(first, n, batch_size), desc=f"encode {modality}", unit="batch", disable=quiet)
    for start in bar:
        stop = min(start + batch_size, n)
        if modality == "report":
            from x2ctclip.processors.tokenization import tokenize_reports

            tokens = tokenize_reports(loaded.tokenizer, cases.reports[start:stop], max_length=loaded.text_max_length)
            tokens = {k: v.to(loaded.device) for k, v in tokens.items()}
            out = model.get_text_features(tokens["input_ids"], tokens.get("attention_mask"),
                                          tokens.get("token_type_ids")).pooler_output  # fmt: skip
        else:
            ct_values = ct_values_from_ct(read_ct(cases.preprocessed, range(start, stop)), device=loaded.device)
            out = model.get_ct_features(ct_values).pooler_output
        chunks.append(F.normalize(out.float(), dim=-1).cpu())
    local = torch.cat(chunks) if chunks else torch.empty(0, model.config.projection_dim)
    return distributed.gather_rows(local)


def cache_latents(cache: Path, split: str, names: list[str], dim: int) -> dict[str, torch.Tensor]:
    from x2ctclip.train.data.folders import load_embedding_cache

    table = load_embedding_cache(cache, split)
    position = {str(n): i for i, n in enumerate(table.with_format(None, columns=["VolumeName"])["VolumeName"])}
    missing = [n for n in names if n not in position]
    if missing:
        raise ValueError(f"{cache / split}: {len(missing)} of the {len(names)} volumes are not in the embedding cache "
                         f"(e.g. {missing[0]!r}); cache the same preprocessed folder.")  # fmt: skip
    order = np.asarray([position[n] for n in names])
    out = {}
    for key, modality in (("ct_embeds", "ct"), ("text_embeds", "report")):
        values = np.asarray(table.with_format("numpy", columns=[key])[key], dtype=np.float32)[order]
        if values.shape[1] != dim:
            raise ValueError(f"{cache}: {key} have width {values.shape[1]}, the model's projection {dim}.")
        out[modality] = F.normalize(torch.from_numpy(values), dim=-1)
    return out


def evaluate_retrieval(
    model_dir: str | os.PathLike,
    cases: Cases,
    out_dir: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    recall_at: Sequence[int] = DEFAULT_RECALL_AT,
    map_at: Sequence[int] = DEFAULT_MAP_AT,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool | None = None,
    loaded: LoadedModel | None = None,
    cxr_embeds: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Recall@K and label-overlap MAP@K between CXR, report and CT latents (``x2ctclip evaluate retrieval``).

    CXR latents come from the model. CT and report latents come from the embedding ``cache`` of the same split
    (matched by volume name), else from the model's own CT / report towers when it has them (reports tokenised with
    the folder's tokenizer, CTs read from the preprocessed ``ct`` column). Directions: CXR->report, report->CXR,
    CXR->CT, CT->CXR, CT->report, report->CT, and the same-modality CT->CT and CXR->CXR (each query's own item left
    out, so no Recall@K there). MAP@K needs every label annotated (external collections with missing labels report
    Recall@K only).
    """
    model_dir = Path(model_dir)
    loaded = loaded or load_model(model_dir, device)
    latents: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    if cxr_embeds is None:
        cxr_embeds = encode_images_ranked(loaded, cases.images, batch_size, progress)
    latents["cxr"] = cxr_embeds
    dim = latents["cxr"].shape[1]
    if cache is not None:
        if cases.preprocessed is None:
            raise ValueError("an embedding cache pairs with preprocessed data (--data), not with an external collection.")
        latents.update(cache_latents(Path(cache), cases.source["split"], cases.names, dim))
        origin = f"embedding cache {Path(cache).resolve()}"
    else:
        origin = "the model's towers"
        if cases.reports is not None and loaded.has_tower("text") and loaded.tokenizer is not None:
            latents["report"] = tower_latents(loaded, cases, "report", batch_size, progress)
        else:
            notes.append("no report latents (no cache, and no report text / text tower / tokenizer)")
        if cases.preprocessed is not None and loaded.has_tower("ct") and "ct" in cases.preprocessed.column_names:
            latents["ct"] = tower_latents(loaded, cases, "ct", batch_size, progress)
        else:
            notes.append("no CT latents (no cache, and no CT volumes / CT tower)")
    out = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    # The forward passes above used every rank; the metrics and the files are rank 0's, sent to the others.
    return distributed.on_main_then_broadcast(lambda: _retrieval_record(
        model_dir, loaded, cases, latents, out, origin=origin, notes=notes, recall_at=recall_at, map_at=map_at))


def _retrieval_record(model_dir: Path, loaded: LoadedModel, cases: Cases, latents: dict[str, torch.Tensor], out: Path,
                      *, origin: str, notes: list[str], recall_at, map_at) -> dict[str, Any]:  # fmt: skip
    """The metrics of :func:`evaluate_retrieval` on the gathered latents; writes its files."""
    labels = cases.labels
    labelled = not np.isnan(labels).any()
    if not labelled:
        notes.append("labels are not all annotated: MAP@K is not computed")
    query_labels = labels.astype(np.int64) if labelled else None
    directions = [("cxr", "report"), ("report", "cxr"), ("cxr", "ct"), ("ct", "cxr"), ("ct", "report"),
                  ("report", "ct"), ("ct", "ct"), ("cxr", "cxr")]  # fmt: skip
    names = {"cxr": "CXR", "report": "report", "ct": "CT"}
    results: dict[str, Any] = {}
    # Computed by the package's `retrieval` evaluate module (evaluate.load on its path), as a reader would.
    metric = load_metric("retrieval", **({"config_name": "with_labels"} if labelled else {}))
    for query, gallery in directions:
        if query not in latents or gallery not in latents:
            continue
        same = query == gallery
        if same and not labelled:
            continue  # own item left out and no labels: neither Recall@K nor MAP@K is defined
        inputs = {"labels": query_labels.tolist()} if labelled else {}
        results[f"{names[query]}->{names[gallery]}"] = metric.compute(
            predictions=latents[query].float().cpu().tolist(), references=latents[gallery].float().cpu().tolist(),
            recall_at=list(recall_at), map_at=list(map_at) if labelled else [], exclude_self=same, normalize=False,
            **inputs,
        )
    if not results:
        raise ValueError(f"{model_dir}: no retrieval direction can be computed ({'; '.join(notes)}); pass --cache.")
    metrics = []
    for direction, values in results.items():
        for key, value in values.items():
            if key.startswith(("recall@", "map@")) and value is not None:
                kind, k = key.split("@")
                metrics.append({"type": f"{kind}_at_{k}", "name": f"{direction} {'Recall' if kind == 'recall' else 'MAP'}@{k}",
                                "value": value})  # fmt: skip
    entry = {
        "task": {"type": "feature-extraction", "name": "Cross-modal retrieval (CXR, report and CT latents)"},
        "dataset": cases.dataset,
        "metrics": metrics,
        "n_cases": len(cases),
        "directions": results,
        "source": SOURCE,
    }
    record = {
        **provenance_record("evaluate retrieval"),
        "model": loaded.describe(),
        "data": cases.source,
        "latents": {"cxr": "the model", "ct": origin if "ct" in latents else None,
                    "report": origin if "report" in latents else None},  # fmt: skip
        "recall_at": list(recall_at),
        "map_at": list(map_at) if labelled else [],
        "notes": notes,
        "results": [entry],
    }
    stem = f"retrieval_{cases.tag}"
    return write_report(out, stem, record, retrieval_markdown)


def retrieval_markdown(record: dict[str, Any]) -> str:
    record = jsonable(record)
    entry = record["results"][0]
    recall_at, map_at = record["recall_at"], record["map_at"]
    header = [f"R@{k}" for k in recall_at] + [f"MAP@{k}" for k in map_at] + ["median rank", "queries"]
    lines = [
        "# Retrieval",
        "",
        f"- model: `{record['model']['path']}`",
        f"- data: `{record['data']['path']}` ({entry['dataset']['name']}), {entry['n_cases']} cases",
        f"- CT latents: {record['latents']['ct'] or 'none'}; report latents: {record['latents']['report'] or 'none'}",
        "- same-modality directions leave each query's own item out (no Recall@K)",
        "",
        "| direction | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
    ]
    for direction, values in entry["directions"].items():
        cells = [fmt_number(values.get(f"recall@{k}")) for k in recall_at] + [fmt_number(values.get(f"map@{k}")) for k in map_at]
        cells += [fmt_number(values.get("median_rank"), 1), str(values["n_queries"])]
        lines.append(f"| {direction} | " + " | ".join(cells) + " |")
    if record["notes"]:
        lines += ["", "Notes: " + "; ".join(record["notes"]) + "."]
    return "\n".join(lines) + "\n"
