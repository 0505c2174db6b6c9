"""Speed and peak memory of ``X2CTCLIPVolumeProcessor`` against CT-CLIP's original preprocessing.

The original procedure (``ctclip_reference_preprocess`` below, written from CT-CLIP's public loaders) reads the
NIfTI with nibabel as float64, applies slope/intercept, transposes to (z, x, y), resamples trilinearly in float64,
clips, divides by 1000 and crops/pads. Both run on the same generated 512 x 512 x 300 int16 ``.nii.gz`` chest
phantom (0.7 x 0.7 mm in-plane, 1 mm slices, CT-RATE's orientation and blank-header convention: stored values,
slope/intercept passed separately as from CT-RATE's metadata CSV).

Printed: wall and CPU time of both in this process (alternating, best and median of ``--repeats``; the machine's
load average is printed because other processes inflate wall times), their outputs' largest difference,
peak RSS of each in a fresh subprocess (Linux ``VmHWM``, so imports are included; the RSS before the run is
printed too), the ratio, a per-step breakdown of both (gzip decode, float conversion, resampling, ...), and
the MONAI transforms that could do the processor's steps (``Spacing``, ``ScaleIntensityRange``,
``CenterSpatialCrop``/``SpatialPad``, and the import of ``monai.transforms``), measured for the choice the
processor's docstring explains.

Usage: ``python benchmarks/bench_volume_processor.py [--repeats 3] [--slices 300] [--no-monai]``
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F


SLOPE, INTERCEPT = 1.0, -1024.0  # as CT-RATE's metadata CSV gives them for most scans


# --------------------------------------------------------------------------------------- the original procedure
def ctclip_reference_preprocess(
    path: str | os.PathLike,
    slope: float,
    intercept: float,
    xy_spacing: float,
    z_spacing: float,
    clip_first: bool = False,
    target_spacing: tuple[float, float, float] = (1.5, 0.75, 0.75),
    target_shape: tuple[int, int, int] = (240, 480, 480),
    timings: dict | None = None,
) -> torch.Tensor:
    """CT-CLIP's preprocessing as its loaders do it; returns ``(1, D, H, W)`` float32 (CT-CLIP's layout).

    ``clip_first=False`` is the training loader (resample, then clip), ``True`` the inference loader.
    """
    t = time.perf_counter()

    def lap(name):
        nonlocal t
        if timings is not None:
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - t
            t = now

    img_data = nib.load(str(path)).get_fdata()  # float64, nibabel (i, j, k)
    lap("nibabel load + gzip (zlib) + float64 get_fdata")
    img_data = slope * img_data + intercept
    if clip_first:
        img_data = np.clip(img_data, -1000, 1000)
    lap("slope/intercept (float64)")
    img_data = img_data.transpose(2, 0, 1)  # (z, x, y)
    tensor = torch.tensor(img_data).unsqueeze(0).unsqueeze(0)
    lap("transpose + torch.tensor copy (float64)")
    current = (z_spacing, xy_spacing, xy_spacing)
    new_shape = [int(n * (c / tt)) for n, c, tt in zip(tensor.shape[2:], current, target_spacing)]
    img = F.interpolate(tensor, size=new_shape, mode="trilinear", align_corners=False).cpu().numpy()[0][0]
    del tensor
    lap("trilinear resampling (float64)")
    img = np.transpose(img, (1, 2, 0))  # (x, y, z)
    if not clip_first:
        img = np.clip(img, -1000, 1000)
    img = (img / 1000).astype(np.float32)
    tensor = torch.tensor(img)
    dh, dw, dd = target_shape[1], target_shape[2], target_shape[0]
    h, w, d = tensor.shape
    hs, ws, ds = max((h - dh) // 2, 0), max((w - dw) // 2, 0), max((d - dd) // 2, 0)
    tensor = tensor[hs : min(hs + dh, h), ws : min(ws + dw, w), ds : min(ds + dd, d)]
    ph = (dh - tensor.size(0)) // 2
    pw = (dw - tensor.size(1)) // 2
    pd = (dd - tensor.size(2)) // 2
    tensor = F.pad(
        tensor,
        (pd, dd - tensor.size(2) - pd, pw, dw - tensor.size(1) - pw, ph, dh - tensor.size(0) - ph),
        value=-1,
    )
    out = tensor.permute(2, 0, 1).unsqueeze(0)
    lap("clip, /1000, crop/pad")
    return out


# ----------------------------------------------------------------------------------------------------- phantom
def make_phantom(path: Path, shape_xyz=(512, 512, 300), spacing=(0.7, 0.7, 1.0), seed: int = 0) -> None:
    """A chest-like int16 phantom in CT-RATE's file layout (x, y, z), stored values = HU + 1024, blank header."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_xyz
    x = (np.arange(nx) - nx / 2)[:, None] * spacing[0]
    y = (np.arange(ny) - ny / 2)[None, :] * spacing[1]
    hu = np.full((nx, ny), -1000.0, dtype=np.float32)
    hu[(x / 170) ** 2 + (y / 120) ** 2 < 1] = -90  # fat
    hu[(x / 160) ** 2 + (y / 110) ** 2 < 1] = 40  # soft tissue
    for cx in (-80, 80):
        hu[((x - cx) / 60) ** 2 + ((y + 10) / 80) ** 2 < 1] = -850  # lungs
    hu[((x - 20) / 50) ** 2 + ((y + 30) / 45) ** 2 < 1] = 45  # heart
    hu[(x / 18) ** 2 + ((y - 80) / 18) ** 2 < 1] = 700  # vertebra
    volume = np.empty(shape_xyz, dtype=np.int16)
    for k in range(nz):
        scale = 0.85 + 0.15 * np.sin(np.pi * k / nz)  # the chest widens towards the middle
        sl = hu if k % 20 else np.where(hu > -950, hu + 300, hu)  # ribs every 2 cm
        noise = rng.normal(0, 15, size=(nx, ny)).astype(np.float32)
        xi = np.clip(((np.arange(nx) - nx / 2) / scale + nx / 2).astype(int), 0, nx - 1)
        volume[:, :, k] = np.round(sl[xi] + noise + 1024).astype(np.int16)
    img = nib.Nifti1Image(volume, None)  # no affine: qform_code = sform_code = 0, like CT-RATE's first release
    img.header.set_zooms(spacing)
    nib.save(img, str(path))


