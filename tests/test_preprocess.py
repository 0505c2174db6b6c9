"""x2ctclip.train.data.preprocess / ``x2ctclip preprocess``: the contract columns, exact agreement with the processors,
resumption after a crash, atomic shards, parameter checks, worker processes and the command line."""

import json
import os
import shutil

import numpy as np
import pytest
from datasets import Array2D, Array3D, load_from_disk

from x2ctclip.processors import X2CTCLIPVolumeProcessor
from x2ctclip.train.data.folders import PREPROCESS_CONFIG, ct_values_from_ct, load_preprocessed, one_recon_per_scan, preprocessed_collator
from x2ctclip.train.data.tables import ct_rate_table, read_ct_rate_volume
from x2ctclip.train.data.release import volume_stem
from x2ctclip.train.data import preprocess as P
from x2ctclip.train.cli.app import main as cli_main

SHAPE = (8, 16, 16)
# The synthetic chests (16 x 32 x 32 voxels) span about 330 x 380 x 380 mm: a coarse grid keeps them whole, and small.
SPACING = (40.0, 24.0, 24.0)
GRID = dict(shape=SHAPE, spacing=SPACING)
CXR = 32


def _synthetic(root):
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    generate_synthetic_ct_rate(root, n_train=3, n_valid=2, shape=(16, 32, 32), seed=0, recons=2, progress=False)


