"""What the quickstart's CT grid holds for a local detector, and what its CT tower learns of it from 800 scans.

Both models are trained *supervised* on the 18 labels of the training split of a preprocessed folder (the one the
default quickstart writes, ``OUT/data/preprocessed``: 32 x 64 x 64 int16 HU at 10 x 6 x 6 mm) and scored on its
validation split (per-finding AUROC, macro over 18). No test scan is read.

* ``tower`` (the baseline): the default preset's CT tower (:class:`x2ctclip.modeling_ct.X2CTCLIPCTModel`,
  16 x 16 x 8 linear patches, one spatial and one temporal layer, CT-CLIP's pooling: mean over depth, then the
  4 x 4 token grid flattened) on ``ct_values`` (HU / 1000 clipped to [-1, 1]) and a linear layer to the 18 logits.
* ``cnn``: a small 3-D CNN with the priors the tower lacks: three intensity windows as input channels (lung
  -1000..-400 HU, soft tissue -200..200 HU, bone 200..1000 HU), four 3x3x3 convolution + BatchNorm + ReLU layers
  (16, 32, 64, 96 channels) with 2-voxel max pooling between them, and global mean + max pooling (translation
  invariant: a lesion found anywhere counts the same).

Both: binary cross-entropy, AdamW (weight decay 0.01 for the CNN, 0.1 for the tower, as stage 1 uses), one-cycle
schedule, batch 32, ``--epochs`` epochs, random left-right flips for the CNN only (the tower's pooled feature is
position-specific). The gap between the two is what the tower's inductive bias costs on this much data; findings on
which the CNN also stays near 0.5 are not learnable from the voxels of 800 scans by either.

Usage::

    x2ctclip quickstart --out OUT      # or steps 1-2 of it: any preprocessed folder with train and valid splits
    python benchmarks/bench_ct_supervised_ceiling.py OUT/data/preprocessed [--epochs 20] [--json results.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn


def _load(folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from x2ctclip.train.data.folders import load_preprocessed, read_ct

    ds = load_preprocessed(folder, split)
    ct = read_ct(ds, list(range(len(ds))))
    labels = np.asarray(ds.with_format("numpy", columns=["labels"])[:]["labels"], dtype=np.float32)
    return torch.from_numpy(ct), torch.from_numpy(labels)


class WindowCNN(nn.Module):
    """int16 HU (B, D, H, W) -> 18 logits; see the module docstring."""

    WINDOWS_HU = ((-1000.0, -400.0), (-200.0, 200.0), (200.0, 1000.0))

    def __init__(self, widths=(16, 32, 64, 96), n_out: int = 18):
        super().__init__()
        layers: list[nn.Module] = []
        c = len(self.WINDOWS_HU)
        for i, w in enumerate(widths):
            layers += [nn.Conv3d(c, w, 3, padding=1), nn.BatchNorm3d(w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool3d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c, n_out)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        hu = hu.float()
        x = torch.stack([((hu - lo) / (hi - lo)).clamp(0, 1) for lo, hi in self.WINDOWS_HU], 1)
        f = self.features(x)
        return self.head(torch.cat([f.mean((2, 3, 4)), f.amax((2, 3, 4))], 1))


class TowerClassifier(nn.Module):
    """The default quickstart's CT tower + a linear layer on its pooled output."""

    def __init__(self, ct_shape, n_out: int = 18):
        super().__init__()
        from x2ctclip import X2CTCLIPCTConfig
        from x2ctclip.modeling_ct import X2CTCLIPCTModel
        from x2ctclip.train.quickstart import PRESETS

        p = PRESETS["default"]
        config = X2CTCLIPCTConfig(**{**p.ct_tower, "image_size": int(ct_shape[1]), "num_frames": int(ct_shape[0])})
        self.tower = X2CTCLIPCTModel(config)
        self.head = nn.Linear(config.pooled_dim, n_out)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        from x2ctclip.train.data.folders import ct_values_from_ct

        # The stored HU are already clipped to [-1000, 1000]: the tower's ct_values, as the training stages read them.
        return self.head(self.tower(ct_values_from_ct(hu)).pooler_output)


