"""Four of TRL's GRPO documentation examples, each with only `GRPOConfig` → `AGROConfig`, `GRPOTrainer` →
`AGROTrainer` and the model changed, on a small in-memory data set: the quickstart (`reward_len`), conversational
prompts with a format reward, several rewards with `reward_weights`, and a curriculum reward that reads
`trainer_state` and calls `log_metric`. The configs use GRPOConfig's own field names.

The fast tests run them on the tiny local model (tests/conftest.py), whose alphabet is `0-9 + - = ; A`: prompts
are sums and the patterns are written in it. They check what a TRL user reads in the logs: every function's
`rewards/NAME/mean` at every step, one sample per prompt and generation (no prompt twice in a step, also across
an epoch's end), the `log_metric` values, and the warning when the length limit cuts the completions. The slow test
runs the quickstart on smollm2-135m-instruct and checks that the reward rises.
"""

import json
import math
import re
import shutil

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from agro import AGROConfig, AGROTrainer
from agro.tasks.arithmetic import generate_problems

PROBLEMS = generate_problems(6, seed=0, split="train")


def tiny_args(out, **fields) -> AGROConfig:
    """GRPOConfig's fields for a few-second run of the tiny model: 8 completions a step, 4 per prompt, so 2
    prompts a step."""
    base = dict(output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_prompt_length=16,
                max_completion_length=16, max_steps=4, learning_rate=1e-2, logging_steps=1, report_to="none", seed=0)
    return AGROConfig(**{**base, **fields})


def logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_every_step(rows: list[dict], steps: int, reward_names: list[str], samples_per_step: int = 8) -> None:
    """Each step is logged, with each function's mean, none of its calls failed, and the step holds each of its
    prompts once: prompts × num_generations samples."""
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    for row in rows:
        for name in reward_names:
            assert math.isfinite(row[f"rewards/{name}/mean"]), (name, row)
        assert row["reward_failures"] == 0, row
        assert row["count/on_policy"] == samples_per_step, row


# ------------------------------------------------------------------ (a) the quickstart


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def quickstart_dataset() -> Dataset:
    """3 prompts for 2 a step: steps 2 and 4 each take the last prompt of one epoch and the first of the next,
    and with seed 0 the next epoch's seeded order starts with the prompt step 2 already holds."""
    return Dataset.from_list([{"prompt": p.prompt} for p in PROBLEMS[:3]])


def test_quickstart_logs_its_reward_every_step_with_one_sample_per_prompt_and_generation(assets, tmp_path,
                                                                                         one_thread):
    out = tmp_path / "run"
    training_args = tiny_args(out)
    trainer = AGROTrainer(model=str(assets / "model"), reward_funcs=reward_len, args=training_args,
                          train_dataset=quickstart_dataset())
    trainer.train()
    rows = logged(out)
    check_every_step(rows, 4, ["reward_len"])
    for row in rows:  # every completion has at most 16 characters: each reward is in [-20, -4]
        assert -20 <= row["rewards/reward_len/mean"] <= -4


def test_quickstart_with_every_completion_cut_still_calls_the_function_and_warns(assets, tmp_path, capsys,
                                                                                 one_thread):
    """max_completion_length=1 cuts (nearly) every completion: the function still scores each one (1 character:
    -19, an empty one: -20) before agro's truncation rule (zero) sets a cut one's reward to 0, and a warning names
    the limit."""
    out = tmp_path / "run"
    training_args = tiny_args(out, max_completion_length=1, max_steps=3)
    trainer = AGROTrainer(model=str(assets / "model"), reward_funcs=reward_len, args=training_args,
                          train_dataset=quickstart_dataset())
    trainer.train()
    rows = logged(out)
    check_every_step(rows, 3, ["reward_len"])
    for row in rows:
        assert -20 <= row["rewards/reward_len/mean"] <= -19, row
        assert row["completions/clipped_ratio"] > 0.5, row
        assert row["reward/on_policy"] > row["rewards/reward_len/mean"]  # the cut ones' 0 after the call
    printed = capsys.readouterr().out
    assert "max_completion_length=1" in printed and "truncated_completions" in printed, printed


# ------------------------------------------------------------------ (b) conversational, a format reward


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^\d+.*?A=\d+$"  # TRL's "<think>…</think><answer>…</answer>", in the tiny model's alphabet
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


@pytest.fixture
def chat_model(assets, tmp_path):
    """The tiny model with a chat template that renders the messages' contents (its alphabet has no markup)."""
    path = tmp_path / "chat-model"
    shutil.copytree(assets / "model", path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    tokenizer.save_pretrained(path)
    return path


def test_conversational_prompts_give_the_format_reward_message_lists(chat_model, tmp_path, one_thread):
    """A string completion would make `completion[0]["content"]` raise: no failed call means every completion
    arrived as a list of one assistant message."""
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}]} for p in PROBLEMS[:5]])
    out = tmp_path / "run"
    training_args = tiny_args(out)
    trainer = AGROTrainer(model=str(chat_model), reward_funcs=format_reward_func, args=training_args,
                          train_dataset=dataset)
    trainer.train()
    rows = logged(out)
    check_every_step(rows, 4, ["format_reward_func"])
    assert all(0 <= row["rewards/format_reward_func/mean"] <= 1 for row in rows)


