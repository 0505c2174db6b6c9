"""x2ctclip.train.data.folders: CT-RATE tables, header/metadata handling, streaming over local / file:// / fsspec URLs,
sharding across DataLoader workers and nodes, one reconstruction per scan, and the map-style loaders."""

import math
import shutil
from pathlib import Path

import fsspec
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from datasets.distributed import split_dataset_by_node
from fsspec.implementations.memory import MemoryFileSystem

from x2ctclip.findings import CT_RATE_FINDINGS
from x2ctclip.train.data.folders import UniqueScanBatchSampler, ct_values_from_ct, load_preprocessed, one_recon_per_scan
from x2ctclip.train.data.release import TABLES, is_local, parse_volume_name, resolve_data_root, volume_stem
from x2ctclip.train.data.tables import ct_rate_table, read_ct_rate_volume
from x2ctclip.train.data.streaming import stream_ct_rate

# NIfTI stores CT-RATE volumes as (x, y, z); the canonical array is (z, y, x).
NIFTI_SHAPE = (24, 20, 10)


def _volume_hu(seed: int) -> np.ndarray:
    """A small phantom in HU, (x, y, z): air around a soft-tissue cylinder holding a lung-like region."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in NIFTI_SHAPE], indexing="ij")
    body = x**2 + y**2 < 0.8
    hu = np.where(body, 40, -1000).astype(np.int16)
    hu[body & (x > 0.15)] = -850
    return hu + rng.integers(-4, 5, NIFTI_SHAPE).astype(np.int16)


def write_layout(root: Path, split: str = "train", blank: tuple[str, ...] = ()) -> list[str]:
    """A tiny CT-RATE layout: 3 patients, scans with 1-2 reconstructions. Volumes in ``blank`` are written as the
    first CT-RATE release did: no orientation in the header, stored value = HU + 1024 (metadata has the rescale and
    a NaN ZSpacing)."""
    names = [f"{split}_{n}" for n in ("1_a_1", "1_a_2", "2_a_1", "2_b_1", "2_b_2", "3_a_1", "3_a_2")]
    reports, labels, metadata = [], [], []
    for i, name in enumerate(names):
        _, patient, scan, _ = name.split("_")
        folder = root / split / f"{split}_{patient}" / f"{split}_{patient}_{scan}"
        folder.mkdir(parents=True, exist_ok=True)
        hu = _volume_hu(i)
        if name in blank:
            image = nib.Nifti1Image((hu + 1024).astype(np.int16), None)
            image.header.set_qform(None, code=0)
            image.header.set_sform(None, code=0)
        else:
            image = nib.Nifti1Image(hu, np.diag([-0.75, -0.75, 1.5, 1.0]))  # CT-RATE's LPS index order in RAS+
        nib.save(image, folder / f"{name}.nii.gz")
        reports.append({"VolumeName": f"{name}.nii.gz", "ClinicalInformation_EN": "Cough.", "Technique_EN": "Axial.",
                        "Findings_EN": f"Findings of ({name}).", "Impressions_EN": "Not given."})
        labels.append({"VolumeName": f"{name}.nii.gz", **{f: (i + k) % 2 for k, f in enumerate(CT_RATE_FINDINGS)}})
        metadata.append({"VolumeName": f"{name}.nii.gz", "RescaleSlope": 1.0,
                         "RescaleIntercept": -1024.0 if name in blank else 0.0, "XYSpacing": "[0.75, 0.75]",
                         "ZSpacing": math.nan if name in blank else 1.5})
    for folder, rows, file in (("radiology_text_reports", reports, "reports"),
                               ("multi_abnormality_labels", labels, "predicted_labels"),
                               ("metadata", metadata, "metadata")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(root / folder / f"{split}_{file}.csv", index=False)
    return names


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_rate")
    names = write_layout(root, blank=("train_1_a_1", "train_2_b_2"))
    return root, names


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The project's synthetic CT-RATE set: 4 training scans with 2 reconstructions each (16 x 32 x 32 voxels)."""
    from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_ct_rate(root, n_train=4, n_valid=0, shape=(16, 32, 32), seed=3, recons=2, progress=False)
    return root, [volume_stem(n) for n in ct_rate_table(root, "train")["VolumeName"]]


