"""External validation collections (x2ctclip.train.evaluation.external_sets): column matching, mappings, labels, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.evaluation.external_sets import (
    MIMIC_CT_FINDINGS,
    RADCHEST_CT_MAPPING,
    load_external,
    normalize_column,
    parse_label,
)


def _touch(folder, *names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read by the loader")


def _csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_auto_mapping_matches_names_case_and_aliases(tmp_path):
    _touch(tmp_path, "a.png", "img/b.JPG", "c.dcm")
    csv = _csv(tmp_path / "set.csv", ["Image_Path", "PLEURAL-EFFUSION", "cardiomegaly", "Support Devices", "Nodule",
                                      "Report", "unrelated"],
               [["a.png", 1, 0, "yes", "", "There is effusion.", 7],
                ["img/b.JPG", 0, "1.0", "no", -1, "Normal.", 8],
                [str(tmp_path / "c.dcm"), "", "False", "TRUE", "uncertain", "Nodule.", 9]])  # fmt: skip
    ext = load_external(csv)
    assert ext.mapping == "auto" and len(ext) == 3
    assert ext.target_names == list(CT_RATE_FINDINGS)
    assert ext.images == [str(tmp_path / "a.png"), str(tmp_path / "img/b.JPG"), str(tmp_path / "c.dcm")]
    assert ext.names == ["a", "b", "c"]
    assert ext.reports == ["There is effusion.", "Normal.", "Nodule."]
    col = {n: j for j, n in enumerate(ext.target_names)}
    np.testing.assert_array_equal(ext.labels[:, col["Pleural effusion"]], [1, 0, np.nan])
    np.testing.assert_array_equal(ext.labels[:, col["Cardiomegaly"]], [0, 1, 0])
    np.testing.assert_array_equal(ext.labels[:, col["Medical material"]], [1, 0, 1])
    assert np.isnan(ext.labels[:, col["Lung nodule"]]).all()  # blank, -1 and "uncertain" are not annotated
    assert ext.targets[col["Pleural effusion"]].column == "PLEURAL-EFFUSION"
    assert sorted(ext.annotated) == ["Cardiomegaly", "Medical material", "Pleural effusion"]
    assert "Emphysema" in ext.unmatched and "unrelated" not in str(ext.describe()["targets"])
    assert np.isnan(ext.labels[:, col["Emphysema"]]).all()
    labels = ext.labels_for_findings(["Cardiomegaly", "Pleural effusion"])
    np.testing.assert_array_equal(labels, ext.labels[:, [col["Cardiomegaly"], col["Pleural effusion"]]])


def test_folder_with_labels_csv_and_case_ids(tmp_path):
    _touch(tmp_path, "x1.png", "x2.png")
    _csv(tmp_path / "labels.csv", ["id", "file", "Emphysema"], [["p1", "x1.png", 1], ["p2", "x2.png", 0]])
    _csv(tmp_path / "other.csv", ["nothing"], [[1]])  # labels.csv wins over other CSVs
    ext = load_external(tmp_path)
    assert ext.names == ["p1", "p2"] and ext.reports is None
    assert ext.annotated == ["Emphysema"]


def test_mimic_ct_mapping_keeps_its_eleven_labels(tmp_path):
    _touch(tmp_path, "a.png", "b.png")
    header = ["path"] + list(CT_RATE_FINDINGS)
    rows = [["a.png"] + [1] * 18, ["b.png"] + [0] * 18]
    ext = load_external(_csv(tmp_path / "mimic.csv", header, rows), "mimic-ct")
    assert ext.target_names == list(MIMIC_CT_FINDINGS) and len(MIMIC_CT_FINDINGS) == 11
    assert "Cardiomegaly" not in ext.target_names and not ext.unmatched
    np.testing.assert_array_equal(ext.labels, [[1] * 11, [0] * 11])


def test_radchest_mapping_merges_calcification_and_scores_with_the_maximum(tmp_path):
    _touch(tmp_path, "a.png", "b.png")
    header = ["filename", "calcification", "pleural_effusion", "nodule", "hernia"]
    ext = load_external(_csv(tmp_path / "rad.csv", header, [["a.png", 1, 0, 1, 0], ["b.png", 0, 1, 0, 0]]),
                        "radchest-ct")  # fmt: skip
    assert ext.target_names == list(RADCHEST_CT_MAPPING) and len(ext.targets) == 15
    calcification = ext.targets[0]
    assert calcification.findings == ("Arterial wall calcification", "Coronary artery wall calcification")
    assert set(ext.unmatched) == set(RADCHEST_CT_MAPPING) - {"calcification", "pleural_effusion", "nodule", "hernia"}
    rng = np.random.default_rng(0)
    probs = rng.random((2, 18))
    scores = ext.scores_from_findings(probs, CT_RATE_FINDINGS)
    arterial, coronary = CT_RATE_FINDINGS.index(calcification.findings[0]), CT_RATE_FINDINGS.index(calcification.findings[1])
    np.testing.assert_allclose(scores[:, 0], np.maximum(probs[:, arterial], probs[:, coronary]))
    nodule = ext.target_names.index("nodule")
    np.testing.assert_allclose(scores[:, nodule], probs[:, CT_RATE_FINDINGS.index("Lung nodule")])
    # A merged label cannot be attributed to one finding: it is NaN in the model's finding order.
    per_finding = ext.labels_for_findings(CT_RATE_FINDINGS)
    assert np.isnan(per_finding[:, arterial]).all()
    np.testing.assert_array_equal(per_finding[:, CT_RATE_FINDINGS.index("Lung nodule")], [1, 0])
    with pytest.raises(ValueError, match="has no finding 'Arterial wall calcification'"):
        ext.scores_from_findings(probs[:, 2:], CT_RATE_FINDINGS[2:])


def test_custom_mapping_dict_and_json_file(tmp_path):
    _touch(tmp_path, "a.png")
    csv = _csv(tmp_path / "c.csv", ["image", "calc", "heart"], [["a.png", 1, 0]])
    mapping = {"calc": ["Arterial wall calcification", "Coronary artery wall calcification"], "heart": "Cardiomegaly"}
    ext = load_external(csv, mapping)
    assert ext.mapping == "custom" and ext.target_names == ["calc", "heart"]
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    assert load_external(csv, tmp_path / "m.json").target_names == ["calc", "heart"]
    with pytest.raises(ValueError, match="each must be one of the 18"):
        load_external(csv, {"heart": "Big heart"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_external(csv, tmp_path / "missing.json")
    with pytest.raises(ValueError, match="mapping must be one of"):
        load_external(csv, "chexpert")


@pytest.mark.parametrize(
    "header, rows, error, match",
    [
        (["image", "Emphysema"], [["missing.png", 1]], FileNotFoundError, r"c\.csv: row 2: .*missing\.png does not exist"),
        (["picture", "Emphysema"], [["a.png", 1]], ValueError, r"c\.csv: no image path column"),
        (["image", "Foo"], [["a.png", 1]], ValueError, r"c\.csv: no column matches a label"),
        (["image", "Emphysema"], [["a.png", "maybe"]], ValueError, r"c\.csv: row 2, column 'Emphysema': cannot read 'maybe'"),
        (["image", "Effusion", "Pleural effusion"], [["a.png", 1, 1]], ValueError, r"all match label 'Pleural effusion'"),
        (["image", "Emphysema"], [["a.txt", 1]], ValueError, r"a\.txt is not a PNG / JPEG / TIFF / DICOM"),
        (["image", "Emphysema"], [["a.png", 1], ["a.png", 0]], ValueError, r"duplicated case ids \['a'\]"),
    ],
)
def test_clear_errors_naming_the_file(tmp_path, header, rows, error, match):
    _touch(tmp_path, "a.png", "a.txt")
    with pytest.raises(error, match=match):
        load_external(_csv(tmp_path / "c.csv", header, rows))


def test_folder_and_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_external(tmp_path / "nope")
    (tmp_path / "a.csv").write_text("image,Emphysema\n")
    (tmp_path / "b.csv").write_text("image,Emphysema\n")
    with pytest.raises(ValueError, match=r"exactly one \.csv file .*found a\.csv, b\.csv"):
        load_external(tmp_path)
    with pytest.raises(ValueError, match="lists no images"):
        load_external(tmp_path / "a.csv")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a CSV file"):
        load_external(tmp_path / "x.png")
    # Report-only collections (retrieval) need no label column when asked so.
    _touch(tmp_path / "r", "a.png")
    ext = load_external(_csv(tmp_path / "r" / "r.csv", ["image", "report"], [["a.png", "Text."]]), require_labels=False)
    assert ext.reports == ["Text."] and np.isnan(ext.labels).all()


def test_label_parsing_and_column_normalisation():
    assert [parse_label(v) for v in (1, "1", "1.0", "Yes", "present", 0, "0.0", "no", "Negative")] == [1] * 5 + [0] * 4
    assert all(math.isnan(parse_label(v)) for v in ("", " ", "nan", "NA", "-1", "-1.0", "Uncertain", None, float("nan")))
    with pytest.raises(ValueError, match="cannot read '2'"):
        parse_label("2")
    assert normalize_column("  Pleural_Effusion ") == normalize_column("pleural-effusion") == "pleural effusion"
