"""Which synthetic findings a frontal radiograph can show, and which only the CT can: the premise of X2CT-CLIP.

Generates ``--n`` synthetic studies at a small shape, simulates the frontal CXR of each (X2CT-CLIP's mean
projection, :func:`x2ctclip.processors.simulate_cxr`), and for every finding cross-validates the same simple
classifier on both inputs:

* features (one recipe for both, in 2-D or 3-D): the image downsampled by block mean and by block maximum (CXR
  32 x 32 pixels; CT 16 x 24 x 24 voxels of HU clipped to [-1000, 1000], 16 x 16 x 16 from the quickstart's
  32 x 64 x 64 grid) reduced by PCA to 40 components; a 48-bin intensity histogram; and
  location-free statistics over the dark (lung-like), middle and bright parts of the image: intensity percentiles
  and strongest values, patchiness of the smoothed intensity, fine-texture energy and classic Hessian shape detectors at two scales
  (bright blobs, bright plates/lines, dark blobs; see ``_describe``);
* standardisation + L2 logistic regression (balanced classes), 5-fold cross-validated AUROC.

``--grid native`` (default) measures on the generated volume itself (``--shape``; 80 x 128 x 128 is about 2.8 mm
voxels) and the CXR simulated from it at its own size. ``--grid quickstart`` measures what the default quickstart's
towers actually see: studies generated at the preset's ``synthetic_shape``, written as the release's NIfTI, read
back and preprocessed exactly as step 2 does (:class:`X2CTCLIPVolumeProcessor` to ``ct_shape`` at ``ct_spacing``,
HU / 1000 clipped to [-1, 1]; the CXR by :func:`simulate_cxr_uint8` at ``cxr_size``, divided by 255).

By default labels are drawn independently with probability 0.3 each (``--prior independent``), so each finding's
visibility is measured without riding on correlated findings; ``--prior ct-rate`` uses the CT-RATE label model.

Usage::

    python benchmarks/bench_synthetic_visibility.py [--n 300] [--shape 80 128 128] [--workers 2]
    python benchmarks/bench_synthetic_visibility.py --grid quickstart [--preset default] [--n 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

PLAIN = ("Cardiomegaly", "Pleural effusion", "Consolidation", "Medical material")
SUBTLE = ("Lung nodule", "Interlobular septal thickening", "Mosaic attenuation pattern",
          "Coronary artery wall calcification")


def _quickstart_inputs(study, preset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ct, cxr, hu)`` as the quickstart's step 2 makes them: the study written as a corrected-release NIfTI,
    read back, resampled to the preset's CT grid (values HU / 1000 in [-1, 1], ``ct_shape``) and its CXR simulated
    at ``cxr_size`` (uint8 / 255); ``hu`` is the CT grid in HU, for the histogram."""
    import torch

    from x2ctclip.processors import load_ct
    from x2ctclip.processors.image_processing_volume import X2CTCLIPVolumeProcessor
    from x2ctclip.train.data.preprocess import simulate_cxr_uint8
    from x2ctclip.train.quickstart import PRESETS
    from x2ctclip.train.synthetic.writer import write_volume

    p = PRESETS[preset]
    with tempfile.TemporaryDirectory(prefix="x2ctclip_vis_") as tmp:
        path = Path(tmp) / "study.nii.gz"
        write_volume(path, study.volumes[0], study.spacings[0], study.origin_lps, 0.0)
        volume = load_ct(os.fspath(path))
    processor = X2CTCLIPVolumeProcessor(target_shape=p.ct_shape, target_spacing=p.ct_spacing)
    with torch.inference_mode():
        values = processor.process_volume(volume)
    # Stored as int16 HU by step 2 (round(values * 1000)): the same rounding here.
    hu = torch.round(values * processor.hu_scale).numpy().astype(np.float32)
    cxr = simulate_cxr_uint8(volume, size=p.cxr_size).astype(np.float32) / 255.0
    return hu / 1000.0, cxr, hu