@pytest.fixture(scope="module")
def processor():
    """A volume processor for the synthetic chests: 8 x 16 x 16 voxels of 40 x 24 x 24 mm hold all of them."""
    from x2ctclip.processors import X2CTCLIPVolumeProcessor

    return X2CTCLIPVolumeProcessor(target_shape=(8, 16, 16), target_spacing=(40.0, 24.0, 24.0))


def _stems(examples):
    return [volume_stem(e["VolumeName"]) for e in examples]


# ------------------------------------------------------------------------------------------------------------ names
def test_parse_volume_name():
    name = parse_volume_name("valid_53_a_1.nii.gz")
    assert (name.split, name.patient, name.scan, name.recon) == ("valid", "53", "a", "1")
    assert name.scan_id == "valid_53_a" and name.patient_id == "valid_53"
    assert name.relpath == "valid/valid_53/valid_53_a/valid_53_a_1.nii.gz"
    assert volume_stem("train_1_a_2.nii.gz") == volume_stem("train_1_a_2") == "train_1_a_2"
    for bad in ("valid_53_a", "valid-53-a-1", "", "train_1_a_1_x"):
        with pytest.raises(ValueError, match="not a CT-RATE volume name"):
            parse_volume_name(bad)


# ----------------------------------------------------------------------------------------------------------- tables
def test_table_joins_reports_labels_metadata(layout):
    root, names = layout
    table = ct_rate_table(root, "train")
    assert list(table["VolumeName"]) == [f"{n}.nii.gz" for n in sorted(names)]
    row = table.set_index("VolumeName").loc["train_1_a_1.nii.gz"]
    assert row["scan_id"] == "train_1_a" and row["path"] == "train/train_1/train_1_a/train_1_a_1.nii.gz"
    # CT-CLIP cleaning: "Not given." dropped, brackets removed.
    assert row["report"] == "Findings of train_1_a_1."
    assert row["labels"].dtype == np.int8 and list(row["labels"]) == [k % 2 for k in range(18)]
    # NaN ZSpacing falls back to the in-plane spacing (X2CT-CLIP); the metadata rescale is kept.
    assert (row["xy_spacing"], row["z_spacing"], row["intercept"]) == (0.75, 0.75, -1024.0)


def test_labels_are_read_by_position(layout, tmp_path):
    root, _ = layout
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    csv = copy / "multi_abnormality_labels" / "train_predicted_labels.csv"
    frame = pd.read_csv(csv)
    frame.columns = ["VolumeName"] + [f"renamed {i}" for i in range(18)]
    frame.to_csv(csv, index=False)
    assert np.array_equal(np.stack(ct_rate_table(copy, "train")["labels"]), np.stack(ct_rate_table(root, "train")["labels"]))


def test_table_errors_name_the_file(layout, tmp_path):
    root, _ = layout
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    labels = copy / "multi_abnormality_labels" / "train_predicted_labels.csv"
    frame = pd.read_csv(labels)
    frame.iloc[2, 5] = 3
    frame.to_csv(labels, index=False)
    with pytest.raises(ValueError, match="train_predicted_labels.csv.*expected 0 or 1"):
        ct_rate_table(copy, "train")
    frame.iloc[:, :10].to_csv(labels, index=False)
    with pytest.raises(ValueError, match="9 label columns"):
        ct_rate_table(copy, "train")
    reports = copy / "radiology_text_reports" / "train_reports.csv"
    pd.read_csv(reports).drop(columns=["Findings_EN"]).to_csv(reports, index=False)
    with pytest.raises(ValueError, match="train_reports.csv.*Findings_EN"):
        ct_rate_table(copy, "train")
    # The release's validation table name (not "valid_reports.csv"), and what the folder holds instead.
    with pytest.raises(FileNotFoundError, match="validation_reports.csv.*found instead: train_reports.csv"):
        ct_rate_table(copy, "valid")


