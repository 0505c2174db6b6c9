"""Synthetic CT-RATE-style reports: positive findings are described, absent ones are not (and the usual ones are
stated negatively), measurements appear, wording varies, and no sentence is copied from the real reports."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.synthetic.writer import _split_scans
from x2ctclip.train.synthetic.study import plan_study
from x2ctclip.train.synthetic.report_sections import NOT_GIVEN

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "data" / "ct_rate_reports" / "train.csv"

# What a report must say when a finding is present, and must not say when it is absent.
POSITIVE = {
    "Medical material": r"pacemaker|sternotomy|sternal sutures|suture materials|port catheter|catheter|clip|\bstent|"
                        r"prosthe",
    "Arterial wall calcification": r"aort\w*[^.]*(atherom|calcif|plaque)|(atherom|calcif|plaque)[^.]*aort",
    "Cardiomegaly": r"cardiomegaly|heart is enlarged|heart size is increased|increase in heart size|"
                    r"cardiothoracic (index|ratio) is (increased|about)|increased heart size",
    "Pericardial effusion": r"(minimal|mild|marked) pericardial|pericardial effusion (reaching|is present|with)|"
                            r"pericardial (fluid|space)[^.]*(thick|surround)|effusion is seen within the pericardial|"
                            r"(^|\. )pericardial effusion($|\.)|with a thickness",
    "Coronary artery wall calcification": r"coronary arter[^.]*(calcif|plaque)|(calcif|plaque|atherom)[^.]*coronary",
    "Hiatal hernia": r"hiatal hernia",
    "Lymphadenopathy": r"lymphadenopath|enlarged lymph nodes are present|enlarged mediastinal lymph|short (axis|diam)",
    "Emphysema": r"emphysem",
    "Atelectasis": r"atelecta",
    "Lung nodule": r"\bnodules?\b",
    "Lung opacity": r"ground.glass",
    "Pulmonary fibrotic sequela": r"sequela|fibrotic|parenchymal bands",
    "Pleural effusion": r"pleural effusion (is present|in the|measuring|reaching)|(minimal|moderate|large|bilateral|"
                        r"left|right)[- \w]* pleural effusion|effusion in both hemithoraces|effusion in the (left|right)",
    "Mosaic attenuation pattern": r"mosaic",
    "Peribronchial thickening": r"peribronchial|bronchial walls are thickened",
    "Consolidation": r"consolidat",
    "Bronchiectasis": r"bronchiecta|dilated bronchi",
    "Interlobular septal thickening": r"\bsepta\b|septal thicken",
}
# Absent findings that a CT-RATE report normally states negatively.
NEGATION = {
    "Pleural effusion": r"no pleural effusion|pleural effusion-thickening is not|free of effusion|no pleural fluid|"
                        r"no pleural effusion or thickening",
    "Pericardial effusion": r"no pericardial|pericardium is not thickened|pericardial effusion-thickening is not",
    "Cardiomegaly": r"normal size and contour|within normal limits|"
                    r"cardiac size is normal|appear natural",
    "Lymphadenopathy": r"no enlarged lymph|no mediastinal or hilar lymph|no pathologically enlarged|not observed in "
                       r"the mediastinum|no lymphadenopathy|does not reach pathological|below pathological|"
                       r"no lymph nodes of pathological size|no lap of pathological size|less than 10 mm",
    "Hiatal hernia": r"esophag",
}


def _report(i: int, labels=None, seed: int = 0, scan: int = 0) -> tuple[dict, np.ndarray, dict]:
    p = plan_study(seed, "train", i + 1, scan, (32, 48, 48), labels=labels)
    return p["report"], p["labels"], p["details"]


def _text(report: dict) -> str:
    return (report["Findings_EN"] + " " + report["Impressions_EN"]).lower()


@pytest.fixture(scope="module")
def reports():
    """Reports of 200 scans as the data set lays them out (about 15 % are follow-up scans 'b')."""
    return [_report(patient - 1, scan=scan) for patient, scan in _split_scans(0, "train", 200)]


NEGATED = re.compile(r"\bno\b|\bnot\b|\bwithout\b|free of")


def test_positive_findings_are_described_and_absent_ones_are_not(reports):
    for report, labels, _ in reports:
        # Negated statements ("No pleural effusion ...") may name absent findings: only affirmative ones count.
        affirmative = ". ".join(s for s in _sentences(_text(report)) if not NEGATED.search(s))
        for name, value in zip(CT_RATE_FINDINGS, labels):
            found = re.search(POSITIVE[name], affirmative) is not None
            assert found == bool(value), (name, value, affirmative)


def test_absent_findings_are_negated(reports):
    for report, labels, _ in reports:
        text = _text(report)
        for name, pattern in NEGATION.items():
            if not labels[CT_RATE_FINDINGS.index(name)]:
                assert re.search(pattern, text), (name, text)


def test_measurements_are_reported():
    def only(name):
        v = np.zeros(18, np.int8)
        v[CT_RATE_FINDINGS.index(name)] = 1
        return v

    seen = {"nodule": 0, "node": 0, "effusion": 0}
    for i in range(40):
        rep, _, det = _report(i, only("Lung nodule"))
        mm = det["Lung nodule"]["nodules"][0]["diameter_mm"]
        seen["nodule"] += f"{mm:g} mm" in rep["Findings_EN"]
        rep, _, det = _report(i, only("Lymphadenopathy"))
        seen["node"] += f"{det['Lymphadenopathy']['nodes'][0]['short_axis_mm']}" in rep["Findings_EN"]
        rep, _, det = _report(i, only("Pleural effusion"))
        depth = max(det["Pleural effusion"]["depth_mm"].values())
        seen["effusion"] += f"{depth} mm" in rep["Findings_EN"]
    assert seen["nodule"] >= 25 and seen["node"] >= 35 and seen["effusion"] >= 20, seen


def test_wording_varies_and_fields_follow_ct_rate(reports):
    normal = np.zeros(18, np.int8)
    texts = {_report(i, normal)[0]["Findings_EN"] for i in range(30)}
    assert len(texts) >= 25  # many phrasings even for normal studies
    clinical = [r["ClinicalInformation_EN"] for r, _, _ in reports]
    assert 0.2 < np.mean([c == NOT_GIVEN for c in clinical]) < 0.5
    for report, _, _ in reports:
        assert set(report) == {"ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"}
        assert report["Findings_EN"].strip() and report["Impressions_EN"].strip()
        assert "  " not in report["Findings_EN"]


def test_reports_are_deterministic():
    assert _report(3)[0] == _report(3)[0]
    assert _report(3)[0] != _report(3, seed=1)[0]


def test_follow_up_scans_compare_with_the_previous_examination():
    text = _report(3, scan=1)[0]["Findings_EN"].lower()
    assert "previous" in text and "previous" not in _report(3)[0]["Findings_EN"].lower()


def _sentences(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", s).strip(" .;:\"").lower() for s in re.split(r"(?<=[.;:])\s+|\"", text)]


@pytest.mark.shared
def test_no_sentence_is_copied_from_real_reports(reports):
    if not REAL.exists():
        pytest.skip(f"{REAL} not available (the real CT-RATE reports live in ../shared)")
    import pandas as pd

    real = {s for t in pd.read_csv(REAL)["report_text"].astype(str) for s in _sentences(t) if len(s.split()) >= 4}
    generated = {s for r, _, _ in reports for field in r.values() for s in _sentences(field) if len(s.split()) >= 4}
    assert not generated & real, sorted(generated & real)[:5]
