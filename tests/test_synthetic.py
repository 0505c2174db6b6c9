"""The synthetic CT-RATE generator: layout, CSVs, NIfTI headers, determinism, resumption, labels, CLI."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from x2ctclip import CT_RATE_FINDINGS
from x2ctclip.train.data.release import table_path
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate, write_atomic
from x2ctclip.train.synthetic.study import make_study, synthesize_study
from x2ctclip.train.synthetic.findings import load_label_stats, sample_labels

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = (32, 48, 48)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_ct_rate")
    result = generate_synthetic_ct_rate(root, n_train=5, n_valid=2, n_test=1, shape=TINY, seed=11, recons=3,
                                          progress=False)
    return root, result


def test_layout_and_csv_columns(dataset):
    root, result = dataset
    assert result == {"volumes": 24, "skipped": 0, "rows": {"train": 15, "valid": 6, "test": 3}}
    for split, n_rows in result["rows"].items():
        header, rows = _read_csv(root / table_path("reports", split))
        assert header == ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
        assert len(rows) == n_rows
        names = [r[0] for r in rows]
        header_l, rows_l = _read_csv(root / table_path("labels", split))
        assert header_l == ["VolumeName", *CT_RATE_FINDINGS]
        assert [r[0] for r in rows_l] == names
        assert all(v in ("0", "1") for r in rows_l for v in r[1:])
        header_m, rows_m = _read_csv(root / table_path("metadata", split))
        assert header_m[:1] == ["VolumeName"] and [r[0] for r in rows_m] == names
        for col in ("RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing", "Rows", "Columns",
                    "NumberofSlices", "PatientSex", "PatientAge", "Manufacturer"):
            assert col in header_m
        for name in names:
            assert re.fullmatch(rf"{split}_\d+_[a-z]_[1-3]\.nii\.gz", name), name  # as in the CT-RATE tables
            name = name.removesuffix(".nii.gz")
            _, patient, scan, _ = name.split("_")
            path = root / f"{split}_fixed" / f"{split}_{patient}" / f"{split}_{patient}_{scan}" / f"{name}.nii.gz"
            assert path.is_file()
        # Every report field is text; the literal "Not given." is allowed as in CT-RATE.
        assert all(all(field.strip() for field in r[1:]) for r in rows)
    assert not list(root.rglob("*.tmp")), "temporary files left behind"


def test_nifti_headers_match_metadata(dataset):
    root, _ = dataset
    header, rows = _read_csv(root / "metadata" / "train_metadata.csv")
    col = {name: i for i, name in enumerate(header)}
    for row in rows:
        name = row[0].removesuffix(".nii.gz")
        _, patient, scan, recon = name.split("_")
        img = nib.load(root / "train_fixed" / f"train_{patient}" / f"train_{patient}_{scan}" / f"{name}.nii.gz")
        assert img.get_data_dtype() == np.int16
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        # Corrected release: HU in the file (slope 1, intercept 0); the metadata keeps the scanner's DICOM rescale.
        assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
        assert float(row[col["RescaleSlope"]]) == 1.0
        assert float(row[col["RescaleIntercept"]]) in (-1024.0, -8192.0)
        xy = [float(v) for v in row[col["XYSpacing"]].strip("[]").split(",")]
        assert re.fullmatch(r"\[[0-9.]+, [0-9.]+\]", row[col["XYSpacing"]])
        np.testing.assert_allclose(img.header.get_zooms(), (*xy, float(row[col["ZSpacing"]])), rtol=1e-5)
        assert img.shape == (int(row[col["Columns"]]), int(row[col["Rows"]]), int(row[col["NumberofSlices"]]))
        assert img.header["qform_code"] == 1 and img.header["sform_code"] == 1
        # Thick-slice reconstructions: half the slices at twice the spacing.
        if recon == "3":
            assert img.shape[2] == TINY[0] // 2
        else:
            assert img.shape == (TINY[2], TINY[1], TINY[0])
        hu = np.asarray(img.dataobj.get_unscaled()) * img.dataobj.slope + img.dataobj.inter
        assert hu.max() <= 3071 and hu.min() >= -3024


def test_volumes_equal_the_in_memory_study(dataset):
    root, _ = dataset
    study = make_study(11, TINY, n_recons=3, split="train", patient=1, scan=0)
    for r, vol in enumerate(study.volumes):
        img = nib.load(root / "train_fixed" / "train_1" / "train_1_a" / f"train_1_a_{r + 1}.nii.gz")
        hu = img.get_fdata().T  # (x, y, z) -> (z, y, x)
        np.testing.assert_array_equal(hu, vol)
    assert study.report["Findings_EN"]
    header, rows = _read_csv(root / "multi_abnormality_labels" / "train_predicted_labels.csv")
    assert [int(v) for v in rows[0][1:]] == study.labels.tolist()


def test_deterministic_bytes_and_resumes_missing_files(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    generate_synthetic_ct_rate(again, n_train=5, n_valid=2, n_test=1, shape=TINY, seed=11, recons=3,
                                 progress=False, workers=2)
    reference = _digest(root)
    assert _digest(again) == reference  # byte-identical CSVs and volumes, also with 2 worker processes
    # An interrupted run: a volume and a CSV missing. Rerunning renders only what is missing.
    (again / "train_fixed" / "train_2" / "train_2_a" / "train_2_a_2.nii.gz").unlink()
    (again / "metadata" / "validation_metadata.csv").unlink()
    result = generate_synthetic_ct_rate(again, n_train=5, n_valid=2, n_test=1, shape=TINY, seed=11, recons=3,
                                          progress=False)
    assert result["volumes"] == 1 and result["skipped"] == 23
    assert _digest(again) == reference


def test_other_seed_differs(tmp_path):
    a = make_study(1, TINY, labels=np.zeros(18, np.int8))
    b = make_study(2, TINY, labels=np.zeros(18, np.int8))
    assert not np.array_equal(a.volumes[0], b.volumes[0])


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x" / "v.nii.gz"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomic(target, b"abc")
    assert not target.exists() and not list(target.parent.iterdir())


def test_label_sampler_matches_ct_rate_statistics():
    stats = load_label_stats()
    draws = sample_labels(np.random.default_rng(0), 3000).astype(np.float64)
    assert draws.shape == (3000, 18) and set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_allclose(draws.mean(0), stats["prevalence"], atol=0.03)
    cooc = draws.T @ draws / len(draws)
    np.testing.assert_allclose(cooc, np.asarray(stats["cooccurrence"]), atol=0.03)
    # The strongest dependency of real CT-RATE labels survives: aortic and coronary calcification travel together.
    i, j = CT_RATE_FINDINGS.index("Arterial wall calcification"), CT_RATE_FINDINGS.index(
        "Coronary artery wall calcification")
    assert cooc[i, j] > 2 * draws[:, i].mean() * draws[:, j].mean()
    # A single draw is one vector.
    assert sample_labels(np.random.default_rng(1)).shape == (18,)


def test_synthesize_study_api():
    hu, labels, report = synthesize_study(5, TINY, labels=["Pleural effusion"])
    assert hu.dtype == np.int16 and hu.shape == TINY
    assert labels.tolist() == [int(n == "Pleural effusion") for n in CT_RATE_FINDINGS]
    assert set(report) == {"ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"}
    hu2, _, report2 = synthesize_study(5, TINY, labels=["Pleural effusion"])
    assert np.array_equal(hu, hu2) and report == report2
    hu3, _, _ = synthesize_study(np.random.default_rng(3), TINY, spacing=(8.0, 6.0, 6.0))
    assert hu3.shape == TINY
    # Anatomy sanity in HU: air outside, lungs around -850, soft tissue and bone present.
    assert hu[0, 0, 0] <= -1000
    assert np.percentile(hu, 99.5) > 150


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (8, 48, 48)}, "between 16 and 1024"),
    ({"shape": (32, 48)}, "three integers"),
    ({"n_train": -1}, "non-negative"),
    ({"n_train": 0, "n_valid": 0}, "nothing to generate"),
    ({"recons": 0}, "recons"),
    ({"workers": 0}, "workers"),
    ({"spacing": (0.0, 1.0, 1.0)}, "spacing"),
])
def test_bad_arguments_are_clear(tmp_path, kwargs, message):
    args = {"n_train": 1, "n_valid": 0, "shape": TINY, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_synthetic_ct_rate(tmp_path / "out", **args)


def test_bad_labels_are_clear():
    with pytest.raises(ValueError, match="unknown finding"):
        make_study(0, TINY, labels=["Pneumothorax"])
    with pytest.raises(ValueError, match="18 entries"):
        make_study(0, TINY, labels=[1, 0])


def test_cli_writes_with_a_progress_bar(tmp_path, capsys):
    from x2ctclip.train.cli.app import main

    out = tmp_path / "cli"
    code = main(["make-synthetic", str(out), "--n-train", "2", "--n-valid", "1", "--shape", "32", "48", "48",
                 "--seed", "3"])
    captured = capsys.readouterr()
    assert code == 0
    assert "synthetic CT studies" in captured.err and "100%" in captured.err  # tqdm writes to stderr
    assert "wrote 3 volumes" in captured.out
    assert (out / "valid_fixed" / "valid_1" / "valid_1_a" / "valid_1_a_1.nii.gz").is_file()


def test_cli_bad_arguments(tmp_path, capsys):
    from x2ctclip.train.cli.app import main

    code = main(["make-synthetic", str(tmp_path / "o"), "--n-train", "1", "--n-valid", "0", "--shape", "4", "4", "4"])
    assert code == 2
    assert "shape" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code = main(["make-synthetic", str(a_file), "--n-train", "1", "--n-valid", "0", "--shape", *map(str, TINY)])
    assert code == 2
    assert "not a directory" in capsys.readouterr().err


def test_original_release_writes_blank_headers_and_stored_values(tmp_path):
    fixed, original = tmp_path / "fixed", tmp_path / "original"
    generate_synthetic_ct_rate(fixed, n_train=2, n_valid=0, shape=TINY, seed=5, progress=False)
    generate_synthetic_ct_rate(original, n_train=2, n_valid=0, shape=TINY, seed=5, progress=False,
                                 release="original")
    header, rows = _read_csv(original / "metadata" / "train_metadata.csv")
    col = {name: i for i, name in enumerate(header)}
    for row in rows:
        name = row[0].removesuffix(".nii.gz")
        _, patient, scan, _ = name.split("_")
        rel = Path(f"train_{patient}") / f"train_{patient}_{scan}" / f"{name}.nii.gz"
        blank, full = nib.load(original / "train" / rel), nib.load(fixed / "train_fixed" / rel)
        assert blank.header["qform_code"] == 0 and blank.header["sform_code"] == 0
        assert blank.dataobj.slope == 1.0 and blank.dataobj.inter == 0.0  # scl_slope 0: unset
        stored = np.asarray(blank.dataobj.get_unscaled())
        hu = stored * float(row[col["RescaleSlope"]]) + float(row[col["RescaleIntercept"]])
        np.testing.assert_array_equal(hu, np.asarray(full.dataobj))
    assert not (original / "train_fixed").exists()


@pytest.mark.parametrize("change", [{"seed": 6}, {"shape": (16, 48, 48)}, {"release": "original"}])
def test_rerun_with_other_parameters_is_refused(tmp_path, change):
    out = tmp_path / "out"
    generate_synthetic_ct_rate(out, n_train=1, n_valid=0, shape=TINY, seed=5, progress=False)
    before = _digest(out)
    key = next(iter(change))
    with pytest.raises(ValueError, match=rf"train split was written with other parameters \({key} "):
        generate_synthetic_ct_rate(out, n_train=1, n_valid=0, **{"shape": TINY, "seed": 5, **change},
                                     progress=False)
    assert _digest(out) == before


def test_cli_refuses_a_file_as_parent(tmp_path, capsys):
    from x2ctclip.train.cli.app import main

    (tmp_path / "FILE").write_text("x")
    code = main(["make-synthetic", str(tmp_path / "FILE" / "sub"), "--n-train", "1", "--n-valid", "0"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("FILE: exists and is not a directory")