def test_volumes_missing_from_a_table_are_left_out_with_a_warning(layout, tmp_path):
    root, names = layout
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    labels = copy / "multi_abnormality_labels" / "train_predicted_labels.csv"
    pd.read_csv(labels).iloc[1:].to_csv(labels, index=False)
    with pytest.warns(UserWarning, match="1 volumes have no row in the labels table"):
        table = ct_rate_table(copy, "train")
    assert len(table) == len(names) - 1


# ------------------------------------------------------------------------------------------------ header / metadata
def test_blank_header_uses_metadata_and_oriented_header_its_own(layout):
    root, _ = layout
    table = ct_rate_table(root, "train").set_index("VolumeName")
    for name, seed, spacing in (("train_1_a_1", 0, (0.75, 0.75, 0.75)), ("train_1_a_2", 1, (1.5, 0.75, 0.75))):
        meta = table.loc[f"{name}.nii.gz"]
        volume = read_ct_rate_volume(str(root / meta["path"]), slope=meta["slope"], intercept=meta["intercept"],
                                       xy_spacing=meta["xy_spacing"], z_spacing=meta["z_spacing"])
        # Canonical (z, y, x) = the NIfTI (x, y, z) array transposed, in HU either way.
        assert np.array_equal(volume.hu(), _volume_hu(seed).T.astype(np.float32))
        assert volume.spacing_mm == pytest.approx(spacing)


def test_read_volume_errors(layout, tmp_path):
    root, _ = layout
    with pytest.raises(ValueError, match="no orientation.*no XYSpacing"):
        read_ct_rate_volume(str(root / "train/train_1/train_1_a/train_1_a_1.nii.gz"))
    # Without the metadata rescale the blank-header file is not HU: refused, not silently wrong.
    with pytest.raises(ValueError, match="not HU"):
        read_ct_rate_volume(str(root / "train/train_1/train_1_a/train_1_a_1.nii.gz"), xy_spacing=0.75, z_spacing=1.5)
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes((root / "train/train_1/train_1_a/train_1_a_2.nii.gz").read_bytes()[:300])
    with pytest.raises(ValueError, match="t.nii.gz: corrupt or truncated"):
        read_ct_rate_volume(str(truncated))
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        read_ct_rate_volume(str(tmp_path / "nope.nii.gz"))


# -------------------------------------------------------------------------------------------------------- streaming
def test_stream_decodes_with_the_volume_processor(synthetic, processor):
    root, names = synthetic
    examples = list(stream_ct_rate(root, "train", volume_processor=processor))
    assert _stems(examples) == sorted(names) and len(names) == 8
    table = ct_rate_table(root, "train").set_index("VolumeName")
    for example in examples[:3]:
        meta = table.loc[example["VolumeName"]]
        volume = read_ct_rate_volume(str(root / meta["path"]), slope=meta["slope"], intercept=meta["intercept"],
                                       xy_spacing=meta["xy_spacing"], z_spacing=meta["z_spacing"])
        assert example["ct_values"].shape == (1, 8, 16, 16)
        assert np.array_equal(example["ct_values"][0], processor.process_volume(volume).numpy())
        assert list(example["labels"]) == list(meta["labels"]) and example["scan_id"] == meta["scan_id"]
        assert example["report"] == meta["report"] and len(example["report"]) > 20


def test_stream_matches_the_preprocessed_shards(synthetic, processor, tmp_path):
    from x2ctclip.train.data.preprocess import preprocess_ct_rate

    root, _ = synthetic
    preprocess_ct_rate(root, tmp_path, splits=("train",), shape=(8, 16, 16), spacing=(40.0, 24.0, 24.0), cxr_size=32,
                       progress=False)
    stored = load_preprocessed(tmp_path, "train")
    streamed = stream_ct_rate(root, "train", volume_processor=processor, cxr_mode="mean", cxr_size=32)
    for row, example in zip(stored, streamed):
        assert row["VolumeName"] == example["VolumeName"]
        assert np.abs(ct_values_from_ct(row["ct"]).numpy() - example["ct_values"]).max() <= 0.5e-3 + 1e-6
        assert np.array_equal(row["cxr"], example["cxr"])


