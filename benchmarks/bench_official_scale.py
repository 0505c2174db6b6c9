"""Costs of the method at the official sizes, on CPU: preprocessing, the CT tower, and the stage-2 step with and
without the latent cache; peak memory of ``x2ctclip preprocess`` as its split grows.

Every measurement runs in a fresh child process, so that its peak resident memory (Linux ``VmHWM``) is its own;
``base`` is the child's resident memory just before the measured work (imports, model, inputs), ``peak`` its high-water
mark, ``peak - base`` what the work itself added.

1. **Preprocessing**, s/volume: one CT-RATE-sized 512 x 512 x 300 int16 ``.nii.gz`` chest phantom (0.7 x 0.7 x 1 mm,
   CT-RATE's blank-header layout, written by ``bench_volume_processor.make_phantom``) through the row worker that
   ``x2ctclip preprocess`` runs (:class:`x2ctclip.train.data.preprocess._VolumeWorker`: gzip decode, chest check,
   the volume processor to 240 x 480 x 480 at 1.5 x 0.75 x 0.75 mm, int16 rounding, the simulated 256 x 256 CXR).
2. **CT tower forward**, s/volume and peak memory: the official CT-CLIP encoder (``X2CTCLIPCTConfig()``: 24 x 24 x 24
   tokens of width 512, 4 + 4 layers, vector quantiser on) with random weights, one 1 x 1 x 240 x 480 x 480 volume,
   eval mode, ``inference_mode``.
3. **Stage-2 step**: the composite model at the official sizes (Swin-Tiny CXR tower at 224 x 224, the CT tower, a
   BERT-base report tower at 512 tokens, projections to 512), one optimiser step of AdamW on the CXR tower. *Cached*:
   CXR forward + backward + loss against cached CT / report latents (what ``x2ctclip train x2ct`` does). *Uncached*:
   the same step, also running the frozen CT and report towers under ``no_grad`` to make those latents (what the paper
   avoids by caching). The printed ratio is uncached / cached step time.
4. **Preprocess memory vs split size**: ``x2ctclip preprocess`` (the command, in a subprocess) on synthetic splits of
   2 and 6 volumes at 1 and 2 workers. The source volumes are smaller than CT-RATE's (``--source-shape``, default
   100 x 160 x 160, to keep the run short) but the output grid is the official 240 x 480 x 480 (221 MB a volume as
   float32), so every volume in flight costs what it costs at the official size. Reported: the peak of the summed RSS
   of the command's process tree (sampled every 20 ms with psutil) and ``ru_maxrss`` of the largest process of the
   tree (``os.wait4``). It must not grow with the split: the ratio 6 / 2 volumes is printed.

``--quick`` keeps the official sizes but takes one repeat and skips the 6-volume splits; ``--smoke`` uses tiny towers
and volumes so that a test can run the whole script in seconds (its numbers mean nothing and the JSON says so).

Usage: ``python benchmarks/bench_official_scale.py [--quick | --smoke] [--out results.json] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling benchmarks' phantom writer and synthetic-subset helper
    sys.path.insert(0, str(HERE))

OFFICIAL_VOLUME = (240, 480, 480)  # preprocessed grid (D, H, W) at 1.5 x 0.75 x 0.75 mm
SMOKE_VOLUME = (8, 16, 16)
# The phantom's (x, y, z) voxels and spacing in mm: CT-RATE's typical scan, or a coarse one that still holds the chest.
PHANTOM = {False: ((512, 512, 300), (0.7, 0.7, 1.0)), True: ((48, 48, 24), (9.0, 9.0, 15.0))}


# ----------------------------------------------------------------------------------------------------- models
def official_config(smoke: bool = False):
    """The composite X2CT-CLIP config at the official sizes (``smoke``: the tiny presets)."""
    from x2ctclip import X2CTCLIPConfig, X2CTCLIPCTConfig
    from x2ctclip.train.training.config import CT_PRESETS, CXR_PRESETS, TEXT_PRESETS

    if smoke:
        ct = dict(CT_PRESETS["tiny"], use_vq=True)
        return X2CTCLIPConfig(ct_config=ct, cxr_config=dict(CXR_PRESETS["tiny"]), text_config=dict(TEXT_PRESETS["tiny"]),
                              projection_dim=16)
    cxr = dict(CXR_PRESETS["swin-tiny"], drop_path_rate=0.1)
    return X2CTCLIPConfig(ct_config=X2CTCLIPCTConfig().to_dict(), cxr_config=cxr,
                          text_config=dict(TEXT_PRESETS["cxr-bert"]), projection_dim=512)


def step_inputs(config, batch: int, seed: int = 0) -> dict:
    """Random inputs of one stage-2 batch at the sizes of ``config``: CXRs, CT volumes in [-1, 1], report tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ct = config.ct_config
    text_len = min(512, config.text_config.max_position_embeddings)
    cxr = config.cxr_config.image_size
    return dict(
        pixel_values=torch.randn(batch, 3, cxr, cxr, generator=g),
        ct_values=torch.rand(batch, 1, ct.num_frames, ct.image_size, ct.image_size, generator=g) * 2 - 1,
        input_ids=torch.randint(2, config.text_config.vocab_size, (batch, text_len), generator=g),
        attention_mask=torch.ones(batch, text_len, dtype=torch.long),
    )


