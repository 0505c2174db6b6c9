"""Peak memory of passes over the whole synthetic set stays flat when the set grows 4x.

Each pass runs in a fresh Python process over a synthetic CT-RATE set (``x2ctclip make-synthetic``) of N volumes
and of 4 N volumes (the N set is the first quarter of the 4 N set, so every volume has the same size), and reports:

- peak anonymous memory (``RssAnon`` of ``/proc/self/status``, sampled every 2 ms by a thread): the heap, i.e. what a
  pass really holds; the ratio 4 N / N of its increase over the process's memory after imports is the figure of merit,
  and the peak in each quarter of the 4 N pass shows whether it levels off or keeps rising;
- ``ru_maxrss`` (peak resident set): it also counts pages of the memory-mapped Arrow files that a pass has touched,
  which the kernel drops under pressure (they are page cache, not held memory), so it grows with the data read.

Passes: ``preprocess`` (:func:`x2ctclip.train.data.preprocess.preprocess_ct_rate`, shards flushed every few rows),
``read`` (every row of the preprocessed split through a DataLoader into ``ct_values``), ``stream``
(:func:`x2ctclip.train.data.streaming.stream_ct_rate` with the volume processor and CXR simulation), ``cache``
(:func:`x2ctclip.train.data.embedding_cache.cache_embeddings` with a small model), and the baseline ``naive``: the same
conversion written the obvious way (process every volume into a list, ``Dataset.from_dict``, ``save_to_disk``),
which holds the whole split in memory.

With ``--malloc-mmap-threshold 1048576`` glibc returns freed buffers of 1 MB or more to the kernel at once, which
removes most of the allocator's retention (noise of tens of MB between runs) from the measurement.

Usage: ``python benchmarks/bench_memory_flat.py [--scans 16] [--source-shape 64 96 96] [--shape 64 128 128]
[--malloc-mmap-threshold BYTES]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EXTENT_MM = (330.0, 380.0, 380.0)  # a synthetic chest, (z, y, x) mm: the grid spacing keeps it whole


def _anon_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler(threading.Thread):
    """Samples RssAnon every 2 ms; ``quarters()`` gives the peak in each quarter of the pass's duration."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.running = [(time.perf_counter(), _anon_mb())], True

    def run(self):
        while self.running:
            self.samples.append((time.perf_counter(), _anon_mb()))
            time.sleep(0.002)

    def stop(self) -> float:
        self.running = False
        self.join()
        self.samples.append((time.perf_counter(), _anon_mb()))
        return max(m for _, m in self.samples)

    def quarters(self) -> list[float]:
        start, end = self.samples[0][0], self.samples[-1][0]
        span = max(end - start, 1e-9)
        peaks = [0.0] * 4
        for t, m in self.samples:
            q = min(int(4 * (t - start) / span), 3)
            peaks[q] = max(peaks[q], m)
        return peaks


# ------------------------------------------------------------------------------------------------------ children
def _child(args) -> None:
    import numpy as np
    import torch

    from x2ctclip.processors import X2CTCLIPVolumeProcessor
    from x2ctclip.train.data.tables import ct_rate_table
    from x2ctclip.train.data.folders import load_preprocessed, preprocessed_collator
    from x2ctclip.train.data.streaming import stream_ct_rate
    from x2ctclip.train.data import preprocess as P
    from x2ctclip.train.data.embedding_cache import cache_embeddings

    torch.set_num_threads(1)
    shape = tuple(args.shape)
    spacing = tuple(e / n for e, n in zip(EXTENT_MM, shape))
    import datasets  # noqa: F401  (imports done before the baseline reading)
    import gc

    gc.collect()
    base = _anon_mb()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    n = 0
    if args.child == "preprocess":
        n = P.preprocess_ct_rate(args.root, args.out, splits=("train",), shape=shape, spacing=spacing, cxr_size=128,
                                 shard_size=4, progress=False)["train"].num_rows
    elif args.child == "read":
        rows = load_preprocessed(args.out, "train")
        loader = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=preprocessed_collator())
        for batch in loader:
            n += batch["ct_values"].shape[0]
            float(batch["ct_values"].mean())
    elif args.child == "stream":
        processor = X2CTCLIPVolumeProcessor(target_shape=shape, target_spacing=spacing)
        for example in stream_ct_rate(args.root, "train", volume_processor=processor, cxr_mode="mean", cxr_size=128):
            n += 1
            float(np.mean(example["ct_values"]))
    elif args.child == "cache":
        n = cache_embeddings(args.model, args.out, args.cache, batch_size=4, device="cpu", progress=False)["train"].num_rows
    elif args.child == "naive":
        from datasets import Dataset

        worker = P._VolumeWorker(args.root, None, X2CTCLIPVolumeProcessor(target_shape=shape, target_spacing=spacing).to_dict(),
                                 "mean", 128)
        worker.processor_kwargs.pop("image_processor_type", None)
        rows = [worker(r) for r in ct_rate_table(args.root, "train").to_dict(orient="records")]
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        Dataset.from_dict(columns, features=P.preprocessed_features(shape, 128)).save_to_disk(str(args.naive_out))
        n = len(rows)
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    print(json.dumps({"rows": n, "base_mb": base, "peak_mb": peak, "quarters_mb": sampler.quarters(),
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}))