def test_stream_without_processor_gives_hu_and_spacing(layout):
    root, _ = layout
    example = next(iter(stream_ct_rate(root, "train")))
    assert example["VolumeName"] == "train_1_a_1.nii.gz"
    assert np.asarray(example["ct"]).shape == NIFTI_SHAPE[::-1]
    assert np.array_equal(np.asarray(example["ct"]), _volume_hu(0).T.astype(np.float32))
    assert list(example["spacing"]) == [0.75, 0.75, 0.75]


def test_stream_simulates_cxr(synthetic, processor):
    from x2ctclip.processors import X2CTCLIPImageProcessor

    root, _ = synthetic
    example = next(iter(stream_ct_rate(root, "train", cxr_mode="beer_lambert", cxr_size=32)))
    assert np.asarray(example["cxr"]).shape == (32, 32) and np.asarray(example["cxr"]).dtype == np.uint8
    image_processor = X2CTCLIPImageProcessor(size=32, crop_size=32)
    example = next(iter(stream_ct_rate(root, "train", volume_processor=processor, cxr_mode="mean",
                                         image_processor=image_processor)))
    assert np.asarray(example["pixel_values"]).shape == (3, 32, 32)


def test_stream_is_sharded_by_file_across_dataloader_workers(synthetic, processor):
    root, names = synthetic
    stream = stream_ct_rate(root, "train", volume_processor=processor)
    assert stream.num_shards == len(names)
    tagged = stream.map(lambda e: {"worker": torch.utils.data.get_worker_info().id})
    loader = torch.utils.data.DataLoader(tagged, batch_size=None, num_workers=2, collate_fn=lambda x: x)
    seen = [(volume_stem(example["VolumeName"]), example["worker"]) for example in loader]
    assert sorted(name for name, _ in seen) == sorted(names)  # complete, and no file twice
    assert {worker for _, worker in seen} == {0, 1}  # both workers read files


@pytest.mark.parametrize("strategy, n", [("auto", 8), ("shards", 7)])
def test_stream_splits_by_node_without_overlap(synthetic, strategy, n):
    root, names = synthetic
    subset = sorted(names)[:n]
    parts = []
    for rank in range(2):
        stream = stream_ct_rate(root, "train", volume_names=subset, shuffle_buffer_size=3, seed=7, decode=False)
        node = split_dataset_by_node(stream, rank=rank, world_size=2, **({} if strategy == "auto" else {"strategy": strategy}))
        parts.append(_stems(node))
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == subset
    assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_stream_one_recon_per_scan_and_shuffle(layout):
    root, names = layout
    scans = {parse_volume_name(n).scan_id for n in names}
    picked = {}
    for epoch in range(4):
        stems = _stems(stream_ct_rate(root, "train", one_recon_per_scan=True, seed=3, epoch=epoch, decode=False))
        assert sorted(parse_volume_name(s).scan_id for s in stems) == sorted(scans)
        picked[epoch] = sorted(stems)
    assert picked[0] == sorted(_stems(stream_ct_rate(root, "train", one_recon_per_scan=True, seed=3, epoch=0, decode=False)))
    assert len({tuple(v) for v in picked.values()}) > 1  # the choice changes with the epoch

    shuffled = _stems(stream_ct_rate(root, "train", shuffle_buffer_size=4, seed=1, decode=False))
    assert sorted(shuffled) == sorted(names) and shuffled != sorted(names)


def test_streams_built_earlier_keep_their_own_subsets(synthetic):
    root, names = synthetic
    first = stream_ct_rate(root, "train", volume_names=names[:2], decode=False)
    second = stream_ct_rate(root, "train", volume_names=names[5:], decode=False)
    TABLES.clear()  # as in a spawned worker: the tables are read again from the handle
    assert _stems(first) == sorted(names[:2]) and _stems(second) == sorted(names[5:])


def test_stream_argument_errors(layout):
    root, _ = layout
    with pytest.raises(ValueError, match="cxr_mode"):
        stream_ct_rate(root, "train", cxr_mode="max")
    with pytest.raises(ValueError, match="image_processor needs cxr_mode"):
        stream_ct_rate(root, "train", image_processor=object())
    with pytest.raises(ValueError, match="not in the train tables"):
        stream_ct_rate(root, "train", volume_names=["train_9_a_1"])


