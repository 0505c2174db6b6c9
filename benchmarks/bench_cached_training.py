"""Cost of one X2CT-CLIP training step with cached CT/report latents against running the frozen towers per batch.

X2CT-CLIP trains only the CXR tower; the CT and report towers are frozen, so their latents can be computed once
(``x2ctclip cache-embeddings``) instead of at every step. Both variants below run the same complete step in this
process, alternating, on the same synthetic set (``x2ctclip make-synthetic`` -> ``x2ctclip preprocess``):

- per batch (the uncached pattern): read ``cxr``, ``ct`` and ``report`` rows from the preprocessed shards, make
  ``pixel_values``, ``ct_values`` and token ids, ``model(pixel_values, ct_values, input_ids, attention_mask,
  return_loss=True)`` (the frozen towers run without gradients), backward, AdamW step;
- cached: read ``cxr`` rows and the ``ct_embeds`` / ``text_embeds`` rows of the cache, ``model(pixel_values,
  ct_embeds=..., text_embeds=..., return_loss=True)``, backward, AdamW step.

Printed per preset: milliseconds per step (median of ``--steps`` after ``--warmup`` steps), split into data
(reading + processors) and model (forward + backward + step), the ratio, and a check that both give the same loss
on the same batch (the cache holds exactly the frozen towers' latents). Presets are the trainer's
(:data:`x2ctclip.train.training.config.CT_PRESETS` etc.): ``tiny`` (CT 8 x 16 x 16, Swin 32 x 32, 1-layer BERT) by default,
``small`` (the quickstart's: CT 32 x 64 x 64, ResNet 64 x 64) with ``--preset small``.

Usage: ``python benchmarks/bench_cached_training.py [--preset tiny] [--batch-size 8] [--steps 20]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from x2ctclip import X2CTCLIPConfig, X2CTCLIPModel
from x2ctclip.processors import X2CTCLIPImageProcessor, build_wordpiece_tokenizer, tokenize_reports
from x2ctclip.train.data.folders import ct_values_from_ct, load_embedding_cache, load_preprocessed
from x2ctclip.train.training.config import CT_PRESETS, CXR_PRESETS, TEXT_PRESETS
from x2ctclip.train.data.embedding_cache import cache_embeddings
from x2ctclip.train.data.preprocess import preprocess_ct_rate
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

#: Synthetic chests of (D, H, W) voxels span roughly 330 x 380 x 380 mm; the grid spacing keeps them whole.
EXTENT_MM = (330.0, 380.0, 380.0)


def _setup(preset: str, workdir: Path, scans: int):
    ct, cxr, text = dict(CT_PRESETS[preset]), dict(CXR_PRESETS[preset]), dict(TEXT_PRESETS["tiny"])
    shape = (ct["num_frames"], ct["image_size"], ct["image_size"])
    cxr_size = int(cxr.get("image_size", 64))
    root, out, cache, model_dir = (workdir / n for n in ("ct_rate", "pre", "cache", "model"))
    generate_synthetic_ct_rate(root, n_train=scans, n_valid=0, shape=(2 * shape[0], 2 * shape[1], 2 * shape[2]),
                               seed=0, recons=2, progress=False)
    spacing = tuple(e / n for e, n in zip(EXTENT_MM, shape))
    preprocess_ct_rate(root, out, splits=("train",), shape=shape, spacing=spacing, cxr_size=cxr_size, progress=False)
    reports = [str(r) for r in load_preprocessed(out, "train", columns=["report"])["report"]]
    tokenizer = build_wordpiece_tokenizer(reports, vocab_size=text["vocab_size"], model_max_length=text["max_position_embeddings"])
    text["vocab_size"] = len(tokenizer)
    torch.manual_seed(0)
    model = X2CTCLIPModel(X2CTCLIPConfig(ct_config=ct, cxr_config=cxr, text_config=text, projection_dim=64))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    cache_embeddings(model_dir, out, cache, batch_size=8, device="cpu", progress=False)
    image_processor = X2CTCLIPImageProcessor(size=cxr_size, crop_size=cxr_size)
    return model, tokenizer, image_processor, out, cache


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scans", type=int, default=8, help="synthetic scans (2 reconstructions each)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_cached_"))
    try:
        t = time.perf_counter()
        model, tokenizer, image_processor, out, cache_dir = _setup(args.preset, workdir, args.scans)
        print(f"setup (synthetic set, preprocess, cache-embeddings): {time.perf_counter() - t:.1f} s")
        rows = load_preprocessed(out, "train", columns=["cxr", "ct", "report"])
        cxr_rows = load_preprocessed(out, "train", columns=["cxr"])
        cache = load_embedding_cache(cache_dir, "train")
        max_length = min(512, model.config.text_config.max_position_embeddings)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=1e-4)
        n = rows.num_rows
        rng = np.random.default_rng(0)

        def batch_indices():
            return sorted(rng.choice(n, size=min(args.batch_size, n), replace=False).tolist())

        def step_uncached(indices):
            t0 = time.perf_counter()
            batch = rows[indices]
            pixel_values = image_processor(list(batch["cxr"]), return_tensors="pt")["pixel_values"]
            ct_values = ct_values_from_ct(batch["ct"])
            tokens = tokenize_reports(tokenizer, [str(r) for r in batch["report"]], max_length=max_length)
            t1 = time.perf_counter()
            loss = model(pixel_values=pixel_values, ct_values=ct_values, input_ids=tokens["input_ids"],
                         attention_mask=tokens["attention_mask"], return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return t1 - t0, time.perf_counter() - t1, float(loss.detach())

        def step_cached(indices):
            t0 = time.perf_counter()
            batch, latents = cxr_rows[indices], cache[indices]
            pixel_values = image_processor(list(batch["cxr"]), return_tensors="pt")["pixel_values"]
            ct_embeds, text_embeds = torch.from_numpy(latents["ct_embeds"]), torch.from_numpy(latents["text_embeds"])
            t1 = time.perf_counter()
            loss = model(pixel_values=pixel_values, ct_embeds=ct_embeds, text_embeds=text_embeds, return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return t1 - t0, time.perf_counter() - t1, float(loss.detach())

        # Same batch, same weights: the losses agree (the cache holds the frozen towers' latents).
        state = {k: v.clone() for k, v in model.state_dict().items()}
        first = batch_indices()
        model.eval()
        loss_a = _loss_only(model, rows, first, image_processor, tokenizer, max_length)
        loss_b = _loss_only_cached(model, cxr_rows, cache, first, image_processor)
        print(f"loss on one batch: per batch {loss_a:.6f}, cached {loss_b:.6f} (|diff| {abs(loss_a - loss_b):.1e})")
        model.load_state_dict(state)
        model.train()

        timings = {"per batch": [], "cached": []}
        for i in range(args.warmup + args.steps):
            indices = batch_indices()
            for name, fn in (("per batch", step_uncached), ("cached", step_cached)):
                data_s, model_s, _ = fn(indices)
                if i >= args.warmup:
                    timings[name].append((data_s, model_s))
        print(f"\npreset {args.preset!r}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
              f"median of {args.steps} steps after {args.warmup} warm-up steps (ms per step)")
        print(f"{'':>10} {'data':>8} {'model':>8} {'total':>8}")
        medians = {}
        for name, values in timings.items():
            data_ms = statistics.median(v[0] for v in values) * 1e3
            model_ms = statistics.median(v[1] for v in values) * 1e3
            total_ms = statistics.median(v[0] + v[1] for v in values) * 1e3
            medians[name] = total_ms
            print(f"{name:>10} {data_ms:>8.1f} {model_ms:>8.1f} {total_ms:>8.1f}")
        print(f"cached step is {medians['per batch'] / medians['cached']:.2f}x faster than running the frozen towers per batch")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _loss_only(model, rows, indices, image_processor, tokenizer, max_length) -> float:
    batch = rows[indices]
    with torch.no_grad():
        return float(model(
            pixel_values=image_processor(list(batch["cxr"]), return_tensors="pt")["pixel_values"],
            ct_values=ct_values_from_ct(batch["ct"]),
            **{k: v for k, v in tokenize_reports(tokenizer, [str(r) for r in batch["report"]], max_length=max_length).items()},
            return_loss=True,
        ).loss)


def _loss_only_cached(model, cxr_rows, cache, indices, image_processor) -> float:
    batch, latents = cxr_rows[indices], cache[indices]
    with torch.no_grad():
        return float(model(
            pixel_values=image_processor(list(batch["cxr"]), return_tensors="pt")["pixel_values"],
            ct_embeds=torch.from_numpy(latents["ct_embeds"]), text_embeds=torch.from_numpy(latents["text_embeds"]),
            return_loss=True,
        ).loss)


if __name__ == "__main__":
    sys.exit(main())
