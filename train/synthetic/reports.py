"""Radiology reports for synthetic chest CT studies, in the style of CT-RATE's English reports.

The sentences are this project's own templates. They follow the organisation of CT-RATE reports (read for facts and
vocabulary only): findings organ by organ - trachea and bronchi, mediastinum, heart and great vessels, lymph nodes,
oesophagus, lung parenchyma, pleura, upper abdomen, bones - then a short impression. Every positive finding is
described with its measurements (nodule diameter, node short axis, effusion depth in mm) and location (lobes,
sides); absent findings are stated negatively in the section where a radiologist would mention them. Each statement
has several phrasings and statements are shuffled within a section, so a text model cannot key on one fixed
sentence. ``ClinicalInformation_EN`` (and rarely ``Technique_EN``) may be the literal "Not given." as in CT-RATE.

Public entry point: :func:`make_report`.
"""

from __future__ import annotations

import numpy as np

from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.synthetic.report_sections import NOT_GIVEN
from x2ctclip.train.synthetic.report_sections import ReportWriter
from x2ctclip.train.synthetic.report_sections import abdomen_section
from x2ctclip.train.synthetic.report_sections import bones_section
from x2ctclip.train.synthetic.report_sections import esophagus_section
from x2ctclip.train.synthetic.report_sections import join_sentences
from x2ctclip.train.synthetic.report_sections import lungs_section
from x2ctclip.train.synthetic.report_sections import lymph_nodes_section
from x2ctclip.train.synthetic.report_sections import mediastinum_section
from x2ctclip.train.synthetic.report_sections import pleura_section
from x2ctclip.train.synthetic.report_sections import trachea_section


def _impression(w: ReportWriter, pos: set, d: dict) -> str:
    items = []
    if "Lung opacity" in pos and "Consolidation" in pos:
        items.append(w.pick("Consolidation and ground-glass opacities, compatible with pneumonia.",
                            "Ground-glass areas and consolidation (infection?); please correlate with clinical and "
                            "laboratory findings."))
    elif "Consolidation" in pos:
        items.append(w.pick("Consolidation with air bronchograms (pneumonia?).", "Pneumonic consolidation."))
    elif "Lung opacity" in pos:
        items.append(w.pick("Ground-glass opacities; correlation with clinical and laboratory findings is recommended.",
                            "Ground-glass density increases (viral infection?)."))
    phrase = {
        "Pleural effusion": lambda: ("Bilateral pleural effusion." if len(d["Pleural effusion"]["sides"]) == 2
                                     else f"{d['Pleural effusion']['sides'][0].capitalize()} pleural effusion."),
        "Cardiomegaly": lambda: w.pick("Cardiomegaly.", "Increased heart size."),
        "Pericardial effusion": lambda: w.pick("Pericardial effusion.", "Minimal pericardial effusion."
                                               if d["Pericardial effusion"]["thickness_mm"] < 8 else
                                               "Pericardial effusion."),
        "Lymphadenopathy": lambda: w.pick("Mediastinal lymphadenopathy.", "Enlarged mediastinal lymph nodes."),
        "Lung nodule": lambda: w.pick("Nonspecific pulmonary nodule(s); follow-up is recommended.",
                                      "Millimetric nodules in the lung." if d["Lung nodule"]["nodules"][0]
                                      ["diameter_mm"] < 10 else "Pulmonary nodule."),
        "Emphysema": lambda: w.pick("Emphysema.", "Bilateral emphysematous lung changes."),
        "Atelectasis": lambda: w.pick("Atelectasis.", "Atelectatic changes."),
        "Pulmonary fibrotic sequela": lambda: w.pick("Fibrotic sequelae changes.", "Pleuroparenchymal sequelae."),
        "Mosaic attenuation pattern": lambda: "Mosaic attenuation pattern.",
        "Interlobular septal thickening": lambda: "Interlobular septal thickening.",
        "Bronchiectasis": lambda: w.pick("Bronchiectasis.", "Bronchiectatic changes."),
        "Peribronchial thickening": lambda: "Peribronchial thickening.",
        "Hiatal hernia": lambda: w.pick("Hiatal hernia.", "Hiatal hernia of sliding type."),
        "Arterial wall calcification": lambda: ("Calcific atherosclerosis of the aorta and the coronary arteries."
                                                if "Coronary artery wall calcification" in pos else
                                                "Aortic atherosclerosis."),
        "Coronary artery wall calcification": lambda: ("" if "Arterial wall calcification" in pos else
                                                       "Coronary artery calcification."),
        "Medical material": lambda: w.pick("Postoperative and device-related changes.",
                                           "Medical devices as described."),
    }
    for name in CT_RATE_FINDINGS:
        if name in pos and name in phrase:
            items.append(phrase[name]())
    items = [i for i in items if i]
    if not items:
        return w.pick("Thoracic CT within normal limits.", "No significant pathology is seen in the thorax.",
                      "Normal chest CT.", "No acute cardiopulmonary pathology.")
    return join_sentences(items)


