"""Golden checksums: the synthetic generator's output (volumes, labels, report, metadata) for fixed seeds.

The digests pinned that the vectorised generator renders bit-identical studies (issue 17); they were regenerated on
purpose once since, when the lesions were resized against the quickstart's 6 x 6 x 10 mm CT voxels (CHANGELOG). A
change to the synthetic world (sizes, contrasts, wording) must update them on purpose: regenerate with
``python tests/test_synthetic_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.synthetic.geometry import Grid, capsule_fraction, capsule_fractions
from x2ctclip.train.synthetic.study import make_study
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

SMALL = (32, 48, 48)
DEFAULT = (64, 128, 128)  # the default quickstart preset's synthetic_shape
ALL = list(CT_RATE_FINDINGS)
# (seed, split, patient, scan, shape, n_recons, labels): random labels, every finding at once, the finding groups
# one by one (lung hooks, render_findings, dense layers, anatomy edits), a follow-up scan, 3 reconstructions.
CASES = [
    (0, "train", 1, 0, SMALL, 1, None),
    (0, "train", 2, 0, SMALL, 3, None),
    (3, "valid", 5, 1, SMALL, 2, None),
    (0, "train", 3, 0, SMALL, 1, ALL),
    (5, "test", 4, 0, SMALL, 1, ["Emphysema", "Mosaic attenuation pattern", "Lung opacity", "Consolidation"]),
    (6, "train", 9, 0, SMALL, 1, ["Atelectasis", "Pleural effusion", "Lung nodule", "Pulmonary fibrotic sequela",
                                  "Interlobular septal thickening", "Lymphadenopathy"]),
    (7, "train", 11, 0, SMALL, 1, ["Medical material", "Arterial wall calcification",
                                   "Coronary artery wall calcification", "Cardiomegaly", "Pericardial effusion",
                                   "Hiatal hernia", "Bronchiectasis", "Peribronchial thickening"]),
    (0, "train", 1, 0, DEFAULT, 1, None),
    (1, "train", 7, 0, DEFAULT, 1, ALL),
]


def case_id(case) -> str:
    seed, split, patient, scan, shape, n_recons, labels = case
    tag = "random" if labels is None else ("all" if labels == ALL else f"{len(labels)}findings")
    return f"{seed}-{split}-{patient}-{scan}-{'x'.join(map(str, shape))}-r{n_recons}-{tag}"


def study_digest(case) -> str:
    """sha256 (first 16 hex digits) of every reconstruction's int16 bytes and shape, labels, report, metadata."""
    seed, split, patient, scan, shape, n_recons, labels = case
    study = make_study(seed, shape, n_recons=n_recons, split=split, patient=patient, scan=scan, labels=labels)
    h = hashlib.sha256()
    for vol in study.volumes:
        h.update(np.ascontiguousarray(vol).tobytes())
        h.update(str(vol.shape).encode())
    h.update(np.asarray(study.labels).tobytes())
    h.update(json.dumps(study.report, sort_keys=True).encode())
    h.update(json.dumps(study.metadata, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


GOLDEN = {
    '0-train-1-0-32x48x48-r1-random': '05210e2823e501ab',
    '0-train-2-0-32x48x48-r3-random': '742d25d2ef77306f',
    '3-valid-5-1-32x48x48-r2-random': 'ff4e91db6c1d2c49',
    '0-train-3-0-32x48x48-r1-all': '9487942b5ad76f66',
    '5-test-4-0-32x48x48-r1-4findings': '2e3c20688ba7a182',
    '6-train-9-0-32x48x48-r1-6findings': 'fc28f0b1fc286aee',
    '7-train-11-0-32x48x48-r1-8findings': 'b322b4f7ccfd3fd7',
    '0-train-1-0-64x128x128-r1-random': 'ad1a9a201d44c8d5',
    '1-train-7-0-64x128x128-r1-all': 'c38adac6d8ff9690',
}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_study_matches_golden_checksum(case):
    assert study_digest(case) == GOLDEN[case_id(case)]


def dataset_digest(root) -> str:
    """sha256 (16 hex digits) of a written folder: the *decompressed* NIfTI bytes (the gzip level may change) and
    the CSV tables, by relative path."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name != "synthetic_config.json"):
        h.update(str(path.relative_to(root)).encode())
        data = path.read_bytes()
        h.update(gzip.decompress(data) if path.suffix == ".gz" else data)
    return h.hexdigest()[:16]


WRITER_FIXED = '086ddf1d5d955981'  # n_train 4, n_valid 2, n_test 1, 32 x 48 x 48, seed 2, 2 recons
WRITER_ORIGINAL = 'a5f5ab9f2ee36cf9'
WRITER_GOLDEN = {"fixed": WRITER_FIXED, "original": WRITER_ORIGINAL}


@pytest.mark.parametrize("release", ["fixed", "original"])
def test_written_folder_matches_golden_checksum(tmp_path, release):
    generate_synthetic_ct_rate(tmp_path, n_train=4, n_valid=2, n_test=1, shape=SMALL, seed=2, recons=2,
                               progress=False, release=release)
    assert dataset_digest(tmp_path) == WRITER_GOLDEN[release]


def test_capsule_fractions_equal_single_capsules_and_check_their_order():
    grid = Grid((24, 40, 40), (2.5, 2.0, 2.0), (-30.0, -40.0, -40.0))
    a, b = np.array([-10.0, -5.0, 3.0]), np.array([12.0, 9.0, -14.0])
    radii = [(4.5, 3.0), (2.0, 1.2), (0.4, 0.3)]
    shared = capsule_fractions(grid, a, b, radii)
    for (ra, rb), placed in zip(radii, shared):
        box, frac = capsule_fraction(grid, a, b, ra, rb)
        assert placed[0] == box and placed[1].dtype == np.float32 and np.array_equal(placed[1], frac)
    assert shared[0][1].max() == 1.0 and 0 < shared[2][1].sum() < shared[1][1].sum() < shared[0][1].sum()
    with pytest.raises(ValueError, match="largest first"):
        capsule_fractions(grid, a, b, [(1.0, 1.0), (5.0, 5.0)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grid_box_array_path_equals_the_per_axis_path(dtype):
    grid = Grid((30, 50, 45), (2.7, 1.9, 1.9), (-81.3, -47.1, -42.2))
    rng = np.random.default_rng(0)
    for _ in range(300):
        lo = rng.uniform(-120, 60, 3).astype(dtype)
        hi = (lo + rng.uniform(0, 40, 3)).astype(dtype)
        # a tuple of NumPy scalars takes the per-axis path, the same corners as an array the vectorised one
        assert grid.box(lo, hi) == grid.box(tuple(lo), tuple(hi))
    assert grid.box(np.array([500.0, 0, 0]), np.array([600.0, 1, 1])) is None


if __name__ == "__main__":  # print the table to paste into GOLDEN
    for c in CASES:
        print(f"    {case_id(c)!r}: {study_digest(c)!r},", flush=True)
    for rel in ("fixed", "original"):
        with tempfile.TemporaryDirectory() as tmp:
            generate_synthetic_ct_rate(tmp, n_train=4, n_valid=2, n_test=1, shape=SMALL, seed=2, recons=2,
                                       progress=False, release=rel)
            print(f"WRITER_{rel.upper()} = {dataset_digest(tmp)!r}")
    sys.exit(0)