def _features(args):
    seed, shape, prior, grid = args
    from x2ctclip import CT_RATE_FINDINGS
    from x2ctclip.processors import simulate_cxr
    from x2ctclip.train.synthetic.study import make_study

    labels = None
    if prior == "independent":
        labels = (np.random.default_rng([seed, 77]).random(len(CT_RATE_FINDINGS)) < 0.3).astype(np.int8)
    study = make_study(seed, shape, labels=labels, split="train", patient=1)
    vol = study.volumes[0]
    if grid == "native":
        cxr = simulate_cxr(vol, spacing=study.spacings[0], pixel_spacing_mm=None)  # [0, 1], (D, W)
        ct = np.clip(vol.astype(np.float32), -1000, 1000) / 1000.0
    else:
        ct, cxr, vol = _quickstart_inputs(study, grid.split(":", 1)[1])
    # Mean- and max-pooled thumbnails: the max keeps small dense things (calcium, nodules) that a mean washes out.
    cxr_small = np.concatenate([_block_resize(cxr, (32, 32)).ravel(), _max_pool(cxr, (32, 32)).ravel()])
    # 16 x 24 x 24 thumbnails (16 x 16 x 16 from the quickstart's 32 x 64 x 64 grid: whole blocks for the max).
    thumb = (16, 24, 24) if grid == "native" else tuple(max(1, n // 2) if n <= 32 else n // 4 for n in ct.shape)
    ct_small = np.concatenate([_block_resize(ct, thumb).ravel(), _max_pool(ct, thumb).ravel()])
    return study.labels, cxr_small, _describe(cxr), ct_small, _describe(ct, full_range=vol)


def _max_pool(a: np.ndarray, out_shape) -> np.ndarray:
    """Block maximum onto ``out_shape`` (blocks of equal integer size; the remainder is dropped)."""
    blocks = [max(1, s // o) for s, o in zip(a.shape, out_shape)]
    cut = a[tuple(slice(0, o * b) for o, b in zip(out_shape, blocks))]
    shape = [v for o, b in zip(out_shape, blocks) for v in (o, b)]
    return cut.reshape(shape).max(axis=tuple(range(1, 2 * len(out_shape), 2)))


def _describe(img: np.ndarray, full_range: np.ndarray | None = None) -> np.ndarray:
    """Location-free statistics of a 2-D or 3-D image (the same recipe for both).

    Intensity histogram; per region (dark = lung-like, bright = soft-tissue-like): intensity percentiles, the
    spread of the locally averaged intensity (patchiness), and Hessian shape responses at two scales - bright
    blobs (all curvatures negative: nodules, calcified spots), bright plates/lines (one strong negative curvature:
    septa, bands) and dark blobs (all curvatures positive: holes) - summarised by their 99th percentile and the
    mean of their 20 and 200 strongest voxels.
    """
    from scipy import ndimage as ndi

    img = img.astype(np.float32)
    hist_src = img if full_range is None else full_range
    lo_hi = (0.0, 1.0) if full_range is None else (-1024, 3072)
    feats = [np.histogram(hist_src, bins=48, range=lo_hi)[0] / hist_src.size]
    smooth = ndi.gaussian_filter(img, 2.0)
    fg = smooth > (smooth.min() + 0.02)  # drops the CT's air background (-1 after clipping)
    q35, q75 = np.percentile(smooth[fg], [35, 75])
    # Dark (lung-like), middle and bright (soft tissue, bone) bands of the smoothed image: the image's own
    # percentiles, so the same rule applies to a radiograph and to a CT.
    regions = (fg & (smooth <= q35), fg & (smooth > q35) & (smooth < q75), fg & (smooth >= q75))
    residual = np.abs(img - ndi.gaussian_filter(img, 3.0))
    for region in regions:
        feats.append(np.percentile(img[region], [5, 50, 95]))
        feats.append([region.mean(), smooth[region].std(), np.subtract(*np.percentile(smooth[region], [90, 10]))])
        feats.append(_top(residual[region]))
        feats.append(_top(img[region]))  # rare bright voxels: a nodule in the lung, calcium in soft tissue
    for scale in (0.8, 1.5):
        eig = _hessian_eigenvalues(img, scale)  # (..., ndim), ascending
        lo, hi = eig[..., 0], eig[..., -1]
        mid = np.abs(eig[..., 1:-1]).max(axis=-1) if eig.shape[-1] > 2 else np.zeros_like(lo)
        bright_blob = np.where(hi < 0, -hi, 0.0)
        bright_plate = np.clip(-lo - np.abs(hi) - mid, 0, None)
        dark_blob = np.where(lo > 0, lo, 0.0)
        for response in (bright_blob, bright_plate, dark_blob):
            for region in regions:
                feats.append(_top(response[region]))
    return np.concatenate([np.ravel(f) for f in feats]).astype(np.float64)


def _top(v: np.ndarray) -> list[float]:
    """99th percentile and the means of the 20 and 200 largest values (0 for an empty region)."""
    if v.size < 200:
        return [0.0, 0.0, 0.0]
    part = np.partition(v, v.size - 200)[-200:]
    return [float(np.percentile(v, 99)), float(np.sort(part)[-20:].mean()), float(part.mean())]


def _hessian_eigenvalues(img: np.ndarray, sigma: float) -> np.ndarray:
    """Scale-normalised Hessian eigenvalues (ascending) of a 2-D or 3-D image, shape ``img.shape + (ndim,)``,
    in closed form (much faster than a LAPACK call per voxel)."""
    from scipy import ndimage as ndi

    nd = img.ndim

    def d(i, j):
        order = [0] * nd
        order[i] += 1
        order[j] += 1
        return ndi.gaussian_filter(img, sigma, order=order) * sigma ** 2

    if nd == 2:
        a, b, c = d(0, 0), d(0, 1), d(1, 1)
        mean, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
        return np.stack([mean - root, mean + root], axis=-1)
    a, b, c = d(0, 0), d(1, 1), d(2, 2)
    e, f, g = d(0, 1), d(0, 2), d(1, 2)
    # Symmetric 3 x 3 eigenvalues by the trigonometric method (Smith 1961).
    q = (a + b + c) / 3
    p1 = e * e + f * f + g * g
    p2 = (a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2 * p1
    p = np.sqrt(p2 / 6) + 1e-12
    ba, bb, bc = (a - q) / p, (b - q) / p, (c - q) / p
    be, bf, bg = e / p, f / p, g / p
    det = ba * (bb * bc - bg * bg) - be * (be * bc - bg * bf) + bf * (be * bg - bb * bf)
    phi = np.arccos(np.clip(det / 2, -1, 1)) / 3
    l1 = q + 2 * p * np.cos(phi)
    l3 = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    l2 = 3 * q - l1 - l3
    return np.stack([l3, l2, l1], axis=-1)


def _block_resize(a: np.ndarray, out_shape) -> np.ndarray:
    """Area-average resize: a box blur of the reduction factor, then linear interpolation."""
    from scipy.ndimage import uniform_filter, zoom

    factors = [o / s for o, s in zip(out_shape, a.shape)]
    blurred = uniform_filter(a.astype(np.float32), size=[max(1, int(round(1 / f))) for f in factors])
    return zoom(blurred, factors, order=1)


def _cv_scores(x_img, x_stats, y_all, seed=0, C=0.3) -> np.ndarray:
    """5-fold cross-validated decision scores for every label column of ``y_all`` (same folds for all labels,
    so the PCA of each fold is fitted once)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    scores = np.full(y_all.shape, np.nan)
    for train, test in KFold(5, shuffle=True, random_state=seed).split(x_img):
        pca = PCA(n_components=min(40, len(train) - 1), random_state=seed).fit(x_img[train])
        f_train = np.hstack([pca.transform(x_img[train]), x_stats[train]])
        f_test = np.hstack([pca.transform(x_img[test]), x_stats[test]])
        scaler = StandardScaler().fit(f_train)
        f_train, f_test = scaler.transform(f_train), scaler.transform(f_test)
        for j in range(y_all.shape[1]):
            y = y_all[train, j]
            if 0 < y.sum() < len(y):
                clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced").fit(f_train, y)
                scores[test, j] = clf.decision_function(f_test)
    return scores


def _auroc(y, score) -> float:
    from sklearn.metrics import roc_auc_score

    ok = ~np.isnan(score)
    if y[ok].sum() < 5 or (1 - y[ok]).sum() < 5:
        return float("nan")
    return float(roc_auc_score(y[ok], score[ok]))


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    from x2ctclip import CT_RATE_FINDINGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--shape", type=int, nargs=3, default=None,
                        help="generated (D, H, W); default 80 128 128, or the preset's synthetic_shape with "
                             "--grid quickstart")
    parser.add_argument("--grid", choices=("native", "quickstart"), default="native",
                        help="measure on the generated volume (native) or on the quickstart's preprocessed CT "
                             "grid and stored CXR (quickstart)")
    parser.add_argument("--preset", default="default", help="quickstart preset for --grid quickstart")
    parser.add_argument("--prior", choices=("independent", "ct-rate"), default="independent")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="also save the labels and features to this .npz")
    args = parser.parse_args(argv)

    from x2ctclip.train.quickstart import PRESETS

    if args.preset not in PRESETS:
        parser.error(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    if args.shape is None:
        args.shape = PRESETS[args.preset].synthetic_shape if args.grid == "quickstart" else (80, 128, 128)
    grid = "native" if args.grid == "native" else f"quickstart:{args.preset}"
    t0 = time.perf_counter()
    jobs = [(args.seed * 100_000 + i, tuple(args.shape), args.prior, grid) for i in range(args.n)]
    if args.workers > 1:
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(args.workers) as pool:
            rows = list(tqdm(pool.imap(_features, jobs, chunksize=4), total=len(jobs), desc="studies"))
    else:
        rows = [_features(j) for j in tqdm(jobs, desc="studies")]
    y = np.stack([r[0] for r in rows]).astype(int)
    cxr_img, cxr_stats = np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])
    ct_img, ct_stats = np.stack([r[3] for r in rows]), np.stack([r[4] for r in rows])
    if args.save:
        np.savez_compressed(args.save, y=y, cxr_img=cxr_img, cxr_stats=cxr_stats, ct_img=ct_img, ct_stats=ct_stats)
    if grid != "native":
        p = PRESETS[args.preset]
        print(f"CT grid of the {args.preset!r} quickstart: {p.ct_shape} voxels of {p.ct_spacing} mm; "
              f"CXR {p.cxr_size} x {p.cxr_size} uint8")
    print(f"{args.n} studies at {tuple(args.shape)} ({args.prior} labels): features in "
          f"{time.perf_counter() - t0:.0f} s")
    s_cxr = _cv_scores(cxr_img, cxr_stats, y, args.seed)
    s_ct = _cv_scores(ct_img, ct_stats, y, args.seed)
    print("classifier: PCA(40) of the downsampled image + intensity histogram + texture percentiles -> "
          "logistic regression, 5-fold CV\n")
    print(f"{'finding':36s} {'pos':>4s} {'AUROC CXR':>10s} {'AUROC CT':>9s} {'CT - CXR':>9s}")
    table = {}
    for j, name in enumerate(CT_RATE_FINDINGS):
        a_cxr, a_ct = _auroc(y[:, j], s_cxr[:, j]), _auroc(y[:, j], s_ct[:, j])
        table[name] = (a_cxr, a_ct)
        tag = " (plain on CXR)" if name in PLAIN else (" (subtle on CXR)" if name in SUBTLE else "")
        print(f"{name:36s} {int(y[:, j].sum()):4d} {a_cxr:10.3f} {a_ct:9.3f} {a_ct - a_cxr:+9.3f}{tag}")
    for group, names in (("plain on a frontal CXR", PLAIN), ("subtle on a frontal CXR", SUBTLE),
                         ("all 18", CT_RATE_FINDINGS)):
        cxr = np.nanmean([table[n][0] for n in names])
        ct = np.nanmean([table[n][1] for n in names])
        print(f"mean over {group:28s} CXR {cxr:.3f}  CT {ct:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