# ------------------------------------------------------------------------------------------------------ workers
def _gzip_module():
    """The gzip decoder the NIfTI reader uses: python-isal's igzip when installed, else the standard library's."""
    try:
        from isal import igzip
    except ImportError:
        return gzip
    return igzip


def _processor_breakdown(path: Path, spacing_zyx, timings: dict) -> torch.Tensor:
    """The processor's chain step by step (same calls as ``process_volume``) to time each step."""
    from x2ctclip.processors import volume_io
    from x2ctclip.processors.image_processing_volume import X2CTCLIPVolumeProcessor

    proc = X2CTCLIPVolumeProcessor()
    t = time.perf_counter()
    raw = _gzip_module().decompress(Path(path).read_bytes())
    timings["gzip decode (isal igzip)"] = time.perf_counter() - t
    del raw
    t = time.perf_counter()
    volume = volume_io.load_ct(path, rescale=(SLOPE, INTERCEPT), affine=_lps_affine(spacing_zyx))
    timings["load_ct total (read + igzip + header + reorient + HU check)"] = time.perf_counter() - t
    from x2ctclip.processors.image_processing_volume import resample_trilinear, resample_trilinear_cpu

    spacing = (volume.spacing_mm[0], volume.spacing_mm[2], volume.spacing_mm[1])
    t = time.perf_counter()
    y = resample_trilinear_cpu(volume.array, spacing, proc.target_spacing)
    timings["trilinear resampling: z pass + F.interpolate bilinear (used)"] = time.perf_counter() - t
    del y
    t = time.perf_counter()
    x = torch.from_numpy(volume.array.astype(np.float32))
    y = resample_trilinear(x.transpose(1, 2), spacing, proc.target_spacing)
    timings["  alternative: float32 copy + F.interpolate trilinear"] = time.perf_counter() - t
    del x, y
    t = time.perf_counter()
    out = proc.process_volume(volume)
    timings["process_volume total (resample + crop/clip/scale/pad)"] = time.perf_counter() - t
    return out


