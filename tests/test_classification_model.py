"""X2CTCLIPForAbnormalityClassification: built from an X2CTCLIPModel, loss, calibration, auto classes, remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_configs import TINY_RESNET, TINY_SWIN, tiny_config
from transformers import AutoModel, AutoModelForImageClassification, pipeline

from x2ctclip import CT_RATE_FINDINGS, X2CTCLIPForAbnormalityClassification, X2CTCLIPModel
from x2ctclip.processors import X2CTCLIPImageProcessor
from x2ctclip.train.evaluation.calibration import Calibrator


def _pixels(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["swin", "resnet"])
def base(request):
    torch.manual_seed(0)
    cxr = TINY_SWIN if request.param == "swin" else TINY_RESNET
    return X2CTCLIPModel(tiny_config(cxr=cxr, towers=["cxr", "text"])).eval()


@pytest.fixture(scope="module")
def classifier(base):
    torch.manual_seed(1)
    return X2CTCLIPForAbnormalityClassification.from_x2ctclip(base).eval()


def test_from_x2ctclip_copies_the_cxr_tower_and_classifies_normalised_latents(base, classifier):
    pixels = _pixels()
    with torch.no_grad():
        expected = F.normalize(base.get_cxr_features(pixels).pooler_output, dim=-1)
        out = classifier(pixel_values=pixels)
    torch.testing.assert_close(out.cxr_embeds, expected)
    torch.testing.assert_close(out.logits, expected @ classifier.classifier.weight.T + classifier.classifier.bias)
    assert out.logits.shape == (4, 18) and out.loss is None
    config = classifier.config
    assert config.towers == ["cxr"] and base.config.towers == ["cxr", "text"]  # the source config is not changed
    assert config.problem_type == "multi_label_classification"
    assert [config.id2label[i] for i in range(18)] == list(CT_RATE_FINDINGS)
    assert config.label2id["Cardiomegaly"] == 2 and config.num_labels == 18
    assert config.prompt_templates == base.config.prompt_templates
    # The copy is independent of the source model.
    with torch.no_grad():
        classifier.cxr_projection.weight.add_(0.0)
    assert classifier.cxr_projection.weight.data_ptr() != base.cxr_projection.weight.data_ptr()


def test_cxr_embeds_input_and_head_initialisation(base, classifier):
    pixels = _pixels()
    with torch.no_grad():
        raw = base.get_cxr_features(pixels).pooler_output
        by_pixels = classifier(pixel_values=pixels).logits
        by_embeds = classifier(cxr_embeds=raw * 3.0).logits  # normalised inside
    torch.testing.assert_close(by_embeds, by_pixels)
    weight, bias = torch.randn(18, 16), torch.randn(18)
    head = X2CTCLIPForAbnormalityClassification.from_x2ctclip(base, classifier_weight=weight, classifier_bias=bias)
    assert torch.equal(head.classifier.weight, weight) and torch.equal(head.classifier.bias, bias)
    with pytest.raises(ValueError, match=r"shape \(18, 16\)"):
        head.set_classifier(torch.zeros(17, 16))
    with pytest.raises(ValueError, match="NaN"):
        head.set_classifier(bias=torch.full((18,), float("nan")))
    with pytest.raises(ValueError, match="exactly one"):
        classifier()
    with pytest.raises(ValueError, match="exactly one"):
        classifier(pixel_values=pixels, cxr_embeds=raw)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        classifier(cxr_embeds=torch.zeros(2, 15))
    with pytest.raises(ValueError, match="CXR tower"):
        X2CTCLIPForAbnormalityClassification(tiny_config(towers=["ct", "text"]))


def test_loss_is_bce_over_annotated_labels(classifier):
    pixels = _pixels(6)
    labels = (torch.rand(6, 18, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    out = classifier(pixel_values=pixels, labels=labels)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels))
    masked = labels.clone()
    masked[:, 5:] = float("nan")
    masked[0, 0] = float("nan")
    keep = ~torch.isnan(masked)
    loss = classifier(pixel_values=pixels, labels=masked).loss
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(out.logits[keep], labels[keep]))
    loss.backward()  # finite gradients despite the NaN labels
    assert all(torch.isfinite(p.grad).all() for p in classifier.parameters() if p.grad is not None)
    classifier.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="0 / 1"):
        classifier(pixel_values=pixels, labels=labels * 2)
    with pytest.raises(ValueError, match="shape"):
        classifier(pixel_values=pixels, labels=labels[:, :3])


def test_save_load_with_auto_classes_and_pipeline(classifier, tmp_path):
    classifier.save_pretrained(tmp_path)
    X2CTCLIPImageProcessor(size=32, crop_size=32).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_classification.X2CTCLIPForAbnormalityClassification"
    )
    assert (tmp_path / "modeling_classification.py").is_file() and (tmp_path / "modeling_x2ctclip.py").is_file()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is X2CTCLIPForAbnormalityClassification
    pixels = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, classifier(pixel_values=pixels).logits)
    # The image-classification pipeline applies a sigmoid for multi-label problems: scores = sigmoid(logits).
    image = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    classify = pipeline("image-classification", model=str(tmp_path), top_k=18, trust_remote_code=False)
    scores = {r["label"]: r["score"] for r in classify(image_from_array(image))}
    pixel_values = X2CTCLIPImageProcessor(size=32, crop_size=32)(image)["pixel_values"]
    with torch.no_grad():
        expected = torch.sigmoid(classifier(pixel_values=pixel_values).logits[0])
    assert scores == pytest.approx(dict(zip(CT_RATE_FINDINGS, expected.tolist())), abs=1e-5)


def image_from_array(array):
    from PIL import Image

    return Image.fromarray(array)


def test_loading_an_x2ctclip_folder_keeps_the_cxr_tower(base, tmp_path):
    base.save_pretrained(tmp_path)
    loaded = X2CTCLIPForAbnormalityClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.cxr_projection.weight, base.cxr_projection.weight)
    pixels = _pixels()
    with torch.no_grad():
        # get_image_features returns transformers 5's BaseModelOutputWithPooling (un-normalised pooler_output).
        torch.testing.assert_close(F.normalize(loaded.get_image_features(pixels).pooler_output, dim=-1),
                                   F.normalize(base.get_cxr_features(pixels).pooler_output, dim=-1))


def test_calibration_in_config_drives_predict(classifier, tmp_path):
    pixels = _pixels(12, seed=4)
    with torch.no_grad():
        logits = classifier(pixel_values=pixels).logits
    labels = (torch.rand(12, 18, generator=torch.Generator().manual_seed(5)) < 0.5).float().numpy()
    labels[0], labels[1] = 1, 0  # both classes for every finding
    calibrator = Calibrator.fit(logits.numpy(), labels, method="platt", finding_names=CT_RATE_FINDINGS)
    uncalibrated = classifier.predict(pixels)
    torch.testing.assert_close(uncalibrated.probabilities, torch.sigmoid(logits))
    assert torch.equal(uncalibrated.thresholds, torch.full((18,), 0.5))
    try:
        classifier.set_calibration(calibrator.to_dict())
        classifier.save_pretrained(tmp_path)
    finally:
        classifier.set_calibration(None)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert loaded.calibration["method"] == "platt"
    prediction = loaded.predict(pixels)
    torch.testing.assert_close(prediction.probabilities, calibrator.transform(logits), atol=1e-6, rtol=0)
    expected_thresholds = torch.tensor(calibrator.thresholds, dtype=torch.float32)
    torch.testing.assert_close(prediction.thresholds, expected_thresholds, equal_nan=True)
    assert torch.equal(prediction.predictions, calibrator.predict(logits))
    assert torch.equal(loaded.predict(pixels, threshold=0.3).predictions, prediction.probabilities >= 0.3)
    assert not loaded.training  # predict restores the mode it found (eval after from_pretrained)

    bad = calibrator.to_dict()
    bad["slope"] = bad["slope"][:5]
    with pytest.raises(ValueError, match="slope has 5 entries"):
        loaded.set_calibration(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        loaded.set_calibration({**calibrator.to_dict(), "temperature": 2})
    with pytest.raises(ValueError, match="finding_names"):
        loaded.set_calibration({**calibrator.to_dict(), "finding_names": list(reversed(CT_RATE_FINDINGS))})


REMOTE = textwrap.dedent(
    """
    import importlib.abc, sys, torch

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "x2ctclip" or name.startswith("x2ctclip."):
                raise ModuleNotFoundError(name)

    sys.meta_path.insert(0, HidePackage())
    from transformers import AutoModelForImageClassification

    folder, out = sys.argv[1:3]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model)
    pixels = torch.load(out + ".in.pt")
    prediction = model.predict(pixels)
    torch.save({"logits": prediction.logits, "probabilities": prediction.probabilities}, out)
    """
)


@pytest.mark.slow
def test_remote_code_folder_without_the_package(tmp_path):
    torch.manual_seed(0)
    base = X2CTCLIPModel(tiny_config(towers=["cxr"]))
    classifier = X2CTCLIPForAbnormalityClassification.from_x2ctclip(base).eval()
    folder = tmp_path / "model"
    classifier.save_pretrained(folder)
    pixels = _pixels()
    out = tmp_path / "out.pt"
    torch.save(pixels, str(out) + ".in.pt")
    (tmp_path / "remote.py").write_text(REMOTE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, str(tmp_path / "remote.py"), str(folder), str(out)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(out)
    with torch.no_grad():
        torch.testing.assert_close(remote["logits"], classifier(pixel_values=pixels).logits)
    # AutoModel on the same folder (package installed) gives the base model class, not the classifier.
    assert type(AutoModel.from_pretrained(folder)) is X2CTCLIPModel


def test_first_release_name_image_embeds_still_works_with_a_deprecation_warning(base, classifier):
    raw = torch.randn(3, 16)
    with torch.no_grad():
        new = classifier(cxr_embeds=raw)
        with pytest.warns(DeprecationWarning, match="now cxr_embeds"):
            old = classifier(image_embeds=raw)
        with pytest.warns(DeprecationWarning, match="now cxr_embeds"):
            predicted = classifier.predict(image_embeds=raw)
    torch.testing.assert_close(old.logits, new.logits)
    torch.testing.assert_close(predicted.probabilities, classifier.predict(cxr_embeds=raw).probabilities)
    with pytest.warns(DeprecationWarning, match="now cxr_embeds"):
        torch.testing.assert_close(new.image_embeds, new.cxr_embeds)
    with pytest.raises(ValueError, match="not both"), pytest.warns(DeprecationWarning):
        classifier(cxr_embeds=raw, image_embeds=raw)
