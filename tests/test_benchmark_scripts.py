"""The official-scale and CT-ceiling benchmark scripts run end to end with their smallest options (so they do not rot
before someone runs them at full size): the CPU one with ``--smoke --quick``, the GPU one with ``--dry-run`` on CPU,
the CT ceiling for one epoch on a tiny preprocessed folder. Their numbers are not checked (they mean nothing at these
sizes); the JSON they write must hold every measurement."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_cpu_official_scale_benchmark_smoke(tmp_path):
    out = tmp_path / "cpu.json"
    result = _run("bench_official_scale.py", "--smoke", "--quick", "--threads", "1", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["smoke"] is True
    for part in ("preprocess", "ct_forward", "stage2_cached", "stage2_uncached"):
        assert data[part]["seconds"] and all(s > 0 for s in data[part]["seconds"]), part
        assert data[part]["peak_mb"] >= data[part]["base_mb"] > 0, part
    assert data["preprocess"]["ct_shape"] == [8, 16, 16]
    assert data["stage2_ratio"] > 0
    runs = data["preprocess_memory"]["runs"]
    assert {(r["volumes"], r["workers"]) for r in runs} == {(2, 1), (2, 2)}
    assert all(r["tree_peak_mb"] > 0 and r["largest_process_maxrss_mb"] > 0 for r in runs)
    assert "ratio uncached / cached stage-2 step" in result.stdout


@pytest.mark.slow
def test_gpu_official_scale_benchmark_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    _run("gpu_official_scale.py", "--dry-run", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["dry_run"] is True and data["device"] == "cpu"
    assert set(data["flops_per_row"]) == {"ct_forward", "text_forward", "cxr_forward_backward"}
    assert all(v > 0 for v in data["flops_per_row"].values())
    assert [r["batch"] for r in data["ct_tower"]] == [1, 2]
    assert all(r["volumes_per_s"] > 0 for r in data["ct_tower"])
    assert data["stage2"]["ratio_uncached_over_cached"] > 0
    assert data["cache"]["volumes"] == 4 and data["cache"]["cache_volumes_per_s"] > 0


def test_gpu_benchmark_refuses_to_run_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_official_scale.py"), "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert "Traceback" not in result.stderr


def test_ct_supervised_ceiling_benchmark_runs_both_arms_on_a_preprocessed_folder(tmp_path):
    from scripts.train_fixtures import make_preprocessed

    data = make_preprocessed(tmp_path / "pre", {"train": 12, "valid": 6})
    out = tmp_path / "ceiling.json"
    result = _run("bench_ct_supervised_ceiling.py", str(data), "--epochs", "1", "--json", str(out))
    results = json.loads(out.read_text())
    assert results["epochs"] == 1 and len(results["findings"]) == 18
    for arm in ("tower", "cnn"):
        assert 0.0 <= results[arm]["macro_auroc"] <= 1.0
        assert len(results[arm]["per_finding"]) == 18 and results[arm]["train_s"] > 0
        assert all(v is None or 0.0 <= v <= 1.0 for v in results[arm]["per_finding"])
    assert "| macro (valid) |" in result.stdout


def test_ct_supervised_ceiling_benchmark_names_a_missing_split_in_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_ct_supervised_ceiling.py"), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'train'}: no preprocessed split 'train' here" in result.stderr
