"""Smoke run of benchmarks/throughput.py --quick, with TRL hidden: the agro side alone, a clean message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` skips them

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "throughput.py"


def test_throughput_quick_without_trl(tmp_path):
    hidden = tmp_path / "trl"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('trl hidden for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # spares the script its restart
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trl is not installed" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["config"]["trl"] is False
    phases = {"generation", "reward", "reference", "policy", "optimizer", "other"}
    for size in ("3M", "11M"):
        r = result[size]
        for key in ("agro_tokens_per_s", "agro_grpo_tokens_per_s", "train_flops_per_s",
                    "matmul_peak_flops_per_s"):
            assert r[key] > 0, key
        assert "trl_tokens_per_s" not in r
        length = result["config"]["completion_length"]
        assert r["agro_completion_length"] == r["agro_grpo_completion_length"] == length
        assert set(r["agro_phases_s"]) == phases


def quick_sweep(script: str, axis: str, length: int) -> dict:
    """One repeat of a pass benchmark on the 3M model at one length: its result."""
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name(script)), "--sizes", "3M", f"--{axis}-lengths",
                           str(length), "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])[f"3M/{axis}{length}"]


def test_prefix_sharing_benchmark_quick():
    result = quick_sweep("prefix_sharing.py", "prompt", 9)
    assert result["parameters"] > 3_000_000 and result["max_abs_diff"] < 1e-4
    for key in ("reference_shared_s", "reference_full_s", "policy_shared_s", "policy_full_s", "generate_shared_s",
                "generate_full_s"):
        assert result[key] > 0


def test_generation_cache_benchmark_quick():
    result = quick_sweep("generation_cache.py", "completion", 8)
    assert result["same_samples"] and result["parameters"] > 3_000_000
    assert result["in_place_s"] > 0 and result["concatenated_s"] > 0


def test_tabular_bias_quick(tmp_path):
    """The candidates' table: the tapered AGRO and TOPR agree when μ = π_ref and AsymRE keeps a bias."""
    script = Path(__file__).parents[1] / "benchmarks" / "tabular_bias.py"
    proc = subprocess.run([sys.executable, str(script), "--instances", "2", "--steps", "300"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["regimes"]) == {"reference", "fixed"}
    ref = result["regimes"]["reference"]
    assert ref["agro_taper_ref"]["values"] == ref["topr"]["values"]
    for r in result["regimes"].values():  # the consistent candidates have moved toward π* from π_ref
        assert all(0 < v < 1 for name in ("agro_untapered", "agro_taper_ref", "topr") for v in r[name]["values"])
    assert ref["asymre_delta_0.1"]["min"] > ref["agro_untapered"]["max"]


def test_async_generation_benchmark_quick():
    """Both sides run the same steps; the async side's batches are at most one update old."""
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name("async_generation.py")), "--quick"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sync_steps_per_s"] > 0 and result["async_k1_steps_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["async_k1_steps_per_s"] / result["sync_steps_per_s"])
    assert 0 < result["async_staleness_mean"] <= 1
    assert result["sync_phase_share"]["generation"] > 0
