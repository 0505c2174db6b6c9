"""Each synthetic finding changes the CT where (and how) it should, in HU; anatomy and orientation are plausible.

Every check renders the same synthetic patient twice (shared anatomy and noise streams): once with only the
finding and once with none, so the difference is the finding itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.synthetic.study import make_study, plan_study
from x2ctclip.train.synthetic.findings import heart_ctr

SHAPE = (64, 80, 80)  # ~5 x 4.5 x 4.5 mm voxels: small, yet millimetric lesions still leave a trace
SEED = 4


def _labels(*names):
    v = np.zeros(len(CT_RATE_FINDINGS), dtype=np.int8)
    for n in names:
        v[CT_RATE_FINDINGS.index(n)] = 1
    return v


@pytest.fixture(scope="module")
def baseline():
    return make_study(SEED, SHAPE, labels=_labels(), split="test", patient=3)


def _with(*names):
    return make_study(SEED, SHAPE, labels=_labels(*names), split="test", patient=3)


def _plan(*names):
    return plan_study(SEED, "test", 3, 0, SHAPE, labels=_labels(*names))


def _coords(p):
    g = p["grid"]
    return np.broadcast_arrays(g.z, g.y, g.x)


def _lung(p, volume):
    """Aerated lung of a volume: inside the thoracic cavity ellipse and between -1100 and -700 HU."""
    z, y, x = _coords(p)
    ca, yc, cb = p["plan"].cavity(z)
    inside = (x / ca) ** 2 + ((y - yc) / cb) ** 2 < 1.0
    return inside & (volume > -1100) & (volume < -700)


def test_normal_anatomy_in_hu(baseline):
    hu = baseline.volumes[0].astype(np.float32)
    p = _plan()
    z, y, x = _coords(p)
    plan = p["plan"]
    assert hu[0, 0, 0] <= -1000  # air (or padding) outside the body
    # Lung parenchyma around -850 HU: take the lateral mid-lung at the level of the carina.
    k = int(np.argmin(np.abs(p["grid"].z.ravel() - plan.landmarks["carina"][0])))
    mid = hu[k]
    lateral = (np.abs(x[k] - 0.6 * plan.cav_a * np.sign(x[k])) < 15) & (np.abs(y[k]) < 20)
    assert -930 < np.median(mid[lateral]) < -700
    # Bone: the vertebral bodies; soft tissue: the heart.
    assert np.percentile(hu, 99.9) > 300
    assert np.any((hu > 20) & (hu < 80))
    assert heart_ctr(p["plan"]) < 0.5


def test_frontal_projection_is_upright_pa(baseline):
    """The mean projection along the array's anterior-posterior axis, rows flipped, is an upright PA radiograph:
    apices at the top, liver/diaphragm dense at the bottom, the heart bulging to the image right (patient left)."""
    from x2ctclip.processors import simulate_cxr

    img = simulate_cxr(baseline.volumes[0], spacing=baseline.spacings[0], pixel_spacing_mm=None)
    h, w = img.shape
    assert img[int(0.85 * h), w // 2 - w // 5: w // 2 + w // 5].mean() > img[int(0.35 * h), w // 4].mean()
    # Heart: denser just left of the midline (image right) than the mirror position, at heart height.
    row = slice(int(0.45 * h), int(0.65 * h))
    assert img[row, int(0.62 * w)].mean() > img[row, int(0.38 * w)].mean()


def test_metal_is_above_2000_hu(baseline):
    study = _with("Medical material")
    assert (baseline.volumes[0] > 2000).sum() == 0
    assert (study.volumes[0] > 2000).sum() > 0


def test_pleural_effusion_fills_the_dependent_pleural_space(baseline):
    p = _plan("Pleural effusion")
    study = _with("Pleural effusion")
    z, y, x = _coords(p)
    plan = p["plan"]
    base, eff = baseline.volumes[0], study.volumes[0]
    sides = p["details"]["Pleural effusion"]["sides"]
    on_side = ((x < 0) & ("right" in sides)) | ((x >= 0) & ("left" in sides))
    ca, yc, cb = plan.cavity(z)
    rho = np.sqrt((x / ca) ** 2 + ((y - yc) / cb) ** 2) + 1e-6
    to_wall = (1 - rho) * np.sqrt(x ** 2 + (y - yc) ** 2) / rho  # mm from the chest wall along the radius
    posterior = (y - yc) / cb / rho > 0.7
    depth = min(p["details"]["Pleural effusion"]["depth_mm"].values())
    basal_posterior = (z < plan.z_dome_left + 10) & posterior & (to_wall < 0.5 * depth) & on_side
    was_lung = basal_posterior & _lung(p, base)
    fluid = was_lung & (eff > -60) & (eff < 70)
    assert was_lung.sum() > 0 and fluid.sum() > 0.5 * was_lung.sum()
    # Anteriorly (non-dependent) the lung stays aerated.
    anterior = (y < plan.cav_y_ant + 25) & _lung(p, base)
    assert np.mean(eff[anterior] < -600) > 0.9


def test_cardiomegaly_enlarges_the_heart(baseline):
    p = _plan("Cardiomegaly")
    assert heart_ctr(p["plan"]) > 0.52 and p["details"]["Cardiomegaly"]["ctr"] > 0.52
    study = _with("Cardiomegaly")
    lung_before = _lung(p, baseline.volumes[0]).sum()
    lung_after = _lung(p, study.volumes[0]).sum()
    assert lung_after < 0.95 * lung_before  # the heart takes room from the lungs


@pytest.mark.parametrize("name", ["Arterial wall calcification", "Coronary artery wall calcification"])
def test_calcifications_are_dense_and_mediastinal(baseline, name):
    p = _plan(name)
    study = _with(name)
    z, y, x = _coords(p)
    new = (study.volumes[0] > 300) & (baseline.volumes[0] < 200)
    assert new.sum() > 0
    plan = p["plan"]
    if name.startswith("Arterial"):
        pts = plan.tubes["aorta"].points
        d = np.min([np.sqrt((z[new] - q[0]) ** 2 + (y[new] - q[1]) ** 2 + (x[new] - q[2]) ** 2) for q in pts],
                   axis=0)
        assert np.all(d < plan.tubes["aorta"].radii.max() + 10)
    else:
        c = plan.heart_center
        d = np.sqrt((z[new] - c[0]) ** 2 + (y[new] - c[1]) ** 2 + (x[new] - c[2]) ** 2)
        assert np.all(d < plan.heart_axes.max() * plan.heart_scale + 15)


def test_emphysema_creates_low_attenuation_lung(baseline):
    study = _with("Emphysema")
    lung = _lung(_plan(), baseline.volumes[0])
    before = np.mean(baseline.volumes[0][lung] < -950)
    after = np.mean(study.volumes[0][lung] < -950)
    assert after > before + 0.01
    assert study.volumes[0][lung].mean() < baseline.volumes[0][lung].mean() - 5


@pytest.mark.parametrize("name, lo, hi", [
    ("Consolidation", -150, 80),
    ("Lung opacity", -750, -450),
    ("Atelectasis", -650, 60),
    ("Pulmonary fibrotic sequela", -600, 60),
])
def test_lung_findings_add_density_inside_the_lungs(baseline, name, lo, hi):
    study = _with(name)
    base, new = baseline.volumes[0].astype(np.float32), study.volumes[0].astype(np.float32)
    was_lung = _lung(_plan(), base)
    changed = was_lung & (new > lo) & (new < hi) & (new - base > 100)
    assert changed.sum() >= 1, name


def test_nodules_appear_in_the_reported_lobes(baseline):
    """Millimetric nodules are sub-voxel at this size: a partial-volume rise, in the lobe the report names."""
    p = _plan("Lung nodule")
    study = _with("Lung nodule")
    lung = _lung(_plan(), baseline.volumes[0])
    diff = np.where(lung, study.volumes[0].astype(np.float32) - baseline.volumes[0], 0)
    assert diff.max() > 50
    z, y, x = _coords(p)
    k = np.unravel_index(int(np.argmax(diff)), diff.shape)
    lobe = p["plan"].lobe_of((z[k], y[k], x[k]))
    assert lobe in {n["lobe"] for n in p["details"]["Lung nodule"]["nodules"]}


def test_mosaic_attenuation_makes_lobular_density_differences(baseline):
    study = _with("Mosaic attenuation pattern")
    lung = _lung(_plan(), baseline.volumes[0])
    diff = study.volumes[0].astype(np.float32)[lung] - baseline.volumes[0].astype(np.float32)[lung]
    assert np.mean(diff < -50) > 0.1 and np.mean(diff > 20) > 0.05


@pytest.mark.parametrize("name", ["Bronchiectasis", "Peribronchial thickening", "Hiatal hernia",
                                  "Pericardial effusion"])
def test_other_findings_change_the_volume(baseline, name):
    study = _with(name)
    diff = np.abs(study.volumes[0].astype(np.float32) - baseline.volumes[0].astype(np.float32))
    assert (diff > 80).sum() > 5, name


def test_septal_lines_add_fine_subpleural_density(baseline):
    p = _plan()
    study = _with("Interlobular septal thickening")
    lung = _lung(p, baseline.volumes[0])
    diff = study.volumes[0].astype(np.float32)[lung] - baseline.volumes[0].astype(np.float32)[lung]
    assert diff.mean() > 3 and np.percentile(diff, 99) > 25


def test_lymph_nodes_are_large_and_mediastinal(baseline):
    p = _plan("Lymphadenopathy")
    assert all(n["short_axis_mm"] > 10 for n in p["details"]["Lymphadenopathy"]["nodes"])
    study = _with("Lymphadenopathy")
    denser = (baseline.volumes[0] < -30) & (study.volumes[0].astype(np.float32) - baseline.volumes[0] > 60)
    z, y, x = _coords(p)
    assert denser.sum() > 0 and np.all(np.abs(x[denser]) < 110)


def test_findings_do_not_touch_the_anatomy_stream(baseline):
    """A finding far from the spine leaves the vertebrae untouched: the anatomy is shared across label sets."""
    p = _plan()
    z, y, x = _coords(p)
    spine = (np.abs(x) < 10) & (y > p["plan"].spine_y - 5)
    study = _with("Lung nodule")
    np.testing.assert_array_equal(study.volumes[0][spine], baseline.volumes[0][spine])