def stage2_step(model, optimizer, inputs: dict, cached: dict | None):
    """One stage-2 optimiser step; ``cached``: the CT / report latents, else the frozen towers make them here."""
    import torch
    import torch.nn.functional as F

    if cached is None:
        with torch.no_grad():
            ct_embeds = F.normalize(model.get_ct_features(inputs["ct_values"]).pooler_output, dim=-1)
            text_embeds = F.normalize(
                model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output, dim=-1
            )
    else:
        ct_embeds, text_embeds = cached["ct_embeds"], cached["text_embeds"]
    loss = model(pixel_values=inputs["pixel_values"], ct_embeds=ct_embeds, text_embeds=text_embeds,
                 return_loss=True).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ----------------------------------------------------------------------------------------------------- children
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def child_preprocess(args) -> dict:
    from x2ctclip.processors.image_processing_volume import X2CTCLIPVolumeProcessor
    from x2ctclip.train.data.preprocess import _VolumeWorker

    shape = SMOKE_VOLUME if args.smoke else OFFICIAL_VOLUME
    processor = X2CTCLIPVolumeProcessor(target_shape=shape)
    worker = _VolumeWorker(Path(args.path).parent, None, processor.to_dict(), "mean", 64 if args.smoke else 256)
    _, (xy, _, z) = PHANTOM[args.smoke]
    record = dict(path=Path(args.path).name, slope=1.0, intercept=-1024.0, xy_spacing=xy, z_spacing=z,
                  VolumeName="train_1_a_1.nii.gz", scan_id="train_1_a", labels=[0] * 18, report="")
    base = _status_mb("VmRSS")
    times = _timed(lambda: worker(record), args.repeats)
    row = worker(record)
    if "ct" not in row:
        raise RuntimeError(f"the phantom was skipped by the chest check: {row}")
    return {"seconds": times, "base_mb": base, "peak_mb": _status_mb("VmHWM"), "ct_shape": list(row["ct"].shape)}


def child_ct_forward(args) -> dict:
    import torch

    from x2ctclip.modeling_ct import X2CTCLIPCTModel

    config = official_config(args.smoke).ct_config
    torch.manual_seed(0)
    model = X2CTCLIPCTModel(config).eval()
    volume = torch.rand(1, 1, config.num_frames, config.image_size, config.image_size) * 2 - 1
    base = _status_mb("VmRSS")

    def forward():
        with torch.inference_mode():
            model(volume)

    times = _timed(forward, args.repeats)
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": times, "base_mb": base, "peak_mb": _status_mb("VmHWM"), "parameters": params,
            "input_mb": volume.numel() * 4 / 2**20}


