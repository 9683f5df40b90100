"""Scoring a batch: several reward functions summed with weights, the rewards of generations that have
none, a step's failure accounting, and what a completion cut at the length limit counts for
(`truncated_completions`, `agro.rewards.answers`).

    r = Σ_k w_k r_k   over the functions k that gave the sample a reward (TRL's nansum)

A sample no function gave a reward (every one returned None) has none: it leaves its group and the
loss (weight 0, as `truncated_completions: mask` does; TRL: NaN reward, advantage 0). A failed reward call
(error, timeout, non-finite or |r| > data.MAX_ABS_REWARD) scores 0 and is counted; more than
`max_reward_failure_fraction` of a step's (sample, function) results failing stops the run. The calls
themselves (worker processes, time limits) are `agro.rewards.workers.RewardScorer`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from tqdm.auto import tqdm

import agro.data as data
from agro.errors import AgroError
from agro.records import Generation, with_values
from agro.rewards.answers import is_truncated
from agro.rewards.functions import RewardResult, Samples
from agro.rewards.workers import RewardScorer


class WeightedRewards:
    """Reward functions (`RewardScorer`s) and their weights, scored as one: `score_samples` gives Σ_k w_k r_k
    (None where no function gave a reward) and each function's rewards in `RewardResult.by_function`."""

    def __init__(self, scorers: list[RewardScorer], weights: list[float] | None = None,
                 where: list[str] | None = None):
        """`where`: what an error of each function names (default the config key reward_function)."""
        if weights is not None and len(weights) != len(scorers):
            raise AgroError(f"config: key 'reward_weights': {len(weights)} weights for {len(scorers)} reward "
                            "functions")
        self.scorers, self.weights = scorers, [1.0] * len(scorers) if weights is None else list(weights)
        self.where = where or ["config: key 'reward_function'"] * len(scorers)
        names = [s.name for s in scorers]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]

    def __len__(self) -> int:
        return len(self.scorers)

    @property
    def should_stop(self) -> Callable[[], bool] | None:
        return self.scorers[0].should_stop

    @should_stop.setter
    def should_stop(self, check: Callable[[], bool] | None) -> None:
        for scorer in self.scorers:
            scorer.should_stop = check

    def score(self, prompts: list[str], completions: list[str], answers: list[str | None],
              max_failure_fraction: float | None = None, on_result=None) -> RewardResult:
        """`score_samples` of texts with their gold answers (the `answer` column)."""
        return self.score_samples(Samples.of_texts(prompts, completions, answers), max_failure_fraction, on_result)

    def score_samples(self, samples: Samples, max_failure_fraction: float | None = None,
                      on_result=None) -> RewardResult:
        """Each function's rewards, and their weighted sum; failures of all functions counted together, against
        max_failure_fraction of all (sample, function) results. `on_result(index, status, detail)` as each
        (sample, function) settles. A function that cannot run (its workers cannot load it) is an AgroError."""
        # one function stops early only once the batch as a whole is over the fraction: with K functions, more
        # than K·f of its own n results failing is more than f of the n·K (no sample is left at a made-up 0)
        own = None if max_failure_fraction is None else max_failure_fraction * len(self.scorers)
        results = []
        for scorer, where in zip(self.scorers, self.where):
            try:
                results.append(scorer.score_samples(samples, own, on_result))
            except (ValueError, RuntimeError) as err:
                raise AgroError(f"{where}: {str(err).splitlines()[0]}") from None
        combined = RewardResult(rewards=[None] * len(samples.completions))
        for i in range(len(samples.completions)):
            given = [(w, r.rewards[i]) for w, r in zip(self.weights, results) if r.rewards[i] is not None]
            combined.rewards[i] = sum(w * x for w, x in given) if given else None
        for r in results:
            combined.errors, combined.timeouts = combined.errors + r.errors, combined.timeouts + r.timeouts
            combined.non_finite, combined.unscored = combined.non_finite + r.non_finite, combined.unscored + r.unscored
        several = len(results) > 1  # the first failure names its function
        combined.first_failure = next((f"{name}: {r.first_failure}" if several else r.first_failure
                                       for name, r in zip(self.names, results) if r.first_failure), None)
        combined.by_function = {name: r.rewards for name, r in zip(self.names, results)}
        return combined

    def close(self) -> None:
        for scorer in self.scorers:
            scorer.close()

    @property
    def closed(self) -> bool:
        return any(scorer.closed for scorer in self.scorers)

    def __enter__(self) -> WeightedRewards:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def function_metrics(by_function: dict[str, list[float | None]]) -> dict[str, float]:
    """TRL's `rewards/NAME/mean` and `rewards/NAME/std` over the samples each function gave a reward now; a key
    is left out, never NaN, where there are too few (none scored: a batch's later iterations, stored rewards)."""
    metrics = {}
    for name, rewards in by_function.items():
        given = [r for r in rewards if r is not None]
        if given:
            metrics[f"rewards/{name}/mean"] = mean = sum(given) / len(given)
        if len(given) > 1:
            metrics[f"rewards/{name}/std"] = math.sqrt(sum((r - mean) ** 2 for r in given) / (len(given) - 1))
    return metrics


def column_lists(rows: list[dict]) -> dict[str, list]:
    """Per-sample column dicts as one list per column name (a column a row lacks is None there)."""
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [row.get(name) for row in rows] for name in names}