def _lps_affine(spacing_zyx):
    return np.diag([-spacing_zyx[2], -spacing_zyx[1], spacing_zyx[0], 1.0])


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Linux ``VmHWM`` belongs to the process image, so a worker started by ``subprocess`` reports its own peak;
    ``getrusage``'s ``ru_maxrss`` is not reset by ``exec`` and would include the parent's peak (the fallback).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(method: str, path: Path, spacing_zyx) -> dict:
    """One method once, in this (fresh) process; returns wall time, peak RSS and RSS before the run."""
    from x2ctclip.processors.image_processing_volume import X2CTCLIPVolumeProcessor  # noqa: F401 (import cost)

    if method == "monai_spacing":
        from monai.transforms import Spacing

        from x2ctclip.processors import volume_io

        volume = volume_io.load_ct(path, rescale=(SLOPE, INTERCEPT), affine=_lps_affine(spacing_zyx))
        x = torch.from_numpy(volume.hu()).transpose(1, 2)[None]  # (1, z, x, y) float32 HU
        aff = torch.as_tensor(np.diag([volume.spacing_mm[0], volume.spacing_mm[2], volume.spacing_mm[1], 1.0]))
        from monai.data import MetaTensor

        x = MetaTensor(x, affine=aff)
        gc.collect()
        rss_before = peak_rss_mb()
        t = time.perf_counter()
        y = Spacing(pixdim=(1.5, 0.75, 0.75), mode="bilinear")(x)
        wall = time.perf_counter() - t
        return {"method": method, "wall_s": wall, "shape": list(y.shape), "rss_before_mb": rss_before,
                "peak_rss_mb": peak_rss_mb()}
    gc.collect()
    rss_before = peak_rss_mb()
    t = time.perf_counter()
    if method == "reference":
        out = ctclip_reference_preprocess(path, SLOPE, INTERCEPT, spacing_zyx[2], spacing_zyx[0])
    elif method == "processor":
        from x2ctclip.processors.image_processing_volume import X2CTCLIPVolumeProcessor

        out = X2CTCLIPVolumeProcessor()(path, rescale=(SLOPE, INTERCEPT), affine=_lps_affine(spacing_zyx))
        out = out["ct_values"]
    else:
        raise ValueError(f"unknown method {method}")
    wall = time.perf_counter() - t
    return {"method": method, "wall_s": wall, "shape": list(out.shape), "rss_before_mb": rss_before,
            "peak_rss_mb": peak_rss_mb()}


