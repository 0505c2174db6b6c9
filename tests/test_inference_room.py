"""The inference room of the library: ``import x2ctclip.processors`` loads no model module, ``import x2ctclip`` loads
none until one is used, the predictor runs on a real radiograph with ``x2ctclip.train`` blocked (fresh interpreters),
and the old ``x2ctclip.train.zeroshot`` path warns."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_configs import TINY_TEXT, tiny_config

from x2ctclip import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES

IMAGE_SIZE = 32  # TINY_SWIN input size


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


MODEL_MODULES = 'import sys\nloaded = sorted(m for m in sys.modules if m.startswith("x2ctclip.modeling_"))\n'


def test_import_processors_loads_no_model_module():
    result = run_python(MODEL_MODULES.replace("import sys", "import sys, x2ctclip.processors") + "print(loaded)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_x2ctclip_is_lazy_and_names_still_load():
    code = MODEL_MODULES.replace("import sys", "import sys, x2ctclip") + textwrap.dedent(
        """
        assert loaded == [], loaded
        from transformers import AutoModel, AutoModelForImageClassification
        from x2ctclip import X2CTCLIPConfig, X2CTCLIPForAbnormalityClassification, X2CTCLIPModel, ZeroShotClassifier
        assert X2CTCLIPModel._auto_class == "AutoModel"
        assert X2CTCLIPForAbnormalityClassification._auto_class == "AutoModelForImageClassification"
        assert AutoModel._model_mapping[X2CTCLIPConfig] is X2CTCLIPModel
        assert AutoModelForImageClassification._model_mapping[X2CTCLIPConfig] is X2CTCLIPForAbnormalityClassification
        import x2ctclip.modeling_ct as ct
        assert ct.X2CTCLIPCTModel._auto_class == "AutoModel"
        print("ok")
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_zeroshot_shim_warns_and_reexports():
    code = """
        import warnings
        import x2ctclip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from x2ctclip.train.zeroshot import ZeroShotClassifier, build_prompts
        assert ZeroShotClassifier is x2ctclip.ZeroShotClassifier and build_prompts is x2ctclip.build_prompts
        print([str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)])
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "x2ctclip.train.zeroshot is deprecated" in result.stdout


@pytest.fixture(scope="module")
def rg1() -> str:
    pydicom_data = pytest.importorskip("pydicom.data")
    path = pydicom_data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("needs the pydicom-data package (RG1_UNCR.dcm), which is not installed")
    return path


@pytest.fixture(scope="module")
def calibrated_folder(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny X2CTCLIPModel with the 18 CT-RATE findings, its processor, and a calibration written by the training
    package's own Calibrator (fitted on random logits: the values only need to be the schema's)."""
    from x2ctclip import X2CTCLIPModel
    from x2ctclip.processors import X2CTCLIPImageProcessor, X2CTCLIPProcessor, build_wordpiece_tokenizer
    from x2ctclip.train.evaluation.calibration import Calibrator

    texts = [t.format(f) for f in CT_RATE_FINDINGS for pair in DEFAULT_PROMPT_TEMPLATES for t in pair]
    tokenizer = build_wordpiece_tokenizer(texts, vocab_size=300, alphabet=None,
                                          model_max_length=TINY_TEXT["max_position_embeddings"])  # fmt: skip
    config = tiny_config(text_config=dict(TINY_TEXT, vocab_size=len(tokenizer)), logit_scale_init_value=math.log(30.0))
    assert len(config.findings) == 18
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(60, 18)).astype(float)
    logits = labels * 1.5 + rng.normal(size=labels.shape) * 2
    calibration = Calibrator.fit(logits, labels, method="platt", finding_names=config.findings).to_dict()
    config.calibration = calibration
    torch.manual_seed(0)
    model = X2CTCLIPModel(config).eval()
    processor = X2CTCLIPProcessor(image_processor=X2CTCLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE),
                                  tokenizer=tokenizer, max_length=TINY_TEXT["max_position_embeddings"])  # fmt: skip
    folder = tmp_path_factory.mktemp("predictor") / "tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, calibration