def child_stage2(args) -> dict:
    import torch
    import torch.nn.functional as F

    from x2ctclip import X2CTCLIPModel

    config = official_config(args.smoke)
    torch.manual_seed(0)
    model = X2CTCLIPModel(config).train()  # frozen towers stay in eval mode (config.freeze_*)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    inputs = step_inputs(config, args.batch)
    g = torch.Generator().manual_seed(1)
    cached = {k: F.normalize(torch.randn(args.batch, config.projection_dim, generator=g), dim=-1)
              for k in ("ct_embeds", "text_embeds")}
    stage2_step(model, optimizer, inputs, cached)  # warm-up: AdamW allocates its moments
    base = _status_mb("VmRSS")
    mode = args.child.removeprefix("stage2_")
    times = _timed(lambda: stage2_step(model, optimizer, inputs, cached if mode == "cached" else None), args.repeats)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds": times, "base_mb": base, "peak_mb": _status_mb("VmHWM"), "trainable_parameters": trainable,
            "batch": args.batch}


CHILDREN = {"preprocess": child_preprocess, "ct_forward": child_ct_forward, "stage2_cached": child_stage2,
            "stage2_uncached": child_stage2}


def run_child(name: str, args, **extra) -> dict:
    command = [sys.executable, __file__, "--child", name, "--repeats", str(args.repeats), "--batch", str(args.batch),
               "--threads", str(args.threads)]
    command += ["--smoke"] if args.smoke else []
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"child {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- preprocess RSS
def _tree_rss_mb(proc) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:  # a worker that exited between listing and reading
            pass
    return total / 2**20


