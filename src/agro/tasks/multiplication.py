"""Times tables: sums of products, solved by a model that half-knows its multiplication facts.

A prompt is a sum of products such as ``7*8+3*4=``; a completion is a worked solution,
``7*8=56;3*4=12;56+12=68;A=68``, followed by EOS. The reward is 1 when the number after ``A=``
equals the gold answer (the rule of `agro.tasks.arithmetic`).

Every fact ``a*b`` (an ordered pair of factors in ``factor_range``) has one fixed **decoy**: a
neighbouring entry of the table, ``a*(b±1)`` or ``(a±1)*b``, chosen by a hash of the fact. π_ref is a
tiny Llama trained from scratch on worked solutions in which each product step writes its fact's
decoy with the fact's own probability, spread about uniformly over ``error_rate ± error_rate_spread``
by a hash of the fact; the later sums are then exact for the products written. So
π_ref writes the decoy of most facts greedily, while every correct fact keeps real mass at temperature
1: RL has to correct each fact on its own, from the prompts that show it, the facts π_ref gets most
often wrong last. With 64 facts, two per prompt, that takes many steps, and every fresh generation
carries information about the facts it shows, which is what reuse should exploit.

Held-out problems are new combinations of the same facts (split by prompt hash, as in arithmetic).
Measured figures, and the commands that produced them, are in docs/results/tasks.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import agro.tasks.builds as builds
from agro.tasks.arithmetic import parse_answer

NAME = "multiplication"
REWARD = "agro.tasks.multiplication:reward"  # the trainer's reward_function for this task
CHARS = "0123456789+*=;A"
STRONG_ERROR_RATE = 0.3  # error_rate of the study's stronger data policy (with the spread: 0.06-0.55 per fact)


@dataclass(frozen=True)
class Settings(builds.ModelSettings):
    """The sums of products and π_ref's decoy rates; the tiny Llama and its warm-up are `builds.ModelSettings`."""

    CACHE_KEY = (NAME, 1)  # the task and its build version: bump the version when a change here alters a build
    num_products: int = 2
    factor_range: tuple[int, int] = (2, 9)  # every factor ~ U[lo, hi]
    heldout_fraction: float = 0.2  # share of all problems reserved for held-out, by prompt hash (64² in all)
    error_rate: float = 0.65  # centre of the facts' P(a warm-up product step writes the fact's decoy)
    error_rate_spread: float = 0.25  # a fact's own P is error_rate + spread·u, u ∈ [−1, 1] by a hash of the fact
    num_heldout: int = 500  # held-out problems on which task.json reports π_ref's greedy accuracy


@dataclass(frozen=True)
class Problem:
    """One sum of products, its gold answer, and its facts."""

    prompt: str  # "7*8+3*4="
    answer: str  # "68"
    facts: tuple[tuple[int, int], ...]  # ((7, 8), (3, 4))


# ----------------------------------------------------------------------------- facts and solutions


def decoy(a: int, b: int) -> int:
    """The fixed wrong value π_ref's warm-up writes for a*b: one of its neighbouring table entries
    a*(b+1), a*(b-1), (a+1)*b, (a-1)*b (those with both factors ≥ 1), chosen by a hash of the fact."""
    neighbours = [(a, b + 1), (a, b - 1), (a + 1, b), (a - 1, b)]
    values = [x * y for x, y in neighbours if x >= 1 and y >= 1]
    return values[hashlib.sha256(f"{a}*{b}".encode()).digest()[0] % len(values)]


def solve(problem: Problem, wrong: list[bool] | None = None) -> str:
    """The worked solution; product i writes its fact's decoy when wrong[i], and the sums add what was written."""
    values = [decoy(a, b) if wrong is not None and wrong[i] else a * b for i, (a, b) in enumerate(problem.facts)]
    steps = [f"{a}*{b}={v}" for (a, b), v in zip(problem.facts, values)]
    total = values[0]
    for v in values[1:]:
        steps.append(f"{total}+{v}={total + v}")
        total += v
    return ";".join(steps) + f";A={total}"


