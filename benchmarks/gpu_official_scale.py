"""The official-size costs on a GPU, in one command: CT tower throughput, embedding-cache throughput, stage-2 steps.

Run on a CUDA machine (nothing is downloaded; towers have random weights, data is synthetic):

    python benchmarks/gpu_official_scale.py --out gpu_official_scale.json

Measured, all under ``torch.autocast("cuda", torch.bfloat16)`` (``--dtype fp32`` for full precision):

1. **FLOPs** (``torch.utils.flop_counter`` on the meta device, no compute): the official CT tower's forward on one
   240 x 480 x 480 volume, the report tower's forward on 512 tokens, and the CXR tower's forward + backward at
   224 x 224. These are what docs/data_pipeline.md projects GPU rows from.
2. **CT tower throughput**: the official CT-CLIP encoder (``X2CTCLIPCTConfig()``, vector quantiser on), eval mode,
   ``inference_mode``, volumes/s at each of ``--batch-sizes`` (a batch that does not fit is recorded as ``"oom"``),
   with the peak GPU memory (``torch.cuda.max_memory_allocated``).
3. **Cache throughput**: ``x2ctclip preprocess`` (:func:`~x2ctclip.train.data.preprocess.preprocess_ct_rate`, on
   ``--volumes`` synthetic volumes at ``--workers`` processes, output grid 240 x 480 x 480) then the real
   ``x2ctclip cache-embeddings`` code path (:func:`~x2ctclip.train.data.embedding_cache.cache_embeddings`: Arrow read,
   int16 -> float, CT tower and report tower, normalised latents written to shards), volumes/s of both.
4. **Stage-2 step time**: one AdamW step of the CXR tower (Swin-Tiny) against cached latents at ``--step-batch``
   rows (the paper's 32 by default) and the same step running the frozen CT and report towers under ``no_grad``
   (what caching avoids), with their ratio.

``--dry-run`` runs every part with tiny towers and volumes on CPU (no autocast) so that a test keeps the script
working without a GPU; its numbers mean nothing and the JSON says ``"dry_run": true``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the shared official-size config and step of the CPU benchmark
    sys.path.insert(0, str(HERE))

from bench_official_scale import OFFICIAL_VOLUME, SMOKE_VOLUME, official_config, stage2_step, step_inputs  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _timed(fn, device, iters: int) -> float:
    """Seconds per call of ``fn`` (one warm-up call, then ``iters`` timed calls)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