def train_and_score(name, model, xt, yt, xv, yv, *, epochs, lr, weight_decay, flips, seed=0):
    """Train ``model`` (int16 HU (B, D, H, W) -> 18 logits) on ``xt, yt``; score the last epoch on ``xv, yv`` (the
    per-epoch validation numbers are only printed: nothing is selected on them). Returns (results, valid scores)."""
    from x2ctclip.train.evaluation.metrics import roc_auc_per_finding
    from x2ctclip.train.progress import progress_bar

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=weight_decay)
    steps = epochs * ((len(xt) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    start, macro, aucs = time.perf_counter(), float("nan"), []
    bar = progress_bar(total=steps, desc=f"{name} (supervised)", unit="step")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            x = xt[idx]
            if flips and torch.rand(()) < 0.5:
                x = x.flip(-1)
            loss = loss_fn(model(x), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        model.eval()
        with torch.no_grad():
            scores = torch.cat([torch.sigmoid(model(xv[i:i + 64])) for i in range(0, len(xv), 64)]).numpy()
        aucs = [float(v) for v in roc_auc_per_finding(yv.numpy(), scores)]  # NaN where valid holds one class
        macro = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", valid_macro=f"{macro:.3f}")
        if bar.disable:  # no terminal (a log file): one line per epoch instead
            print(f"{name} epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}, valid macro AUROC "
                  f"{macro:.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    bar.close()
    return {"macro_auroc": macro, "per_finding": aucs, "train_s": time.perf_counter() - start}, scores


def main() -> None:
    from x2ctclip import CT_RATE_FINDINGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="a preprocessed folder with train and valid splits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--arms", nargs="+", default=["tower", "cnn"], choices=["tower", "cnn"])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    try:
        xt, yt = _load(args.data, "train")
        xv, yv = _load(args.data, "valid")
    except FileNotFoundError as err:  # the loader's message names the folder and what is missing
        parser.error(str(err))
    print(f"train {tuple(xt.shape)}, valid {tuple(xv.shape)} (int16 HU)")
    results, scores = {}, {}
    for arm in args.arms:
        torch.manual_seed(0)  # the initial weights
        if arm == "tower":
            results[arm], scores[arm] = train_and_score(arm, TowerClassifier(xt.shape[1:]), xt, yt, xv, yv,
                                                        epochs=args.epochs, lr=1e-3, weight_decay=0.1, flips=False)
        else:
            results[arm], scores[arm] = train_and_score(arm, WindowCNN(), xt, yt, xv, yv, epochs=args.epochs,
                                                        lr=2e-3, weight_decay=0.01, flips=True)
    # 95 % bootstrap intervals over the validation scans (the quickstart's resampling), and the paired difference.
    from x2ctclip.train.quickstart import HARD_ON_PROJECTION
    from x2ctclip.train.quickstart_report import auroc_intervals

    hard = [CT_RATE_FINDINGS.index(n) for n in HARD_ON_PROJECTION]
    pairs = [("cnn", "tower")] if set(scores) == {"cnn", "tower"} else []
    ci = auroc_intervals(yv.numpy(), scores, hard, pairs)
    for arm in args.arms:
        results[arm]["macro_auroc_ci"] = ci["models"][arm]["macro_auroc_ci"]
        results[arm]["hard_on_projection_macro_auroc"] = ci["models"][arm]["subset_macro_auroc"]
        results[arm]["hard_on_projection_macro_auroc_ci"] = ci["models"][arm]["subset_macro_auroc_ci"]
    if pairs:
        results["cnn_minus_tower"] = ci["differences"]["cnn-tower"]["macro"]

    def cell(v: float) -> str:
        return "n/a" if np.isnan(v) else f"{v:.3f}"

    print("| finding | " + " | ".join(args.arms) + " |")
    print("|---|" + "---:|" * len(args.arms))
    for k, name in enumerate(CT_RATE_FINDINGS):
        print(f"| {name} | " + " | ".join(cell(results[a]["per_finding"][k]) for a in args.arms) + " |")
    print("| macro (valid) | " + " | ".join(cell(results[a]["macro_auroc"]) for a in args.arms) + " |")
    print("| train time | " + " | ".join(f"{results[a]['train_s']:.0f} s" for a in args.arms) + " |")

    def interval(v) -> str:
        return "n/a" if v is None else f"[{v[0]:.3f}, {v[1]:.3f}]"

    for arm in args.arms:
        r = results[arm]
        print(f"{arm}: macro {cell(r['macro_auroc'])} {interval(r['macro_auroc_ci'])}; hard on a projection "
              f"{cell(r['hard_on_projection_macro_auroc'])} {interval(r['hard_on_projection_macro_auroc_ci'])} "
              "(95 % bootstrap over validation scans)")
    if pairs:
        d = results["cnn_minus_tower"]
        print(f"cnn - tower, paired: {cell(d['difference'])} {interval(d['difference_ci'])}")
    if args.json:
        from x2ctclip.fileio import write_json_atomic

        # A finding with one class in the validation split has no AUROC: null in the JSON.
        clean = {a: {**r, "per_finding": [None if np.isnan(v) else v for v in r["per_finding"]]}
                 if "per_finding" in r else r for a, r in results.items()}
        write_json_atomic(args.json, {"data": args.data, "epochs": args.epochs, "findings": list(CT_RATE_FINDINGS),
                                      **clean})


if __name__ == "__main__":
    main()