def _run_child(kind: str, root: Path, out: Path, extra: list[str], shape, mmap_threshold: int | None) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--root", str(root), "--out", str(out),
               "--shape", *map(str, shape), *extra]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    if mmap_threshold is not None:
        # A fixed glibc mmap threshold: freed large buffers go back to the kernel at once instead of staying in the
        # heap (glibc's dynamic threshold keeps them), so RssAnon shows what the pass holds rather than what malloc
        # retains.
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _subset(root: Path, dest: Path, scans: int) -> None:
    """A CT-RATE layout holding the first ``scans`` training scans of ``root`` (volume files linked, not copied)."""
    import pandas as pd

    from x2ctclip.train.data.release import parse_volume_name, volume_stem

    for folder, file in (("radiology_text_reports", "reports"), ("multi_abnormality_labels", "predicted_labels"),
                         ("metadata", "metadata")):
        table = pd.read_csv(root / folder / f"train_{file}.csv")
        keep = sorted({parse_volume_name(n).scan_id for n in table["VolumeName"]},
                      key=lambda s: int(s.split("_")[1]))[:scans]
        table = table[table["VolumeName"].map(lambda n: parse_volume_name(n).scan_id in keep)]
        (dest / folder).mkdir(parents=True, exist_ok=True)
        table.to_csv(dest / folder / f"train_{file}.csv", index=False)
        if folder == "metadata":
            for name in table["VolumeName"]:
                rel = parse_volume_name(volume_stem(name)).relpath
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(root / rel, dest / rel)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=4, help="N / 2: scans of the small set (2 reconstructions each)")
    parser.add_argument("--source-shape", type=int, nargs=3, default=[64, 96, 96])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], help="preprocessed grid (D H W)")
    parser.add_argument("--passes", nargs="+", default=["preprocess", "read", "stream", "cache", "naive"])
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="run the passes with glibc's MALLOC_MMAP_THRESHOLD_ fixed (e.g. 1048576)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--naive-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    workdir = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    try:
        big = workdir / "big"
        t = time.perf_counter()
        generate_synthetic_ct_rate(big, n_train=4 * args.scans, n_valid=0, shape=tuple(args.source_shape), seed=0,
                                   recons=2, progress=False)
        small = workdir / "small"
        _subset(big, small, args.scans)
        model = _tiny_model(workdir / "model", big, args.shape)
        print(f"synthetic sets: {2 * args.scans} and {8 * args.scans} volumes of {tuple(args.source_shape)} voxels, "
              f"preprocessed grid {tuple(args.shape)} ({time.perf_counter() - t:.0f} s to make)")
        results = {}
        for label, root in (("N", small), ("4N", big)):
            out = workdir / f"pre_{label}"
            for kind in args.passes:
                extra = ["--model", str(model), "--cache", str(workdir / f"cache_{label}"),
                         "--naive-out", str(workdir / f"naive_{label}")]
                results[(kind, label)] = _run_child(kind, root, out, extra, args.shape, args.malloc_mmap_threshold)
        print(f"\n{'pass':>10} {'rows N/4N':>10} {'held MB N':>10} {'held MB 4N':>11} {'ratio':>6} "
              f"{'maxrss MB N':>12} {'maxrss MB 4N':>13} {'s N':>6} {'s 4N':>6}")
        for kind in args.passes:
            a, b = results[(kind, "N")], results[(kind, "4N")]
            held_a, held_b = a["peak_mb"] - a["base_mb"], b["peak_mb"] - b["base_mb"]
            print(f"{kind:>10} {a['rows']:>4}/{b['rows']:<5} {held_a:>10.0f} {held_b:>11.0f} {held_b / max(held_a, 1):>6.2f} "
                  f"{a['maxrss_mb']:>12.0f} {b['maxrss_mb']:>13.0f} {a['seconds']:>6.1f} {b['seconds']:>6.1f}")
        print("held MB = peak RssAnon during the pass minus RssAnon after the imports; ratio = 4N / N.")
        print("\nheld MB in each quarter of the 4N pass (level after warm-up = flat; rising = grows with the data):")
        for kind in args.passes:
            b = results[(kind, "4N")]
            print(f"{kind:>10} " + " ".join(f"{q - b['base_mb']:>7.0f}" for q in b["quarters_mb"]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _tiny_model(folder: Path, root: Path, shape) -> Path:
    """A small X2CT-CLIP model whose CT tower takes the preprocessed grid, with a tokenizer, for the cache pass."""
    import pandas as pd
    import torch

    from x2ctclip import X2CTCLIPConfig, X2CTCLIPModel
    from x2ctclip.processors import build_wordpiece_tokenizer
    from x2ctclip.train.training.config import CXR_PRESETS, TEXT_PRESETS

    reports = pd.read_csv(root / "radiology_text_reports" / "train_reports.csv")["Findings_EN"].astype(str).tolist()
    tokenizer = build_wordpiece_tokenizer(reports, vocab_size=1000, model_max_length=128)
    depth, size = int(shape[0]), int(shape[1])
    ct = dict(dim=32, codebook_size=8, image_size=size, patch_size=16, temporal_patch_size=8, num_frames=depth,
              spatial_depth=1, temporal_depth=1, heads=2, dim_head=16, use_vq=False)
    text = dict(TEXT_PRESETS["tiny"], vocab_size=len(tokenizer))
    torch.manual_seed(0)
    X2CTCLIPModel(X2CTCLIPConfig(ct_config=ct, cxr_config=dict(CXR_PRESETS["tiny"]), text_config=text,
                                 projection_dim=32)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
