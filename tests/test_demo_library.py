"""The Space demo as a thin app over the library: its asset files come from ``x2ctclip.assets``, its calibration is
the library's (numerically the training Calibrator's on the same calibration.json), and the engine loads and answers
a radiograph in a fresh interpreter with ``x2ctclip.train`` blocked."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_spaces_demo import chest_like_png, make_tiny_model_folder, write_report_csv

import x2ctclip.assets as assets
from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.evaluation.calibration import Calibrator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "spaces_demo"))

import demo_engine as de  # noqa: E402

N_FINDINGS = len(CT_RATE_FINDINGS)


CALIBRATORS = ("temperature+youden", "platt+sensitivity", "identity", "platt, no thresholds")


def _calibrators() -> dict[str, Calibrator]:
    """Calibrators as ``x2ctclip evaluate calibrate`` fits them (and two written by hand), on random logits."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(80, N_FINDINGS)).astype(float)
    labels[:, 5] = 0  # a single class: Youden gives no threshold (null in the JSON), and the fits warn about it
    logits = labels * 2.0 + rng.normal(size=labels.shape) * 3
    names = list(CT_RATE_FINDINGS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fit_(temperature|platt): 1 finding", UserWarning)
        fitted = {
            "temperature+youden": Calibrator.fit(logits, labels, "temperature", "youden", names),
            "platt+sensitivity": Calibrator.fit(logits, labels, "platt", 0.9, names),
        }
    return {
        **fitted,
        "identity": Calibrator.identity(N_FINDINGS),
        "platt, no thresholds": Calibrator("platt", rng.normal(size=N_FINDINGS) + 1, rng.normal(size=N_FINDINGS)),
    }


@pytest.mark.parametrize("name", CALIBRATORS)
def test_demo_calibration_equals_the_training_calibrator_on_the_same_file(name, tmp_path):
    calibrator = _calibrators()[name]
    path = tmp_path / assets.CALIBRATION_FILE
    path.write_text(json.dumps(calibrator.to_dict()))  # the file as evaluate calibrate writes it
    read = de.read_calibrations(path, CT_RATE_FINDINGS)
    assert set(read) == {"cxr"}
    reread = Calibrator.from_dict(json.loads(path.read_text()))
    logits = np.random.default_rng(1).normal(size=(7, N_FINDINGS)) * np.array([1.0, 10.0, 40.0] * 6)
    expected = reread.transform(logits)  # the training package's numpy path (float64)
    got = de.calibrate_logits(logits, read["cxr"])
    assert got.dtype == np.float64 and got.shape == logits.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    thresholds = de.calibration_thresholds(read["cxr"])
    if reread.thresholds is None:
        assert thresholds is None
    else:
        np.testing.assert_array_equal(thresholds, np.asarray(reread.thresholds, dtype=np.float64))  # NaN == NaN here
        # decisions as Calibrator.predict makes them (no threshold: never present)
        present = got >= np.nan_to_num(thresholds, nan=np.inf)
        np.testing.assert_array_equal(present, reread.predict(logits))
    assert de.describe_calibration(read["cxr"]).startswith(f"{reread.method} calibration")


def test_demo_refuses_the_calibration_files_the_calibrator_refuses(tmp_path):
    good = _calibrators()["temperature+youden"].to_dict()
    path = tmp_path / assets.CALIBRATION_FILE
    refused_by_both = {
        "unknown keys": dict(good, bias=[0.0] * N_FINDINGS),
        "format_version": dict(good, format_version=2),
        "method": dict(good, method="isotonic"),
        "must hold finite numbers": dict(good, slope=[math.inf] * N_FINDINGS),
    }
    # finding names in another label order: the Calibrator reads them; the demo refused them before and still does
    cases = dict(refused_by_both, finding_names=dict(good, finding_names=list(reversed(CT_RATE_FINDINGS))))
    for message, data in cases.items():
        if message in refused_by_both:
            with pytest.raises(ValueError):
                Calibrator.from_dict(data)
        path.write_text(json.dumps({"cxr": good, "ct": data}))
        with pytest.raises(ValueError, match=message) as caught:
            de.read_calibrations(path, CT_RATE_FINDINGS)
        line = str(caught.value)
        assert line.startswith(f"{path}: the ct calibration") and "\n" not in line, line
    path.write_text(json.dumps(Calibrator.identity(5).to_dict()))
    with pytest.raises(ValueError, match="the cxr calibrator has 5 findings, the model 18"):
        de.read_calibrations(path, CT_RATE_FINDINGS)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        de.read_calibrations(path, CT_RATE_FINDINGS)
    assert de.read_calibrations(tmp_path / "absent.json", CT_RATE_FINDINGS) == {}


def test_asset_names_and_latent_files_come_from_the_library(tmp_path):
    from x2ctclip.train.hub import demo_assets

    for name in ("ASSETS_FILE", "CALIBRATION_FILE", "GALLERY_FILE", "REFERENCE_FILE", "save_latents"):
        assert getattr(demo_assets, name) is getattr(assets, name) is getattr(de, name), name
    assert de._load_latents is assets.load_latents
    latents = torch.randn(5, 8, dtype=torch.float64)
    path = assets.save_latents(tmp_path / "x.safetensors", "cxr_embeds", latents, {"source": "test"})
    loaded, meta = assets.load_latents(path, "cxr_embeds")
    assert loaded.dtype == torch.float32 and meta == {"source": "test"}
    torch.testing.assert_close(loaded, latents.float())
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary left beside it
    with pytest.raises(ValueError, match="no tensor 'text_embeds'"):
        assets.load_latents(path, "text_embeds")
    assets.save_latents(tmp_path / "flat.safetensors", "cxr_embeds", torch.zeros(3, 2, 2), {})
    with pytest.raises(ValueError, match=r"must have shape \(N, D\)"):
        assets.load_latents(tmp_path / "flat.safetensors", "cxr_embeds")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all" * 4)
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        assets.load_latents(tmp_path / "junk.safetensors", "cxr_embeds")


# ------------------------------------------------------------------------------ the engine without x2ctclip.train
ENGINE_SCRIPT = """
    import importlib.abc, json, sys

    demo_dir, folder, image, phantoms = sys.argv[1:5]
    # With phantoms, the reference is simulated from synthetic phantoms: x2ctclip.train.synthetic (and the package
    # itself, whose __init__ loads only its compat table) may load; nothing else of x2ctclip.train.
    allowed = ("x2ctclip.train", "x2ctclip.train.compat", "x2ctclip.train.synthetic") if int(phantoms) else ()

    class BlockTrain(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in allowed or (allowed and name.startswith("x2ctclip.train.synthetic.")):
                return None
            if name == "x2ctclip.train" or name.startswith("x2ctclip.train."):
                raise ImportError(f"x2ctclip.train is blocked in this test ({name})")

    sys.meta_path.insert(0, BlockTrain())
    sys.path.insert(0, demo_dir)
    import demo_engine as de

    engine = de.DemoEngine(folder, reference_phantoms=int(phantoms), display_size=64)
    result = engine.analyse_radiograph(image, show_anyway=True)
    chart = de.render_chart([result.predictions], engine.findings)
    loaded = sorted(m for m in sys.modules if m.startswith("x2ctclip.train"))
    assert all(m in allowed or m.startswith("x2ctclip.train.synthetic.") for m in loaded), loaded
    assert bool(loaded) == bool(int(phantoms)), loaded
    p = result.predictions
    print(json.dumps({"probabilities": p.probabilities.tolist(), "logits": p.logits.tolist(),
                      "thresholds": [None if v != v else v for v in p.thresholds.tolist()],
                      "calibration": p.calibration, "calibrated": p.calibrated, "n_reference": engine.reference.n,
                      "retrieved": len(result.retrieved), "saliency": list(result.saliency.shape),
                      "bars": len(chart.axes[0].patches)}))
"""


@pytest.fixture(scope="module")
def calibrated_demo_folder(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny model folder of test_spaces_demo (gallery and input-check reference stored in it) with a Platt
    calibration.json written by the training package's Calibrator."""
    root = tmp_path_factory.mktemp("demo_without_train")
    folder = make_tiny_model_folder(root / "model", write_report_csv(root / "reports.csv"))
    rng = np.random.default_rng(3)
    thresholds = rng.uniform(0.2, 0.8, N_FINDINGS)
    thresholds[2] = np.nan
    calibration = Calibrator("platt", rng.uniform(0.5, 2, N_FINDINGS), rng.normal(size=N_FINDINGS),
                             list(CT_RATE_FINDINGS), thresholds, "youden").to_dict()  # fmt: skip
    (folder / assets.CALIBRATION_FILE).write_text(json.dumps(calibration))
    return folder, calibration


def _run_engine(folder: Path, image: Path, phantoms: int = 0) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(ENGINE_SCRIPT), str(REPO / "spaces_demo"),
                          str(folder), str(image), str(phantoms)], capture_output=True, text=True, timeout=600,
                         env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_demo_engine_answers_a_radiograph_with_the_training_package_blocked(calibrated_demo_folder, tmp_path):
    folder, calibration = calibrated_demo_folder
    image = chest_like_png(tmp_path / "cxr.png")
    got = _run_engine(folder, image)
    assert got["calibrated"] and got["calibration"] == "platt calibration, thresholds: youden"
    assert got["n_reference"] == 4 and got["retrieved"] == 5 and got["saliency"] == [64, 64]
    assert got["bars"] == N_FINDINGS
    # the blocked interpreter's numbers are the training Calibrator's map of its logits, and this process's engine's
    logits = np.asarray(got["logits"])
    expected = Calibrator.from_dict(calibration).transform(logits[None])[0]
    np.testing.assert_allclose(got["probabilities"], expected, rtol=1e-12)
    assert got["thresholds"] == calibration["thresholds"]
    here = de.DemoEngine(folder, reference_phantoms=0, display_size=64).analyse_radiograph(image, show_anyway=True)
    np.testing.assert_allclose(got["logits"], here.predictions.logits, rtol=1e-5, atol=1e-6)


def test_only_the_phantom_reference_needs_the_synthetic_studies(calibrated_demo_folder, tmp_path):
    """A folder without ``cxr_reference.safetensors``: the reference is simulated from phantoms, with everything of
    ``x2ctclip.train`` blocked except ``x2ctclip.train.synthetic``."""
    folder, _ = calibrated_demo_folder
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns(assets.REFERENCE_FILE))
    got = _run_engine(bare, chest_like_png(tmp_path / "cxr.png"), phantoms=3)
    assert got["n_reference"] == 3 and got["calibrated"]


