"""What small models answer (agro.rewards.answers) on real SmolLM2-135M-Instruct completions, and what a completion
cut at the length limit counts for in scoring (truncated_completions) and in the step's metrics."""

import json
from pathlib import Path

import pytest

import agro.gym as gym
from agro.records import Generation
from agro.rewards.answers import final_answer, is_truncated, last_number
from agro.rewards.functions import load_reward_function
from agro.rewards.scoring import completion_metrics, score
from agro.rewards.workers import RewardScorer

FIXTURES = [json.loads(line) for line in (Path(__file__).parent / "data" / "smollm2_completions.jsonl").open()]


@pytest.mark.parametrize("text, number", [
    ("7 * 9 = 63", "63"), ("= -4.", "-4"), ("4 - 1 - 7", "7"), ("7-4", "4"), ("x = 3/4", "3/4"),
    ("about 1,234 legs", "1234"), ("0.5 of it", "0.5"), ("no number", None), ("step2", None), ("(-3)", "-3"),
    ("3.14.", "3.14"), ("1,234,567", "1234567"), ("1,234,5678", "5678"), ("(\u22123)", "-3"), (".5 of it", ".5"),
])
def test_last_number(text, number):
    assert last_number(text) == number


@pytest.mark.parametrize("row", FIXTURES, ids=[r["why"] for r in FIXTURES])
def test_final_answer_of_real_completions(row):
    assert final_answer(row["completion"]) == row["final"]


@pytest.mark.parametrize("row", FIXTURES, ids=[r["why"] for r in FIXTURES])
@pytest.mark.parametrize("reward", ["math", "exact"])
def test_the_default_rewards_score_plain_answers(row, reward):
    """A plain "1 + 5 = 6" scores 1 when 6 is right; the stated answer wins over the last number."""
    fn = load_reward_function(reward)
    assert fn("p", row["completion"], row["gold"]) == float(row["final"] == row["gold"])


def gym_answer(task: str, gold: str) -> str:
    question = f"{task} problem"
    return gym.encode_answer({"question": question, "answer": gold, "metadata": {"source_dataset": task}})


@pytest.mark.parametrize("row", FIXTURES, ids=[r["why"] for r in FIXTURES])
def test_the_reasoning_gym_reward_scores_plain_answers(row):
    fn = load_reward_function("reasoning_gym")
    assert fn("p", row["completion"], gym_answer(row["task"], row["gold"])) == float(row["final"] == row["gold"])


def test_the_cut_preamble_would_score_without_the_truncation_rule():
    """The failure measured on SmolLM2's completions: the cut preamble's last number matches, so scored as is it gets 1."""
    row = next(r for r in FIXTURES if r["truncated"] and r["final"] == r["gold"])
    assert load_reward_function("math")("p", row["completion"], row["gold"]) == 1.0


def test_is_truncated():
    assert is_truncated([5, 6, 7], {2})
    assert not is_truncated([5, 6, 2], {2})
    assert is_truncated([], {2})


def gens_of(rows, eos=2, group="g"):
    """Generations whose completion ids end with EOS unless the fixture was cut."""
    return [Generation(group=group, prompt_ids=[1], completion_ids=[5] * 4 + ([] if r["truncated"] else [eos]),
                       source="on_policy", answer=r["gold"], prompt="p", completion=r["completion"]) for r in rows]


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer("math", timeout=10.0) as s:
        yield s


@pytest.mark.parametrize("rule", ["zero", "mask", "keep"])
def test_truncated_completions_rules(scorer, rule):
    gens = gens_of(FIXTURES)
    scored, failures = score(scorer, gens, 0, 0.5, {2}, rule)
    for row, g in zip(FIXTURES, scored):
        right = float(row["final"] == row["gold"])
        cut = row["truncated"]
        assert g.reward == (0.0 if cut and rule == "zero" else right)
        assert g.weight == (0.0 if cut and rule == "mask" else 1.0)
    assert failures["reward_failures"] == 0


def test_zero_keeps_a_records_own_reward(scorer):
    row = next(r for r in FIXTURES if r["truncated"])
    (g,) = gens_of([row])
    scored, _ = score(scorer, [Generation(**{**g.__dict__, "reward": 0.7, "source": "offline"})], 0, 0.5, {2}, "zero")
    assert scored[0].reward == 0.7


def test_completion_metrics():
    rows = [{"completion": "1", "gold": "1", "truncated": t} for t in (True, False, False, False)]
    a, b = gens_of(rows[:2], group="a"), gens_of(rows[2:], group="b")
    rewarded = [Generation(**{**g.__dict__, "reward": r}) for g, r in zip(a + b, [0.0, 1.0, 1.0, 1.0])]
    metrics = completion_metrics(rewarded, {2})
    assert metrics["completions/clipped_ratio"] == 0.25
    assert metrics["frac_reward_zero_std"] == 0.5  # group b: rewards all equal
    masked = [Generation(**{**g.__dict__, "weight": 0.0}) if i == 0 else g for i, g in enumerate(rewarded)]
    assert completion_metrics(masked, {2})["frac_reward_zero_std"] == 1.0  # a masked member carries no signal
