"""Zero-shot classification (x2ctclip.train.zeroshot) with a tiny X2CTCLIPModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_configs import TINY_TEXT, tiny_config
from transformers import BatchFeature

from x2ctclip import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES, X2CTCLIPModel
from x2ctclip.processors.tokenization import build_wordpiece_tokenizer
from x2ctclip.train.evaluation.calibration import Calibrator
from x2ctclip.zero_shot import ZeroShotClassifier, build_prompts


@pytest.fixture(scope="module")
def tokenizer():
    texts = build_prompts(CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES)
    return build_wordpiece_tokenizer(texts, vocab_size=250)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(
        text_config=dict(TINY_TEXT, vocab_size=len(tokenizer), hidden_dropout_prob=0.5),
        towers=["cxr", "text"],
        logit_scale_init_value=5.0,  # random towers give nearly equal prompt embeddings: a large scale spreads them
    )
    return X2CTCLIPModel(config).eval()


def _pixels(n=6, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_prompts_order():
    prompts = build_prompts(["Cardiomegaly", "Lung nodule"], [("There is {}.", "There is no {}.")])
    assert prompts == ["There is Cardiomegaly.", "There is no Cardiomegaly.", "There is Lung nodule.",
                       "There is no Lung nodule."]  # fmt: skip
    with pytest.raises(ValueError, match="pairs"):
        build_prompts(["x"], [("There is {}.",)])


def test_matches_the_models_own_forward(model, tokenizer):
    """Per image, finding and template: softmax over the model's logits_per_image for the two prompts, averaged."""
    pixels = _pixels()
    findings = list(CT_RATE_FINDINGS[:3])  # three findings keep the reference loop (one forward per pair) short
    templates = model.config.prompt_templates
    out = ZeroShotClassifier(model, tokenizer, findings=findings).predict(pixels)
    expected = torch.zeros(len(pixels), len(templates), len(findings))
    with torch.no_grad():
        for j, finding in enumerate(findings):
            for t, pair in enumerate(templates):
                tokens = tokenizer([p.format(finding) for p in pair], padding=True, return_tensors="pt")
                logits = model(
                    pixel_values=pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).logits_per_image  # (B, 2)
                expected[:, t, j] = logits.softmax(dim=-1)[:, 0]
    # float32 round-off (different padding and batching of the prompts) times a logit scale of ~150
    torch.testing.assert_close(out.per_template_probabilities, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.probabilities, expected.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(out.logits), out.probabilities, atol=1e-5, rtol=0)
    assert out.logits.std() > 0.02  # the comparison is not between constant outputs


def test_prompts_are_encoded_once(model, tokenizer):
    calls = {"text": 0, "texts": 0}
    original = model.get_text_features

    def counting(*args, **kwargs):
        calls["text"] += 1
        calls["texts"] += kwargs["input_ids"].shape[0]
        return original(*args, **kwargs)

    model.get_text_features = counting
    try:
        classifier = ZeroShotClassifier(model, tokenizer, batch_size=4)
        first = classifier.predict(_pixels(5))
        second = classifier.predict(_pixels(5, seed=1))
        assert calls["texts"] == 2 * 18 * 2 and calls["text"] == 18  # 72 prompts in batches of 4, once
        classifier.encode_prompts(force=True)
        assert calls["texts"] == 2 * 72
    finally:
        del model.get_text_features
    assert not torch.equal(first.probabilities, second.probabilities)


def test_embedding_ensemble_and_single_template(model, tokenizer):
    pixels = _pixels()
    by_emb = ZeroShotClassifier(model, tokenizer, ensemble="embeddings").predict(pixels)
    classifier = ZeroShotClassifier(model, tokenizer)
    text = classifier.encode_prompts()  # (T, F, 2, D)
    x = torch.nn.functional.normalize(classifier.encode_images(pixels), dim=-1)
    mean = torch.nn.functional.normalize(text.mean(0), dim=-1)
    manual = (model.logit_scale.exp() * torch.einsum("bd,fkd->bfk", x, mean)).softmax(-1)[..., 0]
    torch.testing.assert_close(by_emb.probabilities, manual.detach(), atol=1e-5, rtol=0)
    one = [DEFAULT_PROMPT_TEMPLATES[0]]
    a = ZeroShotClassifier(model, tokenizer, prompt_templates=one).predict(pixels).probabilities
    b = ZeroShotClassifier(model, tokenizer, prompt_templates=one, ensemble="embeddings").predict(pixels).probabilities
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_embeddings_inputs_modes_and_calibration(model, tokenizer):
    classifier = ZeroShotClassifier(model, tokenizer, findings=["Cardiomegaly", "Emphysema"], batch_size=2)
    pixels = _pixels(5)
    model.train()  # dropout 0.5 in the text tower: the classifier must encode in eval mode
    try:
        direct = classifier.predict(BatchFeature({"pixel_values": pixels}))
        again = classifier.predict(pixels)
        assert model.training  # restored
    finally:
        model.eval()
    torch.testing.assert_close(direct.probabilities, again.probabilities)
    embeds = model.get_cxr_features(pixel_values=pixels).pooler_output.detach()
    from_embeds = classifier.predict_from_embeddings(embeds * 7.0)  # scale does not matter: normalised
    torch.testing.assert_close(from_embeds.probabilities, direct.probabilities, atol=1e-5, rtol=0)
    assert direct.probabilities.shape == (5, 2)
    probs = Calibrator.identity(2).transform(direct.logits)
    torch.testing.assert_close(probs, direct.probabilities, atol=1e-5, rtol=0)
    assert np.isfinite(direct.logits.numpy()).all()


def test_bad_inputs(model, tokenizer):
    classifier = ZeroShotClassifier(model, tokenizer)
    with pytest.raises(ValueError, match="projection width"):
        classifier.predict_from_embeddings(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        classifier.predict(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        classifier.predict({"images": torch.zeros(1, 3, 32, 32)})
    with pytest.raises(ValueError, match="ensemble"):
        ZeroShotClassifier(model, tokenizer, ensemble="max")
    with pytest.raises(ValueError, match="get_text_features"):
        ZeroShotClassifier(torch.nn.Linear(2, 2), tokenizer)
