"""`agro demo --quick` end to end: π_ref, its offline data, AGRO through the trainer, held-out comparison."""

import json

from agro.cli import main


def test_demo_quick_writes_results_computed_in_the_run(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["heldout_size"] == 100
    for key in ("reference_accuracy", "final_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert results["improvement"] == results["final_accuracy"] - results["reference_accuracy"]
    task = json.loads(next((tmp_path / "cache").glob("arithmetic-*/task.json")).read_text())
    assert task["heldout_greedy_accuracy"] < 0.5  # π_ref is imperfect by construction
    steps = [c["step"] for c in results["curve"]]
    assert steps[-1] == results["steps"] == 8
    assert all(0.0 <= c["reward/on_policy"] <= 1.0 for c in results["curve"] if "reward/on_policy" in c)
    assert any("reward/offline" in c for c in results["curve"])
    offline = (out / "data" / "offline_pi_ref.jsonl").read_text().splitlines()
    assert results["offline_records"] == len(offline) > 0
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "train" / "final" / "model.safetensors").exists()
