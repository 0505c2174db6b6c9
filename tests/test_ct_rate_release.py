"""The real CT-RATE release layout end to end: the names recorded in ``fixtures/ct_rate_release_layout.json`` (the
public dataset card and CT-CLIP's scripts), both releases (``{split}_fixed`` with HU headers, ``{split}`` with blank
headers and the metadata rescale), the ``no_chest`` lists, and ``hf://datasets/ibrahimhamamci/CT-RATE`` paths served
by a fake fsspec filesystem (no network)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from x2ctclip.processors import X2CTCLIPVolumeProcessor
from x2ctclip.processors.volume_io import ct_rate_affine, load_ct, volume_from_array
from x2ctclip.train.data.release import CT_RATE_NO_CHEST, CT_RATE_TABLES, parse_volume_name, resolve_release, volume_folder, volume_stem
from x2ctclip.train.data.folders import PREPROCESS_CONFIG, load_preprocessed
from x2ctclip.train.data.tables import ct_rate_table, read_ct_rate_volume
from x2ctclip.train.data.streaming import stream_ct_rate
from x2ctclip.train.data import preprocess as P
from x2ctclip.train.synthetic.writer import SYNTHETIC_CONFIG, generate_synthetic_ct_rate
from x2ctclip.train.synthetic.study import make_study
from x2ctclip.train.cli.app import main as cli_main

LAYOUT = json.loads((Path(__file__).parent / "fixtures" / "ct_rate_release_layout.json").read_text())
TINY = (16, 32, 32)
SHAPE, SPACING, CXR = (8, 16, 16), (40.0, 24.0, 24.0), 32
HF_ROOT = "hf://datasets/ibrahimhamamci/CT-RATE@main/dataset"


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """The same synthetic studies written as the corrected and as the first release."""
    base = tmp_path_factory.mktemp("releases")
    for release in ("fixed", "original"):
        generate_synthetic_ct_rate(base / release, n_train=2, n_valid=1, shape=TINY, seed=4, recons=2,
                                     progress=False, release=release)
    return base


def test_package_names_are_the_recorded_release_names():
    assert CT_RATE_TABLES == LAYOUT["tables"]
    assert CT_RATE_NO_CHEST == LAYOUT["no_chest"]
    for release, splits in LAYOUT["volumes"].items():
        for split, paths in splits.items():
            for path in paths:
                name = parse_volume_name(path.rsplit("/", 1)[-1])
                assert f"{volume_folder(split, release)}/{name.relpath.split('/', 1)[1]}" == path


def test_synthetic_tables_use_the_release_headers(releases):
    root = releases / "fixed"
    for split in ("train", "valid"):
        assert list(pd.read_csv(root / LAYOUT["tables"]["reports"][split]).columns) == LAYOUT["headers"]["reports"]
        assert list(pd.read_csv(root / LAYOUT["tables"]["labels"][split]).columns) == LAYOUT["headers"]["labels"]
        meta = pd.read_csv(root / LAYOUT["tables"]["metadata"][split])
        assert set(LAYOUT["headers"]["metadata_subset"]) <= set(meta.columns)
        assert meta["XYSpacing"].str.fullmatch(r"\[[0-9.]+, [0-9.]+\]").all()  # "[0.75, 0.75]" as in the release
        assert set(meta["RescaleIntercept"]) <= set(LAYOUT["values"]["RescaleIntercept"])
    assert (root / "valid_fixed").is_dir() and not (root / "valid").exists()
    assert (releases / "original" / "valid").is_dir() and not (releases / "original" / "valid_fixed").exists()


def _true_hu(name: str, shape=TINY, seed=4):
    parsed = parse_volume_name(name)
    study = make_study(seed, shape, n_recons=2, split=parsed.split, patient=int(parsed.patient),
                         scan=ord(parsed.scan) - ord("a"))
    r = int(parsed.recon) - 1
    return volume_from_array(study.volumes[r], spacing=study.spacings[r])


@pytest.mark.parametrize("release", ["fixed", "original"])
def test_preprocessed_rows_equal_the_volume_processor(releases, tmp_path, release):
    root = releases / release
    out = tmp_path / "pre"
    P.preprocess_ct_rate(root, out, **dict(shape=SHAPE, spacing=SPACING), cxr_size=CXR, progress=False)
    config = json.loads((out / PREPROCESS_CONFIG).read_text())
    assert config["release"] == "auto" and {config["splits"][s]["release"] for s in ("train", "valid")} == {release}
    processor = X2CTCLIPVolumeProcessor(target_shape=SHAPE, target_spacing=SPACING)
    for split in ("train", "valid"):
        table = ct_rate_table(root, split)
        rows = load_preprocessed(out, split)
        assert rows.num_rows == len(table) == {"train": 4, "valid": 2}[split]
        for row, meta in zip(rows, table.to_dict(orient="records")):
            path = root / meta["path"]
            assert meta["path"].startswith(f"{split}_fixed/" if release == "fixed" else f"{split}/")
            if release == "fixed":  # the inference path: the file alone (its header is HU)
                served = load_ct(path)
            else:  # first release: blank header + the metadata, as a user of the processor would pass them
                served = load_ct(path, rescale=(meta["slope"], meta["intercept"]),
                                 affine=ct_rate_affine(meta["xy_spacing"], meta["z_spacing"]))
            expected = np.round(processor.process_volume(served).numpy() * processor.hu_scale)
            np.testing.assert_array_equal(np.asarray(row["ct"]), expected[0] if expected.ndim == 4 else expected)
            truth = np.round(processor.process_volume(_true_hu(meta["VolumeName"])).numpy() * processor.hu_scale)
            np.testing.assert_allclose(np.asarray(row["ct"]), truth.reshape(SHAPE), atol=1)


@pytest.mark.parametrize("release", ["fixed", "original"])
def test_streamed_rows_equal_the_volume_processor(releases, release):
    root = releases / release
    processor = X2CTCLIPVolumeProcessor(target_shape=SHAPE, target_spacing=SPACING)
    table = ct_rate_table(root, "valid")
    rows = list(stream_ct_rate(root, "valid", volume_processor=processor))
    assert [r["VolumeName"] for r in rows] == list(table["VolumeName"])
    for row, meta in zip(rows, table.to_dict(orient="records")):
        served = load_ct(root / meta["path"]) if release == "fixed" else load_ct(
            root / meta["path"], rescale=(meta["slope"], meta["intercept"]),
            affine=ct_rate_affine(meta["xy_spacing"], meta["z_spacing"]))
        np.testing.assert_array_equal(np.asarray(row["ct_values"]), processor.process_volume(served)[None].numpy())


def test_both_releases_read_the_same_hu(releases):
    for split in ("train", "valid"):
        tables = {r: ct_rate_table(releases / r, split) for r in ("fixed", "original")}
        for a, b in zip(tables["fixed"].to_dict(orient="records"), tables["original"].to_dict(orient="records")):
            fixed = read_ct_rate_volume(str(releases / "fixed" / a["path"]), slope=a["slope"],
                                          intercept=a["intercept"], xy_spacing=a["xy_spacing"],
                                          z_spacing=a["z_spacing"])
            original = read_ct_rate_volume(str(releases / "original" / b["path"]), slope=b["slope"],
                                             intercept=b["intercept"], xy_spacing=b["xy_spacing"],
                                             z_spacing=b["z_spacing"])
            # The metadata intercept (-1024 or -8192) is NOT applied to the corrected release: same HU either way.
            assert a["intercept"] in (-1024.0, -8192.0) and fixed.intercept == 0.0
            np.testing.assert_array_equal(fixed.hu(), original.hu())
            np.testing.assert_allclose(fixed.spacing_mm, original.spacing_mm, rtol=1e-5)


def test_release_choice_and_wrong_guess(releases, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(releases / "original", both)
    shutil.copytree(releases / "fixed" / "train_fixed", both / "train_fixed")
    assert resolve_release(both, "train") == "fixed" and resolve_release(both, "valid") == "original"
    assert resolve_release(both, "train", "original") == "original"
    with pytest.raises(FileNotFoundError, match=r"valid_fixed/: no fixed-release volume folder; found .*/valid/ "
                                                r"\(--release original\)"):
        ct_rate_table(both, "valid", release="fixed")
    with pytest.raises(ValueError, match="release must be one of"):
        ct_rate_table(both, "valid", release="v2")
    code = cli_main(["preprocess", str(both), str(tmp_path / "out"), "--release", "fixed", "--no-progress"])
    assert code == 2 and not (tmp_path / "out").exists()


def test_double_rescale_is_an_error_naming_the_numbers(releases, tmp_path):
    # A corrected-release file given a blank header by mistake: the metadata intercept then shifts air to -2000 HU.
    root = tmp_path / "bad"
    shutil.copytree(releases / "fixed", root)
    meta = ct_rate_table(root, "valid").iloc[0]
    path = root / meta["path"]
    import nibabel as nib

    image = nib.load(path)
    data = np.asarray(image.dataobj).astype(np.int16)
    image = nib.Nifti1Image(data, None)
    image.header["qform_code"] = image.header["sform_code"] = 0
    nib.save(image, path)
    with pytest.raises(ValueError, match=rf"{path.name}: not plausible HU .*intercept=-\d+.*% of the voxels are air.*"
                                         r"most common value below -500 HU is about -\d{4} HU"):
        read_ct_rate_volume(str(path), slope=meta["slope"], intercept=meta["intercept"],
                              xy_spacing=meta["xy_spacing"], z_spacing=meta["z_spacing"])


def test_no_chest_lists_are_left_out_with_a_count(releases, tmp_path, caplog):
    root = tmp_path / "nochest"
    shutil.copytree(releases / "fixed", root)
    names = list(ct_rate_table(root, "train")["VolumeName"])
    # Public loaders match the last path component, with or without .nii.gz.
    (root / LAYOUT["no_chest"]["train"]).write_text(f"train_fixed/x/{names[0]}\n{volume_stem(names[1])}\n\n")
    info = {}
    with caplog.at_level("WARNING"):
        kept = ct_rate_table(root, "train", info=info)
    assert list(kept["VolumeName"]) == names[2:] and info == {"release": "fixed", "non_chest_excluded": 2}
    assert "2 train volumes are in metadata/no_chest_train.txt" in caplog.text
    assert list(ct_rate_table(root, "train", keep_non_chest=True)["VolumeName"]) == names


class FakeHubFS(MemoryFileSystem):
    """In-memory stand-in for huggingface_hub's HfFileSystem: paths ``datasets/{org}/{repo}[@{rev}]/...``."""

    protocol = ("hf",)
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("hf://"):
            path = path[len("hf://"):]
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "datasets":
            parts[2] = parts[2].split("@", 1)[0]  # one revision here: drop "@main"
        return "/" + "/".join(parts)


