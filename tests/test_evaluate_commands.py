"""``x2ctclip evaluate zeroshot|retrieval|calibrate|all`` on tiny models and a tiny preprocessed folder."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scripts.eval_fixtures import make_model, make_preprocessed
from transformers import AutoModelForImageClassification

from x2ctclip import CT_RATE_FINDINGS, X2CTCLIPForAbnormalityClassification, X2CTCLIPModel
from x2ctclip.processors import X2CTCLIPImageProcessor, load_report_tokenizer
from x2ctclip.train.evaluation.calibration import Calibrator
from x2ctclip.train.cli.app import main
from x2ctclip.train.data.folders import load_preprocessed
from x2ctclip.train.evaluation.classification import classification_metrics_with_ci
from x2ctclip.train.evaluation.retrieval_report import evaluate_retrieval
from x2ctclip.train.evaluation.cases import preprocessed_cases
from x2ctclip.train.hub.results import load_evaluation_results
from x2ctclip.train.evaluation.metrics import classification_report
from x2ctclip.train.evaluation.retrieval import retrieval_metrics
from x2ctclip.train.evaluation.uncertainty import delong_test_per_finding
from x2ctclip.zero_shot import ZeroShotClassifier


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny convolutions are many times faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from x2ctclip.train.data.embedding_cache import cache_embeddings

    root = tmp_path_factory.mktemp("evaluate")
    data = make_preprocessed(root / "data", {"valid": 16, "test": 16})
    model_a = make_model(root / "model_a", seed=0)
    model_b = make_model(root / "model_b", towers=("cxr", "text"), cxr="swin", seed=1)
    cache = root / "cache"
    cache_embeddings(model_a, data, cache, batch_size=16, progress=False)
    return {"root": root, "data": data, "a": model_a, "b": model_b, "cache": cache}


def _copy_model(inputs, tmp_path, name="a"):
    return shutil.copytree(inputs[name], tmp_path / f"model_{name}")


def _direct_probabilities(model_dir, data, split="test", logits=False):
    """Zero-shot probabilities (or log-odds) without the command: processor -> model -> ZeroShotClassifier."""
    from transformers import AutoImageProcessor

    model = X2CTCLIPModel.from_pretrained(model_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(model_dir)(list(load_preprocessed(data, split)["cxr"]))["pixel_values"]
    tokenizer = load_report_tokenizer(model_dir)
    out = ZeroShotClassifier(model, tokenizer, max_length=64).predict(pixels)
    return (out.logits if logits else out.probabilities).double().numpy()


def _read_predictions(path):
    with open(path) as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.asarray([[float(v) for v in r[1:]] for r in rows[1:]])


def test_zeroshot_with_intervals_and_comparison(inputs, tmp_path):
    out = tmp_path / "out"
    code = main(["evaluate", "zeroshot", "--model", str(inputs["a"]), "--data", str(inputs["data"]), "--split", "test",
                 "--n-bootstrap", "60", "--seed", "7", "--compare", str(inputs["b"]), "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "zeroshot_test.json").read_text())
    labels = np.asarray(load_preprocessed(inputs["data"], "test")["labels"], dtype=np.float64)
    expected = _direct_probabilities(inputs["a"], inputs["data"])
    header, stored = _read_predictions(out / "zeroshot_test_predictions.csv")
    assert header[1:] == list(CT_RATE_FINDINGS)
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
    report = classification_report(labels, expected, CT_RATE_FINDINGS, threshold=0.5).to_dict()
    entry = record["results"][0]
    assert entry["report"]["auroc_macro"] == pytest.approx(report["auroc_macro"], abs=1e-6)
    assert [f["auroc"] for f in entry["report"]["findings"]] == pytest.approx([f["auroc"] for f in report["findings"]],
                                                                              abs=1e-6)  # fmt: skip
    assert entry["task"]["type"] == "zero-shot-image-classification" and entry["calibrated"] is False
    assert record["bootstrap"] == {"n_resamples": 60, "confidence": 0.95, "seed": 7,
                                   "method": "percentile, cases resampled with replacement"}  # fmt: skip
    assert record["model"]["prompt_templates"] == X2CTCLIPModel.from_pretrained(inputs["a"]).config.prompt_templates
    assert record["data"]["split"] == "test" and record["data"]["n_cases"] == 16 and record["seed"] == 7
    macro = entry["confidence_intervals"]["auroc_macro"]
    assert macro["low"] <= macro["estimate"] <= macro["high"] and macro["n_resamples"] == 60
    assert len(entry["confidence_intervals"]["auroc"]) == 18
    # Same seed, same intervals (the resamples are seeded).
    again = classification_metrics_with_ci(labels, stored, np.full(18, 0.5), n_bootstrap=60, seed=7)
    assert again["auroc_macro"]["low"] == pytest.approx(macro["low"], abs=1e-5)
    # The model card reads the file.
    (card,) = load_evaluation_results(out / "zeroshot_test.json")
    assert card.n_cases == 16 and any(m[0] == "roc_auc" for m in card.metrics) and len(card.per_finding) == 18

    comparison = record["comparison"]
    _, stored_b = _read_predictions(out / "zeroshot_test_predictions.csv")
    scores_b = _direct_probabilities(inputs["b"], inputs["data"])
    delong = delong_test_per_finding(labels, stored, scores_b, CT_RATE_FINDINGS)
    for name, result in delong.items():
        assert comparison["delong"][name]["p_value"] == pytest.approx(result.p_value, abs=1e-5), name
    diff = comparison["auroc_macro_difference"]
    assert diff["estimate"] == pytest.approx(comparison["auroc_macro_a"] - comparison["auroc_macro_b"], abs=1e-9)
    markdown = (out / "zeroshot_test.md").read_text()
    assert "| macro |" in markdown and "DeLong p" in markdown and "Cardiomegaly" in markdown


def test_retrieval_from_cache_equals_retrieval_from_towers(inputs, tmp_path):
    code = main(["evaluate", "retrieval", "--model", str(inputs["a"]), "--data", str(inputs["data"]), "--cache",
                 str(inputs["cache"]), "--out", str(tmp_path / "cache"), "--no-progress"])  # fmt: skip
    assert code == 0
    from_cache = json.loads((tmp_path / "cache" / "retrieval_test.json").read_text())
    cases = preprocessed_cases(inputs["data"], "test")
    from_towers = evaluate_retrieval(inputs["a"], cases, tmp_path / "towers", progress=False)
    directions = from_cache["results"][0]["directions"]
    assert list(directions) == ["CXR->report", "report->CXR", "CXR->CT", "CT->CXR", "CT->report", "report->CT",
                                "CT->CT", "CXR->CXR"]  # fmt: skip
    # The cache was computed in other batches than the towers here, so latents differ in the last float bits; the
    # tiny random model has near-tied similarities, and one such tie can swap two neighbours of one query (a full run
    # once moved MAP@5 by 0.003). Allow that one swap: a metric off by more than one query's share is a real bug.
    one_query = 1.0 / len(cases.labels) + 1e-6
    for name, values in directions.items():
        other = from_towers["results"][0]["directions"][name]
        for key, value in values.items():
            tolerance = {"median_rank": 1.0, "mean_rank": one_query}.get(key, one_query)
            if value is None or key.startswith("n_"):
                assert other[key] == value, (name, key)  # sizes exactly; NaN ranks (exclude_self) stay None
            else:
                assert other[key] == pytest.approx(value, abs=tolerance), (name, key)
    assert "recall@5" not in directions["CT->CT"] and "map@10" in directions["CT->CT"]
    assert from_cache["latents"]["ct"].startswith("embedding cache")
    assert from_towers["latents"]["ct"] == "the model's towers"
    # One direction by hand: CXR latents of the model against the cached report latents.
    from x2ctclip.train.data.folders import load_embedding_cache
    from x2ctclip.train.evaluation.models import encode_images, load_model

    loaded = load_model(inputs["a"], "cpu")
    cxr = encode_images(loaded, cases.images, progress=False)
    text = np.asarray(load_embedding_cache(inputs["cache"], "test")["text_embeds"])
    labels = cases.labels.astype(int)
    manual = retrieval_metrics(cxr, text, labels).to_dict()
    assert manual["recall@10"] == pytest.approx(directions["CXR->report"]["recall@10"])
    assert manual["map@5"] == pytest.approx(directions["CXR->report"]["map@5"])
    results = load_evaluation_results(tmp_path / "cache" / "retrieval_test.json")
    assert any(m[1] == "CXR->report Recall@10" for m in results[0].metrics)


def test_calibrate_stores_the_calibration_and_zeroshot_uses_it(inputs, tmp_path):
    model = _copy_model(inputs, tmp_path)
    out = tmp_path / "out"
    code = main(["evaluate", "calibrate", "--model", str(model), "--data", str(inputs["data"]), "--method", "platt",
                 "--thresholds", "0.8", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    config = json.loads((model / "config.json").read_text())
    calibrator = Calibrator.from_dict(config["calibration"])
    assert calibrator.method == "platt" and calibrator.threshold_method == "sensitivity>=0.8"
    assert json.loads((model / "calibration.json").read_text())["cxr"] == config["calibration"]  # the demo's file
    assert config["architectures"] == ["X2CTCLIPModel"] and "text_config" in config  # the rest is kept
    assert not [p for p in model.iterdir() if p.name.endswith(".tmp")]
    record = json.loads((out / "calibration_valid.json").read_text())
    assert (out / "reliability_valid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["ece"]["before"]["pooled"] is not None and len(record["findings"]) == 18
    assert X2CTCLIPModel.from_pretrained(model).config.calibration == config["calibration"]

    main(["evaluate", "zeroshot", "--model", str(model), "--data", str(inputs["data"]), "--n-bootstrap", "0",
          "--out", str(out), "--no-progress"])  # fmt: skip
    entry = json.loads((out / "zeroshot_test.json").read_text())["results"][0]
    assert entry["calibrated"] is True and entry["confidence_intervals"] == {}
    assert set(entry["thresholds"]["sources"]) <= {"calibration (sensitivity>=0.8)", "default 0.5"}
    np.testing.assert_allclose(entry["thresholds"]["values"],
                               [t if np.isfinite(t) else 0.5 for t in calibrator.thresholds], atol=1e-12)  # fmt: skip
    logits = _direct_probabilities(inputs["a"], inputs["data"], logits=True)
    _, stored = _read_predictions(out / "zeroshot_test_predictions.csv")
    # Platt slopes of a random tiny model are large (its log-odds are tiny), so float32 round-off is amplified.
    np.testing.assert_allclose(stored, calibrator.transform(logits), atol=1e-3)
    assert np.abs(stored - 1 / (1 + np.exp(-logits))).max() > 0.05  # and it is not the raw probability


def test_all_writes_every_result_for_the_model_card(inputs, tmp_path):
    model = _copy_model(inputs, tmp_path)
    code = main(["evaluate", "all", "--model", str(model), "--data", str(inputs["data"]), "--cache",
                 str(inputs["cache"]), "--n-bootstrap", "20", "--no-progress"])  # fmt: skip
    assert code == 0
    out = model / "evaluation"
    summary = json.loads((out / "evaluation.json").read_text())
    assert {r["task"]["type"] for r in summary["results"]} == {"zero-shot-image-classification", "feature-extraction"}
    assert summary["model"]["calibration"]["method"] == "temperature"  # calibrated first, then evaluated
    assert len(load_evaluation_results(out / "evaluation.json")) == 2
    for name in ("calibration_valid.json", "zeroshot_test.json", "retrieval_test.json", "evaluation.md"):
        assert (out / name).is_file(), name


def test_classifier_folder_on_an_external_collection(inputs, tmp_path):
    base = X2CTCLIPModel.from_pretrained(inputs["a"])
    torch.manual_seed(3)
    classifier = X2CTCLIPForAbnormalityClassification.from_x2ctclip(base, classifier_weight=torch.randn(18, 16))
    folder = tmp_path / "classifier"
    classifier.save_pretrained(folder)
    X2CTCLIPImageProcessor(size=32, crop_size=32).save_pretrained(folder)
    rows = load_preprocessed(inputs["data"], "test")
    images = tmp_path / "external"
    images.mkdir()
    mimic = ["Emphysema", "Atelectasis", "Hiatal hernia"]
    lines = ["dicom_id,path,report," + ",".join(f.lower() for f in mimic)]
    for i, (cxr, labels, report) in enumerate(zip(rows["cxr"], rows["labels"], rows["report"])):
        Image.fromarray(np.asarray(cxr)).save(images / f"{i}.png")
        values = [str(int(labels[CT_RATE_FINDINGS.index(f)])) for f in mimic]
        values[0] = "" if i == 3 else values[0]  # one unannotated case
        lines.append(f"case{i},{i}.png,{report}," + ",".join(values))
    (images / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = main(["evaluate", "zeroshot", "--model", str(folder), "--external", str(images), "--mapping", "mimic-ct",
                 "--n-bootstrap", "30", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "zeroshot_external-external.json").read_text())
    entry = record["results"][0]
    assert entry["task"]["type"] == "image-classification" and record["model"]["kind"] == "classifier"
    findings = {f["name"]: f for f in entry["report"]["findings"]}
    assert list(findings) == [
        "Arterial wall calcification", "Pericardial effusion", "Coronary artery wall calcification", "Hiatal hernia",
        "Lymphadenopathy", "Emphysema", "Atelectasis", "Mosaic attenuation pattern", "Peribronchial thickening",
        "Bronchiectasis", "Interlobular septal thickening"]  # fmt: skip
    assert findings["Emphysema"]["n_positive"] + findings["Emphysema"]["n_negative"] == 15  # the blank is excluded
    assert "Bronchiectasis" in entry["report"]["excluded_findings"]  # no column: NaN, excluded
    pixels = X2CTCLIPImageProcessor(size=32, crop_size=32)([str(images / f"{i}.png") for i in range(16)])
    with torch.no_grad():
        probs = classifier.eval().predict(pixels["pixel_values"]).probabilities.double().numpy()
    labels = np.asarray(rows["labels"], dtype=np.float64)
    j = CT_RATE_FINDINGS.index("Atelectasis")
    from x2ctclip.train.evaluation.metrics import roc_auc

    assert findings["Atelectasis"]["auroc"] == pytest.approx(roc_auc(labels[:, j], probs[:, j]), abs=1e-6)

    # Calibrating the classifier folder: predict() of the reloaded model applies what the command fitted.
    assert main(["evaluate", "calibrate", "--model", str(folder), "--data", str(inputs["data"]), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert not (folder / "calibration.json").exists()  # the demo file is for zero-shot models only
    calibrated = AutoModelForImageClassification.from_pretrained(folder).eval()
    calibrator = Calibrator.from_dict(calibrated.config.calibration)
    prediction = calibrated.predict(pixels["pixel_values"])
    torch.testing.assert_close(prediction.probabilities, calibrator.transform(prediction.logits), atol=1e-6, rtol=0)
    assert calibrator.method == "temperature" and calibrator.threshold_method == "youden"

    # The report column of the collection gives CXR <-> report retrieval with a model that has a report tower.
    assert main(["evaluate", "retrieval", "--model", str(inputs["a"]), "--external", str(images), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    retrieval = json.loads((out / "retrieval_external-external.json").read_text())
    assert list(retrieval["results"][0]["directions"]) == ["CXR->report", "report->CXR"]
    assert retrieval["map_at"] == [] and "MAP@K is not computed" in " ".join(retrieval["notes"])


def test_user_errors_exit_with_a_message(inputs, capsys, tmp_path):
    model, data = str(inputs["a"]), str(inputs["data"])
    assert main(["evaluate", "zeroshot", "--model", model]) == 2
    assert "exactly one of --data" in capsys.readouterr().err
    assert main(["evaluate", "zeroshot", "--model", model, "--data", data, "--split", "train"]) == 2
    assert "no preprocessed split 'train'" in capsys.readouterr().err
    assert main(["evaluate", "retrieval", "--model", str(tmp_path), "--data", data]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["evaluate", "zeroshot", "--model", model, "--external", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: external collection not found" in capsys.readouterr().err
