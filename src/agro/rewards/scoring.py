"""Scoring a batch: several reward functions summed with weights, the rewards of generations that have
none, a step's failure accounting, what a completion cut at the length limit counts for
(`truncated_completions`, `agro.rewards.answers`), and the warnings of a run that learns nothing.

    r = Σ_k w_k r_k   over the functions k that gave the sample a reward (TRL's nansum)

Every reward function sees every completion, cut ones included (batched functions get ``truncated``), and
its `rewards/NAME/mean|std` are over all of them; `truncated_completions` then applies to the sum: ``zero``
sets a cut completion's reward to 0, ``mask`` its weight to 0, ``keep`` leaves it.
A sample no function gave a reward (every one returned None) has none: it leaves its group and the
loss (weight 0, as `truncated_completions: mask` does; TRL: NaN reward, advantage 0). A failed reward call
(error, timeout, non-finite or |r| > data.MAX_ABS_REWARD) scores 0 and is counted; more than
`max_reward_failure_fraction` of a step's (sample, function) results failing stops the run. The calls
themselves (in process, worker processes, time limits) are `agro.rewards.workers.RewardScorer`'s; reward
models', `agro.rewards.reward_models.RewardModelScorer`'s. `RewardWarnings` says when most completions are
cut step after step, or a step has no reward signal at all.
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
from agro.rewards.functions import RewardContext, RewardResult, Samples
from agro.rewards.workers import RewardScorer


class WeightedRewards:
    """Reward functions (`RewardScorer`s, `RewardModelScorer`s) and their weights, scored as one:
    `score_samples` gives Σ_k w_k r_k (None where no function gave a reward) and each function's rewards in
    `RewardResult.by_function`. `trainer_state`: TRL's keyword for the functions that take it (the run's
    `transformers.TrainerState`; None outside training); `logged_columns`: the `log_extra` columns of the
    last `score`, one value per generation it was given."""

    def __init__(self, scorers: list, weights: list[float] | None = None, where: list[str] | None = None):
        """`where`: what an error of each function names (default the config key reward_function)."""
        if weights is not None and len(weights) != len(scorers):
            raise AgroError(f"config: key 'reward_weights': {len(weights)} weights for {len(scorers)} reward "
                            "functions")
        self.scorers, self.weights = scorers, [1.0] * len(scorers) if weights is None else list(weights)
        self.where = where or ["config: key 'reward_function'"] * len(scorers)
        names = [s.name for s in scorers]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        self.trainer_state = None
        self.logged_columns: dict[str, list] = {}

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
        context = RewardContext(trainer_state=self.trainer_state)
        results = []
        for scorer, where in zip(self.scorers, self.where):
            try:
                results.append(scorer.score_samples(samples, own, on_result, context))
            except (ValueError, RuntimeError) as err:
                raise AgroError(f"{where}: {str(err).splitlines()[0]}") from None
        combined = RewardResult(rewards=[None] * len(samples.completions), logged_metrics=context.metric_means(),
                                logged_columns=context.columns(len(samples.completions)))
        for i in range(len(samples.completions)):
            given = [(w, r.rewards[i]) for w, r in zip(self.weights, results) if r.rewards[i] is not None]
            combined.rewards[i] = sum(w * x for w, x in given) if given else None
        for r in results:
            for counter in ("errors", "timeouts", "non_finite", "unscored", "calls", "calls_not_run"):
                setattr(combined, counter, getattr(combined, counter) + getattr(r, counter))
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


def samples_of(gens: list[Generation], columns: dict[str, dict], prompts: dict[str, object],
               truncated: list[bool] | None = None) -> Samples:
    """What reward functions see of `gens`: the prompt as the data has it (`prompts` by prompt key; default the
    text), the data columns of its prompt (`columns` by prompt key; a column a prompt lacks is None), and
    whether each was cut at the length limit."""
    return Samples(prompts=[prompts.get(g.group, g.prompt) for g in gens], completions=[g.completion for g in gens],
                   answers=[g.answer for g in gens], prompt_texts=[g.prompt for g in gens],
                   completion_ids=[list(g.completion_ids) for g in gens],
                   columns=column_lists([columns.get(g.group, {}) for g in gens]),
                   groups=[g.group for g in gens], truncated=truncated)


def score(rewards: WeightedRewards | RewardScorer, gens: list[Generation], step: int, max_failure_fraction: float,
          eos_ids: set[int], truncated_completions: str = "keep", columns: dict[str, dict] | None = None,
          prompts: dict[str, object] | None = None) -> tuple[list[Generation], dict[str, float]]:
    """(`gens` with rewards, failure counts, each function's mean and what the functions logged with
    `log_metric`): the same keys every step but each function's (`function_metrics`) and the logged ones.
    `step`: the steps already taken; `columns` and `prompts`: the data columns and prompts of each prompt key
    (`samples_of`).

    Every generation without a reward of its own is scored, cut ones included. Then, for a cut completion
    (no EOS at its end): under truncated_completions "zero" a scored one's reward is 0 (a record's own reward
    stays); under "mask" its weight is 0. A sample no function gave a reward scores 0 with weight 0 (under
    "zero", a cut one keeps weight 1 and reward 0).
    """
    rewards = rewards if isinstance(rewards, WeightedRewards) else WeightedRewards([rewards])
    cut = [is_truncated(g.completion_ids, eos_ids) for g in gens]
    todo = [i for i, g in enumerate(gens) if g.reward is None]
    result = RewardResult(rewards=[], by_function={name: [] for name in rewards.names})

    def report_timeout(index: int, status: str, detail: str | None) -> None:
        if status == "timeout":
            tqdm.write(f"agro: step {step + 1}: reward call {index + 1} of {len(todo)} timed out ({detail})")

    if todo:
        samples = samples_of([gens[i] for i in todo], columns or {}, prompts or {}, [cut[i] for i in todo])
        result = rewards.score_samples(samples, max_failure_fraction, report_timeout)
    for i, r in enumerate(result.rewards):
        values = [r, *(v[i] for v in result.by_function.values())]
        big = next((v for v in values if v is not None and abs(v) > data.MAX_ABS_REWARD), None)
        if big is not None:  # the bound offline records have; 1e300 would be inf in float32
            result.record(i, "non_finite", 0.0, f"returned {big!r}, |reward| > {data.MAX_ABS_REWARD:g}")
            for rewards_of in result.by_function.values():  # None (no reward from that function) stays None
                rewards_of[i] = None if rewards_of[i] is None else 0.0
    zeroed = truncated_completions == "zero"
    totals = [0.0 if zeroed and cut[i] else float(result.rewards[j] or 0.0) for j, i in enumerate(todo)]
    none = [i for j, i in enumerate(todo) if result.rewards[j] is None and not (zeroed and cut[i])]
    gens = with_values(gens, "reward", todo, totals)
    gens = with_values(gens, "weight", none, [0.0] * len(none))
    if truncated_completions == "mask":
        masked = [i for i in range(len(gens)) if cut[i]]
        gens = with_values(gens, "weight", masked, [0.0] * len(masked))
    rewards.logged_columns = {name: [None] * len(gens) for name in result.logged_columns}
    for name, values in result.logged_columns.items():
        for j, i in enumerate(todo):
            rewards.logged_columns[name][i] = values[j]
    _check_failures(result, len(todo) * len(rewards), step, max_failure_fraction)
    return gens, {"reward_failures": float(result.failures), "reward_timeouts": float(result.timeouts),
                  "reward_errors": float(result.errors), "reward_non_finite": float(result.non_finite),
                  "reward_none": float(len(none)), **function_metrics(result.by_function), **result.logged_metrics}


def _check_failures(result: RewardResult, results: int, step: int, max_failure_fraction: float) -> None:
    """An AgroError when more than max_failure_fraction of the step's `results` ((sample, function) pairs)
    failed; it counts calls too where a call covered several samples (a batched function's group)."""
    if not results or result.failures / results <= max_failure_fraction:
        return
    kinds = f"{result.errors} errors, {result.timeouts} timeouts, {result.non_finite} non-finite"
    planned = result.calls + result.calls_not_run
    if planned == results:  # one sample a call: calls and rewards are the same count
        counted = f"{result.failures} of {results} reward calls failed ({kinds})"
    else:
        counted = f"{result.failures} of {results} rewards failed ({kinds}) in {planned} reward calls"
    stopped = f" (stopped there, {result.calls_not_run} calls not run)" if result.calls_not_run else ""
    raise AgroError(f"step {step + 1}: {counted}, above max_reward_failure_fraction {max_failure_fraction}"
                    f"{stopped}; first: {result.first_failure}")


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
    samples = replace(samples or Samples.of_texts(prompts, texts, answers), prompt_texts=prompts, truncated=cut)
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


CUT_WARNING_SHARE = 0.5  # more than this share of a batch's completions cut...
CUT_WARNING_STEPS = 3  # ...in this many generation batches in a row: a warning
RULES = {"zero": "scores each of them 0, whatever the reward functions say",
         "mask": "leaves them out of the loss", "keep": "scores them as they are"}


class RewardWarnings:
    """The warnings of a run that learns little or nothing, each once a run (`observe` each step's metrics):
    more than CUT_WARNING_SHARE of the completions cut at max_completion_length in CUT_WARNING_STEPS
    generation batches in a row, and a step with no reward signal at all (every group's rewards equal, so
    its advantages and gradient are 0). Both name max_completion_length and truncated_completions."""

    def __init__(self, max_completion_length: int, truncated_completions: str):
        self.max_completion_length, self.rule = max_completion_length, truncated_completions
        self.cut_run = 0  # generation batches in a row with most completions cut
        self.said: set[str] = set()

    def observe(self, step: int, metrics: dict[str, float]) -> list[str]:
        """The warnings step `step` (1-based) gives, from its `completion_metrics` (a batch's later
        iterations, `iteration` > 1, count once)."""
        if metrics.get("iteration", 1) > 1:
            return []
        cut = metrics.get("completions/clipped_ratio", 0.0)
        self.cut_run = self.cut_run + 1 if cut > CUT_WARNING_SHARE else 0
        limit = f"max_completion_length={self.max_completion_length}"
        settings = (f"truncated_completions={self.rule} {RULES[self.rule]}: raise max_completion_length, or set "
                    "truncated_completions (zero | mask | keep)")
        found = []
        if self.cut_run >= CUT_WARNING_STEPS:
            found.append(("cut", f"agro: warning: step {step}: more than {CUT_WARNING_SHARE:.0%} of the completions "
                                 f"were cut at {limit} in each of the last {self.cut_run} steps ({cut:.0%} now); "
                                 f"{settings}"))
        if metrics.get("frac_reward_zero_std") == 1.0:
            found.append(("signal", f"agro: warning: step {step}: no reward signal: in every group all rewards are "
                                    f"equal, so the step's advantages and gradient are 0; {cut:.0%} of the "
                                    f"completions were cut at {limit}, and {settings}; the reward functions' own "
                                    "means are logged as rewards/NAME/mean"))
        said = [message for kind, message in found if kind not in self.said]
        self.said.update(kind for kind, _ in found)
        return said

    def state(self) -> dict:
        """What a resumed run carries on from (checkpoints): the run of cut batches, the warnings given."""
        return {"cut_run": self.cut_run, "said": sorted(self.said)}

    def load_state(self, state: dict) -> None:
        """A `state()`; an empty one (a checkpoint without it) starts afresh."""
        self.cut_run, self.said = state.get("cut_run", 0), set(state.get("said", []))