def test_the_space_copies_every_module_the_demo_imports():
    """Every top-level module the demo files import that is not an installed package is one of the files
    ``x2ctclip space`` copies (a sibling left out would break the Space at start-up)."""
    import ast
    import importlib.util

    from x2ctclip.train.hub.space import app_files

    copied = {p.stem for p in app_files()}
    assert {"app", "demo_engine", "uploads", "ood", "gallery", "results", "saliency", "charts", "phantoms"} <= copied
    for path in app_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])  # fmt: skip
            for name in names:
                top = name.split(".")[0]
                if (REPO / "spaces_demo" / f"{top}.py").is_file():
                    assert top in copied, (path.name, top)
                else:
                    assert top in sys.stdlib_module_names or importlib.util.find_spec(top), (path.name, top)


def test_a_temperature_calibration_with_intercepts_is_refused_by_the_library_as_by_calibrator():
    from x2ctclip.calibration import check_calibration

    bad = {"method": "temperature", "slope": [1.0, 0.5], "intercept": [0.0, 0.3], "format_version": 1}
    with pytest.raises(ValueError, match="positive slopes"):
        check_calibration(bad, None)
    with pytest.raises(ValueError, match="positive slopes"):
        check_calibration({**bad, "slope": [1.0, -2.0], "intercept": [0.0, 0.0]}, None)