def fact_error_rate(a: int, b: int, error_rate: float, spread: float = 0.0) -> float:
    """The fact's own P(decoy) in the warm-up: error_rate + spread·(2h − 1), h = (first byte of a hash of the
    fact) / 255 ∈ [0, 1], clipped to [0, 1]. Spread 0: error_rate for every fact."""
    h = hashlib.sha256(f"{a}*{b}:rate".encode()).digest()[0] / 255
    return min(1.0, max(0.0, error_rate + spread * (2 * h - 1)))


def warmup_solution(problem: Problem, error_rate: float, rng: random.Random, spread: float = 0.0) -> str:
    """A warm-up solution: each product step writes its decoy with its fact's `fact_error_rate`."""
    return solve(problem, [rng.random() < fact_error_rate(a, b, error_rate, spread) for a, b in problem.facts])


def reward(prompt: str, completion: str, answer: str | None) -> float:
    """1.0 when the completion's final answer is exactly the gold answer, else 0.0."""
    return float(answer is not None and parse_answer(completion) == answer.strip())


# ----------------------------------------------------------------------------- problems


def sample_problem(rng: random.Random, split: str, settings: Settings) -> Problem:
    """One random problem of the given split."""
    while True:
        facts = tuple((rng.randint(*settings.factor_range), rng.randint(*settings.factor_range))
                      for _ in range(settings.num_products))
        prompt = "+".join(f"{a}*{b}" for a, b in facts) + "="
        if builds.split_of(prompt, settings.heldout_fraction) == split:
            return Problem(prompt, str(sum(a * b for a, b in facts)), facts)


def max_prompt_tokens(settings: Settings) -> int:
    """Upper bound on the tokens of any prompt ("7*8+3*4=")."""
    factor = len(str(settings.factor_range[1]))
    return settings.num_products * (2 * factor + 2)


def max_completion_tokens(settings: Settings) -> int:
    """Upper bound on the tokens of any worked solution (right or decoy facts), EOS included."""
    hi = settings.factor_range[1]
    factor, product = len(str(hi)), len(str(hi * (hi + 1)))
    total = len(str(settings.num_products * hi * (hi + 1)))
    products = settings.num_products * (2 * factor + product + 3)  # "a*b=p;"
    sums = (settings.num_products - 1) * (2 * total + product + 3)  # "s+p=t;"
    return products + sums + 2 + total + 1  # "A=" answer EOS


# ----------------------------------------------------------------------------- π_ref and accuracy

KIT = builds.TaskKit(
    name=NAME, settings_class=Settings, seed_prefix="multiplication-", chars=CHARS, sample_problem=sample_problem,
    warmup_completion=lambda p, rng, settings: warmup_solution(p, settings.error_rate, rng,
                                                               settings.error_rate_spread),
    reward=reward, budget=lambda problems, settings: max_completion_tokens(settings),
)
build_tokenizer = KIT.build_tokenizer
generate_problems = KIT.generate_problems
evaluate_greedy = KIT.evaluate_greedy
sample_accuracy = KIT.sample_accuracy
build_reference_policy = KIT.build_reference_policy


def load_task(path: str | Path) -> tuple[Settings, dict]:
    """(settings, full task.json) of a π_ref build; a build made before the spread existed had none (0)."""
    settings, meta = KIT.load_task(path)
    if "error_rate_spread" not in meta["task"]:
        settings = dataclasses.replace(settings, error_rate_spread=0.0)
    return settings, meta


def load_or_build_reference_policy(cache_dir: str | Path, seed: int = 0, settings: Settings | None = None,
                                   log_every: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, Path]:
    """(model, tokenizer, path) of π_ref for (settings, seed), from cache_dir/multiplication-<hash>-seed<seed>;
    `build_reference_policy` makes a missing or incomplete one first."""
    return KIT.load_or_build(build_reference_policy, cache_dir, seed, settings, log_every)