@pytest.fixture(scope="module")
def ct_rate(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_ct_rate")
    _synthetic(root)
    return root


@pytest.fixture(scope="module")
def preprocessed(ct_rate, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "out"
    P.preprocess_ct_rate(ct_rate, out, splits=("train", "valid"), **GRID, cxr_size=CXR, shard_size=2, progress=False)
    return out


def _rows(dataset):
    return [dict(row) for row in dataset]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(_rows(a), _rows(b)):
        assert x.keys() == y.keys()
        for key in x:
            assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), key


def test_contract_columns_and_values(ct_rate, preprocessed):
    table = ct_rate_table(ct_rate, "train")
    dataset = load_preprocessed(preprocessed, "train")
    assert dataset.num_rows == len(table) == 6  # 3 scans x 2 reconstructions
    assert isinstance(dataset.features["ct"], Array3D) and dataset.features["ct"].shape == SHAPE
    assert dataset.features["ct"].dtype == "int16"
    assert isinstance(dataset.features["cxr"], Array2D) and dataset.features["cxr"].shape == (CXR, CXR)
    # load_from_disk reads it directly too (a plain save_to_disk folder).
    assert load_from_disk(str(preprocessed / "train")).num_rows == 6

    processor = X2CTCLIPVolumeProcessor(target_shape=SHAPE, target_spacing=SPACING)
    for index in (0, 5):
        row, meta = dataset[index], table.iloc[index]
        assert row["VolumeName"] == meta["VolumeName"] and row["scan_id"] == meta["scan_id"]
        assert row["report"] == meta["report"] and row["labels"].dtype == np.int8
        assert np.array_equal(row["labels"], meta["labels"])
        volume = read_ct_rate_volume(str(ct_rate / meta["path"]), slope=meta["slope"], intercept=meta["intercept"],
                                       xy_spacing=meta["xy_spacing"], z_spacing=meta["z_spacing"])
        expected = processor.process_volume(volume).numpy()
        assert row["ct"].dtype == np.int16 and row["ct"].shape == SHAPE
        # ct / 1000 is the processor output up to the rounding to whole HU.
        ct_values = ct_values_from_ct(row["ct"]).numpy()
        assert ct_values.shape == (1, *SHAPE)
        assert np.abs(ct_values[0] - expected).max() <= 0.5e-3 + 1e-6
        assert np.array_equal(row["cxr"], P.simulate_cxr_uint8(volume, mode="mean", size=CXR))
        assert row["cxr"].dtype == np.uint8 and row["cxr"].min() == 0 and row["cxr"].max() == 255

    config = json.loads((preprocessed / PREPROCESS_CONFIG).read_text())
    assert config["shape"] == list(SHAPE) and config["spacing"] == list(SPACING)
    assert config["cxr_mode"] == "mean" and config["cxr_size"] == CXR
    assert config["volume_processor"]["target_shape"] == list(SHAPE) and config["source_root"] == str(ct_rate)
    assert config["splits"]["train"] == {"num_rows": 6, "num_shards": 3, "release": "fixed", "non_chest_excluded": 0,
                                         "num_skipped_not_chest": 0}
    assert config["release"] == "auto" and config["keep_non_chest"] is False and "datasets" in config["versions"]


def test_load_helpers(preprocessed):
    import torch

    from x2ctclip.processors import X2CTCLIPImageProcessor

    dataset = load_preprocessed(preprocessed, "valid", columns=["VolumeName", "cxr", "labels"])
    assert set(dataset[0]) == {"VolumeName", "cxr", "labels"}
    full = load_preprocessed(preprocessed, "valid")
    collate = preprocessed_collator(X2CTCLIPImageProcessor(size=32, crop_size=32))
    batch = collate([full[i] for i in range(3)])
    assert batch["ct_values"].shape == (3, 1, *SHAPE) and batch["ct_values"].dtype == torch.float32
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["labels"].shape == (3, 18)
    assert batch["VolumeName"] == [str(n) for n in full["VolumeName"][:3]]
    indices = one_recon_per_scan(full, seed=0, epoch=0)
    assert len(indices) == 2 and len({full[i]["scan_id"] for i in indices}) == 2
    with pytest.raises(FileNotFoundError, match="test"):
        load_preprocessed(preprocessed, "test")


def test_resume_after_a_crash_gives_the_same_result(ct_rate, preprocessed, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    original = P._VolumeWorker.__call__

    def crash_on_fourth(self, record):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return original(self, record)

    monkeypatch.setattr(P._VolumeWorker, "__call__", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        P.preprocess_ct_rate(ct_rate, out, splits=("train",), **GRID, cxr_size=CXR, shard_size=2, progress=False)
    # Shard 0 (rows 0-1) is complete; shard 1 died at its second row: no file under its final name, no temp file.
    assert sorted(p.name for p in (out / "train").glob("*.arrow")) == ["data-00000-of-00003.arrow"]
    assert not list((out / "train").glob(".data-*")) and not (out / "train" / "state.json").exists()
    monkeypatch.setattr(P._VolumeWorker, "__call__", original)
    # A stale temporary file (as a SIGKILL would leave) is removed on restart.
    (out / "train" / ".data-00001-of-00003.arrow.tmp-99999").write_bytes(b"partial")
    mtime = (out / "train" / "data-00000-of-00003.arrow").stat().st_mtime_ns
    P.preprocess_ct_rate(ct_rate, out, splits=("train",), **GRID, cxr_size=CXR, shard_size=2, progress=False)
    assert (out / "train" / "data-00000-of-00003.arrow").stat().st_mtime_ns == mtime  # skipped, not redone
    assert not list((out / "train").glob(".data-*"))
    _same(load_preprocessed(out, "train"), load_preprocessed(preprocessed, "train"))


def test_other_parameters_are_refused(ct_rate, preprocessed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(preprocessed, out)
    with pytest.raises(ValueError, match="cxr_size"):
        P.preprocess_ct_rate(ct_rate, out, splits=("train",), **GRID, cxr_size=64, progress=False)
    with pytest.raises(ValueError, match="another run"):
        P.preprocess_ct_rate(ct_rate, out, splits=("train",), **GRID, cxr_size=CXR, shard_size=3, progress=False)
    for kwargs, match in ((dict(shape=(8, 16)), "shape"), (dict(spacing=(1, 0, 1)), "spacing"),
                          (dict(cxr_mode="max"), "cxr_mode"), (dict(workers=-1), "workers"), (dict(splits=()), "split")):
        with pytest.raises(ValueError, match=match):
            P.preprocess_ct_rate(ct_rate, tmp_path / "new", **{**GRID, **kwargs}, progress=False)


def test_bad_volume_is_named(ct_rate, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ct_rate, root)
    victim = sorted((root / "valid_fixed").rglob("*.nii.gz"))[1]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{victim.name}: corrupt or truncated"):
        P.preprocess_ct_rate(root, tmp_path / "out", splits=("valid",), **GRID, cxr_size=CXR, progress=False)


def _fill_the_lungs(path):
    """Rewrite a synthetic corrected-release CT with its lung-like air (-950..-600 HU) turned to soft tissue (40 HU):
    the outline and the air around the body stay, so only the chest check can tell it is not a chest CT."""
    import nibabel as nib

    image = nib.load(str(path))
    hu = np.asarray(image.dataobj, dtype=np.float32) * float(image.dataobj.slope) + float(image.dataobj.inter)
    hu[(hu >= -950) & (hu < -600)] = 40.0
    image.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), image.affine, image.header), str(path))


def test_volumes_that_are_not_chest_cts_are_left_out_and_listed(tmp_path, caplog):
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    # 48 x 96 x 96 voxels (about 7 x 4 x 4 mm): fine enough for the chest check (CHEST_CHECK_MAX_SPACING_MM).
    root = tmp_path / "root"
    generate_synthetic_ct_rate(root, n_train=1, n_valid=3, shape=(48, 96, 96), seed=1, recons=1, progress=False)
    victim = sorted((root / "valid_fixed").rglob("*.nii.gz"))[1]
    assert all(s <= m for s, m in zip(read_ct_rate_volume(str(victim)).spacing_mm, P.CHEST_CHECK_MAX_SPACING_MM))
    _fill_the_lungs(victim)
    stem = volume_stem(victim.name)
    with caplog.at_level("WARNING"):
        result = P.preprocess_ct_rate(root, tmp_path / "out", splits=("valid",), **GRID, cxr_size=CXR, shard_size=2,
                                      progress=False)["valid"]
    names = [volume_stem(n) for n in result["VolumeName"]]
    table = ct_rate_table(root, "valid")
    assert stem not in names and len(names) == len(table) - 1
    listed = (tmp_path / "out" / "valid" / "skipped.csv").read_text().splitlines()
    assert listed[0] == "VolumeName,reason" and len(listed) == 2 and stem in listed[1] and "lung" in listed[1]
    config = json.loads((tmp_path / "out" / PREPROCESS_CONFIG).read_text())
    assert config["splits"]["valid"]["num_skipped_not_chest"] == 1
    assert any("1 of" in r.getMessage() and "skipped.csv" in r.getMessage() for r in caplog.records)
    # A rerun resumes from the finished shards (the skipped list included) and gives the same rows.
    again = P.preprocess_ct_rate(root, tmp_path / "out", splits=("valid",), **GRID, cxr_size=CXR, shard_size=2,
                                 progress=False)["valid"]
    assert [volume_stem(n) for n in again["VolumeName"]] == names
    # --keep-implausible keeps it.
    kept = P.preprocess_ct_rate(root, tmp_path / "kept", splits=("valid",), **GRID, cxr_size=CXR, shard_size=2,
                                keep_implausible=True, progress=False)["valid"]
    assert len(kept) == len(table) and not (tmp_path / "kept" / "valid" / "skipped.csv").exists()


def test_to_uint8_square_keeps_the_aspect_ratio():
    image = np.zeros((10, 20), np.float32)
    image[:, 5:15] = 1.0
    out = P.to_uint8_square(image, 40)
    assert out.shape == (40, 40) and out.dtype == np.uint8
    assert out[:8].max() == 0 and out[-8:].max() == 0  # padding above and below the wide image
    assert out[20, 20] == 255 and out[20, 2] == 0
    with pytest.raises(ValueError, match="2-D"):
        P.to_uint8_square(np.zeros((2, 2, 2)), 8)


@pytest.mark.slow
def test_worker_processes_give_the_same_shards(ct_rate, preprocessed, tmp_path):
    P.preprocess_ct_rate(ct_rate, tmp_path / "out", splits=("valid",), **GRID, cxr_size=CXR, shard_size=2,
                         workers=2, progress=False)
    _same(load_preprocessed(tmp_path / "out", "valid"), load_preprocessed(preprocessed, "valid"))


def test_command_line(ct_rate, preprocessed, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["preprocess", str(ct_rate), str(out), "--split", "valid", "--shape", *map(str, SHAPE),
            "--spacing", *map(str, SPACING), "--cxr-size", str(CXR), "--shard-size", "2", "--no-progress"]
    assert cli_main(argv) == 0
    assert "valid: 4 rows" in capsys.readouterr().out
    _same(load_preprocessed(out, "valid"), load_preprocessed(preprocessed, "valid"))
    assert cli_main(["preprocess", str(tmp_path / "missing"), str(tmp_path / "cli2"), "--split", "valid", "--no-progress"]) == 2
    assert "radiology_text_reports/validation_reports.csv" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "cli2")  # inputs are checked before anything is written
