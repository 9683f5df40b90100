"""The trainer's fast path changes no number: one policy forward pass with grad when one mini-batch holds
the step gives the same losses, metrics and weights as a no-grad pass followed by a forward/backward pass."""

from pathlib import Path

import pytest
import torch

from agro.config import load_config
from agro.learner import Learner
from agro.trainer import Trainer

REWARD = f"{Path(__file__).parent / 'trainer_rewards.py'}:digit_fraction"


def run(assets, out, objective, steps=3):
    settings = {
        "model_name_or_path": assets / "model", "train_data": assets / "train.jsonl",
        "prompt_template": "raw", "reward_function": REWARD, "objective": objective,
        "max_completion_length": 32, "max_prompt_length": 16,
        "num_generations": 3, "prompts_per_step": 2, "offline_data": assets / "offline.jsonl",
        "offline_per_group": 1, "replay_per_group": 1, "learning_rate": 1e-2, "mini_batch_size": 64,
        "report_to": "none", "save_steps": 0, "output_dir": out, "seed": 1,
    }
    trainer = Trainer(load_config(None, [f"{k}={v}" for k, v in settings.items()]))
    try:
        metrics = [trainer.train_step() for _ in range(steps)]
    finally:
        trainer.scorer.close()
    return metrics, trainer.policy.state_dict()


@pytest.mark.parametrize("objective", ["agro", "grpo", "is_pg"])
def test_single_policy_pass_changes_nothing(assets, tmp_path, monkeypatch, objective):
    fast_metrics, fast_weights = run(assets, tmp_path / "fast", objective)

    def two_passes(self, gens):
        with torch.no_grad():
            return self.logprobs(self.model, gens), None

    monkeypatch.setattr(Learner, "policy_logprobs", two_passes)
    slow_metrics, slow_weights = run(assets, tmp_path / "slow", objective)
    skip = ("time_", "tokens_per_s")
    for fast, slow in zip(fast_metrics, slow_metrics):
        assert {k: v for k, v in fast.items() if not k.startswith(skip)} == \
            {k: v for k, v in slow.items() if not k.startswith(skip)}
    for name, tensor in fast_weights.items():
        assert torch.equal(tensor, slow_weights[name]), name