# ----------------------------------------------------------------------------------------------------- 1. FLOPs
def flop_counts(config) -> dict[str, float]:
    """FLOPs (multiply-add = 2) per row of each tower at the sizes of ``config``, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from x2ctclip import X2CTCLIPModel

    with torch.device("meta"):
        model = X2CTCLIPModel(config).train()
        inputs = step_inputs_meta(config)
        counts = {}
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                model.get_ct_features(inputs["ct_values"])
        counts["ct_forward"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                # No mask: building one reads its values, which meta tensors have not (all ones costs the same).
                model.get_text_features(inputs["input_ids"])
        counts["text_forward"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.get_cxr_features(inputs["pixel_values"]).pooler_output.sum().backward()
        counts["cxr_forward_backward"] = counter.get_total_flops()
    return {k: float(v) for k, v in counts.items()}


def step_inputs_meta(config) -> dict:
    ct, cxr = config.ct_config, config.cxr_config.image_size
    length = min(512, config.text_config.max_position_embeddings)
    return dict(
        pixel_values=torch.empty(1, 3, cxr, cxr), ct_values=torch.empty(1, 1, ct.num_frames, ct.image_size, ct.image_size),
        input_ids=torch.zeros(1, length, dtype=torch.long), attention_mask=torch.ones(1, length, dtype=torch.long),
    )


# ----------------------------------------------------------------------------------------------------- 2. CT tower
def ct_throughput(config, device, batch_sizes, dtype: str, iters: int) -> list[dict]:
    from x2ctclip.modeling_ct import X2CTCLIPCTModel

    torch.manual_seed(0)
    model = X2CTCLIPCTModel(config.ct_config).to(device).eval()
    ct = config.ct_config
    rows = []
    for batch in batch_sizes:
        _reset_peak(device)
        try:
            volume = torch.rand(batch, 1, ct.num_frames, ct.image_size, ct.image_size, device=device) * 2 - 1

            def forward():
                with torch.inference_mode(), _autocast(device, dtype):
                    model(volume)

            seconds = _timed(forward, device, iters)
            rows.append({"batch": batch, "volumes_per_s": batch / seconds, "peak_gb": _peak_gb(device)})
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "volumes_per_s": "oom"})
        print(f"  CT tower, batch {batch}: {rows[-1]}", flush=True)
        volume = None
    return rows


# ----------------------------------------------------------------------------------------------------- 3. cache
def cache_throughput(config, device, workdir: Path, volumes: int, workers: int, batch: int, dtype: str,
                     dry_run: bool) -> dict:
    """Preprocess ``volumes`` synthetic volumes, then cache their latents through ``cache_embeddings``."""
    from x2ctclip import X2CTCLIPModel
    from x2ctclip.processors import build_wordpiece_tokenizer
    from x2ctclip.train.data import preprocess as P
    from x2ctclip.train.data.embedding_cache import cache_embeddings
    from x2ctclip.train.data.folders import load_preprocessed
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    root, data, cache = workdir / "ct_rate", workdir / "preprocessed", workdir / "cache"
    source = (16, 32, 32) if dry_run else (120, 256, 256)
    shape = SMOKE_VOLUME if dry_run else OFFICIAL_VOLUME
    # The whole synthetic chest (~330 x 380 x 380 mm) in the grid when the tiny grid is used.
    spacing = (40.0, 24.0, 24.0) if dry_run else P.DEFAULT_SPACING
    generate_synthetic_ct_rate(root, n_train=(volumes + 1) // 2, n_valid=0, shape=source, seed=0, recons=2,
                               workers=max(1, workers), progress=False)
    start = time.perf_counter()
    P.preprocess_ct_rate(root, data, splits=("train",), shape=shape, spacing=spacing, workers=workers,
                         progress=False)
    preprocess_s = time.perf_counter() - start
    reports = [str(r) for r in load_preprocessed(data, "train", columns=["report"])["report"]]
    n = len(reports)
    tokenizer = build_wordpiece_tokenizer(reports, vocab_size=2000, alphabet=None,
                                          model_max_length=min(512, config.text_config.max_position_embeddings))
    config.text_config.vocab_size = max(config.text_config.vocab_size, len(tokenizer))
    model_dir = workdir / "model"
    torch.manual_seed(0)
    X2CTCLIPModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    _reset_peak(device)
    with _autocast(device, dtype):
        start = time.perf_counter()
        cache_embeddings(model_dir, data, cache, splits=["train"], batch_size=batch, device=str(device), progress=False)
        _sync(device)
        cache_s = time.perf_counter() - start
    return {"volumes": n, "workers": workers, "batch": batch, "preprocess_volumes_per_s": n / preprocess_s,
            "cache_volumes_per_s": n / cache_s, "cache_peak_gb": _peak_gb(device),
            "note": "cache time includes loading the model folder and writing the shards"}


# ----------------------------------------------------------------------------------------------------- 4. stage 2
def stage2_times(config, device, batch: int, dtype: str, iters: int) -> dict:
    from x2ctclip import X2CTCLIPModel

    torch.manual_seed(0)
    model = X2CTCLIPModel(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    out = {"batch": batch}
    for mode in ("cached", "uncached"):
        _reset_peak(device)
        try:
            inputs = {k: v.to(device) for k, v in step_inputs(config, batch).items()}
            cached = {k: F.normalize(torch.randn(batch, config.projection_dim, device=device), dim=-1)
                      for k in ("ct_embeds", "text_embeds")}

            def step():
                with _autocast(device, dtype):
                    stage2_step(model, optimizer, inputs, cached if mode == "cached" else None)

            out[f"{mode}_s_per_step"] = _timed(step, device, iters)
            out[f"{mode}_peak_gb"] = _peak_gb(device)
        except torch.OutOfMemoryError:
            out[f"{mode}_s_per_step"] = "oom"
        inputs = None
        print(f"  stage-2 step {mode}, batch {batch}: {out.get(f'{mode}_s_per_step')}", flush=True)
    if all(isinstance(out.get(f"{m}_s_per_step"), float) for m in ("cached", "uncached")):
        out["ratio_uncached_over_cached"] = out["uncached_s_per_step"] / out["cached_s_per_step"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_official_scale.json"), help="JSON results")
    parser.add_argument("--dry-run", action="store_true", help="tiny towers and volumes on CPU (tests)")
    parser.add_argument("--device", default=None, help="torch device (default cuda; cpu with --dry-run)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="autocast precision on CUDA")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8], help="CT tower batches")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per measurement")
    parser.add_argument("--volumes", type=int, default=32, help="synthetic volumes for the cache part")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="preprocess processes")
    parser.add_argument("--cache-batch", type=int, default=8, help="volumes per cache-embeddings forward")
    parser.add_argument("--step-batch", type=int, default=32, help="rows of the stage-2 step")
    parser.add_argument("--skip", nargs="*", default=[], choices=("flops", "ct", "cache", "stage2"))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or use --dry-run on CPU")
    if args.dry_run:
        args.batch_sizes, args.iters, args.volumes = args.batch_sizes[:2], 1, min(args.volumes, 4)
        args.workers, args.cache_batch, args.step_batch = min(args.workers, 2), 2, min(args.step_batch, 2)
    config = official_config(smoke=args.dry_run)
    results = {"dry_run": args.dry_run, "device": str(device), "dtype": args.dtype if device.type == "cuda" else "fp32",
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    if "flops" not in args.skip:
        results["flops_per_row"] = flop_counts(official_config(smoke=args.dry_run))
        print(f"FLOPs per row: {results['flops_per_row']}", flush=True)
    if "ct" not in args.skip:
        results["ct_tower"] = ct_throughput(config, device, args.batch_sizes, args.dtype, args.iters)
    if "stage2" not in args.skip:
        results["stage2"] = stage2_times(config, device, args.step_batch, args.dtype, args.iters)
    if "cache" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="gpu_official_") as tmp:
            results["cache"] = cache_throughput(official_config(smoke=args.dry_run), device, Path(tmp), args.volumes,
                                                args.workers, args.cache_batch, args.dtype, args.dry_run)
        print(f"  cache: {results['cache']}", flush=True)
    from x2ctclip.fileio import write_json_atomic

    write_json_atomic(args.out, results)
    print(json.dumps(results, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
