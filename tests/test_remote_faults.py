"""Preprocessing from a remote file system that drops connections (issue 16): volumes are streamed one at a time
through fsspec, a dropped read is retried, and a run that still fails is continued by a rerun from its complete
shards. The remote is fsspec's own local file system under another protocol whose opened files raise ``OSError``
(what ``huggingface_hub.HfFileSystem`` raises for a reset connection) on chosen reads."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from x2ctclip.train.data import preprocess as P
from x2ctclip.train.data import tables
from x2ctclip.train.data.folders import load_preprocessed
from x2ctclip.train.synthetic.writer import generate_synthetic_ct_rate

GRID = dict(shape=(8, 16, 16), spacing=(40.0, 24.0, 24.0))


class _Faults:
    """Which volume files fail, and how often: ``{file name: failures left}`` (-1: always)."""

    plan: dict[str, int] = {}
    opened: list[str] = []


class _FlakyFile:
    """A file object whose second read raises ``ConnectionResetError`` while its volume has failures left."""

    def __init__(self, inner, name: str):
        self._inner, self._name, self._reads = inner, name, 0

    def read(self, *args):
        self._reads += 1
        left = _Faults.plan.get(self._name, 0)
        if left and self._reads == 2:
            _Faults.plan[self._name] = left - 1 if left > 0 else left
            raise ConnectionResetError(104, "Connection reset by peer")
        return self._inner.read(*args)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._inner.close()


class FlakyFileSystem(LocalFileSystem):
    protocol = ("flaky",)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return LocalFileSystem._strip_protocol(path[len("flaky://"):] if path.startswith("flaky://") else path)

    def _open(self, path, mode="rb", **kwargs):
        inner = super()._open(path, mode, **kwargs)
        name = str(path).rsplit("/", 1)[-1]
        if name.endswith(".nii.gz"):
            _Faults.opened.append(name)
            return _FlakyFile(inner, name)
        return inner


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    root = tmp_path_factory.mktemp("remote_ct_rate")
    generate_synthetic_ct_rate(root, n_train=4, n_valid=1, shape=(16, 32, 32), seed=3, recons=1, progress=False)
    clean = tmp_path_factory.mktemp("clean") / "out"
    P.preprocess_ct_rate(root, clean, splits=("train",), **GRID, cxr_size=32, shard_size=1, progress=False)
    return root, clean


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch):
    monkeypatch.setattr(tables, "READ_RETRY_WAIT_S", 0.0)
    _Faults.plan, _Faults.opened = {}, []


def _volumes(root) -> list[str]:
    return sorted(p.name for p in root.rglob("*.nii.gz") if "train" in p.name)


def _assert_same(a, b):
    x, y = load_preprocessed(a, "train"), load_preprocessed(b, "train")
    assert len(x) == len(y) and x["VolumeName"] == y["VolumeName"]
    for column in ("ct", "cxr", "labels"):
        assert np.array_equal(np.asarray(x[column]), np.asarray(y[column])), column


def test_dropped_reads_are_retried_and_give_the_clean_result(release, tmp_path):
    root, clean = release
    names = _volumes(root)
    _Faults.plan = {names[0]: 1, names[2]: 2}  # two retries are within READ_ATTEMPTS = 3
    out = tmp_path / "out"
    P.preprocess_ct_rate(f"flaky://{root}", out, splits=("train",), **GRID, cxr_size=32, shard_size=1,
                         progress=False)  # fmt: skip
    _assert_same(out, clean)
    assert _Faults.opened.count(names[0]) == 2 and _Faults.opened.count(names[2]) == 3
    assert _Faults.opened.count(names[1]) == 1  # a good volume is read once


def test_a_persistent_fault_names_the_file_and_a_rerun_continues_from_the_complete_shards(release, tmp_path):
    root, clean = release
    names = _volumes(root)
    _Faults.plan = {names[2]: -1}  # the connection keeps failing on this volume
    out = tmp_path / "out"
    with pytest.raises(OSError, match=rf"{names[2]}: reading failed 3 times.*Rerun the command") as info:
        P.preprocess_ct_rate(f"flaky://{root}", out, splits=("train",), **GRID, cxr_size=32, shard_size=1,
                             progress=False)  # fmt: skip
    assert "\n" not in str(info.value)  # one line for the CLI
    assert not (out / "train" / "state.json").exists()  # no half-finished split that looks finished
    _Faults.plan, _Faults.opened = {}, []  # the network is back
    P.preprocess_ct_rate(f"flaky://{root}", out, splits=("train",), **GRID, cxr_size=32, shard_size=1,
                         progress=False)  # fmt: skip
    _assert_same(out, clean)
    assert names[0] not in _Faults.opened and names[1] not in _Faults.opened  # their shards were complete
    assert json.loads((out / "preprocess_config.json").read_text())["world_size"] == 1


def test_a_corrupt_volume_is_not_retried(release, tmp_path):
    root, _ = release
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 10)
    fs = FlakyFileSystem()
    with pytest.raises(ValueError, match="corrupt or truncated"):
        tables.read_ct_rate_volume(str(broken), fs=fs)
    assert _Faults.opened.count("broken.nii.gz") == 1