def in_subprocess(method: str, path: Path, spacing_zyx) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--path", str(path), "--spacing", *map(str, spacing_zyx)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--no-monai", action="store_true", help="skip the MONAI alternatives (Spacing is slow)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--spacing", type=float, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, Path(args.path), tuple(args.spacing))))
        return

    spacing_zyx = (1.0, 0.7, 0.7)
    from x2ctclip.processors import X2CTCLIPVolumeProcessor

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom_ct.nii.gz"
        t = time.perf_counter()
        make_phantom(path, shape_xyz=(512, 512, args.slices), spacing=(0.7, 0.7, 1.0))
        print(f"phantom: 512 x 512 x {args.slices} int16, 0.7 x 0.7 x 1.0 mm, {path.stat().st_size / 2**20:.1f} MiB "
              f".nii.gz (made in {time.perf_counter() - t:.1f} s); torch threads = {torch.get_num_threads()}; "
              f"isal igzip = {_gzip_module().__name__ != 'gzip'}")
        proc = X2CTCLIPVolumeProcessor()
        affine = _lps_affine(spacing_zyx)

        # same process, alternating; wall and CPU time (all threads): the CPU time is less sensitive to other load
        ref_times, new_times, ref_cpu, new_cpu = [], [], [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            ref = ctclip_reference_preprocess(path, SLOPE, INTERCEPT, spacing_zyx[2], spacing_zyx[0])
            ref_times.append(time.perf_counter() - t)
            ref_cpu.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            new = proc(path, rescale=(SLOPE, INTERCEPT), affine=affine)["ct_values"][0]
            new_times.append(time.perf_counter() - t)
            new_cpu.append(time.process_time() - c)
        diff = float((ref - new).abs().max())
        print(f"\noutputs: reference {tuple(ref.shape)}, processor {tuple(new.shape)}, max |difference| = {diff:.2e}")
        del ref, new
        gc.collect()
        for label, a, b in (("wall", ref_times, new_times), ("CPU", ref_cpu, new_cpu)):
            print(f"same-process {label} time, best / median of {args.repeats}: original {min(a):.2f} / "
                  f"{np.median(a):.2f} s, processor {min(b):.2f} / {np.median(b):.2f} s, speed-up "
                  f"x{min(a) / min(b):.1f} / x{np.median(a) / np.median(b):.1f}   (runs: original "
                  f"{[round(v, 2) for v in a]}, processor {[round(v, 2) for v in b]})")
        print(f"1-minute load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

        # peak RSS, one fresh subprocess per method
        print("\nfresh subprocess per run (peak RSS includes the Python, torch and transformers imports):")
        results = {}
        for method in ("reference", "processor"):
            r = in_subprocess(method, path, spacing_zyx)
            results[method] = r
            increase = r["peak_rss_mb"] - r["rss_before_mb"]
            print(f"  {method:10s} wall {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MiB "
                  f"(RSS before the run {r['rss_before_mb']:.0f} MiB, increase {increase:.0f} MiB)")
        ref_r, new_r = results["reference"], results["processor"]
        increase_ratio = (new_r["peak_rss_mb"] - new_r["rss_before_mb"]) / max(
            1.0, ref_r["peak_rss_mb"] - ref_r["rss_before_mb"]
        )
        print(f"  ratio: wall x{ref_r['wall_s'] / new_r['wall_s']:.1f} faster, peak RSS "
              f"{new_r['peak_rss_mb'] / ref_r['peak_rss_mb']:.2f} of the original "
              f"(increase over the pre-run RSS: {increase_ratio:.2f} of the original's)")

        # breakdowns
        print("\nbreakdown, original procedure:")
        timings: dict = {}
        t = time.perf_counter()
        raw = gzip.decompress(path.read_bytes())
        timings_gz = time.perf_counter() - t
        del raw
        ctclip_reference_preprocess(path, SLOPE, INTERCEPT, spacing_zyx[2], spacing_zyx[0], timings=timings)
        print(f"  {'(of which gzip decode with zlib alone)':62s} {timings_gz:6.2f} s")
        for k, v in timings.items():
            print(f"  {k:62s} {v:6.2f} s")
        print("breakdown, processor:")
        timings = {}
        _processor_breakdown(path, spacing_zyx, timings)
        for k, v in timings.items():
            print(f"  {k:62s} {v:6.2f} s")

        if not args.no_monai:
            monai_alternatives(path, spacing_zyx)


def monai_alternatives(path: Path, spacing_zyx) -> None:
    """The MONAI transforms that could replace steps of the chain, measured on the same volume."""
    print("\nMONAI alternatives (measured, not used by the processor):")
    code = "import time; t = time.perf_counter(); import monai.transforms; print(time.perf_counter() - t)"
    base = "import x2ctclip.processors"  # torch, transformers, nibabel already loaded, as in a real session
    res = subprocess.run([sys.executable, "-c", f"{base}; {code}"], capture_output=True, text=True, check=True)
    print(f"  import monai.transforms (after x2ctclip.processors)            {float(res.stdout.split()[-1]):6.2f} s")
    r = in_subprocess("monai_spacing", path, spacing_zyx)
    print(f"  Spacing((1.5, 0.75, 0.75), bilinear) on the float32 HU volume  {r['wall_s']:6.2f} s, peak RSS "
          f"{r['peak_rss_mb']:.0f} MiB (before {r['rss_before_mb']:.0f} MiB)")
    from monai.transforms import CenterSpatialCrop, ScaleIntensityRange, SpatialPad

    grid = torch.randn(1, 200, 477, 477) * 800  # the resampled grid of this phantom
    for name, fn in (
        ("ScaleIntensityRange(-1000, 1000 -> -1, 1, clip)",
         lambda g: ScaleIntensityRange(-1000, 1000, -1, 1, clip=True)(g)),
        ("in-place clamp_ + div_ (processor)", lambda g: g.clone().clamp_(-1000, 1000).div_(1000)),
        ("CenterSpatialCrop + SpatialPad(symmetric, -1)", lambda g: SpatialPad((240, 480, 480), value=-1)(
            CenterSpatialCrop((240, 480, 480))(g))),
        ("slicing + F.pad (processor)", lambda g: F.pad(g[:, :, :, :], (1, 2, 1, 2, 20, 20), value=-1)),
    ):
        fn(grid)  # warm-up
        t = time.perf_counter()
        fn(grid)
        print(f"  {name:62s} {time.perf_counter() - t:6.2f} s")
    line = torch.arange(10.0)[None, :, None, None]
    monai_start = int(CenterSpatialCrop((3, 1, 1))(line).as_tensor()[0, 0, 0, 0])
    print(f"  centre crop of 10 -> 3 voxels starts at index {monai_start} with MONAI, {(10 - 3) // 2} in CT-CLIP")

if __name__ == "__main__":
    main()