# ----------------------------------------------------------------------------------------- remote paths, one code path
def test_hub_urls_resolve_to_the_hf_filesystem_without_network():
    from huggingface_hub import HfFileSystem

    fs, base = resolve_data_root("hf://datasets/ibrahimhamamci/CT-RATE/dataset")
    assert isinstance(fs, HfFileSystem) and base == "datasets/ibrahimhamamci/CT-RATE/dataset"
    fs, base = resolve_data_root("file:///data/ct_rate/")
    assert is_local(fs) and base == "/data/ct_rate"
    with pytest.raises(ValueError, match="empty"):
        resolve_data_root("")


class _FakeHub(MemoryFileSystem):
    """An in-memory filesystem registered under the ``hf`` protocol: ``hf://datasets/...`` URLs go through exactly
    the code that reads the Hub, without a network."""

    protocol = ("hf",)
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return MemoryFileSystem._strip_protocol(path.removeprefix("hf://"))


def test_hf_urls_stream_through_fsspec(synthetic, processor):
    root, names = synthetic
    fs = _FakeHub()
    for file in root.rglob("*"):
        if file.is_file():
            fs.pipe(f"/datasets/org/ct-rate/{file.relative_to(root).as_posix()}", file.read_bytes())
    hub_class = fsspec.get_filesystem_class("hf")
    fsspec.register_implementation("hf", _FakeHub, clobber=True)  # replaces HfFileSystem for this test only
    try:
        remote = list(stream_ct_rate("hf://datasets/org/ct-rate", "train", volume_processor=processor))
    finally:
        fsspec.register_implementation("hf", hub_class, clobber=True)
        _FakeHub.store.clear()
    local = list(stream_ct_rate(f"file://{root}", "train", volume_processor=processor))
    assert _stems(remote) == sorted(names)
    for a, b in zip(remote, local):
        assert a["VolumeName"] == b["VolumeName"] and np.array_equal(a["ct_values"], b["ct_values"])


# ----------------------------------------------------------------------------------------- experiment batching
def test_one_recon_per_scan_indices():
    names = [f"train_{p}_{s}_{r}" for p in range(1, 6) for s in "ab" for r in range(1, 4)]
    first = one_recon_per_scan(names, seed=1, epoch=0)
    assert len(first) == 10
    assert sorted(parse_volume_name(names[i]).scan_id for i in first) == sorted({n[:-2] for n in names})
    assert first == one_recon_per_scan(names, seed=1, epoch=0)
    assert first != one_recon_per_scan(names, seed=1, epoch=1)
    patients = one_recon_per_scan(names, seed=1, epoch=0, level="patient")
    assert sorted(parse_volume_name(names[i]).patient_id for i in patients) == [f"train_{p}" for p in range(1, 6)]
    with pytest.raises(ValueError, match="level"):
        one_recon_per_scan(names, 0, 0, level="series")


def test_unique_scan_batch_sampler():
    names = [f"train_{p}_{s}_{r}" for p in range(1, 8) for s in "ab" for r in range(1, 3)]
    sampler = UniqueScanBatchSampler(names, batch_size=4, seed=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # 14 scans -> 4 + 4 + 4 + 2
    for batch in batches:
        assert len({parse_volume_name(names[i]).scan_id for i in batch}) == len(batch)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    # Replicas: disjoint, and the same number of steps each (3 full batches for 2 replicas -> 1 each with drop_last).
    replicas = [UniqueScanBatchSampler(names, 4, seed=2, num_replicas=2, rank=r, drop_last=True) for r in (0, 1)]
    flat = [sorted(i for b in part for i in b) for part in replicas]
    assert not set(flat[0]) & set(flat[1]) and [len(list(p)) for p in replicas] == [len(p) for p in replicas] == [1, 1]
    padded = [list(UniqueScanBatchSampler(names, 4, seed=2, num_replicas=3, rank=r)) for r in (0, 1, 2)]
    assert [len(p) for p in padded] == [2, 2, 2]  # 4 batches padded to 6 by repeating the first two
    assert len({parse_volume_name(names[i]).scan_id for p in padded for b in p for i in b}) == 14  # all scans
