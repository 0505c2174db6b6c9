"""Report sentences per anatomical section, written from the planned findings."""

from __future__ import annotations

import numpy as np


NOT_GIVEN = "Not given."

SEGMENTS = {
    "right upper": ("apical", "posterior", "anterior"),
    "right middle": ("lateral", "medial"),
    "right lower": ("superior", "posterobasal", "laterobasal", "anterobasal", "mediobasal"),
    "left upper": ("apicoposterior", "anterior", "superior lingular", "inferior lingular"),
    "left lower": ("superior", "posterobasal", "laterobasal", "anteromediobasal"),
}


class ReportWriter:
    """Picks phrasings with a generator; keeps the wording logic readable."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, *options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def shuffle(self, items: list) -> list:
        order = self.rng.permutation(len(items))
        return [items[i] for i in order]

    def lobe(self, lobe: str, segment: bool = False) -> str:
        side, part = lobe.split()
        seg = ""
        if segment and self.chance(0.6):
            seg = f" {self.pick(*SEGMENTS[lobe])} segment"
            if part == "upper" and "lingular" in seg:
                return self.pick(f"the{seg} of the left lung upper lobe", f"the left lung{seg}")
        if part == "middle":
            return self.pick("the right lung middle lobe", "the middle lobe of the right lung",
                             "the right middle lobe") + (f"{seg}" if seg else "")
        return self.pick(f"the {side} lung {part} lobe", f"the {part} lobe of the {side} lung",
                         f"the {side} {part} lobe") + (f"{seg}" if seg else "")

    def lobes(self, lobes: list[str]) -> str:
        """Lobes joined naturally; both lower lobes become 'both lung lower lobes'."""
        if not lobes:
            return self.pick("both lungs", "bilateral lung parenchyma")
        if set(lobes) == {"right lower", "left lower"}:
            return self.pick("the lower lobes of both lungs", "both lung lower lobes", "bilateral lower lobes")
        if set(lobes) == {"right upper", "left upper"}:
            return self.pick("the upper lobes of both lungs", "both lung upper lobes", "bilateral upper lobes")
        parts = [self.lobe(lobe) for lobe in lobes]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    @staticmethod
    def sides(sides: list[str]) -> str:
        return "bilateral" if len(sides) == 2 else sides[0]


def join_sentences(sentences) -> str:
    return " ".join(s.strip() for s in sentences if s)


# ------------------------------------------------------------------------------------------------ sections
def trachea_section(w: ReportWriter) -> list[str]:
    return [w.pick(
        "The trachea and both main bronchi are patent.",
        "Trachea and main bronchi are open and no endoluminal lesion is seen.",
        "The lumens of the trachea and both main bronchi are clear.",
        "Trachea and both main bronchi have a normal calibre and are open.",
        "No obstructing lesion is present in the trachea or the main bronchi.",
        "Both main bronchi and the trachea are open, and their lumen shows no occlusive lesion.",
        "The tracheal lumen and both main bronchi are natural; no obstructive pathology is distinguishable.",
        "The trachea and both main bronchi were open, and no lesion filling their lumen was seen.",
    )]


def mediastinum_section(w: ReportWriter, pos: set, d: dict) -> list[str]:
    """The mediastinum and heart sentences of a report (``w`` words them) for the positive findings ``pos`` with
    their details ``d``.

    Longer than 80 lines on purpose: one short branch per finding, in the order a radiologist reports them.
    """
    out = []
    if "Cardiomegaly" in pos:
        ctr = d["Cardiomegaly"]["ctr"]
        out.append(w.pick(
            "The heart is enlarged (cardiomegaly).",
            f"Cardiomegaly is present; the cardiothoracic ratio is about {ctr:.2f}.",
            "Heart size is increased.",
            "The cardiothoracic index is increased in favor of cardiomegaly.",
            f"There is an increase in heart size, cardiothoracic ratio {ctr:.2f}.",
            f"The heart appears enlarged beyond normal limits; the CTR measured approximately {ctr:.2f}.",
        ))
    else:
        out.append(w.pick(
            "The heart has a normal size and contour.",
            "The heart is of normal size and contour.",
            "Heart contour and dimensions are within normal limits.",
            "Cardiac size is normal.",
            "The heart and mediastinal vascular structures appear natural.",
            "Heart compartments have a natural appearance; the CTR is within normal limits.",
        ))
    if "Pericardial effusion" in pos:
        t = d["Pericardial effusion"]["thickness_mm"]
        amount = "Minimal" if t < 8 else ("Mild" if t < 14 else "Marked")
        out.append(w.pick(
            f"{amount} pericardial effusion is present, measuring {t} mm at its thickest point.",
            f"Pericardial effusion reaching {t} mm in thickness is seen.",
            f"{amount} effusion is seen within the pericardial space.",
            f"There is a pericardial effusion with a thickness of {t} mm.",
            f"{amount} pericardial fluid, {t} mm thick, surrounds the heart.",
        ))
    else:
        out.append(w.pick(
            "No pericardial effusion or thickening is seen.",
            "There is no pericardial effusion or pericardial thickening.",
            "The pericardium is not thickened and contains no effusion.",
            "Pericardial effusion-thickening is not present.",
            "No pericardial fluid is present.",
        ))
    arterial = "Arterial wall calcification" in pos
    coronary = "Coronary artery wall calcification" in pos
    if arterial and coronary:
        vessels = d["Coronary artery wall calcification"]["vessels"]
        out.append(w.pick(
            "Calcified atheroma plaques are seen in the aorta and coronary arteries.",
            "Atherosclerotic changes with calcified plaques are present in the thoracic aorta and the coronary "
            "arteries.",
            f"There are calcific atheromatous plaques in the walls of the aortic arch, the descending aorta and the "
            f"coronary arteries ({', '.join(vessels)}).",
            "Wall calcifications are noted in the aorta and coronary arteries.",
        ))
    elif arterial:
        sites = d["Arterial wall calcification"]["sites"]
        site = sites[0] if len(sites) == 1 else ", ".join(sites[:-1]) + " and " + sites[-1]
        out.append(w.pick(
            f"Calcified atheroma plaques are present in the wall of the {site}.",
            f"Atherosclerotic wall calcifications are noted in the {site}.",
            f"There are calcific atheromatous plaques along the {site}.",
            "Atherosclerotic changes with wall calcification are seen in the thoracic aorta.",
        ))
    elif coronary:
        vessels = d["Coronary artery wall calcification"]["vessels"]
        names = {"LAD": "left anterior descending artery", "LCx": "circumflex artery", "RCA": "right coronary artery"}
        v = ", ".join(names[x] for x in vessels)
        out.append(w.pick(
            f"Calcified plaques are seen in the coronary arteries ({', '.join(vessels)}).",
            f"Coronary artery wall calcifications are present along the {v}.",
            f"There are calcific atheroma plaques in the coronary arteries, in the {v}.",
            "Atherosclerotic calcifications are observed in the coronary arteries.",
        ))
    if "Medical material" in pos:
        out.extend(_medical_material(w, d["Medical material"]["items"]))
    out.append(w.pick(
        "The thoracic aorta has a normal diameter.",
        "Calibration of the thoracic aorta is natural.",
        "Diameters of the main mediastinal vascular structures are normal.",
        "The ascending aorta and the main pulmonary artery have normal widths.",
        "Mediastinal main vascular structures have normal calibre.",
        "Major mediastinal vessels are of normal width; no aneurysmatic dilatation is seen.",
        f"The main pulmonary artery diameter is approximately {int(w.rng.integers(22, 29))} mm, within normal limits.",
    ))
    if w.chance(0.3):
        out.append(w.pick(
            "Since the examination was performed without contrast, mediastinal structures are evaluated suboptimally.",
            "Evaluation of the mediastinum is limited in this non-contrast study.",
            "Mediastinal vascular structures cannot be assessed optimally without intravenous contrast.",
            "Because the examination is unenhanced, the vascular structures could be evaluated only suboptimally.",
            "Since intravenous contrast was not given, the mediastinal fatty planes and vascular structures were "
            "evaluated suboptimally.",
        ))
    return w.shuffle(out[:2]) + out[2:]


def _medical_material(w: ReportWriter, items: list[str]) -> list[str]:
    out = []
    for item in items:
        if item == "pacemaker":
            out.append(w.pick(
                "A cardiac pacemaker is present in the anterior chest wall, with leads extending through the superior "
                "vena cava into the right atrium and right ventricle.",
                "Pacemaker generator in the left infraclavicular subcutaneous tissue; its electrodes reach the right "
                "heart chambers.",
                "There is a pacemaker device on the anterior chest wall with lead wires terminating in the right "
                "ventricle.",
            ))
        elif item == "sternal wires":
            out.append(w.pick(
                "Sternotomy wires are present, consistent with previous cardiac surgery.",
                "Postoperative suture materials (wires) are seen in the sternum.",
                "Metallic sternal sutures from a median sternotomy are noted.",
                "Surgical suture materials are present in the sternum after sternotomy.",
            ))
        elif item == "port catheter":
            out.append(w.pick(
                "A port catheter is present in the right anterior chest wall, its tip in the superior vena cava.",
                "There is a central venous port catheter extending to the superior vena cava-right atrium junction.",
                "A central venous catheter with a subcutaneous port is seen; its tip is located in the distal "
                "superior vena cava.",
                "A catheter is seen extending from the subclavian vein to the distal superior vena cava, with its "
                "reservoir in the chest wall.",
            ))
        elif item == "surgical clips":
            out.append(w.pick(
                "Metallic surgical clips are present in the mediastinum.",
                "Surgical clip materials are noted, compatible with previous surgery.",
                "There are postoperative metallic clips and suture materials.",
                "Metallic clips secondary to the operation are seen in the operated area.",
            ))
        elif item == "stent":
            out.append(w.pick(
                "A stent is present in the left anterior descending coronary artery.",
                "Coronary stent material is seen in the LAD.",
                "Stent material is observed in the proximal LAD.",
            ))
        elif item == "valve prosthesis":
            out.append(w.pick(
                "A prosthetic heart valve is present.",
                "Valve prosthesis material is seen in the heart, consistent with valve replacement.",
                "There is a prosthetic valve at the aortic position.",
            ))
    return out


def lymph_nodes_section(w: ReportWriter, pos: set, d: dict) -> list[str]:
    if "Lymphadenopathy" in pos:
        nodes = d["Lymphadenopathy"]["nodes"]
        big = nodes[0]
        stations = [n["station"] for n in nodes]
        where = stations[0] if len(stations) == 1 else ", ".join(stations[:-1]) + " and " + stations[-1]
        first = w.pick(
            f"Enlarged lymph nodes are present in the {where} region{'s' if len(nodes) > 1 else ''}; the largest, "
            "in the "
            f"{big['station']} area, measures {big['short_axis_mm']} mm in short axis.",
            f"There {'are lymphadenopathies' if len(nodes) > 1 else 'is a lymphadenopathy'} in the {where} "
            f"localization, the largest measuring {big['short_axis_mm']}x{big['long_axis_mm']} mm.",
            f"Mediastinal lymphadenopathy: a lymph node with a short axis of {big['short_axis_mm']} mm in the "
            f"{big['station']} area" + (f", and other enlarged nodes in the {where} regions." if len(nodes) > 1
                                        else "."),
            f"Pathologically enlarged lymph nodes are seen in the {where} station"
            f"{'s' if len(nodes) > 1 else ''} (largest short diameter {big['short_axis_mm']} mm).",
            f"Mediastinal LAP{'s' if len(nodes) > 1 else ''} in the {where} area"
            f"{'s' if len(nodes) > 1 else ''}; the largest short-axis diameter is approximately "
            f"{big['short_axis_mm']} mm.",
        )
        out = [first]
        if w.chance(0.3):
            out.append(w.pick("A few millimetric lymph nodes are also present in the mediastinum.",
                              "Other mediastinal lymph nodes are millimetric."))
        return out
    small = d["_normal"].get("small_nodes", [])
    if small and w.chance(0.5):
        n = small[0]
        return [w.pick(
            f"A {n['short_axis_mm']} mm lymph node in the {n['station']} area does not reach pathological size.",
            f"Millimetric lymph nodes are seen in the {n['station']} region, below pathological size.",
        )]
    return [w.pick(
        "No enlarged lymph nodes are seen in the prevascular, paratracheal, subcarinal or hilar regions.",
        "There is no mediastinal or hilar lymph node of pathological size.",
        "No pathologically enlarged mediastinal, hilar or axillary lymph nodes are present.",
        "Lymph nodes of pathological size and appearance are not observed in the mediastinum or hila.",
        "No lymphadenopathy is detected in the mediastinum.",
        "No LAP of pathological size is seen in the mediastinum, hila, supraclavicular fossae or axillae.",
        "Short-axis diameters of the mediastinal and hilar lymph nodes are less than 10 mm.",
        "No lymph nodes of pathological size were seen in the pre- and paratracheal, subcarinal or hilar regions.",
    )]


def esophagus_section(w: ReportWriter, pos: set, d: dict) -> list[str]:
    if "Hiatal hernia" in pos:
        size = d["Hiatal hernia"]["size_mm"]
        return [w.pick(
            "A sliding type hiatal hernia is present at the lower end of the esophagus.",
            f"There is a sliding hiatal hernia measuring about {size} mm at the distal esophagus.",
            "Hiatal hernia of the sliding type is observed at the esophagogastric junction.",
            f"A hiatal hernia containing air and fluid, about {size} mm, is seen behind the heart.",
        )]
    return [w.pick(
        "The thoracic esophagus has a normal calibre without significant wall thickening.",
        "Esophageal calibration is normal and no wall thickening is present.",
        "No pathological wall thickness increase is seen in the esophagus.",
        "The esophagus is unremarkable within the sections.",
        "No tumoral or obstructive wall thickening is distinguishable in the thoracic esophagus.",
        "The esophagus was of normal calibre at the level of the sections, without a filling defect.",
    )]


def _nodule_sentence(w: ReportWriter, nodules: list[dict]) -> list[str]:
    big = nodules[0]
    # Non-solid nodules are called "subsolid" here: "ground glass" is the vocabulary of the lung-opacity label.
    kind = {"solid": "solid", "calcified": "calcified", "ground-glass": "subsolid",
            "part-solid": "part-solid"}[big["kind"]]
    mm = f"{big['diameter_mm']:g}"
    if len(nodules) == 1:
        return [w.pick(
            f"A {mm} mm {kind} nodule is present in {w.lobe(big['lobe'], True)}.",
            f"There is a {kind} nodule with a diameter of {mm} mm in {w.lobe(big['lobe'], True)}.",
            f"In {w.lobe(big['lobe'], True)}, a nonspecific {kind} nodule measuring {mm} mm is observed.",
            f"A {'millimetric' if big['diameter_mm'] < 10 else ''} nonspecific nodule, {mm} mm in diameter, is seen "
            f"in {w.lobe(big['lobe'], True)}.".replace("  ", " "),
        )]
    lobes = sorted({n["lobe"] for n in nodules})
    both = len({lobe.split()[0] for lobe in lobes}) == 2
    where = "both lungs" if both else f"the {lobes[0].split()[0]} lung"
    few = "a few" if len(nodules) <= 3 else "several"
    return [w.pick(
        f"There are {few} nonspecific nodules in {where}, the largest {mm} mm in diameter in "
        f"{w.lobe(big['lobe'], True)}.",
        f"{few.capitalize()} millimetric nodules are observed in {where}; the largest measures {mm} mm "
        f"({w.lobe(big['lobe'])}).",
        f"Multiple {kind} nodules are seen in {where}, the largest of which is {mm} mm in {w.lobe(big['lobe'])}.",
        f"Nodules are present in {where}, measuring up to {mm} mm in diameter.",
        f"Nonspecific nodules with smooth borders are seen in {where}; the largest, located in "
        f"{w.lobe(big['lobe'], True)}, is {mm} mm.",
    )]


def lungs_section(w: ReportWriter, pos: set, d: dict) -> list[str]:
    """The lung sentences of a report (``w`` words them) for the positive findings ``pos`` with their details ``d``.

    Longer than 80 lines on purpose: one short branch per finding, in the order a radiologist reports them.
    """
    out = []
    if "Emphysema" in pos:
        e = d["Emphysema"]
        sev = e["severity"]
        kind = {"centrilobular": "centrilobular", "paraseptal": "paraseptal", "panlobular": "panlobular",
                "mixed": "centrilobular and paraseptal"}[e["type"]]
        out.append(w.pick(
            f"{sev.capitalize()} {kind} emphysematous changes are present, more prominent in the {e['zones']}.",
            f"Emphysematous changes are seen in both lungs, predominantly in the {e['zones']}.",
            f"There are {kind} emphysema areas in the {e['zones']} of both lungs.",
            f"{sev.capitalize()} emphysema of {kind} type is noted in both lungs.",
            "Both lungs show emphysematous changes" + (" with subpleural bullae." if "paraseptal" in kind else "."),
            f"{sev.capitalize()} emphysema, especially in the {e['zones']}, is seen in both lungs.",
        ))
    if "Lung nodule" in pos:
        out.extend(_nodule_sentence(w, d["Lung nodule"]["nodules"]))
    if "Lung opacity" in pos:
        o = d["Lung opacity"]
        where = w.lobes(o["lobes"])
        out.append(w.pick(
            f"Ground-glass opacities are present in {where}.",
            f"Patchy ground-glass density increases are observed in {where}.",
            f"There are areas of ground glass density in {where}, more prominent peripherally.",
            f"Density increases in the form of ground glass are seen in {where}; an infectious process may be "
            "considered.",
            f"In {where}, peripheral ground-glass areas are noted.",
            f"Focal and patchy ground-glass densities are seen in {where} (infective process? COVID-19 pneumonia "
            "cannot be excluded).",
        ))
    if "Consolidation" in pos:
        c = d["Consolidation"]
        where = w.lobes(c["lobes"])
        out.append(w.pick(
            f"Consolidation with air bronchograms is present in {where}.",
            f"There is an area of consolidation containing air bronchograms in {where}.",
            f"Consolidative density increase is observed in {where}, compatible with pneumonic infiltration.",
            f"Consolidation areas are seen in {where}.",
            f"Focal consolidations with air bronchograms are observed in {where}; pneumonia is the first "
            "consideration.",
            f"In {where}, consolidation was observed; in addition, air bronchograms were seen within it. These "
            "findings were evaluated in favor of infection.",
        ))
    if "Atelectasis" in pos:
        a = d["Atelectasis"]
        if "linear" in a["kinds"]:
            out.append(w.pick(
                f"Linear atelectasis is present in {w.lobes(a.get('linear_lobes', []))}.",
                f"There are subsegmental linear atelectatic changes in {w.lobes(a.get('linear_lobes', []))}.",
                f"Plate-like atelectasis is seen in {w.lobes(a.get('linear_lobes', []))}.",
            ))
        if "subsegmental" in a["kinds"]:
            side = a["dependent_sides"]
            where = "both lungs" if len(side) == 2 else f"the {side[0]} lung"
            out.append(w.pick(
                f"Subsegmental atelectasis is present in the dependent posterobasal parts of {where}.",
                f"Position-dependent atelectatic changes are seen in the posterior basal segments of {where}.",
                f"There is dependent subsegmental atelectasis at the bases of {where}.",
            ))
        if "passive" in a["kinds"]:
            out.append(w.pick(
                "Passive atelectasis is seen in the lung parenchyma adjacent to the pleural effusion.",
                "Compressive atelectasis is present next to the effusion.",
                "The lung parenchyma adjacent to the effusion shows compression atelectasis.",
            ))
    if "Pulmonary fibrotic sequela" in pos:
        f = d["Pulmonary fibrotic sequela"]
        if f["apical"]:
            out.append(w.pick(
                "Pleuroparenchymal sequelae changes are seen at the apices of both lungs.",
                "Apical pleuroparenchymal thickening and sequelae densities are present in both lungs.",
                "Sequelae fibrotic changes are observed in the apical segments of both upper lobes.",
            ))
        where = w.lobes(sorted(set(f["band_lobes"]), key=["right upper", "right middle", "right lower",
                                                         "left upper", "left lower"].index))
        out.append(w.pick(
            f"Fibrotic parenchymal bands are present in {where}, consistent with sequelae.",
            f"There are sequelae fibrotic bands and linear densities in {where}.",
            f"Parenchymal bands are observed in {where}.",
            f"Fibrotic sequelae changes are seen in {where}.",
            f"Sequelae bands with slight volume loss are seen in {where}.",
            f"Linear densities were seen in {where}; they were evaluated in favor of sequelae.",
        ))
    if "Mosaic attenuation pattern" in pos:
        m = d["Mosaic attenuation pattern"]
        where = "both lungs" if m["extent"] == "both lungs" else "the lower lobes of both lungs"
        out.append(w.pick(
            f"A mosaic attenuation pattern is present in {where} (small airway disease? small vessel disease?).",
            f"Mosaic attenuation is noted in {where}; small airway or small vessel disease may be considered.",
            f"There is a mosaic attenuation pattern in {where}.",
        ))
    if "Interlobular septal thickening" in pos:
        s = d["Interlobular septal thickening"]
        where = "both lungs" if s["zones"] == "both lungs" else "the lower lobes of both lungs"
        out.append(w.pick(
            f"Interlobular septal thickening is present in the subpleural areas of {where}.",
            f"There are interlobular septal thickenings in {where}.",
            f"Thickening of the interlobular septa is observed in the periphery of {where}.",
        ))
    if "Bronchiectasis" in pos:
        b = d["Bronchiectasis"]
        kind = b["type"]
        out.append(w.pick(
            f"{kind.capitalize()} bronchiectasis is present in {w.lobes(b['lobes'])}.",
            f"There are bronchiectatic changes in {w.lobes(b['lobes'])}.",
            f"Bronchiectasis is observed in {w.lobes(b['lobes'])}, with bronchi up to {b['diameter_mm']} mm wide.",
            f"Dilated bronchi ({kind} bronchiectasis) are seen in {w.lobes(b['lobes'])}.",
        ))
    if "Peribronchial thickening" in pos:
        out.append(w.pick(
            "Peribronchial thickening is present in both lungs.",
            "There are peribronchial thickenings, more prominent in the lower lobes.",
            "Bronchial walls are thickened (peribronchial thickening).",
            "Peribronchial wall thickening is observed bilaterally.",
        ))
    lung_findings = {"Emphysema", "Lung nodule", "Lung opacity", "Consolidation", "Atelectasis",
                     "Pulmonary fibrotic sequela", "Mosaic attenuation pattern", "Interlobular septal thickening",
                     "Bronchiectasis", "Peribronchial thickening"}
    if not pos & lung_findings:
        out.append(w.pick(
            "Aeration of both lungs is normal and no nodular or infiltrative lesion is seen.",
            "No mass, nodule or infiltrative lesion is present in either lung.",
            "Both lung parenchymas are normally aerated without nodular or infiltrative lesions.",
            "The lung parenchyma is clear; no nodule, consolidation or ground-glass opacity is seen.",
            "No focal or diffuse infiltration, mass or nodule is distinguishable in either lung.",
            "Both lungs were normally aerated; no nodule or infiltration that could be considered pathological was "
            "found.",
        ))
        if w.chance(0.3):
            out.append(w.pick("There is no pneumothorax.", "The fissures are in their normal position."))
    else:
        out = w.shuffle(out)
        if "Lung nodule" not in pos and w.chance(0.5):
            out.append(w.pick("No pulmonary nodule is detected.", "No nodular lesion is seen in either lung."))
        if not pos & {"Lung opacity", "Consolidation"} and w.chance(0.4):
            out.append(w.pick("There is no consolidation or infiltration.", "No active infiltration is present."))
    intro = w.pick("On lung window evaluation:", "In the evaluation of the lung parenchyma;",
                   "Lung parenchyma window:", "When the lung window was examined:", "")
    return ([intro] if intro else []) + out


def pleura_section(w: ReportWriter, pos: set, d: dict) -> list[str]:
    if "Pleural effusion" in pos:
        e = d["Pleural effusion"]
        sides, depth = e["sides"], e["depth_mm"]
        if len(sides) == 2:
            r, l_ = depth["right"], depth["left"]
            amount = "minimal" if max(r, l_) < 15 else "bilateral"
            return [w.pick(
                f"Bilateral pleural effusion is present, {r} mm on the right and {l_} mm on the left at the thickest "
                "part.",
                f"There is {amount} pleural effusion in both hemithoraces, reaching {max(r, l_)} mm in thickness.",
                f"Pleural effusion measuring {r} mm on the right and {l_} mm on the left is observed.",
            )]
        s, t = sides[0], depth[sides[0]]
        amount = "Minimal" if t < 15 else ("Moderate" if t < 40 else "Large")
        return [w.pick(
            f"{amount} pleural effusion is present in the {s} hemithorax, {t} mm thick at its thickest point.",
            f"There is a {s} pleural effusion measuring {t} mm in thickness.",
            f"{amount} {s}-sided pleural effusion reaching {t} mm is seen.",
            f"Pleural effusion in the {s} hemithorax, with a depth of {t} mm.",
            f"Free pleural effusion reaching approximately {t / 10:.1f} cm at its thickest part is observed in the "
            f"{s} hemithorax.",
        )]
    return [w.pick(
        "No pleural effusion or pleural thickening is seen.",
        "There is no pleural effusion or thickening in either hemithorax.",
        "Pleural effusion-thickening is not observed.",
        "Both pleural spaces are free of effusion.",
        "No pleural fluid is present.",
        "No pleural effusion, thickening or pneumothorax is seen in either hemithorax.",
    )]


def abdomen_section(w: ReportWriter, details: dict) -> list[str]:
    out = [w.pick(
        "Upper abdominal organs included in the sections are unremarkable.",
        "The visualised parts of the liver, spleen and adrenal glands are normal.",
        "No space-occupying lesion is seen in the liver within the sections.",
        "Both adrenal glands are of normal size and shape.",
        "Upper abdominal sections show no significant pathology.",
        "As far as can be seen in the sections passing through the upper abdomen, the liver, spleen, pancreas and "
        "both adrenal glands are natural.",
        "No free fluid or collection is seen in the upper abdominal sections.",
        "Both kidneys, partially entering the examination area, are natural.",
        "No space-occupying lesion was found in the parts of the liver entering the cross-sectional area.",
    )]
    if w.chance(0.25):
        out.append(w.pick(
            "Liver density is decreased, consistent with hepatosteatosis.",
            "A few millimetric hypodense lesions in the liver are too small to characterise (cysts?).",
            "A calculus is seen in the gallbladder.",
            "A small cortical cyst is noted in the upper pole of the left kidney.",
            "The gallbladder and bile ducts are of normal calibre.",
            "A hypodense cystic lesion with smooth borders, about 8 mm, is seen in the liver (simple cyst?).",
            "A nodular thickening of the left adrenal gland is seen (adenoma?).",
            "The liver is enlarged and its density is decreased in favor of fatty infiltration.",
        ))
    return out


def bones_section(w: ReportWriter, age: int) -> list[str]:
    out: list[str] = []
    out += [w.pick(
        "Bone structures within the study area are normal.",
        "No lytic or destructive bone lesion is seen.",
        "Vertebral body heights are preserved.",
        "Bony structures in the sections appear natural.",
        "Vertebral corpus heights and intervertebral disc distances are preserved.",
        "No lytic or sclerotic lesion is distinguishable in the bones within the sections.",
    )]
    if w.chance(0.2):
        out.append(w.pick("The neural foramina appear open.", "The thyroid gland entering the sections is normal.",
                          "Soft tissues of the chest wall, both breasts and axillae are natural.",
                          "Mild scoliosis of the thoracic spine is seen."))
    if age > 55 and w.chance(0.6):
        out.append(w.pick(
            "Degenerative changes with osteophytes are seen in the thoracic vertebrae.",
            "There are spondylotic changes in the thoracic spine.",
            "Degenerative osteophytes are present at the vertebral corners.",
        ))
    return out