def preprocess_peak(root: Path, out: Path, workers: int, shape, threads: int) -> dict:
    """Run ``x2ctclip preprocess`` on ``root``; peak summed RSS of its process tree and ru_maxrss of its largest
    process (MB), wall seconds."""
    import psutil

    command = [sys.executable, "-m", "x2ctclip.train.cli", "preprocess", str(root), str(out), "--split", "train",
               "--workers", str(workers), "--shape", *map(str, shape), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    popen = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc, peak, stop = psutil.Process(popen.pid), [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(proc))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(popen.pid, 0)
    stop.set()
    sampler.join()
    stderr = popen.stderr.read()
    popen.returncode = os.waitstatus_to_exitcode(status)
    if popen.returncode != 0:
        raise RuntimeError(f"x2ctclip preprocess failed:\n{stderr[-3000:]}")
    return {"tree_peak_mb": peak[0], "largest_process_maxrss_mb": usage.ru_maxrss / 1024,
            "seconds": time.perf_counter() - start}


def preprocess_memory(workdir: Path, args) -> dict:
    from bench_memory_flat import _subset

    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    big, small = workdir / "six", workdir / "two"
    source = tuple(args.source_shape) if not args.smoke else (16, 24, 24)
    shape = OFFICIAL_VOLUME if not args.smoke else SMOKE_VOLUME
    generate_synthetic_ct_rate(big, n_train=3, n_valid=0, shape=source, seed=0, recons=2, progress=False,
                               release="original")  # the layout bench_memory_flat._subset links
    _subset(big, small, 1)  # the first scan's 2 reconstructions, files linked
    results = {"source_shape": list(source), "output_shape": list(shape), "runs": []}
    sets = [(small, 2)] if args.quick else [(small, 2), (big, 6)]
    for workers in (1, 2):
        for root, volumes in sets:
            run = preprocess_peak(root, workdir / f"out_{volumes}_{workers}", workers, shape, args.threads)
            results["runs"].append({"volumes": volumes, "workers": workers, **run})
            print(f"  preprocess {volumes} volumes, {workers} worker(s): tree peak {run['tree_peak_mb']:.0f} MB, "
                  f"largest process {run['largest_process_maxrss_mb']:.0f} MB, {run['seconds']:.1f} s", flush=True)
    return results


# ----------------------------------------------------------------------------------------------------- main
def _best(r: dict) -> float:
    return min(r["seconds"])


def print_table(res: dict) -> None:
    pre, ct, cached, uncached = res["preprocess"], res["ct_forward"], res["stage2_cached"], res["stage2_uncached"]
    rows = [
        ("preprocess (512x512x300 .nii.gz -> 240x480x480 + CXR)", f"{_best(pre):.2f} s/volume",
         f"peak {pre['peak_mb']:.0f} MB (+{pre['peak_mb'] - pre['base_mb']:.0f})"),
        ("CT tower forward, official size, fp32", f"{_best(ct):.2f} s/volume",
         f"peak {ct['peak_mb']:.0f} MB (+{ct['peak_mb'] - ct['base_mb']:.0f})"),
        (f"stage-2 step, cached latents (batch {cached['batch']})", f"{_best(cached):.3f} s/step",
         f"peak {cached['peak_mb']:.0f} MB"),
        (f"stage-2 step, frozen towers run (batch {uncached['batch']})", f"{_best(uncached):.3f} s/step",
         f"peak {uncached['peak_mb']:.0f} MB"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, memory in rows:
        print(f"{name:<{width}}  {value:>14}  {memory}")
    print(f"ratio uncached / cached stage-2 step: {res['stage2_ratio']:.1f}x")
    for run in res.get("preprocess_memory", {}).get("runs", []):
        print(f"x2ctclip preprocess, {run['volumes']} volumes, {run['workers']} worker(s): tree peak "
              f"{run['tree_peak_mb']:.0f} MB")
    for workers, ratio in res.get("preprocess_memory", {}).get("ratio_6_over_2", {}).items():
        print(f"peak RSS 6 / 2 volumes at {workers} worker(s): {ratio:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="official sizes, 1 repeat, no 6-volume splits")
    parser.add_argument("--smoke", action="store_true", help="tiny towers and volumes (tests only; numbers meaningless)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))), help="torch threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 2, quick 1)")
    parser.add_argument("--batch", type=int, default=1, help="rows of the stage-2 step")
    parser.add_argument("--source-shape", type=int, nargs=3, default=[100, 160, 160],
                        help="synthetic source volumes of the preprocess-memory part (D H W)")
    parser.add_argument("--no-preprocess-memory", action="store_true", help="skip part 4")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick or args.smoke else 2)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    from bench_volume_processor import make_phantom
    from tqdm.auto import tqdm

    results: dict = {"smoke": args.smoke, "quick": args.quick, "threads": args.threads, "repeats": args.repeats,
                     "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_official_") as tmp:
        workdir = Path(tmp)
        phantom = workdir / "phantom.nii.gz"
        shape_xyz, spacing = PHANTOM[args.smoke]
        make_phantom(phantom, shape_xyz=shape_xyz, spacing=spacing)
        steps = [("preprocess", {"path": phantom}), ("ct_forward", {}), ("stage2_cached", {}), ("stage2_uncached", {})]
        for name, extra in tqdm(steps, desc="official-scale costs"):
            results[name] = run_child(name, args, **extra)
        results["stage2_ratio"] = _best(results["stage2_uncached"]) / _best(results["stage2_cached"])
        if not args.no_preprocess_memory:
            memory = preprocess_memory(workdir, args)
            peaks = {(r["volumes"], r["workers"]): r["tree_peak_mb"] for r in memory["runs"]}
            memory["ratio_6_over_2"] = {w: peaks[(6, w)] / peaks[(2, w)] for w in (1, 2) if (6, w) in peaks}
            results["preprocess_memory"] = memory
    print_table(results)
    if args.out is not None:
        from x2ctclip.fileio import write_json_atomic

        write_json_atomic(args.out, results)
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
