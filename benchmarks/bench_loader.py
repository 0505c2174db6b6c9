"""Loader throughput: preprocessed Arrow shards (``x2ctclip preprocess``) against the original per-item pattern.

The original pattern (CT-CLIP's and X2CT-CLIP's training loaders) decodes one ``.nii.gz`` per ``__getitem__`` as
float64 with nibabel and resamples it to the model grid (``ctclip_reference_preprocess`` of
``bench_volume_processor.py``, a faithful re-implementation). The preprocessed pattern reads one int16 row of a
memory-mapped shard (:func:`x2ctclip.train.data.folders.load_preprocessed`) and turns it into ``ct_values`` float32
(:func:`x2ctclip.train.data.folders.preprocessed_collator`). Both feed the same ``torch.utils.data.DataLoader`` (batch 1,
0 and 2 worker processes), in this process, over the same synthetic CT-RATE set (``x2ctclip make-synthetic``).

Printed:

1. volumes/s with 0 and 2 workers (best of ``--repeats`` full passes; worker start-up included) of three loaders,
   each consumer summing every voxel: A the original pattern, B ``load_preprocessed`` rows through
   ``preprocessed_collator`` (ct_values float32 made in the loader), C :func:`x2ctclip.train.data.folders.read_ct` int16
   rows (the float32 conversion left to the consumer, which on a GPU costs about a millisecond), and the ratios;
2. per-volume cost of *reading* a CT: decoding a ``.nii.gz`` (nibabel float64, and this project's igzip reader)
   against reading one preprocessed row, on the synthetic volumes and on one CT-RATE-sized 512 x 512 x 300 phantom
   (``make_phantom`` of ``bench_volume_processor.py``) whose preprocessed row has CT-CLIP's 240 x 480 x 480 grid.

The synthetic volumes (default 96 x 128 x 128 voxels) are smaller than CT-RATE's (about 512 x 512 x 300), so their
decode is cheaper than a real one; the model grid (default CT-CLIP's 240 x 480 x 480) is the real one.

Usage: ``python benchmarks/bench_loader.py [--scans 4] [--source-shape 96 128 128] [--shape 240 480 480]
[--repeats 2] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_volume_processor import ctclip_reference_preprocess, make_phantom  # noqa: E402

from x2ctclip.train.data.folders import ct_values_from_ct, load_preprocessed, preprocessed_collator, read_ct  # noqa: E402
from x2ctclip.train.data.tables import ct_rate_table, read_ct_rate_volume  # noqa: E402
from x2ctclip.train.data.preprocess import preprocess_ct_rate  # noqa: E402
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate  # noqa: E402


class NiftiPerItemDataset(torch.utils.data.Dataset):
    """The original pattern: one float64 ``.nii.gz`` decode and resample per item."""

    def __init__(self, root: Path, table, target_spacing, target_shape):
        self.root, self.target_spacing, self.target_shape = root, tuple(target_spacing), tuple(target_shape)
        self.rows = table[["path", "xy_spacing", "z_spacing"]].to_dict(orient="records")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        # The synthetic files carry scl_slope/scl_inter, which get_fdata applies: slope 1, intercept 0 here.
        return ctclip_reference_preprocess(self.root / row["path"], 1.0, 0.0, row["xy_spacing"], row["z_spacing"],
                                           target_spacing=self.target_spacing, target_shape=self.target_shape)


class ZeroCopyCT(torch.utils.data.Dataset):
    """Preprocessed rows through :func:`x2ctclip.train.data.folders.read_ct`: int16 views of the memory map (the float32
    conversion is left to the consumer, e.g. on the GPU)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return self.dataset.num_rows

    def __getitem__(self, index):
        import warnings

        with warnings.catch_warnings():  # a read-only view of the file: only read
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(read_ct(self.dataset, index))[None]


def _first(batch):
    return batch[0]


def _pass(dataset, workers: int, collate) -> tuple[float, int]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate)
    start = time.perf_counter()
    n = 0
    for batch in loader:
        values = batch["ct_values"] if isinstance(batch, dict) else batch
        n += values.shape[0]
        float(values.sum(dtype=torch.float32))  # every pipeline's consumer reads every voxel
    return time.perf_counter() - start, n


