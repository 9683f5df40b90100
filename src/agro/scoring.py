"""Scoring a batch: the rewards of generations that have none, with a step's failure accounting, and
what a completion cut at the length limit counts for (`truncated_completions`, `agro.answers`).

A failed reward call (error, timeout, non-finite or |r| > data.MAX_ABS_REWARD) scores 0 and is counted;
more than `max_reward_failure_fraction` of a step's calls failing stops the run. The calls themselves
(worker processes, time limits) are `agro.rewards.RewardScorer`'s.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from agro import data
from agro.answers import is_truncated
from agro.batch import with_values
from agro.buffer import Generation
from agro.errors import AgroError
from agro.rewards import RewardResult, RewardScorer


def score(scorer: RewardScorer, gens: list[Generation], step: int, max_failure_fraction: float,
          eos_ids: set[int], truncated_completions: str = "keep") -> tuple[list[Generation], dict[str, float]]:
    """(`gens` with rewards, failure counts): the same keys every step. `step`: the steps already taken.

    A cut completion (no EOS at its end) without a reward of its own scores 0 with no call under
    truncated_completions "zero"; under "mask" it is scored, and its weight is 0.
    """
    cut = [i for i, g in enumerate(gens) if is_truncated(g.completion_ids, eos_ids)]
    if truncated_completions == "zero":
        unscored = [i for i in cut if gens[i].reward is None]
        gens = with_values(gens, "reward", unscored, [0.0] * len(unscored))
    elif truncated_completions == "mask":
        gens = with_values(gens, "weight", cut, [0.0] * len(cut))
    todo = [i for i, g in enumerate(gens) if g.reward is None]
    result = RewardResult(rewards=[])

    def report_timeout(index: int, status: str, detail: str | None) -> None:
        if status == "timeout":
            tqdm.write(f"agro: step {step + 1}: reward call {index + 1} of {len(todo)} timed out ({detail})")

    if todo:
        try:
            result = scorer.score([gens[i].prompt for i in todo], [gens[i].completion for i in todo],
                                  [gens[i].answer for i in todo], max_failure_fraction, report_timeout)
        except (ValueError, RuntimeError) as err:  # the reward function cannot be loaded in its workers
            raise AgroError(f"config: key 'reward_function': {str(err).splitlines()[0]}") from None
    for i, r in enumerate(result.rewards[: len(todo)]):
        if abs(r) > data.MAX_ABS_REWARD:  # the bound offline records have; 1e300 would be inf in float32
            result.record(i, "non_finite", 0.0, f"returned {r!r}, |reward| > {data.MAX_ABS_REWARD:g}")
    scored = todo[: len(result.rewards)]
    gens = with_values(gens, "reward", scored, [float(result.rewards[j]) for j in range(len(scored))])
    if todo and result.failures / len(todo) > max_failure_fraction:
        stopped = f" (stopped there, {result.unscored} calls not run)" if result.unscored else ""
        raise AgroError(f"step {step + 1}: {result.failures} of {len(todo)} reward calls failed "
                        f"({result.errors} errors, {result.timeouts} timeouts, {result.non_finite} non-finite), "
                        f"above max_reward_failure_fraction {max_failure_fraction}{stopped}; "
                        f"first: {result.first_failure}")
    return gens, {"reward_failures": float(result.failures), "reward_timeouts": float(result.timeouts),
                  "reward_errors": float(result.errors), "reward_non_finite": float(result.non_finite)}


def score_texts(scorer: RewardScorer, prompts: list[str], texts: list[str], answers: list[str | None],
                cut: list[bool], truncated_completions: str, on_result=None) -> tuple[list[float], RewardResult]:
    """(rewards, the calls' result) of completions outside training (`agro eval`, `agro generate`): a cut one
    scores 0 without a call unless truncated_completions is "keep", as in `score`."""
    todo = [i for i in range(len(texts)) if truncated_completions == "keep" or not cut[i]]
    result = scorer.score([prompts[i] for i in todo], [texts[i] for i in todo], [answers[i] for i in todo],
                          on_result=on_result)
    rewards = [0.0] * len(texts)
    for i, r in zip(todo, result.rewards):
        rewards[i] = r
    return rewards, result


def completion_metrics(gens: list[Generation], eos_ids: set[int]) -> dict[str, float]:
    """TRL's names: the share of on-policy completions cut at the length limit, and of groups whose rewards
    are all equal among the members that count (weight > 0): no signal for a group baseline."""
    fresh = [g for g in gens if g.source == "on_policy"]
    groups: dict[str, set[float]] = {g.group: set() for g in gens}
    for g in gens:
        if g.weight > 0:
            groups[g.group].add(g.reward)
    metrics = {"frac_reward_zero_std": sum(len(r) <= 1 for r in groups.values()) / len(groups)}
    if fresh:
        metrics["completions/clipped_ratio"] = sum(is_truncated(g.completion_ids, eos_ids) for g in fresh) / len(fresh)
    return metrics