# ------------------------------------------------------------------ (c) several rewards, weighted


def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture the answer after A= (TRL's example captures the content of \boxed{})
    matches = [re.search(r"A=(\d+)", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def length_reward_func(completions, **kwargs):
    """Reward function that assigns higher scores to longer completions (in terms of character count)."""
    return [float(len(completion)) for completion in completions]


def test_several_rewards_are_each_logged_and_summed_with_reward_weights(assets, tmp_path, one_thread):
    """TRL scores a cut completion (mask_truncated_completions=False), so the step's reward is exactly the
    weighted sum of the functions' means."""
    dataset = Dataset.from_list([{"prompt": p.prompt, "ground_truth": p.answer} for p in PROBLEMS[:5]])
    out = tmp_path / "run"
    training_args = tiny_args(out, reward_weights=[1.0, 0.1], mask_truncated_completions=False)
    trainer = AGROTrainer(model=str(assets / "model"), reward_funcs=[reward_func, length_reward_func],
                          args=training_args, train_dataset=dataset)
    trainer.train()
    rows = logged(out)
    check_every_step(rows, 4, ["reward_func", "length_reward_func"])
    for row in rows:
        assert 0 < row["rewards/length_reward_func/mean"] <= 16
        assert row["reward/on_policy"] == pytest.approx(row["rewards/reward_func/mean"]
                                                        + 0.1 * row["rewards/length_reward_func/mean"])


# ------------------------------------------------------------------ (d) trainer_state and log_metric


def curriculum_reward(completions, ground_truth, trainer_state, log_metric, **kwargs):
    """Reward the answer's format first and its correctness later: correctness weighs more as training
    progresses (trainer_state.global_step), and the weight is logged."""
    weight = min(1.0, trainer_state.global_step / 2)
    log_metric("curriculum/weight", weight)
    rewards = []
    for completion, gt in zip(completions, ground_truth):
        match = re.search(r"A=(\d+)", completion)
        formatted = 1.0 if match else 0.0
        correct = 1.0 if match and match.group(1) == gt else 0.0
        rewards.append((1 - weight) * formatted + weight * correct)
    return rewards


def test_a_curriculum_reward_reads_the_trainer_state_and_logs_its_metric(assets, tmp_path, one_thread):
    """As in TRL, global_step counts the optimizer steps done: 0 while step 1's completions are scored."""
    dataset = Dataset.from_list([{"prompt": p.prompt, "ground_truth": p.answer} for p in PROBLEMS[:5]])
    out = tmp_path / "run"
    training_args = tiny_args(out, max_steps=3)
    trainer = AGROTrainer(model=str(assets / "model"), reward_funcs=curriculum_reward, args=training_args,
                          train_dataset=dataset)
    trainer.train()
    rows = logged(out)
    check_every_step(rows, 3, ["curriculum_reward"])
    assert [row["curriculum/weight"] for row in rows] == [0.0, 0.5, 1.0]


# ------------------------------------------------------------------ the quickstart on a real model


TLDR_POSTS = [
    "I adopted a cat last week and she hides under the bed all day. How do I help her settle in?",
    "My roommate keeps eating my food from the fridge even after I asked him to stop twice.",
    "I got a job offer with higher pay but a much longer commute. I can't decide whether to take it.",
    "Our neighbours play loud music every night until 2am and the landlord ignores our complaints.",
    "I started running three months ago and my knees hurt after every run longer than 5 km.",
    "My best friend forgot my birthday for the second year in a row and I feel hurt.",
    "I want to learn to cook but every recipe I try takes hours and tastes bland.",
    "My manager gives me tasks late on Friday afternoons and expects them done by Monday.",
]


@pytest.mark.slow
def test_quickstart_on_smollm2_learns_to_answer_in_about_20_characters(tmp_path):
    """TRL's quickstart data set is trl-lib/tldr (Reddit posts, then "TL;DR:"); these are 8 such posts. Every
    completion runs to the 16-token limit at first (about 70 characters); TRL scores a cut completion
    (mask_truncated_completions=False), so the reward rises as the completions' characters get fewer.
    Measured on 2 CPU cores (45 s for the test unloaded), rewards/reward_len/mean by step: seed 0 -51.3, -47.4,
    -34.5, -34.0, -33.4, -25.3; seed 1 -52.0 ... -7.6; seed 2 -54.8 ... -10.9."""
    dataset = Dataset.from_list([{"prompt": f"POST: {post}\n\nTL;DR:"} for post in TLDR_POSTS])
    out = tmp_path / "run"
    training_args = AGROConfig(output_dir=str(out), logging_steps=1, max_steps=6, per_device_train_batch_size=8,
                               num_generations=4, max_completion_length=16, learning_rate=1e-4,
                               mask_truncated_completions=False, report_to="none", seed=0)
    trainer = AGROTrainer(model="smollm2-135m-instruct", reward_funcs=reward_len, args=training_args,
                          train_dataset=dataset)
    trainer.train()
    rows = logged(out)
    check_every_step(rows, 6, ["reward_len"])
    means = [row["rewards/reward_len/mean"] for row in rows]
    assert sum(means[-2:]) / 2 > sum(means[:2]) / 2 + 5, means  # 5 characters closer to 20, on average