def _best(fn, repeats: int):
    return min(fn() for _ in range(repeats))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=4, help="synthetic scans (2 reconstructions each)")
    parser.add_argument("--source-shape", type=int, nargs=3, default=[96, 128, 128], help="synthetic volume size")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 480, 480], help="model grid (D H W)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.75, 0.75], help="model grid spacing, mm")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temporary folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        root, out = workdir / "ct_rate", workdir / "preprocessed"
        t = time.perf_counter()
        generate_synthetic_ct_rate(root, n_train=args.scans, n_valid=0, shape=tuple(args.source_shape), seed=0,
                                   recons=2, progress=False)
        print(f"synthetic set: {2 * args.scans} volumes of {tuple(args.source_shape)} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        preprocess_ct_rate(root, out, splits=("train",), shape=args.shape, spacing=args.spacing, progress=False)
        print(f"preprocess once: {time.perf_counter() - t:.1f} s")
        table = ct_rate_table(root, "train")
        baseline = NiftiPerItemDataset(root, table, args.spacing, args.shape)
        shards = load_preprocessed(out, "train", columns=["ct"])
        collate = preprocessed_collator(keep=())

        print(f"\n1. DataLoader throughput, batch 1, {len(baseline)} volumes -> {tuple(args.shape)} float32, "
              f"torch threads {torch.get_num_threads()}, best of {args.repeats}")
        print("   A: .nii.gz decoded (float64) and resampled per item -> ct_values float32 (the original pattern)")
        print("   B: load_preprocessed rows + preprocessed_collator -> ct_values float32")
        print("   C: read_ct (zero-copy int16 rows), float32 conversion left to the consumer (GPU)")
        print(f"{'workers':>8} {'A vol/s':>9} {'B vol/s':>9} {'C vol/s':>9} {'B / A':>7} {'C / A':>7}")
        zero_copy = ZeroCopyCT(shards)
        for workers in (0, 2):
            slow, n = _best(lambda: _pass(baseline, workers, _first), args.repeats)
            fast, m = _best(lambda: _pass(shards, workers, collate), args.repeats)
            raw, k = _best(lambda: _pass(zero_copy, workers, _first), args.repeats)
            assert n == m == k == len(baseline)
            print(f"{workers:>8} {n / slow:>9.2f} {m / fast:>9.2f} {k / raw:>9.2f} {slow / fast:>6.1f}x {slow / raw:>6.1f}x")

        print("\n2. Reading one CT (no resampling): decode .nii.gz vs read one preprocessed row, ms per volume")
        import nibabel as nib

        first = table.iloc[0]
        nii = root / first["path"]
        rows = load_preprocessed(out, "train", columns=["ct"])

        def timed(fn, repeats=3):
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            return best * 1e3

        nib_ms = timed(lambda: nib.load(str(nii)).get_fdata())
        own_ms = timed(lambda: read_ct_rate_volume(str(nii)).array.sum())
        row_ms = timed(lambda: read_ct(rows, 0).sum())
        print(f"   synthetic {tuple(args.source_shape)}: nibabel float64 {nib_ms:.1f} ms, igzip reader {own_ms:.1f} ms; "
              f"its preprocessed row {tuple(args.shape)} with read_ct {row_ms:.1f} ms (a larger grid than the source)")

        phantom_root = workdir / "phantom"
        name = "train_1_a_1"
        folder = phantom_root / "train" / "train_1" / "train_1_a"
        folder.mkdir(parents=True, exist_ok=True)
        make_phantom(folder / f"{name}.nii.gz")  # 512 x 512 x 300 int16, blank header, stored = HU + 1024
        _write_tables(phantom_root, name)
        phantom_out = workdir / "phantom_preprocessed"
        preprocess_ct_rate(phantom_root, phantom_out, splits=("train",), shape=args.shape, spacing=args.spacing,
                           progress=False)
        path = folder / f"{name}.nii.gz"
        phantom_rows = load_preprocessed(phantom_out, "train", columns=["ct"])
        nib_ms = timed(lambda: nib.load(str(path)).get_fdata())
        own_ms = timed(lambda: read_ct_rate_volume(str(path), slope=1.0, intercept=-1024.0, xy_spacing=0.7,
                                                     z_spacing=1.0).array.sum())
        full_ms = timed(lambda: ctclip_reference_preprocess(path, 1.0, -1024.0, 0.7, 1.0, target_spacing=tuple(args.spacing),
                                                            target_shape=tuple(args.shape)), repeats=1)
        row_ms = timed(lambda: phantom_rows[0]["ct"].sum())
        view_ms = timed(lambda: read_ct(phantom_rows, 0).sum())
        values_ms = timed(lambda: ct_values_from_ct(read_ct(phantom_rows, 0)))
        print(f"   CT-RATE-sized phantom 512 x 512 x 300 ({path.stat().st_size / 2**20:.0f} MB .nii.gz): "
              f"nibabel float64 decode {nib_ms:.0f} ms, igzip reader {own_ms:.0f} ms, original decode + resample "
              f"{full_ms:.0f} ms;")
        print(f"   its preprocessed row {tuple(args.shape)} int16: {row_ms:.0f} ms through the datasets formatter, "
              f"{view_ms:.0f} ms with read_ct (each incl. a sum over the voxels) = {view_ms / nib_ms:.3f} of the nibabel "
              f"decode, {view_ms / own_ms:.3f} of the igzip decode;")
        print(f"   read_ct + ct_values float32 on the CPU {values_ms:.0f} ms = {values_ms / full_ms:.4f} of the original "
              "decode + resample")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _write_tables(root: Path, name: str) -> None:
    import pandas as pd

    from x2ctclip import CT_RATE_FINDINGS

    for folder, file, row in (
        ("radiology_text_reports", "reports", {"VolumeName": f"{name}.nii.gz", "Findings_EN": "Phantom.", "Impressions_EN": ""}),
        ("multi_abnormality_labels", "predicted_labels", {"VolumeName": f"{name}.nii.gz", **{f: 0 for f in CT_RATE_FINDINGS}}),
        ("metadata", "metadata", {"VolumeName": f"{name}.nii.gz", "RescaleSlope": 1.0, "RescaleIntercept": -1024.0,
                                  "XYSpacing": "[0.7, 0.7]", "ZSpacing": 1.0}),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        pd.DataFrame([row]).to_csv(root / folder / f"train_{file}.csv", index=False)


if __name__ == "__main__":
    sys.exit(main())