def samples_of(gens: list[Generation], columns: dict[str, dict], prompts: dict[str, object]) -> Samples:
    """What reward functions see of `gens`: the prompt as the data has it (`prompts` by prompt key; default the
    text), and the data columns of its prompt (`columns` by prompt key; a column a prompt lacks is None)."""
    return Samples(prompts=[prompts.get(g.group, g.prompt) for g in gens], completions=[g.completion for g in gens],
                   answers=[g.answer for g in gens], prompt_texts=[g.prompt for g in gens],
                   completion_ids=[list(g.completion_ids) for g in gens],
                   columns=column_lists([columns.get(g.group, {}) for g in gens]),
                   groups=[g.group for g in gens])


def score(rewards: WeightedRewards | RewardScorer, gens: list[Generation], step: int, max_failure_fraction: float,
          eos_ids: set[int], truncated_completions: str = "keep", columns: dict[str, dict] | None = None,
          prompts: dict[str, object] | None = None) -> tuple[list[Generation], dict[str, float]]:
    """(`gens` with rewards, failure counts and each function's mean): the same keys every step but each
    function's (`function_metrics`). `step`: the steps already taken; `columns` and `prompts`: the data columns and prompts of each prompt key (`samples_of`).

    A cut completion (no EOS at its end) without a reward of its own scores 0 with no call under
    truncated_completions "zero"; under "mask" it is scored, and its weight is 0. A sample no function
    gave a reward scores 0 with weight 0.
    """
    rewards = rewards if isinstance(rewards, WeightedRewards) else WeightedRewards([rewards])
    cut = [i for i, g in enumerate(gens) if is_truncated(g.completion_ids, eos_ids)]
    if truncated_completions == "zero":
        unscored = [i for i in cut if gens[i].reward is None]
        gens = with_values(gens, "reward", unscored, [0.0] * len(unscored))
    elif truncated_completions == "mask":
        gens = with_values(gens, "weight", cut, [0.0] * len(cut))
    todo = [i for i, g in enumerate(gens) if g.reward is None]
    result = RewardResult(rewards=[], by_function={name: [] for name in rewards.names})

    def report_timeout(index: int, status: str, detail: str | None) -> None:
        if status == "timeout":
            tqdm.write(f"agro: step {step + 1}: reward call {index + 1} of {len(todo)} timed out ({detail})")

    if todo:
        result = rewards.score_samples(samples_of([gens[i] for i in todo], columns or {}, prompts or {}),
                                       max_failure_fraction, report_timeout)
    for i, r in enumerate(result.rewards[: len(todo)]):
        values = [r, *(v[i] for v in result.by_function.values())]
        big = next((v for v in values if v is not None and abs(v) > data.MAX_ABS_REWARD), None)
        if big is not None:  # the bound offline records have; 1e300 would be inf in float32
            result.record(i, "non_finite", 0.0, f"returned {big!r}, |reward| > {data.MAX_ABS_REWARD:g}")
            for rewards_of in result.by_function.values():  # None (no reward from that function) stays None
                rewards_of[i] = None if rewards_of[i] is None else 0.0
    scored = todo[: len(result.rewards)]
    none = [i for j, i in enumerate(scored) if result.rewards[j] is None]
    gens = with_values(gens, "reward", scored, [float(result.rewards[j] or 0.0) for j in range(len(scored))])
    gens = with_values(gens, "weight", none, [0.0] * len(none))
    calls = len(todo) * len(rewards)
    if todo and result.failures / calls > max_failure_fraction:
        stopped = f" (stopped there, {result.unscored} calls not run)" if result.unscored else ""
        raise AgroError(f"step {step + 1}: {result.failures} of {calls} reward calls failed "
                        f"({result.errors} errors, {result.timeouts} timeouts, {result.non_finite} non-finite), "
                        f"above max_reward_failure_fraction {max_failure_fraction}{stopped}; "
                        f"first: {result.first_failure}")
    return gens, {"reward_failures": float(result.failures), "reward_timeouts": float(result.timeouts),
                  "reward_errors": float(result.errors), "reward_non_finite": float(result.non_finite),
                  "reward_none": float(len(none)), **function_metrics(result.by_function)}


def problem_samples(problems: list[data.Problem], k: int, texts: list[str],
                    completion_ids: list[list[int]]) -> Samples:
    """What reward functions see of k completions of each problem, problem-major (`agro eval`, `agro
    generate`): its prompt, gold answer and columns; one group (one batched call) per problem."""
    return Samples([p.prompt for p in problems for _ in range(k)], texts, [p.answer for p in problems for _ in range(k)],
                   completion_ids=completion_ids,
                   columns=column_lists([{"answer": p.answer, **p.columns} for p in problems for _ in range(k)]),
                   groups=[i // k for i in range(len(texts))])


def score_texts(scorer: RewardScorer | WeightedRewards, prompts: list[str], texts: list[str],
                answers: list[str | None], cut: list[bool], truncated_completions: str,
                on_result=None, samples: Samples | None = None) -> tuple[list[float], RewardResult]:
    """(rewards, the calls' result) of completions outside training (`agro eval`, `agro generate`): a cut one
    scores 0 without a call unless truncated_completions is "keep", as in `score`; no reward (None) is 0.
    `samples`: what batched functions see of them (default: the texts, and the answers as a column)."""
    todo = [i for i in range(len(texts)) if truncated_completions == "keep" or not cut[i]]
    samples = replace(samples or Samples.of_texts(prompts, texts, answers), prompt_texts=prompts)
    result = scorer.score_samples(samples.subset(todo), on_result=on_result)
    rewards = [0.0] * len(texts)
    for i, r in zip(todo, result.rewards):
        rewards[i] = r or 0.0
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
