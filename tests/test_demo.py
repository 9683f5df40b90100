"""`agro demo --quick` end to end: π_ref, its offline data, AGRO through the trainer, held-out comparison; then
what a user does next: `agro eval` of the trained model with no other flag, `agro train configs/demo.yaml`."""

import json
from pathlib import Path

import pytest

from agro.cli import main

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` skips them

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_demo_quick_writes_results_computed_in_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's default --out, runs/demo: where configs/demo.yaml looks
    assert main(["demo", "--quick", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = tmp_path / "runs" / "demo"
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

    # the trained model carries what it was trained with: eval with no other flag reproduces the demo's figure
    assert main(["eval", "--model", "runs/demo/train/final", "--data", "runs/demo/data/heldout.jsonl",
                 "--out", "eval.json"]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["args"]["prompt_template"] == "raw" and evaluated["args"]["reward"].endswith("arithmetic:reward")
    assert evaluated["accuracy"] == results["final_accuracy"]

    # configs/demo.yaml as it is, after the demo, from the directory the demo ran in
    assert main(["train", str(CONFIGS / "demo.yaml"), "--set", "max_steps=1", "--set", "eval_data=null"]) == 0
    assert (tmp_path / "runs" / "demo-train" / "final" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, mark", [("countdown", ">"), ("multiplication", "*")])
def test_demo_quick_other_tasks(name, mark, tmp_path, monkeypatch):
    """`agro demo --task NAME --quick`: the other built-in tasks end to end, with their own reward and bounds.
    π_ref is a tiny build (the default one takes minutes on a busy 2-core box); the task is the default one."""
    from agro.tasks import get_task

    task = get_task(name)
    tiny = task.Settings(hidden_size=16, num_layers=1, num_heads=2, train_steps=20, batch_size=16,
                         warmup_steps=2, num_heldout=16)
    real_settings = task.Settings
    monkeypatch.setattr(task, "Settings", lambda: tiny)
    out = tmp_path / "demo"
    assert main(["demo", "--task", name, "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == name and results["steps"] == 8 and results["heldout_size"] == 100
    assert 0.0 <= results["reference_accuracy"] <= 0.3 and 0.0 <= results["final_accuracy"] <= 1.0
    config = results["config"]
    assert config["reward_function"] == f"agro.tasks.{name}:reward"
    assert config["max_completion_length"] == task.max_completion_tokens(real_settings())
    assert config["max_prompt_length"] == task.max_prompt_tokens(real_settings())
    assert next((tmp_path / "cache").glob(f"{name}-*-seed0/task.json")).exists()
    heldout = (out / "data" / "heldout.jsonl").read_text().splitlines()
    assert len(heldout) == 100 and all(mark in json.loads(line)["prompt"] for line in heldout)