CLINICAL = {
    "infection": ("Fever and cough.", "Cough, fever, elevated CRP.", "Shortness of breath and fever.",
                  "Suspected pneumonia.", "COVID-19 suspicion."),
    "nodule": ("Follow-up of a pulmonary nodule.", "Nodule seen on a previous examination.", "Lung nodule follow-up."),
    "cardiac": ("Dyspnoea.", "Shortness of breath, known heart failure.", "Chest pain."),
    "other": ("Cough.", "Chest pain.", "Malignancy staging.", "Shortness of breath.", "Chronic cough.",
              "Preoperative evaluation.", "Trauma.", "The patient has a history of breast ca; staging.",
              "Evaluation for metastasis in a patient operated for colon ca.", "Weight loss."),
}


def _clinical(w: ReportWriter, pos: set) -> str:
    if w.chance(0.35):
        return NOT_GIVEN
    if pos & {"Consolidation", "Lung opacity"} and w.chance(0.6):
        return w.pick(*CLINICAL["infection"])
    if "Lung nodule" in pos and w.chance(0.4):
        return w.pick(*CLINICAL["nodule"])
    if pos & {"Cardiomegaly", "Pleural effusion", "Pericardial effusion"} and w.chance(0.5):
        return w.pick(*CLINICAL["cardiac"])
    return w.pick(*CLINICAL["other"])


def _technique(w: ReportWriter) -> str:
    if w.chance(0.05):
        return NOT_GIVEN
    return w.pick(
        "Non-contrast thorax CT was obtained in the axial plane from the lung apices to the upper abdomen; "
        "coronal and sagittal reformats were reviewed.",
        "Axial non-contrast chest CT images with 1.5 mm slice thickness; lung and mediastinal windows were evaluated.",
        "Helical chest CT without intravenous contrast, reconstructed with soft tissue and lung kernels.",
        "Unenhanced thoracic CT in the supine position with multiplanar reconstructions.",
    )


def _comparison(w: ReportWriter, pos: set) -> list[str]:
    """Sentences of a follow-up scan compared with the patient's previous examination."""
    date = f"{int(w.rng.integers(1, 28)):02d}.{int(w.rng.integers(1, 13)):02d}.{int(w.rng.integers(2017, 2021))}"
    out = [w.pick(f"The current examination was compared with the previous examination dated {date}.",
                  f"Compared with the previous CT dated {date}:")]
    if not pos:
        out.append("No significant difference is seen.")
    elif "Lung nodule" in pos and w.chance(0.6):
        out.append(w.pick("The nodules are stable in size and number.", "The nodule shows no significant change."))
    elif pos & {"Consolidation", "Lung opacity", "Pleural effusion"}:
        out.append(w.pick("The parenchymal and pleural findings have newly developed.",
                          "The findings have increased compared to the previous examination."))
    else:
        out.append(w.pick("The described findings show no significant interval change.",
                          "The findings are similar to the previous study."))
    return out


def make_report(rng: np.random.Generator, labels, details: dict, patient, follow_up: bool = False
                ) -> dict[str, str]:
    """A CT-RATE-style report for a study.

    Args:
        rng: the report's own generator (wording only).
        labels: ``(18,)`` 0/1 in canonical order. details: from :func:`x2ctclip.train.synthetic.findings.plan_findings`.
        patient: a :class:`x2ctclip.train.synthetic.anatomy.Patient` (age drives degenerative changes).
        follow_up: the scan is a patient's second one: the report compares with the previous examination.

    Returns:
        ``{"ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"}``.
    """
    w = ReportWriter(rng)
    pos = {name for name, v in zip(CT_RATE_FINDINGS, labels) if v}
    sections = [
        trachea_section(w),
        mediastinum_section(w, pos, details),
        lymph_nodes_section(w, pos, details),
        esophagus_section(w, pos, details),
        lungs_section(w, pos, details),
        pleura_section(w, pos, details),
        abdomen_section(w, details),
        bones_section(w, patient.age),
    ]
    # Trachea, mediastinum, nodes and oesophagus may trade places, as in real reports; lungs come after them.
    head = w.shuffle(sections[:4]) if w.chance(0.3) else sections[:4]
    findings_text = join_sentences(s for sec in head + sections[4:] for s in sec)
    if follow_up:
        findings_text = join_sentences(_comparison(w, pos)) + " " + findings_text
    return {
        "ClinicalInformation_EN": _clinical(w, pos),
        "Technique_EN": _technique(w),
        "Findings_EN": findings_text,
        "Impressions_EN": _impression(w, pos, details),
    }