@pytest.fixture
def hub(releases):
    registry = sys.modules["fsspec.registry"]._registry  # fsspec.registry itself is a read-only view
    previous = registry.get("hf")
    fsspec.register_implementation("hf", FakeHubFS, clobber=True)
    FakeHubFS.store.clear()
    FakeHubFS.pseudo_dirs[:] = [""]
    fs = FakeHubFS()
    local = releases / "fixed"
    for path in sorted(local.rglob("*")):
        if path.is_file() and path.name != SYNTHETIC_CONFIG:
            fs.pipe(f"/datasets/ibrahimhamamci/CT-RATE/dataset/{path.relative_to(local).as_posix()}", path.read_bytes())
    yield local
    FakeHubFS.store.clear()
    registry.pop("hf", None)
    if previous is not None:
        fsspec.register_implementation("hf", previous, clobber=True)


def test_hf_paths_stream_and_preprocess_like_the_local_copy(hub, tmp_path):
    local = hub
    assert list(ct_rate_table(HF_ROOT, "valid")["path"]) == list(ct_rate_table(local, "valid")["path"])
    processor = X2CTCLIPVolumeProcessor(target_shape=SHAPE, target_spacing=SPACING)
    remote = list(stream_ct_rate(HF_ROOT, "valid", volume_processor=processor))
    here = list(stream_ct_rate(local, "valid", volume_processor=processor))
    assert [r["VolumeName"] for r in remote] == [r["VolumeName"] for r in here] and len(here) == 2
    for a, b in zip(remote, here):
        np.testing.assert_array_equal(np.asarray(a["ct_values"]), np.asarray(b["ct_values"]))
    P.preprocess_ct_rate(HF_ROOT, tmp_path / "remote", splits=("valid",), shape=SHAPE, spacing=SPACING,
                         cxr_size=CXR, progress=False)
    P.preprocess_ct_rate(local, tmp_path / "local", splits=("valid",), shape=SHAPE, spacing=SPACING,
                         cxr_size=CXR, progress=False)
    remote_rows = load_preprocessed(tmp_path / "remote", "valid")
    local_rows = load_preprocessed(tmp_path / "local", "valid")
    for a, b in zip(remote_rows, local_rows):
        np.testing.assert_array_equal(np.asarray(a["ct"]), np.asarray(b["ct"]))
        assert a["report"] == b["report"]


def test_hf_missing_table_names_what_was_found(hub):
    FakeHubFS().rm("/datasets/ibrahimhamamci/CT-RATE/dataset/radiology_text_reports/validation_reports.csv")
    with pytest.raises(FileNotFoundError, match=r"validation_reports.csv: the CT-RATE reports table is missing "
                                                r"\(found instead: train_reports.csv\)"):
        ct_rate_table(HF_ROOT, "valid")


def test_listed_but_absent_volume_is_refused_before_writing(releases, tmp_path, capsys):
    root = tmp_path / "partial"
    shutil.copytree(releases / "fixed", root)
    victim = sorted((root / "valid_fixed").rglob("*.nii.gz"))[0]
    victim.unlink()
    out = tmp_path / "out"
    code = cli_main(["preprocess", str(root), str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert err.startswith("x2ctclip preprocess: error: ") and f"{victim.name}: no such CT file" in err
    assert "1 of 2 listed volumes are missing" in err
