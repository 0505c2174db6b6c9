"""A save_for_hub folder behind transformers' ``zero-shot-image-classification`` pipeline and behind the Auto
classes, with and without the x2ctclip package: same scores as x2ctclip's own ZeroShotClassifier."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hub import FINDINGS, PROMPTS, tiny_model_and_processor
from transformers import AutoModel, AutoProcessor, pipeline

import x2ctclip.processors  # noqa: F401  (registers the processors with AutoImageProcessor / AutoProcessor)
from x2ctclip import X2CTCLIPModel
from x2ctclip.processors import X2CTCLIPImageProcessor, X2CTCLIPProcessor
from x2ctclip.train.hub.export import save_for_hub
from x2ctclip.zero_shot import ZeroShotClassifier

ATOL = 1e-5


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    model, processor = tiny_model_and_processor(seed=3)
    return save_for_hub(model, processor, tmp_path_factory.mktemp("pipeline") / "x2ctclip-tiny")


@pytest.fixture(scope="module")
def cxr_png(tmp_path_factory) -> Path:
    """A frontal CXR as PNG: the real radiograph RG1_UNCR.dcm of pydicom-data (displayed, 8 bit, 256 px high)
    when installed, else a deterministic synthetic image (what is tested does not depend on the content)."""
    from PIL import Image

    path = tmp_path_factory.mktemp("cxr") / "frontal_cxr.png"
    try:
        import pydicom.data

        dicom = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    except ImportError:
        dicom = None
    if dicom is not None:
        from x2ctclip.processors import load_radiograph

        pixels = load_radiograph(dicom).pixels  # (H, W) in [0, 1], display orientation, bone bright
        image = Image.fromarray((pixels * 255).round().astype(np.uint8))
        image = image.resize((round(256 * image.width / image.height), 256), Image.BILINEAR)
    else:
        yy, xx = np.mgrid[0:64, 0:56]
        image = Image.fromarray((127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def loaded(hub_dir):
    return X2CTCLIPModel.from_pretrained(hub_dir).eval(), AutoProcessor.from_pretrained(hub_dir)


def pair_score(classifier, image, positive: str, negative: str) -> float:
    """The pipeline's softmax over one (positive, negative) prompt pair = the zero-shot probability of the finding."""
    result = classifier(str(image), candidate_labels=[positive, negative], hypothesis_template="{}")
    return {r["label"]: r["score"] for r in result}[positive]


def test_pipeline_loads_the_cxr_processor_and_scores_like_zero_shot_classifier(hub_dir, cxr_png, loaded):
    classifier = pipeline("zero-shot-image-classification", model=str(hub_dir))
    assert isinstance(classifier.model, X2CTCLIPModel)
    assert isinstance(classifier.image_processor, X2CTCLIPImageProcessor)
    model, processor = loaded
    assert isinstance(processor, X2CTCLIPProcessor)
    pixel_values = processor(images=str(cxr_png))["pixel_values"]
    assert torch.equal(classifier.image_processor(images=[str(cxr_png)])["pixel_values"], pixel_values)
    expected = ZeroShotClassifier(model, processor.tokenizer).predict(pixel_values).per_template_probabilities[0]
    assert expected.shape == (len(PROMPTS), len(FINDINGS))
    for t, (positive, negative) in enumerate(model.config.prompt_templates):
        for j, finding in enumerate(model.config.findings):
            score = pair_score(classifier, cxr_png, positive.format(finding), negative.format(finding))
            assert score == pytest.approx(float(expected[t, j]), abs=ATOL), (positive, finding)
    # The random tiny model must still separate the findings, or the comparison above would be vacuous.
    assert float(expected.max() - expected.min()) > 1e-3


def test_pipeline_ranks_findings_with_the_config_template(hub_dir, cxr_png, loaded):
    model, processor = loaded
    positive = model.config.prompt_templates[0][0]
    classifier = pipeline("zero-shot-image-classification", model=str(hub_dir))
    result = classifier(str(cxr_png), candidate_labels=list(FINDINGS), hypothesis_template=positive)
    assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)
    inputs = processor(images=str(cxr_png), text=[positive.format(f) for f in FINDINGS], padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.softmax(dim=-1)[0]
    assert {r["label"]: r["score"] for r in result} == pytest.approx(dict(zip(FINDINGS, expected.tolist())), abs=ATOL)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, torch

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
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, image, out = sys.argv[1:4]
    inputs = torch.load(out + ".in.pt")
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    for component in (model, processor, processor.image_processor, classifier.model, classifier.image_processor):
        assert type(component).__module__.startswith("transformers_modules."), type(component)
    batch = processor(images=image, text=inputs["prompts"], padding=True)
    with torch.no_grad():
        output = model(**batch, ct_values=inputs["ct_values"])
    positive, negative = model.config.prompt_templates[0]
    pair = [
        {r["label"]: r["score"] for r in classifier(image, candidate_labels=[positive.format(f), negative.format(f)],
                                                    hypothesis_template="{}")}[positive.format(f)]
        for f in model.config.findings
    ]
    torch.save({"batch": dict(batch), "logits_per_image": output.logits_per_image,
                "logits_per_cxr_ct": output.logits_per_cxr_ct, "cxr_embeds": output.cxr_embeds,
                "text_embeds": output.text_embeds, "pair_scores": torch.tensor(pair)}, out)
    """
)


@pytest.mark.slow
def test_folder_gives_the_package_outputs_without_the_package(hub_dir, cxr_png, loaded, tmp_path):
    model, processor = loaded
    positive, negative = model.config.prompt_templates[0]
    prompts = [t.format(f) for f in FINDINGS for t in (positive, negative)]
    ct = model.config.ct_config
    torch.manual_seed(0)
    ct_values = torch.rand(1, 1, ct.num_frames, ct.image_size, ct.image_size) * 2 - 1
    out = tmp_path / "remote.pt"
    torch.save({"prompts": prompts, "ct_values": ct_values}, str(out) + ".in.pt")
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "remote.py"), str(hub_dir), str(cxr_png), str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    remote = torch.load(out)

    batch = processor(images=str(cxr_png), text=prompts, padding=True)
    for key in ("pixel_values", "input_ids", "attention_mask"):
        assert torch.equal(remote["batch"][key], batch[key]), key
    with torch.no_grad():
        expected = model(**batch, ct_values=ct_values)
    for key in ("logits_per_image", "logits_per_cxr_ct", "cxr_embeds", "text_embeds"):
        assert torch.allclose(remote[key], getattr(expected, key), atol=1e-6), key
    zero_shot = ZeroShotClassifier(model, processor.tokenizer, prompt_templates=[(positive, negative)])
    probabilities = zero_shot.predict(batch["pixel_values"]).probabilities[0]
    assert torch.allclose(remote["pair_scores"], probabilities, atol=ATOL)
    # AutoModel in this process (package installed) is the package's class and agrees too.
    assert type(AutoModel.from_pretrained(hub_dir)) is X2CTCLIPModel
