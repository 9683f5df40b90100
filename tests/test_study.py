"""Smoke run of benchmarks/study.py on a tiny budget: rows, curves, the table and the plot it writes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` skips them

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "study.py"


def test_study_tiny_run(tmp_path):
    out = tmp_path / "study"
    args = ["--seeds", "0", "--methods", "agro", "topr", "--regimes", "offline_weak", "stale", "--steps", "2",
            "--prompts-per-step", "4", "--train-problems", "4", "--heldout", "20", "--staleness", "1",
            "--eval-every", "1", "--warmup-steps", "40", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert {(r["method"], r["regime"]) for r in rows} == {(m, g) for m in ("agro", "topr")
                                                          for g in ("offline_weak", "stale")}
    for r in rows:
        # evaluations at step 0, after step 1 and at the end, placed at the generations used so far
        assert [x for x, _ in r["curve"]][0] == 0 and len(r["curve"]) == 3
        assert r["curve"][-1] == [r["generations_used"], r["accuracy"]]  # the saved model scores the same
        assert math.isfinite(r["kl_to_reference"])
        if r["regime"] == "offline_weak":
            assert r["fresh_generations"] == 0 < r["generations_used"]
            assert 0.0 <= r["share_on_data"] <= 1.0
        else:  # 4 fresh samples per prompt each step; step 2 also replays step 1's samples
            assert r["fresh_generations"] == 2 * 4 * 4
            assert r["generations_used"] > r["fresh_generations"]
            assert r["share_on_data"] is None
    table = (out / "study.md").read_text()
    assert table.startswith("Command: `python benchmarks/study.py --seeds 0 --methods agro topr")
    stale_row = next(line for line in table.splitlines() if line.startswith("| stale |"))
    assert stale_row.count("n=1") == 2
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_offline_plus_one_regime(tmp_path):
    """offline_plus_one: the π_ref records of each prompt + 1 fresh sample; 'agro_untapered' is AGRO, taper none."""
    out = tmp_path / "study"
    args = ["--seeds", "0", "--methods", "agro_untapered", "--regimes", "offline_plus_one", "--steps", "2",
            "--prompts-per-step", "4", "--train-problems", "4", "--heldout", "10", "--eval-every", "2",
            "--offline-samples", "3", "--warmup-steps", "40", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert row["fresh_generations"] == 2 * 4 * 1
    assert row["generations_used"] > row["fresh_generations"]
    assert 0.0 <= row["share_on_data"] <= 1.0
    config = (out / "runs" / "offline_plus_one-agro_untapered-seed0" / "config.yaml").read_text()
    assert "taper: none" in config and "num_generations: 1" in config