PREDICT_SCRIPT = """
    import importlib.abc, sys, torch

    class BlockTrain(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "x2ctclip.train" or name.startswith("x2ctclip.train."):
                raise ImportError(f"x2ctclip.train is blocked in this test ({name})")

    sys.meta_path.insert(0, BlockTrain())
    from x2ctclip import X2CTCLIPPredictor
    folder, image, out = sys.argv[1:4]
    predictor = X2CTCLIPPredictor.from_pretrained(folder)
    result = predictor([image, image])
    assert not any(m.startswith("x2ctclip.train") for m in sys.modules)
    torch.save({k: getattr(result, k) for k in ("findings", "probabilities", "raw_probabilities", "logits",
                "thresholds", "present", "calibrated")}, out)
"""


def test_predictor_runs_without_the_training_package(calibrated_folder, rg1, tmp_path):
    from x2ctclip.train.evaluation.calibration import Calibrator

    folder, calibration = calibrated_folder
    out = tmp_path / "prediction.pt"
    result = run_python(PREDICT_SCRIPT, str(folder), rg1, str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(out)
    assert got["findings"] == list(CT_RATE_FINDINGS)
    assert got["calibrated"] is True
    for key in ("probabilities", "raw_probabilities", "logits"):
        assert got[key].shape == (2, 18), key
    # the same radiograph twice (equal up to float rounding: a batch of 2 may take other kernels than a batch of 1)
    assert torch.allclose(got["probabilities"][0], got["probabilities"][1], atol=1e-6)
    # calibrated as the training package's Calibrator maps the same logits, with its thresholds
    expected = Calibrator.from_dict(calibration).transform(got["logits"].double()).float()
    assert torch.allclose(got["probabilities"], expected, atol=1e-6)
    assert not torch.allclose(got["probabilities"], got["raw_probabilities"], atol=1e-3)
    assert torch.allclose(torch.sigmoid(got["logits"]), got["raw_probabilities"], atol=1e-5)
    thresholds = torch.tensor([math.nan if v is None else v for v in calibration["thresholds"]])
    assert torch.allclose(got["thresholds"], thresholds, equal_nan=True)
    assert torch.equal(got["present"], got["probabilities"] >= torch.nan_to_num(thresholds, nan=math.inf))


def test_predictor_without_calibration_and_with_one_threshold(calibrated_folder, rg1, tmp_path):
    from PIL import Image

    from x2ctclip import X2CTCLIPPredictor
    from x2ctclip.processors import load_radiograph

    folder, _ = calibrated_folder
    config = json.loads((folder / "config.json").read_text())
    config["calibration"] = None
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in folder.iterdir():
        (plain / f.name).write_bytes(f.read_bytes())
    (plain / "config.json").write_text(json.dumps(config))
    predictor = X2CTCLIPPredictor.from_pretrained(plain)
    pixels = load_radiograph(rg1).pixels  # (H, W) in [0, 1]
    image = Image.fromarray((pixels * 255).round().astype(np.uint8))
    result = predictor(image, threshold=0.5)
    assert result.calibrated is False and result.modality == "cxr"
    assert result.probabilities is result.raw_probabilities and result.probabilities.shape == (1, 18)
    assert torch.equal(result.thresholds, torch.full((18,), 0.5))
    assert torch.equal(result.present, result.probabilities >= 0.5)
    records = result.to_records()
    assert len(records) == 1 and set(records[0]) == set(CT_RATE_FINDINGS)
    with pytest.raises(ValueError, match="modality"):
        predictor(image, modality="mri")


def test_pipeline_after_a_plain_import(calibrated_folder):
    """``import x2ctclip`` alone (no model module, no explicit processors import) is enough for transformers'
    pipeline: the lazy auto-class entries and the processors' registration resolve on first use."""
    folder, _ = calibrated_folder
    code = """
        import sys
        import numpy as np
        from PIL import Image
        import x2ctclip
        from transformers import pipeline
        assert not any(m.startswith("x2ctclip.modeling_") for m in sys.modules)
        classifier = pipeline("zero-shot-image-classification", model=sys.argv[1])
        assert type(classifier.model).__name__ == "X2CTCLIPModel", type(classifier.model)
        assert type(classifier.image_processor).__name__ == "X2CTCLIPImageProcessor", type(classifier.image_processor)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8))
        result = classifier(image, candidate_labels=["There is cardiomegaly.", "There is no cardiomegaly."])
        print(round(sum(r["score"] for r in result), 6))
    """
    result = run_python(code, str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "1.0"
